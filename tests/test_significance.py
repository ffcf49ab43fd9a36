"""vlens.significance against known answers: intervals, paired z, empirical p, Holm, verdicts, circumplex, power."""

from __future__ import annotations

import gc
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vlens.significance import (
    BEATS,
    BLIND,
    INDISTINGUISHABLE,
    PROMPTED_Z_MIN,
    VERDICTS,
    WRONG_WAY,
    circumplex,
    holm,
    instrument_sees,
    items_needed,
    min_null_size,
    null_test,
    paired_ci,
    paired_z,
    power_z,
    verdict,
    verdicts,
)


def exact(mean: float, sd: float, n: int, seed: int = 0) -> np.ndarray:
    """n numbers with exactly this mean and sample sd."""
    x = np.random.default_rng(seed).normal(size=n)
    return mean + sd * (x - x.mean()) / x.std(ddof=1)


# ----------------------------------------------------------------------------- intervals and paired z


def test_bootstrap_ci_of_a_normal_sample_is_close_to_the_t_interval():
    x = np.random.default_rng(1).normal(0.3, 1.0, size=200)
    iv = paired_ci(x, confidence=0.95, n_resamples=4000, seed=0)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    half = (high - low) / 2
    assert iv.method == "BCa" and iv.n == 200 and iv.estimate == pytest.approx(x.mean())
    assert iv.low == pytest.approx(low, abs=0.1 * half) and iv.high == pytest.approx(high, abs=0.1 * half)
    assert paired_ci(x, seed=3) == paired_ci(x, seed=3), "a seeded interval is reproducible"


def test_bootstrap_ci_degenerate_and_tiny_samples():
    const = paired_ci([0.25] * 10)
    assert const.method == "percentile" and const.low == const.high == pytest.approx(0.25)
    one = paired_ci([0.4])
    assert one.estimate == 0.4 and math.isnan(one.low) and math.isnan(one.high) and one.method == "none"
    assert math.isnan(paired_ci([]).estimate)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"diffs": [0.1, float("nan")]}, "non-finite"),
        ({"diffs": [[0.1, 0.2]]}, "1-D"),
        ({"diffs": ["a", "b"]}, "numbers"),
        ({"diffs": [0.1, 0.2], "confidence": 1.5}, "confidence"),
        ({"diffs": [0.1, 0.2], "n_resamples": 0}, "n_resamples"),
    ],
)
def test_paired_ci_refuses_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_ci(**kwargs)


def test_paired_z():
    assert paired_z([1.0, 2.0, 3.0]) == pytest.approx(2 * math.sqrt(3))  # mean 2, sd 1, n 3
    assert paired_z(exact(0.1, 0.5, 25)) == pytest.approx(1.0)
    assert math.isnan(paired_z([0.1] * 10)) and math.isnan(paired_z([1.0]))


# ----------------------------------------------------------------------------- the null


def test_empirical_p_is_exact_on_a_small_integer_null():
    null = [1, 2, 3, 4, 5]
    middle, top, bottom = null_test(3, null), null_test(6, null), null_test(0, null)
    assert (middle.p_greater, middle.p_less) == (4 / 6, 4 / 6)  # ties count on both sides
    assert (top.p_greater, top.p_less) == (1 / 6, 1.0)
    assert (bottom.p_greater, bottom.p_less) == (1.0, 1 / 6)
    assert top.null_mean == 3 and top.null_sd == pytest.approx(math.sqrt(2.5)) and top.n_null == 5
    assert top.z == pytest.approx(3 / math.sqrt(2.5))
    t = 3 / (math.sqrt(2.5) * math.sqrt(1 + 1 / 5))
    assert top.p_greater_t == pytest.approx(stats.t.sf(t, 4)) and top.p_less_t == pytest.approx(stats.t.cdf(t, 4))


def test_null_test_refuses_a_null_too_small_and_handles_one_without_spread():
    with pytest.raises(ValueError, match="at least 2 random edits"):
        null_test(0.1, [0.2])
    with pytest.raises(ValueError, match="effect must be a finite number"):
        null_test(float("nan"), [0.1, 0.2])
    flat = null_test(0.5, [0.1, 0.1, 0.1])
    assert flat.null_sd == 0 and math.isnan(flat.z) and math.isnan(flat.p_greater_t) and flat.p_greater == 1 / 4


def test_min_null_size():
    assert min_null_size(1, 0.05, sides=1) == 20  # 1/21 < 0.05 <= 1/20
    assert min_null_size(8, 0.05) == 320  # 16/321 < 0.05 <= 16/320
    for cells in (1, 3, 8):
        n = min_null_size(cells, 0.05)
        assert 2 * cells / (1 + n) < 0.05 <= 2 * cells / n


# ----------------------------------------------------------------------------- Holm and verdicts


def test_holm_against_a_hand_computed_example():
    # sorted .005 .01 .03 .04, times 4 3 2 1 = .02 .03 .06 .04, running max = .02 .03 .06 .06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.01, float("nan"), 0.04, 0.03, 0.005])
    assert math.isnan(out[1]) and np.delete(out, 1) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([[0.01, 0.04], [0.03, 0.005]]) == pytest.approx(np.array([[0.03, 0.06], [0.06, 0.02]]))
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.2])


def test_verdict_rules():
    assert VERDICTS == ("beats random", "indistinguishable from random", "moves the wrong way",
                        "instrument cannot see the prompted effect")  # fmt: skip
    assert verdict(0.01, 0.99) == BEATS
    assert verdict(0.99, 0.01) == WRONG_WAY
    assert verdict(0.2, 0.8) == INDISTINGUISHABLE
    assert verdict(0.05, 0.95) == INDISTINGUISHABLE, "p must be below alpha, not equal"
    assert verdict(0.01, 0.99, blind=True) == BLIND and verdict(0.99, 0.01, blind=True) == BLIND
    assert verdict(0.03, 0.97, alpha=0.01) == INDISTINGUISHABLE
    assert verdict(float("nan"), float("nan")) == INDISTINGUISHABLE
    with pytest.raises(ValueError, match="p_greater"):
        verdict(1.5, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        verdict(0.1, 0.1, alpha=0)


def test_instrument_sees():
    assert PROMPTED_Z_MIN == 5.0
    assert instrument_sees([5.0, 7.2, 12.0]) and instrument_sees(6.0)
    assert not instrument_sees([5.1, 4.9]) and not instrument_sees([6.0, float("nan")])
    assert not instrument_sees([-9.0]), "a prompted shift the wrong way is not seen"
    assert instrument_sees([3.0], threshold=2.0)
    with pytest.raises(ValueError, match="no prompted z"):
        instrument_sees([])


def cells(effects, nulls, diffs=None) -> pd.DataFrame:
    dims = ["Openness_to_Change", "Conservation", "Self-Enhancement", "Self-Transcendence"]
    keys = [(d, s) for d in dims for s in "+-"][: len(effects)]
    table = pd.DataFrame({"steered": [k[0] for k in keys], "direction": [k[1] for k in keys], "effect": effects,
                          "null": list(nulls)})  # fmt: skip
    if diffs is not None:
        table["diffs"] = list(diffs)
    return table


def test_verdicts_on_constructed_cells():
    rng = np.random.default_rng(0)
    nulls = rng.normal(size=(8, 400))
    out = verdicts(cells([8.0, -8.0, 0, 0, 0.3, 0, 0, 0], nulls))
    assert out.verdict.tolist() == [BEATS, WRONG_WAY] + [INDISTINGUISHABLE] * 6
    assert out.p_greater[0] == 1 / 401 and out.p_greater_holm[0] == pytest.approx(16 / 401)
    assert {"z", "null_sd", "p_less_holm", "ci_low", "ci_high", "paired_z", "steered"} <= set(out.columns)
    assert verdicts(cells([8.0, -8.0], nulls[:2]), blind=True).verdict.tolist() == [BLIND, BLIND]
    # with 20 random edits an empirical p cannot pass Holm: a warning says so, and the normal null can
    small = nulls[:, :20]
    with pytest.warns(UserWarning, match="at least 320 random edits"):
        assert verdicts(cells([8.0] * 8, small)).verdict.eq(INDISTINGUISHABLE).all()
    assert verdicts(cells([8.0, 0, 0, 0, 0, 0, 0, 0], small), p="t").verdict.tolist() == [BEATS] + [INDISTINGUISHABLE] * 7


def test_verdicts_interval_from_the_items():
    diffs = [exact(0.1, 0.5, 100), exact(-0.05, 0.5, 100, seed=1)]
    out = verdicts(cells([0.1, -0.05], np.zeros((2, 2)) + [[0.0, 0.01]], diffs), p="t")
    assert out.n_items.tolist() == [100, 100] and out.paired_z[0] == pytest.approx(2.0)
    assert out.ci_low[0] < 0.1 < out.ci_high[0] and out.ci_high[1] < 0.1
    assert math.isnan(verdicts(cells([0.1], [[0.0, 0.1]]), p="t").ci_low[0]), "no items, no interval"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pd.DataFrame({"effect": [0.1]}), "lacks column"),
        (cells([0.1], [[0.0, 0.1]]).iloc[:0], "no cells"),
        (cells([0.1], [[0.0]]), "Openness_to_Change \\+: the null holds 1"),
        (cells([0.1], [[0.0, float("nan")]]), "non-finite"),
    ],
)
def test_verdicts_refuse_bad_tables(table, message):
    with pytest.raises(ValueError, match=message):
        verdicts(table, p="t")


def test_verdicts_unknown_p_kind():
    with pytest.raises(ValueError, match="unknown p"):
        verdicts(cells([0.1], [[0.0, 0.1]]), p="bootstrap")


@pytest.mark.parametrize(("p", "n_null"), [("t", 20), ("empirical", 320)])
def test_effects_drawn_from_the_null_are_indistinguishable_and_a_planted_one_beats_random(p, n_null, monkeypatch):
    # statsmodels' Holm runs gc.collect() on every call (tenths of a second with torch loaded): 800 calls here
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    rng = np.random.default_rng(13)
    repeats, null_cells, planted = 200, [], []
    for _ in range(repeats):
        nulls = rng.normal(0.02, 0.01, size=(8, n_null))  # a null with an offset and its own scale
        effects = rng.normal(0.02, 0.01, size=8)
        null_cells.append(verdicts(cells(effects, nulls), p=p).verdict.tolist())
        effects[3] = 0.02 + 0.08  # 8 sd above the null
        planted.append(verdicts(cells(effects, nulls), p=p).verdict[3])
    per_cell = np.mean([v == INDISTINGUISHABLE for row in null_cells for v in row])
    per_run = np.mean([all(v == INDISTINGUISHABLE for v in row) for row in null_cells])
    # Without Holm each cell would be called in 10% of the draws (5% per side): per_cell would be 0.90.
    assert per_cell >= 0.95 and per_run >= 0.9, (per_cell, per_run)
    assert np.mean([v == BEATS for v in planted]) >= 0.95


# ----------------------------------------------------------------------------- circumplex


def circumplex_table() -> pd.DataFrame:
    change = {  # (steered, direction) -> change of each measured dimension (OC, CO, SE, ST)
        ("Openness_to_Change", "+"): (0.03, -0.02, 0.00, 0.00),
        ("Openness_to_Change", "-"): (-0.01, 0.01, 0.00, 0.00),
        ("Conservation", "+"): (0.01, 0.02, 0.00, 0.00),
        ("Self-Enhancement", "+"): (0.00, 0.00, 0.04, 0.01),
        ("Self-Transcendence", "+"): (0.00, 0.00, -0.02, 0.05),
    }
    measured = ["Openness_to_Change", "Conservation", "Self-Enhancement", "Self-Transcendence"]
    return pd.DataFrame([{"steered": s, "direction": d, "measured": m, "change": c}
                         for (s, d), row in change.items() for m, c in zip(measured, row, strict=True)])  # fmt: skip


def test_circumplex_on_a_constructed_table():
    out = circumplex(circumplex_table()).set_index("steered")
    assert list(out.index) == ["Openness_to_Change", "Conservation", "Self-Enhancement", "Self-Transcendence"]
    assert (out.direction == "+").all()
    assert out.loc["Openness_to_Change", "opposite"] == "Conservation"
    assert out.loc["Openness_to_Change", ["own_shift", "opposite_shift"]].tolist() == pytest.approx([0.03, -0.02])
    assert out.opposite_moves_other_way.tolist() == [True, False, False, True]
    both = circumplex(circumplex_table(), directions=("+", "-"))
    minus = both[both.direction == "-"].iloc[0]
    # steering toward - of Openness: Openness fell (own shift +0.01 toward -), Conservation rose (the other way)
    assert (minus.own_shift, minus.opposite_shift, minus.opposite_moves_other_way) == pytest.approx((0.01, -0.01, True))


def test_circumplex_missing_opposite_and_bad_input():
    t = circumplex_table()
    partial = circumplex(t[t.measured != "Conservation"]).set_index("steered")
    assert partial.opposite_moves_other_way.isna()["Openness_to_Change"]
    assert math.isnan(partial.loc["Openness_to_Change", "opposite_shift"])
    with pytest.raises(ValueError, match="several changes"):
        circumplex(pd.concat([t, t.iloc[:1]]))
    with pytest.raises(ValueError, match="lacks column"):
        circumplex(t.drop(columns="change"))
    with pytest.raises(ValueError, match="unknown dimension"):
        circumplex(t.assign(measured="Kindness"))
    with pytest.raises(ValueError, match="directions"):
        circumplex(t, directions=("up",))


# ----------------------------------------------------------------------------- power


def test_items_needed_formulas():
    diffs = exact(0.1, 0.5, 25)  # paired z = 0.1 / (0.5 / 5) = 1
    need = items_needed(diffs, null_sd=0.05)
    assert need.paired_z == pytest.approx(1.0) and need.items_for_paired_z == 100  # (2 * 0.5 / 0.1)^2
    assert need.null_z == pytest.approx(2.0) and need.items_for_null_z == 25  # already at z = 2
    q = stats.norm.sf(2.0)
    assert need.nulls_for_p == math.floor(0.95 / (0.05 - q)) + 1  # 35
    n = int(need.nulls_for_p)
    assert (1 + n * q) / (1 + n) < 0.05 <= (1 + (n - 1) * q) / n
    # Holm over 16 tests needs a = 0.05 / 16 > q: at null_z = 2 no number of random edits suffices
    assert items_needed(diffs, null_sd=0.05, n_tests=16).nulls_for_p == math.inf
    assert items_needed(diffs, null_sd=0.2).items_for_null_z == 25 * 4**2  # null_z = 0.5
    assert math.isnan(items_needed(diffs).null_z)
    assert items_needed([-1.0, 1.0, -1.0, 1.0]).items_for_paired_z == math.inf
    with pytest.raises(ValueError, match="null_sd must be positive"):
        items_needed(diffs, null_sd=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        items_needed([0.1])


def test_power_z_and_the_items_for_80_percent_power():
    # z_0.975 = 1.959964, z_0.95 = 1.644854, z_0.8 = 0.841621 (normal table)
    assert power_z() == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert power_z(sides=1) == pytest.approx(1.644854 + 0.841621, abs=1e-5)
    assert power_z(0.9, 0.01) == pytest.approx(2.575829 + 1.281552, abs=1e-5)
    # mean 0.1, sd 0.5: ((1.959964 + 0.841621) * 0.5 / 0.1)^2 = 14.007925^2 = 196.22 -> 197 items
    assert items_needed(exact(0.1, 0.5, 25), z_target=power_z()).items_for_paired_z == 197
    assert items_needed(exact(-0.25, 0.5, 10), z_target=power_z()).items_for_paired_z == 32  # 5.603^2 = 31.39
    for bad, message in (({"power": 1.0}, "power must be in"), ({"power": 0.8, "alpha": 0}, "alpha must be"),
                         ({"sides": 3}, "sides must be")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            power_z(**bad)


def test_nothing_warns_on_good_input():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verdicts(cells([0.1, 0.2], np.random.default_rng(0).normal(size=(2, 400)), [exact(0.1, 0.5, 30)] * 2))
