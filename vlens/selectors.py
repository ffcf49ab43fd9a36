"""Neuron selectors on the same footing: the paper's delta against other attribution baselines.

A *selector* turns statistics (or, for the probe and attribution patching, the model and
data) into a :class:`~vlens.neurons.NeuronSet` of exactly ``k`` neurons for one dimension
and pole. Every set carries the same fields whatever made it: its own ``scores``, the
activation probability and the directed activation-probability difference ``delta`` of
each neuron from the statistics (the paper's edit formula needs both), and the
statistics' provenance (:func:`vlens.neurons.provenance_of`). The selectors:

- ``delta``: the paper's ``P(a > 0 | pole) - P(a > 0 | other pole)``;
- ``mean_diff``, ``cohens_d``: the same ranking rule on other scores of the same statistics;
- ``lape``: language-activation-probability entropy (Tang et al. 2024) over the two poles;
- ``probe``: a sparse (L1) logistic probe on per-prompt pooled activations;
- ``attribution``: attribution patching of the forced-choice orientation metric;
- ``random``: layer-matched to a reference set (or uniform without one).

:data:`SELECTORS` maps each name to its function, so a new selector is one function and
one entry. :func:`compare` builds the ``+`` and ``-`` sets of every selector, dimension and
size and validates all of them in one batched evaluation, with the same edit (the paper's,
toward ``+`` and toward ``-``), the same instruments and the same size-matched random
controls; :func:`compare_figures` draws the result.

Every selector ranks the neurons of ``stats.layers`` and takes the top ``k``. Where a
method proper ranks fewer than ``k`` neurons (LAPE's activity filter, the probe's zero
weights), the set is filled from a documented fallback ranking and ``params["n_fallback"]``
says how many neurons came from it, so the size is always exactly ``k``.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import einops
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vlens._io import sha256_json, vlens_version, write_json
from vlens.activations import activation_fn, check_layers, plan_batches, resolve_hook, tokenize_prompts
from vlens.data.prompts import Prompt
from vlens.evaluate import Instruments, build_sequences, evaluate_edits, metric_rows
from vlens.interventions import Edit, _check_set, value_edit
from vlens.locate import LocateResult
from vlens.models import model_info, pad, pad_id, position_ids
from vlens.neurons import NeuronSet, Selection, directed_score, provenance_of, select
from vlens.scores import pole_entropy
from vlens.stats import NeuronStats, class_label
from vlens.validate import random_like
from vlens.values import POLES, check_pole
from vlens.values import dimension as dimension_of

DEFAULT_SIZES = (0.001, 0.005, 0.01, 0.02)
TABLE_COLUMNS = ["selector", "source", "dimension", "direction", "size", "gamma", "seed", "metric", "measured", "value"]
EDIT_POINT = "blocks.{layer}.mlp.hook_post"  # where value_edit acts, so where attribution differentiates


# ----------------------------------------------------------------------------- context and cost


@dataclass
class Cost:
    """What a selector spent: wall time and model passes (statistics collection not counted)."""

    wall_s: float = 0.0
    forward_passes: int = 0
    backward_passes: int = 0

    def to_dict(self) -> dict[str, float | int]:
        return {"wall_s": self.wall_s, "forward_passes": self.forward_passes, "backward_passes": self.backward_passes}


@dataclass
class SelectorContext:
    """Everything a selector may use, and a cache so the + and - sets and every size share one computation.

    ``prompts``: the contrastive prompts for the probe (default: rebuilt from the shipped
    data with the settings recorded in ``stats.meta``). ``dilemmas``: the forced-choice
    items attribution patching differentiates (keep them apart from the evaluation items).
    """

    stats: NeuronStats
    model: Any = None
    prompts: Sequence[Prompt] | None = None
    dilemmas: Sequence[dict[str, Any]] | None = None
    seed: int = 0
    batch_size: int = 8
    probe_C: float = 1.0
    probe_scope: str = "question"
    lape_filter_rate: float = 0.95
    cache: dict[Any, Any] = field(default_factory=dict)
    costs: dict[str, Cost] = field(default_factory=dict)
    active: str = "selector"  # the selector running now: its model passes are counted under this name

    def cost(self, name: str) -> Cost:
        return self.costs.setdefault(name, Cost())

    def count(self, *, forward: int = 0, backward: int = 0) -> None:
        cost = self.cost(self.active)
        cost.forward_passes += forward
        cost.backward_passes += backward

    def need_model(self, selector: str) -> Any:
        if self.model is None:
            raise ValueError(f"the {selector!r} selector runs the model: pass model=...")
        return self.model


Selector = Callable[..., NeuronSet]
"""``fn(ctx, dimension, pole, k, reference=None) -> NeuronSet`` of exactly ``k`` neurons.
``reference`` is a set of the same dimension, pole and size that a selector may match
(only ``random`` uses it)."""


# ----------------------------------------------------------------------------- shared helpers


def _rank(keys: Sequence[Tensor]) -> Tensor:
    """Flat indices sorted by ``keys`` descending, the first key most significant; ties by position."""
    order = torch.arange(keys[0].numel(), device=keys[0].device)
    for key in reversed(keys):
        order = order[torch.sort(key.flatten()[order], descending=True, stable=True).indices]
    return order


def _n_layers(stats: NeuronStats) -> int:
    return int(stats.meta.get("model", {}).get("n_layers", max(stats.layers) + 1))


def _make_set(
    stats: NeuronStats, dimension: str, pole: str, flat: Tensor, scores: Tensor, method: str, params: dict[str, Any]
) -> NeuronSet:
    """A NeuronSet from flat indices into ``[len(stats.layers), d_mlp]``, with act_prob, p95, delta and provenance."""
    flat = flat.cpu()
    pos, neuron = flat // stats.d_mlp, flat % stats.d_mlp
    target = stats.class_index(class_label(dimension, pole))
    pick = lambda t: t.cpu()[pos, neuron]  # noqa: E731
    return NeuronSet(
        dimension, pole, torch.tensor(stats.layers)[pos], neuron, scores.cpu().double(), _n_layers(stats), stats.d_mlp,
        act_prob=pick(stats.activation_probability()[target]), p95=pick(stats.quantile(0.95)[target]) if stats.hist is not None else None,
        delta=pick(directed_score(stats, dimension, pole, "delta")), method=method, params=params,
        provenance=provenance_of(stats),
    )  # fmt: skip


def _top_exact(
    stats: NeuronStats, dimension: str, pole: str, k: int, *, primary: Tensor, tier: Tensor, value: Tensor,
    score: Tensor, method: str, params: dict[str, Any],
) -> NeuronSet:  # fmt: skip
    """The top ``k`` by (``tier``, ``value``, directed delta), descending; ``primary`` marks the neurons
    the method proper ranks (the highest tier), the rest are its fallback."""
    n = tier.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the neurons of the statistics' layers), got {k}")
    delta = directed_score(stats, dimension, pole, "delta")
    order = _rank([tier.double(), value.double(), delta.double()])[:k]
    n_primary = int(primary.sum())
    n_fallback = int((~primary.flatten()[order]).sum())
    if n_fallback:
        warnings.warn(
            f"{method} ranks only {n_primary} neurons for {dimension}:{pole}; {n_fallback} of the {k} come from its "
            f"fallback ranking (see vlens.selectors.{method}_selector)",
            stacklevel=4,
        )
    params = {"k": k, **params, "n_primary": n_primary, "n_fallback": n_fallback}
    return _make_set(stats, dimension, pole, order, score.flatten()[order], method, params)


def _derive_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF


# ----------------------------------------------------------------------------- score selectors


def _by_score(method: str) -> Selector:
    def selector(
        ctx: SelectorContext, dimension: str, pole: str, k: int, reference: NeuronSet | None = None
    ) -> NeuronSet:
        n = len(ctx.stats.layers) * ctx.stats.d_mlp
        if not 1 <= k <= n:
            raise ValueError(f"k must be in 1..{n} (the neurons of the statistics' layers), got {k}")
        return select(ctx.stats, dimension, pole, Selection("top_k", k=k, threshold=None, score=method))

    selector.__name__ = f"{method}_selector"
    selector.__doc__ = f"The top ``k`` neurons by the directed ``{method}`` score (vlens.neurons.select)."
    return selector


delta_selector = _by_score("delta")
mean_diff_selector = _by_score("mean_diff")
cohens_d_selector = _by_score("cohens_d")


# ----------------------------------------------------------------------------- LAPE


@dataclass
class LapeScores:
    entropy: Float[Tensor, "layer neuron"]  # over the two poles' normalised activation probabilities
    eligible: Bool[Tensor, "layer neuron"]  # passes the activity filter
    larger: Float[Tensor, "layer neuron"]  # +1 where P+ > P-, -1 where P- > P+, 0 on ties
    threshold: float


def lape_scores(stats: NeuronStats, dimension: str, *, filter_rate: float = 0.95) -> LapeScores:
    """LAPE over the two poles of ``dimension``, as in Tang et al.'s released code.

    - ``p~_k = P_k / (P_+ + P_-)``, ``H = -sum_k p~_k log p~_k`` (:func:`vlens.scores.pole_entropy`).
    - Activity filter: all ``2 x n_neurons`` activation probabilities (both poles) are
      flattened and the threshold is their ``round(filter_rate * 2 n)``-th smallest value
      (``kthvalue``, 1-based); a neuron is eligible if its probability in *either* pole is
      strictly above the threshold. (This is the original code's rule; it is close to, but
      not the same as, "max probability above the 95th percentile of the max probabilities".)
    - The neuron's pole is the one with the larger probability (ties belong to neither).
      The original's later "activation bar" (same quantile) is then always met by the
      larger pole, so it adds nothing for two poles.
    """
    if not 0 < filter_rate < 1:
        raise ValueError(f"filter_rate must be in (0, 1), got {filter_rate}")
    p = stats.activation_probability()
    plus, minus = p[stats.class_index(class_label(dimension, "+"))], p[stats.class_index(class_label(dimension, "-"))]
    flat = torch.cat([plus.flatten(), minus.flatten()])
    kth = min(max(1, round(len(flat) * filter_rate)), len(flat))
    threshold = flat.kthvalue(kth).values.item()
    eligible = (plus > threshold) | (minus > threshold)
    return LapeScores(pole_entropy(stats, dimension), eligible, torch.sign(plus - minus), threshold)


def lape_selector(
    ctx: SelectorContext, dimension: str, pole: str, k: int, reference: NeuronSet | None = None
) -> NeuronSet:
    """LAPE (see :func:`lape_scores`): the eligible neurons of ``pole``, lowest entropy first.

    Fallback beyond the eligible ones (``params["n_fallback"]``): first the other neurons
    more active in ``pole``, lowest entropy first, then the rest by directed delta. Ties in
    entropy go to the larger directed delta. ``scores`` are ``-entropy``.
    """
    lape = lape_scores(ctx.stats, dimension, filter_rate=ctx.lape_filter_rate)
    mine = lape.larger == (1 if pole == "+" else -1)
    tier = torch.where(mine & lape.eligible, 2, torch.where(mine, 1, 0))
    delta = directed_score(ctx.stats, dimension, pole, "delta")
    value = torch.where(mine, -lape.entropy, delta)
    return _top_exact(ctx.stats, dimension, pole, k, primary=tier == 2, tier=tier, value=value, score=-lape.entropy, method="lape",
                      params={"filter_rate": ctx.lape_filter_rate, "threshold": lape.threshold})  # fmt: skip


# ----------------------------------------------------------------------------- sparse probe


def pooled_features(
    model: Any,
    prompts: Sequence[Prompt],
    *,
    scope: str = "question",
    hook: str = "post",
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
) -> tuple[Float[Tensor, "prompt layer neuron"], int]:
    """Per prompt, the mean activation of every neuron over the tokens of ``scope``; and the number of forward passes.

    Reuses :mod:`vlens.activations` (tokenization and token scopes, length-sorted batches,
    padding with the attention mask, explicit position ids). Each hook reduces its layer to
    ``[batch, d_mlp]`` at once, so no per-token activations are kept.
    """
    if scope == "generated":
        raise ValueError("pooled_features pools prompt tokens: use scope 'question', 'all' or 'last'")
    if not prompts:
        raise ValueError("no prompts given")
    layers = check_layers(model, layers)
    rows = tokenize_prompts(model, prompts, scope)
    info = model_info(model)
    out = torch.zeros(len(rows), len(layers), info.d_mlp)
    device = torch.device(model.cfg.device)
    act = activation_fn(model, hook)
    box: dict[str, Tensor] = {}

    def make_hook(layer_pos: int) -> Callable:
        def pool_hook(tensor: Tensor, hook: Any) -> None:
            pooled = einops.einsum(act(tensor).float(), box["w"], "b p n, b p -> b n")
            out[box["rows"], layer_pos] = pooled.cpu()

        return pool_hook

    fwd_hooks = [(resolve_hook(model, hook, layer), make_hook(i)) for i, layer in enumerate(layers)]
    batches = plan_batches(rows, batch_size)
    with torch.inference_mode(), model.hooks(fwd_hooks=fwd_hooks):
        for batch in batches:
            batch_rows = [rows[i] for i in batch]
            tokens, mask = pad([r.ids for r in batch_rows], padding_side="right", value=pad_id(model))
            sel = torch.zeros(tokens.shape, dtype=torch.float32)
            for i, r in enumerate(batch_rows):
                sel[i, : len(r.select)] = torch.tensor(r.select, dtype=torch.float32)
            box["w"] = (sel / sel.sum(1, keepdim=True).clamp(min=1)).to(device)
            box["rows"] = torch.tensor(batch)
            model(tokens.to(device), attention_mask=mask.to(device), position_ids=position_ids(mask).to(device),
                  stop_at_layer=layers[-1] + 1)  # fmt: skip
    return out, len(batches)


@dataclass
class ProbeScores:
    coef: Float[Tensor, "layer neuron"]  # weights on standardised features (+ pole = class 1)
    importance: Float[Tensor, "layer neuron"]  # |w| * std of the raw feature (= |coef|)
    univariate: Float[Tensor, "layer neuron"]  # standardised mean difference of the pooled features, + minus -
    n_nonzero: int


def probe_scores(
    features: Float[Tensor, "prompt layer neuron"], is_plus: Bool[Tensor, " prompt"], *, C: float = 1.0, seed: int = 0
) -> ProbeScores:
    """An L1 logistic regression (liblinear, fixed ``C`` and seed) of ``+`` versus ``-`` on standardised features.

    With ``w`` the weight on a raw feature, the importance is ``|w| * std`` (the weight on
    the standardised feature); its sign says which pole the neuron points to.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    n_prompts, n_layers, d_mlp = features.shape
    y = is_plus.long().numpy()
    if len(set(y.tolist())) != 2:
        raise ValueError("the probe needs prompts of both poles")
    x = einops.rearrange(features, "p l n -> p (l n)").double().numpy()
    xs = StandardScaler().fit_transform(x)
    clf = LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", random_state=seed, max_iter=1000).fit(xs, y)
    coef = torch.from_numpy(clf.coef_[0]).reshape(n_layers, d_mlp)
    f = features.double()
    plus, minus = f[is_plus], f[~is_plus]
    pooled_var = (plus.var(0, unbiased=True) * (len(plus) - 1) + minus.var(0, unbiased=True) * (len(minus) - 1)) / max(
        n_prompts - 2, 1
    )
    sd = pooled_var.sqrt()
    diff = plus.mean(0) - minus.mean(0)
    univariate = torch.where(sd > 0, diff / sd.clamp(min=1e-300), torch.zeros_like(diff))
    return ProbeScores(coef, coef.abs(), univariate, int((coef != 0).sum()))


def _probe_prompts(ctx: SelectorContext) -> list[Prompt]:
    if ctx.prompts is not None:
        return list(ctx.prompts)
    if "prompts" in ctx.cache:
        return ctx.cache["prompts"]
    from vlens.data import build_prompts, load_value_data

    meta = ctx.stats.meta
    data = load_value_data()
    if meta.get("dataset_sha256") != data.sha256:
        raise ValueError("these statistics were not collected on the shipped ValueInsight data: pass the prompts "
                         "they were collected on (prompts=...) for the probe")  # fmt: skip
    dims = list(dict.fromkeys(c.rsplit(":", 1)[0] for c in ctx.stats.classes))
    ctx.cache["prompts"] = build_prompts(
        data, ctx.model, split=meta.get("split", "search"), dimensions=dims, template=meta.get("template", "auto"),
        pairs_per_question=meta.get("pairs_per_question", 7), max_pairs=meta.get("max_pairs"), seed=meta.get("seed", 0),
    )  # fmt: skip
    return ctx.cache["prompts"]


def probe_selector(
    ctx: SelectorContext, dimension: str, pole: str, k: int, reference: NeuronSet | None = None
) -> NeuronSet:
    """Sparse probe: the neurons whose L1-probe weight points to ``pole``, largest importance first.

    Features are per-prompt means over ``ctx.probe_scope`` tokens of the statistics' hook
    family (:func:`pooled_features`), on the statistics' layers, for the prompts of
    ``dimension``. An L1 probe keeps at most about as many non-zero weights as there are
    prompts, so the set is filled (``params["n_fallback"]``) with the neurons whose pooled
    activation best separates the poles on its own (directed standardised mean difference).
    ``scores`` are the signed importance (``|w| * std``, negative for the other pole).
    """
    model = ctx.need_model("probe")
    key = ("probe", dimension)
    if key not in ctx.cache:
        prompts = [p for p in _probe_prompts(ctx) if p.dimension == dimension]
        if not prompts:
            raise ValueError(f"no probe prompts for {dimension}")
        feats, n_fwd = pooled_features(model, prompts, scope=ctx.probe_scope, hook=ctx.stats.meta.get("hook", "post"),
                                       layers=ctx.stats.layers, batch_size=ctx.batch_size)  # fmt: skip
        ctx.count(forward=n_fwd)
        is_plus = torch.tensor([p.pole == "+" for p in prompts])
        ctx.cache[key] = (probe_scores(feats, is_plus, C=ctx.probe_C, seed=ctx.seed), len(prompts))
    scores, n_prompts = ctx.cache[key]
    sign = 1.0 if pole == "+" else -1.0
    directed = sign * scores.coef
    tier = (directed > 0).long()
    value = torch.where(directed > 0, scores.importance, sign * scores.univariate)
    return _top_exact(ctx.stats, dimension, pole, k, primary=tier == 1, tier=tier, value=value,
                      score=torch.sign(directed) * scores.importance,
                      method="probe", params={"C": ctx.probe_C, "scope": ctx.probe_scope, "n_prompts": n_prompts,
                                              "n_nonzero": scores.n_nonzero, "seed": ctx.seed})  # fmt: skip


# ----------------------------------------------------------------------------- attribution patching


@dataclass
class AttributionScores:
    attribution: Float[Tensor, "layer neuron"]  # (mean+ - mean-) * dM/da summed over positions
    gradient: Float[Tensor, "layer neuron"]  # dM/da summed over all positions of all sequences
    metric: float  # M of the unedited model
    n_batches: int
    n_items: int


def dilemma_metric_rows(
    model: Any, dilemmas: Sequence[dict[str, Any]]
) -> tuple[list[list[int]], list[int], list[float]]:
    """The forced-choice sequences of ``dilemmas`` as vlens.evaluate builds them (prefix + suffix), where
    scoring starts in each, and each sequence's weight in ``M``.

    ``M = mean over items and both option orders of (mean log-prob of the + option's tokens
    - mean log-prob of the - option's tokens)``, so a sequence's weight is
    ``+-1 / (2 n_items n_option_tokens)`` on the sum of its option tokens' log-probs.
    """
    seqs = build_sequences(model, Instruments(dilemmas=list(dilemmas)))
    n_pairs = 2 * len(dilemmas)
    ids = [s.ids for s in seqs]
    splits = [s.split for s in seqs]
    weights = [(1.0 if s.key[2] == "plus" else -1.0) / (n_pairs * (len(s.ids) - s.split)) for s in seqs]
    return ids, splits, weights


def _next_token_logprobs(model: Any, hidden: Tensor) -> Tensor:
    hf = model.original_model
    logits = hf.get_output_embeddings()(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.log_softmax(-1)


def attribution_scores(
    model: Any, stats: NeuronStats, dimension: str, dilemmas: Sequence[dict[str, Any]], *, batch_size: int = 8
) -> AttributionScores:
    """Attribution patching of the forced-choice metric ``M`` of ``dimension`` (see :func:`dilemma_metric_rows`).

    For every neuron: ``(mean activation in + - mean activation in -) * sum over positions of
    dM/da``, with ``a`` read at ``blocks.{l}.mlp.hook_post`` (where the edit acts) and the
    means from ``stats``. One forward and one backward pass per batch of sequences gives
    the gradient for all neurons: each hook adds a zero tensor that requires grad, whose
    gradient is dM/da, without cutting the graph to later layers. (With statistics of the
    gate activation, ``hook="gate"``, the mean difference is the gate's: a proxy for the
    change at ``hook_post``.)
    """
    items = [d for d in dilemmas if d["dimension"] == dimension]
    if not items:
        raise ValueError(f"attribution patching needs forced-choice dilemmas of {dimension}")
    ids, splits, weights = dilemma_metric_rows(model, items)
    layers = check_layers(model, stats.layers)
    device = torch.device(model.cfg.device)
    grad = torch.zeros(len(layers), stats.d_mlp, dtype=torch.float64)
    leaves: dict[int, Tensor] = {}

    def make_hook(layer_pos: int) -> Callable:
        def leaf_hook(tensor: Tensor, hook: Any) -> Tensor:
            leaves[layer_pos] = torch.zeros_like(tensor, requires_grad=True)
            return tensor + leaves[layer_pos]

        return leaf_hook

    fwd_hooks = [(EDIT_POINT.format(layer=layer), make_hook(i)) for i, layer in enumerate(layers)]
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    metric = 0.0
    with torch.inference_mode(False), torch.enable_grad():
        for batch in batches:
            tokens, mask = pad([ids[i] for i in batch], padding_side="right", value=pad_id(model))
            leaves.clear()
            with model.hooks(fwd_hooks=fwd_hooks):
                hidden = model.original_model.base_model(
                    input_ids=tokens.to(device),
                    attention_mask=mask.to(device),
                    position_ids=position_ids(mask).to(device),
                ).last_hidden_state
            total = 0.0
            for r, i in enumerate(batch):
                lp = _next_token_logprobs(model, hidden[r, splits[i] - 1 : len(ids[i]) - 1])
                scored = torch.tensor(ids[i][splits[i] :], device=lp.device)
                total = total + weights[i] * lp.gather(-1, scored[:, None]).sum()
            grads = torch.autograd.grad(total, [leaves[p] for p in range(len(layers))])
            for p, g in enumerate(grads):
                grad[p] += einops.reduce(g.double(), "b pos n -> n", "sum").cpu()
            metric += total.item()
    mean = stats.mean().cpu()
    diff = mean[stats.class_index(class_label(dimension, "+"))] - mean[stats.class_index(class_label(dimension, "-"))]
    return AttributionScores(diff * grad, grad, metric, len(batches), len(items))


def _attribution_dilemmas(ctx: SelectorContext, dimension: str) -> list[dict[str, Any]]:
    if ctx.dilemmas is not None:
        return [d for d in ctx.dilemmas if d["dimension"] == dimension]
    from vlens.data import load_value_data

    return [d for d in load_value_data().dilemmas if d["dimension"] == dimension][-16:]


def attribution_selector(
    ctx: SelectorContext, dimension: str, pole: str, k: int, reference: NeuronSet | None = None
) -> NeuronSet:
    """Attribution patching (:func:`attribution_scores`): ``+`` takes the largest positive
    attributions, ``-`` the most negative. ``scores`` are the directed attributions."""
    model = ctx.need_model("attribution")
    key = ("attribution", dimension)
    if key not in ctx.cache:
        items = _attribution_dilemmas(ctx, dimension)
        att = attribution_scores(model, ctx.stats, dimension, items, batch_size=ctx.batch_size)
        ctx.count(forward=att.n_batches, backward=att.n_batches)
        ctx.cache[key] = (att, sorted(d["id"] for d in items if "id" in d))
    att, item_ids = ctx.cache[key]
    directed = att.attribution if pole == "+" else -att.attribution
    everyone = torch.ones_like(directed, dtype=torch.bool)
    return _top_exact(ctx.stats, dimension, pole, k, primary=everyone, tier=everyone.long(), value=directed,
                      score=directed, method="attribution", params={"dilemmas": item_ids, "metric": att.metric,
                                                                    "hook": EDIT_POINT})  # fmt: skip


# ----------------------------------------------------------------------------- random


def random_selector(
    ctx: SelectorContext, dimension: str, pole: str, k: int, reference: NeuronSet | None = None
) -> NeuronSet:
    """Random neurons: with ``reference``, the same count per layer (:func:`vlens.validate.random_like`);
    without, uniform over the statistics' layers. Seeded by ``ctx.seed``, dimension, pole and ``k``."""
    stats = ctx.stats
    seed = _derive_seed(ctx.seed, dimension, pole, k)
    if reference is not None:
        if len(reference) != k:
            raise ValueError(f"the reference set has {len(reference)} neurons, not k={k}")
        drawn = random_like(reference, seed)
        pos_of = {layer: i for i, layer in enumerate(stats.layers)}
        if any(int(layer) not in pos_of for layer in drawn.layers):
            raise ValueError("the reference set has neurons outside the statistics' layers")
        flat = (
            torch.tensor([pos_of[int(layer)] for layer in drawn.layers], dtype=torch.long) * stats.d_mlp + drawn.neurons
        )
        params = {"k": k, "seed": seed, "like": reference.method}
    else:
        n = len(stats.layers) * stats.d_mlp
        if not 1 <= k <= n:
            raise ValueError(f"k must be in 1..{n} (the neurons of the statistics' layers), got {k}")
        flat = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]
        params = {"k": k, "seed": seed, "like": None}
    return _make_set(stats, dimension, pole, flat, torch.zeros(k), "random", params)


SELECTORS: dict[str, Selector] = {
    "delta": delta_selector,
    "mean_diff": mean_diff_selector,
    "cohens_d": cohens_d_selector,
    "lape": lape_selector,
    "probe": probe_selector,
    "attribution": attribution_selector,
    "random": random_selector,
}


def select_neurons(
    method: str | Selector,
    stats: NeuronStats,
    dimension: str,
    pole: str,
    k: int,
    *,
    model: Any = None,
    prompts: Sequence[Prompt] | None = None,
    dilemmas: Sequence[dict[str, Any]] | None = None,
    reference: NeuronSet | None = None,
    seed: int = 0,
    context: SelectorContext | None = None,
) -> NeuronSet:
    """Exactly ``k`` neurons of ``pole`` in ``dimension`` by a selector of :data:`SELECTORS` (or a callable).

    Pass one ``context`` to several calls to share the model passes of the probe and of
    attribution patching between poles and sizes (and to read their cost in ``context.costs``).
    """
    if isinstance(method, str):
        if method not in SELECTORS:
            raise ValueError(f"unknown selector {method!r}; expected one of {', '.join(SELECTORS)}")
        name, fn = method, SELECTORS[method]
    else:
        name, fn = getattr(method, "__name__", "custom"), method
    ctx = context or SelectorContext(stats, model, prompts, dilemmas, seed)
    return _run(ctx, name, fn, dimension, pole, k, reference)


def _run(
    ctx: SelectorContext, name: str, fn: Selector, dimension: str, pole: str, k: int, reference: NeuronSet | None
) -> NeuronSet:
    """Run one selector, timing it and counting its passes under ``name``; check the size."""
    dim = dimension_of(dimension).name
    check_pole(pole)
    outer, ctx.active = ctx.active, name
    start = time.perf_counter()
    try:
        ns = fn(ctx, dim, pole, int(k), reference=reference)
    finally:
        ctx.cost(name).wall_s += time.perf_counter() - start
        ctx.active = outer
    if len(ns) != k:
        raise RuntimeError(f"selector {name!r} returned {len(ns)} neurons, not k={k}")
    return ns


# ----------------------------------------------------------------------------- compare


@dataclass
class CompareResult:
    """The tidy table of a comparison, the sets, their overlap and the selectors' cost."""

    table: pd.DataFrame
    overlap: pd.DataFrame  # dimension, pole, size, selector_a, selector_b, jaccard
    costs: pd.DataFrame  # selector, wall_s, forward_passes, backward_passes
    neuron_sets: dict[tuple[str, str, str, int], NeuronSet] = field(default_factory=dict)  # (selector, dim, pole, k)
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self, metric: str = "orientation") -> pd.DataFrame:
        return summarise_compare(self.table, metric=metric, each=self.meta.get("random_match") == "each",
                                 sets=self.neuron_sets)  # fmt: skip

    def save(self, folder: str | os.PathLike) -> Path:
        from vlens._io import atomic_write

        folder = Path(folder)
        for name, df in (("compare", self.table), ("compare_summary", self.summary()), ("overlap", self.overlap),
                         ("costs", self.costs)):  # fmt: skip
            atomic_write(folder / f"{name}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))
        for (sel, dim, pole, k), ns in self.neuron_sets.items():
            ns.save(folder / "sets" / f"{sel}_{dim}_{'plus' if pole == '+' else 'minus'}_{k}")
        write_json(folder / "compare.json", self.meta)
        return folder


def set_sizes(stats: NeuronStats, sizes: Sequence[float | int]) -> list[int]:
    """Neuron counts: a float in (0, 1) is a fraction of the statistics' neurons, an int >= 1 a count."""
    n = len(stats.layers) * stats.d_mlp
    out = []
    for s in sizes:
        if isinstance(s, float) and 0 < s < 1:
            k = max(1, round(s * n))
        elif float(s) == int(s) and 1 <= int(s) <= n:
            k = int(s)
        else:
            raise ValueError(f"size {s!r}: give a fraction in (0, 1) or a count in 1..{n}")
        if k not in out:
            out.append(k)
    return out


def compare(
    model: Any,
    stats: NeuronStats | LocateResult,
    *,
    dimensions: Sequence[str] | None = None,
    sizes: Sequence[float | int] = DEFAULT_SIZES,
    selectors: Sequence[str] | Mapping[str, Selector] | None = None,
    instruments: Instruments | None = None,
    gammas: Sequence[float] = (1.0,),
    n_random: int = 10,
    random_match: str | None = "delta",
    prompts: Sequence[Prompt] | None = None,
    dilemmas: Sequence[dict[str, Any]] | None = None,
    n_attribution_items: int = 16,
    probe_C: float = 1.0,
    keep_prob: float = 0.9,
    seed: int = 0,
    batch_size: int = 32,
    selector_batch_size: int = 8,
    progress: bool = True,
) -> CompareResult:
    """Compare selectors on the same footing (see the module docstring).

    For every selector, dimension and size (:func:`set_sizes`) the ``+`` and ``-`` sets are
    built, and the paper's edit (``value_edit``, mode ``paper``, toward ``+`` and toward
    ``-``: the target pole's set boosted, the other clamped) is evaluated at every gamma,
    together with ``n_random`` random edits per dimension, direction, size and gamma, all
    in one :func:`~vlens.evaluate.evaluate_edits` call with the same Bernoulli seeds.
    Random controls and the ``random`` selector are layer-matched to the sets of
    ``random_match`` (a selector name, default the paper's ``delta``; ``"each"``: every
    selector gets its own controls; ``None``: uniform), excluding those sets' neurons.
    ``prompts`` are for the probe; attribution patching differentiates ``dilemmas`` (default:
    up to ``n_attribution_items`` shipped dilemmas per dimension that are *not* among the
    evaluation items).
    """
    if isinstance(stats, LocateResult):
        stats = stats.stats
    info = model_info(model)
    shape = (info.n_layers, info.d_mlp)
    names = list(selectors) if selectors is not None else list(SELECTORS)
    funcs: dict[str, Selector] = dict(selectors) if isinstance(selectors, Mapping) else {}
    for name in names:
        if name not in funcs:
            if name not in SELECTORS:
                raise ValueError(f"unknown selector {name!r}; expected one of {', '.join(SELECTORS)}")
            funcs[name] = SELECTORS[name]
    if n_random < 2:
        raise ValueError(f"n_random must be at least 2 (a z-score needs a spread), got {n_random}")
    gammas = [float(g) for g in gammas]
    if not gammas or not all(math.isfinite(g) for g in gammas):
        raise ValueError(f"gammas must be finite numbers, got {gammas}")
    if random_match not in (None, "each") and random_match not in SELECTORS and random_match not in funcs:
        raise ValueError(f"random_match must be a selector name, 'each' or None, got {random_match!r}")
    all_dims = list(dict.fromkeys(c.rsplit(":", 1)[0] for c in stats.classes))
    dims = [dimension_of(d).name for d in dimensions] if dimensions else all_dims
    missing = [d for d in dims if d not in all_dims]
    if missing:
        raise ValueError(f"no statistics for {missing} (have: {', '.join(all_dims)})")
    ks = set_sizes(stats, sizes)
    instruments = instruments or Instruments.default(max_dilemmas=20, max_portrait=38, max_neutral=8)
    if dilemmas is None and "attribution" in funcs:
        from vlens.data import load_value_data

        used = {d.get("id") for d in instruments.dilemmas}
        dilemmas = [d for dim in dims for d in [x for x in load_value_data().dilemmas
                    if x["dimension"] == dim and x.get("id") not in used][:n_attribution_items]]  # fmt: skip
    if dilemmas is not None:
        shared = {d.get("id") for d in dilemmas} & {d.get("id") for d in instruments.dilemmas} - {None}
        if shared:
            warnings.warn(f"{len(shared)} attribution dilemmas are also evaluation items: the comparison favours "
                          "attribution patching", stacklevel=2)  # fmt: skip
    ctx = SelectorContext(stats, model, prompts, dilemmas, seed, selector_batch_size, probe_C)

    # 1. the sets: reference selector first (the random ones match it), random last
    ref_name = random_match if random_match not in (None, "each") else None
    sets: dict[tuple[str, str, str, int], NeuronSet] = {}

    def get(name: str, dim: str, pole: str, k: int) -> NeuronSet:
        if (name, dim, pole, k) not in sets:
            fn = funcs.get(name) or SELECTORS[name]
            reference = get(ref_name, dim, pole, k) if name == "random" and ref_name else None
            sets[(name, dim, pole, k)] = _run(ctx, name, fn, dim, pole, k, reference)
        return sets[(name, dim, pole, k)]

    for name in sorted(names, key=lambda n: (n != ref_name, n == "random")):
        for dim in dims:
            for k in ks:
                for pole in POLES:
                    get(name, dim, pole, k)
    for ns in sets.values():
        _check_set(shape, ns, model)

    # 2. the edits: unedited, every selector's paper edit, the random controls
    rows_meta: list[dict[str, Any]] = [{"selector": "none", "source": "none", "dimension": "", "direction": "", "size": 0,
                                        "gamma": None, "seed": None}]  # fmt: skip
    edits = [Edit.identity(*shape, label="unedited")]
    pools = names if random_match == "each" else [ref_name or "uniform"]
    for dim in dims:
        for k in ks:
            for direction in POLES:
                other = "-" if direction == "+" else "+"
                for gamma in gammas:
                    for name in names:
                        target, opposing = sets[(name, dim, direction, k)], sets[(name, dim, other, k)]
                        rows_meta.append({"selector": name, "source": "selector", "dimension": dim, "direction": direction,
                                          "size": k, "gamma": gamma, "seed": None})  # fmt: skip
                        edits.append(
                            value_edit(shape, target, opposing, gamma, mode="paper", keep_prob=keep_prob, seed=seed)
                        )
                    for pool in pools:
                        for r in range(n_random):
                            rs = seed * 100_003 + r
                            rt, ro = _random_pair(stats, sets, pool, dim, direction, k, rs)
                            rows_meta.append({"selector": pool, "source": "random", "dimension": dim, "direction": direction,
                                              "size": k, "gamma": gamma, "seed": r})  # fmt: skip
                            edits.append(value_edit(shape, rt, ro, gamma, mode="paper", keep_prob=keep_prob, seed=rs))
    start = time.perf_counter()
    metrics = evaluate_edits(model, edits, instruments, batch_size=batch_size, progress=progress)
    eval_s = time.perf_counter() - start

    rows = []
    for base, m in zip(rows_meta, metrics, strict=True):
        rows += metric_rows(base, m)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)

    overlap = pd.DataFrame(
        [{"dimension": dim, "pole": pole, "size": k, "selector_a": a, "selector_b": b,
          "jaccard": sets[(a, dim, pole, k)].jaccard(sets[(b, dim, pole, k)])}
         for dim in dims for pole in POLES for k in ks for a in names for b in names]
    )  # fmt: skip
    costs = pd.DataFrame([{"selector": name} | ctx.cost(name).to_dict() for name in names])
    meta = {
        "model": info.to_dict(), "vlens_version": vlens_version(), "provenance": provenance_of(stats), "dimensions": dims,
        "sizes": ks, "size_fractions": [k / (len(stats.layers) * stats.d_mlp) for k in ks], "selectors": names,
        "gammas": gammas, "n_random": n_random, "random_match": random_match, "keep_prob": keep_prob, "seed": seed,
        "probe_C": probe_C, "n_conditions": len(edits), "evaluation_wall_s": eval_s,
        "instrument_sizes": {k: len(v) for k, v in vars(instruments).items()}, "instruments_sha256": sha256_json(vars(instruments)),
        "attribution_dilemmas": sorted(d.get("id", "") for d in dilemmas) if dilemmas is not None else None,
        "sets": {f"{s}|{d}|{p}|{k}": ns.params for (s, d, p, k), ns in sets.items() if s in names},
    }  # fmt: skip
    kept = {key: ns for key, ns in sets.items() if key[0] in names}
    return CompareResult(table, overlap, costs, kept, meta)


def _random_pair(
    stats: NeuronStats, sets: dict, pool: str, dim: str, direction: str, k: int, rs: int
) -> tuple[NeuronSet, NeuronSet]:
    """A random target and opposing set for one control, layer-matched to ``pool``'s sets (or uniform)."""
    other = "-" if direction == "+" else "+"
    if pool == "uniform":
        ctx = SelectorContext(stats, seed=rs)
        rt = random_selector(ctx, dim, direction, k)
        ro = random_selector(SelectorContext(stats, seed=rs + 50_000), dim, other, k)
        return rt, ro
    target, opposing = sets[(pool, dim, direction, k)], sets[(pool, dim, other, k)]
    value_mask = target.mask() | opposing.mask()
    rt = random_like(target, rs, stats=stats, exclude=value_mask)
    ro = random_like(opposing, rs + 50_000, stats=stats, exclude=value_mask | rt.mask())
    return rt, ro


def summarise_compare(
    table: pd.DataFrame, metric: str = "orientation", *, each: bool = False, sets: Mapping | None = None
) -> pd.DataFrame:
    """One row per (selector, dimension, direction, size, gamma).

    ``shift``: change of the steered dimension's ``metric`` from the unedited model, signed
    toward the steering direction; ``random_mean`` / ``random_sd`` / ``z`` / ``p`` (one-sided
    empirical) against the random edits of the same dimension, direction, size and gamma
    (those matched to this selector when ``each``); ``kl`` the capability cost beside the
    random edits' ``random_kl``; ``leakage`` the mean absolute shift of the other dimensions.
    With ``sets``, the mean directed delta of the target set and how many neurons came from
    a selector's fallback ranking.
    """
    base = table[table.source == "none"]
    ref = base[base.metric == metric].set_index("measured")["value"]
    out = []
    sel = table[table.source == "selector"]
    rnd_all = table[table.source == "random"]
    keys = ["selector", "dimension", "direction", "size", "gamma"]
    for (name, dim, direction, k, gamma), group in sel.groupby(keys, sort=False):
        sign = 1.0 if direction == "+" else -1.0
        rnd = rnd_all[(rnd_all.dimension == dim) & (rnd_all.direction == direction) & (rnd_all["size"] == k)
                      & (rnd_all.gamma == gamma) & ((rnd_all.selector == name) if each else True)]  # fmt: skip
        rshift = sign * (rnd[(rnd.metric == metric) & (rnd.measured == dim)]["value"] - ref.get(dim, float("nan")))
        rkl = rnd[rnd.metric == "kl"]["value"]
        m = group[group.metric == metric].set_index("measured")["value"]
        if dim not in m:
            continue
        shift = sign * (m[dim] - ref[dim])
        others = [d for d in m.index if d != dim and d in ref]
        kl = group[group.metric == "kl"]["value"]
        mean, sd = (
            (float(rshift.mean()), float(rshift.std(ddof=1))) if len(rshift) >= 2 else (float("nan"), float("nan"))
        )
        row = {"selector": name, "dimension": dim, "direction": direction, "size": k, "gamma": gamma, "metric": metric,
               "baseline": ref[dim], "edited": m[dim], "shift": shift, "random_mean": mean, "random_sd": sd,
               "z": (shift - mean) / sd if sd > 0 else float("nan"),
               "p": (1 + int((rshift >= shift).sum())) / (1 + len(rshift)) if len(rshift) else float("nan"),
               "kl": float(kl.iloc[0]) if len(kl) else float("nan"),
               "random_kl": float(rkl.mean()) if len(rkl) else float("nan"), "n_random": len(rshift),
               "leakage": float(sum(abs(m[d] - ref[d]) for d in others) / len(others)) if others else float("nan")}  # fmt: skip
        if sets is not None and (name, dim, direction, k) in sets:
            ns = sets[(name, dim, direction, k)]
            row["target_delta"] = float(ns.delta.mean()) if ns.delta is not None and len(ns) else float("nan")
            row["n_fallback"] = int(ns.params.get("n_fallback", 0))
        out.append(row)
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- figures


def compare_figures(result: CompareResult, metric: str = "orientation") -> dict[str, Any]:
    """Matplotlib Figures (no pyplot state): ``shift_by_size`` (shift per neuron budget, each
    selector, random mean +- sd in grey), ``shift_vs_kl`` (the Pareto view: shift against KL,
    random edits as grey crosses) and ``overlap`` (mean Jaccard between selectors per size)."""
    from matplotlib.figure import Figure

    s = result.summary(metric)
    names = result.meta.get("selectors") or sorted(s.selector.unique())
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}
    panels = [(d, g) for d in s.dimension.unique() for g in sorted(s.gamma.unique())]
    figs: dict[str, Any] = {}

    fig = Figure(figsize=(10, 3.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for row, (dim, gamma) in enumerate(panels):
        for col, direction in enumerate(POLES):
            ax = axes[row][col]
            part = s[(s.dimension == dim) & (s.gamma == gamma) & (s.direction == direction)].sort_values("size")
            ref = part.drop_duplicates("size")
            ax.fill_between(ref["size"], ref.random_mean - ref.random_sd, ref.random_mean + ref.random_sd, color="0.85",
                            label="random (mean +- sd)")  # fmt: skip
            for name in names:
                p = part[part.selector == name]
                ax.plot(p["size"], p["shift"], marker="o", color=colors[name], label=name)
            ax.axhline(0, color="0.5", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("neurons per pole")
            ax.set_ylabel(f"{metric} shift toward {direction}")
            ax.set_title(f"{dim}, steer {direction}, gamma {gamma:g}")
    axes[0][0].legend(fontsize=7)
    figs["shift_by_size"] = fig

    dims = list(s.dimension.unique())
    fig = Figure(figsize=(5 * len(dims), 4), layout="constrained")
    axes = fig.subplots(1, len(dims), squeeze=False)[0]
    t = result.table
    base = t[(t.source == "none") & (t.metric == metric)].set_index("measured")["value"]
    for ax, dim in zip(axes, dims, strict=True):
        rnd = t[(t.source == "random") & (t.dimension == dim)]
        key = ["direction", "size", "gamma", "seed", "selector"]
        r_m = rnd[(rnd.metric == metric) & (rnd.measured == dim)].set_index(key)["value"]
        r_kl = rnd[rnd.metric == "kl"].set_index(key)["value"]
        sign = r_m.index.get_level_values("direction").map({"+": 1.0, "-": -1.0}).to_numpy()
        ax.scatter(
            r_kl.reindex(r_m.index), sign * (r_m - base.get(dim, float("nan"))), marker="x", color="0.6", label="random"
        )
        for name in names:
            for direction, marker in (("+", "o"), ("-", "v")):
                p = s[(s.dimension == dim) & (s.selector == name) & (s.direction == direction)]
                ax.scatter(p.kl, p["shift"], marker=marker, color=colors[name], label=f"{name} {direction}")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("KL to the unedited model (nats/token)")
        ax.set_ylabel(f"{metric} shift toward the steering direction")
        ax.set_title(dim)
    axes[0].legend(fontsize=6, ncol=2)
    figs["shift_vs_kl"] = fig

    ov = result.overlap
    ks = sorted(ov["size"].unique())
    fig = Figure(figsize=(4.2 * len(ks), 4.4), layout="constrained")
    axes = fig.subplots(1, len(ks), squeeze=False)[0]
    for ax, k in zip(axes, ks, strict=True):
        mat = (
            ov[ov["size"] == k]
            .groupby(["selector_a", "selector_b"])["jaccard"]
            .mean()
            .unstack()
            .reindex(index=names, columns=names)
        )
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
    "DEFAULT_SIZES",
    "SELECTORS",
    "TABLE_COLUMNS",
    "AttributionScores",
    "CompareResult",
    "Cost",
    "LapeScores",
    "ProbeScores",
    "Selector",
    "SelectorContext",
    "attribution_scores",
    "compare",
    "compare_figures",
    "dilemma_metric_rows",
    "lape_scores",
    "pooled_features",
    "probe_scores",
    "select_neurons",
    "set_sizes",
    "summarise_compare",
]
