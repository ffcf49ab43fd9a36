"""The notebooks in notebooks/ run from top to bottom, as a reader would run them (nbclient).

Each notebook is executed from a temporary copy (the committed file, saved without outputs,
is never written to) with the notebooks folder as its working directory. The kernel is an
explicit ``python3`` kernel spec written for this test, pointing at the interpreter running
pytest, so a fresh ``make test`` venv needs no ``ipykernel install`` step and a ``python3``
kernel installed elsewhere on the machine (another Python) can never be picked up instead.

The executed copies in docs/notebooks/ (``make notebooks``, scripts/execute_notebooks.py) are
checked for staleness against their sources, for outputs and for offline outputs.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL_NAME = "python3"
CELL_TIMEOUT = 600  # seconds per cell; each notebook takes a few minutes on a 2-core CPU in all
STARTUP_TIMEOUT = 180  # seconds for the kernel to start (slow on a loaded machine)

NOTEBOOKS = [
    pytest.param("01_quickstart.ipynb", marks=pytest.mark.model, id="01_quickstart"),
    pytest.param("02_causal_validation.ipynb", marks=pytest.mark.model, id="02_causal_validation"),
    pytest.param("03_teaching.ipynb", marks=pytest.mark.model, id="03_teaching"),
    pytest.param("04_bring_your_own.ipynb", id="04_bring_your_own"),  # tiny model only (no hub in the test)
]


@pytest.fixture(scope="session")
def jupyter_path(tmp_path_factory) -> Path:
    """A Jupyter data folder holding one kernel spec, ``python3``, that runs this interpreter."""
    folder = tmp_path_factory.mktemp("jupyter")
    spec_dir = folder / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (vlens tests)",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return folder


def test_every_notebook_is_tested():
    on_disk = sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb"))
    assert on_disk == sorted(p.values[0] for p in NOTEBOOKS)


@pytest.mark.parametrize("name", [p.values[0] for p in NOTEBOOKS])
def test_notebook_is_saved_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == KERNEL_NAME
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: code cell {i} was saved with outputs"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, jupyter_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    # JUPYTER_PATH comes before every other kernel folder, so nbclient finds our spec first.
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    assert KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable
    # 04 tries vlens.load_model("gpt2") and falls back to a tiny stand-in when the hub is out of
    # reach; keep the test hermetic (and fast) on machines that do have network access.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")

    copy = tmp_path / name
    shutil.copyfile(NOTEBOOKS_DIR / name, copy)
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT,
        startup_timeout=STARTUP_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},  # the kernel's working directory
    )
    try:
        client.execute()
    finally:
        nbformat.write(nb, copy)  # the executed copy, outputs included, for a look after a failure
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"


# ---------------------------------------------------------------------------- executed copies (make notebooks)

EXECUTED_DIR = NOTEBOOKS_DIR.parent / "docs" / "notebooks"
REMOTE = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//|\bfrom\s*[\"'](?:https?:)?//|unpkg\.com|cdn\.jsdelivr", re.I)


def _executor():
    """scripts/execute_notebooks.py, imported from its file (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("execute_notebooks", NOTEBOOKS_DIR.parent / "scripts" / "execute_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", [p.values[0] for p in NOTEBOOKS])
def test_executed_copy_is_current_and_has_outputs(name):
    """docs/notebooks/ holds each notebook executed, outputs included, for readers and the docs site. A copy
    whose source changed since it was made is stale; so is one with an unexecuted cell or an error."""
    refresh = f"refresh it with `make notebooks` (or python scripts/execute_notebooks.py {name})"
    copy_path = EXECUTED_DIR / name
    assert copy_path.exists(), f"docs/notebooks/{name} is missing; {refresh}"
    source, copy = nbformat.read(NOTEBOOKS_DIR / name, as_version=4), nbformat.read(copy_path, as_version=4)
    nbformat.validate(copy)
    digest = _executor().source_sha256(source)
    assert copy.metadata.get("vlens", {}).get("source_sha256") == digest, f"docs/notebooks/{name} is stale; {refresh}"
    assert [c.source for c in copy.cells] == [c.source for c in source.cells]
    code = [c for c in copy.cells if c.cell_type == "code"]
    assert all(isinstance(c.execution_count, int) for c in code), f"docs/notebooks/{name} has unexecuted cells; {refresh}"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], f"docs/notebooks/{name} saved an error; {refresh}"
    assert sum(bool(c.outputs) for c in code) >= len(code) // 2, f"docs/notebooks/{name}: most cells show nothing"
    for o in outputs:  # every output shows offline: no script or module loaded from another host
        html = o.get("data", {}).get("text/html", "")
        assert not REMOTE.search(html if isinstance(html, str) else "".join(html)), f"{name}: an output loads from the network"


def test_source_hash_ignores_outputs_but_not_code():
    ex = _executor()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("x = 1")])
    ran = nbformat.from_dict(json.loads(json.dumps(nb)))
    ran.cells[1].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    ran.cells[1].execution_count = 1
    ran.metadata["vlens"] = {"source_sha256": "x"}
    assert ex.source_sha256(ran) == ex.source_sha256(nb)
    ran.cells[1].source = "x = 2"
    assert ex.source_sha256(ran) != ex.source_sha256(nb)
