"""The runner (the one place that runs a model) on both tiny architectures, and instruments as plug-ins."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlens
from vlens.evaluate import evaluate_edits, metric_rows
from vlens.instruments import Instrument, ScoredSeq
from vlens.interventions import Edit, apply, value_edit
from vlens.locate import locate
from vlens.runner import Batch, forward, hook_name, logprobs, run_prefixes

ROWS = [[1, 5, 9, 13, 17, 21], [1, 7, 8], [1, 30, 31, 32, 33]]


def test_batched_equals_unbatched_with_padding_on_either_side(tiny):
    with torch.inference_mode():
        alone = [forward(tiny, Batch.of(tiny, [r]))[0] for r in ROWS]
        for side in ("right", "left"):
            batch = Batch.of(tiny, ROWS, padding_side=side)
            hidden = forward(tiny, batch)
            for i in range(len(ROWS)):
                cols = batch.mask[i].bool()
                torch.testing.assert_close(hidden[i, cols], alone[i], rtol=1e-5, atol=1e-5)


def test_logprobs_equal_the_models_own(tiny):
    with torch.inference_mode():
        batch = Batch.of(tiny, ROWS[:1])
        ours = logprobs(tiny, forward(tiny, batch))
        theirs = tiny(batch.tokens).log_softmax(-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_prefix_continuation_equals_the_full_sequence(tiny):
    """Rows continuing a shared prefix's keys and values equal the full forward pass (both architectures)."""
    prefixes = [[1, 4, 5, 6], [1, 9]]
    suffixes, pick = [[10, 11, 12], [13], [14, 15]], torch.tensor([0, 1, 0])
    with torch.inference_mode():
        done = run_prefixes(tiny, prefixes)
        cont = forward(tiny, Batch.of(tiny, suffixes), prefixes=done, pick=pick)
        for i, s in enumerate(suffixes):
            full = forward(tiny, Batch.of(tiny, [prefixes[pick[i]] + s]))[0]
            torch.testing.assert_close(cont[i, : len(s)], full[-len(s) :], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(done.last_hidden[pick[i]], full[len(prefixes[pick[i]]) - 1], rtol=1e-5, atol=1e-5)


def test_stop_at_skips_the_rest_of_the_model(tiny):
    seen: list[str] = []
    record = lambda name: (name, lambda t, hook: seen.append(name))  # noqa: E731
    hooks = [record(hook_name("post", layer)) for layer in range(3)]
    with torch.inference_mode():
        assert forward(tiny, Batch.of(tiny, ROWS), hooks=hooks, stop_at=hook_name("post", 1)) is None
    assert seen == [hook_name("post", 0), hook_name("post", 1)]
    assert not any(h.hooks for h in tiny.hook_dict.values() if hasattr(h, "hooks"))  # every hook removed


def test_gate_located_sets_are_edited_at_the_gate(tiny_llama, small_data):
    """A set located at the gate activation is edited as act(hook_pre), before the up-projection."""
    gate_sets = locate(tiny_llama, small_data, hook="gate", selection="top_k:6", progress=False)
    edit = value_edit((3, 96), gate_sets["Conservation:+"], gate_sets["Conservation:-"], 2.0, keep_prob=1.0)
    assert edit.hook == "gate"
    layer = int(edit.touched_layers().nonzero()[0])
    seen: dict[str, torch.Tensor] = {}
    keep = lambda key: (f"blocks.{layer}.mlp.{key}", lambda x, hook: seen.__setitem__(key, x.clone()))  # noqa: E731
    with torch.inference_mode(), tiny_llama.hooks(fwd_hooks=[keep("hook_pre"), keep("hook_pre_linear")]):
        with apply(tiny_llama, edit):  # the hook_post recorder below runs after the edit
            forward(tiny_llama, Batch.of(tiny_llama, ROWS[:1]), hooks=[keep("hook_post")])
    gate = torch.nn.functional.silu(seen["hook_pre"])
    expected = torch.where(edit.clamp_mask[layer], gate.clamp(max=0), gate) + edit.boost[layer]
    torch.testing.assert_close(seen["hook_post"], expected * seen["hook_pre_linear"], rtol=1e-5, atol=1e-5)
    post_sets = locate(tiny_llama, small_data, hook="post", selection="top_k:6", progress=False)
    mixed = [edit, value_edit((3, 96), post_sets["Conservation:+"], post_sets["Conservation:-"], 1.0)]
    with pytest.raises(ValueError, match="different hook points"):
        with apply(tiny_llama, mixed):
            pass


class FirstTokenSurprise(Instrument):
    """A new instrument defined here, touching no vlens file: the NLL of each text's second token."""

    name = "surprise"

    def __init__(self, texts: list[str]):
        self.items = texts

    def sequences(self, model: Any) -> list[ScoredSeq]:
        return [ScoredSeq(self.name, (), vlens.models.tokenize(model, t)[0], 1, (i,)) for i, t in enumerate(self.items)]

    def read(self, seq: ScoredSeq, lp: torch.Tensor, ref: torch.Tensor | None) -> float:
        return -lp[0, seq.ids[1]].item()

    def summarise(self, readings: dict[tuple, Any]) -> dict[str, Any]:
        return {"surprise": sum(readings.values()) / len(readings)}


def test_an_instrument_is_one_class(tiny_llama):
    texts = ["The weather is mild today.", "Bread is baked in an oven."]
    inst = FirstTokenSurprise(texts)
    metrics = evaluate_edits(tiny_llama, [Edit.identity(3, 96)], [inst])[0]
    with torch.inference_mode():
        expected = []
        for t in texts:
            ids = vlens.models.tokenize(tiny_llama, t)[0]
            expected.append(-logprobs(tiny_llama, forward(tiny_llama, Batch.of(tiny_llama, [ids])))[0, 0, ids[1]].item())
    assert metrics["surprise"] == pytest.approx(sum(expected) / 2, abs=1e-5)
    assert metric_rows({"edit": "none"}, metrics) == [{"edit": "none", "metric": "surprise", "measured": "", "value": metrics["surprise"]}]
