"""Views of located neurons and of their causal validation, for Jupyter and for HTML reports.

Three kinds of output:

- **token views** (circuitsvis): :func:`neuron_activations` reads one neuron's activation on
  every token of some prompts (one forward pass per batch, a hook that copies only that
  neuron); :func:`neuron_tokens` shows the prompts of each pole on which the neuron fires
  most, all on one colour scale; :func:`top_prompts` is the same ranking as a table;
- **figures of a locate run** (matplotlib): :func:`neurons_per_layer`,
  :func:`score_distribution`, :func:`overlap_heatmap`;
- **figures of a validation or a comparison** (matplotlib, any :mod:`vlens.experiment` table; ``selector=``
  and ``size=`` pick one of a comparison's): :func:`orientation_vs_gamma`, :func:`cost_vs_gamma`,
  :func:`shift_vs_kl`, :func:`leakage_heatmap`.

Figures are built as :class:`matplotlib.figure.Figure` objects, never through pyplot, so
nothing here touches pyplot's global state or opens a window: a figure is shown when it is
the value of a Jupyter cell, and :func:`figure_to_data_uri` / :func:`circuitsvis_html` turn
either kind into self-contained HTML with no network access (the circuitsvis JavaScript is
inlined, never loaded from a CDN).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any
from uuid import uuid4

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

POLE_COLORS = {"+": "#1f77b4", "-": "#d62728"}  # blue: toward the value, red: toward its reversed aspect
_POLE_LIGHT = {"+": "#9ecae1", "-": "#fc9f9a"}
_MODE_STYLE = {
    "paper": {"color": "#1f77b4", "marker": "o", "ls": "-", "label": "value edit (paper: clamp + boost)"},
    "boost_only": {"color": "#2ca02c", "marker": "s", "ls": "--", "label": "boost only"},
}
_CLAMP_COLOR = "#9467bd"
_RANDOM_COLOR = "0.45"
_SCORE_LABELS = {
    "delta": "delta = P(a>0 | +) - P(a>0 | -)",
    "mean_diff": "mean activation (+) - mean activation (-)",
    "cohens_d": "Cohen's d (+ vs -)",
    "welch_t": "Welch t (+ vs -)",
    "entropy": "entropy of activation probability over the poles",
}


class _Figure(Figure):
    """A matplotlib Figure that Jupyter shows as PNG even when no pyplot backend is active."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    return _Figure(figsize=(width, height), layout="constrained")


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


def _render_many(element: str, props: list[dict[str, Any]], headers: list[str], *, caption: str = "") -> RenderedHTML:
    """Several circuitsvis components in one ``RenderedHTML``: one container each, under a header.

    circuitsvis' ``render`` inlines its 1.3 MB bundle once per component; here the local
    version inlines it once and renders every component from the same script, and the CDN
    version imports it once.
    """
    from circuitsvis import __version__ as cv_version

    ids = ["circuits-vis-" + str(uuid4())[:13] for _ in props]
    blocks = [f'<div style="margin: 10px 0 2px 0; font-family: sans-serif; font-size: 13px;">{h}</div>\n'
              f'<div id="{i}" style="margin: 0 0 12px 0;"></div>' for i, h in zip(ids, headers, strict=True)]  # fmt: skip
    body = (f'<div style="font-family: sans-serif; font-size: 13px;">{caption}</div>\n' if caption else "") + "\n".join(blocks)
    calls = "\n".join(f'render("{i}", {element}, {_js_props(p)});' for i, p in zip(ids, props, strict=True))
    local = (f'<div class="vlens-circuitsvis">\n{body}\n<script crossorigin type="module">\n{_circuitsvis_js()}\n'
             f"const {{ render, {element} }} = CircuitsVis;\n{calls}\n</script>\n</div>")  # fmt: skip
    cdn = (f'<div class="vlens-circuitsvis">\n{body}\n<script crossorigin type="module">\n'
           f'import {{ render, {element} }} from "https://unpkg.com/circuitsvis@{cv_version}/dist/cdn/esm.js";\n'
           f"{calls}\n</script>\n</div>")  # fmt: skip
    return RenderedHTML(local, cdn)


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


def figure_to_data_uri(fig: Figure, *, dpi: int = 110) -> str:
    """A figure as a ``data:image/png;base64,...`` URI, for ``<img src=...>`` in self-contained HTML."""
    if not isinstance(fig, Figure):
        raise TypeError(f"expected a matplotlib Figure, got {type(fig).__name__}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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


def neurons_per_layer(result: LocateResult, dimension: str | None = None) -> Figure:
    """Bars of how many neurons each pole's set has in every layer (one panel per dimension)."""
    dims = [_resolve_dimension(dimension, result.dimensions, "this locate result")] if dimension else result.dimensions
    if not dims:
        raise ValueError("this locate result has no dimensions")
    sets = [[result.neuron_sets.get(f"{d}:{p}") for p in POLES] for d in dims]
    n_layers = max(s.n_layers for row in sets for s in row if s is not None)
    fig = _figure(max(6.0, 0.22 * n_layers + 2), 0.8 + 2.3 * len(dims))
    axes = fig.subplots(len(dims), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(n_layers)
    legend = {}
    for ax, d, row in zip(axes, dims, sets, strict=True):
        sizes = []
        for j, (pole, ns) in enumerate(zip(POLES, row, strict=True)):
            if ns is None:
                continue
            counts = ns.counts_per_layer().numpy()
            bars = ax.bar(x + (j - 0.5) * 0.4, np.pad(counts, (0, n_layers - len(counts))), width=0.4,
                          color=POLE_COLORS[pole])  # fmt: skip
            legend.setdefault(pole, bars)
            sizes.append(f"{pole}: {len(ns)}")
        ax.set_title(f"{d} ({', '.join(sizes)} neurons)", fontsize="medium")
        ax.set_ylabel("neurons")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel("layer")
    names = {"+": "+ set (the value)", "-": "- set (its reversed aspect)"}
    fig.legend(list(legend.values()), [names[p] for p in legend], loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle("Selected neurons per layer", fontsize="large")
    step = max(1, math.ceil(n_layers / 30))
    axes[-1].set_xticks(x[::step])
    return fig


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
    fig = _figure(7.5, 4.2)
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
    ax.set_title(f"{dim}: {score} of every neuron (selection: {rule}, by {sel.score})", fontsize="medium")
    ax.legend(fontsize="small")
    return fig


def overlap_heatmap(result: LocateResult) -> Figure:
    """Jaccard overlap between every two neuron sets, each cell annotated (shared neurons in brackets)."""
    names = list(result.neuron_sets)
    if not names:
        raise ValueError("this locate result has no neuron sets")
    masks = [result.neuron_sets[n].mask() for n in names]
    jac = np.array([[result.neuron_sets[a].jaccard(result.neuron_sets[b]) for b in names] for a in names])
    shared = np.array([[int((ma & mb).sum()) for mb in masks] for ma in masks])
    size = 1.6 + 0.95 * len(names)
    fig = _figure(size + 1.4, size)
    ax = fig.subplots()
    im = ax.imshow(jac, cmap="viridis", vmin=0.0, vmax=1.0)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{jac[i, j]:.2f}\n({shared[i, j]})", ha="center", va="center", fontsize="small",
                    color="black" if jac[i, j] > 0.6 else "white")  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("Jaccard overlap of the neuron sets (shared neurons)", fontsize="medium")
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


def _random_band(ax: Any, rows: pd.DataFrame, color: Any, alpha: float, label: str, **line: Any) -> None:
    """The random edits' mean per gamma and a band of +/- sd (ddof=1; 0 with one seed)."""
    if len(rows):
        g = rows.groupby("gamma")["value"].agg(["mean", "std"]).sort_index().fillna(0.0)
        ax.fill_between(g.index, g["mean"] - g["std"], g["mean"] + g["std"], color=color, alpha=alpha, lw=0)
        ax.plot(g.index, g["mean"], color=color, lw=1, label=f"{label}: mean +/- sd ({rows.seed.nunique()} seeds)", **line)


def _baseline(t: pd.DataFrame, metric: str, measured: str) -> float:
    b = t[(t.source == "none") & (t.metric == metric) & (t.measured == measured)]["value"]
    return float(b.mean()) if len(b) else math.nan


def _direction_title(dim: str, direction: str) -> str:
    return {"+": f"steered toward {dim} + (the value)", "-": f"steered toward {dim} - (its reversed aspect)"}.get(
        direction, f"steered {direction}"
    )


def orientation_vs_gamma(
    validation: Any, dimension: str, *, metric: str = "orientation", selector: str | None = None, size: int | None = None
) -> Figure:
    """The steered dimension's ``metric`` against gamma, one panel per steering direction.

    Each panel: the value edit (paper mode), its boost-only half, the clamp-only half
    (gamma-free: a horizontal dotted line), the size-matched random edits' mean +/- sd over
    seeds (grey band) and the unedited model (dashed). Model-wide metrics (``kl``,
    ``perplexity``, ``position_bias_A``) are drawn the same way.
    """
    t = _table(validation, selector, size)
    _check_metric(t, metric)
    dim = _resolve_dimension(dimension, _steered(t), "the validation table (steered)")
    model_wide = (t.loc[t.metric == metric, "measured"] == "").all()
    measured = "" if model_wide else dim
    rows = t[(t.steered == dim) & (t.metric == metric) & (t.measured == measured)]
    if rows.empty:
        have = sorted(set(t.loc[t.metric == metric, "measured"]) - {""})
        raise ValueError(f"metric {metric!r} has no values for {dim} (it is measured on {', '.join(have) or 'nothing'})")
    directions = _directions(rows)
    fig = _figure(1.0 + 5.0 * len(directions), 4.6)
    axes = fig.subplots(1, len(directions), sharey=True, squeeze=False)[0]
    base = _baseline(t, metric, measured)
    for ax, direction in zip(axes, directions, strict=True):
        sub = rows[rows.direction == direction]
        _random_band(ax, sub[sub.source == "random"], _RANDOM_COLOR, 0.25, "random sets")
        for mode, style in _MODE_STYLE.items():
            v = sub[(sub.source == "value") & (sub["mode"] == mode)].sort_values("gamma")
            if len(v):
                ax.plot(v.gamma, v.value, **style)
        clamp = sub[(sub.source == "value") & (sub["mode"] == "clamp_only")]
        if len(clamp):
            ax.axhline(float(clamp.value.mean()), color=_CLAMP_COLOR, ls=":", lw=2, label="clamp only (no gamma)")
        if math.isfinite(base):
            ax.axhline(base, color="black", ls="--", lw=1, label="unedited")
        ax.set_title(_direction_title(dim, direction), fontsize="medium")
        ax.set_xlabel("gamma")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric}" + (f" of {dim}" if measured else ""))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize="small")
    fig.suptitle(f"{dim}: {metric} against gamma", fontsize="large")
    return fig


def cost_vs_gamma(validation: Any, *, metric: str = "kl", selector: str | None = None, size: int | None = None) -> Figure:
    """Capability cost (``kl``: mean KL divergence from the unedited model, nats; or ``perplexity``)
    against gamma: value edits (paper mode) and random edits' mean +/- sd, per direction, one panel
    per steered dimension."""
    t = _table(validation, selector, size)
    _check_metric(t, metric, per_dimension=False)
    dims = _steered(t)
    fig = _figure(max(6.0, 1.0 + 4.2 * len(dims)), 4.6)
    axes = fig.subplots(1, len(dims), sharey=True, squeeze=False)[0]
    base = _baseline(t, metric, "")
    for ax, dim in zip(axes, dims, strict=True):
        rows = t[(t.steered == dim) & (t.metric == metric)]
        for direction in _directions(rows):
            sub = rows[rows.direction == direction]
            color = POLE_COLORS.get(direction, "C2")
            _random_band(ax, sub[sub.source == "random"], color, 0.15, f"random sets toward {direction}", ls="--")
            v = sub[(sub.source == "value") & (sub["mode"] == "paper")].sort_values("gamma")
            if len(v):
                ax.plot(v.gamma, v.value, color=color, marker="o", label=f"value edit toward {direction}")
        if math.isfinite(base):
            ax.axhline(base, color="black", ls=":", lw=1, label="unedited")
        ax.set_title(dim, fontsize="medium")
        ax.set_xlabel("gamma")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    axes[0].set_ylabel("KL from the unedited model (nats)" if metric == "kl" else metric)
    fig.suptitle(f"Capability cost ({metric}) against gamma\nvalue edits vs size-matched random edits", fontsize="large")
    return fig


def shift_vs_kl(
    validation: Any, *, metric: str = "orientation", cost: str = "kl", modes: Sequence[str] = ("paper",),
    selector: str | None = None, size: int | None = None,
) -> Figure:  # fmt: skip
    """Orientation shift against capability cost, so that steering can be told from breaking.

    Every edit is one point: y is the change of the steered dimension's ``metric`` from the
    unedited model, signed so that up means toward the steered pole; x is its ``cost`` (KL
    from the unedited model). Value edits (``modes``, connected in gamma order, gamma
    annotated) against the random edits of the same size (crosses). A value edit that moves
    further than the random edits *at the same cost* is steering; one that only matches
    them is breaking. One panel per steered dimension.
    """
    t = _table(validation, selector, size)
    _check_metric(t, metric, per_dimension=True)
    _check_metric(t, cost, per_dimension=False)
    dims = _steered(t)
    data = experiment.per_condition(t, metric, cost)
    fig = _figure(max(6.0, 1.0 + 4.4 * len(dims)), 4.8)
    axes = fig.subplots(1, len(dims), squeeze=False)[0]
    markers = {"paper": "o", "boost_only": "s", "clamp_only": "D"}
    for ax, dim in zip(axes, dims, strict=True):
        rows = data[data.steered == dim]
        for direction in _directions(rows):
            sub = rows[rows.direction == direction]
            rnd = sub[sub.source == "random"]
            if len(rnd):
                ax.scatter(rnd.cost, rnd["shift"], marker="x", s=22, color=_POLE_LIGHT.get(direction, "0.6"),
                           label=f"random edits toward {direction}")  # fmt: skip
            for mode in modes:
                v = sub[(sub.source == "value") & (sub["mode"] == mode)].sort_values("gamma")
                if not len(v):
                    continue
                ax.plot(v.cost, v["shift"], marker=markers.get(mode, "o"), color=POLE_COLORS.get(direction, "C2"),
                        ls="-" if mode == "paper" else ":", label=f"value edit toward {direction} ({mode})")  # fmt: skip
                for g, x, y in zip(v.gamma, v.cost, v["shift"], strict=True):
                    ax.annotate(f"{g:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_title(dim, fontsize="medium")
        ax.set_xlabel(f"{cost} from the unedited model" + (" (nats)" if cost == "kl" else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    axes[0].set_ylabel(f"{metric} shift toward the steered pole")
    fig.suptitle(f"Effect against cost: {metric} shift vs {cost}\n(numbers next to the value edits: gamma)", fontsize="large")
    return fig


FAMILY_STYLE = {  # one convention in every figure: value edits in the pole colour, controls in fixed colours
    "random": {"marker": "x", "color": "0.55", "label": "random edits (shared null)"},
    "steering": {"marker": "^", "color": "#2a9d8f", "label": "steering vector (control)"},
    "dense": {"marker": "s", "color": "#e9c46a", "label": "dense MLP edit (control)"},
}


def matched_effects(validation: Any) -> Figure:
    """The verdict in one figure: per (dimension, direction), every edit's shift of the ``+`` option's
    log-odds toward the steering direction against its KL on neutral text. Value edits (filled
    circles) should stand above the grey random edits at the same KL; the dashed line is the
    prompted control (the ceiling: the value stated in the prompt); controls show what a steering
    vector or a dense MLP edit achieves at the same cost."""
    change, labels, dim_of = experiment.item_changes(validation)
    cells = labels[labels.source == "value"][["steered", "direction"]].drop_duplicates()
    if cells.empty:
        raise ValueError("no value edits in the validation table: nothing to draw")
    dims = list(dict.fromkeys(cells.steered))
    fig = _figure(3.4 * len(dims) + 1.5, 6.4)
    axes = fig.subplots(2, len(dims), squeeze=False)
    for col, dim in enumerate(dims):
        items = dim_of.index[dim_of == dim]
        for row, direction in enumerate("+-"):
            ax = axes[row][col]
            sign = -1.0 if direction == "-" else 1.0
            shift = sign * change[items].mean(axis=1)
            for source, style in FAMILY_STYLE.items():
                sel = labels.source == source
                if source != "random":
                    sel &= (labels.steered == dim) & (labels.direction == direction)
                if sel.any():
                    ax.scatter(labels.kl[sel], shift[sel], marker=style["marker"], color=style["color"], s=28,
                               label=style["label"])  # fmt: skip
            sel = (labels.source == "value") & (labels.steered == dim) & (labels.direction == direction)
            ax.scatter(labels.kl[sel], shift[sel], color=POLE_COLORS.get(direction, "C2"), s=60, zorder=3,
                       label=f"value edit toward {direction}")  # fmt: skip
            prompted = (labels.source == "prompted") & (labels.direction == direction)
            if prompted.any():
                ax.axhline(float(shift[prompted].iloc[0]), color="black", ls="--", lw=1, label="prompted (ceiling)")
            ax.axhline(0.0, color="black", lw=0.6)
            ax.set_title(f"{dim} toward {direction}", fontsize=11)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=9)
            if row == 1:
                ax.set_xlabel("KL on neutral text (nats/token)", fontsize=10)
        axes[0][0].set_ylabel("log-odds shift toward the pole", fontsize=10)
        axes[1][0].set_ylabel("log-odds shift toward the pole", fontsize=10)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=9, frameon=False)
    fig.suptitle("Value edits against random edits and controls at matched cost", fontsize=13)
    return fig


def leakage_heatmap(
    validation: Any, *, gamma: float | None = None, metric: str = "orientation", mode: str = "paper",
    selector: str | None = None, size: int | None = None,
) -> Figure:  # fmt: skip
    """Change of ``metric`` from the unedited model in every measured dimension, for every steered
    dimension and direction, at one ``gamma`` (default: the largest), value edits of ``mode``.

    Rows: steered dimension and direction; columns: measured dimension; positive (blue) means
    toward the measured dimension's ``+`` pole. The steered dimension's own cell is outlined;
    every other cell is leakage.
    """
    t = _table(validation, selector, size)
    _check_metric(t, metric, per_dimension=True)
    _steered(t)
    edited = t[(t.source == "value") & (t["mode"] == mode) & (t.metric == metric)]
    if edited.empty:
        modes = sorted(set(t.loc[t.source == "value", "mode"]))
        raise ValueError(f"no value edits of mode {mode!r} in the validation table (modes: {', '.join(modes)})")
    gammas = sorted(edited.gamma.dropna().unique())
    if gamma is None:
        gamma = float(gammas[-1])
    else:
        match = [g for g in gammas if math.isclose(g, float(gamma), rel_tol=1e-9, abs_tol=1e-12)]
        if not match:
            raise ValueError(f"gamma {gamma} is not in the validation table for mode {mode!r} (gammas: {', '.join(f'{g:g}' for g in gammas)})")
        gamma = float(match[0])
    at = edited[np.isclose(edited.gamma, gamma)]
    base = t[(t.source == "none") & (t.metric == metric)].groupby("measured", sort=False)["value"].mean()
    measured = [m for m in base.index if m] + [m for m in dict.fromkeys(at.measured) if m and m not in base.index]
    change = at.assign(change=at.value - at.measured.map(base))
    changes = change.pivot_table("change", ["steered", "direction"], "measured", sort=False).reindex(columns=measured)
    conditions, grid = list(changes.index), changes.to_numpy(dtype=float)
    span = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
    span = span if span > 0 else 1e-6
    fig = _figure(max(7.0, 3.4 + 1.5 * len(measured)), 2.4 + 0.55 * len(conditions))
    ax = fig.subplots()
    im = ax.imshow(grid, cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
    from matplotlib.patches import Rectangle

    for i, (s, _) in enumerate(conditions):
        for j, m in enumerate(measured):
            v = grid[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:+.3g}", ha="center", va="center", fontsize="small",
                    color="white" if np.isfinite(v) and abs(v) > 0.6 * span else "black")  # fmt: skip
            if m == s:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", lw=2))
    ax.set_xticks(range(len(measured)), measured, rotation=20, ha="right")
    ax.set_yticks(range(len(conditions)), [f"{s} toward {d}" for s, d in conditions])
    ax.set_xlabel("measured dimension")
    ax.set_ylabel("steered")
    ax.set_title(f"Change of {metric} from the unedited model, gamma = {gamma:g} ({mode} edits)\n"
                 "outlined: the steered dimension itself; blue: toward the measured dimension's + pole",
                 fontsize="medium")  # fmt: skip
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
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}
    fig = _figure(4.5 + 2 * (0.6 + 0.12 * len(names) * len(ks)), 1.4 + 3.2 * len(dims))  # the legend: ~3.5 in at the right
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
            ax.set_xticks(range(len(ks)), [f"{k:g}" for k in ks], fontsize=9)
            ax.set_xlim(-0.6, len(ks) - 0.4)
            ax.set_xlabel("neurons per pole", fontsize=10)
            ax.set_title(f"{dim} toward {direction}", fontsize=11)
            ax.grid(axis="y", alpha=0.3)
        axes[row][0].set_ylabel("log-odds shift toward the pole", fontsize=10)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=9, frameon=False)
    at = f"KL {level[1]:g} nats/token on neutral text" if level[0] == "kl" else f"gamma {level[1]:g}"
    fig.suptitle(f"Selectors against random edits of the same size\nat matched cost ({at})", fontsize=13)
    return fig


def compare_figures(result: Any, *, level: tuple[str, float] | None = None) -> dict[str, Figure]:
    """The figures of a selector comparison (:func:`vlens.selectors.compare`): ``matched_effects``
    (:func:`compare_effects` at ``level``, default the first KL target) and ``overlap`` (mean Jaccard
    between selectors per size)."""
    names = result.meta.get("selectors") or sorted(result.overlap.selector_a.unique())
    figs: dict[str, Any] = {"matched_effects": compare_effects(result, level=level)}

    ov = result.overlap
    ks = sorted(ov["size"].unique())
    fig = _figure(4.2 * len(ks), 4.4)
    axes = fig.subplots(1, len(ks), squeeze=False)[0]
    for ax, k in zip(axes, ks, strict=True):
        mat = ov[ov["size"] == k].groupby(["selector_a", "selector_b"])["jaccard"].mean().unstack().reindex(index=names, columns=names)
        im = ax.imshow(mat.to_numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i in range(len(names)):
            for j in range(len(names)):
                v = mat.iloc[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.5 else "k")
        ax.set_title(f"Jaccard, {k} neurons per pole")
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    figs["overlap"] = fig
    return figs


__all__ = [
    "POLE_COLORS",
    "circuitsvis_html",
    "compare_effects",
    "compare_figures",
    "cost_vs_gamma",
    "figure_to_data_uri",
    "leakage_heatmap",
    "neuron_activations",
    "neuron_tokens",
    "neurons_per_layer",
    "orientation_vs_gamma",
    "overlap_heatmap",
    "score_distribution",
    "shift_vs_kl",
    "top_prompts",
]
