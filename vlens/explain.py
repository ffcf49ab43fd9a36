"""Why an edit moves the way it does: the direct path, the tokens its neurons fire on, the layers that carry it.

A value edit that moves orientation the wrong way (or significantly the right way) is explained by
three measurements, each on the same dilemma items and the same edit that validation measured:

1. **Direct effect per neuron** (:func:`direct_effects`): a neuron writes its activation times its row
   of ``W_out`` (for a gated MLP, the down projection, whose input is ``hook_post``) into the residual
   stream; read through the final norm and the unembedding at the positions that predict each option's
   tokens, that row moves the item's log-odds of the ``+`` option. The edit changes the neuron's
   activation there by ``delta`` (edited minus unedited, both read at ``hook_post`` in one batched
   pass), so its direct effect is ``delta`` times that derivative, summed over positions. As in direct
   logit attribution, the final norm's scale is frozen at its value in the unedited run. The sum over
   the edit's neurons is set beside the shift that :func:`vlens.evaluate.evaluate_edits` measures for
   the same edit: the share the direct path explains; the rest goes through later layers.
2. **Firing tokens** (:func:`firing_tokens`): circuitsvis views of the ValueInsight prompts on which
   the neurons with the largest direct effects fire most (:func:`vlens.viz.neuron_tokens`).
3. **Layer bands** (:func:`band_shifts`): the edit restricted to one band of layers at a time, at the
   same dose, all bands and the whole edit in one batched evaluation.

:func:`explain_run` does all three for one neuron set of a run directory, at the dose validation
calibrated for it (``vlens explain RUN_DIR --set "Self-Transcendence:+"``).
"""

from __future__ import annotations

import html
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlens._io import atomic_write, atomic_write_text, sha256_json
from vlens.evaluate import SCOPES, evaluate_edits
from vlens.instruments import Dilemmas, ScoredSeq, Variant
from vlens.instruments.dilemmas import DEFAULT_VARIANT
from vlens.interventions import Edit, apply, dosed_edit
from vlens.models import model_info
from vlens.neurons import NeuronSet
from vlens.runner import Batch, forward, hook_name, logprobs, run_prefixes

NORM_IN, NORM_SCALE = "ln_final.hook_in", "ln_final.hook_scale"  # the final norm's input and its scale (TransformerLens names)
ROLES = {1: "boost", 2: "clamp", 3: "boost+clamp", 4: "other"}


# ----------------------------------------------------------------------------- 1. direct effects


@dataclass
class DirectEffects:
    """The direct effect of every neuron an edit touches on every item's log-odds of the ``+`` option.

    ``per_item[i, n]``: neuron ``n``'s direct effect on item ``i`` (its activation change times the
    derivative below, summed over the item's read positions). ``per_unit[i, n]``: the derivative
    itself, the direct effect of raising the neuron's activation by 1 at every read position of item
    ``i``, so ``per_item`` and ``per_unit`` of opposite sign say the edit pushed the neuron against its
    own output. ``exact[i]``: the whole edit's direct path without linearising the log-softmax (all
    neurons' changes written into the final residual at once, the norm's scale still frozen).
    """

    layers: Int[Tensor, " neuron"]
    neurons: Int[Tensor, " neuron"]
    roles: list[str]
    items: list[str]  # "<dimension>/<item id>", as the dilemma instrument's logodds metric names them
    dimensions: list[str]  # per item
    per_item: Float[Tensor, "item neuron"]
    per_unit: Float[Tensor, "item neuron"]
    delta_sum: Float[Tensor, "item neuron"]  # the activation change summed over each item's read positions
    positions: Int[Tensor, " item"]  # read positions per item
    exact: Float[Tensor, " item"]
    meta: dict[str, Any] = field(default_factory=dict)

    def total(self) -> Float[Tensor, " item"]:
        """The edit's summed direct effect per item (linear in the activation changes)."""
        return self.per_item.sum(-1)

    def table(self) -> pd.DataFrame:
        """One row per neuron and measured dimension: ``layer``, ``neuron``, ``role`` (boost, clamp),
        ``dimension``, ``n_items``, ``mean_delta`` (the edit's mean activation change at the read
        positions), ``unit_effect`` and ``direct_effect`` (summed over the dimension's items)."""
        rows = []
        dims = np.asarray(self.dimensions)
        for d in dict.fromkeys(self.dimensions):
            idx = torch.from_numpy(np.flatnonzero(dims == d))
            n_pos = self.positions[idx].sum().clamp(min=1)
            rows.append(pd.DataFrame({
                "layer": self.layers.numpy(), "neuron": self.neurons.numpy(), "role": self.roles, "dimension": d,
                "n_items": len(idx), "mean_delta": (self.delta_sum[idx].sum(0) / n_pos).numpy(),
                "unit_effect": self.per_unit[idx].sum(0).numpy(), "direct_effect": self.per_item[idx].sum(0).numpy(),
            }))  # fmt: skip
        return pd.concat(rows, ignore_index=True)


def touched_neurons(edit: Edit) -> tuple[Int[Tensor, " neuron"], Int[Tensor, " neuron"], list[str]]:
    """The (layer, neuron) pairs an edit changes, in layer order, and each one's role."""
    boost, clamp = edit.boost != 0, edit.clamp_mask
    other = (edit.scale != 1) | edit.set_mask
    code = boost.long() + 2 * clamp.long()
    code = torch.where(other & (code == 0), torch.full_like(code, 4), code)
    layers, neurons = code.nonzero(as_tuple=True)
    if not len(layers):
        raise ValueError(f"edit {edit.label} changes no neuron: there is nothing to explain (pass a value edit)")
    return layers, neurons, [ROLES[int(c)] for c in code[layers, neurons]]


def readout_terms(dilemmas: Dilemmas, seq: ScoredSeq) -> list[tuple[int, int, float]]:
    """How ``seq`` enters its item's log-odds under the instrument's main variant: ``(position, token,
    weight)`` triples, so that ``x[item] = sum of weight * log p(token | position)`` over the item's
    sequences (every variant is linear in log-probs; see :meth:`Dilemmas.item_scores`). Empty when the
    variant does not read ``seq``."""
    v: Variant = dilemmas.variant
    kind, i, order, option = seq.key
    sign = 1.0 if option == "plus" else -1.0
    if v.formulation == "letters":
        if kind != "listed" or option != "plus":
            return []
        a, b = dilemmas.ab  # set by Dilemmas.sequences
        w = 0.5 if order == 0 else -0.5  # order 0 lists + as A: the mean over orders cancels a letter bias
        return [(seq.split - 1, a, w), (seq.split - 1, b, -w)]
    if kind == v.formulation:
        w = sign / (2 if kind == "listed" else 1)  # listed: the mean over both orders
        if v.norm == "mean":
            w /= len(seq.suffix)
        elif v.norm == "char":
            w /= len(dilemmas.items[i][f"option_{option}"])
    elif kind == "base" and v.norm == "pmi":
        w = -sign  # once per item: the mean over orders of (option - its baseline) subtracts each baseline once
    else:
        return []
    ids = seq.ids
    return [(p - 1, ids[p], w) for p in range(seq.split, len(ids))]


def _as_dilemmas(dilemmas: Dilemmas | Sequence[dict[str, Any]], variant: Variant | str | None) -> Dilemmas:
    """A fresh dilemma instrument (its sequences are built anew) read by one variant."""
    if isinstance(dilemmas, Dilemmas):
        v = dilemmas.variant if variant is None else variant if isinstance(variant, Variant) else Variant.parse(variant)
        if v != dilemmas.variant:
            raise ValueError(f"the dilemmas are read as {dilemmas.variant.name} but variant={v.name} was given; give one")
        return Dilemmas(dilemmas.items, variant=v, personas=dilemmas.personas, persona_slot=dilemmas.persona_slot)
    items = list(dilemmas)
    if not items:
        raise ValueError("no dilemmas given: the direct effect is read on the dilemma instrument's items")
    return Dilemmas(items, variant=variant or DEFAULT_VARIANT)


def _frozen_readout(model: Any, x: Float[Tensor, "flat d_model"], scale: Float[Tensor, "flat 1"]) -> Float[Tensor, "flat vocab"]:
    """Log-probs from final residuals with the final norm's scale fixed to ``scale`` (the bridge's own norm:
    its weight, bias, weight offset; the model's unembedding and soft-capping)."""
    with warnings.catch_warnings(), model.hooks(fwd_hooks=[(NORM_SCALE, lambda t, hook: scale.to(t.dtype))]):
        warnings.filterwarnings("ignore", message=".*edited hook_scale.*")  # the bridge's note that it leaves HF's path
        return logprobs(model, model.ln_final(x))


def _check_model(model: Any) -> None:
    missing = [h for h in (NORM_IN, NORM_SCALE) if h not in model.hook_dict]
    if missing:
        raise ValueError(f"this model has no hook point {missing[0]} (a final norm with a scale): the direct effect "
                         "freezes that scale; explain works on TransformerBridge models with ln_final")  # fmt: skip


def direct_effects(
    model: Any,
    edit: Edit,
    dilemmas: Dilemmas | Sequence[dict[str, Any]],
    *,
    variant: Variant | str | None = None,
    scope: str = "answer",
    batch_size: int = 16,
) -> DirectEffects:
    """The direct effect of each neuron ``edit`` touches on each dilemma's log-odds of the ``+`` option.

    For neuron ``n`` (layer ``l``) and item ``i``::

        per_item[i, n] = sum over read positions p of  delta[p, n] * W_out[l, n] . d x_i / d resid[p]

    - ``delta[p, n]``: the edit's change of the neuron's activation at ``hook_post`` (the input of
      ``W_out``; for a set located at the gate it is the change that the gate's edit makes there),
      edited minus unedited, at position ``p``, upstream effects of the edit's other layers included.
      ``scope`` is where the edit acts, as in :func:`vlens.evaluate.evaluate_edits`: ``answer``
      (the last prompt token and the option, on an unedited prompt) or ``all``.
    - ``resid[p]``: the final residual stream (``ln_final.hook_in``) of the unedited run; the read
      positions are those that predict the option tokens the instrument's variant scores.
    - ``d x_i / d resid[p]``: through the final norm **with its scale frozen at the unedited run's**
      (as in direct logit attribution) and the unembedding. The logit change this gives is exact; the
      change of the log-softmax normaliser is linearised at the unedited distribution (first order in
      the edit), so the direct effects of neurons add up. ``DirectEffects.exact`` is the same direct
      path of the whole edit without that linearisation.

    All neurons at once: one matrix product per batch (``einops``), no loop over neurons.
    """
    _check_model(model)
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; expected one of {', '.join(SCOPES)} (as in vlens.evaluate)")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (each sequence runs unedited and edited), got {batch_size}")
    inst = _as_dilemmas(dilemmas, variant)
    info = model_info(model)
    if edit.shape != (info.n_layers, info.d_mlp):
        raise ValueError(f"edit {edit.label} is for {edit.shape[0]} layers x {edit.shape[1]} neurons, the model has "
                         f"{info.n_layers} x {info.d_mlp}")  # fmt: skip
    layers, neurons, roles = touched_neurons(edit)
    seqs = inst.sequences(model)
    terms = [readout_terms(inst, s) for s in seqs]
    keep = [j for j, t in enumerate(terms) if t]
    seqs, terms = [seqs[j] for j in keep], [terms[j] for j in keep]
    n_items, n_neurons = len(inst.items), len(layers)
    device = torch.device(model.cfg.device)
    dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)
    w_out = model.W_out[layers.to(device), neurons.to(device)].detach().to(dtype)  # [neuron, d_model]
    acc = {name: torch.zeros(n_items, n_neurons, dtype=torch.float64) for name in ("per_item", "per_unit", "delta_sum")}
    exact = torch.zeros(n_items, dtype=torch.float64)
    positions = torch.zeros(n_items, dtype=torch.long)

    for chunk, start, delta, resid, scale in _paired_passes(model, edit, seqs, layers, neurons, scope, batch_size):
        # flatten the read positions of the chunk: one row per (sequence, position)
        flat_of: dict[tuple[int, int], int] = {}
        item_of, rows, t_flat, t_tok, t_w = [], [], [], [], []
        for b, j in enumerate(chunk):
            for pos, tok, w in terms[j]:
                at = pos - start[b]
                if at < 0:
                    raise ValueError(f"sequence {seqs[j].key} reads position {pos}, before the edited part "
                                     f"(which starts at {start[b]}); use scope='all'")  # fmt: skip
                if (b, at) not in flat_of:
                    flat_of[(b, at)] = len(rows)
                    rows.append((b, at))
                    item_of.append(seqs[j].key[1])
                t_flat.append(flat_of[(b, at)])
                t_tok.append(tok)
                t_w.append(w)
        bi = torch.tensor([r[0] for r in rows], device=resid.device)
        pi = torch.tensor([r[1] for r in rows], device=resid.device)
        x = resid[bi, pi].to(dtype)  # [flat, d_model]
        s = scale[bi, pi].to(dtype)  # [flat, 1]
        d = delta[bi, pi].to(dtype)  # [flat, neuron]
        t_flat_t, t_tok_t = torch.tensor(t_flat, device=device), torch.tensor(t_tok, device=device)
        t_w_t = torch.tensor(t_w, dtype=dtype, device=device)

        def readout(r: Tensor) -> Float[Tensor, " term"]:
            return _frozen_readout(model, r, s)[t_flat_t, t_tok_t] * t_w_t  # noqa: B023

        with torch.enable_grad():
            x_grad = x.clone().requires_grad_(True)
            base = readout(x_grad)
            (grad,) = torch.autograd.grad(base.sum(), x_grad)  # d x / d resid at every flat row
        with torch.no_grad():
            unit = einops.einsum(grad, w_out, "flat d, neuron d -> flat neuron")
            # the whole edit's direct path, not linearised: every neuron's change written in at once
            moved = x + einops.einsum(d, w_out, "flat neuron, neuron d -> flat d")
            term_item = torch.tensor(item_of)[torch.tensor(t_flat)]
            exact.index_add_(0, term_item, (readout(moved) - base.detach()).double().cpu())
        items = torch.tensor(item_of)
        acc["per_unit"].index_add_(0, items, unit.double().cpu())
        acc["per_item"].index_add_(0, items, (unit * d).double().cpu())
        acc["delta_sum"].index_add_(0, items, d.double().cpu())
        positions.index_add_(0, items, torch.ones(len(items), dtype=torch.long))

    ids = [f"{item['dimension']}/{item.get('id', i)}" for i, item in enumerate(inst.items)]
    meta = {"edit": edit.label, "variant": inst.variant.name, "scope": scope, "hook": edit.hook,
            "norm_scale": "frozen at the unedited run (direct logit attribution)",
            "normaliser": "log-softmax normaliser linearised at the unedited distribution"}  # fmt: skip
    return DirectEffects(layers, neurons, roles, ids, [item["dimension"] for item in inst.items], acc["per_item"],
                         acc["per_unit"], acc["delta_sum"], positions, exact, meta)  # fmt: skip


def _paired_passes(
    model: Any, edit: Edit, seqs: list[ScoredSeq], layers: Tensor, neurons: Tensor, scope: str, batch_size: int
):  # fmt: skip
    """Run every sequence unedited and edited side by side, as the evaluation engine does: under the
    ``answer`` scope the prompt minus its last token once, unedited, from whose cache both conditions
    continue ``[last prompt token] + option``; under ``all`` the whole sequence under each condition.

    Yields, per batch: the sequence indices, where each one's pass starts in its ids, and tensors over
    the pass's positions: ``delta`` [seq, pos, neuron] (edited minus unedited ``hook_post`` of the
    touched neurons), the unedited final residual [seq, pos, d_model] and the final norm's scale
    [seq, pos, 1]."""
    info = model_info(model)
    identity = Edit.identity(info.n_layers, info.d_mlp, label="unedited", hook=edit.hook)
    start_of = lambda s: len(s.prefix) - 1 if scope == "answer" and len(s.prefix) > 1 else 0  # noqa: E731
    groups: dict[tuple[int, ...], list[int]] = {}
    for j, s in enumerate(seqs):
        groups.setdefault(tuple(s.ids[: start_of(s)]), []).append(j)
    per = max(1, batch_size // 2)  # two rows (unedited, edited) per sequence
    # A batch shares one prompt length: left-padded prompts give NaN keys and values at their padding in
    # float64 models (seen in evaluate_edits too), which masked attention still multiplies by 0.
    by_length: dict[int, list[int]] = {}
    for key in sorted(groups):
        by_length.setdefault(len(key), []).extend(groups[key])
    chunks = [order[k : k + per] for _, order in sorted(by_length.items(), reverse=True) for k in range(0, len(order), per)]
    by_layer = [(int(layer), (layers == layer).nonzero().squeeze(-1)) for layer in torch.unique(layers)]
    box: dict[Any, Tensor] = {}

    def keep(key: Any, cols: Tensor | None = None):
        def hook(t: Tensor, hook: Any) -> None:
            box[key] = (t if cols is None else t[..., cols.to(t.device)]).detach()

        return hook

    recorders = [(hook_name("post", layer), keep(layer, neurons[idx])) for layer, idx in by_layer]
    recorders += [(NORM_IN, keep("resid")), (NORM_SCALE, keep("scale"))]
    with apply(model, [identity, edit]) as handle, torch.no_grad():
        for chunk in chunks:
            start = [start_of(seqs[j]) for j in chunk]
            kwargs: dict[str, Any] = {}
            if start[0] > 0:
                keys = list(dict.fromkeys(tuple(seqs[j].ids[: start[b]]) for b, j in enumerate(chunk)))
                handle.set_rows(torch.zeros(len(keys), dtype=torch.long))  # the unedited model
                handle.new_pass()
                done = run_prefixes(model, keys)
                pick = [keys.index(tuple(seqs[j].ids[: start[b]])) for b, j in enumerate(chunk)]
                kwargs = {"prefixes": done, "pick": torch.tensor([p for p in pick for _ in range(2)])}
            rows = [seqs[j].ids[start[b] :] for b, j in enumerate(chunk) for _ in range(2)]
            handle.set_rows(torch.tensor([0, 1] * len(chunk)))
            handle.new_pass()  # step 0, as in the engine: the same Bernoulli keep masks
            box.clear()
            forward(model, Batch.of(model, rows), hooks=recorders, **kwargs)
            acts = torch.cat([box[layer] for layer, _ in by_layer], dim=-1)  # [row, pos, neuron] in `layers` order
            order = torch.cat([idx for _, idx in by_layer])
            acts = acts[..., torch.argsort(order).to(acts.device)]
            yield chunk, start, acts[1::2] - acts[0::2], box["resid"][0::2], box["scale"][0::2]


# ----------------------------------------------------------------------------- 3. layer bands


def layer_bands(n_layers: int, n_bands: int) -> list[list[int]]:
    """``n_bands`` contiguous bands of layers of (almost) equal size, covering ``0 .. n_layers - 1`` once."""
    if isinstance(n_bands, bool) or not isinstance(n_bands, int) or not 1 <= n_bands <= n_layers:
        raise ValueError(f"bands must be a whole number from 1 to the model's {n_layers} layers, got {n_bands!r}")
    return [band.tolist() for band in np.array_split(np.arange(n_layers), n_bands)]


def restrict(ns: NeuronSet, layers: Sequence[int]) -> NeuronSet:
    """The neurons of ``ns`` in ``layers``, with their scores, probabilities and deltas."""
    keep = torch.isin(ns.check().layers, torch.tensor(list(layers), dtype=torch.long))
    pick = lambda t: None if t is None else t[keep]  # noqa: E731
    return replace(ns, layers=ns.layers[keep], neurons=ns.neurons[keep], scores=ns.scores[keep], act_prob=pick(ns.act_prob),
                   p95=pick(ns.p95), delta=pick(ns.delta), params=ns.params | {"layers": list(map(int, layers))})  # fmt: skip


def band_edits(
    shape: tuple[int, int], target: NeuronSet, opposing: NeuronSet | None, dose: float, bands: Sequence[Sequence[int]],
    **kwargs: Any,
) -> list[Edit]:  # fmt: skip
    """The dosed edit (:func:`vlens.interventions.dosed_edit`) of ``target`` / ``opposing`` restricted to each
    band. The Bernoulli keep masks are drawn per layer from the edit's seed, so the bands' edits together
    are the whole edit, layer by layer."""
    out = []
    for band in bands:
        e = dosed_edit(shape, restrict(target, band), None if opposing is None else restrict(opposing, band), dose, **kwargs)
        e.label = f"layers {band[0]}-{band[-1]}: {e.label}"
        out.append(e)
    return out


def _logodds(model: Any, edits: Sequence[Edit], inst: Dilemmas, scope: str, batch_size: int) -> tuple[list[str], np.ndarray]:
    """Every item's log-odds of the ``+`` option under each edit (``edits[0]`` unedited), in one batched evaluation."""
    metrics = evaluate_edits(model, list(edits), [inst], scope=scope, batch_size=batch_size)
    ids = list(metrics[0]["logodds"])
    return ids, np.array([[m["logodds"][k] for k in ids] for m in metrics])


def _band_table(bands: Sequence[Sequence[int]], edits: Sequence[Edit], ids: list[str], x: np.ndarray) -> pd.DataFrame:
    """One row per edit (the whole edit, then each band) and measured dimension: the mean shift of the log-odds."""
    dims = np.array([k.rsplit("/", 1)[0] for k in ids])
    rows = []
    labels = [("all layers", None)] + [(f"L{b[0]}-L{b[-1]}", b) for b in bands]
    for (label, band), e, xe in zip(labels, edits, x[1:], strict=True):
        for d in dict.fromkeys(dims):
            sel = dims == d
            rows.append({"band": label, "first_layer": band[0] if band else 0,
                         "last_layer": band[-1] if band else e.shape[0] - 1, "n_boost": int((e.boost != 0).sum()),
                         "n_clamp": int(e.clamp_mask.sum()), "dimension": d, "n_items": int(sel.sum()),
                         "shift": float((xe[sel] - x[0][sel]).mean())})  # fmt: skip
    return pd.DataFrame(rows)


def band_shifts(
    model: Any, target: NeuronSet, opposing: NeuronSet | None, dose: float, dilemmas: Dilemmas | Sequence[dict[str, Any]],
    *, n_bands: int = 4, variant: Variant | str | None = None, keep_prob: float = 0.9, seed: int = 0, scope: str = "answer",
    batch_size: int = 32,
) -> pd.DataFrame:  # fmt: skip
    """Which layers carry the effect: the edit of the whole set and of each of ``n_bands`` bands of layers (the
    set restricted to the band, the same dose), measured in one batched evaluation with the unedited model.
    One row per edit and measured dimension: ``band``, its layers, ``n_boost`` / ``n_clamp`` neurons,
    ``shift`` (mean change of the log-odds of the ``+`` option over the dimension's items)."""
    info = model_info(model)
    shape = (info.n_layers, info.d_mlp)
    bands = layer_bands(info.n_layers, n_bands)
    whole = dosed_edit(shape, target, opposing, dose, keep_prob=keep_prob, seed=seed)
    edits = [Edit.identity(*shape, hook=whole.hook), whole, *band_edits(shape, target, opposing, dose, bands,
                                                                        keep_prob=keep_prob, seed=seed)]  # fmt: skip
    ids, x = _logodds(model, edits, _as_dilemmas(dilemmas, variant), scope, batch_size)
    return _band_table(bands, edits[1:], ids, x)


# ----------------------------------------------------------------------------- 2. firing tokens


def firing_tokens(
    model: Any, neurons: Sequence[tuple[int, int]], prompts: Sequence[Any], *, labels: Sequence[str] | None = None,
    k: int = 2, hook: str = "post", batch_size: int = 8,
) -> str:  # fmt: skip
    """Self-contained HTML: for each ``(layer, neuron)``, the top-``k`` prompts of each pole on which it fires
    most (:func:`vlens.viz.neuron_tokens`, tokens coloured by its activation), under a header (``labels``).
    The circuitsvis bundle is inlined once for all views (offline)."""
    from vlens import viz

    if labels is not None and len(labels) != len(neurons):
        raise ValueError(f"{len(labels)} labels for {len(neurons)} neurons: give one per neuron")
    headers, views = [], []
    for j, (layer, neuron) in enumerate(neurons):
        label = labels[j] if labels is not None else f"L{layer}.N{neuron}"
        headers.append(f"<h3>{html.escape(label)}</h3>")
        views.append(viz.circuitsvis_html(viz.neuron_tokens(model, prompts, int(layer), int(neuron), k=k, hook=hook,
                                                            batch_size=batch_size)))  # fmt: skip
    return "\n".join(h + v for h, v in zip(headers, viz.share_bundle(views), strict=True))


# ----------------------------------------------------------------------------- all three


@dataclass
class Explanation:
    """What :func:`explain` measured for one edit: per-neuron direct effects, the direct path against the
    measured shift per dimension, the layer bands, and (optionally) the firing-token views."""

    cell: str  # "<dimension>:<pole>" of the target set
    dose: float
    direct: DirectEffects
    shares: pd.DataFrame  # per measured dimension: measured_shift, direct_shift, direct_exact, direct_share
    bands: pd.DataFrame
    views: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dimension(self) -> str:
        return self.cell.rsplit(":", 1)[0]

    def neurons(self) -> pd.DataFrame:
        """The per-neuron table (:meth:`DirectEffects.table`)."""
        return self.direct.table()

    def top_neurons(self, k: int = 5, dimension: str | None = None) -> pd.DataFrame:
        """The ``k`` neurons with the largest |direct effect| on ``dimension``'s items (default: the set's own)."""
        t = self.neurons()
        t = t[t.dimension == (dimension or self.dimension)]
        return t.reindex(t.direct_effect.abs().sort_values(ascending=False, kind="stable").index).head(k)

    def summary(self, k: int = 5) -> str:
        """A short text: the direct path's share of the measured shift, the top-``k`` neurons, the band table."""
        own = self.shares[self.shares.dimension == self.dimension].iloc[0]
        pole = self.cell.rsplit(":", 1)[1]
        lines = [f"{self.cell} at dose {self.dose:.4g} ({self.meta.get('variant')}, scope {self.meta.get('scope')}; "
                 f"toward {pole}, the intended shift of the + log-odds is {'positive' if pole == '+' else 'negative'})",
                 f"measured shift of {self.dimension} (mean log-odds, {int(own.n_items)} items): {own.measured_shift:+.4g}",
                 f"direct path of the edited neurons: {own.direct_shift:+.4g} linear ({own.direct_exact:+.4g} exact), "
                 f"{_share(own.direct_share)} of the measured shift; boosted {own.direct_boost:+.4g}, "
                 f"clamped {own.direct_clamp:+.4g}",
                 f"\ntop {k} neurons by |direct effect| on {self.dimension} (summed over its items):"]  # fmt: skip
        top = self.top_neurons(k)
        lines += [f"  L{r.layer}.N{r.neuron:<6d} {r.role:6s} direct {r.direct_effect:+.4g}  (mean activation change "
                  f"{r.mean_delta:+.3g}, unit effect {r.unit_effect:+.3g})" for r in top.itertuples()]  # fmt: skip
        b = self.bands[self.bands.dimension == self.dimension]
        lines.append(f"\nlayer bands (the edit restricted to each, same dose), shift of {self.dimension}:")
        lines += [f"  {r.band:12s} {r.n_boost:6d} boosted {r.n_clamp:6d} clamped   shift {r.shift:+.4g}" for r in b.itertuples()]
        return "\n".join(lines)

    def to_html(self) -> str:
        """A self-contained page: the summary, the share per dimension, the top neurons, the bands, a
        figure of the direct effect per layer beside the band shifts, and the firing-token views."""
        from vlens.viz import figure_to_data_uri

        fmt = lambda df: df.to_html(index=False, classes="table", float_format=lambda v: f"{v:.4g}")  # noqa: E731
        top = self.top_neurons(20)
        body = [f"<h1>Why {html.escape(self.cell)} moves the way it does</h1>",
                f"<pre>{html.escape(self.summary())}</pre>",
                "<h2>Direct path against the measured shift</h2><p>Mean change of each item's log-odds of the + option, "
                "per measured dimension: measured by vlens' evaluation of the edit, and the direct path of the edited "
                "neurons (their activation change times W_out, through the final norm with its scale frozen at the "
                "unedited run, and the unembedding; linear: the log-softmax normaliser linearised, exact: not).</p>",
                fmt(self.shares), f"<h2>Top neurons by |direct effect| on {html.escape(self.dimension)}</h2>", fmt(top),
                "<h2>Layer bands</h2><p>The edit restricted to one band of layers at a time, at the same dose.</p>",
                fmt(self.bands), f'<img src="{figure_to_data_uri(self._figure())}" style="max-width:100%">']  # fmt: skip
        if self.views:
            body += ["<h2>Where the top neurons fire</h2><p>The ValueInsight prompts of each pole on which each "
                     "neuron fires most, tokens coloured by its activation.</p>", self.views]  # fmt: skip
        body.append(f"<details><summary>Settings</summary><pre>{html.escape(json.dumps(self.meta, indent=1, default=str))}"
                    "</pre></details>")  # fmt: skip
        from vlens.report import html_page

        return html_page(f"vlens explain: {self.cell}", "\n".join(body))

    def _figure(self) -> Any:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 3.4), layout="constrained")
        ax, bx = fig.subplots(1, 2)
        t = self.neurons()
        t = t[t.dimension == self.dimension]
        n_layers = int(self.meta.get("n_layers", int(t.layer.max()) + 1))
        for role, color, offset in (("boost", "tab:blue", -0.2), ("clamp", "tab:orange", 0.2)):  # side by side
            per = t[t.role.str.startswith(role)].groupby("layer").direct_effect.sum().reindex(range(n_layers), fill_value=0.0)
            ax.bar(per.index + offset, per.values, width=0.4, color=color, label=role)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel="layer", ylabel="direct effect (sum over items)", title=f"direct effect per layer on {self.dimension}")
        ax.legend(fontsize=8)
        b = self.bands[self.bands.dimension == self.dimension]
        bx.bar(range(len(b)), b["shift"], color=["grey"] + ["tab:green"] * (len(b) - 1))
        bx.set_xticks(range(len(b)), b["band"], rotation=30, fontsize=8)
        bx.axhline(0, color="grey", lw=0.8)
        bx.set(ylabel="measured shift (mean log-odds)", title="edit restricted to a band of layers")
        return fig

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (HTML) and beside it ``<stem>_neurons.csv``, ``<stem>_shares.csv``, ``<stem>_bands.csv``."""
        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            raise ValueError(f"the explanation is written as HTML: give a file name ending in .html, got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        for name, df in (("neurons", self.neurons()), ("shares", self.shares), ("bands", self.bands)):
            atomic_write(path.with_name(f"{path.stem}_{name}.csv"), lambda tmp, df=df: df.to_csv(tmp, index=False))
        return atomic_write_text(path, self.to_html())


def _share(value: float) -> str:
    return "n/a (no measured shift)" if not np.isfinite(value) else f"{100 * value:.0f}%"


def _shares(direct: DirectEffects, ids: list[str], x: np.ndarray) -> pd.DataFrame:
    """Per measured dimension: the measured mean shift (``x[1] - x[0]``), the direct path's (linear, and
    exact), its boosted and clamped parts, and the share of the measured shift it explains."""
    where = {k: i for i, k in enumerate(ids)}
    if set(where) != set(direct.items):
        raise ValueError("the evaluation and the direct effects read different dilemma items; pass the same items")
    order = [where[k] for k in direct.items]
    measured = x[1][order] - x[0][order]
    dims = np.asarray(direct.dimensions)
    roles = np.asarray(direct.roles)
    per = direct.per_item.numpy()
    rows = []
    for d in dict.fromkeys(direct.dimensions):
        sel = dims == d
        linear = per[sel].sum(-1).mean()
        m = measured[sel].mean()
        rows.append({"dimension": d, "n_items": int(sel.sum()), "measured_shift": float(m), "direct_shift": float(linear),
                     "direct_exact": float(direct.exact.numpy()[sel].mean()),
                     "direct_boost": float(per[sel][:, np.char.startswith(roles.astype(str), "boost")].sum(-1).mean()),
                     "direct_clamp": float(per[sel][:, roles == "clamp"].sum(-1).mean()),
                     "direct_share": float(linear / m) if m != 0 else float("nan")})  # fmt: skip
    return pd.DataFrame(rows)


def explain(
    model: Any, target: NeuronSet, opposing: NeuronSet | None, dose: float, dilemmas: Dilemmas | Sequence[dict[str, Any]],
    *, n_bands: int = 4, variant: Variant | str | None = None, keep_prob: float = 0.9, seed: int = 0, scope: str = "answer",
    batch_size: int = 16, prompts: Sequence[Any] | None = None, n_views: int = 5, views_k: int = 2,
) -> Explanation:  # fmt: skip
    """Explain the dosed edit toward ``target`` (clamping ``opposing``; :func:`vlens.interventions.dosed_edit`)
    on ``dilemmas``: the direct effect of every edited neuron (:func:`direct_effects`), set beside the shift
    vlens' own evaluation measures, and the shift of each layer band (:func:`band_shifts`); the whole edit,
    the bands and the unedited model run in one batched evaluation. With ``prompts`` (ValueInsight prompts)
    the ``n_views`` neurons with the largest |direct effect| on the set's own dimension are shown as
    firing-token views (:func:`firing_tokens`)."""
    info = model_info(model)
    shape = (info.n_layers, info.d_mlp)
    inst = _as_dilemmas(dilemmas, variant)
    if target.dimension not in {item["dimension"] for item in inst.items}:
        raise ValueError(f"no dilemma of {target.dimension} among the items: the set's own dimension must be measured")
    whole = dosed_edit(shape, target, opposing, dose, keep_prob=keep_prob, seed=seed)
    bands = layer_bands(info.n_layers, n_bands)
    edits = [Edit.identity(*shape, hook=whole.hook), whole, *band_edits(shape, target, opposing, dose, bands,
                                                                        keep_prob=keep_prob, seed=seed)]  # fmt: skip
    ids, x = _logodds(model, edits, inst, scope, max(batch_size, 2))
    direct = direct_effects(model, whole, inst, scope=scope, batch_size=batch_size)
    meta = direct.meta | {"cell": target.name, "dose": dose, "keep_prob": keep_prob, "seed": seed, "n_bands": n_bands,
                          "n_layers": info.n_layers, "model": info.name, "n_items": len(inst.items),
                          "items_sha256": sha256_json(inst.items)}  # fmt: skip
    out = Explanation(target.name, float(dose), direct, _shares(direct, ids, x), _band_table(bands, edits[1:], ids, x), meta=meta)
    if prompts is not None and n_views > 0:
        top = out.top_neurons(n_views)
        labels = [f"L{r.layer}.N{r.neuron} ({r.role}): direct effect {r.direct_effect:+.4g} on {out.dimension}"
                  for r in top.itertuples()]  # fmt: skip
        out.views = firing_tokens(model, list(zip(top.layer, top.neuron, strict=True)), prompts, labels=labels, k=views_k,
                                  hook=target.provenance.get("hook", "post"))  # fmt: skip
    return out


# ----------------------------------------------------------------------------- a run directory


def explain_run(
    run_dir: str | Path, cell: str, *, n_bands: int = 4, n_views: int = 5, max_pairs: int = 6, device: str | None = None,
    batch_size: int = 16, model: Any = None,
) -> Explanation:  # fmt: skip
    """:func:`explain` for the set ``cell`` (``"Self-Transcendence:+"``, or ``"st:+"``) of a run directory: its
    model, its located sets, its test dilemmas and instrument, and the dose validation calibrated for the
    cell at the run's first KL target (else its first hand-given gamma), with validation's keep
    probability, seed and scope. Views use ``max_pairs`` contrastive prompt pairs per located dimension."""
    import vlens
    from vlens.evaluate import Instruments
    from vlens.locate import LocateResult
    from vlens.pipeline import RunDirError, check_run_dir
    from vlens.validate import ValidationResult
    from vlens.values import dimension

    folder = Path(run_dir)
    cfg = check_run_dir(folder)["config"]
    if not (folder / "locate" / "locate.json").exists():
        raise RunDirError(f"{folder} has no locate results yet; run `vlens locate --out {folder}` first")
    if not (folder / "validation" / "validation.json").exists():
        raise RunDirError(f"{folder} has no validation yet (the dose to explain comes from it); run `vlens validate --out {folder}`")
    located = LocateResult.load(folder / "locate")
    name = _set_name(cell, list(located.neuron_sets), dimension)
    dim, pole = name.rsplit(":", 1)
    validation = ValidationResult.load(folder / "validation")
    vmeta = validation.meta
    dose, at = _validation_dose(validation, dim, pole)
    data = vlens.load_value_data(cfg.get("data_dir"))
    vc = vmeta.get("config", cfg)
    inst = Instruments.default(data, max_dilemmas=vc.get("max_dilemmas"), max_portrait=vc.get("max_portrait"),
                               max_neutral=vc.get("max_neutral"), max_questions=vc.get("max_questions"),
                               dilemma_variant=vmeta.get("dilemma_variant", cfg["instrument"]))  # fmt: skip
    if vmeta.get("instruments_sha256") and sha256_json(inst.items()) != vmeta["instruments_sha256"]:
        raise RunDirError(f"the dilemmas rebuilt from {folder / 'run.json'} differ from those validation measured (the data "
                          "changed since); explain needs the same items, so rerun validate")  # fmt: skip
    model = model if model is not None else vlens.load_model(cfg["model"], device=device)
    prompts = None
    if n_views > 0:
        prompts = vlens.build_prompts(data, model, dimensions=located.dimensions, max_pairs=max_pairs,
                                      template=cfg["template"], seed=cfg["seed"])  # fmt: skip
    other = f"{dim}:{'-' if pole == '+' else '+'}"
    out = explain(model, located[name], located.neuron_sets.get(other), dose, inst.dilemmas, n_bands=n_bands,
                  variant=inst.dilemma_variant, keep_prob=vmeta.get("keep_prob", 0.9), seed=vmeta.get("seed", cfg["seed"]),
                  scope=vmeta.get("scope", "answer"), batch_size=batch_size, prompts=prompts, n_views=n_views)  # fmt: skip
    out.meta |= {"run_dir": str(folder), "dose_from": at}
    return out


def _set_name(cell: str, available: list[str], dimension: Any) -> str:
    """``"st:+"`` -> ``"Self-Transcendence:+"``, or one line naming the sets there are."""
    valid = ", ".join(available)
    dim, sep, pole = str(cell).strip().rpartition(":")
    try:
        name = f"{dimension(dim).name}:{pole}" if sep else ""
    except ValueError:
        name = ""
    if name not in available:
        raise ValueError(f"no neuron set {cell!r} in this run; valid sets: {valid}")
    return name


def _validation_dose(validation: Any, dim: str, pole: str) -> tuple[float, str]:
    """The value edit's dose at the first KL target (else the first hand-given gamma), and where it came from."""
    targets, gammas = validation.meta.get("kl_targets") or [], validation.meta.get("gammas") or []
    cal = validation.calibration
    if targets and len(cal):
        rows = cal[(cal.source == "value") & (cal.steered == dim) & (cal.direction.astype(str) == pole)
                   & np.isclose(cal.target_kl.astype(float), float(targets[0]))]  # fmt: skip
        if len(rows):
            return float(rows.dose.iloc[0]), f"calibrated dose at KL target {targets[0]:g} (kl {float(rows.kl.iloc[0]):.4g})"
    if gammas:
        return float(gammas[0]), f"hand-given gamma {gammas[0]:g} (no calibrated dose for {dim}:{pole})"
    raise ValueError(f"validation recorded no dose for {dim}:{pole} (no KL target calibrated it, no gamma given); "
                     "rerun validate with --kl-targets or --gammas")  # fmt: skip

