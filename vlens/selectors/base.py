"""The selector interface, the context every selector shares, and the helpers that turn a ranking into a set."""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vlens.data import Prompt, ValueData, load_value_data
from vlens.neurons import NeuronSet, directed_score, provenance_of, random_like
from vlens.stats import NeuronStats, class_label
from vlens.values import check_pole
from vlens.values import dimension as dimension_of

__all__ = ["Cost", "Selector", "SelectorContext", "random_like", "run_selector"]


@dataclass
class Cost:
    """What a selector spent: wall time and model passes (statistics collection not counted)."""

    wall_s: float = 0.0
    forward_passes: int = 0
    backward_passes: int = 0


@dataclass
class SelectorContext:
    """Everything the selectors share, and a cache so the + and - sets and every size share one computation.

    ``data``: the run's value data, where the probe's prompts and attribution's dilemmas come
    from (default: the shipped ValueInsight data). ``prompts``: the contrastive prompts the
    statistics were collected on (default: rebuilt from ``data`` with the settings in ``stats.meta``).
    """

    stats: NeuronStats
    model: Any = None
    data: ValueData | None = None
    prompts: Sequence[Prompt] | None = None
    seed: int = 0
    batch_size: int = 8
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

    def value_data(self) -> ValueData:
        if self.data is None:  # loaded only when a selector needs it: the score selectors never do
            self.data = load_value_data()
        return self.data


Selector = Callable[..., NeuronSet]
"""``fn(ctx, dimension, pole, k, reference=None) -> NeuronSet`` of exactly ``k`` neurons. ``reference`` is a
set of the same dimension, pole and size that a selector may match (only ``random`` uses it). A selector
with options takes them as ``options=`` (bind them with :func:`functools.partial`)."""


def run_selector(
    ctx: SelectorContext, name: str, fn: Selector, dimension: str, pole: str, k: int, reference: NeuronSet | None
) -> NeuronSet:
    """Run one selector, timing it and counting its passes under ``name``; check the size."""
    dim = dimension_of(dimension).name
    check_pole(pole)
    n = len(ctx.stats.layers) * ctx.stats.d_mlp
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the neurons of the statistics' layers), got {k}")
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


def _rank(keys: Sequence[Tensor]) -> Tensor:
    """Flat indices sorted by ``keys`` descending, the first key most significant; ties by position."""
    order = torch.arange(keys[0].numel(), device=keys[0].device)
    for key in reversed(keys):
        order = order[torch.sort(key.flatten()[order], descending=True, stable=True).indices]
    return order


def _make_set(
    stats: NeuronStats, dimension: str, pole: str, flat: Tensor, scores: Tensor, method: str, params: dict[str, Any]
) -> NeuronSet:
    """A NeuronSet from flat indices into ``[len(stats.layers), d_mlp]``, with act_prob, p95, delta and provenance."""
    flat = flat.cpu()
    pos, neuron = flat // stats.d_mlp, flat % stats.d_mlp
    target = stats.class_index(class_label(dimension, pole))
    pick = lambda t: t.cpu()[pos, neuron]  # noqa: E731
    return NeuronSet(
        dimension, pole, torch.tensor(stats.layers)[pos], neuron, scores.cpu().double(),
        int(stats.meta.get("model", {}).get("n_layers", max(stats.layers) + 1)), stats.d_mlp,
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
    delta = directed_score(stats, dimension, pole, "delta")
    order = _rank([tier.double(), value.double(), delta.double()])[:k]
    n_primary = int(primary.sum())
    n_fallback = int((~primary.flatten()[order]).sum())
    if n_fallback:
        warnings.warn(
            f"{method} ranks only {n_primary} neurons for {dimension}:{pole}; {n_fallback} of the {k} come from its "
            f"fallback ranking (see vlens.selectors.{method})",
            stacklevel=4,
        )
    params = {"k": k, **params, "n_primary": n_primary, "n_fallback": n_fallback}
    return _make_set(stats, dimension, pole, order, score.flatten()[order], method, params)


def _derive_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF
