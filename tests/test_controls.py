"""Positive controls: steering vectors against a hand-computed difference of means, residual edits batched
per row, the dense MLP edit against a hand-built boost, saving, and bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import vlens
from vlens import controls as C
from vlens import interventions as I
from vlens._io import VlensFileError
from vlens.activations import collect_stats
from vlens.data import build_prompts
from vlens.runner import Batch, forward, generate
from vlens.stats import NeuronStats

DIM = "Conservation"


@pytest.fixture(scope="module")
def prompts(small_data):
    # The tiny models share one tokenizer, so the prompts fit both.
    return build_prompts(small_data, vlens.tiny_model("llama"), pairs_per_question=1)


def one_dim(prompts, dim=DIM):
    return [p for p in prompts if p.dimension == dim]


def hand_vector(model, prompts, layer, scope):
    """Reference: one prompt at a time through run_with_cache, tokens picked from their character offsets."""
    sums = {"+": torch.zeros(vlens.model_info(model).d_model, dtype=torch.float64), "-": 0}
    counts = {"+": 0, "-": 0}
    for p in prompts:
        enc = vlens.encode(model, [p.text])
        n, tokens = enc.tokens.shape[1], enc.tokens
        if scope == "generated":  # greedy, one prompt at a time
            new = generate(model, [tokens[0].tolist()], max_new_tokens=3, repetition_penalty=1.1)[0]
            tokens = torch.tensor([tokens[0].tolist() + new])
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == f"blocks.{layer}.hook_resid_post")
        resid = cache[f"blocks.{layer}.hook_resid_post"][0].double()
        positions = range(tokens.shape[1])
        if scope == "question":
            keep = [pos < n and enc.offsets[0, pos, 0].item() >= p.shared_start for pos in positions]
        else:
            keep = [pos == n - 1 if scope == "last" else pos >= n for pos in positions]
        sums[p.pole] = sums[p.pole] + resid[torch.tensor(keep)].sum(0)
        counts[p.pole] += sum(keep)
    return (sums["+"] / counts["+"] - sums["-"] / counts["-"]).float()


@pytest.mark.parametrize("scope", ["question", "last"])
def test_steering_vector_is_the_difference_of_means(tiny, prompts, scope):
    ps = one_dim(prompts)
    ref = hand_vector(tiny, ps, 1, scope)
    size = ref.abs().max()  # small in a random tiny model: compare to 1e-5 of the vector's size

    def close(v, reference):
        torch.testing.assert_close(v / size, reference / size, rtol=0, atol=1e-5)

    v = C.steering_vector(tiny, ps, scope=scope, batch_size=4)  # default layer: 3 // 2 = 1
    assert v.shape == (vlens.model_info(tiny).d_model,) and size > 1e-4
    close(v, ref)
    close(C.steering_vector(tiny, ps, 1, scope=scope, batch_size=1, prefix_reuse=False), ref)
    assert (C.steering_vector(tiny, ps, scope="all") - ref).abs().max() > 0.1 * size  # the pooled tokens matter
    # every dimension in one pass gives each dimension's own vector
    both = C.steering_vectors(tiny, prompts, scope=scope, batch_size=5)
    assert both.dimensions == [DIM, "Self-Transcendence"] and both.layer == 1 and both.hook == "blocks.1.hook_resid_post"
    assert both.n_prompts == {DIM: len(ps), "Self-Transcendence": len(prompts) - len(ps)}
    close(both[DIM], ref)
    other = hand_vector(tiny, one_dim(prompts, "Self-Transcendence"), 1, scope)
    torch.testing.assert_close(both["st"] / other.abs().max(), other / other.abs().max(), rtol=0, atol=1e-5)


def test_steering_vector_over_generated_tokens(tiny_llama, prompts):
    ps = one_dim(prompts)[:4]
    ref = hand_vector(tiny_llama, ps, 2, "generated")
    v = C.steering_vector(tiny_llama, ps, 2, scope="generated", batch_size=2, max_new_tokens=3)
    torch.testing.assert_close(v / ref.abs().max(), ref / ref.abs().max(), rtol=0, atol=1e-5)


def capture(store, key):
    return lambda t, hook: store.setdefault(key, []).append(t.detach().clone())


def test_scale_s_adds_exactly_s_times_v_at_the_hook_and_nowhere_else(tiny_llama):
    d = vlens.model_info(tiny_llama).d_model
    v = torch.randn(d, generator=torch.Generator().manual_seed(1))
    edit = C.steering_edit(tiny_llama, v, 1, 2.5)
    assert edit.touched_layers().tolist() == [False, True, False] and not edit.neuron_layers().any()
    batch = Batch.of(tiny_llama, [[1, 5, 6, 7], [1, 9]])
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(3)]
    pre, post = {}, {}
    with tiny_llama.hooks(fwd_hooks=[(n, capture(pre, n)) for n in names]):
        with I.apply(tiny_llama, edit) as handle:
            assert [name for name, _ in handle.hooks(tiny_llama)] == ["blocks.1.hook_resid_post"]  # no hook elsewhere
            with tiny_llama.hooks(fwd_hooks=[(n, capture(post, n)) for n in names]):
                forward(tiny_llama, batch)
    torch.testing.assert_close(post[names[1]][0] - pre[names[1]][0], (2.5 * v).expand(2, 4, d), rtol=0, atol=1e-5)
    assert torch.equal(post[names[0]][0], pre[names[0]][0])  # before the edited block: untouched
    assert not torch.allclose(pre[names[2]][0], capture_clean(tiny_llama, batch, names[2]))  # after it: the edit flowed on


def capture_clean(model, batch, name):
    store = {}
    with model.hooks(fwd_hooks=[(name, capture(store, name))]):
        forward(model, batch)
    return store[name][0]


def test_scale_zero_is_a_no_op(tiny_llama):
    v = torch.randn(vlens.model_info(tiny_llama).d_model, generator=torch.Generator().manual_seed(4))
    vectors = C.SteeringVectors({DIM: v}, 1, {DIM: 2})
    batch = Batch.of(tiny_llama, [[1, 5, 6, 7], [1, 9]])
    clean = forward(tiny_llama, batch)
    for edit in (C.steering_edit(tiny_llama, vectors[DIM], 1, 0.0), vectors.edit(tiny_llama, DIM, "-", 0)):
        assert not edit.touched_layers().any()
        with I.apply(tiny_llama, edit):
            assert torch.equal(forward(tiny_llama, batch), clean)


def test_rows_with_different_edits_equal_each_edit_alone(tiny_llama):
    info = vlens.model_info(tiny_llama)
    g = torch.Generator().manual_seed(2)
    v1, v2 = torch.randn(info.d_model, generator=g), torch.randn(info.d_model, generator=g)
    mixed = C.steering_edit(tiny_llama, v2, 0, 1.0, label="steer + clamp")
    mixed.clamp_mask[2, :10], mixed.hook = True, "gate"  # a neuron edit and a residual vector in one edit
    gate = I.Edit.identity(info.n_layers, info.d_mlp, label="gate boost", hook="gate")
    gate.boost[0, 3] = 4.0  # sets located at the gate batch with steering edits (those act at no neuron hook)
    edits = [I.Edit.identity(info.n_layers, info.d_mlp), C.steering_edit(tiny_llama, v1, 1, 3.0),
             C.steering_edit(tiny_llama, v2, 2, -1.5), mixed, gate]  # fmt: skip
    ids = [[1, 5, 6, 7, 8], [1, 9, 10]]
    rows = [r for r in ids for _ in edits]
    with I.apply(tiny_llama, edits, rows=torch.arange(len(edits)).repeat(len(ids))):
        together = forward(tiny_llama, Batch.of(tiny_llama, rows))
    for k, edit in enumerate(edits):
        with I.apply(tiny_llama, edit):
            alone = forward(tiny_llama, Batch.of(tiny_llama, ids))
        for i, r in enumerate(ids):
            torch.testing.assert_close(together[i * len(edits) + k, : len(r)], alone[i, : len(r)], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together[1], together[0])


def test_residual_edits_follow_the_scope_during_kv_cached_generation(tiny_llama):
    d = vlens.model_info(tiny_llama).d_model
    v = torch.randn(d, generator=torch.Generator().manual_seed(3))
    toks = vlens.encode(tiny_llama, ["hello there"]).tokens
    for scope in ("generated", "prompt", "all"):
        pre, post = {}, {}
        with tiny_llama.hooks(fwd_hooks=[("blocks.1.hook_resid_post", capture(pre, "x"))]):
            with I.apply(tiny_llama, C.steering_edit(tiny_llama, v, 1, 2.0), scope=scope):
                with tiny_llama.hooks(fwd_hooks=[("blocks.1.hook_resid_post", capture(post, "x"))]):
                    tiny_llama.original_model.generate(toks, max_new_tokens=3, do_sample=False)
        assert post["x"][0].shape[1] == toks.shape[1] and all(t.shape[1] == 1 for t in post["x"][1:])
        for step, (before, after) in enumerate(zip(pre["x"], post["x"], strict=True)):
            edited = scope == "all" or (scope == "prompt") == (step == 0)
            torch.testing.assert_close(after - before, (2.0 * v).expand_as(after) if edited else torch.zeros_like(after), rtol=0, atol=1e-5)


@pytest.mark.parametrize("hook", ["post", "gate"])
def test_dense_mlp_edit_equals_a_hand_built_boost(tiny_llama, prompts, hook):
    stats = collect_stats(tiny_llama, one_dim(prompts), hook=hook, layers=[0, 2], batch_size=6, progress=False)
    info = vlens.model_info(tiny_llama)
    mean = stats.sum / stats.tokens[:, None, None]
    for pole, sign in (("+", 1), ("-", -1)):
        hand = I.Edit.identity(info.n_layers, info.d_mlp, hook=hook)
        hand.boost[[0, 2]] = (0.7 * sign * (mean[0] - mean[1])).float()
        edit = C.dense_mlp_edit(stats, DIM, pole, 0.7)
        assert edit.hook == hook and edit.keep_prob == 1 and edit.resid is None
        torch.testing.assert_close(edit.boost, hand.boost, rtol=1e-6, atol=1e-7)
        assert torch.equal(edit.touched_layers(), hand.touched_layers())
        ids = Batch.of(tiny_llama, [[1, 5, 6, 7], [1, 9]])
        with I.apply(tiny_llama, edit):
            ours = forward(tiny_llama, ids)
        with I.apply(tiny_llama, hand):
            theirs = forward(tiny_llama, ids)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    only = C.dense_mlp_edit(stats, "co", "+", 1.0, layers=[2])
    assert only.boost[0].eq(0).all() and torch.allclose(only.boost[2], (mean[0, 1] - mean[1, 1]).float())


def test_save_load_round_trip(tmp_path, tiny_llama, prompts):
    vectors = C.steering_vectors(tiny_llama, prompts, layer=2, scope="last", batch_size=6)
    vectors.save(tmp_path / "steering")
    back = C.SteeringVectors.load(tmp_path / "steering")
    assert (back.layer, back.hook, back.scope, back.n_prompts) == (2, "blocks.2.hook_resid_post", "last", vectors.n_prompts)
    assert back.dimensions == vectors.dimensions and back.meta == vectors.meta
    for dim in vectors.dimensions:
        assert torch.equal(back[dim], vectors[dim])
    assert torch.equal(back.edit(tiny_llama, DIM, "+", 1.5).resid, vectors.edit((3, 96), DIM, "+", 1.5).resid)
    stats = NeuronStats.empty([f"{DIM}:+", f"{DIM}:-"], [0], 96)
    stats.save(tmp_path / "stats")
    with pytest.raises(VlensFileError, match="holds a 'NeuronStats', not a 'SteeringVectors'"):
        C.SteeringVectors.load(tmp_path / "stats")


def test_bad_input(tiny_llama, tiny_gpt2, prompts):
    ps = one_dim(prompts)
    v = torch.ones(vlens.model_info(tiny_llama).d_model)
    for bad in (3, -1, 1.0):
        with pytest.raises(ValueError, match=rf"control layer {bad} is out of range: this model has layers 0\.\.2 \(the default is the middle layer, 1\)"):
            C.steering_vector(tiny_llama, ps, bad)
        with pytest.raises(ValueError, match="control layer .* out of range"):
            C.steering_edit(tiny_llama, v, bad, 1.0)
    with pytest.raises(ValueError, match="no prompts given"):
        C.steering_vector(tiny_llama, [])
    with pytest.raises(ValueError, match=r"the prompts of Conservation hold only the '\+' pole"):
        C.steering_vectors(tiny_llama, [p for p in prompts if p.pole == "+" or p.dimension != DIM])
    with pytest.raises(ValueError, match="takes the prompts of one dimension, got Conservation, Self-Transcendence"):
        C.steering_vector(tiny_llama, prompts)
    for bad in (math.inf, math.nan, "2", None):
        with pytest.raises(ValueError, match="scale must be a finite number"):
            C.steering_edit(tiny_llama, v, 1, bad)
    vectors = C.SteeringVectors({DIM: v}, 1, {DIM: 2}, meta={"model_fingerprint": vlens.model_info(tiny_llama).fingerprint})
    with pytest.raises(ValueError, match="scale is the dose and must be >= 0"):
        vectors.edit(tiny_llama, DIM, "+", -1.0)
    with pytest.raises(ValueError, match="unknown pole"):
        vectors.edit(tiny_llama, DIM, "up", 1.0)
    with pytest.raises(ValueError, match="no steering vectors for dimension 'Self-Enhancement'; these steering vectors cover Conservation"):
        vectors.edit(tiny_llama, "Self-Enhancement", "+", 1.0)
    with pytest.raises(ValueError, match=r"come from another model \(tiny-llama\) than this one \(tiny-gpt2\)"):
        vectors.edit(tiny_gpt2, DIM, "+", 1.0)
    with pytest.raises(ValueError, match="vector has 63 values, the model's residual stream has d_model 64"):
        C.steering_edit(tiny_llama, v[:-1], 1, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        C.steering_edit(tiny_llama, v * math.nan, 1, 1.0)
    with pytest.raises(ValueError, match=r"resid must be \[n_layers, d_model\] with n_layers = 3"):
        dataclasses.replace(I.Edit.identity(3, 96), resid=torch.zeros(2, 64))
    wrong = C.steering_edit((3, 96), torch.ones(32), 1, 1.0)  # built without a model: checked when applied
    with pytest.raises(ValueError, match="residual stream is 3 layers x d_model 64"):
        with I.apply(tiny_llama, wrong):
            pass

    stats = NeuronStats.empty([f"{DIM}:+", "Self-Transcendence:+", "Self-Transcendence:-"], [0, 1], 96, meta={"hook": "post"})
    stats.tokens += 1
    with pytest.raises(ValueError, match=r"the statistics of Conservation hold only the '\+' pole"):
        C.dense_mlp_edit(stats, DIM, "+", 1.0, shape=(3, 96))
    with pytest.raises(ValueError, match="do not record their model's size .* pass shape="):
        C.dense_mlp_edit(stats, "Self-Transcendence", "+", 1.0)
    with pytest.raises(ValueError, match=r"layer\(s\) \[2\] have no statistics: these cover layers \[0, 1\]"):
        C.dense_mlp_edit(stats, "Self-Transcendence", "+", 1.0, layers=[1, 2], shape=(3, 96))
    with pytest.raises(ValueError, match=r"no statistics for dimension 'oc' \(Openness_to_Change\); these statistics cover Conservation, Self-Tr"):
        C.dense_mlp_edit(stats, "oc", "+", 1.0, shape=(3, 96))
    for bad in (math.nan, -0.5):
        with pytest.raises(ValueError, match="scale"):
            C.dense_mlp_edit(stats, "Self-Transcendence", "-", bad, shape=(3, 96))
