"""The report of a run directory: one self-contained HTML file and a Markdown summary.

The HTML opens offline: figures are embedded PNG data URIs and the circuitsvis views carry
their JavaScript inline (no CDN). The Markdown file holds the headline table for reading
on a terminal or in a pull request.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from vlens._io import atomic_write_text, read_json

HEADLINE_COLUMNS = ["steered", "direction", "gamma", "baseline", "edited", "shift", "random_mean", "random_sd", "z", "p",
                    "kl", "random_kl", "leakage"]  # fmt: skip


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """The value edits (paper mode) with their random controls: the table every reader needs."""
    if summary.empty:
        return summary
    paper = summary[summary["mode"] == "paper"]
    return paper[[c for c in HEADLINE_COLUMNS if c in paper.columns]].reset_index(drop=True)


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
    lines = [f"# vlens run: {cfg['model']}", "",
             f"vlens {meta['vlens_version']}; scope `{cfg['scope']}`, hook `{cfg['hook']}`, selection `{cfg['selection']}`, "
             f"{cfg['max_pairs'] or 'all'} prompt pairs per dimension; gammas {cfg['gammas']}, {cfg['n_random']} random sets.", ""]  # fmt: skip
    if (run_dir / "locate" / "locate.json").exists():
        loc = LocateResult.load(run_dir / "locate")
        lines += ["## Neuron sets", "", "```", loc.summary(), "```", ""]
    if (v := _validation(run_dir, meta)) is not None:
        head = headline(v.summary())
        lines += ["## Causal validation (paper edit against size-matched random edits)", "",
                  "`shift`: change of the steered dimension's forced-choice orientation from the unedited model, signed "
                  "toward the steering direction. `z`, `p`: against the random edits. `kl`: capability cost (nats/token). "
                  "`leakage`: mean absolute change of the other dimensions.", "",
                  markdown_table(head) if len(head) else "(no value edits)", ""]  # fmt: skip
    return "\n".join(lines)


def _validation(run_dir: Path, meta: dict[str, Any]) -> Any:
    """The run's validation, checked against its metadata; None only if the run has not validated yet."""
    from vlens.validate import ValidationResult

    folder = run_dir / "validation"
    if "validate" not in meta.get("done", []) and not (folder / "validation.json").exists():
        return None
    return ValidationResult.load(folder)  # names the file that is missing, cut short or edited


def write_report(run_dir: str | os.PathLike, *, model: Any = None, neuron_views: int = 1) -> Path:
    """Write ``report.html`` and ``report.md`` into ``run_dir``; returns the HTML path.

    With ``model`` (or when the run's model loads offline), each dimension also gets
    circuitsvis views of its top ``neuron_views`` neurons per pole.
    """
    from vlens import viz
    from vlens.data import build_prompts, load_value_data
    from vlens.locate import LocateResult

    run_dir = Path(run_dir)
    meta = read_json(run_dir / "run.json")
    cfg = meta["config"]
    md = markdown_summary(run_dir)
    atomic_write_text(run_dir / "report.md", md)

    sections: list[str] = []
    info = meta.get("model", {}).get("info", {})
    card = "\n".join(f"{k:14s} {v}" for k, v in info.items() if k != "extra")
    sections.append(f"<h2>Run</h2><pre>{html.escape(card)}</pre><pre>{html.escape(json.dumps(cfg, indent=1))}</pre>"
                    f"<p>Stage timings (s): {html.escape(str(meta.get('timings')))}</p>")  # fmt: skip

    loc = None
    if (run_dir / "locate" / "locate.json").exists():
        loc = LocateResult.load(run_dir / "locate")
        parts = [f"<h2>Neuron sets</h2><pre>{html.escape(loc.summary())}</pre>",
                 _img(viz.neurons_per_layer(loc)), _img(viz.overlap_heatmap(loc))]  # fmt: skip
        for dim in loc.dimensions:
            parts.append(f"<h3>{html.escape(dim)}</h3>" + _img(viz.score_distribution(loc, dim)))
        sections.append("\n".join(parts))

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
                        view = viz.neuron_tokens(model, prompts, layer, neuron, k=2)
                        headers.append(f"<h3>{html.escape(dim)} {pole}: L{layer}.N{neuron} (delta {float(ns.delta[j]):+.3f})</h3>")
                        views.append(viz.circuitsvis_html(view))
            parts += [h + v for h, v in zip(headers, viz.share_bundle(views), strict=True)]
            sections.append("\n".join(parts))

    if (v := _validation(run_dir, meta)) is not None:
        summary = v.summary()
        parts = ["<h2>Causal validation</h2>",
                 "<p>Orientation is the mean probability of preferring the <code>+</code> option of held-out forced-choice "
                 "dilemmas (option likelihood, both option orders). Random edits have the same number of neurons per layer.</p>",
                 _fmt(headline(summary)).to_html(index=False, classes="table")]  # fmt: skip
        for dim in v.table[v.table.source != "none"].steered.unique():
            parts.append(f"<h3>{html.escape(dim)}</h3>" + _img(viz.orientation_vs_gamma(v, dim)))
        parts += [_img(viz.cost_vs_gamma(v)), _img(viz.shift_vs_kl(v)), _img(viz.leakage_heatmap(v)),
                  "<h3>All value-edit conditions</h3>", _fmt(summary).to_html(index=False, classes="table")]  # fmt: skip
        sections.append("\n".join(parts))

    compare_dir = run_dir / "compare"
    if (compare_dir / "compare_summary.csv").exists():
        summary = pd.read_csv(compare_dir / "compare_summary.csv")
        costs = pd.read_csv(compare_dir / "costs.csv") if (compare_dir / "costs.csv").exists() else pd.DataFrame()
        figures = "".join((compare_dir / f"{name}.html").read_text() for name in ("shift_by_size", "shift_vs_kl", "overlap")
                          if (compare_dir / f"{name}.html").exists())  # fmt: skip
        sections.append("<h2>Baseline selectors</h2><p>Every selector's sets edited the same way (paper mode) and "
                        "compared with layer-matched random edits of the same size.</p>"
                        + _fmt(summary).to_html(index=False, classes="table") + figures
                        + "<h3>Cost of each selector</h3>" + _fmt(costs).to_html(index=False, classes="table"))  # fmt: skip

    if (run_dir / "answers.jsonl").exists():
        answers = [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines() if line.strip()]
        rows = "".join(f"<tr><td>{html.escape(a['question_id'])}</td><td>{html.escape(a['edit'])}</td>"
                       f"<td>{html.escape(a['answer'])}</td></tr>" for a in answers)  # fmt: skip
        sections.append(f"<h2>Generated answers</h2><table class='table'><tr><th>question</th><th>edit</th><th>answer</th></tr>{rows}</table>")

    page = _PAGE.format(title=html.escape(f"vlens report: {cfg['model']}"), body="\n".join(f"<section>{s}</section>" for s in sections))
    return atomic_write_text(run_dir / "report.html", page)


def _img(fig: Any) -> str:
    from vlens import viz

    uri = viz.figure_to_data_uri(fig)
    return f'<img src="{uri}" style="max-width:100%">'


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
pre {{ background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 12px; }}
table.table {{ border-collapse: collapse; font-size: 12px; margin: 1em 0; }}
table.table td, table.table th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
section {{ border-top: 1px solid #ddd; margin-top: 2em; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
