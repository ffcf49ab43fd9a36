"""Views of located neurons and of their causal validation, for Jupyter and for HTML reports.

Three kinds of output:

- **token views** (circuitsvis): :func:`neuron_activations` reads one neuron's activation on
  every token of some prompts (one forward pass per batch, a hook that copies only that
  neuron); :func:`neuron_tokens` shows the prompts of each pole on which the neuron fires
  most, all on one colour scale; :func:`top_prompts` is the same ranking as a table;
- **figures of a locate run** (matplotlib): :func:`neurons_per_layer`,
  :func:`score_distribution`, :func:`overlap_heatmap`;
- **figures of a validation or a comparison** (matplotlib, any :mod:`vlens.experiment` table; ``selector=``
  and ``size=`` pick one of a comparison's): :func:`matched_effects` (the verdict at matched KL),
  :func:`shift_vs_kl`, :func:`orientation_vs_gamma`, :func:`cost_vs_gamma`, :func:`leakage_heatmap`,
  :func:`compare_figures`.

Every figure follows one colour convention, :data:`COLORS` (blue: toward the ``+`` pole, red: toward
the ``-`` pole, grey: random edits, black dashed: the prompted control, black dotted: the unedited
model, teal and ochre: the steering and dense controls), keeps its text at :data:`FONT_SIZE` pt or
more and its legend outside the data, is at most :data:`MAX_WIDTH` inches wide (the report's text
column, where :func:`figure_html` shows it at its own size), and carries a one-sentence ``caption``
saying what to look for (:data:`CAPTIONS`).

Figures are built as :class:`matplotlib.figure.Figure` objects, never through pyplot, so
nothing here touches pyplot's global state or opens a window: a figure is shown when it is
the value of a Jupyter cell, and :func:`figure_html`, :func:`figure_to_data_uri` and :func:`circuitsvis_html` turn
either kind into self-contained HTML with no network access (the circuitsvis JavaScript is
inlined, never loaded from a CDN).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any
from uuid import uuid4

import matplotlib
import numpy as np
import pandas as pd
import torch
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from vlens import experiment
from vlens.data.prompts import Prompt
from vlens.locate import LocateResult
from vlens.models import model_info, tokenize
from vlens.runner import Batch, activation_fn, check_layers, forward, resolve_hook
from vlens.values import POLES

# One colour convention for every figure, stated in docs/validation.md ("Reading the figures").
COLORS: dict[str, str] = {
    "+": "#1f77b4",  # blue: a value edit toward the + pole (the value), and the + neuron set
    "-": "#d62728",  # red: a value edit toward the - pole (its reversed aspect), and the - neuron set
    "random": "#8c8c8c",  # grey: size-matched random edits, the null every value edit is judged against
    "prompted": "#000000",  # black dashed line: the prompted control, the value stated in the prompt
    "steering": "#2a9d8f",  # teal triangles: the steering-vector control
    "dense": "#e09f00",  # ochre squares: the dense MLP control
    "boost_only": "#2ca02c",  # green: the value edit's boost alone (an ablation)
    "clamp_only": "#9467bd",  # purple: its clamp alone (an ablation)
    "unedited": "#000000",  # black dotted line: the unedited model (a shift of 0)
}
POLE_COLORS = {pole: COLORS[pole] for pole in POLES}
# Selectors of a comparison: none blue, red or grey, which already mean a pole or the random null
# (the `random` selector draws random sets, so it is grey like the null).
SELECTOR_COLORS = ("#7570b3", "#e7298a", "#66a61e", "#a6761d", "#ff7f00", "#6a3d9a", "#b15928", "#17becf")
FAMILY_STYLE = {  # the marker of each family in the figures that show several; colours from COLORS
    "random": {"marker": "x", "color": COLORS["random"], "label": "random edits"},
    "steering": {"marker": "^", "color": COLORS["steering"], "label": "steering vector (control)"},
    "dense": {"marker": "s", "color": COLORS["dense"], "label": "dense MLP edit (control)"},
}
_PROMPTED_LINE = {"color": COLORS["prompted"], "ls": "--", "lw": 1.3, "label": "prompted (the value stated)"}
_UNEDITED_LINE = {"color": COLORS["unedited"], "ls": ":", "lw": 1.3, "label": "unedited model"}
FONT_SIZE = 10  # pt: the smallest text in any figure
# Inches: the report's text column (1,056 CSS px at 96 px per inch). No figure is wider, and the report
# shows each at its own size, so FONT_SIZE pt in a figure reads as FONT_SIZE pt in the report.
MAX_WIDTH = 11.0
_RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": FONT_SIZE, "ytick.labelsize": FONT_SIZE,
       "legend.fontsize": FONT_SIZE, "legend.title_fontsize": FONT_SIZE, "figure.titlesize": 13}  # fmt: skip

CAPTIONS: dict[str, str] = {  # what to look for, one sentence per figure: the report prints it underneath
    "matched_effects": "A value edit that carries its value stands above the grey random edits at the same KL, its 95% "
    "interval clear of them and reaching toward the dashed prompted line; a dot inside the grey cloud does no better "
    "than random neurons.",
    "shift_vs_kl": "Steering rather than breaking: at the same KL cost, a value edit should move its dimension further "
    "toward its pole than the grey random edits do.",
    "orientation_vs_gamma": "The coloured value edit should pull away from the grey random edits as gamma grows, toward "
    "its own pole (up for +, down for -); the dotted line is the unedited model, the dashed one the prompted control.",
    "cost_vs_gamma": "Value edits should cost about as much KL as the grey random edits at the same gamma; where they "
    "cost more, compare effects at matched KL (the verdict figure), not at equal gamma.",
    "leakage_heatmap": "The outlined cells, the steered dimension itself, should hold the strongest colour; colour "
    "elsewhere is leakage into other values (blue: toward that dimension's + pole, red: toward its - pole).",
    "neurons_per_layer": "Which layers each set comes from (blue: + set, red: - set); the ranking is over the whole "
    "model, so a peak marks the layers where the two poles' prompts differ most.",
    "score_distribution": "The coloured sets should sit in the far tails of the grey distribution of every neuron; a "
    "cut-off inside the grey bulk selects neurons whose scores may differ by chance.",
    "overlap_heatmap": "Sets of different dimensions should share few neurons, except opposing poles of opposing "
    "dimensions (Openness_to_Change + with Conservation -), which theory predicts to overlap.",
    "compare_matched_effects": "A selector that finds neurons that matter stands above the grey band of random edits "
    "of its size at the same KL, reaching toward the dashed prompted line; a point inside the band does no better than "
    "random sets of the same size.",
    "compare_overlap": "How far the selectors agree: a Jaccard near 1 means they pick the same neurons, near 0 "
    "different ones.",
}


class _Figure(Figure):
    """A matplotlib Figure that Jupyter shows as PNG even when no pyplot backend is active; ``caption``
    says in one sentence what to look for (:func:`figure_html` prints it under the figure)."""

    caption: str = ""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    return _Figure(figsize=(min(width, MAX_WIDTH), height), layout="constrained")


def _styled(name: str) -> Callable[[Callable[..., Figure]], Callable[..., Figure]]:
    """Build a figure under the shared font sizes (:data:`_RC`) and give it its caption, ``CAPTIONS[name]``."""

    def wrap(build: Callable[..., Figure]) -> Callable[..., Figure]:
        @functools.wraps(build)
        def styled(*args: Any, **kwargs: Any) -> Figure:
            with matplotlib.rc_context(_RC):
                fig = build(*args, **kwargs)
                return _finish(fig, name)

        return styled

    return wrap


def _finish(fig: Figure, name: str) -> Figure:
    # Tick labels are made again at draw time, after the rc context has closed: fix their size on each axes.
    for ax in fig.axes:
        ax.tick_params(labelsize=FONT_SIZE)
    fig.caption = CAPTIONS[name]
    return fig


def _legend_below(fig: Figure, *, ncols: int = 3) -> None:
    """One legend for the whole figure, under the panels (never over the data), each label once."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(ncols, len(handles)),
                   frameon=False)  # fmt: skip


def _null(ax: Any, x: Any, y: Any, levels: Any = None, *, errorbar_dx: float = 0.0) -> None:
    """Random edits as grey crosses, and per dose level their mean +/- sd (ddof=1) as an error bar,
    drawn ``errorbar_dx`` to the right of the crosses' mean position (beside a value edit at the same x)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if not len(y):
        return
    ax.scatter(x, y, marker="x", s=30, lw=1.2, color=COLORS["random"], zorder=2, label="random edits")
    codes = np.zeros(len(y), dtype=int) if levels is None else pd.factorize(pd.Series(list(levels)))[0]
    for code in np.unique(codes):
        sel = codes == code
        if sel.sum() >= 2:
            ax.errorbar([x[sel].mean() + errorbar_dx], [y[sel].mean()], yerr=[y[sel].std(ddof=1)], fmt="_", ms=16, mew=2,
                        capsize=5, lw=2, color=COLORS["random"], zorder=2, label="random edits: mean ± sd")  # fmt: skip


def _compact_ticks(axis: Any, nbins: int = 3) -> None:
    """At most ``nbins`` ticks written out in full (no offset or 1e-3 above the axis): matched KLs differ
    only in their third digit, and many long tick labels overlap at a legible size."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    axis.set_major_locator(MaxNLocator(nbins=nbins))
    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    axis.set_major_formatter(fmt)


def _hide_unused(fig: Figure, axes: Any, used: int) -> None:
    for ax in list(np.ravel(axes))[used:]:
        fig.delaxes(ax)


_SCORE_LABELS = {
    "delta": "delta = P(a>0 | +) - P(a>0 | -)",
    "mean_diff": "mean activation (+) - mean activation (-)",
    "cohens_d": "Cohen's d (+ vs -)",
    "welch_t": "Welch t (+ vs -)",
    "entropy": "entropy of activation probability over the poles",
}


# ============================================================================ token views


def neuron_activations(
    model: Any,
    prompts: Sequence[Prompt | str],
    layer: int,
    neuron: int,
    *,
    hook: str = "post",
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """One neuron's activation on every token of every prompt, in the order of ``prompts``.

    Prompts are tokenized as :mod:`vlens.activations` does (a BOS exactly once), padded on
    the right into batches of ``batch_size`` and run with the attention mask and explicit
    position ids; the forward pass stops after ``layer``, and the hook on
    ``blocks.{layer}.mlp.hook_post`` (``hook="gate"``: the gate activation, as in
    :func:`vlens.locate`) copies only column ``neuron``. Each prompt gives a dict with

    - ``tokens``: the token strings (pieces of the prompt text; they concatenate back to it,
      apart from a BOS token the tokenizer added);
    - ``activations``: one float per token;
    - ``question_start``: index of the first question-scope token (the first token that
      starts at or after ``prompt.shared_start``: the part both poles of a pair share);
    - ``prompt_id``, ``pair_id``, ``dimension``, ``pole``, ``layer``, ``neuron``, ``hook``.

    Plain strings are accepted too (their question scope is the whole text, pole ``""``).
    """
    _check_neuron(model, layer, neuron)
    point = resolve_hook(model, hook, layer)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rows = _tokenize(model, prompts)
    act = activation_fn(model, hook)
    box: list[Tensor] = []

    def copy_column(tensor: Float[Tensor, "batch pos d_mlp"], hook: Any) -> None:
        box.append(act(tensor[..., neuron]).detach().to(torch.float32).cpu())

    values: list[list[float]] = [[] for _ in rows]
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]["ids"]), i))  # similar lengths share a batch
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        box.clear()
        with torch.inference_mode():
            forward(model, Batch.of(model, [rows[i]["ids"] for i in batch]), hooks=[(point, copy_column)], stop_at=point)
        column: Float[Tensor, "batch pos"] = box[0]
        for j, i in enumerate(batch):
            values[i] = column[j, : len(rows[i]["ids"])].tolist()
    out = []
    for r, acts in zip(rows, values, strict=True):
        r = dict(r)
        del r["ids"]
        out.append(r | {"activations": acts, "layer": int(layer), "neuron": int(neuron), "hook": hook})
    return out


def _tokenize(model: Any, prompts: Sequence[Prompt | str]) -> list[dict[str, Any]]:
    if isinstance(prompts, str | Prompt):
        prompts = [prompts]
    if not prompts:
        raise ValueError("no prompts given")
    n_ctx = model_info(model).n_ctx
    rows = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            p = Prompt(f"text:{i}", "", "", "", "", "", p, 0)
        elif not isinstance(p, Prompt):
            raise TypeError(f"prompts must be vlens Prompt objects or strings, got {type(p).__name__}")
        ids, offs = tokenize(model, p.text)
        if len(ids) > n_ctx:
            raise ValueError(f"prompt {p.id!r} has {len(ids)} tokens, more than the model's context window of {n_ctx}")
        question = [k for k, (s, _) in enumerate(offs) if s >= p.shared_start]
        if not question:
            raise ValueError(f"prompt {p.id!r} has no tokens after its description (shared_start is at the end)")
        rows.append({"prompt_id": p.id, "pair_id": p.pair_id, "dimension": p.dimension, "pole": p.pole,
                     "tokens": _str_tokens(model, p.text, ids, offs), "question_start": question[0], "ids": ids})  # fmt: skip
    return rows


def _str_tokens(model: Any, text: str, ids: list[int], offs: list[tuple[int, int]]) -> list[str]:
    """Each token's piece of ``text``: everything after the previous token up to its own end.

    So the pieces concatenate to the text exactly, spaces that a tokenizer trims from its
    offsets included, and a character split over several byte tokens is shown once.
    A token with no span (the BOS added by :func:`vlens.models.tokenize`) is decoded.
    """
    out, prev = [], 0
    for tok_id, (start, end) in zip(ids, offs, strict=True):
        if start < 0:
            out.append(model.tokenizer.decode([tok_id]))
            continue
        out.append(text[prev:end] if end > prev else "")
        prev = max(prev, end)
    return out


def _check_neuron(model: Any, layer: int, neuron: int) -> None:
    info = model_info(model)
    for name, value in (("layer", layer), ("neuron", neuron)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    check_layers(model, [layer])
    if not 0 <= neuron < info.d_mlp:
        raise ValueError(f"neuron {neuron} out of range: this model has neurons 0..{info.d_mlp - 1} in each layer")


def _ranked(rows: list[dict[str, Any]], k: int | None) -> pd.DataFrame:
    """Rank prompts within each pole by the neuron's max activation over their question-scope tokens."""
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1 (or None for every prompt), got {k}")
    records = []
    for i, r in enumerate(rows):
        q = np.asarray(r["activations"][r["question_start"] :], dtype=np.float64)
        arg = int(q.argmax()) + r["question_start"]
        records.append({"pole": r["pole"], "prompt_id": r["prompt_id"], "pair_id": r["pair_id"],
                        "dimension": r["dimension"], "max_activation": float(q.max()), "argmax_token": r["tokens"][arg],
                        "argmax_position": arg, "mean_activation": float(q.mean()), "n_question_tokens": len(q),
                        "_row": i})  # fmt: skip
    df = pd.DataFrame(records)
    # the maximum on the same pair's other prompt (same question, other pole's description)
    by_pair = {(rec["pair_id"], rec["pole"]): rec["max_activation"] for rec in records if rec["pair_id"]}
    twin = {"+": "-", "-": "+"}
    df["other_pole_max"] = [by_pair.get((rec["pair_id"], twin.get(rec["pole"], "")), math.nan) for rec in records]
    poles = [p for p in POLES if p in set(df.pole)] + sorted(set(df.pole) - set(POLES))
    parts = []
    for pole in poles:
        part = df[df.pole == pole].sort_values(["max_activation", "_row"], ascending=[False, True], kind="stable")
        part = part.head(k) if k is not None else part
        parts.append(part.assign(rank=range(1, len(part) + 1)))
    out = pd.concat(parts, ignore_index=True)
    cols = ["pole", "rank", "max_activation", "argmax_token", "argmax_position", "mean_activation", "other_pole_max",
            "n_question_tokens", "prompt_id", "pair_id", "dimension", "_row"]  # fmt: skip
    return out[cols]


def top_prompts(
    model: Any,
    prompts: Sequence[Prompt | str],
    layer: int,
    neuron: int,
    *,
    k: int | None = 3,
    hook: str = "post",
    batch_size: int = 8,
) -> pd.DataFrame:
    """The prompts of each pole on which the neuron fires most, as a table (``k=None``: all of them).

    Ranked within each pole by the neuron's maximum activation over the question-scope
    tokens (the tokens both poles of a pair share, so a difference there comes from the
    description). Columns: ``pole``, ``rank``, ``max_activation``, ``argmax_token`` (where
    the maximum is) and its position, ``mean_activation`` over the question tokens,
    ``other_pole_max`` (the same pair's other prompt, if given), ``prompt_id``, ....
    """
    rows = neuron_activations(model, prompts, layer, neuron, hook=hook, batch_size=batch_size)
    return _ranked(rows, k).drop(columns="_row")


def neuron_tokens(
    model: Any,
    prompts: Sequence[Prompt | str],
    layer: int,
    neuron: int,
    *,
    k: int = 3,
    hook: str = "post",
    batch_size: int = 8,
    show: str = "question",
) -> RenderedHTML:
    """The top-``k`` prompts of each pole for one neuron, tokens coloured by its activation.

    Prompts are ranked as in :func:`top_prompts`. ``show="question"`` shows the
    question-scope tokens (those the ranking used), ``show="all"`` the whole prompt. Every
    sample is drawn with circuitsvis' ``ColoredTokens`` on **one** colour scale, the same
    ``minValue`` / ``maxValue`` for all of them (the extremes over every token shown, with
    0 inside the range: blue above 0, red below), so colours compare across samples and
    poles. Returns a circuitsvis ``RenderedHTML`` (shown by Jupyter; :func:`circuitsvis_html`
    makes a standalone page of it), with the JavaScript bundle inlined once for all samples.
    """
    if show not in {"question", "all"}:
        raise ValueError(f"show must be 'question' or 'all', got {show!r}")
    rows = neuron_activations(model, prompts, layer, neuron, hook=hook, batch_size=batch_size)
    table = _ranked(rows, k)
    samples = []
    for rec in table.to_dict("records"):
        r = rows[rec["_row"]]
        first = r["question_start"] if show == "question" else 0
        samples.append((rec, r["tokens"][first:], r["activations"][first:]))
    low = min(min(v) for _, _, v in samples)
    high = max(max(v) for _, _, v in samples)
    vmin, vmax = min(low, -1e-6), max(high, 1e-6)  # 0 inside the range, and never a zero-width scale
    point = resolve_hook(model, hook, layer)
    caption = (f"<b>layer {layer}, neuron {neuron}</b> ({html.escape(point)}"
               f"{', gate activation' if hook == 'gate' else ''}): top {k} prompts of each pole by the maximum "
               f"over the question tokens. One colour scale for all samples: {vmin:.4g} (red) .. 0 (white) .. "
               f"{vmax:.4g} (blue).")  # fmt: skip
    headers, props = [], []
    for rec, toks, acts in samples:
        label = f"pole {rec['pole']}" if rec["pole"] else "text"
        headers.append(f"{html.escape(label)} #{rec['rank']} &middot; max {rec['max_activation']:.4g} at "
                       f"&lsquo;{html.escape(rec['argmax_token'])}&rsquo; &middot; <code>{html.escape(rec['prompt_id'])}</code>")  # fmt: skip
        props.append({"tokens": [html.escape(t, quote=False) for t in toks], "values": acts,
                      "minValue": vmin, "maxValue": vmax})  # fmt: skip
    return _render_many("ColoredTokens", props, headers, caption=caption)


# ---------------------------------------------------------------------------- circuitsvis plumbing


class _LocalHTML(RenderedHTML):
    """A circuitsvis ``RenderedHTML`` that Jupyter always shows from its inlined bundle: circuitsvis' own
    ``_repr_html_`` probes google.com and, if that answers, loads the bundle from a CDN instead, so a
    notebook saved with its outputs would need the network to show them."""

    def _repr_html_(self) -> str:
        return self.local_src


@lru_cache(maxsize=1)
def _circuitsvis_js() -> str:
    """The circuitsvis browser bundle that its own ``render_local`` inlines (read from the installed package)."""
    import circuitsvis.utils.render as cv_render

    path = Path(cv_render.__file__).parent.parent / "dist" / "cdn" / "iife.js"
    js = path.read_text(encoding="utf-8")
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)  # same string in JS, no end of the script element
    return re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", js)


def _js_props(props: dict[str, Any]) -> str:
    from circuitsvis.utils.convert_props import convert_props

    # "<" only occurs inside JSON strings; as \u003c it cannot end the script element or open a comment
    return convert_props(props).replace("<", "\\u003c")


def _render_many(
    element: str, props: list[dict[str, Any]], headers: list[str], *, caption: str = "", columns: int = 1
) -> RenderedHTML:
    """Several circuitsvis components in one ``RenderedHTML``: one container each, under a header.

    circuitsvis' ``render`` inlines its 1.3 MB bundle once per component; here the local
    version inlines it once and renders every component from the same script, and the CDN
    version imports it once. ``columns > 1`` lays the components out side by side, that many
    to a row (e.g. the ``+`` and ``-`` prompt of a pair).
    """
    from circuitsvis import __version__ as cv_version

    ids = ["circuits-vis-" + str(uuid4())[:13] for _ in props]
    blocks = [f'<div style="margin: 10px 0 2px 0; font-family: sans-serif; font-size: 13px;">{h}</div>\n'
              f'<div id="{i}" style="margin: 0 0 12px 0;"></div>' for i, h in zip(ids, headers, strict=True)]  # fmt: skip
    if columns > 1:  # one grid row per group: each block (header + container) is one cell
        grid = f'<div style="display: grid; grid-template-columns: repeat({columns}, minmax(0, 1fr)); column-gap: 18px;">'
        blocks = [grid + "".join(f"<div>{b}</div>" for b in blocks[i : i + columns]) + "</div>"
                  for i in range(0, len(blocks), columns)]  # fmt: skip
    body = (f'<div style="font-family: sans-serif; font-size: 13px;">{caption}</div>\n' if caption else "") + "\n".join(blocks)
    calls = "\n".join(f'render("{i}", {element}, {_js_props(p)});' for i, p in zip(ids, props, strict=True))
    local = (f'<div class="vlens-circuitsvis">\n{body}\n<script crossorigin type="module">\n{_circuitsvis_js()}\n'
             f"const {{ render, {element} }} = CircuitsVis;\n{calls}\n</script>\n</div>")  # fmt: skip
    cdn = (f'<div class="vlens-circuitsvis">\n{body}\n<script crossorigin type="module">\n'
           f'import {{ render, {element} }} from "https://unpkg.com/circuitsvis@{cv_version}/dist/cdn/esm.js";\n'
           f"{calls}\n</script>\n</div>")  # fmt: skip
    return _LocalHTML(local, cdn)


_REMOTE_SCRIPT = re.compile(
    r"<script\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//|\bimport\b[^;\n]{0,200}?\bfrom\s*[\"'](?:https?:)?//|\bimport\s*\(\s*[\"'](?:https?:)?//",
    re.IGNORECASE,
)


def circuitsvis_html(obj: Any, *, title: str = "vlens", full_page: bool = False) -> str:
    """Self-contained HTML of a circuitsvis object, its JavaScript inlined (no CDN, works offline).

    ``obj`` is what circuitsvis functions (and :func:`neuron_tokens`) return; its
    ``local_src`` carries the inlined bundle, whereas ``str(obj)`` would load it from unpkg.
    By default the result is a fragment (a ``<div>`` and its ``<script>``) that can be
    embedded in a larger page or saved as a file of its own; ``full_page=True`` wraps it in
    a complete HTML document titled ``title``. Each fragment carries the whole bundle
    (about 1.3 MB).
    """
    src = getattr(obj, "local_src", None)
    if not isinstance(src, str):
        hint = " (pass the circuitsvis object itself: str(obj) is its CDN version)" if isinstance(obj, str) else ""
        raise TypeError(f"expected a circuitsvis render object with a local_src, got {type(obj).__name__}{hint}")
    if _REMOTE_SCRIPT.search(src):
        raise ValueError("this circuitsvis object's local source still loads a script from the network")
    if not full_page:
        return src
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"</head>\n<body>\n{src}\n</body>\n</html>\n")  # fmt: skip


def share_bundle(fragments: Sequence[str]) -> list[str]:
    """Fragments from :func:`circuitsvis_html` for one page, carrying the 1.3 MB bundle only once.

    The first fragment keeps the bundle and publishes it as ``window.CircuitsVis``; the
    others use that (module scripts run in document order).
    """
    bundle = _circuitsvis_js()
    out = []
    for i, frag in enumerate(fragments):
        if bundle not in frag:
            out.append(frag)
            continue
        if i == 0 or not out:
            out.append(frag.replace(bundle, bundle + "\nwindow.CircuitsVis = CircuitsVis;", 1))
        else:
            out.append(re.sub(r"const \{ render, (\w+) \} = CircuitsVis;", r"const { render, \1 } = window.CircuitsVis;",
                              frag.replace(bundle, "", 1)))  # fmt: skip
    return out


def _png(fig: Figure, dpi: float) -> bytes:
    if not isinstance(fig, Figure):
        raise TypeError(f"expected a matplotlib Figure, got {type(fig).__name__}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def figure_to_data_uri(fig: Figure, *, dpi: int = 110) -> str:
    """A figure as a ``data:image/png;base64,...`` URI, for ``<img src=...>`` in self-contained HTML."""
    return "data:image/png;base64," + base64.b64encode(_png(fig, dpi)).decode("ascii")


def figure_html(fig: Figure, *, dpi: int = 144) -> str:
    """A figure as self-contained HTML: a ``<figure>`` with the PNG inline and its caption underneath.

    The image is shown at its own size in CSS inches (96 px each; ``dpi`` only sets its sharpness),
    at most the page's width, so a 10 pt label reads as 10 pt in the report. The caption is the
    figure's ``caption`` (every figure of this module has one), if any.
    """
    png = _png(fig, dpi)
    width = int.from_bytes(png[16:20], "big") * 96 / dpi  # the IHDR chunk's width, in pixels
    caption = getattr(fig, "caption", "")
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (f'<figure class="vlens-figure" style="margin: 1em 0;"><img src="{uri}" alt="{html.escape(caption)}" '
            f'style="width: {width:.0f}px; max-width: 100%; height: auto;">'
            + (f'<figcaption style="font-size: 14px; color: #333; margin-top: .3em;">{html.escape(caption)}</figcaption>'
               if caption else "") + "</figure>")  # fmt: skip


# ============================================================================ figures of a locate run


def _resolve_dimension(dimension: str, available: Sequence[str], what: str) -> str:
    if not isinstance(dimension, str):
        raise ValueError(f"dimension must be a string, got {dimension!r}")
    if dimension in available:
        return dimension
    from vlens.values import dimension as lookup

    try:
        name = lookup(dimension).name
    except ValueError:
        name = None
    if name in available:
        return name
    raise ValueError(f"unknown dimension {dimension!r}: {what} has {', '.join(available) or 'none'}")


@_styled("neurons_per_layer")
def neurons_per_layer(result: LocateResult, dimension: str | None = None) -> Figure:
    """Bars of how many neurons each pole's set has in every layer (one panel per dimension)."""
    dims = [_resolve_dimension(dimension, result.dimensions, "this locate result")] if dimension else result.dimensions
    if not dims:
        raise ValueError("this locate result has no dimensions")
    sets = [[result.neuron_sets.get(f"{d}:{p}") for p in POLES] for d in dims]
    n_layers = max(s.n_layers for row in sets for s in row if s is not None)
    fig = _figure(max(6.0, 0.22 * n_layers + 2), 1.2 + 2.2 * len(dims))
    axes = fig.subplots(len(dims), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(n_layers)
    names = {"+": "+ set (the value)", "-": "- set (its reversed aspect)"}
    for ax, d, row in zip(axes, dims, sets, strict=True):
        sizes = []
        for j, (pole, ns) in enumerate(zip(POLES, row, strict=True)):
            if ns is None:
                continue
            counts = ns.counts_per_layer().numpy()
            ax.bar(x + (j - 0.5) * 0.4, np.pad(counts, (0, n_layers - len(counts))), width=0.4, color=POLE_COLORS[pole],
                   label=names[pole])  # fmt: skip
            sizes.append(f"{pole}: {len(ns)}")
        ax.set_title(f"{d} ({', '.join(sizes)} neurons)")
        ax.set_ylabel("neurons")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel("layer")
    _legend_below(fig, ncols=2)
    fig.suptitle("Selected neurons per layer")
    step = max(1, math.ceil(n_layers / 30))
    axes[-1].set_xticks(x[::step])
    return fig


@_styled("score_distribution")
def score_distribution(result: LocateResult, dimension: str, *, score: str = "delta", bins: int = 80, log: bool = True) -> Figure:
    """Histogram of one score over every neuron, the selected neurons of each pole overlaid.

    A solid line marks each pole's least extreme selected neuron (the lowest selected
    directed score: the smallest ``score`` in the ``+`` set, the largest in the ``-`` set;
    for ``entropy``, where low means pole-specific, the largest in either), a dashed line
    the selection rule's threshold when it applies to this score.
    """
    dim = _resolve_dimension(dimension, result.dimensions, "this locate result")
    scores = result.scores.get(dim)
    if scores is None:
        from vlens.scores import all_scores

        scores = all_scores(result.stats, dim)
    if score not in scores:
        raise ValueError(f"unknown score {score!r}; this locate result has {', '.join(scores)}")
    values: Float[Tensor, "layer neuron"] = scores[score].detach().double().cpu()
    flat = values.flatten()
    flat = flat[torch.isfinite(flat)].numpy()
    if not len(flat):
        raise ValueError(f"score {score!r} of {dim} has no finite values")
    fig = _figure(9.0, 4.8)
    ax = fig.subplots()
    edges = np.histogram_bin_edges(flat, bins=bins)
    ax.hist(flat, bins=edges, color="0.75", label=f"all {len(flat):,} neurons")
    pos = {layer: i for i, layer in enumerate(result.stats.layers)}
    sel = result.selection
    for pole in POLES:
        ns = result.neuron_sets.get(f"{dim}:{pole}")
        if ns is None or not len(ns):
            continue
        rows = torch.tensor([pos[int(layer)] for layer in ns.layers])
        chosen = values[rows, ns.neurons].numpy()
        chosen = chosen[np.isfinite(chosen)]
        if not len(chosen):
            continue
        ax.hist(chosen, bins=edges, color=POLE_COLORS[pole], alpha=0.8, label=f"{pole} set ({len(ns)} neurons)")
        cut = chosen.max() if (score == "entropy" or pole == "-") else chosen.min()
        ax.axvline(cut, color=POLE_COLORS[pole], lw=1.5, label=f"{pole}: least extreme selected, {cut:.3g}")
        if sel.score == score and score != "entropy" and sel.rule in {"paper", "threshold"} and sel.threshold is not None:
            thr = sel.threshold if pole == "+" else -sel.threshold
            ax.axvline(thr, color=POLE_COLORS[pole], lw=1.2, ls="--", label=f"{pole}: threshold {thr:+.3g}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(_SCORE_LABELS.get(score, score))
    ax.set_ylabel("neurons" + (" (log scale)" if log else ""))
    rule = sel.rule + (f" k={sel.k}" if sel.rule in {"paper", "top_k"} else "") + (", per layer" if sel.per_layer else "")
    ax.set_title(f"{dim}: {score} of every neuron (selection: {rule}, by {sel.score})")
    _legend_below(fig, ncols=3)
    return fig


@_styled("overlap_heatmap")
def overlap_heatmap(result: LocateResult) -> Figure:
    """Jaccard overlap between every two neuron sets, each cell annotated (shared neurons in brackets)."""
    names = list(result.neuron_sets)
    if not names:
        raise ValueError("this locate result has no neuron sets")
    masks = [result.neuron_sets[n].mask() for n in names]
    jac = np.array([[result.neuron_sets[a].jaccard(result.neuron_sets[b]) for b in names] for a in names])
    shared = np.array([[int((ma & mb).sum()) for mb in masks] for ma in masks])
    cell = min(0.95, (MAX_WIDTH - 4.2) / len(names))  # room for the row labels and the colour bar
    size = 1.8 + cell * len(names)
    fig = _figure(size + 2.4, size)
    ax = fig.subplots()
    im = ax.imshow(jac, cmap="viridis", vmin=0.0, vmax=1.0)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{jac[i, j]:.2f}\n({shared[i, j]})", ha="center", va="center", fontsize=FONT_SIZE,
                    color="black" if jac[i, j] > 0.6 else "white")  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("Jaccard overlap of the neuron sets (shared neurons)")
    fig.colorbar(im, ax=ax, label="Jaccard index", shrink=0.8)
    return fig


# ============================================================================ figures of a validation or comparison


def _table(result: Any, selector: str | None = None, size: int | None = None) -> pd.DataFrame:
    """The tidy table of a ValidationResult, a CompareResult or the table itself, narrowed to one
    selector and size: the unedited rows, its edits and their random controls."""
    t = experiment.expand_shared(experiment.table_of(result))
    edits = t[t.source == "value"]
    selector, size = _pick(edits.selector, selector, "selector"), _pick(edits["size"].dropna(), size, "size")
    sized = t["size"].isna() if size is None else t["size"] == size
    controls = experiment.controls(t[(t.source == "random") & sized], selector)
    keep = ~t.source.isin(["value", "random"]) | ((t.source == "value") & (t.selector == selector) & sized)
    return t[keep | t.index.isin(controls.index)]


def _by_gamma(t: pd.DataFrame) -> pd.DataFrame:
    """The rows of edits dosed by hand (a gamma). Edits matched to a KL target each have their own
    gamma, so gamma is no common axis for them."""
    by_hand = t.target_kl.isna()
    if not (by_hand & t.source.isin(["value", "random"])).any():
        raise ValueError("every edit of this validation was dosed to a KL target, so the edits share no gamma axis; "
                         "draw viz.matched_effects or viz.shift_vs_kl, or validate with gammas=[...]")  # fmt: skip
    return t[by_hand]


def _pick(values: pd.Series, want: Any, name: str) -> Any:
    have = list(dict.fromkeys(values))
    if want is None and len(have) > 1:
        raise ValueError(f"the table has several {name}s ({', '.join(map(str, have))}); pick one with {name}=")
    if want is not None and want not in have:
        raise ValueError(f"{name} {want!r} is not in the table (it has {', '.join(map(str, have))})")
    return have[0] if want is None and have else want


def _check_metric(t: pd.DataFrame, metric: str, *, per_dimension: bool | None = None) -> None:
    metrics = list(dict.fromkeys(t.metric))
    if metric not in metrics:
        raise ValueError(f"metric {metric!r} is not in the validation table (it has {', '.join(metrics)})")
    model_wide = (t.loc[t.metric == metric, "measured"] == "").all()
    if per_dimension is True and model_wide:
        raise ValueError(f"metric {metric!r} is model-wide, not measured per dimension; use e.g. 'orientation'")
    if per_dimension is False and not model_wide:
        raise ValueError(f"metric {metric!r} is measured per dimension; a cost needs a model-wide metric (kl, perplexity)")


def _steered(t: pd.DataFrame) -> list[str]:
    dims = [d for d in dict.fromkeys(t.loc[t.source != "none", "steered"]) if d]
    if not dims:
        raise ValueError("the validation table has no edited conditions (only the unedited baseline)")
    return dims


def _directions(rows: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(rows.direction))
    return [d for d in POLES if d in present] + [d for d in present if d not in POLES and d]


def _baseline(t: pd.DataFrame, metric: str, measured: str) -> float:
    b = t[(t.source == "none") & (t.metric == metric) & (t.measured == measured)]["value"]
    return float(b.mean()) if len(b) else math.nan


def _direction_title(dim: str, direction: str) -> str:
    return {"+": f"{dim} toward + (the value)", "-": f"{dim} toward - (its reversed aspect)"}.get(direction, f"{dim} {direction}")


def _gamma_axis(ax: Any, series: dict[str, tuple[pd.DataFrame, dict[str, Any]]], rnd: pd.DataFrame, gammas: list[float]) -> None:
    """Edits against gamma. Several gammas: each value edit a line, the random edits a grey band of
    mean +/- sd with their crosses. One gamma: a band would have no width, so the edits stand side by
    side (one tick each) and the random edits beside them as crosses with their mean +/- sd."""
    if len(gammas) == 1:
        shown = [(rows, style) for rows, style in series.values() if len(rows)]
        labels = [style["tick"] for _, style in shown]
        for i, (rows, style) in enumerate(shown):
            ax.scatter([i] * len(rows), rows.value, s=70, zorder=3, color=style["color"], marker=style.get("marker", "o"),
                       label=style["label"])  # fmt: skip
        if len(rnd):
            i = len(labels)
            _null(ax, i + np.linspace(-0.12, 0.12, len(rnd)), rnd.value, errorbar_dx=0.3)
            labels.append("random edits")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.6, len(labels) - 0.1)
        ax.set_xlabel(f"every edit at gamma {gammas[0]:g}")
        return
    if len(rnd):
        g = rnd.groupby("gamma")["value"].agg(["mean", "std"]).sort_index().fillna(0.0)
        ax.fill_between(g.index, g["mean"] - g["std"], g["mean"] + g["std"], color=COLORS["random"], alpha=0.25, lw=0)
        ax.plot(g.index, g["mean"], color=COLORS["random"], lw=1.5, label="random edits: mean ± sd")
        ax.scatter(rnd.gamma, rnd.value, marker="x", s=20, lw=1, color=COLORS["random"], label="random edits")
    for rows, style in series.values():
        if len(rows):
            ax.plot(rows.gamma, rows.value, color=style["color"], marker=style.get("marker", "o"), ls=style.get("ls", "-"),
                    label=style["label"])  # fmt: skip
    ax.set_xlabel("gamma")


@_styled("orientation_vs_gamma")
def orientation_vs_gamma(
    validation: Any, dimension: str, *, metric: str = "orientation", selector: str | None = None, size: int | None = None
) -> Figure:
    """The steered dimension's ``metric`` against gamma, one panel per steering direction.

    Each panel: the value edit (paper mode) in its pole's colour, its boost-only half, the
    clamp-only half (gamma-free: a horizontal line), the size-matched random edits (grey: a band of
    mean +/- sd over seeds, or with one gamma their crosses and an error bar beside the value
    edit), the unedited model (dotted) and the prompted control (dashed). Model-wide metrics
    (``kl``, ``perplexity``, ``position_bias_A``) are drawn the same way. Only edits dosed by
    hand count: edits matched to a KL target have no common gamma.
    """
    t = _by_gamma(_table(validation, selector, size))
    _check_metric(t, metric)
    dim = _resolve_dimension(dimension, _steered(t), "the validation table (steered)")
    model_wide = (t.loc[t.metric == metric, "measured"] == "").all()
    measured = "" if model_wide else dim
    rows = t[(t.steered == dim) & (t.metric == metric) & (t.measured == measured)]
    if rows.empty:
        have = sorted(set(t.loc[t.metric == metric, "measured"]) - {""})
        raise ValueError(f"metric {metric!r} has no values for {dim} (it is measured on {', '.join(have) or 'nothing'})")
    directions = _directions(rows)
    fig = _figure(1.0 + 4.8 * len(directions), 4.6)
    axes = fig.subplots(1, len(directions), sharey=True, squeeze=False)[0]
    base = _baseline(t, metric, measured)
    for ax, direction in zip(axes, directions, strict=True):
        sub = rows[rows.direction == direction]
        value = sub[sub.source == "value"]
        series = {
            "paper": (value[value["mode"] == "paper"].sort_values("gamma"),
                      {"color": POLE_COLORS.get(direction, COLORS["+"]), "label": f"value edit toward {direction}",
                       "tick": "value edit"}),
            "boost_only": (value[value["mode"] == "boost_only"].sort_values("gamma"),
                           {"color": COLORS["boost_only"], "marker": "s", "ls": "--", "label": "boost only", "tick": "boost only"}),
        }  # fmt: skip
        gammas = sorted(set(sub.loc[sub.source.isin(["value", "random"]) & (sub["mode"] != "clamp_only"), "gamma"].dropna()))
        clamp = value[value["mode"] == "clamp_only"]
        if len(gammas) == 1 and len(clamp):  # gamma-free, so one more edit side by side
            series["clamp_only"] = (clamp, {"color": COLORS["clamp_only"], "marker": "D", "label": "clamp only", "tick": "clamp only"})
        elif len(clamp):
            ax.axhline(float(clamp.value.mean()), color=COLORS["clamp_only"], ls="-.", lw=2, label="clamp only")
        _gamma_axis(ax, series, sub[sub.source == "random"], gammas)
        prompted = t[(t.source == "prompted") & (t.direction == direction) & (t.metric == metric) & (t.measured == measured)]
        if measured and len(prompted):
            ax.axhline(float(prompted.value.mean()), **_PROMPTED_LINE)
        if math.isfinite(base):
            ax.axhline(base, **_UNEDITED_LINE)
        ax.set_title(_direction_title(dim, direction))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric}" + (f" of {dim}" if measured else ""))
    _legend_below(fig, ncols=3)
    fig.suptitle(f"{dim}: {metric} against gamma")
    return fig


@_styled("cost_vs_gamma")
def cost_vs_gamma(validation: Any, *, metric: str = "kl", selector: str | None = None, size: int | None = None) -> Figure:
    """Capability cost (``kl``: mean KL divergence from the unedited model, nats; or ``perplexity``)
    against gamma, one panel per steered dimension: the value edits (paper mode) toward each pole in
    its colour, the random edits in grey (a band of mean +/- sd, or with one gamma their crosses and
    an error bar beside the value edits). Only edits dosed by hand count (see :func:`orientation_vs_gamma`)."""
    t = _by_gamma(_table(validation, selector, size))
    _check_metric(t, metric, per_dimension=False)
    dims = _steered(t)
    ncols = min(2, len(dims))
    nrows = math.ceil(len(dims) / ncols)
    fig = _figure(1.0 + 4.8 * ncols, 1.2 + 3.4 * nrows)
    grid = fig.subplots(nrows, ncols, sharey=True, squeeze=False)
    _hide_unused(fig, grid, len(dims))
    base = _baseline(t, metric, "")
    for ax, dim in zip(grid.flat, dims, strict=False):
        rows = t[(t.steered == dim) & (t.metric == metric)]
        # the shared null appears once per direction after expand_shared: the same edits, the same cost
        rnd = rows[rows.source == "random"].drop_duplicates(["seed", "gamma", "value"])
        series = {d: (rows[(rows.direction == d) & (rows.source == "value") & (rows["mode"] == "paper")].sort_values("gamma"),
                      {"color": POLE_COLORS.get(d, COLORS["+"]), "label": f"value edit toward {d}", "tick": f"toward {d}"})
                  for d in _directions(rows[rows.source == "value"])}  # fmt: skip
        gammas = sorted(set(rows.loc[rows.source.isin(["value", "random"]), "gamma"].dropna()))
        _gamma_axis(ax, series, rnd, gammas)
        if math.isfinite(base):
            ax.axhline(base, **_UNEDITED_LINE)
        ax.set_title(dim)
        ax.grid(alpha=0.3)
    for row in grid:
        row[0].set_ylabel("KL from the unedited model (nats)" if metric == "kl" else metric)
    _legend_below(fig, ncols=3)
    fig.suptitle(f"Capability cost ({metric}) against gamma")
    return fig


def _level(labels: pd.DataFrame) -> pd.Series:
    """Each condition's dose level: its KL target, else its hand-given gamma."""
    return labels.target_kl.where(labels.target_kl.notna(), labels.gamma)


@_styled("shift_vs_kl")
def shift_vs_kl(
    validation: Any, *, metric: str = "orientation", cost: str = "kl", modes: Sequence[str] = ("paper",),
    selector: str | None = None, size: int | None = None,
) -> Figure:  # fmt: skip
    """Shift against capability cost, so that steering can be told from breaking.

    One row of panels per steered dimension, one column per steering direction. Every edit is
    one point: y is the change of the steered dimension's ``metric`` from the unedited model,
    signed so that up means toward the steered pole; x is its ``cost`` (KL from the unedited
    model). Value edits (``modes``, in the pole's colour, connected in gamma order, gamma
    annotated) against the random edits of the same size (grey crosses, with their mean +/- sd
    per dose level) and the controls (steering vector, dense MLP edit) where the table has them;
    the dashed line is the prompted control. A value edit that moves further than the random
    edits *at the same cost* is steering; one that only matches them is breaking.
    """
    t = _table(validation, selector, size)
    _check_metric(t, metric, per_dimension=True)
    _check_metric(t, cost, per_dimension=False)
    dims = _steered(t)
    data = experiment.per_condition(t, metric, cost)
    directions = _directions(data[data.source == "value"])
    fig = _figure(1.0 + 4.6 * len(directions), 1.4 + 2.8 * len(dims))
    axes = fig.subplots(len(dims), len(directions), squeeze=False)
    markers = {"paper": "o", "boost_only": "s", "clamp_only": "D"}
    for r, dim in enumerate(dims):
        base = _baseline(t, metric, dim)
        for c, direction in enumerate(directions):
            ax = axes[r][c]
            sub = data[(data.steered == dim) & (data.direction == direction)]
            rnd = sub[sub.source == "random"]
            _null(ax, rnd.cost, rnd["shift"], _level(rnd))
            for source in ("steering", "dense"):
                ctl = sub[sub.source == source]
                if len(ctl):
                    style = FAMILY_STYLE[source]
                    ax.scatter(ctl.cost, ctl["shift"], s=40, zorder=3, marker=style["marker"], color=style["color"],
                               label=style["label"])  # fmt: skip
            for mode in modes:
                v = sub[(sub.source == "value") & (sub["mode"] == mode)].sort_values("gamma")
                if not len(v):
                    continue
                ax.plot(v.cost, v["shift"], marker=markers.get(mode, "o"), ms=7, zorder=4,
                        color=POLE_COLORS.get(direction, COLORS["+"]) if mode == "paper" else COLORS.get(mode, "0.3"),
                        ls="-" if mode == "paper" else ":", label=f"value edit toward {direction}"
                        + ("" if mode == "paper" else f" ({mode.replace('_', ' ')})"))  # fmt: skip
                for g, x, y in zip(v.gamma, v.cost, v["shift"], strict=True):
                    ax.annotate(f"γ {g:.2g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=FONT_SIZE)
            sign = -1.0 if direction == "-" else 1.0
            prompted = t[(t.source == "prompted") & (t.direction == direction) & (t.metric == metric) & (t.measured == dim)]
            if len(prompted) and math.isfinite(base):
                ax.axhline(sign * (float(prompted.value.mean()) - base), **_PROMPTED_LINE)
            ax.axhline(0.0, **_UNEDITED_LINE)
            ax.set_title(_direction_title(dim, direction))
            ax.grid(alpha=0.3)
            _compact_ticks(ax.xaxis)
            if r == len(dims) - 1:
                ax.set_xlabel(f"{cost} from the unedited model" + (" (nats/token)" if cost == "kl" else ""))
        axes[r][0].set_ylabel(f"{metric} shift")
    _legend_below(fig, ncols=3)
    fig.suptitle(f"{metric} shift toward the steered pole against {cost}")
    return fig


@_styled("matched_effects")
def matched_effects(validation: Any) -> Figure:
    """The verdict in one figure: per (dimension, direction), every edit's shift of the ``+`` option's
    log-odds toward the steering direction, on the held-out dilemmas of that dimension.

    The value edit (a dot in its pole's colour, with the verdict table's 95% bootstrap interval over
    items) should stand above the random edits (grey crosses, their mean +/- sd as an error bar
    beside them); the dashed line is the prompted control (the value stated in the prompt), the
    dotted one the unedited model; the controls show what a steering vector or a dense MLP edit
    achieves at the same cost. The edits stand side by side: with one dose level (one KL target)
    one tick each, naming the edit and its KL; with several (KL targets, hand-given gammas) one
    group of ticks per level, named with the level and the KLs its edits reached.
    """
    from vlens.significance import paired_ci

    change, labels, dim_of = experiment.item_changes(validation)
    cells = labels[labels.source == "value"][["steered", "direction"]].drop_duplicates()
    if cells.empty:
        raise ValueError("no value edits in the validation table: nothing to draw")
    dims = list(dict.fromkeys(cells.steered))
    directions = _directions(cells)
    kinds = [k for k in ("value", "random", "steering", "dense") if (labels.source == k).any()]
    edited = labels.source.isin(kinds)
    matched = labels.target_kl.notna()
    level = pd.Series(np.where(matched, "KL target " + labels.target_kl.map("{:g}".format),
                               "gamma " + labels.gamma.map("{:g}".format)), index=labels.index).where(edited)  # fmt: skip
    by_level = labels[edited].assign(level=level).sort_values(["target_kl", "gamma"], na_position="last")
    levels = list(dict.fromkeys(by_level.level))  # KL targets first, ascending, then hand-given gammas
    one_level = len(levels) == 1
    # Several levels: one group per level, the kinds of edit side by side within it.
    offset = dict(zip(kinds, np.linspace(-0.3, 0.3, len(kinds)) if len(kinds) > 1 else [0.0], strict=True))
    fig = _figure(1.0 + 4.6 * len(directions), 1.4 + 2.9 * len(dims))
    axes = fig.subplots(len(dims), len(directions), squeeze=False)
    for r, dim in enumerate(dims):
        items = dim_of.index[dim_of == dim]
        for c, direction in enumerate(directions):
            ax = axes[r][c]
            per_item = (-1.0 if direction == "-" else 1.0) * change[items]
            shift = per_item.mean(axis=1)
            cell = (labels.steered == dim) & (labels.direction == direction)
            groups = {"value": (labels.source == "value") & cell, "random": labels.source == "random",
                      "steering": (labels.source == "steering") & cell, "dense": (labels.source == "dense") & cell}  # fmt: skip
            groups = {kind: sel for kind, sel in groups.items() if sel.any()}
            slot = dict(zip(groups, range(len(groups)), strict=True))

            def x_of(kind: str, sel: pd.Series, slot: dict[str, int] = slot) -> Any:
                if one_level:
                    return np.full(int(sel.sum()), float(slot[kind]))
                return np.array([levels.index(lv) for lv in level[sel]], dtype=float) + offset[kind]

            for kind, sel in groups.items():
                if kind == "random":
                    n = int(sel.sum())
                    jitter = np.linspace(-0.15, 0.15, n) if one_level else np.resize(np.linspace(-0.04, 0.04, 3), n)
                    _null(ax, x_of(kind, sel) + jitter, shift[sel], level[sel], errorbar_dx=0.3 if one_level else 0.1)
                elif kind in FAMILY_STYLE:
                    style = FAMILY_STYLE[kind]
                    ax.scatter(x_of(kind, sel), shift[sel], marker=style["marker"], color=style["color"], s=50, zorder=3,
                               label=style["label"])  # fmt: skip
            if "value" in groups:
                sel = groups["value"]
                for cond, x in zip(labels.index[sel], x_of("value", sel), strict=True):
                    ci = paired_ci(per_item.loc[cond].dropna().to_numpy())  # the verdict table's interval
                    err = [[ci.estimate - ci.low], [ci.high - ci.estimate]] if math.isfinite(ci.low) else None
                    ax.errorbar([x], [ci.estimate], yerr=err, fmt="o", ms=9, capsize=4, lw=2, zorder=4,
                                color=POLE_COLORS.get(direction, COLORS["+"]), label=f"value edit toward {direction} (95% CI)")  # fmt: skip
            prompted = (labels.source == "prompted") & (labels.direction == direction)
            if prompted.any():
                ax.axhline(float(shift[prompted].iloc[0]), **_PROMPTED_LINE)
            ax.axhline(0.0, **_UNEDITED_LINE)
            ax.set_title(f"{dim} toward {direction}")
            ax.grid(alpha=0.3, axis="y")
            if one_level:
                names = {"value": "value edit", "random": f"random edits ({int(groups.get('random', cell).sum())})",
                         "steering": "steering", "dense": "dense"}  # fmt: skip
                ax.set_xticks(range(len(groups)), [f"{names[k]}\nKL {float(labels.kl[sel].mean()):.3g}" for k, sel in groups.items()])
                ax.set_xlim(-0.5, len(groups) - 0.3)
            else:
                kl = by_level.groupby("level", sort=False)["kl"].agg(["min", "max"])
                ax.set_xticks(range(len(levels)), [f"{lv}\nKL {kl.loc[lv, 'min']:.2g}" + (
                    f"-{kl.loc[lv, 'max']:.2g}" if f"{kl.loc[lv, 'max']:.2g}" != f"{kl.loc[lv, 'min']:.2g}" else "")
                    for lv in levels])  # fmt: skip
                ax.set_xlim(-0.5, len(levels) - 0.5)
                for k in range(1, len(levels)):
                    ax.axvline(k - 0.5, color="0.8", lw=1)
        axes[r][0].set_ylabel("log-odds shift")
    _legend_below(fig, ncols=3)
    if not one_level:
        where = "at each dose level"
    elif matched.any():
        where = f"at matched cost ({levels[0]} nats/token on neutral text)"
    else:
        where = f"at {levels[0]} (not matched on cost)"
    fig.suptitle(f"Value edits against random edits and controls {where}")
    return fig


@_styled("leakage_heatmap")
def leakage_heatmap(
    validation: Any, *, gamma: float | None = None, kl_target: float | None = None, metric: str = "orientation",
    mode: str = "paper", selector: str | None = None, size: int | None = None,
) -> Figure:  # fmt: skip
    """Change of ``metric`` from the unedited model in every measured dimension, for every steered
    dimension and direction, at one dose level of the value edits of ``mode``: ``kl_target`` (edits
    matched to that KL), or ``gamma`` (edits dosed by hand); by default the first KL target if the
    validation has one, else the largest gamma.

    Rows: steered dimension and direction; columns: measured dimension; positive (blue) means
    toward the measured dimension's ``+`` pole. The steered dimension's own cell is outlined;
    every other cell is leakage.
    """
    if gamma is not None and kl_target is not None:
        raise ValueError("give gamma or kl_target, not both: they pick one dose level")
    t = _table(validation, selector, size)
    _check_metric(t, metric, per_dimension=True)
    _steered(t)
    edited = t[(t.source == "value") & (t["mode"] == mode) & (t.metric == metric)]
    if edited.empty:
        modes = sorted(set(t.loc[t.source == "value", "mode"]))
        raise ValueError(f"no value edits of mode {mode!r} in the validation table (modes: {', '.join(modes)})")
    matched = edited.target_kl.notna()
    targets = sorted(edited.target_kl[matched].unique())
    gammas = sorted(edited.gamma[~matched].dropna().unique())
    if kl_target is not None or (gamma is None and targets):
        want = targets[0] if kl_target is None else float(kl_target)
        hit = [k for k in targets if math.isclose(k, want, rel_tol=1e-9, abs_tol=1e-12)]
        if not hit:
            raise ValueError(f"KL target {want:g} is not in the validation table (targets: {', '.join(f'{k:g}' for k in targets) or 'none'})")
        at, where = edited[matched & np.isclose(edited.target_kl, hit[0])], f"matched to KL {hit[0]:g}"
    else:
        if not gammas:
            raise ValueError(f"the validation table has no value edits of mode {mode!r} dosed by hand (gammas: none)")
        want = gammas[-1] if gamma is None else float(gamma)
        hit = [g for g in gammas if math.isclose(g, want, rel_tol=1e-9, abs_tol=1e-12)]
        if not hit:
            raise ValueError(f"gamma {gamma} is not in the validation table for mode {mode!r} (gammas: {', '.join(f'{g:g}' for g in gammas)})")
        at, where = edited[~matched & np.isclose(edited.gamma, hit[0])], f"gamma = {hit[0]:g}"
    base = t[(t.source == "none") & (t.metric == metric)].groupby("measured", sort=False)["value"].mean()
    measured = [m for m in base.index if m] + [m for m in dict.fromkeys(at.measured) if m and m not in base.index]
    change = at.assign(change=at.value - at.measured.map(base))
    changes = change.pivot_table("change", ["steered", "direction"], "measured", sort=False).reindex(columns=measured)
    conditions, grid = list(changes.index), changes.to_numpy(dtype=float)
    span = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
    span = span if span > 0 else 1e-6
    fig = _figure(max(7.0, 4.4 + 1.5 * len(measured)), 2.6 + 0.55 * len(conditions))
    ax = fig.subplots()
    im = ax.imshow(grid, cmap="RdBu", vmin=-span, vmax=span, aspect="auto")  # blue up, as COLORS["+"]
    from matplotlib.patches import Rectangle

    for i, (s, _) in enumerate(conditions):
        for j, m in enumerate(measured):
            v = grid[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:+.3g}", ha="center", va="center", fontsize=FONT_SIZE,
                    color="white" if np.isfinite(v) and abs(v) > 0.6 * span else "black")  # fmt: skip
            if m == s:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", lw=2))
    ax.set_xticks(range(len(measured)), measured, rotation=20, ha="right")
    ax.set_yticks(range(len(conditions)), [f"{s} toward {d}" for s, d in conditions])
    ax.set_xlabel("measured dimension")
    ax.set_ylabel("steered")
    ax.set_title(f"Change of {metric} from the unedited model, {where} ({mode} edits)")
    fig.colorbar(im, ax=ax, label=f"change of {metric}")
    return fig


def compare_effects(result: Any, *, level: tuple[str, float] | None = None) -> Figure:
    """A comparison's verdicts in one figure (:func:`vlens.selectors.compare`; its result or its summary):
    per (dimension, direction), every selector's effect at one dose level (default: the first KL target),
    grouped by set size, with its 95% interval over items. The grey band is the null of that size (the
    random edits' mean +- 2 sd): a selector whose point stands above it beats random. The horizontal
    lines are the controls at the same cost (steering vector, dense MLP edit) and the prompted control
    (dashed: the value stated in the prompt, the ceiling). Larger points: verdict "beats random"."""
    s = result if isinstance(result, pd.DataFrame) else result.summary()
    if s.empty or "verdict" not in s or "selector" not in s:
        raise ValueError("expected a comparison's verdict table (CompareResult.summary()): no selector verdicts to draw")
    levels = list(dict.fromkeys(zip(s.level, s["at"], strict=True)))
    if level is None:
        level = next((lv for lv in levels if lv[0] == "kl"), levels[0])
    elif tuple(level) not in levels:
        raise ValueError(f"level {tuple(level)} is not in the summary (it has {', '.join(f'{a}={b:g}' for a, b in levels)})")
    s = s[(s.level == level[0]) & (s["at"] == level[1])]
    names, ks, dims = list(dict.fromkeys(s.selector)), sorted(s["size"].unique()), list(dict.fromkeys(s.steered))
    palette = iter(SELECTOR_COLORS * (1 + len(names) // len(SELECTOR_COLORS)))
    colors = {n: COLORS["random"] if n == "random" else next(palette) for n in names}
    fig = _figure(min(MAX_WIDTH, 4.5 + 2 * (0.6 + 0.12 * len(names) * len(ks))), 1.4 + 3.2 * len(dims))  # the legend: ~3.5 in at the right
    axes = fig.subplots(len(dims), 2, squeeze=False, sharey="row")
    dodge = (np.arange(len(names)) - (len(names) - 1) / 2) * 0.8 / len(names)  # the selectors side by side within a size
    for row, dim in enumerate(dims):
        for col, direction in enumerate(POLES):
            ax, part = axes[row][col], s[(s.steered == dim) & (s.direction == direction)]
            if part.empty:
                ax.set_axis_off()
                continue
            for j, k in enumerate(ks):
                at_k = part[part["size"] == k]
                if len(at_k):
                    m, sd = float(at_k.null_mean.iloc[0]), float(at_k.null_sd.iloc[0])
                    ax.fill_between([j - 0.45, j + 0.45], m - 2 * sd, m + 2 * sd, color="0.85", lw=0,
                                    label="random edits of the same size: mean +- 2 sd")  # fmt: skip
                for x, name in zip(j + dodge, names, strict=True):
                    r = at_k[at_k.selector == name]
                    if r.empty:
                        continue
                    r = r.iloc[0]
                    ci = np.clip([[r.effect - r.ci_low], [r.ci_high - r.effect]], 0, None)  # a BCa interval may miss the mean
                    ci = ci if np.isfinite(ci).all() else None
                    ax.errorbar(x, r.effect, yerr=ci, fmt="o", color=colors[name], capsize=2, label=name,
                                ms=8 if r.verdict == "beats random" else 5)  # fmt: skip
            for source in ("steering", "dense"):
                if pd.notna(part.get(f"{source}_shift", pd.Series(dtype=float))).any():
                    ax.axhline(float(part[f"{source}_shift"].dropna().iloc[0]), color=FAMILY_STYLE[source]["color"],
                               ls="-.", lw=1.5, label=f"{FAMILY_STYLE[source]['label']} at the same cost")  # fmt: skip
            if pd.notna(part.get("prompted_shift", pd.Series(dtype=float))).any():
                ax.axhline(float(part.prompted_shift.dropna().iloc[0]), color="black", ls="--", lw=1,
                           label="prompted (ceiling)")  # fmt: skip
            ax.axhline(0.0, color="black", lw=0.6)
            ax.set_xticks(range(len(ks)), [f"{k:g}" for k in ks], fontsize=FONT_SIZE)
            ax.set_xlim(-0.6, len(ks) - 0.4)
            ax.set_xlabel("neurons per pole", fontsize=10)
            ax.set_title(f"{dim} toward {direction}", fontsize=11)
            ax.grid(axis="y", alpha=0.3)
        axes[row][0].set_ylabel("log-odds shift toward the pole", fontsize=10)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=FONT_SIZE, frameon=False)
    at = f"KL {level[1]:g} nats/token on neutral text" if level[0] == "kl" else f"gamma {level[1]:g}"
    fig.suptitle(f"Selectors against random edits of the same size\nat matched cost ({at})", fontsize=13)
    return fig


def compare_figures(result: Any, *, level: tuple[str, float] | None = None) -> dict[str, Figure]:
    """The figures of a selector comparison (:func:`vlens.selectors.compare`): ``matched_effects``
    (:func:`compare_effects` at ``level``, default the first KL target) and ``overlap`` (mean Jaccard
    between selectors per size)."""
    names = result.meta.get("selectors") or sorted(result.overlap.selector_a.unique())
    with matplotlib.rc_context(_RC):
        return {"matched_effects": _finish(compare_effects(result, level=level), "compare_matched_effects"),
                "overlap": _finish(_compare_overlap(result, names), "compare_overlap")}


def _compare_overlap(result: Any, names: list[str]) -> Figure:
    ov = result.overlap
    ks = sorted(ov["size"].unique())
    ncols = min(2, len(ks))
    nrows = math.ceil(len(ks) / ncols)
    side = 1.8 + 0.6 * len(names)
    fig = _figure(0.8 + side * ncols, 0.8 + side * nrows)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    _hide_unused(fig, grid, len(ks))
    for ax, k in zip(grid.flat, ks, strict=False):
        mat = ov[ov["size"] == k].groupby(["selector_a", "selector_b"])["jaccard"].mean().unstack().reindex(index=names, columns=names)
        im = ax.imshow(mat.to_numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        for i in range(len(names)):
            for j in range(len(names)):
                v = mat.iloc[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=FONT_SIZE, color="w" if v < 0.5 else "k")
        ax.set_title(f"{int(k):,} neurons per pole")
    fig.colorbar(im, ax=list(grid.flat[: len(ks)]), shrink=0.8, label="Jaccard index")
    fig.suptitle("Overlap of the selectors' sets")
    return fig


def sweep_effects(table: pd.DataFrame) -> Figure:
    """The sweep in one figure (:func:`vlens.sweep.sweep`): per (dimension, direction), one line per cell and split,
    the value edit's effect (dot, with its 95% CI over items) against the random band (grey: null mean -/+ 2 sd)
    and the positive controls at the same dose level: prompted (black bar), steering vector and dense MLP edit.
    The level drawn is the smallest KL target (the smallest gamma when there is none); the chosen cell's label
    is bold and its test rows are marked ``[test]``."""
    need = ["cell", "split", "level", "at", "steered", "direction", "effect", "ci_low", "ci_high", "band_low", "band_high"]
    if missing := [c for c in need if c not in table.columns]:
        raise ValueError(f"not a sweep table: it lacks column(s) {', '.join(missing)} (see vlens.sweep.COLUMNS)")
    if table.empty:
        raise ValueError("the sweep table is empty: nothing to draw")
    kl = table[table.level == "kl"]
    level, at = ("kl", kl["at"].min()) if len(kl) else (table.level.iloc[0], table["at"].min())
    t = table[(table.level == level) & np.isclose(table["at"], at)]
    rows = list(dict.fromkeys(zip(t.cell, t.split, strict=True)))
    chosen = set(t.cell[t.chosen.astype(bool)]) if "chosen" in t.columns else set()
    dims = list(dict.fromkeys(t.steered))
    fig = _figure(3.2 * len(dims) + 4.5, 1.6 + 0.32 * len(rows) * 2)
    axes = fig.subplots(2, len(dims), squeeze=False, sharey=True)
    y_of = {key: -i for i, key in enumerate(rows)}
    for col, dim in enumerate(dims):
        for r, direction in enumerate(POLES):
            ax = axes[r][col]
            part = t[(t.steered == dim) & (t.direction == direction)]
            y = np.array([y_of[k] for k in zip(part.cell, part.split, strict=True)], dtype=float)
            ax.barh(y, part.band_high - part.band_low, left=part.band_low, height=0.6, color="0.85",
                    label="random edits: mean -/+ 2 sd")  # fmt: skip
            ax.errorbar(part.effect, y, xerr=[part.effect - part.ci_low, part.ci_high - part.effect], fmt="o",
                        color=POLE_COLORS[direction], ms=5, capsize=2, label=f"value edit toward {direction} (95% CI)")  # fmt: skip
            if "prompted_shift" in part.columns and part.prompted_shift.notna().any():
                ax.scatter(part.prompted_shift, y, marker="|", s=120, color="black", label="prompted (ceiling)")
            for source in ("steering", "dense"):
                if f"{source}_shift" in part.columns and part[f"{source}_shift"].notna().any():
                    style = FAMILY_STYLE[source]
                    ax.scatter(part[f"{source}_shift"], y, marker=style["marker"], color=style["color"], s=24,
                               label=style["label"])  # fmt: skip
            ax.axvline(0.0, color="black", lw=0.6)
            ax.set_title(f"{dim} toward {direction}", fontsize=10)
            ax.grid(axis="x", alpha=0.3)
            ax.tick_params(labelsize=8)
            if r == 1:
                ax.set_xlabel("log-odds shift toward the pole", fontsize=9)
        labels = [f"{cell} [{split}]" for cell, split in rows]
        for r in range(2):
            axes[r][0].set_yticks([y_of[k] for k in rows], labels, fontsize=7)
            for tick, (cell, _) in zip(axes[r][0].get_yticklabels(), rows, strict=True):
                tick.set_fontweight("bold" if cell in chosen else "normal")
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    where = f"KL {at:g} nats/token" if level == "kl" else f"gamma {at:g}"
    fig.suptitle(f"Sweep: value edits per cell against random edits and controls at {where}", fontsize=12)
    return fig


__all__ = [
    "CAPTIONS",
    "COLORS",
    "POLE_COLORS",
    "circuitsvis_html",
    "compare_effects",
    "compare_figures",
    "cost_vs_gamma",
    "figure_html",
    "figure_to_data_uri",
    "leakage_heatmap",
    "matched_effects",
    "neuron_activations",
    "neuron_tokens",
    "neurons_per_layer",
    "orientation_vs_gamma",
    "overlap_heatmap",
    "score_distribution",
    "shift_vs_kl",
    "sweep_effects",
    "top_prompts",
]
