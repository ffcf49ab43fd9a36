"""Neuron cards: what vlens knows about one MLP neuron, on one page (in the spirit of Neuronpedia's feature dashboards).

:func:`neuron_card` gathers, for the neuron ``L.N``:

a. its scores (delta, Cohen's d, LAPE entropy) in every located dimension, and the neuron sets it belongs to;
b. its activation per class from the statistics (mean +- sd, activation probability, the histogram if collected);
c. the ValueInsight prompt pairs on which it fires most: the ``+`` and ``-`` prompt of each pair side by side as
   circuitsvis token views, each headed by its description (the only text that differs between them);
d. the tokens its output promotes and suppresses: its ``W_out`` row, times the final norm's weight, through the
   unembedding (:func:`logit_attribution`).

A :class:`NeuronCard` is a plain dataclass. Jupyter shows it (``_repr_html_``); :meth:`NeuronCard.html` and
:meth:`NeuronCard.save` give self-contained HTML that opens offline (the circuitsvis JavaScript inlined, the figure
a PNG data URI). :func:`write_cards` writes the cards of the top neurons of every set for the report, all sharing
one copy of the JavaScript.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from vlens import viz
from vlens._io import atomic_write_text
from vlens.data.loaders import ValueData, load_value_data
from vlens.data.prompts import Prompt, build_prompts
from vlens.locate import LocateResult
from vlens.models import model_info, tokenize
from vlens.neurons import NeuronSet
from vlens.runner import resolve_hook
from vlens.scores import all_scores
from vlens.stats import NeuronStats, class_label
from vlens.values import POLES

# The sections of a card, in the order they appear; each is a titled block with a one-sentence caption.
TITLES = {
    "header": "Scores and neuron sets",
    "distribution": "Activation per pole",
    "contexts": "Top-activating prompt pairs",
    "logits": "Output logit attribution",
}
CARD_SCORES = {"delta": "delta", "cohens_d": "Cohen's d", "entropy": "LAPE entropy"}
BUNDLE_FILE = "circuitsvis.js"  # the shared JavaScript beside the cards that write_cards writes


@dataclass
class NeuronCard:
    """Everything on one neuron's card; ``html()`` renders it, ``save(path)`` writes it as a page."""

    model: str
    layer: int
    neuron: int
    hook: str  # "post" or "gate": what was located
    hook_point: str  # the hook point read
    scores: pd.DataFrame  # one row per dimension: delta, Cohen's d, LAPE entropy, P(a>0) in each pole
    sets: pd.DataFrame  # the neuron sets it belongs to: set, rank, size (empty when none, or none were given)
    sets_given: bool  # False when the card was built from bare statistics (no neuron sets to look in)
    distribution: str  # the activation figure, a PNG data URI
    contexts: pd.DataFrame  # the top prompt pairs: rank, pair, both descriptions, maxima
    contexts_view: str  # circuitsvis token views of those pairs, self-contained (JavaScript inlined)
    logits: pd.DataFrame  # effect ("promotes" / "suppresses"), rank, token, token_id, logit
    final_norm: str  # what scaled W_out before the unembedding, e.g. "LlamaRMSNorm weight"

    @property
    def name(self) -> str:
        return f"L{self.layer}.N{self.neuron}"

    def html(self, *, full_page: bool = False) -> str:
        """The card as an HTML fragment (a ``<div>``), or a complete page with ``full_page=True``; both offline."""
        return _page(self, self._body(), self.name) if full_page else self._body()

    def _repr_html_(self) -> str:
        return self._body()

    def save(self, path: str | os.PathLike, *, script_src: str | None = None) -> Path:
        """Write the card as a standalone HTML page; returns the path.

        By default the page carries the circuitsvis JavaScript (1.3 MB). ``script_src``, a path relative to the
        page (e.g. ``"circuitsvis.js"``, as :func:`write_cards` writes it), loads a shared copy instead.
        """
        if script_src is None:
            return atomic_write_text(path, _page(self, self._body(), self.name))
        body = self._body(inline_js=False)
        return atomic_write_text(path, _page(self, body, self.name, script_src=script_src))

    def _body(self, *, inline_js: bool = True) -> str:
        view = self.contexts_view if inline_js else self.contexts_view.replace(viz._circuitsvis_js(), "", 1)
        member = ", ".join(f"{html.escape(r.set)} (rank {r.rank} of {r.size})" for r in self.sets.itertuples())
        if not self.sets_given:
            member = "not known: the card was built from statistics alone (pass a LocateResult for the sets)"
        member = member or "none of the located sets"
        gate = " (the gate activation act(x W_gate), as the authors read)" if self.hook == "gate" else ""
        scores = self.scores.to_html(index=False, float_format=lambda v: f"{v:+.4f}", classes="vlens-table")
        logits = _logit_table(self.logits)
        captions = {
            "header": "A value neuron has a large |delta| and |d| in one dimension and an entropy well below "
                      "log 2 = 0.693 there (near 0: active in one pole only), and sits high in that dimension's set.",
            "distribution": "Look for a gap between the blue (+) and red (-) bars of one dimension that is large next "
                            "to the whiskers (one standard deviation over tokens); equal bars everywhere mean the neuron "
                            "does not tell the poles apart.",
            "contexts": "Each row is one question asked after the + description (left) and the - description (right): "
                        "the question tokens are identical, so a colour difference on them comes from the stated value "
                        "alone (pairs ranked by the larger maximum over the question tokens; one colour scale for all).",
            "logits": f"The tokens whose logits this neuron raises (left) and lowers (right) per unit of positive "
                      f"activation: W_out[{self.layer}, {self.neuron}] times the final norm's weight ({self.final_norm}), "
                      "not its input-dependent scale, through the unembedding; direct effect only.",
        }  # fmt: skip
        blocks = {
            "header": f"{scores}<p><b>Belongs to:</b> {member}</p>",
            "distribution": f'<img src="{self.distribution}" style="max-width: 100%;" alt="activation of {self.name} per class">',
            "contexts": view,
            "logits": logits,
        }
        sections = "\n".join(f'<section class="vlens-card-section"><h3>{TITLES[key]}</h3>'
                             f'<p class="vlens-caption">{html.escape(captions[key])}</p>\n{blocks[key]}</section>'
                             for key in TITLES)  # fmt: skip
        return (f'<div class="vlens-card">\n<style>{_CSS}</style>\n<h2>Neuron {self.name}</h2>\n'
                f'<p class="vlens-meta">model <b>{html.escape(self.model)}</b> &middot; hook point '
                f"<code>{html.escape(self.hook_point)}</code>{html.escape(gate)} &middot; layer {self.layer}, "
                f"neuron {self.neuron}</p>\n{sections}\n</div>")  # fmt: skip


_CSS = """
.vlens-card { font-family: system-ui, sans-serif; color: #222; }
.vlens-card h2 { margin: .3em 0; }
.vlens-card-section { border-top: 1px solid #ddd; margin-top: 1.2em; }
.vlens-caption { color: #555; font-size: 13px; max-width: 1000px; }
.vlens-meta { font-size: 13px; }
.vlens-table { border-collapse: collapse; font-size: 12px; margin: .5em 0; }
.vlens-table td, .vlens-table th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
.vlens-desc { color: #333; font-style: italic; }
"""


def _page(card: NeuronCard, body: str, title: str, *, script_src: str | None = None) -> str:
    script = f'<script src="{html.escape(script_src)}"></script>\n' if script_src else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(f'vlens neuron card: {title} ({card.model})')}</title>\n{script}</head>\n"
            f'<body style="max-width: 1200px; margin: 1.5em auto; padding: 0 1em;">\n{body}\n</body>\n</html>\n')  # fmt: skip


def _logit_table(logits: pd.DataFrame) -> str:
    up, down = (logits[logits.effect == e].sort_values("rank") for e in ("promotes", "suppresses"))
    rows = "".join(f"<tr><td>{u.rank}</td><td><code>{html.escape(repr(u.token))}</code></td><td>{u.logit:+.4f}</td>"
                   f"<td><code>{html.escape(repr(d.token))}</code></td><td>{d.logit:+.4f}</td></tr>"
                   for u, d in zip(up.itertuples(), down.itertuples(), strict=True))  # fmt: skip
    return ('<table class="vlens-table"><tr><th>rank</th><th>promotes</th><th>logit</th><th>suppresses</th>'
            f"<th>logit</th></tr>{rows}</table>")  # fmt: skip


# ============================================================================ the card


def neuron_card(
    model: Any,
    stats_or_result: LocateResult | NeuronStats,
    layer: int,
    neuron: int,
    *,
    data: ValueData | None = None,
    k: int = 4,
    sample: int = 12,
    dimensions: Sequence[str] | None = None,
    batch_size: int = 8,
) -> NeuronCard:
    """The card of neuron ``neuron`` in layer ``layer``, from a :class:`~vlens.locate.LocateResult` (scores and sets)
    or bare :class:`~vlens.stats.NeuronStats` (scores only).

    The top-activating contexts come from ``sample`` prompt pairs per dimension (``dimensions``, default: every
    located one) of the ``search`` split of ``data`` (default: the shipped ValueInsight), built with the template and
    seed the statistics were collected with, and read at the hook they were located at; the ``k`` pairs with the
    largest activation are shown. The model must be the one the statistics come from.
    """
    stats, scores, sets = _located(stats_or_result)
    lpos = _check(model, stats, layer, neuron)
    layer, neuron = int(layer), int(neuron)
    for name, value in (("k", k), ("sample", sample), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    data = data if data is not None else load_value_data()
    prompts = _prompts(model, stats, data, list(dimensions) if dimensions else stats.dimensions, sample)
    return _card(model, stats, scores, sets, layer, lpos, neuron, prompts, _description_texts(data), k, batch_size)


def _located(obj: Any) -> tuple[NeuronStats, dict[str, dict[str, Tensor]], dict[str, NeuronSet] | None]:
    if isinstance(obj, LocateResult):
        return obj.stats, {d: obj.scores.get(d) or all_scores(obj.stats, d) for d in obj.dimensions}, dict(obj.neuron_sets)
    if isinstance(obj, NeuronStats):
        return obj, {d: all_scores(obj, d) for d in obj.dimensions}, None
    raise TypeError(f"expected a LocateResult or NeuronStats (from vlens.locate), got {type(obj).__name__}")


def _check(model: Any, stats: NeuronStats, layer: int, neuron: int) -> int:
    """The neuron's layer position in ``stats``, after checking it is a neuron of this model that the stats cover."""
    viz._check_neuron(model, layer, neuron)
    fp, here = stats.meta.get("model_fingerprint"), model_info(model).fingerprint
    if fp is not None and fp != here:
        raise ValueError(f"these statistics come from another model ({fp.get('name')}) than this one ({here['name']}); "
                         "load the model they were located on")  # fmt: skip
    if int(layer) not in stats.layers:
        raise ValueError(f"layer {layer} has no statistics: they cover layers {stats.layers}; pick a neuron there")
    return stats.layers.index(int(layer))


def _prompts(model: Any, stats: NeuronStats, data: ValueData, dimensions: list[str], sample: int) -> list[Prompt]:
    return build_prompts(data, model, split="search", dimensions=dimensions, template=stats.meta.get("template", "auto"),
                         max_pairs=sample, seed=int(stats.meta.get("seed", 0)))  # fmt: skip


def _description_texts(data: ValueData) -> dict[str, str]:
    return {d["id"]: d["text"] for d in data.descriptions}


def _card(model: Any, stats: NeuronStats, scores: dict[str, dict[str, Tensor]], sets: dict[str, NeuronSet] | None,
          layer: int, lpos: int, neuron: int, prompts: list[Prompt], descriptions: dict[str, str], k: int,
          batch_size: int) -> NeuronCard:  # fmt: skip
    hook = stats.hook
    contexts, view = _contexts(model, prompts, descriptions, layer, neuron, hook=hook, k=k, batch_size=batch_size)
    gain, norm = _final_norm_gain(model)
    return NeuronCard(
        model=model_info(model).name, layer=layer, neuron=neuron, hook=hook, hook_point=resolve_hook(model, hook, layer),
        scores=_score_table(stats, scores, lpos, neuron), sets=_memberships(sets or {}, layer, neuron),
        sets_given=sets is not None, distribution=viz.figure_to_data_uri(activation_figure(stats, layer, neuron)),
        contexts=contexts, contexts_view=view, logits=logit_attribution(model, layer, neuron), final_norm=norm,
    )  # fmt: skip


# ---------------------------------------------------------------------------- a. scores and sets


def _score_table(stats: NeuronStats, scores: dict[str, dict[str, Tensor]], lpos: int, neuron: int) -> pd.DataFrame:
    prob: Float[Tensor, " cls"] = stats.activation_probability()[:, lpos, neuron]
    rows = []
    for dim, table in scores.items():
        row = {"dimension": dim} | {label: float(table[name][lpos, neuron]) for name, label in CARD_SCORES.items()}
        for pole in POLES:
            label = class_label(dim, pole)
            row[f"P(a>0 | {pole})"] = float(prob[stats.classes.index(label)]) if label in stats.classes else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _memberships(sets: dict[str, NeuronSet], layer: int, neuron: int) -> pd.DataFrame:
    """The sets holding the neuron, with its rank in each (sets are ordered by their selection score)."""
    rows = []
    for name, ns in sets.items():
        hit = ((ns.layers == layer) & (ns.neurons == neuron)).nonzero()
        if len(hit):
            rows.append({"set": name, "rank": int(hit[0, 0]) + 1, "size": len(ns)})
    return pd.DataFrame(rows, columns=["set", "rank", "size"])


# ---------------------------------------------------------------------------- b. activation per pole


def activation_figure(stats: NeuronStats, layer: int, neuron: int) -> Figure:
    """One neuron's activation per class from the statistics: mean +- sd and P(a > 0) per dimension and pole, and
    (when the statistics have a histogram) the distribution of its activation in each pole."""
    if int(layer) not in stats.layers:
        raise ValueError(f"layer {layer} has no statistics: they cover layers {stats.layers}")
    if not 0 <= int(neuron) < stats.d_mlp:
        raise ValueError(f"neuron {neuron} out of range: these statistics have neurons 0..{stats.d_mlp - 1}")
    lpos, dims = stats.layers.index(int(layer)), stats.dimensions
    mean, sd = stats.mean()[:, lpos, neuron], stats.variance()[:, lpos, neuron].sqrt()
    prob = stats.activation_probability()[:, lpos, neuron]
    hist = stats.hist is not None
    fig = viz._figure(max(7.5, 2.2 * len(dims) + 3), 7.2 if hist else 3.8)
    grid = fig.add_gridspec(2 if hist else 1, max(2, len(dims)))
    half = max(2, len(dims)) // 2
    ax_mean, ax_prob = fig.add_subplot(grid[0, :half]), fig.add_subplot(grid[0, half:])
    x = np.arange(len(dims))
    for j, pole in enumerate(POLES):
        off, color = (j - 0.5) * 0.38, viz.POLE_COLORS[pole]
        ax_mean.bar(x + off, _per_dimension(stats, mean, pole), 0.38, yerr=_per_dimension(stats, sd, pole), color=color,
                    capsize=3, label=f"pole {pole}")  # fmt: skip
        ax_prob.bar(x + off, _per_dimension(stats, prob, pole), 0.38, color=color, label=f"pole {pole}")
    for ax, label in ((ax_mean, "mean activation (+- 1 sd over tokens)"), (ax_prob, "P(a > 0)")):
        ax.set_xticks(x, dims, rotation=15, ha="right", fontsize=9)
        ax.set_ylabel(label, fontsize=10)
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
    ax_prob.set_ylim(0, 1)
    ax_prob.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    if hist:
        edges = stats.hist_edges.double().cpu().numpy()
        counts: Float[Tensor, "cls bin"] = stats.hist[:, lpos, neuron].double().cpu()
        share = (counts / counts.sum(-1, keepdim=True).clamp(min=1)).numpy()
        for col, dim in enumerate(dims):
            ax = fig.add_subplot(grid[1, col])
            for pole in POLES:
                label = class_label(dim, pole)
                if label in stats.classes:  # the bins below the first edge and above the last are not drawn
                    ax.stairs(share[stats.classes.index(label), 1:-1], edges, color=viz.POLE_COLORS[pole], label=pole)
            ax.set_title(dim, fontsize=10)
            ax.set_xlabel("activation", fontsize=9)
            ax.set_yscale("log")
            if col == 0:
                ax.set_ylabel("share of tokens (log)", fontsize=9)
    fig.suptitle(f"L{layer}.N{neuron}: activation per class (blue: + pole, red: - pole)", fontsize=12)
    return fig


def _per_dimension(stats: NeuronStats, values: Float[Tensor, " cls"], pole: str) -> np.ndarray:
    """``values`` of each dimension's class of ``pole``, in the order of ``stats.dimensions`` (NaN where it is absent)."""
    labels = [class_label(d, pole) for d in stats.dimensions]
    index = torch.tensor([stats.classes.index(label) if label in stats.classes else -1 for label in labels])
    padded = torch.cat([values.double().cpu(), torch.tensor([float("nan")], dtype=torch.float64)])  # -1 picks the NaN
    return padded[index].numpy()


# ---------------------------------------------------------------------------- c. top-activating pairs


def _contexts(model: Any, prompts: list[Prompt], descriptions: dict[str, str], layer: int, neuron: int, *, hook: str,
              k: int, batch_size: int) -> tuple[pd.DataFrame, str]:  # fmt: skip
    """The ``k`` pairs whose larger per-prompt maximum (over the question tokens) is largest, as a table and as
    side-by-side circuitsvis views of the description and question tokens."""
    rows = viz.neuron_activations(model, prompts, layer, neuron, hook=hook, batch_size=batch_size)
    ranked = viz._ranked(rows, None).set_index(["pair_id", "pole"])
    pair_max = ranked.groupby(level="pair_id", sort=False)["max_activation"].max()
    complete = ranked.groupby(level="pair_id", sort=False).size() == 2  # both poles present
    top = pair_max[complete].sort_values(ascending=False, kind="stable").index[:k]
    records, samples = [], []
    for rank, pair in enumerate(top, start=1):
        record: dict[str, Any] = {"rank": rank, "pair_id": pair, "max_activation": float(pair_max[pair])}
        for pole in POLES:
            rec = ranked.loc[(pair, pole)]
            p, r = prompts[int(rec["_row"])], rows[int(rec["_row"])]
            text = descriptions.get(p.description_id, "")
            first = _description_token(model, p, text)
            record |= {"dimension": p.dimension, "question_id": p.question_id, f"description {pole}": text,
                       f"max {pole}": float(rec.max_activation), f"argmax token {pole}": rec.argmax_token}  # fmt: skip
            samples.append((rank, pole, rec, p.question_id, text, r["tokens"][first:], r["activations"][first:]))
        records.append(record)
    table = pd.DataFrame(records)
    if not samples:
        raise ValueError("no complete prompt pair (both poles) to show; give more pairs (sample=) or other dimensions")
    low, high = min(min(s[-1]) for s in samples), max(max(s[-1]) for s in samples)
    vmin, vmax = min(low, -1e-6), max(high, 1e-6)  # 0 inside the range, and never a zero-width scale
    headers, props = [], []
    for rank, pole, rec, qid, text, toks, acts in samples:
        headers.append(f"pair #{rank} &middot; pole {pole} &middot; max {rec.max_activation:.4g} at "
                       f"&lsquo;{html.escape(rec.argmax_token)}&rsquo; over the question &middot; <code>{html.escape(qid)}</code>"
                       f'<br><span class="vlens-desc">description ({pole}): &laquo;{html.escape(text)}&raquo;</span>')  # fmt: skip
        props.append({"tokens": [html.escape(t, quote=False) for t in toks], "values": acts, "minValue": vmin,
                      "maxValue": vmax})  # fmt: skip
    caption = f"One colour scale for all samples: {vmin:.4g} (red) .. 0 (white) .. {vmax:.4g} (blue)."
    view = viz._render_many("ColoredTokens", props, headers, caption=caption, columns=2)
    return table, viz.circuitsvis_html(view)


def _description_token(model: Any, prompt: Prompt, description: str) -> int:
    """Index of the first token of the prompt's description (the view starts there), or 0 if it cannot be found."""
    start = prompt.shared_start - len(description)
    if not description or start < 0 or prompt.text[start : prompt.shared_start] != description:
        return 0  # the whole prompt: the description is in it somewhere
    _, offsets = tokenize(model, prompt.text)
    return next((i for i, (s, e) in enumerate(offsets) if s >= 0 and e > start), 0)


# ---------------------------------------------------------------------------- d. logit attribution


def _final_norm_gain(model: Any) -> tuple[Float[Tensor, " d_model"], str]:
    """The final norm's elementwise weight (its input-dependent 1/rms or 1/sd scale left out) and a description."""
    norm = getattr(model, "ln_final", None)
    module = getattr(norm, "original_component", norm)
    weight = getattr(module, "weight", None)
    d_model = model_info(model).d_model
    if weight is None:
        return torch.ones(d_model), "no final norm weight"
    gain, name = weight.detach().to(torch.float32).cpu(), type(module).__name__
    if name.startswith("Gemma"):  # Gemma's RMSNorm multiplies by (1 + weight)
        return 1.0 + gain, f"{name} weight, as 1 + w"
    return gain, f"{name} weight"


def output_logits(model: Any, layer: int, neuron: int) -> Float[Tensor, " vocab"]:
    """The direct effect of one unit of the neuron's activation on every logit: ``W_out[layer, neuron]`` (for a gated
    MLP, the down projection's column) times the final norm's weight, through the unembedding ``W_U``."""
    viz._check_neuron(model, layer, neuron)
    try:
        w_out: Float[Tensor, " d_model"] = model.blocks[layer].mlp.W_out[neuron]
        w_u: Float[Tensor, "d_model vocab"] = model.W_U
    except AttributeError as err:
        raise ValueError(f"this model exposes no W_out / W_U on its TransformerBridge ({err}); a card needs both") from err
    gain, _ = _final_norm_gain(model)
    with torch.inference_mode():
        direction = w_out.detach().to(torch.float32).cpu() * gain
        return einops.einsum(direction, w_u.detach().to(torch.float32).cpu(), "d, d v -> v")


def logit_attribution(model: Any, layer: int, neuron: int, *, k: int = 10) -> pd.DataFrame:
    """The ``k`` tokens whose logits the neuron's output raises most and the ``k`` it lowers most
    (:func:`output_logits`), as rows ``effect`` ("promotes" / "suppresses"), ``rank``, ``token``, ``token_id``, ``logit``.
    Only ids the tokenizer knows count (an unembedding padded beyond the vocabulary has unused rows)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    logits = output_logits(model, layer, neuron)
    logits = logits[: min(len(logits), len(model.tokenizer))]
    k = min(k, len(logits))
    rows = []
    for effect, sign in (("promotes", 1.0), ("suppresses", -1.0)):
        ids = torch.topk(sign * logits, k).indices
        for rank, i in enumerate(ids.tolist(), start=1):
            rows.append({"effect": effect, "rank": rank, "token": model.tokenizer.decode([i]), "token_id": i,
                         "logit": float(logits[i])})  # fmt: skip
    return pd.DataFrame(rows)


# ============================================================================ cards for the report


def write_cards(
    folder: str | os.PathLike,
    model: Any,
    result: LocateResult,
    *,
    per_set: int = 3,
    k: int = 2,
    sample: int = 4,
    data: ValueData | None = None,
    batch_size: int = 8,
) -> dict[str, list[tuple[str, Path]]]:
    """The cards of the top ``per_set`` neurons of every set of ``result``, written into ``folder``.

    One page per neuron (``L<layer>_N<neuron>.html``, written once when several sets share it), each scanning
    ``sample`` pairs of its set's dimension and showing ``k``: cheap enough for every report. The pages load one
    shared ``circuitsvis.js`` beside them by a relative path, so the folder opens offline and holds the 1.3 MB
    bundle once. Returns set name -> [(neuron name, file path)], in rank order.
    """
    if not isinstance(result, LocateResult):
        raise TypeError(f"write_cards needs a LocateResult (its neuron sets), got {type(result).__name__}")
    if isinstance(per_set, bool) or not isinstance(per_set, int) or per_set < 1:
        raise ValueError(f"per_set must be a whole number >= 1, got {per_set!r}")
    folder = Path(folder)
    data = data if data is not None else load_value_data()
    descriptions, stats = _description_texts(data), result.stats
    _, scores, sets = _located(result)
    atomic_write_text(folder / BUNDLE_FILE, viz._circuitsvis_js())
    prompts: dict[str, list[Prompt]] = {}
    written: dict[tuple[int, int], Path] = {}
    links: dict[str, list[tuple[str, Path]]] = {}
    for name, ns in result.neuron_sets.items():
        links[name] = []
        for layer, neuron in zip(ns.layers[:per_set].tolist(), ns.neurons[:per_set].tolist(), strict=True):
            if (layer, neuron) not in written:
                if ns.dimension not in prompts:
                    prompts[ns.dimension] = _prompts(model, stats, data, [ns.dimension], sample)
                lpos = _check(model, stats, layer, neuron)
                card = _card(model, stats, scores, sets, layer, lpos, neuron, prompts[ns.dimension], descriptions, k,
                             batch_size)  # fmt: skip
                written[(layer, neuron)] = card.save(folder / f"L{layer}_N{neuron}.html", script_src=BUNDLE_FILE)
            links[name].append((f"L{layer}.N{neuron}", written[(layer, neuron)]))
    return links


def card_links(links: dict[str, list[tuple[str, Path]]], relative_to: str | os.PathLike) -> str:
    """An HTML table linking each set's top neurons to their cards, with hrefs relative to ``relative_to`` (the
    folder of the page that shows it), so the links work offline wherever the run directory is moved."""
    base = Path(relative_to)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>"
        + ", ".join(f'<a href="{html.escape(Path(os.path.relpath(path, base)).as_posix())}">{html.escape(label)}</a>'
                    for label, path in items)
        + "</td></tr>"
        for name, items in links.items()
    )  # fmt: skip
    return f'<table class="table"><tr><th>set</th><th>top neurons (rank order)</th></tr>{rows}</table>'


__all__ = [
    "NeuronCard",
    "TITLES",
    "activation_figure",
    "card_links",
    "logit_attribution",
    "neuron_card",
    "output_logits",
    "write_cards",
]
