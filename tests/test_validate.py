"""Orientation metrics, batched conditions, random controls and the validation table."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vlens
from vlens.data import DataFormatError
from vlens.evaluate import Instruments, evaluate_edits, portrait_scores
from vlens.experiment import TABLE_COLUMNS
from vlens.interventions import Edit, value_edit
from vlens.locate import locate
from vlens.neurons import random_like
from vlens.validate import ValidationResult, validate


@pytest.fixture(scope="module")
def instruments():
    data = vlens.load_value_data()
    return Instruments.default(data, max_dilemmas=2, max_portrait=6, max_neutral=2)


@pytest.fixture(scope="module")
def located(tiny_llama, small_data):
    return locate(tiny_llama, small_data, selection="top_k:8", progress=False)


def test_batched_conditions_equal_the_per_condition_loop(tiny_llama, located, instruments):
    shape = (3, 96)
    t, o = located["Conservation:+"], located["Conservation:-"]
    edits = [Edit.identity(*shape)] + [value_edit(shape, t, o, g, seed=1) for g in (0.5, 3.0)] + [value_edit(shape, o, t, 2.0, mode="boost_only")]
    batched = evaluate_edits(tiny_llama, edits, instruments, batch_size=7, scope="all")
    for i, e in enumerate(edits[1:], 1):
        # the per-condition loop over full prompts: no batching of conditions, no prefix reuse
        alone = evaluate_edits(tiny_llama, [edits[0], e], instruments, batch_size=3, scope="all", prefix_reuse=False)[1]
        for key in ("orientation", "logodds", "portrait"):
            for dim, v in alone[key].items():
                # logodds: the difference of two float32 sums of log-probs of a few hundred each (one ulp there is
                # 3e-5), so batch composition moves it by a few ulps of the sums, not of the difference
                assert batched[i][key][dim] == pytest.approx(v, abs=1e-4, rel=1e-5)
        assert batched[i]["kl"] == pytest.approx(alone["kl"], abs=1e-5)
        assert batched[i]["perplexity"] == pytest.approx(alone["perplexity"], rel=1e-5)
    assert batched[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert batched[2]["kl"] > batched[1]["kl"] > 0  # a stronger edit costs more


def test_pure_position_bias_scores_exactly_one_half(tiny_llama, instruments):
    """A model that always answers "A" has orientation 0.5 once the option order is counterbalanced."""
    a_id = tiny_llama.tokenizer("A", add_special_tokens=False)["input_ids"][0]

    def always_a(logits, hook):  # the same distribution at every position, whatever the content
        out = torch.zeros_like(logits)
        out[..., a_id] = 50.0
        return out

    letters = Instruments(dilemmas=instruments.dilemmas, dilemma_variant="letters")
    with tiny_llama.hooks(fwd_hooks=[("unembed.hook_out", always_a)]):
        m = evaluate_edits(tiny_llama, [Edit.identity(3, 96)], letters)[0]
    assert m["position_bias_A"] == pytest.approx(1.0, abs=1e-6)
    for v in m["orientation"].values():
        assert v == pytest.approx(0.5, abs=1e-6)


def test_portrait_scores_by_hand():
    items = [{"value": "Security-Personal", "basic_value": "Security"}, {"value": "Stimulation", "basic_value": "Stimulation"}]
    logp = [torch.log(torch.tensor([1.0, 0, 0, 0, 0, 0]) + 1e-12), torch.log(torch.tensor([0, 0, 0, 0, 0, 1.0]) + 1e-12)]
    scores = portrait_scores(logp, items)  # ratings 1 and 6, mean 3.5 -> centred -2.5 and +2.5
    assert scores["Conservation"] == pytest.approx(-2.5, abs=1e-6)
    assert scores["Openness_to_Change"] == pytest.approx(2.5, abs=1e-6)
    assert "Self-Enhancement" not in scores


def test_random_sets_match_layers_and_are_seeded(located):
    ns = located["Conservation:+"]
    a, b, c = (random_like(ns, s, stats=located.stats) for s in (1, 1, 2))
    assert torch.equal(a.counts_per_layer(), ns.counts_per_layer())
    assert torch.equal(a.neurons, b.neurons) and not torch.equal(a.neurons, c.neurons)
    excl = random_like(ns, 1, stats=located.stats, exclude=ns.mask())
    assert not (excl.mask() & ns.mask()).any()
    freq = random_like(ns, 4, stats=located.stats, match_frequency=True)
    assert torch.equal(freq.counts_per_layer(), ns.counts_per_layer())
    assert a.delta is not None and a.act_prob is not None


def test_validate_table_and_summary(tmp_path, tiny_llama, located, instruments):
    result = validate(tiny_llama, located, instruments=instruments, dimensions=["co"], gammas=[1.0], kl_targets=[],
                      n_random=3, controls=("prompted",), batch_size=16, progress=False)  # fmt: skip
    t = result.table
    assert result.meta["scope"] == "answer" and result.meta["dimensions"] == ["Conservation"]  # short names resolve
    assert set(t.steered) == {"", "Conservation"} and list(t.columns) == TABLE_COLUMNS
    assert set(t.source) == {"none", "value", "random", "prompted"}
    assert len(t[(t.source == "random") & (t.metric == "kl")]) == 3  # one shared null: 3 random edits for both directions
    s = result.summary()
    assert len(s) == 2 and s["z"].notna().all() and s["p_greater_holm"].between(0, 1).all() and (s.kl >= 0).all()
    assert set(s.verdict) <= {"beats random", "indistinguishable from random", "moves the wrong way",
                              "instrument cannot see the prompted effect"}  # fmt: skip
    result.save(tmp_path)
    back = ValidationResult.load(tmp_path)
    assert len(back.table) == len(t) and back.meta["n_random"] == 3
    assert back.summary()[["effect", "z"]].equals(s[["effect", "z"]])


def test_validate_bad_input(tiny_llama, located, instruments, tmp_path):
    with pytest.raises(ValueError, match="finite"):
        validate(tiny_llama, located, instruments=instruments, gammas=[math.nan], kl_targets=[], progress=False)
    with pytest.raises(ValueError, match="n_random"):
        validate(tiny_llama, located, instruments=instruments, n_random=1, progress=False)
    with pytest.raises(ValueError, match="another model"):
        validate(vlens.tiny_model("gpt2"), located, instruments=instruments, progress=False)
    bad = tmp_path / "dilemmas.jsonl"
    bad.write_text(json.dumps({"id": "x", "dimension": "Conservation", "context": "c", "option_plus": "p"}) + "\n")
    with pytest.raises(DataFormatError, match="dilemmas.jsonl, line 1: missing field 'option_minus'"):
        Instruments.from_files(dilemmas=bad)


def test_small_portrait_samples_cover_every_dimension():
    from vlens.values import SCORING_KEY

    for k in (4, 8, 12):
        items = Instruments.default(max_portrait=k).portrait_items
        assert len(items) == k == len({i["id"] for i in items})
        assert {SCORING_KEY[i["basic_value"]][0] for i in items} == {"Openness_to_Change", "Conservation", "Self-Enhancement", "Self-Transcendence"}
