"""Rich display in Jupyter: neuron sets, locate runs, validations and selector comparisons as compact HTML.

A notebook shows :class:`~vlens.neurons.NeuronSet`, :class:`~vlens.locate.LocateResult`,
:class:`~vlens.validate.ValidationResult` and :class:`~vlens.selectors.compare.CompareResult` as a
small table plus their key figure when one is the value of a cell, the way pandas shows a DataFrame.
The HTML is self-contained and offline: the figure is an embedded PNG (``data:`` URI), and there is
no script and no style sheet to load.

Why the rendering lives here and not in the classes: the classes sit below :mod:`vlens.viz` and
:mod:`vlens.report` in the module layers (docs/index.md), and ``tests/test_layering.py`` forbids
importing upward even inside a method. So this module, above both, renders, and :func:`register`
attaches each renderer as the class's ``_repr_html_``. ``import vlens`` runs it (the package imports
this module), so every such object displays richly, whichever module it was imported from; viz and
report are imported only when something is displayed, so ``import vlens`` stays light.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vlens.locate import LocateResult
from vlens.neurons import NeuronSet
from vlens.selectors.compare import CompareResult
from vlens.validate import ValidationResult

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, so that `import vlens` stays light
    from matplotlib.figure import Figure

TOP_NEURONS = 10  # rows of a neuron set's table of top neurons
TOP_PER_SET = 5  # neurons per set in a locate result's table
COMPARE_COLUMNS = ["selector", "size", "steered", "direction", "effect", "ci_low", "ci_high", "null_mean", "null_sd", "z",
                   "p_greater_holm", "kl", "verdict", "target_delta"]  # fmt: skip


def _img(fig: Figure) -> str:
    from vlens import viz

    return f'<img src="{viz.figure_to_data_uri(fig)}" style="max-width:100%">'


def _table(df: pd.DataFrame) -> str:
    """A DataFrame as an HTML table, floats to 3 significant digits (as in the report)."""
    from vlens.report import _fmt

    return _fmt(df).to_html(index=False, border=0)


def _card(title: str, *parts: str) -> str:
    return f"<div><b>{html.escape(title)}</b>{''.join(parts)}</div>"


def _neuron_names(ns: NeuronSet, k: int) -> str:
    """The first ``k`` neurons of a set (sorted by score, highest first) as ``L3.N17 (+0.120)``."""
    d = ns.delta if ns.delta is not None else ns.scores
    return ", ".join(f"L{int(ns.layers[i])}.N{int(ns.neurons[i])} ({float(d[i]):+.3f})" for i in range(min(k, len(ns))))


def layer_profile(ns: NeuronSet) -> Figure:
    """A small bar figure: how many of the set's neurons sit in every layer, in the colour of its pole."""
    from matplotlib.figure import Figure

    from vlens import viz

    counts = ns.counts_per_layer().numpy()
    fig = Figure(figsize=(max(3.5, 0.14 * ns.n_layers + 1.2), 1.6), layout="constrained")
    ax = fig.subplots()
    ax.bar(np.arange(ns.n_layers), counts, width=0.8, color=viz.POLE_COLORS[ns.pole])
    ax.set_xlabel("layer", fontsize=8)
    ax.set_ylabel("neurons", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_xticks(np.arange(0, ns.n_layers, max(1, math.ceil(ns.n_layers / 15))))
    ax.grid(axis="y", alpha=0.3)
    return fig


def neuron_set_html(ns: NeuronSet, *, top: int = TOP_NEURONS) -> str:
    """A neuron set as HTML: name, size, hook point, method and model; its layer profile; its top neurons."""
    facts = pd.DataFrame({
        "set": [ns.name], "size": [len(ns)], "hook": [ns.provenance.get("hook", "?")], "scope": [ns.provenance.get("scope", "?")],
        "method": [ns.method], "selection": [ns.params.get("rule", "?")], "layers": [f"{ns.n_layers} x {ns.d_mlp} neurons"],
        "model": [(ns.provenance.get("model") or {}).get("name", "?")],
    })  # fmt: skip
    k = min(top, len(ns))
    columns = {"layer": ns.layers[:k].tolist(), "neuron": ns.neurons[:k].tolist(), ns.method: ns.scores[:k].tolist()}
    for name, label in (("delta", "delta"), ("act_prob", "P(a>0) in its pole")):
        if getattr(ns, name) is not None and label not in columns:  # a delta-ranked set's score is its delta
            columns[label] = getattr(ns, name)[:k].tolist()
    top_table = (f"<p>Top {k} of {len(ns)} neurons by {html.escape(ns.method)}:</p>" + _table(pd.DataFrame(columns))
                 if k else "<p>The set is empty.</p>")  # fmt: skip
    return _card(f"NeuronSet {ns.name}", _table(facts), _img(layer_profile(ns)), top_table)


def locate_html(result: LocateResult, *, top: int = TOP_PER_SET) -> str:
    """A locate run as HTML: per set its size, largest and mean delta and top neurons; the sets' Jaccard
    overlaps; the neurons-per-layer figure."""
    from vlens import viz

    rows = []
    for name, ns in result.neuron_sets.items():
        d = ns.delta if ns.delta is not None else ns.scores
        rows.append({"set": name, "size": len(ns), "max delta": float(d.max()) if len(ns) else math.nan,
                     "mean delta": float(d.mean()) if len(ns) else math.nan, f"top {top} neurons": _neuron_names(ns, top)})  # fmt: skip
    names = list(result.neuron_sets)
    overlap = result.overlap()
    jaccard = pd.DataFrame([[overlap[(a, b)] for b in names] for a in names], columns=names).round(3)
    jaccard.insert(0, "Jaccard", names)
    stats = result.stats.meta
    what = (f"hook {stats.get('hook', '?')}, scope {stats.get('scope', '?')}, selection {result.selection.rule}, "
            f"{stats.get('n_prompts', '?')} prompts")  # fmt: skip
    return _card(f"LocateResult: {len(names)} neuron sets ({what})", _table(pd.DataFrame(rows)),
                 "<p>Overlap between the sets (Jaccard):</p>", _table(jaccard), _img(viz.neurons_per_layer(result)))  # fmt: skip


def validation_html(result: ValidationResult) -> str:
    """A validation as HTML: the verdict (caption, table and sample-size note, rendered by
    :func:`vlens.report.verdict_html` exactly as at the top of report.html) and the matched-effects figure."""
    from vlens import viz
    from vlens.report import verdict_html

    summary = result.summary()
    levels = summary[["level", "at"]].drop_duplicates()
    more = f"<p>{len(levels)} dose levels; the table shows the first, <code>summary()</code> has every one.</p>" if len(levels) > 1 else ""
    model = (result.meta.get("model") or {}).get("name", "?")
    return _card(f"ValidationResult: {model}, {len(result.table)} rows", verdict_html(summary, result.meta), more,
                 _img(viz.matched_effects(result)))  # fmt: skip


def compare_html(result: CompareResult) -> str:
    """A selector comparison as HTML: its verdicts (one row per selector, size, dimension and direction, against
    the random edits of that size at matched cost) and its matched-effects figure."""
    from vlens import viz

    summary = result.summary()
    table = summary[[c for c in COMPARE_COLUMNS if c in summary.columns]]
    selectors = ", ".join(result.meta.get("selectors") or sorted(summary.selector.unique()))
    return _card(f"CompareResult: {selectors}", _table(table), _img(viz.compare_figures(result)["matched_effects"]))


def register() -> None:
    """Attach the renderers as ``_repr_html_`` of the four result classes (idempotent)."""
    for cls, render in ((NeuronSet, neuron_set_html), (LocateResult, locate_html), (ValidationResult, validation_html),
                        (CompareResult, compare_html)):  # fmt: skip
        cls._repr_html_ = render


register()

__all__ = ["compare_html", "layer_profile", "locate_html", "neuron_set_html", "register", "validation_html"]
