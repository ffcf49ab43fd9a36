"""vlens.calibrate: bisection on synthetic dose -> KL curves, its errors, and calibrate on the tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vlens
from vlens.calibrate import bisect_doses, calibrate
from vlens.evaluate import evaluate_edits
from vlens.instruments import NeutralText
from vlens.interventions import Edit, scale_edit
from vlens.neurons import NeuronSet


class Quadratic:
    """KL = c * dose^2 per family, recording every call."""

    def __init__(self, c):
        self.c, self.calls = np.asarray(c, dtype=float), []

    def __call__(self, doses):
        self.calls.append(list(doses))
        return (self.c * np.asarray(doses) ** 2).tolist()


def test_bisection_finds_the_exact_dose_to_its_tolerance():
    for tol in (0.05, 1e-6):
        curve = Quadratic([2.0])
        found = bisect_doses(curve, [0.1], high=10.0, tol=tol)
        exact = math.sqrt(0.1 / 2.0)
        assert abs(found.kls[0] - 0.1) <= tol * 0.1 and found.kls[0] == pytest.approx(2.0 * found.doses[0] ** 2)
        assert math.sqrt(0.1 * (1 - tol) / 2) <= found.doses[0] <= math.sqrt(0.1 * (1 + tol) / 2)
        assert found.doses[0] == pytest.approx(exact, rel=tol)
        assert found.calls == len(curve.calls) and found.monotone == [True]
        assert found.trace[0][:2] == [(0.0, 0.0), (10.0, 200.0)], "the bounds are measured first"


def test_several_families_in_one_call_per_step():
    c, targets = [0.5, 2.0, 40.0, 1e-3], [0.1, 0.05, 0.2, 0.1]
    curve = Quadratic(c)
    found = bisect_doses(curve, targets, high=20.0, tol=0.02)
    assert all(len(call) == 4 for call in curve.calls), "every call evaluates every family"
    for ci, t, d, k in zip(c, targets, found.doses, found.kls, strict=True):
        assert abs(k - t) <= 0.02 * t and ci * d**2 == pytest.approx(k)
    # one search for all: about as many calls as the slowest family needs, not the sum
    alone = max(bisect_doses(Quadratic([ci]), [t], high=20.0, tol=0.02).calls for ci, t in zip(c, targets, strict=True))
    assert found.calls == alone
    # a finished family is passed its final dose again in every later call
    for i, dose in enumerate(found.doses):
        first = next(k for k, call in enumerate(curve.calls) if call[i] == dose)
        assert all(call[i] == dose for call in curve.calls[first:])


def test_target_met_at_a_bound_and_a_lower_bound_above_zero():
    assert bisect_doses(Quadratic([1.0]), [100.0], high=10.0).doses == [10.0]
    found = bisect_doses(Quadratic([1.0]), [4.0], low=1.0, high=3.0, tol=0.01)
    assert found.doses[0] == pytest.approx(2.0, rel=0.01)


def test_unreachable_target_says_the_largest_kl_and_dose():
    with pytest.raises(ValueError, match=r"family 1: no dose up to 2 reaches KL 0\.5 .*largest KL measured is 0\.04, at dose 2; "
                                         r"give a larger maximum dose"):  # fmt: skip
        bisect_doses(Quadratic([1.0, 0.01]), [0.1, 0.5], high=2.0)


def test_kl_already_above_target_at_the_smallest_dose():
    with pytest.raises(ValueError, match="KL at the smallest dose 0 is already 0.3, above the target 0.1"):
        bisect_doses(lambda d: [0.3 + x for x in d], [0.1], high=1.0)


@pytest.mark.parametrize(
    ("targets", "kwargs", "message"),
    [
        ([float("nan")], {}, "KL target of family 0 must be a finite number"),
        ([-0.1], {}, "targets must be positive"),
        ([0.0], {}, "targets must be positive"),
        ([], {}, "at least one KL target"),
        ([0.1], {"low": -1.0}, "must not be negative"),
        ([0.1], {"high": float("nan")}, "high must be a finite number"),
        ([0.1], {"high": float("inf")}, "high must be a finite number"),
        ([0.1], {"high": -2.0}, "must not be negative"),
        ([0.1], {"low": 3.0, "high": 2.0}, "must be above the minimum dose"),
        ([0.1], {"tol": 0.0}, "tol"),
        ([0.1], {"tol": float("nan")}, "tol"),
        ([0.1], {"max_iter": 0}, "max_iter"),
        ([0.1], {"names": ["a", "b"]}, "2 names given for 1 targets"),
    ],
)
def test_bad_input(targets, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bisect_doses(Quadratic([1.0] * max(len(targets), 1)), targets, **({"high": 1.0} | kwargs))


def test_bad_kl_function():
    with pytest.raises(ValueError, match="kl_of returned nan for fam at dose 0"):
        bisect_doses(lambda d: [math.nan], [0.1], high=1.0, names=["fam"])
    with pytest.raises(ValueError, match="returned 2 KL value"):
        bisect_doses(lambda d: [0.0, 0.0], [0.1], high=1.0)
    with pytest.raises(TypeError, match="one KL target per family"):
        bisect_doses(Quadratic([1.0]), 0.1, high=1.0)


def test_non_monotone_curve_ends_at_a_crossing_and_says_so():
    # a bump where the first interpolated dose lands (2.236 = 4 * sqrt(0.1 / 0.32)): the KL there is
    # above the KL at the largest dose, so the measured points do not rise with the dose
    bump = lambda d: 0.45 * math.exp(-((d - 2.236) ** 2) / 0.05) + 0.02 * d**2  # noqa: E731
    with pytest.warns(UserWarning, match="did not rise with the dose for family 0"):
        found = bisect_doses(lambda doses: [bump(d) for d in doses], [0.1], high=4.0, tol=0.01)
    assert abs(bump(found.doses[0]) - 0.1) <= 0.001 and found.monotone == [False]


def test_a_jump_across_the_band_is_an_error():
    step = lambda doses: [0.0 if d < 1.234 else 1.0 for d in doses]  # noqa: E731
    with pytest.raises(ValueError, match=r"after 20 steps: the KL goes from 0 at dose 1\.23.* to 1 at dose 1\.23.*jumps"):
        bisect_doses(step, [0.1], high=4.0, max_iter=20)


# ----------------------------------------------------------------------------- calibrate on a model


NEUTRAL = NeutralText([{"text": "The weather was mild and the shops opened at nine in the morning."},
                       {"text": "A river runs through the old town, past the market and the station."}])  # fmt: skip


def neurons(model, pick):
    info = vlens.model_info(model)
    layers, idx = zip(*pick, strict=True)
    return NeuronSet("Conservation", "+", torch.tensor(layers), torch.tensor(idx), torch.ones(len(pick)),
                     info.n_layers, info.d_mlp)  # fmt: skip


def test_calibrate_reaches_the_target_kl_measured_again_independently(tiny_llama):
    info = vlens.model_info(tiny_llama)
    shape = (info.n_layers, info.d_mlp)
    sets = {"few": neurons(tiny_llama, [(0, 3), (1, 5), (2, 7), (1, 11), (0, 40), (2, 60)]),
            "other": neurons(tiny_llama, [(0, 8), (1, 9), (2, 10), (2, 30), (1, 50), (0, 70)])}  # fmt: skip
    targets = {("few", 0.002): 0.002, ("few", 0.004): 0.004, ("other", 0.002): 0.002}

    def make_edit(family, dose):
        return scale_edit(shape, sets[family[0]], 1 + dose)  # dose 0 is the unedited model

    cal = calibrate(tiny_llama, make_edit, targets, NEUTRAL, high=60.0, tol=0.05)
    fams = list(targets)
    again = evaluate_edits(tiny_llama, [Edit.identity(*shape), *(make_edit(f, cal.doses[f]) for f in fams)], [NEUTRAL])
    for f, row in zip(fams, again[1:], strict=True):
        assert abs(row["kl"] - targets[f]) <= 0.05 * targets[f], (f, row["kl"], cal.doses[f])
        assert row["kl"] == pytest.approx(cal.kls[f], rel=1e-4)
    assert cal.doses[("few", 0.002)] < cal.doses[("few", 0.004)]
    assert 2 <= cal.passes <= 30 and all(cal.monotone.values())
    assert list(cal.to_frame().columns) == ["family", "target", "dose", "kl", "monotone"]


def test_calibrate_refuses_bad_input(tiny_llama):
    info = vlens.model_info(tiny_llama)
    ns = neurons(tiny_llama, [(0, 3)])
    make = lambda f, d: scale_edit((info.n_layers, info.d_mlp), ns, 1 + d)  # noqa: E731
    with pytest.raises(TypeError, match="NeutralText"):
        calibrate(tiny_llama, make, {"a": 0.1}, [NEUTRAL], high=1.0)
    with pytest.raises(ValueError, match="neutral text is empty"):
        calibrate(tiny_llama, make, {"a": 0.1}, NeutralText([]), high=1.0)
    with pytest.raises(TypeError, match="returned str, expected a vlens Edit"):
        calibrate(tiny_llama, lambda f, d: "edit", {"a": 0.1}, NEUTRAL, high=1.0)
    with pytest.raises(ValueError, match="'a': no dose up to 1 reaches KL 10"):
        calibrate(tiny_llama, make, {"a": 10.0}, NEUTRAL, high=1.0)
    with pytest.raises(ValueError, match="KL target of 'a' must be a finite number"):
        calibrate(tiny_llama, make, {"a": math.nan}, NEUTRAL, high=1.0)
    with pytest.raises(ValueError, match="must not be negative"):
        calibrate(tiny_llama, make, {"a": 0.1}, NEUTRAL, high=-1.0)
