"""Positive controls: the dense edits a user would try instead of sparse value neurons.

- **Steering vector** (ActAdd, Turner et al. 2023; contrastive activation addition, CAA,
  Rimsky et al. 2024): the mean residual stream of the `+` prompts of one dimension minus
  that of its `-` prompts, read after one block (``blocks.{layer}.hook_resid_post``) and
  pooled over the same tokens locate pools (by default the question part shared by both
  poles, so the vector holds what the description changes downstream, not the description's
  own words). :func:`steering_edit` adds ``scale * v`` there, at every position.
- **Dense MLP edit**: every neuron of the chosen layers moved by ``scale`` times its mean
  difference between the poles, at the hook point its statistics were collected at
  (:func:`dense_mlp_edit`).

Both are :class:`~vlens.interventions.Edit` objects, so they run in the same batches, one
edit per row, as the neuron edits they are compared with. Sign convention: steering toward
`+` adds ``+scale * v``, toward `-` adds ``-scale * v`` (``v`` = mean(`+`) - mean(`-`));
``scale`` is the dose, and :meth:`SteeringVectors.edit` and :func:`dense_mlp_edit` take
it with the pole, so it must be >= 0 there.

The default layer is the middle one, ``n_layers // 2``. Early blocks hold mostly token-level
features and late blocks write the next token, so a concept added there either washes
out or only shifts the next word; CAA found behaviour steering strongest in the middle
layers of Llama 2, and vlens' own trial on SmolLM2 (issue 13: layer 15 of 30) moved the
cloze instrument the expected way in all four dimensions, if weakly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlens._io import VlensFileError, load_tensors, save_tensors, sha256_json
from vlens.activations import check_pairs, plan_batches, pole_classes, pool_batch, tokenize_prompts
from vlens.data.prompts import Prompt
from vlens.interventions import Edit
from vlens.models import model_info
from vlens.runner import RESID_POINT, Hook
from vlens.stats import NeuronStats, class_label
from vlens.values import PoleKey, check_pole, dimension

__all__ = ["SteeringVectors", "default_layer", "dense_mlp_edit", "steering_edit", "steering_vector", "steering_vectors"]


def default_layer(n_layers: int) -> int:
    """The middle layer, where steering vectors act (see the module docstring for why)."""
    return n_layers // 2


def _check_layer(layer: Any, n_layers: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"control layer {layer!r} is out of range: this model has layers 0..{n_layers - 1} "
                         f"(the default is the middle layer, {default_layer(n_layers)})")  # fmt: skip
    return layer


def _dose(scale: Any, *, signed: bool) -> float:
    """A finite scale; with a pole (``signed=False``) it is a dose and must also be >= 0."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    if not signed and scale < 0:
        raise ValueError(f"scale is the dose and must be >= 0 (the pole gives the direction), got {scale!r}")
    return float(scale)


def _check_poles(prompts: Sequence[Prompt]) -> None:
    if not prompts:
        raise ValueError("no prompts given: pass the contrastive prompts of vlens.build_prompts (both poles of each pair)")
    poles: dict[str, set[str]] = {}
    for p in prompts:
        poles.setdefault(p.dimension, set()).add(p.pole)
    for dim, have in poles.items():
        if have != {"+", "-"}:
            raise ValueError(f"the prompts of {dim} hold only the {have.pop()!r} pole; a steering vector is the difference "
                             "of the '+' and '-' means: pass both prompts of every pair (vlens.build_prompts)")  # fmt: skip


# ----------------------------------------------------------------------------- steering vectors


def _resid_means(
    model: Any, prompts: Sequence[Prompt], layer: int, *, scope: str, batch_size: int, prefix_reuse: bool,
    max_new_tokens: int, repetition_penalty: float,
) -> tuple[list[str], Float[Tensor, "cls d_model"], Int[Tensor, " cls"]]:  # fmt: skip
    """Per class, the mean residual stream after block ``layer`` over the scope's tokens, and the prompt counts."""
    _check_poles(prompts)
    info = model_info(model)
    _check_layer(layer, info.n_layers)
    check_pairs(prompts)
    rows = tokenize_prompts(model, prompts, scope, max_new_tokens=max_new_tokens if scope == "generated" else 0)
    classes = pole_classes(prompts)
    reuse = prefix_reuse and scope == "question"
    batches = plan_batches(rows, batch_size, by_prefix=reuse)
    device = torch.device(model.cfg.device)
    point = RESID_POINT.format(layer=layer)
    sums = torch.zeros(len(classes), info.d_model, dtype=torch.float64, device=device)
    tokens = torch.zeros(len(classes), dtype=torch.float64)
    n_prompts = torch.zeros(len(classes), dtype=torch.long)

    def poolers(weights: Float[Tensor, "batch pos cls"]) -> list[Hook]:
        w = einops.rearrange(weights, "b p c -> (b p) c").to(device, torch.float64)
        counted = w.sum(-1) > 0  # only the scope's tokens: padding never enters a sum, even as 0 * nan

        def pool(resid: Float[Tensor, "batch pos d_model"], hook: Any) -> None:
            r = einops.rearrange(resid, "b p d -> (b p) d")[counted].to(torch.float64)
            sums.add_(einops.einsum(r, w[counted], "t d, t c -> c d"))

        return [(point, pool)]

    with torch.inference_mode():
        for batch in batches:
            weights, row_cls = pool_batch(
                model, [rows[i] for i in batch], classes, poolers, stop_at=point, scope=scope, prefix_reuse=reuse,
                max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
            )  # fmt: skip
            tokens += einops.reduce(weights.to(torch.float64), "b p c -> c", "sum")
            n_prompts += torch.bincount(row_cls, minlength=len(classes))
    if (tokens == 0).any():
        empty = [c for c, n in zip(classes, tokens.tolist(), strict=True) if n == 0]
        raise ValueError(f"no tokens were pooled for class(es) {empty} under scope {scope!r}")
    means = sums.cpu() / einops.rearrange(tokens, "c -> c 1")
    return classes, means, n_prompts


def steering_vector(
    model: Any,
    prompts: Sequence[Prompt],
    layer: int | None = None,
    *,
    scope: str = "question",
    batch_size: int = 16,
    prefix_reuse: bool = True,
    max_new_tokens: int = 64,
    repetition_penalty: float = 1.1,
) -> Float[Tensor, " d_model"]:
    """The difference of means (`+` minus `-`) of the residual stream after block ``layer``.

    ``prompts`` are the contrastive prompts of ONE dimension (both poles of every pair, as
    :func:`vlens.build_prompts` makes them; :func:`steering_vectors` does all dimensions in one
    pass). The residual stream at ``blocks.{layer}.hook_resid_post`` is averaged over the tokens
    that ``scope`` selects, exactly as :func:`vlens.collect_stats` selects them, and the pass
    stops after that block. ``layer`` defaults to the middle layer ``n_layers // 2``. The other
    options are :func:`vlens.collect_stats`' (``max_new_tokens`` and ``repetition_penalty`` for
    the ``generated`` scope).
    """
    _check_poles(prompts)
    dims = list(dict.fromkeys(p.dimension for p in prompts))
    if len(dims) > 1:
        raise ValueError(f"steering_vector takes the prompts of one dimension, got {', '.join(dims)}; "
                         "use steering_vectors for several")  # fmt: skip
    vectors = steering_vectors(model, prompts, layer, scope=scope, batch_size=batch_size, prefix_reuse=prefix_reuse,
                               max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)  # fmt: skip
    return vectors[dims[0]]


def steering_vectors(
    model: Any,
    prompts: Sequence[Prompt],
    layer: int | None = None,
    *,
    scope: str = "question",
    batch_size: int = 16,
    prefix_reuse: bool = True,
    max_new_tokens: int = 64,
    repetition_penalty: float = 1.1,
) -> SteeringVectors:
    """One steering vector per dimension of ``prompts``, all from one pass (see :func:`steering_vector`)."""
    info = model_info(model)
    layer = default_layer(info.n_layers) if layer is None else layer
    classes, means, counts = _resid_means(model, prompts, layer, scope=scope, batch_size=batch_size, prefix_reuse=prefix_reuse,
                                          max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)  # fmt: skip
    vectors, n_prompts = {}, {}
    for dim in dict.fromkeys(PoleKey.parse(c).dimension for c in classes):
        plus, minus = classes.index(class_label(dim, "+")), classes.index(class_label(dim, "-"))
        vectors[dim] = (means[plus] - means[minus]).float()
        n_prompts[dim] = int(counts[plus] + counts[minus])
    meta = {"model": info.to_dict(), "model_fingerprint": info.fingerprint, "batch_size": batch_size,
            "prefix_reuse": prefix_reuse and scope == "question",
            "max_new_tokens": max_new_tokens if scope == "generated" else None,
            "repetition_penalty": repetition_penalty if scope == "generated" else None,
            "prompts_sha256": sha256_json([(p.id, p.text) for p in prompts])}  # fmt: skip
    return SteeringVectors(vectors, layer, n_prompts, scope=scope, meta=meta)


@dataclass
class SteeringVectors:
    """Steering vectors of several dimensions, taken after one block, saved as safetensors + JSON.

    ``vectors[dimension]`` is mean(`+`) - mean(`-`) of the residual stream at :attr:`hook`;
    ``n_prompts[dimension]`` counts the prompts it was pooled over (both poles); ``meta``
    records the model and the prompts, so a run that finds the file can reuse it.
    """

    vectors: dict[str, Float[Tensor, " d_model"]]
    layer: int
    n_prompts: dict[str, int]
    scope: str = "question"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def hook(self) -> str:
        return RESID_POINT.format(layer=self.layer)

    @property
    def dimensions(self) -> list[str]:
        return list(self.vectors)

    def __getitem__(self, name: str) -> Float[Tensor, " d_model"]:
        return self.vectors[_dimension_in(name, self.dimensions, "steering vectors")]

    def edit(self, model_or_shape: Any, dimension: str, pole: str, scale: float, *, label: str | None = None) -> Edit:
        """The edit steering ``dimension`` toward ``pole``: ``+scale * v`` for `+`, ``-scale * v`` for `-`.

        ``scale`` is the dose (>= 0). Given a model, the vectors must come from that model.
        """
        dim, pole = _dimension_in(dimension, self.dimensions, "steering vectors"), check_pole(pole)
        scale = _dose(scale, signed=False)
        if not isinstance(model_or_shape, tuple | list):
            fp, here = self.meta.get("model_fingerprint"), model_info(model_or_shape).fingerprint
            if fp is not None and fp != here:
                raise ValueError(f"these steering vectors come from another model ({fp.get('name')}) than this one "
                                 f"({here['name']}); compute them on this model")  # fmt: skip
        signed = scale if pole == "+" else -scale
        label = label or f"steer({dim}:{pole}, layer={self.layer}, scale={scale:g})"
        return steering_edit(model_or_shape, self.vectors[dim], self.layer, signed, label=label)

    def save(self, path: str | os.PathLike) -> None:
        meta = {"dimensions": self.dimensions, "layer": self.layer, "hook": self.hook, "n_prompts": self.n_prompts,
                "scope": self.scope, "meta": self.meta}  # fmt: skip
        save_tensors(path, self.vectors, meta, kind="SteeringVectors")

    @classmethod
    def load(cls, path: str | os.PathLike) -> SteeringVectors:
        t, meta = load_tensors(path, kind="SteeringVectors")
        if set(t) != set(meta["dimensions"]) or meta["hook"] != RESID_POINT.format(layer=meta["layer"]):
            raise VlensFileError(f"{path}: the vectors ({sorted(t)}) or the hook ({meta['hook']}) do not match the metadata; "
                                 "recompute them")  # fmt: skip
        vectors = {d: t[d] for d in meta["dimensions"]}
        return cls(vectors, meta["layer"], meta["n_prompts"], scope=meta["scope"], meta=meta["meta"])


def _edit_shape(model_or_shape: Any) -> tuple[tuple[int, int], int | None]:
    """``(n_layers, d_mlp)`` and, for a model, ``d_model``."""
    if isinstance(model_or_shape, tuple | list):
        if len(model_or_shape) != 2 or not all(isinstance(n, int) and n > 0 for n in model_or_shape):
            raise ValueError(f"shape must be (n_layers, d_mlp), two positive integers, got {model_or_shape!r}")
        return (model_or_shape[0], model_or_shape[1]), None
    info = model_info(model_or_shape)
    return (info.n_layers, info.d_mlp), info.d_model


def steering_edit(
    model_or_shape: Any, vector: Float[Tensor, " d_model"], layer: int, scale: float, *, label: str | None = None
) -> Edit:
    """An edit that adds ``scale * vector`` to the residual stream after block ``layer``, at every position.

    ``model_or_shape`` is the model (its ``d_model`` is checked) or ``(n_layers, d_mlp)``.
    ``scale`` may be negative: steering toward `-` with ``v`` = mean(`+`) - mean(`-`) is
    ``scale = -dose``. A scale of 0 changes nothing.
    """
    (n_layers, d_mlp), d_model = _edit_shape(model_or_shape)
    layer, scale = _check_layer(layer, n_layers), _dose(scale, signed=True)
    if not isinstance(vector, Tensor) or vector.ndim != 1:
        raise ValueError(f"vector must be a 1-D tensor of d_model values, got {getattr(vector, 'shape', type(vector).__name__)}")
    if d_model is not None and vector.shape[0] != d_model:
        raise ValueError(f"vector has {vector.shape[0]} values, the model's residual stream has d_model {d_model}")
    if not torch.isfinite(vector).all():
        raise ValueError("vector holds non-finite values; recompute the steering vector")
    e = Edit.identity(n_layers, d_mlp, label=label or f"steer(layer={layer}, scale={scale:g})")
    e.resid = torch.zeros(n_layers, vector.shape[0])
    e.resid[layer] = scale * vector.detach().float().cpu()
    return e


# ----------------------------------------------------------------------------- dense MLP edit


def dense_mlp_edit(
    stats: NeuronStats,
    dimension: str,
    pole: str,
    scale: float,
    *,
    layers: Sequence[int] | None = None,
    shape: tuple[int, int] | None = None,
) -> Edit:
    """Every neuron of ``layers`` (default: all layers of ``stats``) boosted by ``scale * (mean_pole - mean_other)``.

    The boost acts on every token (keep probability 1) at the hook point the statistics were
    collected at (``stats.meta["hook"]``). ``scale`` is the dose (>= 0); the pole gives the
    direction. ``shape`` (``(n_layers, d_mlp)``) is needed only when ``stats`` does not record
    its model (statistics from :func:`vlens.collect_stats` do).
    """
    pole, scale = check_pole(pole), _dose(scale, signed=False)
    dim = _dimension_in(dimension, stats.dimensions, "statistics")
    present = [p for p in "+-" if class_label(dim, p) in stats.classes]
    if len(present) < 2:
        raise ValueError(f"the statistics of {dim} hold only the {present[0]!r} pole; the dense edit moves neurons by the "
                         "difference of the '+' and '-' means: collect both poles")  # fmt: skip
    this, other = stats.class_index(class_label(dim, pole)), stats.class_index(class_label(dim, "-" if pole == "+" else "+"))
    if (stats.tokens[[this, other]] == 0).any():
        raise ValueError(f"no tokens were recorded for a pole of {dim}: check the data and the token scope")
    recorded = _stats_shape(stats)
    if shape is not None and recorded is not None and tuple(shape) != recorded:
        raise ValueError(f"shape {tuple(shape)} does not match the model the statistics come from, {recorded}")
    n_layers, d_mlp = tuple(shape) if shape is not None else recorded or (None, None)
    if n_layers is None:
        raise ValueError("these statistics do not record their model's size (meta['model']); pass shape=(n_layers, d_mlp)")
    if d_mlp != stats.d_mlp:
        raise ValueError(f"shape has {d_mlp} neurons per layer, the statistics {stats.d_mlp}")
    chosen = list(stats.layers) if layers is None else sorted({int(layer) for layer in layers})
    missing = [layer for layer in chosen if layer not in stats.layers]
    if missing or not chosen:
        raise ValueError(f"layer(s) {missing or 'none'} have no statistics: these cover layers {stats.layers}")
    where = torch.tensor([stats.layers.index(layer) for layer in chosen])
    diff = stats.sum[this] / stats.tokens[this] - stats.sum[other] / stats.tokens[other]  # [stats layer, neuron]
    e = Edit.identity(n_layers, d_mlp, label=f"dense_mlp({dim}:{pole}, scale={scale:g})", hook=stats.hook)
    e.boost[torch.tensor(chosen)] = scale * diff[where.to(diff.device)].float().cpu()
    return e


def _dimension_in(name: str, available: list[str], what: str) -> str:
    """``name`` as it appears in ``available`` (also a short name such as "oc")."""
    if name in available:
        return name
    try:
        canonical = dimension(name).name
    except ValueError:
        canonical = None
    if canonical not in available:
        known = f" ({canonical})" if canonical and canonical != name else ""
        raise ValueError(f"no {what} for dimension {name!r}{known}; these {what} cover {', '.join(available) or 'no dimension'}")
    return canonical


def _stats_shape(stats: NeuronStats) -> tuple[int, int] | None:
    model = stats.meta.get("model") or {}
    return (int(model["n_layers"]), int(model["d_mlp"])) if "n_layers" in model and "d_mlp" in model else None
