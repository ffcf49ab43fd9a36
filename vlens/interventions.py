"""Edits of MLP neurons where they were located, as context managers that always remove their hooks.

A set located at ``blocks.{l}.mlp.hook_post`` (``hook="post"``) is edited there; a set located
at the gate activation (``hook="gate"``: ``act(hook_pre)`` of a gated MLP) is edited as the
gate activation, before it multiplies the up-projection: ``hook_post <- edit(act(pre)) * up``.

Every edit is an :class:`Edit`: dense ``[n_layers, d_mlp]`` tensors saying, per neuron,
what happens to its activation ``a`` at each forward step::

    a <- set_value            where set_mask      (ablate, patch)
    a <- scale * a            elsewhere           (scale)
    a <- min(a, 0)            where clamp_mask    (clamp; the paper's edit of the opposing set)
    a <- a + boost * keep     keep ~ Bernoulli(keep_prob), redrawn every step, seeded

An edit may also add a vector to the residual stream, at every position, after the blocks
it names (``resid``, ``[n_layers, d_model]``, at ``blocks.{l}.hook_resid_post``): the
dense positive controls of :mod:`vlens.controls` (a steering vector) are edits like any other,
and run in the same batches, one edit per row, as the neuron edits they are compared with::

    x_l <- x_l + resid[l]      x_l = the residual stream after block l

Several edits can run in one forward pass: :func:`apply` takes a list of edits and the
condition of every batch row, so gamma values x neuron sets x random seeds are evaluated
by expanding the batch instead of looping over forward passes. Edits act through the hook
point, never a re-implemented MLP, so they are correct for any activation function.

``scope`` says which tokens are edited: ``all``; ``prompt`` (the first forward step of a
generation, or a whole plain forward pass); ``generated`` (only KV-cached decoding steps,
each of which sees ``[batch, 1, d_mlp]``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vlens.models import model_info
from vlens.neurons import NeuronSet
from vlens.runner import RESID_POINT, UP_POINT, activation_fn, hook_name
from vlens.stats import NeuronStats, class_label

SCOPES = ("all", "prompt", "generated")
MODES = ("paper", "boost_only", "clamp_only")


@dataclass
class Edit:
    """One intervention condition as dense per-neuron tensors (see the module docstring).

    ``resid`` (optional) adds ``resid[l]`` to the residual stream after block ``l``; ``None``
    or a zero row adds nothing there, and layers with nothing to do get no hook.
    """

    scale: Float[Tensor, "layer neuron"]
    set_mask: Bool[Tensor, "layer neuron"]
    set_value: Float[Tensor, "layer neuron"]
    clamp_mask: Bool[Tensor, "layer neuron"]
    boost: Float[Tensor, "layer neuron"]
    keep_prob: float = 1.0
    seed: int = 0
    label: str = "none"
    hook: str = "post"  # the hook family the neurons were located at (vlens.runner.HOOK_POINTS)
    resid: Float[Tensor, "layer d_model"] | None = None  # added at blocks.{l}.hook_resid_post
    clamp_strength: float = 1.0  # c in a <- a - c * max(a, 0) on clamp_mask; 1 is the paper's min(a, 0)

    def __post_init__(self) -> None:
        if self.resid is not None and (self.resid.ndim != 2 or self.resid.shape[0] != self.scale.shape[0]):
            raise ValueError(f"edit {self.label}: resid must be [n_layers, d_model] with n_layers = {self.scale.shape[0]} "
                             f"(one residual vector per layer, zeros where nothing is added), got {tuple(self.resid.shape)}")  # fmt: skip

    @classmethod
    def identity(cls, n_layers: int, d_mlp: int, *, label: str = "none", hook: str = "post") -> Edit:
        z = torch.zeros(n_layers, d_mlp)
        f = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
        return cls(torch.ones(n_layers, d_mlp), f, z, f.clone(), z.clone(), label=label, hook=hook)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.scale.shape)

    def touched_layers(self) -> Bool[Tensor, " layer"]:
        """Layers where this edit changes anything, neurons or residual stream (others need no hook)."""
        return self.neuron_layers() | self.resid_layers()

    def neuron_layers(self) -> Bool[Tensor, " layer"]:
        """Layers where this edit changes a neuron (a clamp of strength 0 changes nothing)."""
        changed = (self.scale != 1) | self.set_mask | (self.clamp_mask & (self.clamp_strength > 0)) | (self.boost != 0)
        return changed.any(-1)

    def resid_layers(self) -> Bool[Tensor, " layer"]:
        """Layers after which this edit adds a non-zero vector to the residual stream."""
        if self.resid is None:
            return torch.zeros(self.scale.shape[0], dtype=torch.bool)
        return (self.resid != 0).any(-1)


# ----------------------------------------------------------------------------- building edits


def _check_set(model_shape: tuple[int, int], ns: NeuronSet, model: Any | None = None) -> None:
    ns.check()
    if not len(ns):
        p = ns.params
        rule = p.get("rule", ns.method) + (f" {p['threshold']}" if p.get("rule") == "threshold" else "")
        raise ValueError(f"neuron set {ns.name} is empty: the selection ({rule}, score {p.get('score', ns.method)}) kept no neuron "
                         f"(largest score {p.get('largest_score')}); choose a lower threshold or a top_k rule")  # fmt: skip
    n_layers, d_mlp = model_shape
    if (ns.n_layers, ns.d_mlp) != (n_layers, d_mlp):
        raise ValueError(
            f"neuron set {ns.name} was located on a model with {ns.n_layers} layers x {ns.d_mlp} neurons, "
            f"this model has {n_layers} x {d_mlp}"
        )
    if model is not None:
        fp = ns.provenance.get("model_fingerprint")
        here = model_info(model).fingerprint
        if fp is not None and fp != here:
            raise ValueError(
                f"neuron set {ns.name} comes from another model ({fp.get('name')}, sha256 {str(fp.get('source_sha256'))[:12]}) "
                f"than this one ({here['name']}, sha256 {str(here.get('source_sha256'))[:12]}); locate it on this model"
            )


def _located_at(*sets: NeuronSet | None) -> str:
    """The hook family the sets were located at; an edit acts there."""
    hooks = {ns.check().provenance.get("hook", "post") for ns in sets if ns is not None}
    if len(hooks) > 1:
        raise ValueError(f"these neuron sets were located at different hook points ({sorted(hooks)}); edit them separately")
    return hooks.pop() if hooks else "post"


def _finite(name: str, value: float) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def scale_edit(shape: tuple[int, int], ns: NeuronSet, gamma: float) -> Edit:
    """``a <- gamma * a`` on the neurons of ``ns``."""
    e = Edit.identity(*shape, label=f"scale({ns.name}, {gamma})", hook=_located_at(ns))
    e.scale[ns.layers, ns.neurons] = _finite("gamma", gamma)
    return e


def ablate_edit(shape: tuple[int, int], ns: NeuronSet, *, value: str = "zero", stats: NeuronStats | None = None) -> Edit:
    """``a <- 0`` (``value="zero"``) or ``a <- mean activation`` (``value="mean"``, over all classes of ``stats``)."""
    e = Edit.identity(*shape, label=f"ablate({ns.name}, {value})", hook=_located_at(ns))
    e.set_mask[ns.layers, ns.neurons] = True
    if value == "mean":
        if stats is None:
            raise ValueError("mean ablation needs the NeuronStats the neurons were located with (stats=...)")
        mean = _dense(stats, stats.sum.sum(0) / stats.tokens.sum(), shape)
        e.set_value[ns.layers, ns.neurons] = mean[ns.layers, ns.neurons]
    elif value != "zero":
        raise ValueError(f"ablation value must be 'zero' or 'mean', got {value!r}")
    return e


def clamp_edit(shape: tuple[int, int], ns: NeuronSet) -> Edit:
    """``a <- min(a, 0)`` on the neurons of ``ns``."""
    e = Edit.identity(*shape, label=f"clamp({ns.name})", hook=_located_at(ns))
    e.clamp_mask[ns.layers, ns.neurons] = True
    return e


def patch_edit(shape: tuple[int, int], ns: NeuronSet, stats: NeuronStats, *, to_pole: str | None = None) -> Edit:
    """Set the neurons of ``ns`` to their mean activation in another pole (default: the opposite one)."""
    pole = to_pole or ("-" if ns.pole == "+" else "+")
    mean = _dense(stats, stats.mean()[stats.class_index(class_label(ns.dimension, pole))], shape)
    e = Edit.identity(*shape, label=f"patch({ns.name} -> {pole})", hook=_located_at(ns))
    e.set_mask[ns.layers, ns.neurons] = True
    e.set_value[ns.layers, ns.neurons] = mean[ns.layers, ns.neurons]
    return e


def value_edit(
    shape: tuple[int, int],
    target: NeuronSet,
    opposing: NeuronSet | None,
    gamma: float,
    *,
    mode: str = "paper",
    v: str = "prob",
    keep_prob: float = 0.9,
    seed: int = 0,
    clamp_strength: float = 1.0,
) -> Edit:
    """The paper's edit toward ``target``'s pole.

    ``paper``: clamp ``opposing`` (``a <- min(a, 0)``) and boost ``target`` by
    ``gamma * v * sigmoid(10 * (delta - 0.15))`` on a Bernoulli(``keep_prob``) subset
    redrawn each step; ``boost_only`` / ``clamp_only`` keep one half. ``v`` is the
    neuron's activation probability (``"prob"``) or 95th-percentile activation (``"p95"``).
    Reverse steering is the same edit with the two sets swapped. ``clamp_strength`` c in [0, 1]
    clamps partially, ``a <- a - c * max(a, 0)`` (1: the paper's clamp), so a dose can scale the
    whole edit down to nothing (see :func:`dosed_edit`).
    """
    if mode not in MODES:
        raise ValueError(f"unknown edit mode {mode!r}; expected one of {', '.join(MODES)}")
    gamma = _finite("gamma", gamma)
    if not 0 <= keep_prob <= 1:
        raise ValueError(f"keep_prob must be in [0, 1], got {keep_prob}")
    e = Edit.identity(*shape, label=f"{mode}({target.name}, gamma={gamma:g}, seed={seed})", hook=_located_at(target, opposing))
    if not 0 <= clamp_strength <= 1:
        raise ValueError(f"clamp_strength must be in [0, 1], got {clamp_strength}")
    e.keep_prob, e.seed, e.clamp_strength = keep_prob, seed, float(clamp_strength)
    if mode in {"paper", "clamp_only"} and opposing is not None and len(opposing):
        e.clamp_mask[opposing.layers, opposing.neurons] = True
    if mode in {"paper", "boost_only"} and len(target):
        if v not in ("prob", "p95"):
            raise ValueError(f"v must be 'prob' (activation probability) or 'p95' (95th percentile), got {v!r}")
        strength = target.act_prob if v == "prob" else target.p95
        if strength is None:
            field = "act_prob" if v == "prob" else "p95 (locate with a histogram: hist_edges='auto')"
            raise ValueError(f"neuron set {target.name} has no {field}, which the edit's v={v!r} needs; "
                             "build the set with vlens.select (or random_like(..., stats=...))")  # fmt: skip
        if target.delta is None:
            raise ValueError(f"neuron set {target.name} has no delta scores; select it with vlens.select")
        weight = torch.sigmoid(10 * (target.delta.float() - 0.15))
        e.boost[target.layers, target.neurons] = gamma * strength.float() * weight
    return e


def dosed_edit(shape: tuple[int, int], target: NeuronSet, opposing: NeuronSet | None, dose: float, **kwargs: Any) -> Edit:
    """The paper's edit scaled as one dose, for matching costs: from dose 1 on it is
    :func:`value_edit` at gamma = dose exactly; below 1 the boost is gamma = dose and the opposing
    set is clamped with strength = dose, so dose 0 is the unedited model. (The paper's clamp alone
    can cost more than a small KL target: on SmolLM2 it is 0.18 nats/token for 2,000 neurons.)"""
    dose = _finite("dose", dose)
    if dose < 0:
        raise ValueError(f"dose must be >= 0, got {dose}")
    return value_edit(shape, target, opposing, dose, clamp_strength=min(dose, 1.0), **kwargs)


def _dense(stats: NeuronStats, values: Float[Tensor, "slayer neuron"], shape: tuple[int, int]) -> Tensor:
    """Statistics cover ``stats.layers``; spread them into a full ``[n_layers, d_mlp]`` tensor."""
    out = torch.zeros(shape)
    out[torch.tensor(stats.layers)] = values.float().cpu()
    return out


# ----------------------------------------------------------------------------- applying edits


class _EditHooks:
    """The stacked tensors of several edits, and the hooks that apply them row by row."""

    def __init__(self, model: Any, edits: Sequence[Edit], rows: Int[Tensor, " batch"] | None, scope: str):
        info = model_info(model)
        shape = (info.n_layers, info.d_mlp)
        for e in edits:
            if e.shape != shape:
                raise ValueError(f"edit {e.label} is for {e.shape[0]} layers x {e.shape[1]} neurons, the model has {shape}")
            if e.resid is not None and tuple(e.resid.shape) != (info.n_layers, info.d_model):
                raise ValueError(f"edit {e.label} adds residual vectors of shape {tuple(e.resid.shape)}, the model's residual "
                                 f"stream is {info.n_layers} layers x d_model {info.d_model}")  # fmt: skip
        if scope not in SCOPES:
            raise ValueError(f"unknown intervention scope {scope!r}; expected one of {', '.join(SCOPES)}")
        device = torch.device(model.cfg.device)
        stack = lambda name: torch.stack([getattr(e, name) for e in edits]).to(device)  # noqa: E731
        self.scale, self.set_mask, self.set_value = stack("scale"), stack("set_mask"), stack("set_value")
        self.clamp_mask, self.boost = stack("clamp_mask"), stack("boost")
        self.clamp_strength = torch.tensor([float(e.clamp_strength) for e in edits], device=device)
        self.edits, self.scope, self.device = list(edits), scope, device
        self.keep_prob = [e.keep_prob for e in edits]
        self.rows = rows
        self.step = -1  # forward steps seen (0 = prompt, 1.. = KV-cached decoding steps)
        self.touched = torch.stack([e.neuron_layers() for e in edits])  # [edit, layer]: neuron edits
        self.layers = [int(layer) for layer in self.touched.any(0).nonzero()]
        self.resid_layers = [int(layer) for layer in torch.stack([e.resid_layers() for e in edits]).any(0).nonzero()]
        # Edits without residual vectors add zeros in a batch where others add one.
        zeros = torch.zeros(info.n_layers, info.d_model)
        resid = [zeros if e.resid is None else e.resid.float().cpu() for e in edits]
        self.resid = torch.stack(resid).to(device) if self.resid_layers else None
        hooks = {e.hook for e in edits if e.neuron_layers().any()}  # residual additions act at no neuron hook
        if len(hooks) > 1:
            raise ValueError(f"edits of sets located at different hook points ({sorted(hooks)}) cannot run in one pass")
        self.hook_family = hooks.pop() if hooks else "post"
        # The step counter ticks in the first hook of a forward pass: a block's MLP runs before
        # its residual output, so the neuron hook of layer l comes before the residual hook of l.
        first_mlp, first_resid = (self.layers or [math.inf])[0], (self.resid_layers or [math.inf])[0]
        self.clock = ("neuron", first_mlp) if first_mlp <= first_resid else ("resid", first_resid)

    def set_rows(self, rows: Int[Tensor, " batch"] | None) -> None:
        """Which edit each batch row gets (indices into the edits); None = all rows get edit 0."""
        self.rows = rows

    def new_pass(self) -> None:
        """Count the next forward pass as step 0 whatever its length (e.g. a suffix run on a cached prefix)."""
        self.step = -1

    def _keep(self, layer: int, n: int) -> Float[Tensor, "cond neuron"]:
        """Bernoulli keep masks for this step and layer, one per edit, independent of the batch."""
        masks = []
        for e, p in zip(self.edits, self.keep_prob, strict=True):
            if p >= 1:
                masks.append(torch.ones(n))
                continue
            g = torch.Generator().manual_seed(hash((e.seed, self.step, layer)) & 0x7FFFFFFFFFFFFFFF)
            masks.append((torch.rand(n, generator=g) < p).float())
        return torch.stack(masks).to(self.device)

    def _tick(self, kind: str, layer: int, n_pos: int) -> bool:
        """Count the forward step (in the pass's first hook); True when this step is in the edit's scope."""
        if (kind, layer) == self.clock:
            # A pass over several positions is a new prompt (step 0); a one-position pass
            # after it is a KV-cached decoding step. The keep mask is redrawn every step.
            self.step = 0 if n_pos > 1 or self.step < 0 else self.step + 1
        return not ((self.scope == "prompt" and self.step > 0) or (self.scope == "generated" and self.step == 0))

    def _rows(self, batch: int) -> Int[Tensor, " batch"]:
        rows = self.rows if self.rows is not None else torch.zeros(batch, dtype=torch.long)
        if rows.shape[0] != batch:
            raise ValueError(f"{rows.shape[0]} row conditions given for a batch of {batch} rows")
        return rows.to(self.device)

    def resid_hook(self, layer: int):
        def add_hook(resid: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor:
            if not self._tick("resid", layer, resid.shape[1]):
                return resid
            add = einops.rearrange(self.resid[self._rows(resid.shape[0]), layer], "b d -> b 1 d")
            return resid + add.to(resid.dtype)

        return add_hook

    def hook(self, layer: int):
        def edit_hook(acts: Float[Tensor, "batch pos neuron"], hook: Any) -> Tensor:
            if not self._tick("neuron", layer, acts.shape[1]):
                return acts
            rows = self._rows(acts.shape[0])
            if not self.touched[rows.cpu(), layer].any():
                return acts  # no row's edit changes this layer (e.g. an unedited shared prefix): skip the work
            pick = lambda t: einops.rearrange(t[rows, layer], "b n -> b 1 n")  # noqa: E731
            out = acts * pick(self.scale).to(acts.dtype)
            out = torch.where(pick(self.set_mask), pick(self.set_value).to(acts.dtype), out)
            c = einops.rearrange(self.clamp_strength[rows], "b -> b 1 1").to(acts.dtype)
            out = torch.where(pick(self.clamp_mask), out - c * out.clamp(min=0), out)  # c = 1: min(a, 0)
            boost = self.boost[:, layer] * self._keep(layer, acts.shape[-1])
            return out + einops.rearrange(boost[rows], "b n -> b 1 n").to(acts.dtype)

        return edit_hook

    def hooks(self, model: Any) -> list[tuple[str, Any]]:
        """(hook point, function) pairs that apply the edits where their sets were located, and add
        the residual vectors after their blocks."""
        return self._neuron_hooks(model) + [(RESID_POINT.format(layer=layer), self.resid_hook(layer)) for layer in self.resid_layers]

    def _neuron_hooks(self, model: Any) -> list[tuple[str, Any]]:
        if self.hook_family == "post" or not model_info(model).gated_mlp:  # a plain MLP's gate is hook_post
            return [(hook_name("post", layer), self.hook(layer)) for layer in self.layers]
        act, out = activation_fn(model, "gate"), []
        for layer in self.layers:
            stash: dict[str, Tensor] = {}
            edit = self.hook(layer)

            def keeper(key: str, stash: dict = stash) -> Any:
                return lambda tensor, hook: stash.__setitem__(key, tensor)

            def gated(post: Tensor, hook: Any, stash: dict = stash, edit: Any = edit) -> Tensor:
                return edit(act(stash["gate"]), hook) * stash["up"]

            out += [(hook_name("gate", layer), keeper("gate")), (UP_POINT.format(layer=layer), keeper("up")), (hook_name("post", layer), gated)]
        return out


@contextlib.contextmanager
def apply(
    model: Any, edits: Edit | Sequence[Edit], *, rows: Int[Tensor, " batch"] | None = None, scope: str = "all"
) -> Iterator[_EditHooks]:
    """Apply ``edits`` inside the block; ``rows[b]`` picks the edit of batch row ``b``.

    The hooks are removed when the block ends, also on an exception. The yielded handle's
    ``set_rows`` changes the row conditions between forward passes.
    """
    edits = [edits] if isinstance(edits, Edit) else list(edits)
    if not edits:
        raise ValueError("no edits given")
    handle = _EditHooks(model, edits, rows, scope)
    with model.hooks(fwd_hooks=handle.hooks(model)):
        yield handle


def _shape(model: Any) -> tuple[int, int]:
    info = model_info(model)
    return info.n_layers, info.d_mlp


@contextlib.contextmanager
def _editing(model: Any, make: Any, sets: Sequence[NeuronSet | None], scope: str) -> Iterator[_EditHooks]:
    """Check ``sets`` against the model, then apply the edit ``make(shape)`` inside the block."""
    for ns in sets:
        if ns is not None:
            _check_set(_shape(model), ns, model)
    with apply(model, make(_shape(model)), scope=scope) as handle:
        yield handle


def scale(model: Any, neurons: NeuronSet, gamma: float, *, scope: str = "all") -> contextlib.AbstractContextManager:
    """``with scale(model, neurons, 0.5): ...`` multiplies those neurons' activations by gamma."""
    return _editing(model, lambda shape: scale_edit(shape, neurons, gamma), [neurons], scope)


def ablate(model: Any, neurons: NeuronSet, *, value: str = "zero", stats: NeuronStats | None = None, scope: str = "all") -> contextlib.AbstractContextManager:
    """Zero-ablate (or mean-ablate) the neurons inside the block."""
    return _editing(model, lambda shape: ablate_edit(shape, neurons, value=value, stats=stats), [neurons], scope)


def clamp(model: Any, neurons: NeuronSet, *, scope: str = "all") -> contextlib.AbstractContextManager:
    """``a <- min(a, 0)`` on the neurons inside the block."""
    return _editing(model, lambda shape: clamp_edit(shape, neurons), [neurons], scope)


def patch(model: Any, neurons: NeuronSet, stats: NeuronStats, *, to_pole: str | None = None, scope: str = "all") -> contextlib.AbstractContextManager:
    """Set the neurons to their mean activation in the other pole inside the block."""
    return _editing(model, lambda shape: patch_edit(shape, neurons, stats, to_pole=to_pole), [neurons], scope)


def steer(
    model: Any, target: NeuronSet, opposing: NeuronSet | None, gamma: float, *, mode: str = "paper", v: str = "prob",
    keep_prob: float = 0.9, seed: int = 0, scope: str = "all",
) -> contextlib.AbstractContextManager:  # fmt: skip
    """The paper's value edit toward ``target``'s pole inside the block (see :func:`value_edit`)."""
    make = lambda shape: value_edit(shape, target, opposing, gamma, mode=mode, v=v, keep_prob=keep_prob, seed=seed)  # noqa: E731
    return _editing(model, make, [target, opposing], scope)
