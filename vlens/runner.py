"""The one place that runs a model: padding, masks, positions, early stop, shared prefixes, log-probs.

Every part of vlens that needs a forward pass (locate's statistics, the evaluation engine,
feature pooling, attribution, neuron views) goes through :func:`forward`, so an upstream
change in transformers or TransformerLens touches this file only.

- Rows of token ids are padded into a :class:`Batch` with the attention mask and explicit
  position ids that count only real tokens (left padding does not shift positions).
- The forward pass runs the Hugging Face model that the ``TransformerBridge`` wraps, so the
  bridge's hook points (``blocks.{l}.mlp.hook_post`` ...) fire; ``stop_at`` ends it right
  after a hook point, so nothing past the last layer needed is computed.
- A shared prefix (an instruction, a description, a dilemma) runs once: :func:`run_prefixes`
  keeps its keys and values, and :func:`forward` continues any row from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlens.models import model_info, pad, pad_id, position_ids

# Hook families. "gate" is the authors' choice, act(x W_gate): TransformerLens' act(hook_pre).
# For a plain (non-gated) MLP that is hook_post itself.
HOOK_POINTS: dict[str, str] = {"post": "blocks.{layer}.mlp.hook_post", "gate": "blocks.{layer}.mlp.hook_pre"}
UP_POINT = "blocks.{layer}.mlp.hook_pre_linear"  # x W_in of a gated MLP: hook_post = act(hook_pre) * this
# The residual stream after block L (TransformerLens' name; the bridge aliases it to blocks.L.hook_out).
RESID_POINT = "blocks.{layer}.hook_resid_post"
Hook = tuple[str, Callable[..., Any]]


def hook_name(hook: str, layer: int) -> str:
    if hook not in HOOK_POINTS:
        raise ValueError(f"unknown hook {hook!r}; expected one of {', '.join(HOOK_POINTS)} ('post' = blocks.L.mlp.hook_post)")
    return HOOK_POINTS[hook].format(layer=layer)


def resolve_hook(model: Any, hook: str, layer: int) -> str:
    """The hook point actually read: for "gate" on a plain MLP that is hook_post."""
    hook_name(hook, layer)
    return hook_name("post" if hook == "gate" and not model_info(model).gated_mlp else hook, layer)


def activation_fn(model: Any, hook: str) -> Callable[[Tensor], Tensor]:
    """What to apply to the hooked tensor to get the neuron activation of ``hook``."""
    if hook == "gate" and model_info(model).gated_mlp:
        from transformers.activations import ACT2FN

        config = model.original_model.config
        # Gemma configs name it hidden_activation (gelu_pytorch_tanh); Llama's hidden_act.
        return ACT2FN[getattr(config, "hidden_act", None) or config.hidden_activation]
    return lambda t: t  # hook_post is the activation itself (and act(hook_pre) for a plain MLP)


def check_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    n = model_info(model).n_layers
    if layers is None:
        return list(range(n))
    layers = sorted({int(layer) for layer in layers})
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad or not layers:
        raise ValueError(f"layer(s) {bad or 'none'} out of range: this model has layers 0..{n - 1}")
    return layers


@dataclass
class Batch:
    """Padded token ids with their attention mask and the positions of the real tokens."""

    tokens: Int[Tensor, "batch pos"]
    mask: Int[Tensor, "batch pos"]
    positions: Int[Tensor, "batch pos"]

    @classmethod
    def of(cls, model: Any, rows: Sequence[Sequence[int]], *, padding_side: str = "right") -> Batch:
        tokens, mask = pad([list(r) for r in rows], padding_side=padding_side, value=pad_id(model))
        return cls(tokens, mask, position_ids(mask))


@dataclass
class Prefixes:
    """Keys and values of left-padded shared prefixes, computed once and continued by many rows."""

    cache: Any  # a transformers Cache holding one row per prefix
    mask: Int[Tensor, "prefix pos"]
    last_hidden: Float[Tensor, "prefix d_model"] | None  # the final state at each prefix's last token

    def rows(self, pick: Int[Tensor, " row"]) -> Any:
        """A new cache with prefix ``pick[i]`` in row ``i`` (the only code that touches cache internals)."""
        from transformers import DynamicCache

        out = DynamicCache()
        for li, layer in enumerate(self.cache.layers):
            out.update(layer.keys[pick.to(layer.keys.device)], layer.values[pick.to(layer.values.device)], li)
        return out


class _Stop(Exception):
    """Raised by the hook after the last hook point a caller needs: the rest of the model is skipped."""


def _raise_stop(tensor: Tensor, hook: Any) -> None:
    raise _Stop


def forward(
    model: Any,
    batch: Batch,
    *,
    hooks: Sequence[Hook] = (),
    stop_at: str | None = None,
    prefixes: Prefixes | None = None,
    pick: Int[Tensor, " batch"] | None = None,
    cache: Any = None,
) -> Float[Tensor, "batch pos d_model"] | None:
    """Run ``batch`` with ``hooks``; return the final hidden states (``None`` when stopped early).

    ``stop_at`` is a hook point after which the pass ends (after the hooks on it have run).
    With ``prefixes`` and ``pick``, row ``i`` continues prefix ``pick[i]``: the mask covers the
    prefix, and positions continue it. ``cache`` (a fresh ``DynamicCache``) collects this
    pass's keys and values, for :func:`run_prefixes`.
    """
    device = torch.device(model.cfg.device)
    mask, positions, past = batch.mask, batch.positions, cache
    if prefixes is not None:
        if pick is None:
            raise ValueError("continuing prefixes needs pick: the prefix of every row")
        mask = torch.cat([prefixes.mask[pick], batch.mask], dim=1)
        positions = prefixes.mask.sum(1)[pick, None] + batch.positions
        past = prefixes.rows(pick)
    stop = [(stop_at, _raise_stop)] if stop_at else []
    with model.hooks(fwd_hooks=[*hooks, *stop]):
        try:
            out = model.original_model.base_model(
                input_ids=batch.tokens.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                past_key_values=past, use_cache=past is not None,
            )  # fmt: skip
        except _Stop:
            return None
    return out.last_hidden_state


def run_prefixes(model: Any, prefixes: Sequence[Sequence[int]], *, hooks: Sequence[Hook] = (), stop_at: str | None = None) -> Prefixes:
    """Run each distinct prefix once (left-padded, so every prefix ends at the last column)."""
    from transformers import DynamicCache

    batch = Batch.of(model, prefixes, padding_side="left")
    cache = DynamicCache()
    hidden = forward(model, batch, hooks=hooks, stop_at=stop_at, cache=cache)
    return Prefixes(cache, batch.mask, None if hidden is None else hidden[:, -1])


def logprobs(model: Any, hidden: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """Next-token log-probs from final hidden states (the unembedding only where it is needed)."""
    hf = model.original_model
    logits = hf.get_output_embeddings()(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.log_softmax(-1)


def generate(model: Any, rows: Sequence[Sequence[int]], *, max_new_tokens: int, repetition_penalty: float = 1.0) -> list[list[int]]:
    """Greedy continuations of ``rows`` (left-padded, KV cache), each cut at its first end-of-sequence token.

    Hooks active around the call (an edit, a recorder) act at every decoding step.
    """
    batch = Batch.of(model, rows, padding_side="left")
    device, eos = torch.device(model.cfg.device), model.tokenizer.eos_token_id
    out = model.original_model.generate(
        batch.tokens.to(device), attention_mask=batch.mask.to(device), max_new_tokens=max_new_tokens, do_sample=False,
        repetition_penalty=repetition_penalty, pad_token_id=pad_id(model), eos_token_id=eos,
    )  # fmt: skip
    new = out[:, batch.tokens.shape[1] :].tolist()
    return [ids[: ids.index(eos)] if eos in ids else ids for ids in new]
