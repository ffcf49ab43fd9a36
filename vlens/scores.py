"""Contrast scores of every neuron between the two poles of a dimension, from NeuronStats.

Every score is a ``[n_layers, d_mlp]`` tensor, computed in one vectorised expression over
all layers and neurons. Positive values favour the ``+`` pole, except for the entropy,
where low values mean pole-specific.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from vlens.stats import NeuronStats, class_label

SCORES = ("delta", "mean_diff", "cohens_d", "welch_t", "entropy")


def _poles(stats: NeuronStats, dimension: str) -> tuple[int, int]:
    return stats.class_index(class_label(dimension, "+")), stats.class_index(class_label(dimension, "-"))


def activation_probability_difference(stats: NeuronStats, dimension: str) -> Float[Tensor, "layer neuron"]:
    """The paper's score: ``delta = P(a > 0 | +) - P(a > 0 | -)``."""
    plus, minus = _poles(stats, dimension)
    p = stats.activation_probability()
    return p[plus] - p[minus]


def mean_difference(stats: NeuronStats, dimension: str) -> Float[Tensor, "layer neuron"]:
    plus, minus = _poles(stats, dimension)
    mu = stats.mean()
    return mu[plus] - mu[minus]


def cohens_d(stats: NeuronStats, dimension: str) -> Float[Tensor, "layer neuron"]:
    """Mean difference over the pooled standard deviation (0 where both poles are constant)."""
    plus, minus = _poles(stats, dimension)
    n_plus, n_minus = stats.tokens[plus], stats.tokens[minus]
    var = stats.variance()
    pooled = ((n_plus - 1) * var[plus] + (n_minus - 1) * var[minus]) / (n_plus + n_minus - 2).clamp(min=1)
    return _safe_ratio(mean_difference(stats, dimension), pooled.sqrt())


def welch_t(stats: NeuronStats, dimension: str) -> Float[Tensor, "layer neuron"]:
    """Welch's t statistic of the mean difference (tokens treated as independent samples)."""
    plus, minus = _poles(stats, dimension)
    var = stats.variance()
    se = (var[plus] / stats.tokens[plus] + var[minus] / stats.tokens[minus]).sqrt()
    return _safe_ratio(mean_difference(stats, dimension), se)


def pole_entropy(stats: NeuronStats, dimension: str) -> Float[Tensor, "layer neuron"]:
    """LAPE-style entropy of the activation probabilities normalised over the two poles.

    ``p~_k = p_k / (p_+ + p_-)``, ``H = -sum_k p~_k log p~_k``: 0 for a neuron active in one
    pole only, log 2 for one equally active in both (and for a never-active neuron).
    """
    plus, minus = _poles(stats, dimension)
    p = stats.activation_probability()[[plus, minus]]
    total = p.sum(0, keepdim=True)
    share = torch.where(total > 0, p / total.clamp(min=1e-300), torch.full_like(p, 0.5))
    return -(share * share.clamp(min=1e-300).log()).sum(0)


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


_FUNCTIONS = {
    "delta": activation_probability_difference,
    "mean_diff": mean_difference,
    "cohens_d": cohens_d,
    "welch_t": welch_t,
    "entropy": pole_entropy,
}


def score(stats: NeuronStats, dimension: str, method: str = "delta") -> Float[Tensor, "layer neuron"]:
    """One score by name (see :data:`SCORES`)."""
    if method not in _FUNCTIONS:
        raise ValueError(f"unknown score {method!r}; expected one of {', '.join(SCORES)}")
    return _FUNCTIONS[method](stats, dimension)


def all_scores(stats: NeuronStats, dimension: str) -> dict[str, Float[Tensor, "layer neuron"]]:
    return {name: fn(stats, dimension) for name, fn in _FUNCTIONS.items()}
