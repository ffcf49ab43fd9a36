"""LAPE (Tang et al. 2024): language-activation-probability entropy over the two poles of a dimension."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vlens.neurons import NeuronSet, directed_score
from vlens.scores import pole_entropy
from vlens.selectors.base import SelectorContext, _top_exact
from vlens.stats import NeuronStats, class_label


@dataclass(frozen=True)
class LapeOptions:
    filter_rate: float = 0.95  # the activity filter's quantile (see lape_scores)


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
    ctx: SelectorContext, dimension: str, pole: str, k: int, reference: NeuronSet | None = None, *,
    options: LapeOptions | None = None,
) -> NeuronSet:  # fmt: skip
    """LAPE (see :func:`lape_scores`): the eligible neurons of ``pole``, lowest entropy first.

    Fallback beyond the eligible ones (``params["n_fallback"]``): first the other neurons
    more active in ``pole``, lowest entropy first, then the rest by directed delta. Ties in
    entropy go to the larger directed delta. ``scores`` are ``-entropy``.
    """
    options = options or LapeOptions()
    lape = lape_scores(ctx.stats, dimension, filter_rate=options.filter_rate)
    mine = lape.larger == (1 if pole == "+" else -1)
    tier = torch.where(mine & lape.eligible, 2, torch.where(mine, 1, 0))
    value = torch.where(mine, -lape.entropy, directed_score(ctx.stats, dimension, pole, "delta"))
    return _top_exact(ctx.stats, dimension, pole, k, primary=tier == 2, tier=tier, value=value, score=-lape.entropy, method="lape",
                      params={"filter_rate": options.filter_rate, "threshold": lape.threshold})  # fmt: skip
