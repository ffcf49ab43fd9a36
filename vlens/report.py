"""The report of a run directory: one self-contained HTML file and a Markdown summary.

The HTML opens offline: figures are embedded PNG data URIs and the circuitsvis views carry
their JavaScript inline (no CDN). The Markdown file holds the headline table for reading
on a terminal or in a pull request.
"""

from __future__ import annotations

import html
import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from vlens._io import atomic_write_text, read_json

HEADLINE_COLUMNS = ["steered", "direction", "gamma", "baseline", "edited", "shift", "random_mean", "random_sd", "z", "p",
                    "kl", "random_kl", "leakage"]  # fmt: skip
VERDICT_COLUMNS = ["dimension", "direction", "verdict", "effect", "95% CI", "p (Holm)", "z", "prompted", "prompted z",
                   "of prompted", "steering", "dense", "KL"]  # fmt: skip
TERMINAL_COLUMNS = ["dimension", "direction", "verdict", "effect", "95% CI", "p (Holm)", "z", "prompted z", "KL"]


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """The value edits (paper mode) with their random controls (the per-gamma view)."""
    if summary.empty:
        return summary
    paper = summary[summary["mode"] == "paper"]
    return paper[[c for c in HEADLINE_COLUMNS if c in paper.columns]].reset_index(drop=True)


def verdict_table(summary: pd.DataFrame, *, level: tuple[str, float] | None = None) -> pd.DataFrame:
    """One line per (dimension, direction) at one dose level (default: the first KL target), the
    way every reader sees it: terminal, report.md and the top of report.html render this table.

    ``effect``: the mean shift of the ``+`` option's log-odds toward the steering direction over
    held-out dilemmas; ``95% CI`` over items; ``p (Holm)`` against the shared random null;
    ``prompted``: the prompted control's shift (the ceiling) and its paired z; ``of prompted``:
    effect / prompted; ``steering``, ``dense``: the controls' shifts at the same KL.
    """
    if summary.empty:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    s = _at_level(summary, level)
    get = lambda row, c: row[c] if c in row and pd.notna(row[c]) else float("nan")  # noqa: E731
    rows = []
    for _, r in s.iterrows():
        rows.append({
            "dimension": r.steered, "direction": r.direction, "verdict": r.verdict, "effect": f"{r.effect:+.3f}",
            "95% CI": f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]", "p (Holm)": f"{r.p_greater_holm:.3g}", "z": f"{r.z:+.2f}",
            "prompted": f"{get(r, 'prompted_shift'):+.3f}", "prompted z": f"{get(r, 'prompted_z'):+.1f}",
            "of prompted": f"{get(r, 'fraction_of_prompted'):+.2f}", "steering": f"{get(r, 'steering_shift'):+.3f}",
            "dense": f"{get(r, 'dense_shift'):+.3f}", "KL": f"{r.kl:.3f}",
        })  # fmt: skip
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS).replace({"+nan": "-", "nan": "-", "[+nan, +nan]": "-"})


def _at_level(summary: pd.DataFrame, level: tuple[str, float] | None) -> pd.DataFrame:
    """The cells of one dose level (default: the first KL target, else the first level)."""
    levels = summary[["level", "at"]].drop_duplicates()
    if level is None:
        kl = levels[levels.level == "kl"]
        level = tuple((kl if len(kl) else levels).iloc[0])
    return summary[(summary.level == level[0]) & (summary["at"] == level[1])]  # summary.at is pandas' .at indexer


def selector_verdicts(summary: pd.DataFrame, *, level: tuple[str, float] | None = None) -> pd.DataFrame:
    """A comparison's verdict table (:meth:`vlens.selectors.CompareResult.summary`): :func:`verdict_table`'s
    columns after ``selector`` and ``size`` (neurons per pole), one line per selector, size, dimension and direction."""
    if summary.empty:
        return pd.DataFrame(columns=["selector", "size", *VERDICT_COLUMNS])
    s = _at_level(summary, level)  # as verdict_table: the first KL target, else the first level
    table = verdict_table(s, level=tuple(s[["level", "at"]].iloc[0]) if len(s) else level)
    table.insert(0, "selector", s.selector.to_numpy())
    table.insert(1, "size", [f"{k:g}" for k in s["size"]])
    return table


def verdict_caption(summary: pd.DataFrame, meta: dict[str, Any]) -> str:
    """What the verdict table is, how many items and random edits it rests on, and what the sizes allow."""
    if summary.empty:
        return "No verdict: the validation has no value edits."
    first = _at_level(summary, None).iloc[0]  # the row of the level verdict_table shows
    where = f"at matched cost (KL {first['at']:g} nats/token on neutral text)" if first.level == "kl" else f"at gamma {first['at']:g}"
    n_items, n_null = int(first.n_items), int(first.n_null)
    text = (f"Value edits against {n_null} random edits {where}, on {n_items} held-out dilemmas per dimension "
            f"(instrument {meta.get('dilemma_variant', '?')}). Verdict words: beats random / indistinguishable from random / "
            "moves the wrong way / instrument cannot see the prompted effect (prompted z < 5).")  # fmt: skip
    blind = summary.verdict.eq("instrument cannot see the prompted effect")
    if blind.all():
        text += (" The instrument cannot see the prompted effect in any cell: on this model the dilemmas do not show a "
                 "stated value, so these edits cannot be judged either way.")  # fmt: skip
    return text


def sample_size_note(summary: pd.DataFrame, *, level: tuple[str, float] | None = None) -> str:
    """What the run is too small to decide, under the verdict table (terminal, report.md and report.html
    all render this text; "" when there is nothing to say).

    - An *undecided* cell (not "beats random", and its 95% interval over items contains 0): how many
      dilemmas per dimension its observed effect would need for a paired p < 0.05 (two-sided) with 80%
      power at the measured per-item spread (``items_for_power`` of :func:`vlens.experiment.cells`).
    - The floor of the empirical p: with n random edits no rank-based p goes below 1 / (n + 1), and
      Holm's correction over the run's one-sided tests lets none pass below
      :func:`vlens.significance.min_null_size` random edits (the quick run's 20 are far below 320).
    """
    from vlens.significance import BEATS, min_null_size

    if summary.empty:
        return ""
    s = _at_level(summary, level)
    parts = []
    undecided = s[(s.verdict != BEATS) & (s.ci_low <= 0) & (s.ci_high >= 0)]
    if len(undecided) and "items_for_power" in s.columns:
        def need(n: float) -> str:
            return "no number (the effect is 0)" if n == float("inf") else "unknown" if pd.isna(n) else f"{int(n):,}"

        cells = "; ".join(f"{r.steered} {r.direction}: {need(r.items_for_power)}" for r in undecided.itertuples())
        parts.append(f"Too small to decide: {len(undecided)} of {len(s)} cells neither beat random nor have a 95% "
                     f"interval that excludes 0. Dilemmas per dimension for each observed effect to reach p < 0.05 "
                     f"(paired over items, two-sided) with 80% power, at the measured per-item spread "
                     f"(now {int(s.n_items.max())}): {cells}. Beating random also needs the effect to stand apart from "
                     "the random edits, which more items help only as far as their spread is item noise.")  # fmt: skip
    n_null = int(s.n_null.min())
    need_null = min_null_size(len(s))
    if n_null < need_null:
        parts.append(f"With {n_null} random edits an empirical p (the value edit's rank among them) cannot go below "
                     f"1/{n_null + 1} = {1 / (n_null + 1):.2g}, and none can pass Holm's correction over {2 * len(s)} "
                     f"one-sided tests with fewer than {need_null} random edits; a smaller p comes from a normal fit "
                     f"to these {n_null} random effects and is only as good as that fit.")  # fmt: skip
    return " ".join(parts)


def verdict_html(summary: pd.DataFrame, meta: dict[str, Any]) -> str:
    """The verdict as HTML: caption, table and sample-size note (the report's top and ``ValidationResult``'s
    Jupyter display)."""
    note = sample_size_note(summary)
    return (f"<p>{html.escape(verdict_caption(summary, meta))}</p>"
            + verdict_table(summary).to_html(index=False, classes="table verdict")
            + (f"<p class='note'>{html.escape(note)}</p>" if note else ""))  # fmt: skip


def terminal_verdict(run_dir: str | os.PathLike, *, width: int = 140) -> str:
    """The verdict table of a run as the terminal shows it at the end of ``vlens run`` (drawn with rich)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    run_dir = Path(run_dir)
    v = _validation(run_dir, read_json(run_dir / "run.json"))
    if v is None:
        return ""
    summary = v.summary()
    caption = "\n\n".join(t for t in (verdict_caption(summary, v.meta), sample_size_note(summary)) if t)
    # One line per cell on a 140-column terminal: the verdict table's key columns, never wrapped inside a cell
    # (the controls' shifts are in report.md and report.html).
    table = Table(title="Verdict", caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                  pad_edge=False)  # fmt: skip
    short = {"direction": "to", "prompted z": "prompt z"}  # headers no wider than their numbers
    for col in TERMINAL_COLUMNS:
        table.add_column(short.get(col, col), justify="left" if col in ("dimension", "direction", "verdict") else "right",
                         no_wrap=True)  # fmt: skip
    rows = verdict_table(summary)
    for row in rows[TERMINAL_COLUMNS].itertuples(index=False):
        style = {"beats random": "green", "moves the wrong way": "red"}.get(row.verdict, "")
        table.add_row(*map(str, row), style=style)
    console = Console(width=width, record=True, file=io.StringIO(), force_terminal=False)
    console.print(table)
    return console.export_text()


def _fmt(df: pd.DataFrame) -> pd.DataFrame:
    return df.map(lambda v: f"{v:.3g}" if isinstance(v, float) else v)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' own needs the extra `tabulate` package)."""
    cells = _fmt(df).astype(str)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def markdown_summary(run_dir: str | os.PathLike) -> str:
    from vlens.locate import LocateResult

    run_dir = Path(run_dir)
    meta = read_json(run_dir / "run.json")
    cfg = meta["config"]
    lines = [f"# vlens run: {cfg['model']}", ""]
    if (v := _validation(run_dir, meta)) is not None:
        summary = v.summary()
        lines += ["## Verdict", "", verdict_caption(summary, v.meta), "", markdown_table(verdict_table(summary)), ""]
        if note := sample_size_note(summary):
            lines += [note, ""]
        for (level, at), _ in summary.groupby(["level", "at"], sort=False):
            if (level, at) != tuple(summary[["level", "at"]].iloc[0]):
                lines += [f"### At {level} {at:g}", "", markdown_table(verdict_table(summary, level=(level, at))), ""]
        circ = v.circumplex()
        if len(circ):
            lines += ["### Circumplex check (steering toward `+` should move the opposite dimension the other way)", "",
                      markdown_table(circ), ""]  # fmt: skip
    if (run_dir / "locate" / "locate.json").exists():
        loc = LocateResult.load(run_dir / "locate")
        lines += ["## Neuron sets", "", "```", loc.summary(), "```", ""]
    timings = {k: v for k, v in (meta.get("timings") or {}).items() if k != "report"}  # the report's own is in run.json
    lines += ["## Configuration", "", f"vlens {meta['vlens_version']}; stage timings (s): {timings}", "",
              "```json", json.dumps(cfg, indent=1, sort_keys=True), "```", ""]  # fmt: skip
    return "\n".join(lines)


def _validation(run_dir: Path, meta: dict[str, Any]) -> Any:
    """The run's validation, checked against its metadata; None only if the run has not validated yet."""
    from vlens.validate import ValidationResult

    folder = run_dir / "validation"
    if "validate" not in meta.get("done", []) and not (folder / "validation.json").exists():
        return None
    return ValidationResult.load(folder)  # names the file that is missing, cut short or edited


def write_report(run_dir: str | os.PathLike, *, model: Any = None, neuron_views: int = 1, cards: int = 3,
                 progress: bool = False) -> Path:  # fmt: skip
    """Write ``report.html`` and ``report.md`` into ``run_dir``; returns the HTML path.

    With ``model`` (or when the run's model loads offline), each dimension also gets
    circuitsvis views of its top ``neuron_views`` neurons per pole, and the top ``cards``
    neurons of every set get a card in ``report_cards/`` (:func:`vlens.cards.write_cards`),
    linked from the report. ``progress``: a bar with one step per section (the neuron views,
    cards and figures take most of the time).
    """
    from vlens import viz
    from vlens.activations import _progress
    from vlens.data import build_prompts, load_value_data
    from vlens.locate import LocateResult

    run_dir = Path(run_dir)
    meta = read_json(run_dir / "run.json")
    cfg = meta["config"]
    bar = _progress(len(REPORT_SECTIONS), initial=0, enabled=progress, desc="report")

    def done(section: str) -> None:  # one step of the bar per section, named as it finishes
        bar.set_postfix_str(section, refresh=False)
        bar.update(1)

    md = markdown_summary(run_dir)
    atomic_write_text(run_dir / "report.md", md)
    done("report.md")

    sections: list[str] = []
    validation = _validation(run_dir, meta)
    if validation is not None:  # the verdict first: what a reader came for
        summary = validation.summary()
        sections.append("<h2 id='verdict'>Verdict</h2>" + verdict_html(summary, validation.meta)
                        + _img(viz.matched_effects(validation))
                        + "<p class='caption'>Each panel: one steered dimension and direction. A value edit (large dot) that "
                          "beats random stands above the grey random edits at the same KL; the dashed line is the prompted "
                          "control, the shift a stated value produces.</p>")  # fmt: skip
    done("verdict")

    loc = None
    if (run_dir / "locate" / "locate.json").exists():
        loc = LocateResult.load(run_dir / "locate")
        parts = [f"<h2>Neuron sets</h2><pre>{html.escape(loc.summary())}</pre>",
                 _img(viz.neurons_per_layer(loc)), _img(viz.overlap_heatmap(loc))]  # fmt: skip
        for dim in loc.dimensions:
            parts.append(f"<h3>{html.escape(dim)}</h3>" + _img(viz.score_distribution(loc, dim)))
        sections.append("\n".join(parts))
    done("neuron sets")

    if loc is not None and neuron_views > 0:
        if model is None:
            try:
                import vlens

                model = vlens.load_model(cfg["model"])
            except Exception as err:  # the hub may be unreachable for a non-default model
                sections.append(f"<h2>Single neurons</h2><p>Not shown: the model could not be loaded ({html.escape(str(err))}).</p>")
        if model is not None:
            data = load_value_data(cfg.get("data_dir"))
            parts = ["<h2>Single neurons</h2><p>Tokens coloured by the neuron's activation (one colour scale per neuron, "
                     "shared by all its samples), on the top prompts of each pole.</p>"]  # fmt: skip
            headers, views = [], []
            for dim in loc.dimensions:
                prompts = build_prompts(data, model, dimensions=[dim], max_pairs=12, template=cfg["template"], seed=cfg["seed"])
                for pole in "+-":
                    ns = loc[f"{dim}:{pole}"]
                    for j in range(min(neuron_views, len(ns))):
                        layer, neuron = int(ns.layers[j]), int(ns.neurons[j])
                        view = viz.neuron_tokens(model, prompts, layer, neuron, k=2, hook=loc.stats.hook)
                        headers.append(f"<h3>{html.escape(dim)} {pole}: L{layer}.N{neuron} (delta {float(ns.delta[j]):+.3f})</h3>")
                        views.append(viz.circuitsvis_html(view))
            parts += [h + v for h, v in zip(headers, viz.share_bundle(views), strict=True)]
            sections.append("\n".join(parts))
    done("single neurons")

    if loc is not None and model is not None and cards > 0:  # offline pages, linked by relative paths
        from vlens.cards import card_links, write_cards

        links = write_cards(run_dir / "report_cards", model, loc, per_set=cards, data=load_value_data(cfg.get("data_dir")))
        sections.append("<h2>Neuron cards</h2><p>The top neurons of every set, each on a page of its own: scores, "
                        "activation per pole, the prompt pairs it fires on most and the tokens its output promotes.</p>"
                        + card_links(links, run_dir))  # fmt: skip
    done("neuron cards")

    if validation is not None:
        parts = ["<h2>Causal validation: every cell and level</h2>", _fmt(validation.summary()).to_html(index=False, classes="table"),
                 *(["<h3>Leakage into the other values</h3>", _img(viz.leakage_heatmap(validation))]
                   if (validation.table.metric == "orientation").any() else []),
                 "<h3>Circumplex check</h3>", _fmt(validation.circumplex()).to_html(index=False, classes="table"),
                 "<h3>Dose calibration</h3>", _fmt(validation.calibration).to_html(index=False, classes="table")]  # fmt: skip
        sections.append("\n".join(parts))
    done("validation tables")

    compare_dir = run_dir / "compare"
    if (compare_dir / "compare_summary.csv").exists():
        summary = pd.read_csv(compare_dir / "compare_summary.csv")
        costs = pd.read_csv(compare_dir / "costs.csv") if (compare_dir / "costs.csv").exists() else pd.DataFrame()
        figures = "".join((compare_dir / f"{name}.html").read_text() for name in ("matched_effects", "shift_by_size", "shift_vs_kl", "overlap")
                          if (compare_dir / f"{name}.html").exists())  # fmt: skip
        table = selector_verdicts(summary) if "verdict" in summary else _fmt(summary)  # earlier runs: per gamma
        sections.append("<h2>Baseline selectors</h2><p>Every selector's sets edited the same way (paper mode) and "
                        "compared with layer-matched random edits of the same size.</p>"
                        + table.to_html(index=False, classes="table") + figures
                        + "<h3>Cost of each selector</h3>" + _fmt(costs).to_html(index=False, classes="table"))  # fmt: skip
    done("baseline selectors")

    if (run_dir / "answers.jsonl").exists():
        answers = [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines() if line.strip()]
        # the question's text (answers of runs before vlens recorded it show the id), its id on hover
        left = "style='text-align:left'"
        rows = "".join(f"<tr><td {left} title='{html.escape(a['question_id'])}'>{html.escape(a.get('question') or a['question_id'])}"
                       f"</td><td {left}>{html.escape(a['edit'])}</td><td {left}>{html.escape(a['answer'])}</td></tr>"
                       for a in answers)  # fmt: skip
        sections.append(f"<h2>Generated answers</h2><table class='table'><tr><th>question</th><th>edit</th><th>answer</th></tr>{rows}</table>")
    done("generated answers")

    info = meta.get("model", {}).get("info", {})
    card = "\n".join(f"{k:14s} {v}" for k, v in info.items() if k != "extra")
    sections.append(f"<details><summary>Run configuration, model card and timings</summary><pre>{html.escape(card)}</pre>"
                    f"<pre>{html.escape(json.dumps(cfg, indent=1))}</pre>"
                    f"<p>Stage timings (s): {html.escape(str(meta.get('timings')))}</p></details>")  # fmt: skip
    page = html_page(f"vlens report: {cfg['model']}", "\n".join(f"<section>{s}</section>" for s in sections))
    out = atomic_write_text(run_dir / "report.html", page)
    done("report.html")
    bar.close()
    return out


REPORT_SECTIONS = ("report.md", "verdict", "neuron sets", "single neurons", "neuron cards", "validation tables", "baseline selectors",
                   "generated answers", "report.html")  # the steps of write_report's progress bar


SWEEP_COLUMNS = ["cell", "split", "chosen", "cell score", "beats random", "wrong way", "blind", "mean z", "half Jaccard",
                 "chance", "Spearman", "mirror overlap", "mirror chance", "neurons"]  # fmt: skip


def sweep_overview(table: pd.DataFrame) -> pd.DataFrame:
    """One line per cell and split of a sweep table (:data:`vlens.sweep.COLUMNS`), at its smallest KL target (the
    smallest gamma without one, as :func:`vlens.viz.sweep_effects`): the choosing rule's score, how many (dimension, direction) rows got each verdict, the mean z, and the
    means over the sets of the split-half Jaccard (with its chance level), the Spearman correlation of the
    scores, the overlap with the circumplex mirror set (with its chance level) and the set size."""
    if table.empty:
        return pd.DataFrame(columns=SWEEP_COLUMNS)
    kl = table[table.level == "kl"]
    part = kl if len(kl) else table
    first = part[part["at"] == part["at"].min()]
    rows = []
    for (cell, split), g in first.groupby(["cell", "split"], sort=False):
        count = g.verdict.value_counts()
        rows.append({"cell": cell, "split": split, "chosen": "yes" if g.chosen.any() else "", "cell score": g.cell_score.iloc[0],
                     "beats random": count.get("beats random", 0), "wrong way": count.get("moves the wrong way", 0),
                     "blind": count.get("instrument cannot see the prompted effect", 0), "mean z": g.z.mean(),
                     "half Jaccard": g.half_jaccard.mean(), "chance": g.half_jaccard_chance.mean(),
                     "Spearman": g.half_spearman.mean(), "mirror overlap": g.mirror_overlap.mean(),
                     "mirror chance": g.mirror_expected.mean(), "neurons": g.set_size.mean()})  # fmt: skip
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def write_sweep_report(folder: str | os.PathLike, table: pd.DataFrame, *, title: str, notes: list[str]) -> Path:
    """``sweep.html`` (the overview, the figure of :func:`vlens.viz.sweep_effects` and the whole table) and
    ``sweep.md`` (the overview) of a sweep folder; ``notes``: paragraphs above the overview (what the sweep
    chose and how). Returns the HTML path."""
    from vlens import viz

    folder = Path(folder)
    overview = sweep_overview(table)
    caption = ("One line per cell and split (dev: where settings are chosen; test: the chosen cell's result), at the "
               "smallest KL target; verdict counts over the (dimension, direction) rows; stability means over the sets "
               "(split-half Jaccard against its chance level, Spearman of the scores, overlap with the circumplex "
               "mirror set against its chance count).")  # fmt: skip
    md = [f"# {title}", "", *[f"{n}\n" for n in notes], caption, "", markdown_table(overview), "",
          "Figure: sweep.png; every row: sweep.csv.", ""]  # fmt: skip
    atomic_write_text(folder / "sweep.md", "\n".join(md))
    body = ("".join(f"<p>{html.escape(n)}</p>" for n in notes) + f"<p>{html.escape(caption)}</p>"
            + _fmt(overview).to_html(index=False, classes="table") + _img(viz.sweep_effects(table))
            + "<h2>Every cell, direction and level</h2>" + _fmt(table).to_html(index=False, classes="table"))  # fmt: skip
    return atomic_write_text(folder / "sweep.html", html_page(title, f"<section>{body}</section>"))


def _img(fig: Any) -> str:
    """The figure at its own size (legible fonts, at most the page's width) with its caption underneath."""
    from vlens import viz

    return viz.figure_html(fig)


def html_page(title: str, body: str) -> str:
    """A self-contained page in the report's style (the report, a sweep, an explanation): ``body`` is HTML."""
    return _PAGE.format(title=html.escape(title), body=body)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
pre {{ background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 12px; }}
table.table {{ border-collapse: collapse; font-size: 12px; margin: 1em 0; }}
table.table td, table.table th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
table.table {{ display: block; max-width: 100%; overflow-x: auto; }}
table.verdict td:nth-child(-n+3), table.verdict th:nth-child(-n+3) {{ text-align: left; }}
section {{ border-top: 1px solid #ddd; margin-top: 2em; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
