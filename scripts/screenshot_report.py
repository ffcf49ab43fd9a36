"""Screenshots of a run's report.html as a reader sees it: headless Chromium, 1,400 px wide, offline.

    python scripts/screenshot_report.py RUN_DIR OUT_DIR [--chromium PATH] [--max-kb 300]

writes into OUT_DIR

- ``report_first_screen.png``: the first screen, 1,400 x 1,000 px (what a reader sees on opening it);
- ``report_full_page.png``: the whole page, scaled down to stay under ``--max-kb`` KB.

The page is measured first: a copy of report.html with one extra script, which writes the page's
height (after the circuitsvis views have rendered) and the verdict table's top edge into the DOM,
is dumped with ``--dump-dom``; the full-page screenshot then uses a window as tall as the page. The
copy lives in a temporary folder; the run directory is only read. Chromium gets flags that keep it
from contacting anything by itself (updates, sync, ...); the report itself loads nothing from the
network (tests/test_report.py checks that).
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTH = 1400  # px: the window width a reader on a laptop or desktop screen has
FIRST_SCREEN = 1000  # px: the height of the first screen
MAX_HEIGHT = 16000  # px: Chromium's headless screenshots are cut off (blank) beyond about 16,384 px
QUIET = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
         "--hide-scrollbars", "--force-device-scale-factor=1"]  # fmt: skip
# Written into the DOM 2 s (of virtual time) after load, once the circuitsvis views have rendered.
MEASURE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const table = document.querySelector("table.verdict");
  document.body.setAttribute("data-verdict-top", table ? String(table.getBoundingClientRect().top) : "none");
  document.body.setAttribute("data-page-height", String(document.documentElement.scrollHeight));
}, 2000));
</script>"""


def find_chromium(path: str | None = None) -> str:
    """The Chromium binary: ``path`` if given, else ``chromium`` or ``chromium-browser`` on the PATH."""
    found = path or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).exists():
        raise SystemExit("error: no Chromium found; install Debian's `chromium` package or pass --chromium PATH")
    return found


def measure(chromium: str, report: Path, *, width: int = WIDTH, height: int = FIRST_SCREEN) -> dict[str, float | None]:
    """The page height and the verdict table's top edge (px from the top; None if there is none), as
    Chromium lays out ``report`` in a ``width`` x ``height`` window."""
    with tempfile.TemporaryDirectory(prefix="vlens_shot_") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(report.read_text(encoding="utf-8").replace("</body>", MEASURE + "\n</body>", 1), encoding="utf-8")
        res = subprocess.run([chromium, *QUIET, f"--user-data-dir={Path(tmp) / 'profile'}", f"--window-size={width},{height}",
                              "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"chromium --dump-dom failed (exit {res.returncode}): {res.stderr[-500:]}")
    body = re.search(r"<body([^>]*)>", res.stdout)
    attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', body.group(1) if body else ""))
    if "page-height" not in attrs:
        raise RuntimeError("the measuring script did not run: the page height is missing from the dumped DOM")
    top = attrs.get("verdict-top", "none")
    return {"page_height": float(attrs["page-height"]), "verdict_top": None if top == "none" else float(top)}


def screenshot(chromium: str, report: Path, out: Path, *, width: int, height: int) -> Path:
    with tempfile.TemporaryDirectory(prefix="vlens_shot_") as tmp:
        res = subprocess.run([chromium, *QUIET, f"--user-data-dir={Path(tmp) / 'profile'}", f"--window-size={width},{height}",
                              "--virtual-time-budget=10000", f"--screenshot={out}", report.resolve().as_uri()],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    if res.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium --screenshot failed (exit {res.returncode}): {res.stderr[-500:]}")
    return out


def shrink(path: Path, max_kb: int) -> tuple[int, int]:
    """Scale ``path`` down (never up) until its PNG is under ``max_kb`` KB; returns the final size in pixels."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = 1.0
    while True:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        small = image if scale == 1.0 else image.resize(size, Image.LANCZOS)
        # 256 colours: screenshots of text and flat figures lose little, and the file shrinks a lot
        buf = io.BytesIO()
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_kb * 1024 or min(size) < 50:
            path.write_bytes(buf.getvalue())
            return size
        scale *= 0.85


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory with report.html (vlens run / vlens report)")
    parser.add_argument("out_dir", type=Path, help="where the PNGs go (created if missing)")
    parser.add_argument("--chromium", help="the Chromium binary (default: chromium on the PATH)")
    parser.add_argument("--max-kb", type=int, default=300, help="largest PNG size in KB; larger ones are scaled down (default: 300)")
    args = parser.parse_args(argv)
    report = args.run_dir / "report.html"
    if not report.exists():
        raise SystemExit(f"error: {report} does not exist; write it with `vlens report {args.run_dir}`")
    chromium = find_chromium(args.chromium)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    layout = measure(chromium, report)
    first = screenshot(chromium, report, args.out_dir / "report_first_screen.png", width=WIDTH, height=FIRST_SCREEN)
    height = min(int(layout["page_height"]), MAX_HEIGHT)
    full = screenshot(chromium, report, args.out_dir / "report_full_page.png", width=WIDTH, height=height)
    for path in (first, full):
        w, h = shrink(path, args.max_kb)
        print(f"{path}: {w} x {h} px, {path.stat().st_size / 1024:.0f} KB")
    top = layout["verdict_top"]
    cut = "" if height == layout["page_height"] else f" (the screenshot stops at {height})"
    where = f"the verdict table's top at {top:.0f} px" if top is not None else "no verdict table"
    print(f"page height {layout['page_height']:.0f} px{cut}; {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
