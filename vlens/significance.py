"""Statistics a reader can trust: paired intervals over items, a test against the random null,
Holm's correction over the cells of a run, one fixed verdict per cell, the circumplex check, and
the sample size an effect would need. Pure numpy, scipy and statsmodels; no model.

Why these, and not one z-score per edit:

- Every condition is measured on the same items, so what an edit does is a *paired* difference
  per item (edited minus unedited). Its spread over items is the instrument's noise, and a
  bootstrap over items (:func:`paired_ci`) gives the interval of the mean shift without
  assuming a normal distribution.
- Whether the located neurons matter is a question about *other* neurons: the value edit's
  effect is compared with the effects of random edits of the same size and the same capability
  cost (:mod:`vlens.calibrate`), the null. The empirical p of :func:`null_test` assumes nothing
  about the null's shape; its floor is ``1 / (1 + n_null)``, so the number of random edits
  decides which p-values a run can reach at all (:func:`min_null_size`).
- A run asks 8 questions (4 dimensions x 2 directions), each of which can come out either way.
  Holm's step-down correction over all of them keeps the chance of any verdict other than
  "indistinguishable from random" below ``alpha`` when nothing is there, without assuming the
  tests are independent.
- The verdict is one of four fixed phrases (:data:`VERDICTS`), so a reader and a script see the
  same answer; a run whose instrument cannot see the positive control (the prompted shift) says
  so, instead of reporting a null result that means nothing about the neurons.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float
from numpy.typing import ArrayLike
from scipy import stats
from statsmodels.stats.multitest import multipletests

from vlens.values import DIMENSIONS, POLES, dimension

ALPHA = 0.05
"""The family-wise error rate of the verdicts of one run."""

PROMPTED_Z_MIN = 5.0
"""The paired z over items (signed toward the prompted direction) that the prompted positive control
must reach, in every dimension and both directions, before a run's instrument counts as able to see
value orientation. It is the bar of issue 13: well above the noise of a few dozen items (z = 2 is
crossed by chance in about 1 of 40 one-sided tests), so an instrument that passes it could see an
edit that does a fraction of what the prompt does."""

VERDICTS = (
    "beats random",
    "indistinguishable from random",
    "moves the wrong way",
    "instrument cannot see the prompted effect",
)
BEATS, INDISTINGUISHABLE, WRONG_WAY, BLIND = VERDICTS
P_METHODS = ("empirical", "t")


# ----------------------------------------------------------------------------- checks


def _vector(name: str, values: ArrayLike) -> Float[np.ndarray, " n"]:
    """``values`` as a 1-D float array of finite numbers, or one clear error."""
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a list or 1-D array of numbers ({err})") from err
    if x.ndim != 1:
        raise ValueError(f"{name} must be one number per item (a 1-D array), got shape {x.shape}")
    if bad := np.flatnonzero(~np.isfinite(x)).tolist():
        raise ValueError(f"{name} holds {len(bad)} non-finite value(s) (first at index {bad[0]}: {x[bad[0]]}); "
                         "drop the items that could not be measured")  # fmt: skip
    return x


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _alpha(alpha: float) -> float:
    if not 0 < _number("alpha", alpha) < 1:
        raise ValueError(f"alpha must be between 0 and 1 (e.g. 0.05), got {alpha}")
    return float(alpha)


def _constant(x: np.ndarray) -> bool:
    """Exactly constant data: its sample sd is 0 in exact arithmetic, whatever rounding makes of it."""
    return len(x) == 0 or np.ptp(x) == 0


# ----------------------------------------------------------------------------- paired effects over items


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval; ``method`` says how the interval was made: ``"BCa"``,
    ``"percentile"`` (BCa was degenerate, e.g. constant data) or ``"none"`` (fewer than 2 items)."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    method: str = "BCa"


def paired_ci(diffs: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Interval:
    """The mean of per-item paired differences and its bootstrap confidence interval over items.

    ``scipy.stats.bootstrap`` with the BCa interval (bias-corrected and accelerated: right to second
    order for skewed means); where BCa is degenerate (constant data, whose jackknife has no
    spread) the percentile interval. Fewer than 2 items: the estimate alone, ``low = high = nan``.
    """
    x = _vector("diffs", diffs)
    if not 0 < _number("confidence", confidence) < 1:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    estimate = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return Interval(estimate, math.nan, math.nan, len(x), confidence, "none")
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():  # BCa's DegenerateDataWarning: handled by the fallback below
            warnings.simplefilter("ignore")
            # batch bounds the memory of BCa's jackknife (n x n otherwise)
            res = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, batch=256, confidence_level=confidence,
                                  method=method, rng=np.random.default_rng(seed))  # fmt: skip
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return Interval(estimate, low, high, len(x), confidence, method)
    raise AssertionError("the percentile bootstrap of finite data is always finite")


def paired_z(diffs: ArrayLike) -> float:
    """The paired z over items, ``mean / (sd / sqrt(n))`` (sample sd); nan for n < 2 or sd = 0."""
    x = _vector("diffs", diffs)
    if len(x) < 2 or _constant(x):
        return math.nan
    return float(x.mean() / (x.std(ddof=1) / math.sqrt(len(x))))


# ----------------------------------------------------------------------------- the random null


@dataclass(frozen=True)
class NullTest:
    """An effect against a null distribution of effects (e.g. of random edits).

    ``z = (effect - null_mean) / null_sd`` (sample sd; nan for a null without spread);
    ``p_greater = (1 + #null >= effect) / (1 + n_null)`` and ``p_less`` its mirror with ``<=``:
    the empirical one-sided p-values, exact under exchangeability and never below
    ``1 / (1 + n_null)``. ``p_greater_t`` / ``p_less_t`` assume a normal null instead: the effect
    is compared with a *new* draw from it, ``t = (effect - null_mean) / (null_sd * sqrt(1 + 1/n))``
    with ``n - 1`` degrees of freedom (a prediction-interval test); they can go below the empirical
    floor, at the price of that assumption (nan for a null without spread).
    """

    effect: float
    null_mean: float
    null_sd: float
    z: float
    p_greater: float
    p_less: float
    n_null: int
    p_greater_t: float
    p_less_t: float


def null_test(effect: float, null: ArrayLike) -> NullTest:
    """Test ``effect`` against the effects ``null`` (see :class:`NullTest`); needs at least 2 null effects."""
    effect = _number("effect", effect)
    v = _vector("null", null)
    n = len(v)
    if n < 2:
        raise ValueError(f"the null holds {n} effect(s); it needs at least 2 random edits for a spread "
                         f"(and at least {min_null_size(1, ALPHA, sides=1)} for an empirical p below {ALPHA})")  # fmt: skip
    mean = float(v.mean())
    sd = 0.0 if _constant(v) else float(v.std(ddof=1))
    p_greater = (1 + int((v >= effect).sum())) / (1 + n)
    p_less = (1 + int((v <= effect).sum())) / (1 + n)
    if sd > 0:
        t = (effect - mean) / (sd * math.sqrt(1 + 1 / n))
        z, pg_t, pl_t = (effect - mean) / sd, float(stats.t.sf(t, n - 1)), float(stats.t.cdf(t, n - 1))
    else:
        z = pg_t = pl_t = math.nan
    return NullTest(effect, mean, sd, z, p_greater, p_less, n, pg_t, pl_t)


def min_null_size(n_cells: int = 8, alpha: float = ALPHA, *, sides: int = 2) -> int:
    """The fewest null effects with which an empirical p can pass Holm's correction at all.

    The smallest empirical p is ``1 / (1 + n)``, and Holm multiplies the smallest of ``m`` p-values
    by ``m``; :func:`verdicts` tests ``sides = 2`` one-sided hypotheses per cell, so
    ``m = 2 * n_cells`` and the answer is the least ``n`` with ``m / (1 + n) < alpha``: 320 for the
    8 cells of a run at 0.05, 20 for a single one-sided test.
    """
    if isinstance(n_cells, bool) or not isinstance(n_cells, int) or n_cells < 1:
        raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}")
    if sides not in (1, 2):
        raise ValueError(f"sides must be 1 or 2, got {sides!r}")
    m, alpha = sides * n_cells, _alpha(alpha)
    n = max(1, math.floor(m / alpha - 1))
    while m / (1 + n) >= alpha:  # at most a step or two: it only corrects the rounding of m / alpha
        n += 1
    while n > 1 and m / n < alpha:
        n -= 1
    return n


# ----------------------------------------------------------------------------- multiple testing and verdicts


def holm(pvalues: ArrayLike) -> Float[np.ndarray, "..."]:
    """Holm-adjusted p-values (``statsmodels.stats.multitest.multipletests(method="holm")``), same shape.

    nan-safe: a nan stays nan and the others are adjusted among themselves (a test that could
    not be made is no member of the family).
    """
    p = np.asarray(pvalues, dtype=float)
    ok = ~np.isnan(p)
    bad = p[ok & ~((p >= 0) & (p <= 1))]
    if bad.size:
        raise ValueError(f"p-values must lie in [0, 1] (nan for a test not made), got {bad[:3].tolist()}")
    out = np.full(p.shape, np.nan)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def _p(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number in [0, 1] (or nan), got {value!r}")
    if not (math.isnan(value) or 0 <= value <= 1):
        raise ValueError(f"{name} must be in [0, 1] (or nan), got {value!r}")
    return float(value)


def verdict(p_greater: float, p_less: float, *, blind: bool = False, alpha: float = ALPHA) -> str:
    """One of :data:`VERDICTS` for a cell, from its Holm-adjusted one-sided p-values. The rules, in order:

    1. ``blind`` (the instrument cannot see the prompted effect; see :func:`instrument_sees`):
       "instrument cannot see the prompted effect", whatever the p-values say;
    2. adjusted ``p_greater < alpha``: "beats random" (the edit moves orientation toward its
       direction more than random edits do);
    3. adjusted ``p_less < alpha``: "moves the wrong way" (less than random edits do);
    4. otherwise "indistinguishable from random". A nan p (a test that could not be made) is
       never significant.
    """
    p_greater, p_less, alpha = _p("p_greater", p_greater), _p("p_less", p_less), _alpha(alpha)
    if blind:
        return BLIND
    if p_greater < alpha:
        return BEATS
    if p_less < alpha:
        return WRONG_WAY
    return INDISTINGUISHABLE


def instrument_sees(prompted_z: float | ArrayLike, threshold: float = PROMPTED_Z_MIN) -> bool:
    """Whether the instrument sees value orientation: every prompted control's paired z over items,
    signed toward its prompted direction (one per dimension and direction), is at least ``threshold``
    (:data:`PROMPTED_Z_MIN`). A nan z (no spread, too few items) does not count as seeing."""
    z = np.asarray(prompted_z, dtype=float).ravel()
    if not z.size:
        raise ValueError("no prompted z given; pass the prompted control's paired z of every dimension and direction")
    if not _number("threshold", threshold) > 0:
        raise ValueError(f"threshold must be positive (a paired z, e.g. {PROMPTED_Z_MIN}), got {threshold}")
    return bool(np.all(z >= threshold))


def verdicts(
    table: pd.DataFrame, *, blind: bool = False, alpha: float = ALPHA, p: str = "empirical", confidence: float = 0.95,
    n_resamples: int = 2000, seed: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """The verdict of every cell of a run: ``table`` has one row per (dimension, direction) cell.

    Columns read: ``effect`` (the edit's shift, signed toward the cell's direction), ``null``
    (a list or array per row: the null effects of that cell, signed the same way; with a shared
    null, the ``-`` cell's null is the sign-flipped ``+`` null) and optionally ``diffs`` (a list
    per row: the edit's per-item paired differences, for the interval). Other columns (e.g.
    ``steered``, ``direction``) are kept. Added: ``n_null``, ``null_mean``, ``null_sd``, ``z``,
    ``p_greater``, ``p_less`` (empirical) and ``p_greater_t``, ``p_less_t`` (normal null; see
    :class:`NullTest`); ``p_greater_holm``, ``p_less_holm`` (those of kind ``p``, Holm-adjusted);
    ``ci_low``, ``ci_high``, ``n_items``, ``paired_z`` from ``diffs`` (nan and 0 without them);
    ``verdict`` (:func:`verdict`; ``blind`` for every cell when the instrument cannot see the
    prompted effect, or per cell from a boolean ``blind`` column).

    Holm's family is both one-sided tests of every cell given (16 for the 8 cells of a run): a
    cell can come out either way, so this keeps the chance that any cell gets a verdict other
    than "indistinguishable from random" when no edit differs from random below ``alpha``.
    With empirical p-values that needs at least :func:`min_null_size` null effects per cell
    (320 for 8 cells); with fewer, no cell can pass and a warning says so: use more random
    edits, or ``p="t"``.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame with one row per cell, got {type(table).__name__}")
    if missing := [c for c in ("effect", "null") if c not in table.columns]:
        raise ValueError(f"the verdict table lacks column(s) {', '.join(missing)}: it needs 'effect' and 'null' "
                         "(a list of null effects per cell), and optionally 'diffs'")  # fmt: skip
    if table.empty:
        raise ValueError("the verdict table has no cells; give one row per (dimension, direction)")
    if p not in P_METHODS:
        raise ValueError(f"unknown p {p!r}; expected 'empirical' (from the null's ranks) or 't' (a normal null)")
    alpha = _alpha(alpha)
    out = table.copy()

    def cell(i: int) -> str:
        row = table.iloc[i]
        named = [f"{row[c]}" for c in ("steered", "direction") if c in table.columns]
        return " ".join(named) if named else f"row {i}"

    tests = []
    for i, (effect, null) in enumerate(zip(table["effect"], table["null"], strict=True)):
        try:
            tests.append(null_test(effect, null))
        except ValueError as err:
            raise ValueError(f"cell {cell(i)}: {err}") from err
    for name in ("n_null", "null_mean", "null_sd", "z", "p_greater", "p_less", "p_greater_t", "p_less_t"):
        out[name] = [getattr(t, name) for t in tests]
    suffix = "" if p == "empirical" else "_t"
    adjusted = holm(np.stack([out[f"p_greater{suffix}"], out[f"p_less{suffix}"]]).astype(float))
    out["p_greater_holm"], out["p_less_holm"] = adjusted
    if p == "empirical" and not blind and (need := min_null_size(len(out), alpha)) > out["n_null"].max():
        warnings.warn(f"with {out['n_null'].max()} null effects per cell the smallest empirical p is "
                      f"1/{out['n_null'].max() + 1}, which Holm over {2 * len(out)} one-sided tests cannot bring below "
                      f"{alpha}: no cell can beat random; use at least {need} random edits, or p='t'", stacklevel=2)  # fmt: skip
    intervals = []
    for i, diffs in enumerate(table["diffs"] if "diffs" in table.columns else [None] * len(table)):
        try:
            intervals.append(None if diffs is None else
                             (paired_ci(diffs, confidence=confidence, n_resamples=n_resamples, seed=seed), paired_z(diffs)))
        except ValueError as err:
            raise ValueError(f"cell {cell(i)}: {err}") from err
    out["ci_low"] = [iv[0].low if iv else math.nan for iv in intervals]
    out["ci_high"] = [iv[0].high if iv else math.nan for iv in intervals]
    out["n_items"] = [iv[0].n if iv else 0 for iv in intervals]
    out["paired_z"] = [iv[1] if iv else math.nan for iv in intervals]
    # a "blind" column marks the cells whose own instrument cannot see the prompted effect
    blind_rows = table["blind"].astype(bool).tolist() if "blind" in table.columns else [blind] * len(table)
    out["verdict"] = [verdict(g, s, blind=b or blind, alpha=alpha) for g, s, b in zip(*adjusted, blind_rows, strict=True)]
    return out


# ----------------------------------------------------------------------------- the circumplex check


def circumplex(changes: pd.DataFrame, *, directions: Sequence[str] = ("+",)) -> pd.DataFrame:
    """Does steering a dimension move its circumplex opposite the other way?

    ``changes`` has one row per (``steered`` dimension, ``direction``, ``measured`` dimension) with
    ``change``: the measured dimension's orientation edited minus unedited (raw, not signed). The
    opposites are those of :mod:`vlens.values` (Openness_to_Change <-> Conservation, Self-Enhancement
    <-> Self-Transcendence). One row per steered dimension and direction in ``directions`` (default:
    toward ``+`` only): ``opposite``, ``own_shift`` and ``opposite_shift`` (both signed toward the
    steering direction, so the expected pattern is ``own_shift > 0 > opposite_shift``) and
    ``opposite_moves_other_way`` (``opposite_shift < 0``; missing where the opposite was not measured).
    """
    if not isinstance(changes, pd.DataFrame):
        raise TypeError(f"changes must be a pandas DataFrame, got {type(changes).__name__}")
    if missing := [c for c in ("steered", "direction", "measured", "change") if c not in changes.columns]:
        raise ValueError(f"the circumplex table lacks column(s) {', '.join(missing)}; it needs one row per "
                         "(steered, direction, measured) with the raw 'change' of the measured dimension")  # fmt: skip
    if bad := [d for d in directions if d not in POLES]:
        raise ValueError(f"directions must be '+' and/or '-', got {bad}")
    t = changes[["steered", "direction", "measured", "change"]].copy()
    t["steered"], t["measured"] = (t[c].map(lambda name: dimension(str(name)).name) for c in ("steered", "measured"))
    _vector("change", t["change"])
    if dup := t[t.duplicated(["steered", "direction", "measured"])].head(1).to_dict("records"):
        raise ValueError(f"several changes for steered {dup[0]['steered']} {dup[0]['direction']} measured on "
                         f"{dup[0]['measured']}; give one per cell (average the items first)")  # fmt: skip
    change = t.set_index(["steered", "direction", "measured"])["change"]
    rows = []
    for (steered, direction), _ in t[t.direction.isin(directions)].groupby(["steered", "direction"], sort=False):
        sign = 1.0 if direction == "+" else -1.0
        opposite = DIMENSIONS[steered].opposite
        own = change.get((steered, direction, steered), math.nan) * sign
        other = change.get((steered, direction, opposite), math.nan) * sign
        rows.append({"steered": steered, "direction": direction, "opposite": opposite, "own_shift": own,
                     "opposite_shift": other, "opposite_moves_other_way": pd.NA if math.isnan(other) else other < 0})  # fmt: skip
    out = pd.DataFrame(rows, columns=["steered", "direction", "opposite", "own_shift", "opposite_shift",
                                      "opposite_moves_other_way"])  # fmt: skip
    out["opposite_moves_other_way"] = out["opposite_moves_other_way"].astype("boolean")
    return out


# ----------------------------------------------------------------------------- power


@dataclass(frozen=True)
class SampleSize:
    """How far an observed effect is from being detected, and what it would take (see :func:`items_needed`)."""

    n_items: int
    effect: float
    paired_z: float
    items_for_paired_z: float
    null_z: float
    items_for_null_z: float
    nulls_for_p: float


def items_needed(
    diffs: ArrayLike, null_sd: float | None = None, *, null_mean: float = 0.0, z_target: float = 2.0,
    alpha: float = ALPHA, n_tests: int = 1,
) -> SampleSize:  # fmt: skip
    """Sample sizes at which the observed effect would reach ``z_target`` (or p < ``alpha``), given the
    measured spread. ``diffs`` are the edit's per-item paired differences (n items), ``null_sd`` the
    spread of the null effects (random edits, each measured on the same n items). The formulas:

    - ``items_for_paired_z``: the paired z is ``mean / (sd / sqrt(n))`` and grows as ``sqrt(n)``, so
      ``ceil((z_target * sd / |mean|)^2)`` items, at least 2 (inf when the mean is 0).
    - ``items_for_null_z``: the z against the null, ``|mean - null_mean| / null_sd``, grows as
      ``sqrt(n)`` only as far as the null's spread is the items' sampling noise, so
      ``ceil(n * (z_target / null_z)^2)`` items is a lower bound (random edits that truly differ
      from one another keep their spread however many items are measured).
    - ``nulls_for_p``: random edits for the empirical p to fall below ``alpha / n_tests`` (Holm's
      first step over ``n_tests`` tests; 16 for the verdicts of a run) at the current ``null_z``,
      for a normal null: with ``q = P(Z >= null_z)`` the p is about ``(1 + n q) / (1 + n)``,
      below ``a = alpha / n_tests`` once ``n > (1 - a) / (a - q)``; inf when ``q >= a`` (then
      more random edits cannot help; more items or a larger effect must).

    Pass ``z_target=scipy.stats.norm.isf(0.05)`` (1.645) for a one-sided p below 0.05.
    """
    x = _vector("diffs", diffs)
    if len(x) < 2:
        raise ValueError(f"items_needed needs at least 2 paired differences for a spread, got {len(x)}")
    z_target = _number("z_target", z_target)
    if z_target <= 0:
        raise ValueError(f"z_target must be positive, got {z_target}")
    if isinstance(n_tests, bool) or not isinstance(n_tests, int) or n_tests < 1:
        raise ValueError(f"n_tests must be a positive integer, got {n_tests!r}")
    a = _alpha(alpha) / n_tests
    n, mean = len(x), float(x.mean())
    sd = 0.0 if _constant(x) else float(x.std(ddof=1))

    def ceil_or_inf(value: float) -> float:
        return float(math.ceil(value - 1e-9)) if math.isfinite(value) else math.inf

    items_paired = ceil_or_inf((z_target * sd / abs(mean)) ** 2) if mean != 0 else math.inf
    null_z = items_null = nulls = math.nan
    if null_sd is not None:
        null_sd = _number("null_sd", null_sd)
        if null_sd <= 0:
            raise ValueError(f"null_sd must be positive (the spread of the random edits' effects), got {null_sd}")
        null_z = abs(mean - _number("null_mean", null_mean)) / null_sd
        items_null = ceil_or_inf(n * (z_target / null_z) ** 2) if null_z > 0 else math.inf
        q = float(stats.norm.sf(null_z))
        nulls = float(math.floor((1 - a) / (a - q)) + 1) if q < a else math.inf
    return SampleSize(n, mean, paired_z(x), max(items_paired, 2.0), null_z, items_null, nulls)


def power_z(power: float = 0.8, alpha: float = ALPHA, *, sides: int = 2) -> float:
    """The z a test statistic's expected value must reach for a test at level ``alpha`` to reject with
    probability ``power``: ``z_{1 - alpha / sides} + z_{power}`` (2.80 for 80% power at 0.05, two-sided).

    With ``z_target=power_z()``, :func:`items_needed`'s ``items_for_paired_z`` is the textbook sample size
    of a paired test, ``((z_{1 - alpha/2} + z_{power}) * sd / |mean|)^2``: the number of items at which a
    true mean shift equal to the observed one would give p < ``alpha`` (its interval would exclude 0) in
    a fraction ``power`` of repeated runs (normal approximation, the measured spread taken as the truth).
    """
    power = _number("power", power)
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1) (e.g. 0.8 for 80%), got {power}")
    if sides not in (1, 2):
        raise ValueError(f"sides must be 1 or 2, got {sides!r}")
    return float(stats.norm.isf(_alpha(alpha) / sides) + stats.norm.ppf(power))


__all__ = [
    "ALPHA", "BEATS", "BLIND", "INDISTINGUISHABLE", "PROMPTED_Z_MIN", "P_METHODS", "VERDICTS", "WRONG_WAY", "Interval",
    "NullTest", "SampleSize", "circumplex", "holm", "instrument_sees", "items_needed", "min_null_size", "null_test",
    "paired_ci", "paired_z", "power_z", "verdict", "verdicts",
]  # fmt: skip
