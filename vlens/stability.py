"""How much of a neuron set is signal: split-half stability, the circumplex overlap and the layer profile.

All of it is read off :class:`~vlens.stats.NeuronStats` and :class:`~vlens.neurons.NeuronSet`; no model.

**Chance overlap of two sets.** Draw a set A of ``k1`` and a set B of ``k2`` neurons out of ``N``,
independently and uniformly. Fix A; B is ``k2`` draws without replacement from ``N`` neurons of which ``k1``
are "in A", so the overlap ``X = |A & B|`` is hypergeometric::

    P(X = x) = C(k1, x) C(N - k1, k2 - x) / C(N, k2),   E[X] = k1 k2 / N.

The Jaccard index is a function of X alone, ``J = X / (k1 + k2 - X)``, so its chance level is the exact sum
``E[J] = sum_x P(X = x) x / (k1 + k2 - x)`` (:func:`expected_jaccard`). It is *not* ``E[X] / (k1 + k2 - E[X])``:
J is convex in X, so that plug-in value lies below the true mean. The one-sided p of an observed overlap
is the hypergeometric tail ``P(X >= x)`` (:func:`overlap_test`, ``scipy.stats.hypergeom``).
The null draws uniformly over the whole model; sets ranked per layer, or a model whose layers differ in
size, have a somewhat higher chance overlap than this.

**Split-half stability** (:func:`split_half`): statistics located on two disjoint halves of the prompt
pairs (:func:`split_pairs`: split by question, so no question is in both halves), the same selection
rule on each half, then per dimension and pole the Jaccard of the two sets against its chance level and
the hypergeometric p, and per dimension the Spearman rank correlation of the score over every neuron.
Each half has half the data, so the full set is more stable than the halves show (a lower bound).

**The circumplex check** (:func:`circumplex_overlap`): opposing dimensions are mirror contrasts
(Openness to Change ``+`` says what Conservation ``-`` says), so a set that carries values rather than
wording should overlap its mirror set far above chance. Pairs: :data:`MIRROR_PAIRS`.

**The layer profile** (:func:`layer_profile`): neurons per layer as one compact string.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from scipy import stats as sps
from torch import Tensor

from vlens.data.prompts import Prompt
from vlens.neurons import NeuronSet, Selection, directed_score, select
from vlens.stats import NeuronStats
from vlens.values import DIMENSIONS, POLES

# (set, its mirror): each dimension's pole and the opposite dimension's other pole say the same thing.
MIRROR_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (f"{d}:{p}", f"{dim.opposite}:{'-' if p == '+' else '+'}")
    for i, (d, dim) in enumerate(DIMENSIONS.items()) if list(DIMENSIONS).index(dim.opposite) > i
    for p in POLES
)  # fmt: skip


def _sizes(k1: int, k2: int, n: int) -> tuple[int, int, int]:
    for name, v in (("k1", k1), ("k2", k2), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {v!r}")
    if max(k1, k2) > n:
        raise ValueError(f"set sizes k1={k1}, k2={k2} cannot exceed the number of neurons n={n}")
    return int(k1), int(k2), int(n)


def expected_overlap(k1: int, k2: int, n: int) -> float:
    """``E|A & B| = k1 k2 / n`` for independent uniform sets of sizes ``k1``, ``k2`` out of ``n``."""
    k1, k2, n = _sizes(k1, k2, n)
    return k1 * k2 / n if n else 0.0


def expected_jaccard(k1: int, k2: int, n: int) -> float:
    """The exact chance Jaccard of independent uniform sets of sizes ``k1``, ``k2`` out of ``n`` (module docstring).

    Two empty sets have Jaccard 1 (as :meth:`NeuronSet.jaccard`)."""
    k1, k2, n = _sizes(k1, k2, n)
    if k1 + k2 == 0:
        return 1.0
    x = np.arange(max(0, k1 + k2 - n), min(k1, k2) + 1)
    return float((sps.hypergeom.pmf(x, n, k1, k2) * x / (k1 + k2 - x)).sum())


@dataclass(frozen=True)
class Overlap:
    """Two sets' observed overlap against chance: ``overlap`` shared neurons (``expected`` by chance, ``ratio``
    = overlap / expected), ``jaccard`` (``jaccard_chance`` by chance), and ``p`` = P(X >= overlap) under the
    hypergeometric null."""

    size_a: int
    size_b: int
    n: int
    overlap: int
    expected: float
    ratio: float
    jaccard: float
    jaccard_chance: float
    p: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def overlap_test(a: Bool[Tensor, "layer neuron"], b: Bool[Tensor, "layer neuron"]) -> Overlap:
    """The overlap of two neuron masks of one model against two random sets of the same sizes."""
    if a.shape != b.shape:
        raise ValueError(f"the two masks must cover the same neurons, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    n, k1, k2, x = a.numel(), int(a.sum()), int(b.sum()), int((a & b).sum())
    union = k1 + k2 - x
    expected = expected_overlap(k1, k2, n)
    return Overlap(k1, k2, n, x, expected, x / expected if expected else math.nan, x / union if union else 1.0,
                   expected_jaccard(k1, k2, n), float(sps.hypergeom.sf(x - 1, n, k1, k2)))  # fmt: skip


def spearman(a: Float[Tensor, "..."], b: Float[Tensor, "..."]) -> float:
    """Spearman's rank correlation of two score tensors over all their entries (ties get mean ranks);
    non-finite entries (an entropy score's -inf) are left out pairwise; nan if either side is constant."""
    if a.shape != b.shape:
        raise ValueError(f"the two score tensors must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    x, y = a.detach().double().cpu().flatten().numpy(), b.detach().double().cpu().flatten().numpy()
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(sps.spearmanr(x, y).statistic)


def split_pairs(prompts: Sequence[Prompt], *, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """Two disjoint halves of contrastive prompts (:class:`~vlens.data.Prompt`), whole pairs each.

    Per dimension, the questions are shuffled (seeded) and dealt alternately to the halves, with each
    pair going where its question goes, so no question and no pair is in both halves. A dimension with
    a single question is split by pair instead. Raises if a dimension has fewer than two pairs.
    """
    groups: dict[str, dict[str, list[Prompt]]] = defaultdict(lambda: defaultdict(list))  # dimension -> key -> prompts
    questions: dict[str, set[str]] = defaultdict(set)
    for p in prompts:
        questions[p.dimension].add(p.question_id)
    for p in prompts:
        key = p.question_id if len(questions[p.dimension]) > 1 else p.pair_id
        groups[p.dimension][key].append(p)
    halves: tuple[list[Prompt], list[Prompt]] = ([], [])
    for dim, by_key in groups.items():
        if len(by_key) < 2:
            raise ValueError(f"{dim} has only one prompt pair; split-half stability needs at least two (raise max_pairs)")
        keys = sorted(by_key)
        random.Random(f"{seed}:{dim}:halves").shuffle(keys)
        for i, key in enumerate(keys):
            halves[i % 2].extend(by_key[key])
    return halves


def split_half(a: NeuronStats, b: NeuronStats, selection: Selection | str) -> pd.DataFrame:
    """Stability of ``selection``'s sets between the statistics of two disjoint halves ``a`` and ``b``.

    One row per dimension and pole: ``dimension``, ``pole``, the :class:`Overlap` of the two halves' sets
    (``size_a``, ``size_b``, ``n``, ``overlap``, ``expected``, ``ratio``, ``jaccard``, ``jaccard_chance``,
    ``p``) and ``spearman``, the rank correlation of the selection's score over every neuron between
    the halves (one number per dimension: the ``-`` score is the ``+`` score negated).
    """
    selection = Selection.parse(selection) if isinstance(selection, str) else selection
    if a.layers != b.layers or a.d_mlp != b.d_mlp:
        raise ValueError("the two halves' statistics cover different neurons (layers or d_mlp differ); locate both the same way")
    if missing := sorted(set(a.dimensions) ^ set(b.dimensions)):
        raise ValueError(f"dimension(s) {', '.join(missing)} were located in one half only")
    rows = []
    for dim in a.dimensions:
        rho = spearman(directed_score(a, dim, "+", selection.score), directed_score(b, dim, "+", selection.score))
        for pole in POLES:
            sa, sb = select(a, dim, pole, selection), select(b, dim, pole, selection)
            rows.append({"dimension": dim, "pole": pole} | overlap_test(_mask(sa, a), _mask(sb, b)).to_dict()
                        | {"spearman": rho})  # fmt: skip
    return pd.DataFrame(rows)


def _mask(ns: NeuronSet, stats: NeuronStats) -> Bool[Tensor, "layer neuron"]:
    """The set's mask over the located layers only (the neurons a selection could have picked)."""
    return ns.mask()[torch.tensor(stats.layers)]


def circumplex_overlap(neuron_sets: dict[str, NeuronSet], *, layers: Sequence[int] | None = None) -> pd.DataFrame:
    """Each set of :data:`MIRROR_PAIRS` against its mirror: one row per pair present in ``neuron_sets``
    (``set``, ``mirror`` and the :class:`Overlap` columns). ``layers``: the located layers (default: all),
    whose neurons make the ``n`` of the chance level."""
    rows = []
    for name, mirror in MIRROR_PAIRS:
        if name in neuron_sets and mirror in neuron_sets:
            a, b = neuron_sets[name], neuron_sets[mirror]
            keep = torch.tensor(list(layers)) if layers is not None else torch.arange(a.n_layers)
            rows.append({"set": name, "mirror": mirror} | overlap_test(a.mask()[keep], b.mask()[keep]).to_dict())
    return pd.DataFrame(rows, columns=["set", "mirror", *Overlap.__dataclass_fields__])


def layer_profile(ns: NeuronSet) -> str:
    """Neurons per layer, layer 0 first, separated by spaces (``"0 3 12 5"``): one CSV cell per set."""
    return " ".join(str(int(c)) for c in ns.counts_per_layer())


__all__ = ["MIRROR_PAIRS", "Overlap", "circumplex_overlap", "expected_jaccard", "expected_overlap", "layer_profile",
           "overlap_test", "spearman", "split_half", "split_pairs"]  # fmt: skip
