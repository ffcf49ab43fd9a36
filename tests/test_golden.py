"""Numeric parity with the code before the runner refactor (issue 12).

``tests/golden/`` holds what the old code paths computed on a fixed small input on the
offline model (``tests/golden/make_golden.py`` at commit 70401e5): the refactored code
must give the same statistics (1e-6), the same neuron sets and the same validation table (1e-5).
The input is ValueInsight v1 (the data of the golden files), extracted from git.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import vlens
from vlens.evaluate import Instruments

GOLDEN = Path(__file__).parent / "golden"
DIMENSIONS = ["Openness_to_Change", "Self-Enhancement"]
LAYERS = [2, 15, 29]
RUNS = {
    "question_reuse": {"scope": "question", "hook": "post", "prefix_reuse": True},
    "question_full": {"scope": "question", "hook": "post", "prefix_reuse": False},
    "all_gate": {"scope": "all", "hook": "gate", "prefix_reuse": False},
}

pytestmark = pytest.mark.model


@pytest.mark.parametrize("name", list(RUNS))
def test_locate_matches_golden(smollm, name, v1_data_dir):
    result = vlens.locate(smollm, vlens.load_value_data(v1_data_dir), dimensions=DIMENSIONS, max_pairs=6, layers=LAYERS,
                          batch_size=4, selection="top_k:40", progress=False, **RUNS[name])  # fmt: skip
    golden = vlens.NeuronStats.load(GOLDEN / f"stats_{name}")
    assert result.stats.classes == golden.classes and result.stats.layers == golden.layers
    for field in ("tokens", "active", "prompts"):
        assert torch.equal(getattr(result.stats, field).cpu(), getattr(golden, field)), field
    for field in ("sum", "sumsq"):
        torch.testing.assert_close(getattr(result.stats, field).cpu(), getattr(golden, field), rtol=1e-6, atol=1e-6)
    for key, ns in result.neuron_sets.items():
        dim, pole = key.rsplit(":", 1)
        old = vlens.NeuronSet.load(GOLDEN / f"set_{name}_{dim}_{'plus' if pole == '+' else 'minus'}")
        assert torch.equal(ns.mask(), old.mask()), key


def test_validation_matches_golden(smollm, v1_data_dir):
    """The engine and the edits still give the baseline's numbers: the baseline's conditions (its edits,
    per-dimension random controls and ablations, built by experiment.steering_conditions) on the
    baseline's items (v1, the first two dilemmas of each dimension, listed options), every token edited.
    The per-condition summaries changed by design since (per-item log-odds; shared nulls), so the
    readings compared are those whose definition did not: portrait, cost and position bias."""
    from vlens.experiment import run, steering_conditions

    v1 = vlens.load_value_data(v1_data_dir)
    full = vlens.locate(smollm, v1, dimensions=DIMENSIONS, max_pairs=6, batch_size=4, selection="top_k:40", progress=False,
                        **RUNS["question_reuse"])  # the settings the golden table was made with
    instruments = Instruments.default(v1, max_dilemmas=2, max_portrait=4, max_neutral=1, max_questions=0, dilemma_split=None,
                                      dilemma_variant="listed-mean")  # fmt: skip
    conditions = [c for d in DIMENSIONS for direction, other in (("+", "-"), ("-", "+"))
                  for c in steering_conditions((30, 1536), full[f"{d}:{direction}"], full[f"{d}:{other}"], [1.0],
                                               modes=("clamp_only", "paper", "boost_only"), n_random=2, stats=full.stats)]  # fmt: skip
    table = run(smollm, conditions, instruments, batch_size=8, progress=False, scope="all")
    kept = ["portrait", "kl", "perplexity", "position_bias_A"]
    golden = pd.read_csv(GOLDEN / "validation.csv")
    golden = golden[golden.metric.isin(kept)].reset_index(drop=True)
    new = table[table.metric.isin(kept)].reset_index(drop=True)
    keys = ["steered", "direction", "source", "mode", "gamma", "seed", "metric", "measured"]
    for frame in (golden, new):
        for col in ("steered", "direction", "mode", "measured"):
            frame[col] = frame[col].fillna("").astype(str)
        for col in ("gamma", "seed"):
            frame[col] = pd.to_numeric(frame[col])
    merged = golden.merge(new, on=keys, how="outer", suffixes=("_old", "_new"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"][keys + ["_merge"]]
    torch.testing.assert_close(torch.tensor(merged["value_new"].to_numpy()), torch.tensor(merged["value_old"].to_numpy()),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
