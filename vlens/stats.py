"""NeuronStats: per-class streaming sufficient statistics of every neuron.

For each class (e.g. ``"Conservation:+"``), layer and neuron: the number of tokens seen,
how many of them had the neuron active (a > 0), the sum and the sum of squares of its
activation, and optionally a fixed-bin histogram for quantiles. All accumulate in float64,
so statistics of A merged with statistics of B equal the statistics of A and B together,
and every score (activation probability, means, variances, Cohen's d, ...) comes from one pass.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from vlens._io import load_tensors, save_tensors
from vlens.values import PoleKey


def class_label(dimension: str, pole: str) -> str:
    return str(PoleKey(dimension, pole))


@dataclass
class NeuronStats:
    """Sufficient statistics per class, layer and neuron.

    ``meta`` records what produced them: model provenance, hook, scope, dataset hash,
    prompt counts. Two stats objects merge only if their ``meta`` (minus counts) agree.
    """

    classes: list[str]
    layers: list[int]
    d_mlp: int
    tokens: Float[Tensor, " cls"]
    active: Float[Tensor, "cls layer neuron"]
    sum: Float[Tensor, "cls layer neuron"]
    sumsq: Float[Tensor, "cls layer neuron"]
    hist: Float[Tensor, "cls layer neuron bin"] | None = None
    hist_edges: Float[Tensor, " edge"] | None = None
    prompts: Float[Tensor, " cls"] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(
        cls,
        classes: list[str],
        layers: list[int],
        d_mlp: int,
        *,
        hist_edges: Tensor | None = None,
        device: torch.device | str = "cpu",
        meta: dict[str, Any] | None = None,
    ) -> NeuronStats:
        shape = (len(classes), len(layers), d_mlp)
        zeros = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
        hist = None
        if hist_edges is not None:
            hist_edges = hist_edges.to(torch.float64)
            hist = zeros(*shape, len(hist_edges) + 1)  # bins: (-inf, e0), [e0, e1), ..., [e_last, inf)
        return cls(
            list(classes), list(layers), d_mlp, zeros(len(classes)), zeros(*shape), zeros(*shape), zeros(*shape),
            hist, hist_edges, zeros(len(classes)), dict(meta or {}),
        )  # fmt: skip

    # ------------------------------------------------------------------ accumulation

    def add(
        self,
        layer_pos: int,
        acts: Float[Tensor, "batch pos neuron"],
        weights: Float[Tensor, "batch pos cls"],
    ) -> None:
        """Add one layer's activations; ``weights[b, p, c]`` is 1 where token (b, p) counts for class c."""
        if self.hist is not None:
            self._add_hist(layer_pos, acts.to(torch.float64), weights.to(torch.float64))
        # Only the tokens that count (the scope, no padding) are reduced: in float64, the
        # costliest part of a hook, so skipping the rest is most of locate's overhead.
        w = einops.rearrange(weights, "b p c -> (b p) c")
        counted = w.sum(-1) > 0
        w = w[counted].to(torch.float64)
        a = einops.rearrange(acts, "b p n -> (b p) n")[counted].to(torch.float64)
        self.active[:, layer_pos] += einops.einsum((a > 0).to(torch.float64), w, "t n, t c -> c n")
        self.sum[:, layer_pos] += einops.einsum(a, w, "t n, t c -> c n")
        self.sumsq[:, layer_pos] += einops.einsum(a * a, w, "t n, t c -> c n")

    def _add_hist(self, layer_pos: int, a: Tensor, w: Tensor) -> None:
        # Each row belongs to one class, so index (class, neuron, bin) per token and neuron and
        # count with one bincount, weighted by whether the token is selected.
        n_bins, n_cls, n = self.hist.shape[-1], w.shape[-1], a.shape[-1]
        bins = torch.bucketize(a.contiguous(), self.hist_edges.to(a.device), right=True)  # [b, p, n]
        cls = einops.rearrange(w.argmax(-1), "b p -> b p 1")
        flat = (cls * n + torch.arange(n, device=a.device)) * n_bins + bins
        weight = einops.repeat(w.sum(-1), "b p -> b p n", n=n)
        counts = torch.bincount(flat.reshape(-1), weights=weight.reshape(-1), minlength=n_cls * n * n_bins)
        self.hist[:, layer_pos] += counts.reshape(n_cls, n, n_bins)

    def add_token_counts(self, weights: Float[Tensor, "batch pos cls"], row_classes: Tensor | None = None) -> None:
        self.tokens += einops.reduce(weights.to(torch.float64), "b p c -> c", "sum")
        if row_classes is not None:
            self.prompts += torch.bincount(row_classes, minlength=len(self.classes)).to(self.prompts)

    # ------------------------------------------------------------------ combination

    def _compatible(self, other: NeuronStats) -> None:
        if (self.classes, self.layers, self.d_mlp) != (other.classes, other.layers, other.d_mlp):
            raise ValueError(
                "cannot merge statistics of different shape: "
                f"classes {self.classes} vs {other.classes}, layers {self.layers} vs {other.layers}, "
                f"d_mlp {self.d_mlp} vs {other.d_mlp}"
            )
        for key in ("model_fingerprint", "hook", "scope", "dataset_sha256", "dataset_version", "template", "split",
                    "max_pairs", "pairs_per_question", "seed"):
            if self.meta.get(key) != other.meta.get(key):
                raise ValueError(f"cannot merge statistics with different {key}: {self.meta.get(key)!r} vs {other.meta.get(key)!r}")
        if (self.hist is None) != (other.hist is None) or (
            self.hist_edges is not None and not torch.equal(self.hist_edges, other.hist_edges)
        ):
            raise ValueError("cannot merge statistics with different histogram bins")

    def merge(self, other: NeuronStats) -> NeuronStats:
        """Statistics of both inputs together (neither input is modified)."""
        self._compatible(other)
        add = lambda a, b: None if a is None else a + b.to(a.device)  # noqa: E731
        return NeuronStats(
            self.classes, self.layers, self.d_mlp, self.tokens + other.tokens.to(self.tokens.device),
            add(self.active, other.active), add(self.sum, other.sum), add(self.sumsq, other.sumsq),
            add(self.hist, other.hist), self.hist_edges, add(self.prompts, other.prompts), dict(self.meta),
        )  # fmt: skip

    __add__ = merge

    def to(self, device: torch.device | str) -> NeuronStats:
        """These statistics with every tensor on ``device`` (the tensors are copied only if they move)."""
        return dataclasses.replace(self, meta=dict(self.meta), **{k: v.to(device) for k, v in self.tensors().items()})

    # ------------------------------------------------------------------ derived quantities

    @property
    def hook(self) -> str:
        """The MLP activation these statistics read (``post`` or ``gate``); statistics saved before the gate
        reading existed read ``hook_post``."""
        return self.meta.get("hook", "post")

    @property
    def dimensions(self) -> list[str]:
        return list(dict.fromkeys(PoleKey.parse(c).dimension for c in self.classes))

    def class_index(self, label: str) -> int:
        if label not in self.classes:
            raise KeyError(f"no class {label!r} in these statistics (classes: {', '.join(self.classes)})")
        return self.classes.index(label)

    def _per_token(self, x: Tensor) -> Tensor:
        n = self.tokens
        if (n == 0).any():
            empty = [c for c, k in zip(self.classes, n.tolist(), strict=True) if k == 0]
            raise ValueError(f"no tokens were recorded for class(es) {empty}: check the data and the token scope")
        return x / einops.rearrange(n, "c -> c 1 1")

    def activation_probability(self) -> Float[Tensor, "cls layer neuron"]:
        """P(a > 0) over the recorded tokens."""
        return self._per_token(self.active)

    def mean(self) -> Float[Tensor, "cls layer neuron"]:
        return self._per_token(self.sum)

    def variance(self) -> Float[Tensor, "cls layer neuron"]:
        """Unbiased (n - 1) variance."""
        n = einops.rearrange(self.tokens, "c -> c 1 1")
        mean = self.mean()
        return ((self.sumsq - n * mean * mean) / (n - 1).clamp(min=1)).clamp(min=0)

    def quantile(self, q: float) -> Float[Tensor, "cls layer neuron"]:
        """Approximate quantile from the histogram (the upper edge of the bin where the CDF reaches q)."""
        if self.hist is None:
            raise ValueError("these statistics were collected without a histogram (pass hist_edges to collect one)")
        if not 0 < q < 1:
            raise ValueError(f"quantile q must be in (0, 1), got {q}")
        cdf = self.hist.cumsum(-1) / self.hist.sum(-1, keepdim=True).clamp(min=1)
        idx = (cdf < q).sum(-1).clamp(max=len(self.hist_edges) - 1)
        return self.hist_edges.to(idx.device)[idx]

    # ------------------------------------------------------------------ persistence

    def tensors(self) -> dict[str, Tensor]:
        out = {"tokens": self.tokens, "active": self.active, "sum": self.sum, "sumsq": self.sumsq, "prompts": self.prompts}
        return out | ({"hist": self.hist, "hist_edges": self.hist_edges} if self.hist is not None else {})

    def save(self, path: str | os.PathLike, *, extra: dict[str, Tensor] | None = None) -> None:
        """Save as safetensors + JSON; ``extra`` tensors (e.g. a checkpoint's batch counter) go into the
        same safetensors file, so they are written in the same atomic step as the statistics."""
        meta = {"classes": self.classes, "layers": self.layers, "d_mlp": self.d_mlp, "meta": self.meta}
        save_tensors(path, self.tensors() | (extra or {}), meta, kind="NeuronStats")

    @classmethod
    def load(cls, path: str | os.PathLike, *, with_extra: bool = False) -> Any:
        """The statistics saved at ``path``; with ``with_extra`` also the dict of ``extra`` tensors saved beside them."""
        t, meta = load_tensors(path, kind="NeuronStats")
        stats = cls(
            meta["classes"], meta["layers"], meta["d_mlp"], t.pop("tokens"), t.pop("active"), t.pop("sum"), t.pop("sumsq"),
            t.pop("hist", None), t.pop("hist_edges", None), t.pop("prompts", None), meta["meta"],
        )  # fmt: skip
        return (stats, t) if with_extra else stats

    def equal(self, other: NeuronStats, *, rtol: float = 0.0, atol: float = 0.0) -> bool:
        """Same classes and layers, and tensors equal within tolerance (exactly, by default)."""
        if (self.classes, self.layers, self.d_mlp) != (other.classes, other.layers, other.d_mlp):
            return False
        a, b = self.tensors(), other.tensors()
        return a.keys() == b.keys() and all(torch.allclose(a[k], b[k].to(a[k].device), rtol=rtol, atol=atol) for k in a)
