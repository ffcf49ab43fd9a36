"""vlens.locate end to end: tiny models for mechanics, the offline model for the real thing."""

from __future__ import annotations

import pytest
import torch

import vlens
from vlens.activations import DEFAULT_HOOK
from vlens.locate import LocateResult, from_stats, locate


def test_locate_returns_sets_per_dimension_and_pole(tmp_path, tiny_llama, small_data):
    result = locate(tiny_llama, small_data, selection="top_k:10", batch_size=4, progress=False, hist_edges="auto")
    assert set(result.neuron_sets) == {f"{d}:{p}" for d in ("Conservation", "Self-Transcendence") for p in "+-"}
    s = result["Conservation:+"]
    assert len(s) == 10 and s.provenance["model_fingerprint"] == vlens.model_info(tiny_llama).fingerprint
    assert s.provenance["dataset_sha256"] == small_data.sha256 and s.provenance["hook"] == DEFAULT_HOOK
    assert s.p95 is not None and s.act_prob is not None
    assert result.scores["Conservation"]["delta"].shape == (3, 96)
    result.save(tmp_path / "run")
    back = LocateResult.load(tmp_path / "run")
    assert back.stats.equal(result.stats)
    for name, ns in result.neuron_sets.items():
        assert torch.equal(back[name].neurons, ns.neurons) and back[name].provenance == ns.provenance
    # Another rule on the same statistics needs no new forward pass.
    again = from_stats(result.stats, "top_frac:0.1")
    assert len(again["Conservation:-"]) == round(0.1 * 3 * 96)
    assert result.overlap()[("Conservation:+", "Conservation:+")] == 1.0
    assert "Conservation:+" in result.summary()


def test_locate_on_ready_prompts_and_dimension_filter(tiny_gpt2, small_data):
    prompts = vlens.data.build_prompts(small_data, tiny_gpt2)
    result = locate(tiny_gpt2, prompts, dimensions=["co"], selection="top_k:5", progress=False)
    assert result.dimensions == ["Conservation"]


@pytest.mark.model
def test_locate_on_the_offline_model_is_deterministic(smollm):
    kwargs = dict(max_pairs=3, batch_size=8, selection="top_k:100", progress=False)
    first, second = locate(smollm, **kwargs), locate(smollm, **kwargs)
    assert len(first.neuron_sets) == 8
    for name, ns in first.neuron_sets.items():
        assert len(ns) == 100 and ns.layers.max() < 30 and ns.neurons.max() < 1536
        assert torch.equal(ns.layers, second[name].layers) and torch.equal(ns.neurons, second[name].neurons)
    assert first.stats.equal(second.stats)
