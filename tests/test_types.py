"""The shared types: PoleKey, NeuronStats.to, tiny_model's random state, the version and locate's inputs."""

from __future__ import annotations

import pytest
import torch

import vlens
from vlens.values import PoleKey


def test_pole_key_round_trip_and_errors():
    key = PoleKey.parse("Self-Enhancement:-")
    assert key == ("Self-Enhancement", "-") and key.dimension == "Self-Enhancement" and str(key) == "Self-Enhancement:-"
    assert vlens.stats.class_label("Conservation", "+") == "Conservation:+"
    for bad in ("Conservation", "Conservation:x", ":+", ""):
        with pytest.raises(ValueError, match="not a pole key"):
            PoleKey.parse(bad)


def test_version_has_one_source():
    from vlens import _io, _version

    assert vlens.__version__ == _version.__version__ == _io.vlens_version()


def test_neuron_stats_to_moves_every_tensor():
    stats = vlens.NeuronStats.empty(["A:+", "A:-"], [0], 4, hist_edges=torch.tensor([0.0, 1.0]), meta={"hook": "post"})
    moved = stats.to("meta")
    for name in ("tokens", "active", "sum", "sumsq", "hist", "hist_edges", "prompts"):
        assert getattr(moved, name).device.type == "meta", name
        assert getattr(stats, name).device.type == "cpu", name
    assert moved.meta == stats.meta and moved.meta is not stats.meta


def test_tiny_model_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = vlens.tiny_model("gpt2", seed=1, n_layers=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = vlens.tiny_model("gpt2", seed=1, n_layers=1)  # the seed still decides the weights
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_locate_accepts_the_readme_dataset_dict(tiny_llama):
    options = dict(dimensions=["co"], max_pairs=2, selection="top_k:5", progress=False)
    from_dict = vlens.locate(tiny_llama, vlens.load_valueinsight(), **options)
    reference = vlens.locate(tiny_llama, vlens.load_value_data(), **options)
    assert isinstance(from_dict, vlens.LocateResult) and from_dict.stats.equal(reference.stats)
    with pytest.raises(TypeError, match="DatasetDict of vlens.load_valueinsight"):
        vlens.locate(tiny_llama, ["Conservation:+"], **options)
