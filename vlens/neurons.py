"""NeuronSet and the rules that select value neurons from scores."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vlens._io import load_tensors, save_tensors
from vlens.scores import SCORES, score
from vlens.stats import NeuronStats, class_label
from vlens.values import check_pole

RULES = ("paper", "top_k", "top_frac", "threshold")


@dataclass(frozen=True)
class Selection:
    """How to pick neurons from a score.

    ``paper``: the top ``k`` (2,000) of the whole model plus every further neuron with a
    directed score >= ``threshold`` (0.1). ``top_k`` / ``top_frac``: exactly that many
    (per layer with ``per_layer``). ``threshold``: every neuron at or above it.
    Scores are *directed*: for the ``-`` pole, ``-score`` (for entropy: ``-entropy`` among
    the neurons more active in the pole, so the most pole-specific come first).
    """

    rule: str = "paper"
    k: int | None = 2000
    frac: float | None = None
    threshold: float | None = 0.1
    per_layer: bool = False
    score: str = "delta"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown selection rule {self.rule!r}; expected one of {', '.join(RULES)}")
        if self.rule in {"paper", "top_k"} and (self.k is None or self.k < 1):
            raise ValueError(f"selection rule {self.rule!r} needs k >= 1, got {self.k}")
        if self.rule == "top_frac" and not (self.frac is not None and 0 < self.frac <= 1):
            raise ValueError(f"selection rule 'top_frac' needs 0 < frac <= 1, got {self.frac}")
        if self.rule in {"paper", "threshold"} and (self.threshold is None or not math.isfinite(self.threshold)):
            raise ValueError(f"selection rule {self.rule!r} needs a finite threshold, got {self.threshold}")
        if self.score not in SCORES:
            raise ValueError(f"unknown selection score {self.score!r}; expected one of {', '.join(SCORES)}")

    @classmethod
    def paper(cls) -> Selection:
        return cls("paper", k=2000, threshold=0.1)

    @classmethod
    def parse(cls, text: str) -> Selection:
        """From a CLI string: ``paper``, ``top_k:300``, ``top_frac:0.01``, ``threshold:0.05``,
        each optionally followed by ``,per_layer`` and/or ``,score=cohens_d``."""
        head, *opts = [t.strip() for t in text.split(",")]
        rule, _, value = head.partition(":")
        kwargs: dict[str, Any] = {"rule": rule, "k": None, "threshold": None}
        try:
            if rule == "paper":
                if value:
                    raise ValueError(f"the paper's rule takes no value (it is top 2,000 plus delta >= 0.1), got {value!r}")
                kwargs.update(k=2000, threshold=0.1)
            elif rule == "top_k":
                kwargs["k"] = int(value)
            elif rule == "top_frac":
                kwargs["frac"] = float(value)
            elif rule == "threshold":
                kwargs["threshold"] = float(value)
        except ValueError as err:
            raise ValueError(f"selection {text!r}: {rule} needs a number after ':' ({err})") from err
        for opt in opts:
            if opt == "per_layer":
                kwargs["per_layer"] = True
            elif opt.startswith("score="):
                kwargs["score"] = opt.removeprefix("score=")
            else:
                raise ValueError(f"selection {text!r}: unknown option {opt!r} (per_layer, score=NAME)")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NeuronSet:
    """Neurons selected for one pole of one dimension, with their scores and provenance."""

    dimension: str
    pole: str
    layers: Int[Tensor, " n"]
    neurons: Int[Tensor, " n"]
    scores: Float[Tensor, " n"]
    n_layers: int
    d_mlp: int
    act_prob: Float[Tensor, " n"] | None = None  # P(a > 0) in the target pole (the edit's v)
    p95: Float[Tensor, " n"] | None = None  # 95th percentile activation in the target pole
    delta: Float[Tensor, " n"] | None = None  # the directed activation-probability difference
    method: str = "delta"
    params: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_pole(self.pole)
        self.layers, self.neurons = self.layers.long().cpu(), self.neurons.long().cpu()
        self.check()

    def check(self) -> NeuronSet:
        """Refuse indices out of range; every user of the indices calls it, since they may be edited
        after construction (a negative index would otherwise silently wrap around)."""
        for name, values, size in (("layers", self.layers, self.n_layers), ("neuron indices", self.neurons, self.d_mlp)):
            if len(values) and (values.min() < 0 or values.max() >= size):
                raise ValueError(f"NeuronSet {self.dimension}:{self.pole} {name} must be in 0..{size - 1}, got {int(values.min())}..{int(values.max())}")
        if len(self.layers) != len(self.neurons):
            raise ValueError(f"NeuronSet {self.dimension}:{self.pole} has {len(self.layers)} layers but {len(self.neurons)} neuron indices")
        return self

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def name(self) -> str:
        return class_label(self.dimension, self.pole)

    def mask(self) -> Bool[Tensor, "layer neuron"]:
        self.check()
        m = torch.zeros(self.n_layers, self.d_mlp, dtype=torch.bool)
        m[self.layers, self.neurons] = True
        return m

    def counts_per_layer(self) -> Int[Tensor, " layer"]:
        self.check()
        return torch.bincount(self.layers, minlength=self.n_layers)

    def jaccard(self, other: NeuronSet) -> float:
        a, b = self.mask(), other.mask()
        union = (a | b).sum().item()
        return (a & b).sum().item() / union if union else 1.0

    def tensors(self) -> dict[str, Tensor]:
        out = {"layers": self.layers, "neurons": self.neurons, "scores": self.scores.double()}
        for name in ("act_prob", "p95", "delta"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).double()
        return out

    def save(self, path: str | os.PathLike) -> None:
        meta = {"dimension": self.dimension, "pole": self.pole, "n_layers": self.n_layers, "d_mlp": self.d_mlp,
                "size": len(self), "counts_per_layer": self.counts_per_layer().tolist(), "method": self.method,
                "params": self.params, "provenance": self.provenance}  # fmt: skip
        save_tensors(path, self.tensors(), meta, kind="NeuronSet")

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronSet:
        t, m = load_tensors(path, kind="NeuronSet")
        return cls(
            m["dimension"], m["pole"], t["layers"], t["neurons"], t["scores"], m["n_layers"], m["d_mlp"],
            t.get("act_prob"), t.get("p95"), t.get("delta"), m["method"], m["params"], m["provenance"],
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"NeuronSet({self.name}, {len(self)} neurons, method={self.method}, layers with most: {self._top_layers()})"

    def _top_layers(self) -> str:
        counts = self.counts_per_layer()
        top = counts.argsort(descending=True)[:3]
        return ", ".join(f"L{int(layer)}:{int(counts[layer])}" for layer in top if counts[layer] > 0)


def directed_score(stats: NeuronStats, dimension: str, pole: str, method: str = "delta") -> Float[Tensor, "layer neuron"]:
    """A score where larger means "more specific to ``pole``" (see :class:`Selection`)."""
    check_pole(pole)
    s = score(stats, dimension, method)
    if method == "entropy":
        delta = score(stats, dimension, "delta") * (1 if pole == "+" else -1)
        return torch.where(delta > 0, -s, torch.full_like(s, -torch.inf))
    return s if pole == "+" else -s


def _top(values: Float[Tensor, "layer neuron"], k: int, per_layer: bool) -> Bool[Tensor, "layer neuron"]:
    """Mask of the k largest values (per layer or over the whole model), ties broken by position."""
    n_layers, d_mlp = values.shape
    flat = values.reshape(n_layers, d_mlp) if per_layer else einops.rearrange(values, "l n -> 1 (l n)")
    k = min(k, flat.shape[1])
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return mask.reshape(n_layers, d_mlp)


def select_mask(values: Float[Tensor, "layer neuron"], selection: Selection) -> Bool[Tensor, "layer neuron"]:
    n_layers, d_mlp = values.shape
    if selection.rule == "top_k":
        return _top(values, selection.k, selection.per_layer)
    if selection.rule == "top_frac":
        k = max(1, round(selection.frac * (d_mlp if selection.per_layer else n_layers * d_mlp)))
        return _top(values, k, selection.per_layer)
    if selection.rule == "threshold":
        return values >= selection.threshold
    return _top(values, selection.k, selection.per_layer) | (values >= selection.threshold)  # paper


def select(
    stats: NeuronStats, dimension: str, pole: str, selection: Selection | str = "paper", *, provenance: dict | None = None
) -> NeuronSet:
    """Select the neurons of ``pole`` in ``dimension`` by ``selection`` (a :class:`Selection` or its string form)."""
    selection = Selection.parse(selection) if isinstance(selection, str) else selection
    total = len(stats.layers) * stats.d_mlp
    if selection.rule in {"paper", "top_k"} and selection.k >= total:
        import warnings

        warnings.warn(
            f"selection {selection.rule} with k={selection.k} takes every one of this model's {total} neurons; "
            "use a smaller top_k or top_frac (the paper's 2,000 was set for models with many more neurons)",
            stacklevel=2,
        )
    values = directed_score(stats, dimension, pole, selection.score)
    mask = select_mask(values, selection) & torch.isfinite(values)
    layer_idx, neuron_idx = mask.nonzero(as_tuple=True)
    order = torch.sort(values[layer_idx, neuron_idx], descending=True, stable=True).indices
    layer_idx, neuron_idx = layer_idx[order], neuron_idx[order]
    target = stats.class_index(class_label(dimension, pole))
    prob = stats.activation_probability()[target]
    delta = directed_score(stats, dimension, pole, "delta")
    p95 = stats.quantile(0.95)[target][layer_idx, neuron_idx] if stats.hist is not None else None
    stat_layers = torch.tensor(stats.layers)
    return NeuronSet(
        dimension, pole, stat_layers[layer_idx.cpu()], neuron_idx, values[layer_idx, neuron_idx],
        n_layers=int(stats.meta.get("model", {}).get("n_layers", max(stats.layers) + 1)), d_mlp=stats.d_mlp,
        act_prob=prob[layer_idx, neuron_idx], p95=p95, delta=delta[layer_idx, neuron_idx],
        method=selection.score, params=selection.to_dict() | {"largest_score": _largest(values)},
        provenance=dict(provenance or provenance_of(stats)),
    )  # fmt: skip


def _largest(values: Tensor) -> float | None:
    finite = values[torch.isfinite(values)]
    return float(finite.max()) if len(finite) else None


def provenance_of(stats: NeuronStats) -> dict[str, Any]:
    """The fields of a stats' metadata that every neuron set derived from it carries."""
    from vlens._io import vlens_version

    keys = ("model", "model_fingerprint", "hook", "hook_points", "scope", "dataset_sha256", "dataset_version", "template",
            "split", "max_pairs")  # fmt: skip
    return {k: stats.meta[k] for k in keys if k in stats.meta} | {"vlens_version": vlens_version()}


def random_like(
    ns: NeuronSet,
    seed: int,
    *,
    stats: NeuronStats | None = None,
    exclude: Bool[torch.Tensor, "layer neuron"] | None = None,
    match_frequency: bool = False,
    n_bins: int = 10,
) -> NeuronSet:
    """A random set with the same number of neurons in every layer as ``ns`` (seeded).

    ``exclude`` neurons are never drawn. With ``match_frequency`` the draw is also matched
    on activation-probability decile (in ``ns``'s pole). With ``stats`` the random neurons
    carry their own activation probability and delta, so the same edit formula applies.
    """
    n_layers, d_mlp = ns.n_layers, ns.d_mlp
    g = torch.Generator().manual_seed(int(seed))
    key = torch.rand(n_layers, d_mlp, generator=g, dtype=torch.float64)
    if exclude is not None:
        key = torch.where(exclude, torch.full_like(key, 2.0), key)  # excluded neurons rank last
    group = einops.repeat(torch.arange(n_layers), "l -> l n", n=d_mlp)
    n_groups = n_layers
    prob = _dense_pole(stats, ns, "prob") if stats is not None else None
    if match_frequency:
        if prob is None:
            raise ValueError("match_frequency needs the NeuronStats (stats=...)")
        decile = (prob * n_bins).long().clamp(max=n_bins - 1)
        group, n_groups = group * n_bins + decile, n_layers * n_bins
    need = torch.bincount(group[ns.layers, ns.neurons], minlength=n_groups)
    flat_group, flat_key = group.flatten(), key.flatten()
    order = torch.argsort(flat_group.double() * 4 + flat_key)  # by group, then random key
    sorted_group = flat_group[order]
    first = torch.searchsorted(sorted_group, torch.arange(n_groups))
    rank = torch.arange(len(order)) - first[sorted_group]
    chosen = order[rank < need[sorted_group]]
    available = torch.bincount(flat_group[flat_key < 2.0], minlength=n_groups)
    if (available < need).any():
        raise ValueError(f"not enough neurons outside the excluded ones to match {ns.name} per layer")
    layers, neurons = chosen // d_mlp, chosen % d_mlp
    delta = _dense_pole(stats, ns, "delta") if stats is not None else None
    return NeuronSet(
        ns.dimension, ns.pole, layers, neurons, torch.zeros(len(layers)), n_layers, d_mlp,
        act_prob=None if prob is None else prob[layers, neurons], delta=None if delta is None else delta[layers, neurons],
        method="random", params={"seed": int(seed), "match_frequency": match_frequency, "like": ns.name},
        provenance=dict(ns.provenance),
    )  # fmt: skip


def _dense_pole(stats: NeuronStats, ns: NeuronSet, what: str) -> torch.Tensor:
    out = torch.zeros(ns.n_layers, ns.d_mlp, dtype=torch.float64)
    if what == "prob":
        values = stats.activation_probability()[stats.class_index(class_label(ns.dimension, ns.pole))]
    else:
        values = directed_score(stats, ns.dimension, ns.pole, "delta")
    out[torch.tensor(stats.layers)] = values.cpu()
    return out
