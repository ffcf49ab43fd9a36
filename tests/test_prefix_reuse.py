"""Prefix reuse (shared prompt prefixes computed once) gives the same numbers as full prompts."""

from __future__ import annotations

import pytest
import torch

import vlens
from vlens.activations import collect_stats
from vlens.data import build_prompts
from vlens.evaluate import Instruments, evaluate_edits
from vlens.interventions import Edit, value_edit
from vlens.locate import from_stats, locate


def assert_stats_agree(a, b):
    assert torch.equal(a.tokens, b.tokens)
    for name in ("sum", "sumsq"):
        x, y = getattr(a, name), getattr(b, name)
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5 * x.abs().max().item())
    # An activation within float rounding of 0 may flip sign: at most one token per neuron.
    assert (a.active - b.active).abs().max() <= 1


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_locate_statistics_and_sets_agree(tiny, padding_side):
    data = vlens.load_value_data()
    prompts = build_prompts(data, tiny, dimensions=["co"], max_pairs=24)  # descriptions repeat: prefixes are shared
    full = collect_stats(tiny, prompts, scope="question", batch_size=6, progress=False, prefix_reuse=False)
    reused = collect_stats(tiny, prompts, scope="question", batch_size=6, progress=False, prefix_reuse=True,
                           padding_side=padding_side)  # fmt: skip
    assert reused.meta["prefix_reuse"] is True and full.meta["prefix_reuse"] is False
    assert_stats_agree(full, reused)
    for name, ns in from_stats(full, "top_k:20").neuron_sets.items():
        assert torch.equal(ns.mask(), from_stats(reused, "top_k:20")[name].mask())


def test_prefix_reuse_only_under_question_scope(tiny_llama, small_data):
    prompts = build_prompts(small_data, tiny_llama, pairs_per_question=1)
    stats = collect_stats(tiny_llama, prompts, scope="all", progress=False, prefix_reuse=True)
    assert stats.meta["prefix_reuse"] is False  # the prefix is recorded under "all": no reuse possible


def test_orientation_agrees_on_gpt2(tiny_gpt2):
    inst = Instruments.default(max_dilemmas=1, max_portrait=4, max_neutral=1)
    info = vlens.model_info(tiny_gpt2)
    g = torch.Generator().manual_seed(0)
    ns = vlens.NeuronSet("Conservation", "+", torch.randint(0, 3, (10,), generator=g), torch.randperm(96, generator=g)[:10],
                         torch.ones(10), info.n_layers, info.d_mlp, act_prob=torch.rand(10, generator=g), delta=torch.rand(10, generator=g))  # fmt: skip
    edits = [Edit.identity(3, 96), value_edit((3, 96), ns, None, 2.0, seed=1)]
    a = evaluate_edits(tiny_gpt2, edits, inst, scope="all", prefix_reuse=False)
    b = evaluate_edits(tiny_gpt2, edits, inst, scope="all", prefix_reuse=True)
    for x, y in zip(a, b, strict=True):
        for key in ("orientation", "plus_preferred", "logodds", "portrait"):
            for d in x[key]:
                assert y[key][d] == pytest.approx(x[key][d], abs=1e-5, rel=1e-5)


@pytest.mark.model
def test_prefix_reuse_on_the_offline_model(smollm):
    kwargs = dict(dimensions=["Conservation"], max_pairs=12, selection="top_k:200", progress=False, batch_size=8,
                  scope="question")  # prefix reuse is for the question scope
    full_ = locate(smollm, **kwargs, prefix_reuse=False)
    reused = locate(smollm, **kwargs, prefix_reuse=True)
    assert_stats_agree(full_.stats, reused.stats)
    for name, ns in full_.neuron_sets.items():
        assert torch.equal(ns.mask(), reused[name].mask())
    inst = Instruments.default(max_dilemmas=1, max_portrait=4, max_neutral=1)
    edits = [Edit.identity(30, 1536), value_edit((30, 1536), full_["Conservation:+"], full_["Conservation:-"], 1.0)]
    a = evaluate_edits(smollm, edits, inst, scope="all", prefix_reuse=False)
    b = evaluate_edits(smollm, edits, inst, scope="all", prefix_reuse=True)
    for x, y in zip(a, b, strict=True):
        for d in x["orientation"]:
            assert y["orientation"][d] == pytest.approx(x["orientation"][d], abs=1e-5)
        assert y["kl"] == pytest.approx(x["kl"], abs=1e-5)
