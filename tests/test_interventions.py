"""Interventions change exactly the targeted neurons at the targeted positions, and always clean up."""

from __future__ import annotations

import math

import pytest
import torch

import vlens
from vlens import interventions as I
from vlens.neurons import NeuronSet
from vlens.stats import NeuronStats


def neuron_set(model, pole="+", layers=(0, 0, 2), neurons=(5, 7, 11), dimension="Conservation"):
    info = vlens.model_info(model)
    n = len(layers)
    return NeuronSet(dimension, pole, torch.tensor(layers), torch.tensor(neurons), torch.ones(n), info.n_layers, info.d_mlp,
                     act_prob=torch.tensor([0.5, 0.25, 1.0])[:n], delta=torch.tensor([0.3, 0.1, 0.15])[:n],
                     provenance={"model_fingerprint": info.fingerprint})  # fmt: skip


def run_capturing(model, tokens, ctx):
    """hook_post before (pre) and after (post) the edit, for every layer."""
    pre, post = {}, {}
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(vlens.model_info(model).n_layers)]

    def capture(store):
        def fn(t, hook):
            store.setdefault(hook.name, []).append(t.detach().clone())

        return fn

    with model.hooks(fwd_hooks=[(n, capture(pre)) for n in names]):
        with ctx:
            with model.hooks(fwd_hooks=[(n, capture(post)) for n in names]):
                model(tokens)
    return pre, post


def hp(store, layer, i=0):
    key = next(k for k in store if k.startswith(f"blocks.{layer}.mlp"))
    return store[key][i]


@pytest.fixture(scope="module")
def toks(tiny_llama):
    return vlens.encode(tiny_llama, ["hello there, friend", "hi"]).tokens


def expected(pre, layer, ns, fn):
    out = pre.clone()
    sel = ns.layers == layer
    for n in ns.neurons[sel].tolist():
        out[..., n] = fn(pre[..., n], n)
    return out


@pytest.mark.parametrize("kind", ["scale", "clamp", "ablate", "ablate_mean", "patch"])
def test_edits_change_exactly_the_targeted_neurons(tiny_llama, toks, kind):
    ns = neuron_set(tiny_llama)
    info = vlens.model_info(tiny_llama)
    stats = NeuronStats.empty(["Conservation:+", "Conservation:-"], list(range(info.n_layers)), info.d_mlp)
    stats.tokens += torch.tensor([2.0, 4.0], dtype=torch.float64)
    stats.sum[0] += 1.0  # mean + = 0.5
    stats.sum[1] += torch.arange(info.d_mlp, dtype=torch.float64)  # mean - = n / 4
    ctx, fn = {
        "scale": (I.scale(tiny_llama, ns, 2.5), lambda a, n: 2.5 * a),
        "clamp": (I.clamp(tiny_llama, ns), lambda a, n: a.clamp(max=0)),
        "ablate": (I.ablate(tiny_llama, ns), lambda a, n: torch.zeros_like(a)),
        "ablate_mean": (I.ablate(tiny_llama, ns, value="mean", stats=stats), lambda a, n: torch.full_like(a, (1.0 + n) / 6)),
        "patch": (I.patch(tiny_llama, ns, stats), lambda a, n: torch.full_like(a, n / 4)),
    }[kind]
    pre, post = run_capturing(tiny_llama, toks, ctx)
    for layer in range(info.n_layers):
        torch.testing.assert_close(hp(post, layer), expected(hp(pre, layer), layer, ns, fn), rtol=1e-6, atol=1e-6)


def test_value_edit_matches_the_paper_formula(tiny_llama, toks):
    target, opposing = neuron_set(tiny_llama), neuron_set(tiny_llama, "-", layers=(1, 2), neurons=(3, 11))
    gamma = 1.5
    weight = torch.sigmoid(10 * (target.delta - 0.15)) * target.act_prob * gamma
    pre, post = run_capturing(tiny_llama, toks, I.steer(tiny_llama, target, opposing, gamma, keep_prob=1.0))
    for layer in range(3):
        want = hp(pre, layer).clone()
        for ln, n in zip(opposing.layers.tolist(), opposing.neurons.tolist(), strict=True):
            if ln == layer:
                want[..., n] = want[..., n].clamp(max=0)
        for ln, n, w in zip(target.layers.tolist(), target.neurons.tolist(), weight.tolist(), strict=True):
            if ln == layer:
                want[..., n] = want[..., n] + w
        torch.testing.assert_close(hp(post, layer), want, rtol=1e-6, atol=1e-6)
    # keep mask: seeded, Bernoulli(0.5) per neuron, the same for the same seed
    _, a = run_capturing(tiny_llama, toks, I.steer(tiny_llama, target, None, gamma, keep_prob=0.5, seed=3, mode="boost_only"))
    _, b = run_capturing(tiny_llama, toks, I.steer(tiny_llama, target, None, gamma, keep_prob=0.5, seed=3, mode="boost_only"))
    assert torch.equal(hp(a, 2), hp(b, 2))


def test_modes_and_reverse(tiny_llama):
    shape = (3, 96)
    t, o = neuron_set(tiny_llama), neuron_set(tiny_llama, "-", layers=(1,), neurons=(3,))
    assert not I.value_edit(shape, t, o, 1.0, mode="boost_only").clamp_mask.any()
    assert not I.value_edit(shape, t, o, 1.0, mode="clamp_only").boost.any()
    rev = I.value_edit(shape, o, t, 1.0, mode="paper")  # reverse steering = swapped sets
    assert rev.clamp_mask[0, 5] and rev.boost[1, 3] > 0
    with pytest.raises(ValueError, match="unknown edit mode"):
        I.value_edit(shape, t, o, 1.0, mode="gentle")


def test_edits_during_kv_cached_generation(tiny_llama, toks):
    ns = neuron_set(tiny_llama, layers=(1,), neurons=(4,))
    calls = []

    def observe(t, hook):
        calls.append(t[..., 4].detach().clone())

    pre = []

    def before(t, hook):
        pre.append(t[..., 4].detach().clone())

    for scope in ("generated", "prompt", "all"):
        calls.clear()
        pre.clear()
        with tiny_llama.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", before)]):
            with I.ablate(tiny_llama, ns, scope=scope):
                with tiny_llama.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", observe)]):
                    tiny_llama.original_model.generate(toks[:1], max_new_tokens=4, do_sample=False)
        assert calls[0].shape[1] == toks.shape[1] and all(c.shape[1] == 1 for c in calls[1:])  # prompt, then [b, 1, n]
        for step, (unedited, after) in enumerate(zip(pre, calls, strict=True)):
            edited = scope == "all" or (scope == "prompt") == (step == 0)
            assert torch.equal(after, torch.zeros_like(after) if edited else unedited)


def test_hooks_are_removed_also_after_an_exception(tiny_llama, toks):
    ns = neuron_set(tiny_llama)
    clean = tiny_llama(toks)
    with pytest.raises(RuntimeError, match="boom"):
        with I.scale(tiny_llama, ns, 0.0):
            assert not torch.allclose(tiny_llama(toks), clean)
            raise RuntimeError("boom")
    assert torch.equal(tiny_llama(toks), clean)
    with I.clamp(tiny_llama, ns):
        tiny_llama(toks)
    assert torch.equal(tiny_llama(toks), clean)


def test_bad_input(tiny_llama, tiny_gpt2):
    with pytest.raises(ValueError, match="neuron indices"):
        neuron_set(tiny_llama, neurons=(5, 7, 500))
    foreign = neuron_set(tiny_gpt2)
    with pytest.raises(ValueError, match="another model"):
        with I.scale(tiny_llama, foreign, 2.0):
            pass
    ns = neuron_set(tiny_llama)
    for bad in (math.inf, math.nan, "2"):
        with pytest.raises(ValueError, match="gamma must be a finite number"):
            with I.scale(tiny_llama, ns, bad):
                pass
    with pytest.raises(ValueError, match="unknown intervention scope"):
        with I.scale(tiny_llama, ns, 2.0, scope="middle"):
            pass
    with pytest.raises(ValueError, match="mean ablation needs"):
        I.ablate_edit((3, 96), ns, value="mean")


def test_a_hand_built_set_without_act_prob_says_so():
    """Issue 15: the message was "v must be 'prob' or 'p95' ... got 'prob'"."""
    bare = NeuronSet("Conservation", "+", torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]), 3, 96, delta=torch.tensor([0.2]))
    with pytest.raises(ValueError, match=r"Conservation:\+ has no act_prob, which the edit's v='prob' needs"):
        I.value_edit((3, 96), bare, None, 1.0)
    with pytest.raises(ValueError, match="v must be 'prob'"):
        I.value_edit((3, 96), bare, None, 1.0, v="mean")


def test_partial_clamp_and_the_dosed_edit(tiny_llama):
    """clamp_strength c: a <- a - c * max(a, 0); the dosed edit is the paper's edit from dose 1 on and nothing at 0."""
    from vlens.interventions import apply, dosed_edit, value_edit

    shape = (3, 96)
    ns = NeuronSet("Conservation", "+", torch.tensor([1, 1]), torch.tensor([3, 7]), torch.ones(2), *shape,
                   act_prob=torch.ones(2), delta=torch.ones(2))  # fmt: skip
    other = NeuronSet("Conservation", "-", torch.tensor([1]), torch.tensor([5]), torch.ones(1), *shape,
                      act_prob=torch.ones(1), delta=torch.ones(1))  # fmt: skip
    seen = {}
    with apply(tiny_llama, [dosed_edit(shape, ns, other, 0.0, keep_prob=1.0), dosed_edit(shape, ns, other, 0.5, keep_prob=1.0),
                            value_edit(shape, ns, other, 2.0, keep_prob=1.0)], rows=torch.tensor([0, 1, 2])):  # fmt: skip
        tiny_llama.run_with_hooks(torch.tensor([[1, 2, 3]] * 3), fwd_hooks=[("blocks.1.mlp.hook_post", lambda a, hook: seen.update(a=a.clone()))])
    with torch.no_grad():
        _, cache = tiny_llama.run_with_cache(torch.tensor([[1, 2, 3]]))
    raw = cache["blocks.1.mlp.hook_post"][0]
    a = seen["a"]
    assert torch.allclose(a[0], raw, atol=1e-6)  # dose 0: unedited
    half = raw[:, 5] - 0.5 * raw[:, 5].clamp(min=0)
    assert torch.allclose(a[1][:, 5], half, atol=1e-6)  # half a clamp
    assert torch.allclose(a[2][:, 5], raw[:, 5].clamp(max=0), atol=1e-6)  # the paper's clamp
    assert dosed_edit(shape, ns, other, 2.0).clamp_strength == 1.0
    with pytest.raises(ValueError, match="dose must be >= 0"):
        dosed_edit(shape, ns, other, -1.0)
