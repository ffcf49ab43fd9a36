"""Random neurons: the null every selector is compared with."""

from __future__ import annotations

import torch

from vlens.neurons import NeuronSet, random_like
from vlens.selectors.base import SelectorContext, _derive_seed, _make_set


def random_selector(
    ctx: SelectorContext, dimension: str, pole: str, k: int, reference: NeuronSet | None = None
) -> NeuronSet:
    """Random neurons: with ``reference``, the same count per layer (:func:`vlens.neurons.random_like`);
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
        flat = torch.tensor([pos_of[int(layer)] for layer in drawn.layers], dtype=torch.long) * stats.d_mlp + drawn.neurons
    else:
        flat = torch.randperm(len(stats.layers) * stats.d_mlp, generator=torch.Generator().manual_seed(seed))[:k]
    params = {"k": k, "seed": seed, "like": reference.method if reference is not None else None}
    return _make_set(stats, dimension, pole, flat, torch.zeros(k), "random", params)
