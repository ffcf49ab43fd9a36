"""The report: self-contained HTML that renders in a real headless browser with no request leaving the machine."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import escape as html_escape

import pytest

from vlens.report import markdown_summary

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags that keep headless Chromium from contacting anything by itself (updates, sync, ...).
QUIET = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions"]  # fmt: skip


def test_report_files(tiny_run_dir):
    html = (tiny_run_dir / "report.html").read_text()
    md = (tiny_run_dir / "report.md").read_text()
    assert "Causal validation" in html and "data:image/png;base64," in html
    assert not re.search(r"<script[^>]+src=[\"']?https?://", html) and "unpkg.com" not in html.split("CircuitsVis")[0]
    # the verdict comes first, in both files; the configuration last, collapsed
    assert html.index("id='verdict'") < html.index("Neuron sets") < html.index("<details><summary>Run configuration")
    assert md.index("## Verdict") < md.index("## Neuron sets") < md.index("## Configuration")
    assert "| dimension | direction | verdict |" in md
    assert md == markdown_summary(tiny_run_dir)


def test_verdict_is_one_table_in_three_places(tiny_run_dir):
    from vlens.report import terminal_verdict, verdict_table
    from vlens.validate import ValidationResult

    table = verdict_table(ValidationResult.load(tiny_run_dir / "validation").summary())
    html, md, term = (tiny_run_dir / "report.html").read_text(), (tiny_run_dir / "report.md").read_text(), terminal_verdict(tiny_run_dir)
    assert len(table) == 8  # 4 dimensions x 2 directions
    for row in table.itertuples(index=False):
        for place in (html, md, term):
            assert row.verdict in place and row.effect in place


def test_sample_size_note():
    import pandas as pd

    from vlens.report import sample_size_note

    def summary(n_null: int) -> pd.DataFrame:
        cells = [("Conservation", "+", "beats random", 0.1, 0.5, 197.0), ("Conservation", "-", "indistinguishable from random",
                 -0.2, 0.3, 1234.0), ("Self-Enhancement", "+", "moves the wrong way", -0.4, 0.2, 40.0),  # CI crosses 0
                 ("Self-Enhancement", "-", "indistinguishable from random", 0.05, 0.3, 30.0),  # CI excludes 0: decided
                 ("Self-Transcendence", "+", "instrument cannot see the prompted effect", -0.1, 0.1, float("inf"))]
        rows = [{"level": "kl", "at": 0.1, "steered": d, "direction": s, "verdict": v, "ci_low": lo, "ci_high": hi,
                 "items_for_power": n, "n_items": 24, "n_null": n_null} for d, s, v, lo, hi, n in cells]
        return pd.DataFrame(rows)  # fmt: skip

    note = sample_size_note(summary(20))
    assert "3 of 5 cells" in note and "(now 24)" in note
    assert "Conservation -: 1,234; Self-Enhancement +: 40; Self-Transcendence +: no number (the effect is 0)" in note
    assert "Conservation +" not in note and "Self-Enhancement -" not in note
    # 5 cells: Holm over 10 one-sided tests needs 10 / (1 + n) < 0.05, n >= 200; with 20 random edits p >= 1/21
    assert "cannot go below 1/21 = 0.048" in note and "fewer than 200 random edits" in note
    assert "random edits an empirical p" not in sample_size_note(summary(400))
    decided = summary(400).assign(ci_low=0.01)
    assert sample_size_note(decided) == "" and sample_size_note(pd.DataFrame()) == ""


def test_sample_size_note_in_all_three_places(tiny_run_dir):
    from vlens.report import sample_size_note, terminal_verdict
    from vlens.validate import ValidationResult

    note = sample_size_note(ValidationResult.load(tiny_run_dir / "validation").summary())
    assert "1/3 = 0.33" in note  # the tiny run's 2 random edits
    html, md = (tiny_run_dir / "report.html").read_text(), (tiny_run_dir / "report.md").read_text()
    term = " ".join(terminal_verdict(tiny_run_dir).split())  # rich wraps the caption
    assert html_escape(note) in html and note in md and note in term
    assert html.index("id='verdict'") < html.index(html_escape(note)) < html.index("Neuron sets")
    assert md.index("| dimension | direction | verdict |") < md.index(note) < md.index("## Neuron sets")


def test_generated_answers_show_their_questions(tiny_run_dir):
    answers = [json.loads(line) for line in (tiny_run_dir / "answers.jsonl").read_text().splitlines()]
    html = (tiny_run_dir / "report.html").read_text()
    table = html[html.index("<h2>Generated answers</h2>"):]
    assert answers and all(a["question"] for a in answers)
    for a in answers:
        assert f">{html_escape(a['question'])}</td>" in table and f">{html_escape(a['question_id'])}</td>" not in table


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_offline_in_chromium(tiny_run_dir, tmp_path):
    report = (tiny_run_dir / "report.html").resolve()
    netlog = tmp_path / "netlog.json"
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *QUIET, f"--user-data-dir={profile}", f"--log-net-log={netlog}", "--virtual-time-budget=5000",
                          "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    # circuitsvis rendered its React components: token spans exist inside the containers
    assert "Single neurons" in dom.stdout and re.search(r'id="circuits-vis-[^"]+"[^>]*>\s*<', dom.stdout)
    shot = tmp_path / "report.png"
    res = subprocess.run([CHROMIUM, *QUIET, f"--user-data-dir={profile}", "--window-size=1200,2400", f"--screenshot={shot}",
                          report.as_uri()], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0 and shot.stat().st_size > 20_000
    text = netlog.read_text().rstrip().rstrip(",")
    log = json.loads(text if text.endswith("}") else text + "]}")
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    jobs = [e["params"] for e in log["events"] if e["type"] == start_job and "url" in e.get("params", {})]
    # The browser's own background requests (update checks, time sync) have no page as their
    # initiator ("not an origin"); everything the report itself asked for does.
    from_page = [j for j in jobs if j.get("initiator") != "not an origin"]
    remote = sorted({j["url"] for j in from_page if not j["url"].startswith(("file:", "data:", "blob:"))})
    assert remote == [], f"the report made network requests: {remote[:5]}"


# Run 2 s (of virtual time) after load, once the circuitsvis views have rendered: writes the layout into the DOM.
MEASURE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const box = document.querySelector("table.verdict").getBoundingClientRect();
  const shown = [...document.querySelectorAll("figure.vlens-figure img")].map(
    (img) => img.getBoundingClientRect().width / parseFloat(img.style.width));
  document.body.setAttribute("data-verdict-top", String(box.top));
  document.body.setAttribute("data-verdict-bottom", String(box.bottom));
  document.body.setAttribute("data-figures", String(shown.length));
  document.body.setAttribute("data-smallest-scale", String(Math.min(...shown)));
}, 2000));
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_verdict_is_on_the_first_screen_and_figures_are_full_size(tiny_run_dir, tmp_path):
    """Issue 16: the verdict table sat about 10,000 px down the report. In a 1,400 x 1,000 window it must
    lie inside the first screen, and no figure may be shrunk below its own size (which keeps its
    10 pt text at 10 pt), as Chromium lays the page out."""
    page = tmp_path / "report.html"
    page.write_text((tiny_run_dir / "report.html").read_text().replace("</body>", MEASURE + "\n</body>", 1))
    dom = subprocess.run([CHROMIUM, *QUIET, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000",
                          "--hide-scrollbars", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    layout = {k: float(v) for k, v in re.findall(r'data-([\w-]+)="([^"]*)"', body)}
    assert set(layout) == {"verdict-top", "verdict-bottom", "figures", "smallest-scale"}, body
    assert 0 < layout["verdict-top"] < layout["verdict-bottom"] <= 1000, layout
    assert layout["figures"] >= 4 and layout["smallest-scale"] > 0.99, layout


def test_a_cut_or_missing_validation_is_refused(tiny_run_dir, tmp_path, capsys):
    """Issue 15: a validation.csv cut in half gave a wrong report with exit 0; a deleted
    validation/ silently dropped the section. Both are now one-line errors naming the file."""
    from vlens.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    csv = run / "validation" / "validation.csv"
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join(lines[: len(lines) // 2]))
    assert main(["report", str(run)]) == 2
    assert "validation.csv does not match validation.json" in capsys.readouterr().err
    shutil.rmtree(run / "validation")
    assert main(["report", str(run)]) == 2
    assert "validation.json does not exist" in capsys.readouterr().err


def test_verdict_caption_describes_the_level_the_table_shows():
    """With a KL target and a hand-given gamma, the table shows the KL level; the caption said "at gamma 1"."""
    import pandas as pd

    from vlens.report import verdict_caption

    rows = [{"level": "gamma", "at": 1.0, "n_items": 6, "n_null": 4, "verdict": "indistinguishable from random"},
            {"level": "kl", "at": 0.1, "n_items": 6, "n_null": 4, "verdict": "indistinguishable from random"}]  # fmt: skip
    caption = verdict_caption(pd.DataFrame(rows), {"dilemma_variant": "cloze-sum"})
    assert "at matched cost (KL 0.1 nats/token" in caption and "gamma" not in caption
