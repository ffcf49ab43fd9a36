"""The documentation site builds offline without warnings, and its runnable examples run.

Convention: in docs/getting_started.md, a ```python block that comes right after a line
``<!-- test -->`` is runnable. The test runs those blocks in order in one namespace (later
blocks use the names earlier ones define), in a temporary working directory, on the tiny
model the page's first runnable block loads.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKER = "<!-- test -->"
RUNNABLE = re.compile(r"^<!-- test -->[ \t]*\n```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
PYTHON_BLOCK = re.compile(r"^```python[ \t]*$", re.M)


def runnable_blocks(text: str) -> list[str]:
    return [m.group(1) for m in RUNNABLE.finditer(text)]


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index.html", "getting_started/index.html", "concepts/index.html", "data_card/index.html",
                 "results/index.html", "performance/index.html", "guarantees/index.html", "api/index.html"):  # fmt: skip
        assert (site / page).is_file(), f"{page} was not built"
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for anchor in (
        "vlens.models.load_model",
        "vlens.locate.locate",
        "vlens.interventions.steer",
        "vlens.validate.validate",
    ):
        assert f'id="{anchor}"' in api, f"the API reference lacks {anchor}"
    assert ":class:" not in api and ":func:" not in api, "reST roles left in the rendered API page"
    # Offline site: no page loads a script, style sheet or font from another host.
    for html in site.rglob("*.html"):
        remote = re.findall(
            r"<(?:script|link)\b[^>]*(?:src|href)=\"(?:https?:)?//[^\"]*\"", html.read_text(encoding="utf-8")
        )
        assert not remote, f"{html.relative_to(site)} loads remote resources: {remote}"


def test_runnable_blocks_are_marked_as_intended():
    """Every marker is followed by a python block, so no example silently drops out of the test."""
    text = (DOCS / "getting_started.md").read_text(encoding="utf-8")
    markers = len(re.findall(rf"^{re.escape(MARKER)}[ \t]*$", text, re.M))
    blocks = runnable_blocks(text)
    assert markers == len(blocks) >= 5
    assert "tiny_model(" in blocks[0], "the first runnable block must load the tiny model"
    assert len(PYTHON_BLOCK.findall(text)) > len(blocks), "the page should also show the real-model version"


def test_getting_started_examples_run(tmp_path, monkeypatch, capsys):
    blocks = runnable_blocks((DOCS / "getting_started.md").read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)  # the examples save results into the working directory
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"getting_started.md[runnable block {i}]", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"runnable block {i} of docs/getting_started.md failed:\n{code}") from err
    out = capsys.readouterr().out
    assert namespace["vlens"].model_info(namespace["model"]).source == "random", (
        "runnable examples must use the tiny model"
    )
    assert "tiny-llama" in out and "Conservation:+" in out and "shift" in out
    assert (tmp_path / "my_locate" / "locate.json").is_file()
    assert (tmp_path / "my_validation" / "validation.csv").is_file()
