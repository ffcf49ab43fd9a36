"""Shared fixtures: tiny random models (fast) and the real offline SmolLM2 model (marked `model`)."""

from __future__ import annotations

import pytest
import torch

import vlens


@pytest.fixture(scope="session")
def tiny_llama():
    return vlens.tiny_model("llama", seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2():
    return vlens.tiny_model("gpt2", seed=0)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny(request):
    return vlens.tiny_model(request.param, seed=0)


@pytest.fixture(scope="session")
def smollm():
    torch.manual_seed(0)
    return vlens.load_model()
