"""Attribution patching: a first-order estimate of each neuron's effect on the forced-choice orientation."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from vlens.evaluate import Instruments, build_sequences
from vlens.neurons import NeuronSet
from vlens.runner import HOOK_POINTS, Batch, check_layers, forward, hook_name, logprobs
from vlens.selectors.base import SelectorContext, _top_exact
from vlens.stats import NeuronStats, class_label


@dataclass(frozen=True)
class AttributionOptions:
    dilemmas: Sequence[dict[str, Any]] | None = None  # the items to differentiate (default: from the run's data)
    n_items: int = 16  # per dimension, when taken from the data
    held_out: Sequence[dict[str, Any]] = ()  # the evaluation dilemmas: never taken from the data, a warning if given


@dataclass
class AttributionScores:
    attribution: Float[Tensor, "layer neuron"]  # (mean+ - mean-) * dM/da summed over positions
    gradient: Float[Tensor, "layer neuron"]  # dM/da summed over all positions of all sequences
    metric: float  # M of the unedited model
    n_batches: int
    n_items: int


def dilemma_metric_rows(model: Any, dilemmas: Sequence[dict[str, Any]]) -> tuple[list[list[int]], list[int], list[float]]:
    """The forced-choice sequences of ``dilemmas`` as vlens.evaluate builds them (prefix + suffix), where
    scoring starts in each, and each sequence's weight in ``M``.

    ``M = mean over items and both option orders of (mean log-prob of the + option's tokens
    - mean log-prob of the - option's tokens)``, so a sequence's weight is
    ``+-1 / (2 n_items n_option_tokens)`` on the sum of its option tokens' log-probs.
    """
    # M is defined on listed options (both orders, per-token means), whatever the validation's default reading
    seqs = build_sequences(model, Instruments(dilemmas=list(dilemmas), dilemma_variant="listed-mean"))
    weights = [(1.0 if s.key[-1] == "plus" else -1.0) / (2 * len(dilemmas) * (len(s.ids) - s.split)) for s in seqs]
    return [s.ids for s in seqs], [s.split for s in seqs], weights


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
    grad = torch.zeros(len(layers), stats.d_mlp, dtype=torch.float64)
    leaves: dict[int, Tensor] = {}

    def make_hook(layer_pos: int) -> Callable:
        def leaf_hook(tensor: Tensor, hook: Any) -> Tensor:
            leaves[layer_pos] = torch.zeros_like(tensor, requires_grad=True)
            return tensor + leaves[layer_pos]

        return leaf_hook

    fwd_hooks = [(hook_name("post", layer), make_hook(i)) for i, layer in enumerate(layers)]
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    metric = 0.0
    with torch.inference_mode(False), torch.enable_grad():
        for batch in batches:
            leaves.clear()
            hidden = forward(model, Batch.of(model, [ids[i] for i in batch]), hooks=fwd_hooks)
            total = 0.0
            for r, i in enumerate(batch):
                lp = logprobs(model, hidden[r, splits[i] - 1 : len(ids[i]) - 1])
                scored = torch.tensor(ids[i][splits[i] :], device=lp.device)
                total = total + weights[i] * lp.gather(-1, scored[:, None]).sum()
            grads = torch.autograd.grad(total, [leaves[p] for p in range(len(layers))])
            for p, g in enumerate(grads):
                grad[p] += einops.reduce(g.double(), "b pos n -> n", "sum").cpu()
            metric += total.item()
    mean = stats.mean().cpu()
    diff = mean[stats.class_index(class_label(dimension, "+"))] - mean[stats.class_index(class_label(dimension, "-"))]
    return AttributionScores(diff * grad, grad, metric, len(batches), len(items))


def _attribution_items(ctx: SelectorContext, dimension: str, options: AttributionOptions) -> list[dict[str, Any]]:
    """``options.dilemmas`` of ``dimension``, or the last ``n_items`` of the run's that are not held out;
    a warning when some are evaluation items too (the comparison would favour attribution patching)."""
    held_out = {d.get("id") for d in options.held_out} - {None}
    if options.dilemmas is not None:
        items = [d for d in options.dilemmas if d["dimension"] == dimension]
    else:
        items = [d for d in ctx.value_data().dilemmas if d["dimension"] == dimension and d["id"] not in held_out][-options.n_items :]
    if shared := held_out & {d.get("id") for d in items}:
        warnings.warn(f"{len(shared)} attribution dilemmas of {dimension} are also evaluation items: the comparison "
                      "favours attribution patching", stacklevel=5)  # fmt: skip
    return items


def attribution_selector(
    ctx: SelectorContext, dimension: str, pole: str, k: int, reference: NeuronSet | None = None, *,
    options: AttributionOptions | None = None,
) -> NeuronSet:  # fmt: skip
    """Attribution patching (:func:`attribution_scores`): ``+`` takes the largest positive
    attributions, ``-`` the most negative. ``scores`` are the directed attributions."""
    model = ctx.need_model("attribution")
    items = _attribution_items(ctx, dimension, options or AttributionOptions())
    key = ("attribution", dimension, tuple(d.get("id") for d in items))
    if key not in ctx.cache:
        att = attribution_scores(model, ctx.stats, dimension, items, batch_size=ctx.batch_size)
        ctx.count(forward=att.n_batches, backward=att.n_batches)
        ctx.cache[key] = (att, sorted(d["id"] for d in items if "id" in d))
    att, item_ids = ctx.cache[key]
    directed = att.attribution if pole == "+" else -att.attribution
    everyone = torch.ones_like(directed, dtype=torch.bool)
    return _top_exact(ctx.stats, dimension, pole, k, primary=everyone, tier=everyone.long(), value=directed,
                      score=directed, method="attribution", params={"dilemmas": item_ids, "metric": att.metric,
                                                                    "hook": HOOK_POINTS["post"]})  # fmt: skip
