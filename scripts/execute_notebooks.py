"""Execute the notebooks of notebooks/ and write the executed copies, outputs included, to docs/notebooks/.

    python scripts/execute_notebooks.py [NAME ...]      (or: make notebooks)

The notebooks in notebooks/ stay saved without outputs (tests/test_notebooks.py checks that), so
their diffs stay readable; the executed copies are what a reader browsing the repository or the
documentation site sees (the site renders them through docs/hooks/notebooks.py). Each copy records
in its metadata, under ``vlens.source_sha256``, the sha256 of its source's cells
(:func:`source_sha256`): tests/test_notebooks.py fails when a notebook has changed since its copy
was made, naming the command that refreshes it.

Execution is as in tests/test_notebooks.py: from the notebooks folder, with an explicit
``python3`` kernel spec that runs this interpreter, offline (``HF_HUB_OFFLINE=1``). Views made
with vlens.viz carry their JavaScript inline, so the saved outputs need no network either.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = ROOT / "notebooks"
EXECUTED_DIR = ROOT / "docs" / "notebooks"
KERNEL_NAME = "python3"
CELL_TIMEOUT = 1800  # seconds per cell: notebook 02's validation takes long on a loaded 2-core CPU
STARTUP_TIMEOUT = 180


def source_sha256(nb: nbformat.NotebookNode) -> str:
    """The sha256 of a notebook's cells as written (type and source of each, in order): outputs,
    execution counts and metadata do not count, so the source and its executed copy hash alike."""
    cells = [[cell.cell_type, cell.source] for cell in nb.cells]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode("utf-8")).hexdigest()


def kernel_folder(folder: Path) -> Path:
    """A Jupyter data folder holding one kernel spec, ``python3``, that runs this interpreter."""
    spec_dir = folder / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (vlens)", "language": "python", "metadata": {"debugger": False}}  # fmt: skip
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return folder


def execute(name: str, out_dir: Path = EXECUTED_DIR) -> Path:
    """Run ``notebooks/<name>`` top to bottom and write the executed copy to ``out_dir/<name>``.
    An error in a cell stops it: the copy is written only when every cell ran."""
    source = NOTEBOOKS_DIR / name
    if not source.exists():
        have = ", ".join(sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")))
        raise SystemExit(f"error: no notebook {name!r} in {NOTEBOOKS_DIR} (have: {have})")
    nb = nbformat.read(source, as_version=4)
    digest = source_sha256(nb)
    with tempfile.TemporaryDirectory(prefix="vlens_jupyter_") as tmp:
        env = {"JUPYTER_PATH": str(kernel_folder(Path(tmp))), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the kernel inherits this environment; JUPYTER_PATH comes first in the kernel search
        try:
            NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT, startup_timeout=STARTUP_TIMEOUT,
                           resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}).execute()  # fmt: skip
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    nb.metadata["vlens"] = {"source": f"notebooks/{name}", "source_sha256": digest,
                            "executed_by": "make notebooks (scripts/execute_notebooks.py)"}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / name
    tmp_out = out.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp_out)
    tmp_out.replace(out)  # never a half-written copy
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook file names, e.g. 01_quickstart.ipynb (default: all)")
    args = parser.parse_args(argv)
    names = args.names or sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb"))
    for name in names:
        print(f"executing notebooks/{name} ...", flush=True)
        print(f"  wrote {execute(name).relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
