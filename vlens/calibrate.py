"""Doses matched on capability cost: the dose of every edit family at which its KL divergence from
the unedited model on neutral text reaches a target (nats per token).

Why: an edit moves value orientation more the harder it pushes the model, and it also does more
damage. Value edits and random edits at the same gamma push with different strength (the value
neurons are selected for how often they fire, so the same gamma is a larger boost), and a
steering vector has no gamma at all. So comparing at equal gamma mixes "these neurons carry the
value" with "this edit is stronger". The fair comparison is at equal cost: every family (value
edit, random edits, each control) is calibrated to the same KL on neutral text (default 0.1
nats/token) before its effect is measured. "The value neurons beat random" then means: more
value shift for the same capability spent. The random edits calibrated this way are the shared
null (every random edit measured on every dimension's instruments) against which each value
edit and control is judged at that cost (:mod:`vlens.significance`).

How: bisection on the dose, all families at once. One call of the KL function per step
evaluates every family's current dose in one batched pass over the neutral text only, so
calibration costs a handful of short passes (each halving of the bracket is one pass).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float

from vlens.evaluate import evaluate_edits
from vlens.instruments import NeutralText
from vlens.interventions import Edit
from vlens.models import model_info

KLOf = Callable[[list[float]], Sequence[float]]


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _count(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


@dataclass
class Bisection:
    """The result of :func:`bisect_doses`, one entry per family: the ``doses`` found and the ``kls``
    measured there; ``calls`` of the KL function (passes); ``monotone``: whether the KL measured
    along the way rose with the dose (within the tolerance); ``trace``: every (dose, kl) measured."""

    doses: list[float]
    kls: list[float]
    targets: list[float]
    tol: float
    calls: int
    monotone: list[bool]
    trace: list[list[tuple[float, float]]]


def bisect_doses(
    kl_of: KLOf, targets: Sequence[float], *, low: float = 0.0, high: float, tol: float = 0.05, max_iter: int = 30,
    names: Sequence[str] | None = None,
) -> Bisection:  # fmt: skip
    """For every family, a dose in ``[low, high]`` whose KL is within ``tol`` of its target.

    ``kl_of(doses)`` gets one dose per family (in the order of ``targets``) and returns their KLs:
    all families in one call, so the caller can run them in one batched pass. The tolerance is
    relative, ``|kl - target| <= tol * target`` (0.05: within 5%), the same precision for every
    point of a shift-vs-KL curve whatever its target. The first two calls measure ``low`` and
    ``high``; then each call shrinks every unfinished family's bracket, keeping a dose below the
    target band at its lower end and one above it at its upper end. The next dose interpolates
    log KL against log dose between the bracket's ends (KL grows about as a power of the dose,
    so this lands near the target in two or three calls instead of ten halvings), kept at least
    10% of the bracket away from either end; every third step halves the bracket instead, so a
    curve that the interpolation fits badly (a step) still converges. A finished family is
    passed its final dose again (a caller can cache it).

    KL is assumed to rise with the dose on ``[low, high]``. If it does not, the bracket still
    keeps KL below the target at one end and above it at the other, so the search ends at *a*
    dose where the measured KL crosses the target (not necessarily the smallest), and
    ``monotone`` is False for that family (a warning says which). If the KL jumps across the
    band (a curve that is not continuous), ``max_iter`` halvings end with a one-line error that
    gives the last bracket. Never extrapolates: a target above the KL at ``high`` is an error
    that gives the largest KL measured and suggests a larger ``high``.
    """
    if isinstance(targets, str) or not isinstance(targets, Sequence | np.ndarray):
        raise TypeError(f"targets must be a list with one KL target per family, got {type(targets).__name__}")
    n = len(targets)
    if n < 1:
        raise ValueError("no family to calibrate: give at least one KL target")
    names = [f"family {i}" for i in range(n)] if names is None else [str(x) for x in names]
    if len(names) != n:
        raise ValueError(f"{len(names)} names given for {n} targets")
    t = np.asarray([_finite(f"the KL target of {name}", x) for name, x in zip(names, targets, strict=True)])
    if (bad := np.flatnonzero(t <= 0)).size:
        raise ValueError(f"the KL target of {names[bad[0]]} is {t[bad[0]]:g}; targets must be positive (nats per token, "
                         "e.g. 0.1): a target of 0 is the unedited model")  # fmt: skip
    low, high, tol = _finite("low", low), _finite("high", high), _finite("tol", tol)
    if low < 0 or high < 0:
        raise ValueError(f"doses must not be negative, got low={low:g}, high={high:g}")
    if high <= low:
        raise ValueError(f"the maximum dose high={high:g} must be above the minimum dose low={low:g}")
    if not 0 < tol < 1:
        raise ValueError(f"tol is relative to the target and must be between 0 and 1 (e.g. 0.05 for 5%), got {tol:g}")
    max_iter = _count("max_iter", max_iter, 1)
    band_lo, band_hi = t * (1 - tol), t * (1 + tol)
    trace: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    calls = 0

    def measure(doses: Float[np.ndarray, " family"]) -> Float[np.ndarray, " family"]:
        nonlocal calls
        got = kl_of([float(d) for d in doses])
        calls += 1
        kl = np.asarray(got, dtype=float)
        if kl.shape != (n,):
            raise ValueError(f"kl_of returned {kl.size} KL value(s) for {n} families; it must return one per dose given")
        if bad := np.flatnonzero(~np.isfinite(kl)).tolist():
            raise ValueError(f"kl_of returned {kl[bad[0]]} for {names[bad[0]]} at dose {doses[bad[0]]:g}; "
                             "the edit broke the model or the neutral text is empty")  # fmt: skip
        for i in range(n):
            trace[i].append((float(doses[i]), float(kl[i])))
        return kl

    k_lo = measure(np.full(n, low))
    if (above := np.flatnonzero(k_lo > band_hi)).size:
        i = above[0]
        raise ValueError(f"{names[i]}: the KL at the smallest dose {low:g} is already {k_lo[i]:.4g}, above the target "
                         f"{t[i]:g} (+{tol:.0%}){_more(above)}; the part of the edit the dose does not scale costs more "
                         "than the target: choose a higher target or a lower minimum dose")  # fmt: skip
    k_hi = measure(np.full(n, high))
    if (short := np.flatnonzero(k_hi < band_lo)).size:
        i = short[0]
        best = max(trace[i], key=lambda dk: dk[1])
        raise ValueError(f"{names[i]}: no dose up to {high:g} reaches KL {t[i]:g} (-{tol:.0%}): the largest KL measured is "
                         f"{best[1]:.4g}, at dose {best[0]:g}{_more(short)}; give a larger maximum dose (high=...)")  # fmt: skip
    within = lambda k: (k >= band_lo) & (k <= band_hi)  # noqa: E731
    done = within(k_lo) | within(k_hi)
    dose = np.where(within(k_lo), low, high)
    kl = np.where(within(k_lo), k_lo, k_hi)
    lo, hi = np.full(n, low), np.full(n, high)
    for step in range(max_iter):
        if done.all():
            break
        # every third step halves the bracket, so a curve the interpolation fits badly still converges
        guess = (lo + hi) / 2 if step % 3 == 2 else _next_dose(lo, hi, k_lo, k_hi, t)
        mid = np.where(done, dose, guess)
        k = measure(mid)
        hit = ~done & within(k)
        dose[hit], kl[hit], done = mid[hit], k[hit], done | hit
        below, above = ~done & (k < band_lo), ~done & (k > band_hi)
        lo[below], k_lo[below] = mid[below], k[below]
        hi[above], k_hi[above] = mid[above], k[above]
    if (left := np.flatnonzero(~done)).size:
        i = left[0]
        raise ValueError(f"{names[i]}: no dose within {tol:.0%} of KL {t[i]:g} after {max_iter} steps: the KL goes "
                         f"from {k_lo[i]:.4g} at dose {lo[i]:.6g} to {k_hi[i]:.4g} at dose {hi[i]:.6g}{_more(left)}; the KL "
                         "jumps across the target there: raise tol (or max_iter)")  # fmt: skip
    monotone = [_rises(points, tol * target) for points, target in zip(trace, t, strict=True)]
    if not all(monotone):
        bad = [names[i] for i, m in enumerate(monotone) if not m]
        warnings.warn(f"the KL did not rise with the dose for {', '.join(bad)}: the dose found is one where the KL "
                      "crosses the target, not necessarily the smallest", stacklevel=2)  # fmt: skip
    return Bisection(dose.tolist(), kl.tolist(), t.tolist(), tol, calls, monotone, trace)


def _next_dose(lo: np.ndarray, hi: np.ndarray, k_lo: np.ndarray, k_hi: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Interpolate log KL linearly in log dose between the bracket ends (KL ~ c * dose^k); from a lower
    end at dose 0 or KL 0, assume KL ~ dose^2 (a small edit's KL is quadratic in its size). Safeguarded
    into the middle 80% of the bracket."""
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (np.log(hi) - np.log(lo)) / (np.log(k_hi) - np.log(k_lo))
        power_law = np.exp(np.log(lo) + (np.log(target) - np.log(k_lo)) * slope)
        quadratic = hi * np.sqrt(target / k_hi)
    guess = np.where((lo > 0) & (k_lo > 0) & np.isfinite(power_law), power_law, quadratic)
    guess = np.where(np.isfinite(guess), guess, (lo + hi) / 2)
    margin = 0.1 * (hi - lo)
    return np.clip(guess, lo + margin, hi - margin)


def _more(indices: np.ndarray) -> str:
    return f" (and {len(indices) - 1} more famil{'y' if len(indices) == 2 else 'ies'})" if len(indices) > 1 else ""


def _rises(points: list[tuple[float, float]], slack: float) -> bool:
    """Whether the KL, sorted by dose, never falls by more than ``slack``."""
    kl = np.asarray([k for _, k in sorted(set(points))])
    return bool((np.maximum.accumulate(kl) - kl <= slack).all())


@dataclass
class Calibration:
    """Per family (the keys of the targets given to :func:`calibrate`): the ``doses`` found, the
    ``kls`` reached there, the ``targets``; ``tol`` (relative); ``passes``: batched evaluations of
    the neutral text; ``monotone``: whether the KL rose with the dose along the search."""

    doses: dict[Hashable, float]
    kls: dict[Hashable, float]
    targets: dict[Hashable, float]
    tol: float
    passes: int
    monotone: dict[Hashable, bool]

    def to_frame(self) -> pd.DataFrame:
        """One row per family: family, target, dose, kl, monotone."""
        return pd.DataFrame([{"family": f, "target": self.targets[f], "dose": self.doses[f], "kl": self.kls[f],
                              "monotone": self.monotone[f]} for f in self.doses])  # fmt: skip


def calibrate(
    model: Any, make_edit: Callable[[Hashable, float], Edit], targets: Mapping[Hashable, float], neutral: NeutralText, *,
    high: float, low: float = 0.0, tol: float = 0.05, max_iter: int = 30, batch_size: int = 32, progress: bool = False,
    desc: str = "calibrate",
) -> Calibration:  # fmt: skip
    """The dose of every edit family at which its KL on ``neutral`` text reaches its target.

    ``targets`` maps each family (any hashable key, e.g. ``("random", 3)`` or ``("value",
    "Conservation:+", 0.1)`` for several targets of one family) to its target KL in nats per token;
    ``make_edit(family, dose)`` builds the family's :class:`~vlens.interventions.Edit` at that dose
    (gamma for value and random edits, a scale for a steering vector). The KL is the ``kl`` metric
    of :func:`vlens.evaluate.evaluate_edits` with the unedited model as row 0. Every step of
    :func:`bisect_doses` is one call of ``evaluate_edits`` over all families whose dose is new
    (a dose already measured is not run again); edits located at different hook points run in
    separate calls, since one pass edits one hook family.
    """
    if not isinstance(neutral, NeutralText):
        raise TypeError(f"neutral must be a vlens.instruments.NeutralText, got {type(neutral).__name__}")
    if not neutral.items:
        raise ValueError("the neutral text is empty: give at least one item to measure the KL on")
    if not isinstance(targets, Mapping):
        raise TypeError(f"targets must map each family to its KL target, got {type(targets).__name__}")
    _count("batch_size", batch_size, 1)
    families = list(targets)
    info = model_info(model)
    reference = Edit.identity(info.n_layers, info.d_mlp, label="unedited")
    measured: dict[tuple[int, float], float] = {}
    passes = 0

    def build(i: int, dose: float) -> Edit:
        edit = make_edit(families[i], dose)
        if not isinstance(edit, Edit):
            raise TypeError(f"make_edit({families[i]!r}, {dose:g}) returned {type(edit).__name__}, expected a vlens Edit")
        return edit

    from tqdm.auto import tqdm

    # The number of steps is not known in advance: the bar counts passes and shows how many families are matched.
    bar = tqdm(desc=desc, unit="pass", disable=not progress, leave=False)

    def kl_of(doses: list[float]) -> list[float]:
        nonlocal passes
        new = [(i, d) for i, d in enumerate(doses) if (i, d) not in measured]
        bar.set_postfix_str(f"{len(doses) - len(new)}/{len(doses)} families settled")
        groups: dict[str | None, list[tuple[tuple[int, float], Edit]]] = {}
        for key in new:
            edit = build(*key)
            if edit.touched_layers().any():
                groups.setdefault(edit.hook, []).append((key, edit))
            else:  # an edit that changes nothing (dose 0, where the search starts) is the unedited model: KL 0, no pass
                measured[key] = 0.0
        for group in groups.values():
            rows = evaluate_edits(model, [reference, *(e for _, e in group)], [neutral], batch_size=batch_size)
            passes += 1
            bar.update()
            measured.update({key: row["kl"] for (key, _), row in zip(group, rows[1:], strict=True)})
        return [measured[(i, d)] for i, d in enumerate(doses)]

    names = [repr(f) for f in families]
    try:
        found = bisect_doses(kl_of, [targets[f] for f in families], low=low, high=high, tol=tol, max_iter=max_iter,
                             names=names)  # fmt: skip
    finally:
        bar.close()
    pick = lambda values: dict(zip(families, values, strict=True))  # noqa: E731
    return Calibration(pick(found.doses), pick(found.kls), pick(found.targets), tol, passes, pick(found.monotone))


__all__ = ["Bisection", "Calibration", "bisect_doses", "calibrate"]
