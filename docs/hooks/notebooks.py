"""MkDocs hook: the executed notebooks of docs/notebooks/ as pages of the site, outputs included, offline.

`make notebooks` writes executed copies of notebooks/ into docs/notebooks/ (the notebooks themselves
stay saved without outputs). For each copy this hook adds a generated page ``notebooks/<stem>.md``
(mkdocs-jupyter would do the same, but is not a dependency): markdown cells as they are, code cells
as Python blocks, each output under its cell. Text outputs become ``output`` blocks (styled apart
from code by docs/assets/extra.css; the kernel's stderr, library warnings, is left out); PNG outputs image
files beside the page; HTML outputs without scripts (tables) are inlined; HTML outputs with scripts
(circuitsvis views, their JavaScript inline) get a page of their own shown in an iframe, so their
scripts never meet the theme's. Nothing is loaded from the network. The ``.ipynb`` copies are
published too, for download.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import nbformat
from mkdocs.structure.files import File

FOLDER = "notebooks"


def on_files(files, config):  # noqa: ANN001, ANN201 (MkDocs hook signature)
    for path in sorted((Path(config["docs_dir"]) / FOLDER).glob("*.ipynb")):
        for uri, content in render(path).items():
            files.append(File.generated(config, uri, content=content))
    return files


def _fence(text: str, lang: str) -> str:
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def _joined(value: str | list[str]) -> str:
    return value if isinstance(value, str) else "".join(value)


def render(path: Path) -> dict[str, str | bytes]:
    """The generated files of one executed notebook: its page and the files its outputs need."""
    nb = nbformat.read(path, as_version=4)
    stem = path.stem
    out: dict[str, str | bytes] = {}
    parts = [f"*Executed with its outputs by `make notebooks` from `notebooks/{path.name}`; "
             f"[download the notebook]({path.name}).*"]  # fmt: skip
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            # links written for the repository (../docs/x.md) point at the site's own pages
            parts.append(re.sub(r"\]\(\.\./docs/", "](../", cell.source))
            continue
        if cell.cell_type != "code":
            continue
        parts.append(_fence(cell.source, "python"))
        for j, o in enumerate(cell.get("outputs", [])):
            data = o.get("data", {})
            if o.output_type == "stream":
                if o.name == "stderr":  # warnings of the libraries (tqdm, ...): kept in the .ipynb, not on the page
                    continue
                parts.append(_fence(_joined(o.text), "output"))
            elif o.output_type == "error":
                parts.append(_fence(f"{o.ename}: {o.evalue}", "output"))
            elif "image/png" in data:
                uri = f"{FOLDER}/{stem}/cell{i}_{j}.png"
                out[uri] = base64.b64decode(_joined(data["image/png"]))
                parts.append(f"![output of cell {i}]({stem}/cell{i}_{j}.png)")
            elif "text/html" in data:
                body = _joined(data["text/html"])
                if "<script" in body.lower():
                    uri = f"{FOLDER}/{stem}/cell{i}_{j}.html"
                    out[uri] = f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"></head><body>\n{body}\n</body></html>\n'
                    parts.append(f'<iframe src="../{stem}/cell{i}_{j}.html" title="output of cell {i}" loading="lazy" '
                                 'style="width: 100%; height: 480px; border: 1px solid #ddd;"></iframe>')  # fmt: skip
                else:  # one raw HTML block: no blank lines inside, or Markdown would end it early
                    parts.append('<div class="nb-output" style="overflow-x: auto;">\n'
                                 + "\n".join(line for line in body.splitlines() if line.strip()) + "\n</div>")  # fmt: skip
            elif "text/plain" in data:
                parts.append(_fence(_joined(data["text/plain"]), "output"))
    out[f"{FOLDER}/{stem}.md"] = "\n\n".join(parts) + "\n"
    return out

