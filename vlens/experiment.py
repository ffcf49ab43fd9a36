"""The experiment core of :func:`vlens.validate.validate` and :func:`vlens.selectors.compare`.

:func:`run` evaluates a list of :class:`Condition` (an edit and its labels) after the unedited
reference, batched and data-parallel over torch.distributed ranks, into one tidy table (one row
per condition, metric and measured dimension; :data:`TABLE_COLUMNS`, "" or NaN where a label
does not apply); :func:`summarise` compares every value edit with its random controls. A new
condition kind is a ``source`` label and a function that builds its conditions, like
:func:`steering_conditions` (value edits and random controls).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vlens import distributed
from vlens.evaluate import Instruments, evaluate_edits, metric_rows
from vlens.interventions import Edit, value_edit
from vlens.models import model_info
from vlens.neurons import NeuronSet, random_like
from vlens.stats import NeuronStats

CONDITION_KEYS = ["selector", "steered", "direction", "source", "mode", "size", "gamma", "seed"]
TABLE_COLUMNS = [*CONDITION_KEYS, "metric", "measured", "value"]
SUMMARY_KEYS = ["selector", "steered", "direction", "mode", "size", "gamma"]
Draw = Callable[[int, int], tuple[NeuronSet, NeuronSet]]


@dataclass(frozen=True, eq=False)
class Condition:
    """One evaluated model: the edit that makes it and its labels in the table."""

    source: str  # "none" (the unedited reference), "value" (a selector's sets), "random" (a size-matched control)
    edit: Edit
    selector: str = ""
    steered: str = ""
    direction: str = ""
    mode: str = ""
    size: int | None = None
    gamma: float | None = None
    seed: int | None = None  # the random control's index r (see random_seeds)

    def labels(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in CONDITION_KEYS}


def check_design(gammas: Sequence[float], n_random: int) -> list[float]:
    """The gammas as floats, or one clear error for a design that cannot be summarised."""
    if not gammas or not all(math.isfinite(g) for g in map(float, gammas)):
        raise ValueError(f"gamma values must be finite numbers, got {list(gammas)}")
    if n_random < 2:
        raise ValueError(f"n_random must be at least 2 (a z-score needs a spread), got {n_random}")
    return [float(g) for g in gammas]


def random_seeds(seed: int, r: int) -> tuple[int, int]:
    """Seeds of random control ``r``: its target-pole set (and Bernoulli mask), its opposing set."""
    rs = seed * 100_003 + r
    return rs, rs + 50_000


def matched_pair(
    target: NeuronSet, opposing: NeuronSet, seeds: tuple[int, int], *, stats: NeuronStats | None = None,
    match_frequency: bool = False,
) -> tuple[NeuronSet, NeuronSet]:  # fmt: skip
    """Random sets with the counts per layer of ``target`` and ``opposing``: outside both, and disjoint."""
    value_mask = target.mask() | opposing.mask()
    rt = random_like(target, seeds[0], stats=stats, exclude=value_mask, match_frequency=match_frequency)
    ro = random_like(opposing, seeds[1], stats=stats, exclude=value_mask | rt.mask(), match_frequency=match_frequency)
    return rt, ro


def steering_conditions(
    shape: tuple[int, int], target: NeuronSet, opposing: NeuronSet, gammas: Sequence[float], *,
    modes: Sequence[str] = ("paper",), n_random: int = 0, selector: str | None = None, stats: NeuronStats | None = None,
    match_frequency: bool = False, draw: Draw | None = None, keep_prob: float = 0.9, seed: int = 0,
) -> list[Condition]:  # fmt: skip
    """Steering toward ``target``'s pole (its set boosted, ``opposing`` clamped): the value edits in
    ``modes`` (clamp_only, gamma-free, once at gamma 0), then per gamma those of the other modes and
    ``n_random`` paper-mode random controls, drawn by ``draw(*random_seeds(seed, r))`` (default:
    :func:`matched_pair`). Value edits use the Bernoulli seed ``seed``, random control r its own."""
    labels = {"selector": selector or target.method, "steered": target.dimension, "direction": target.pole,
              "size": len(target)}  # fmt: skip
    draw = draw or (lambda *s: matched_pair(target, opposing, s, stats=stats, match_frequency=match_frequency))

    def edit(t: NeuronSet, o: NeuronSet, gamma: float, mode: str, s: int) -> Edit:
        return value_edit(shape, t, o, gamma, mode=mode, keep_prob=keep_prob, seed=s)

    out = []
    if "clamp_only" in modes:
        out.append(Condition("value", edit(target, opposing, 0.0, "clamp_only", seed), mode="clamp_only", gamma=0.0,
                             **labels))  # fmt: skip
    for gamma in gammas:
        out += [Condition("value", edit(target, opposing, gamma, mode, seed), mode=mode, gamma=gamma, **labels)
                for mode in modes if mode != "clamp_only"]  # fmt: skip
        for r in range(n_random):
            seeds = random_seeds(seed, r)
            out.append(Condition("random", edit(*draw(*seeds), gamma, "paper", seeds[0]), mode="paper", gamma=gamma,
                                 seed=r, **labels))  # fmt: skip
    return out


def run(model: Any, conditions: Sequence[Condition], instruments: Instruments, *, batch_size: int = 32,
        progress: bool = True, scope: str = "answer") -> pd.DataFrame:  # fmt: skip
    """The tidy table of the unedited model (the KL reference, evaluated first) and ``conditions``.

    ``scope`` is where the edits act (:func:`vlens.evaluate.evaluate_edits`): ``"answer"`` (the
    last prompt token and the answer) or ``"all"`` (every token).

    Over the N ranks of a torch.distributed group, every rank evaluates the reference and every
    N-th condition, and every rank gets the whole table, in the order of ``conditions``.
    """
    info = model_info(model)
    conditions = [Condition("none", Edit.identity(info.n_layers, info.d_mlp, label="unedited")), *conditions]
    rank, world = distributed.rank_world()
    mine = [j for j in range(len(conditions)) if j == 0 or j % world == rank]
    local = evaluate_edits(model, [conditions[j].edit for j in mine], instruments, batch_size=batch_size, progress=progress, scope=scope)
    part = list(zip(mine, local, strict=True))
    metrics: dict[int, dict[str, Any]] = {}
    for each in distributed.gather_objects(part) if world > 1 else [part]:
        for j, m in each:
            metrics.setdefault(j, m)  # the reference: rank 0's
    rows = [row for j, c in enumerate(conditions) for row in metric_rows(c.labels(), metrics[j])]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def table_of(result: Any) -> pd.DataFrame:
    """The tidy table of a ValidationResult, a CompareResult or the table itself, normalised: a CSV
    round trip's NaN strings back to "", numbers as numbers, ``selector`` and ``size`` added if absent."""
    table = getattr(result, "table", result)
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"expected a ValidationResult, a CompareResult or their table, got {type(result).__name__}")
    if missing := [c for c in TABLE_COLUMNS if c not in table.columns and c not in ("selector", "size")]:
        raise ValueError(f"not an experiment table: missing column(s) {', '.join(missing)}")
    if table.empty:
        raise ValueError("the experiment table is empty")
    t = table.copy()
    for c in ("selector", "steered", "direction", "source", "mode", "metric", "measured"):
        t[c] = t[c].fillna("").astype(str) if c in t else ""
    for c in ("size", "gamma", "seed", "value"):
        t[c] = pd.to_numeric(t[c], errors="coerce") if c in t else math.nan
    return t


def per_condition(result: Any, metric: str = "orientation", cost: str = "kl") -> pd.DataFrame:
    """One row per edited condition: its labels, the steered dimension's ``metric`` unedited
    (``baseline``) and ``edited``, the ``shift`` signed toward the steering direction, ``leakage``
    (mean absolute change of the other measured dimensions) and ``cost`` (the model-wide metric)."""
    t = table_of(result)
    t["condition"] = t.groupby(CONDITION_KEYS, dropna=False, sort=False).ngroup()
    base = t[(t.source == "none") & (t.metric == metric)].groupby("measured")["value"].mean()
    m = t[(t.source != "none") & (t.metric == metric)]
    own = m.measured == m.steered
    out = m[own].drop(columns=["metric", "measured"]).rename(columns={"value": "edited"}).set_index("condition")
    out["baseline"] = out.steered.map(base).astype(float)
    out["shift"] = np.where(out.direction == "-", -1.0, 1.0) * (out.edited - out.baseline)
    out["leakage"] = (m.value - m.measured.map(base))[~own].abs().groupby(m.condition[~own]).mean()
    out["cost"] = t[t.metric == cost].groupby("condition")["value"].first()
    return out.reset_index(drop=True)


def controls(randoms: pd.DataFrame, selector: str) -> pd.DataFrame:
    """The random controls of ``selector``'s edits: those drawn for it, else all (a shared pool)."""
    own = randoms[randoms.selector == selector]
    return own if len(own) else randoms


def summarise(result: Any, metric: str = "orientation") -> pd.DataFrame:
    """One row per value edit (:data:`SUMMARY_KEYS`): ``shift`` is the change of the steered dimension's
    ``metric`` (``baseline`` -> ``edited``) signed toward the steering direction. Paper-mode edits are
    compared with the random controls of the same steered dimension, direction, size and gamma:
    ``random_mean`` / ``random_sd`` of their shifts, ``z``, the empirical one-sided ``p = (1 + #random
    >= shift) / (1 + n_random)``, ``kl`` (the cost) beside ``random_kl``; ``leakage`` is the mean
    absolute shift of the other dimensions."""
    t = table_of(result)
    c = per_condition(t, metric)
    group = c[["steered", "direction", "size", "gamma"]].astype(str).agg("|".join, axis=1)
    randoms = c[c.source == "random"].assign(group=group)
    out = []
    for i, v in c[c.source == "value"].iterrows():
        rnd = controls(randoms[randoms.group == group[i]], v.selector) if v["mode"] == "paper" else randoms.iloc[:0]
        mean, sd = rnd["shift"].mean(), rnd["shift"].std(ddof=1)
        out.append({k: v[k] for k in SUMMARY_KEYS} | {
            "metric": metric, "baseline": v.baseline, "edited": v.edited, "shift": v["shift"], "random_mean": mean,
            "random_sd": sd, "z": (v["shift"] - mean) / sd if sd > 0 else math.nan,
            "p": (1 + int((rnd["shift"] >= v["shift"]).sum())) / (1 + len(rnd)) if len(rnd) else math.nan,
            "kl": v.cost, "random_kl": rnd.cost.mean(), "leakage": v.leakage, "n_random": len(rnd),
        })  # fmt: skip
    df = pd.DataFrame(out)
    if len(df):
        df["baseline_kl"] = t[(t.source == "none") & (t.metric == "kl")]["value"].mean()
    return df


__all__ = ["CONDITION_KEYS", "SUMMARY_KEYS", "TABLE_COLUMNS", "Condition", "check_design", "controls", "matched_pair",
           "per_condition", "random_seeds", "run", "steering_conditions", "summarise", "table_of"]  # fmt: skip
