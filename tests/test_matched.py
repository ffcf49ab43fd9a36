"""Validation at matched cost with a shared random null: a planted effect is found, a null is not,
the shared null equals a per-dimension one, and bad designs fail with one clear line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import vlens
from vlens.evaluate import Instruments
from vlens.experiment import TABLE_COLUMNS, cells, item_logodds, shared_random_pairs, union_profile
from vlens.neurons import NeuronSet
from vlens.significance import VERDICTS
from vlens.validate import validate

DIM = "Conservation"
PLANTED_LAYER = 2


def _items(n: int) -> list[dict]:
    # The byte-level tiny tokenizer reads "y" and "n" as one token each: the readout is one logit difference.
    return [{"id": f"co.fc.{i:03d}", "dimension": DIM, "domain": "work", "context": f"Situation number {i} at work{'!' * (i % 3)}",
             "option_plus": "y", "option_minus": "n"} for i in range(n)]  # fmt: skip


def _set(pole: str, neurons: list[int], shape: tuple[int, int]) -> NeuronSet:
    n = len(neurons)
    return NeuronSet(DIM, pole, torch.full((n,), PLANTED_LAYER), torch.tensor(neurons), torch.ones(n), *shape,
                     act_prob=torch.ones(n), delta=torch.ones(n), method="planted")  # fmt: skip


@pytest.fixture(scope="module")
def planted(small_data):
    """A tiny model whose `+` set writes "y" over "n" into the residual stream, and whose `-` set the reverse."""
    model = vlens.tiny_model("llama", seed=3)
    info = vlens.model_info(model)
    stats = vlens.locate(model, small_data, max_pairs=2, selection="top_k:4", progress=False).stats
    tok = model.tokenizer
    y, n = (tok("y", add_special_tokens=False)["input_ids"][0], tok("n", add_special_tokens=False)["input_ids"][0])
    hf = model.original_model
    unembed = hf.get_output_embeddings().weight
    plus, minus = list(range(0, 6)), list(range(6, 12))
    with torch.no_grad():
        # Random init logits are tiny: scale them all, so any edit's cost spreads over the vocabulary
        # while the planted neurons write along the readout direction alone.
        unembed *= 10
        direction = unembed[y] - unembed[n]
        mlp = hf.model.layers[PLANTED_LAYER].mlp
        mlp.up_proj.weight[plus + minus] = 0  # silent unless boosted, so clamping them costs nothing
        mlp.down_proj.weight[:, plus] = 0.5 * direction[:, None] / direction.norm()
        mlp.down_proj.weight[:, minus] = -0.5 * direction[:, None] / direction.norm()
    shape = (info.n_layers, info.d_mlp)
    sets = {f"{DIM}:+": _set("+", plus, shape), f"{DIM}:-": _set("-", minus, shape)}
    return model, sets, stats


def _instruments(small_data, n_items=16):
    return Instruments(dilemmas=_items(n_items), neutral_text=[{"id": "n0", "text": "The river runs past the old mill."}],
                       dilemma_variant="cloze-sum")  # fmt: skip


def test_planted_effect_beats_random(planted, small_data):
    model, sets, stats = planted
    result = validate(model, sets, stats=stats, instruments=_instruments(small_data), kl_targets=[0.05], n_random=6,
                      controls=(), progress=False)  # fmt: skip
    summary = result.summary()
    assert set(summary.direction) == {"+", "-"}
    assert (summary.verdict == "beats random").all(), summary[["direction", "effect", "null_mean", "null_sd", "z"]]
    # every family sits at the target cost
    assert np.allclose(result.calibration.kl, 0.05, rtol=0.1)


def test_hand_doses_and_calibration_both_give_levels(planted, small_data):
    model, sets, stats = planted
    result = validate(model, sets, stats=stats, instruments=_instruments(small_data, 6), kl_targets=[0.05], gammas=[1.0],
                      n_random=2, controls=(), progress=False)  # fmt: skip
    levels = set(map(tuple, result.summary()[["level", "at"]].to_numpy().tolist()))
    assert levels == {("kl", 0.05), ("gamma", 1.0)}
    from vlens import viz

    fig = viz.matched_effects(result)  # one panel per direction of the one steered dimension
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"{DIM} toward +", f"{DIM} toward -"]
    # every random edit is a point in every panel (2 random edits x 2 levels), the value edits too
    assert all(len(ax.collections[0].get_offsets()) == 4 for ax in panels)


def _synthetic_table(rng: np.random.Generator, effect: float, n_items=24, n_random=20) -> pd.DataFrame:
    """A tidy table whose value edits shift each item by ``effect`` plus the same noise random edits have."""
    rows = []
    items = [f"{DIM}/i{i}" for i in range(n_items)]
    base = rng.normal(size=n_items)

    def add(labels: dict, x: np.ndarray) -> None:
        full = dict.fromkeys(["selector", "steered", "direction", "source", "mode"], "") | {
            "size": np.nan, "gamma": np.nan, "seed": np.nan, "target_kl": np.nan} | labels  # fmt: skip
        rows.extend(full | {"metric": "logodds", "measured": m, "value": v} for m, v in zip(items, x, strict=True))

    add({"source": "none"}, base)
    # each edit moves all items by a common random offset (its "direction") plus item noise
    for r in range(n_random):
        add({"source": "random", "seed": r, "gamma": 1.0, "target_kl": 0.1}, base + rng.normal(0, 0.3) + rng.normal(0, 0.05, n_items))
    for direction, sign in (("+", 1), ("-", -1)):
        add({"source": "value", "steered": DIM, "direction": direction, "gamma": 1.0, "target_kl": 0.1},
            base + sign * effect + rng.normal(0, 0.3) + rng.normal(0, 0.05, n_items))  # fmt: skip
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def test_null_model_is_indistinguishable_in_95_percent_of_repeats():
    rng = np.random.default_rng(0)
    verdicts = pd.concat([cells(_synthetic_table(rng, 0.0)).verdict for _ in range(100)])
    assert set(verdicts) <= set(VERDICTS)
    assert (verdicts == "indistinguishable from random").mean() >= 0.95


def test_planted_synthetic_effect_beats_random_and_wrong_way_is_named():
    rng = np.random.default_rng(1)
    s = cells(_synthetic_table(rng, 3.0))
    assert (s.verdict == "beats random").all()
    s = cells(_synthetic_table(rng, -3.0))
    assert (s.verdict == "moves the wrong way").all()


def test_prompted_control_below_threshold_makes_the_cell_blind():
    rng = np.random.default_rng(2)
    t = _synthetic_table(rng, 3.0)
    none = t[t.source == "none"]
    for direction in "+-":  # a prompted control that moves nothing: the instrument cannot see the value
        t = pd.concat([t, none.assign(source="prompted", direction=direction, value=none.value + rng.normal(0, 0.01, len(none)))])
    s = cells(t)
    assert (s.verdict == "instrument cannot see the prompted effect").all()
    assert s.prompted_z.abs().max() < 5


def test_shared_null_equals_per_dimension_null(tiny_llama, small_data):
    """Random edits measured once on every dimension's items give the same null as measuring them on
    each dimension's items alone; the '-' null is the sign-flipped '+' null."""
    from vlens.experiment import Condition, run
    from vlens.interventions import value_edit

    result = vlens.locate(tiny_llama, small_data, max_pairs=2, selection="top_k:6", progress=False)
    dims, shape = result.dimensions, (3, 96)
    items = [it | {"id": f"{d[:2]}.{i}", "dimension": d} for d in dims for i, it in enumerate(_items(3))]
    pairs = shared_random_pairs(list(result.neuron_sets.values()), 3, 0, stats=result.stats)
    randoms = [Condition("random", value_edit(shape, b, c, 2.0, seed=r), gamma=2.0, seed=r) for r, (b, c) in enumerate(pairs)]
    values = [Condition("value", value_edit(shape, result[f"{d}:{p}"], result[f"{d}:{q}"], 2.0), steered=d, direction=p,
                        gamma=2.0) for d in dims for p, q in (("+", "-"), ("-", "+"))]  # fmt: skip
    shared = cells(run(tiny_llama, values + randoms, Instruments(dilemmas=items, dilemma_variant="cloze-mean"),
                       progress=False)).set_index(["steered", "direction"])  # fmt: skip
    for d in dims:
        alone = Instruments(dilemmas=[it for it in items if it["dimension"] == d], dilemma_variant="cloze-mean")
        mine = [c for c in values if c.steered == d]
        one = cells(run(tiny_llama, mine + randoms, alone, progress=False)).set_index(["steered", "direction"])
        for direction in "+-":
            for col in ("effect", "null_mean", "null_sd", "z"):
                assert one.loc[(d, direction), col] == pytest.approx(shared.loc[(d, direction), col], abs=1e-6)
        assert shared.loc[(d, "+"), "null_mean"] == pytest.approx(-shared.loc[(d, "-"), "null_mean"], abs=1e-9)
        assert shared.loc[(d, "+"), "null_sd"] == pytest.approx(shared.loc[(d, "-"), "null_sd"], abs=1e-9)


def test_union_profile_and_shared_pairs(tiny_llama, small_data):
    result = vlens.locate(tiny_llama, small_data, max_pairs=2, selection="top_k:6", progress=False)
    sets = list(result.neuron_sets.values())
    template = union_profile(sets)
    assert len(template) == 6
    union = torch.stack([s.mask() for s in sets]).any(0)
    want = union.sum(-1).double() * 6 / union.sum()
    assert (torch.bincount(template.layers, minlength=union.shape[0]).double() - want).abs().max() < 1
    pairs = shared_random_pairs(sets, 3, 0, stats=result.stats)
    for boost, clamp in pairs:
        assert not (boost.mask() & union).any() and not (clamp.mask() & union).any()
        assert not (boost.mask() & clamp.mask()).any()
        assert torch.equal(torch.bincount(boost.layers, minlength=3), torch.bincount(template.layers, minlength=3))
    assert not torch.equal(pairs[0][0].mask(), pairs[1][0].mask())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kl_targets": [float("nan")]}, "KL targets must be finite"),
        ({"kl_targets": [-0.1]}, "KL targets must be finite and > 0"),
        ({"kl_targets": [], "gammas": [-1.0]}, "gammas must be finite and > 0"),
        ({"kl_targets": [], "gammas": []}, "give KL targets"),
        ({"n_random": 1}, "n_random must be at least 2"),
        ({"controls": ("telepathy",)}, "unknown control"),
        ({"kl_targets": [50.0], "max_dose": {"value": 0.5, "random": 0.5}}, "no dose up to"),
    ],
)
def test_bad_designs_fail_with_one_line(planted, small_data, kwargs, message):
    model, sets, stats = planted
    args = {"stats": stats, "instruments": _instruments(small_data, 2), "n_random": 2, "controls": (), "progress": False}
    with pytest.raises(ValueError, match=message) as err:
        validate(model, sets, **(args | kwargs))
    assert "\n" not in str(err.value)


def test_empty_instrument_fails(planted):
    model, sets, stats = planted
    with pytest.raises(ValueError, match="needs dilemmas"):
        validate(model, sets, stats=stats, instruments=Instruments(neutral_text=[{"id": "a", "text": "Some text."}]),
                 controls=(), progress=False)  # fmt: skip


def test_item_logodds_needs_the_dilemma_rows():
    t = pd.DataFrame([dict.fromkeys(TABLE_COLUMNS, "") | {"source": "none", "metric": "kl", "value": 0.0}])
    with pytest.raises(ValueError, match="per-item log-odds"):
        item_logodds(t)


def test_instrument_sensitivity_reads_every_variant_from_three_passes(tiny_llama):
    from vlens.experiment import instrument_sensitivity
    from vlens.instruments.dilemmas import ALL_VARIANTS

    items = _items(4)
    descriptions = [{"dimension": DIM, "pole": p, "text": t} for p, t in (("+", "I keep to the rules."), ("-", "I break habits."))]
    table = instrument_sensitivity(tiny_llama, items, descriptions)
    assert set(table.variant) == {v.name for v in ALL_VARIANTS}
    assert set(table.direction) == {"+", "-"} and (table.n == 4).all() and set(table.dimension) == {DIM, "all"}
    # min_z is the weaker direction of each variant and dimension
    for _, g in table.groupby(["variant", "dimension"]):
        assert (g.min_z == g.z.min()).all()


def test_variants_personas_and_splits():
    from vlens.instruments.dilemmas import Variant, dilemma_split, personas

    assert Variant.parse("cloze-pmi") == Variant("cloze", "pmi") and Variant.parse("letters").name == "letters"
    with pytest.raises(ValueError, match="unknown dilemma instrument 'clozed'"):
        Variant.parse("clozed")
    items = _items(30)
    splits = [dilemma_split(it) for it in items]
    assert set(splits) == {"dev", "test"} and splits == [dilemma_split(it) for it in items]
    assert dilemma_split(items[0] | {"split": "dev"}) == "dev"
    stated = personas(items, [{"dimension": DIM, "pole": "+", "text": f"t{i}"} for i in range(5)], "+", seed=1)
    assert len(stated) == 30 and stated == personas(items, [{"dimension": DIM, "pole": "+", "text": f"t{i}"} for i in range(5)], "+", seed=1)
    with pytest.raises(ValueError, match="no - description of Conservation"):
        personas(items, [{"dimension": DIM, "pole": "+", "text": "x"}], "-")
