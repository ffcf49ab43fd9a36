"""scripts/probe_pole.py: the pair-held-out probe accuracy on synthetic descriptions with a known answer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def probe_script():
    spec = importlib.util.spec_from_file_location("probe_pole", ROOT / "scripts" / "probe_pole.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def synthetic(n_pairs: int, signal: float, seed: int = 0):
    """Minimal pairs: both sides share a pair-specific topic (axes 1-7); the pole adds ``+-signal`` on axis 0."""
    rng = np.random.default_rng(seed)
    topic = rng.normal(size=(n_pairs, 8)) * 3
    topic[:, 0] = 0
    x = np.concatenate([topic + rng.normal(size=topic.shape) * 0.1, topic + rng.normal(size=topic.shape) * 0.1])
    y = np.array([1] * n_pairs + [0] * n_pairs)
    x[:, 0] += np.where(y == 1, signal, -signal)
    return x, y, np.tile(np.arange(n_pairs), 2)


def test_a_pole_axis_is_found_on_unseen_pairs_and_noise_is_not():
    probe = probe_script()
    x, y, pairs = synthetic(40, signal=1.0)
    assert probe.pair_held_out_accuracy(x, y, pairs) == 1.0
    x, y, pairs = synthetic(40, signal=0.0)
    assert probe.pair_held_out_accuracy(x, y, pairs) < 0.75  # no pole in the data: near chance


def test_memorised_pairs_do_not_count():
    """Labels that only a pair's own identity predicts (a pole axis that flips from pair to pair): a probe that
    saw the pair would be right, one that did not is at chance; the pair-held-out accuracy must say chance."""
    probe = probe_script()
    rng = np.random.default_rng(1)
    n = 60
    sign = rng.choice([-1.0, 1.0], size=n)  # each pair's own direction of the pole along its topic
    topic = rng.normal(size=(n, 8))
    x = np.concatenate([topic * (1 + 0.5 * sign[:, None]), topic * (1 - 0.5 * sign[:, None])])
    y = np.array([1] * n + [0] * n)
    assert probe.pair_held_out_accuracy(x, y, np.tile(np.arange(n), 2)) < 0.7
