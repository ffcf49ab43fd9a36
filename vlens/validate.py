"""Causal validation: edit the value neurons, measure the shift, compare with size-matched random edits.

For every steered dimension, direction (``+``: toward the value; ``-``: reverse steering,
the two sets swapped) and gamma, the conditions are: the value edit (paper mode), its
boost-only half, its clamp-only half (gamma-free), and ``n_random`` random edits with the
same number of neurons per layer (optionally matched on activation frequency). All of them
are evaluated in batched forward passes (:func:`vlens.evaluate.evaluate_edits`).

The result is a tidy table, one row per (condition, metric, measured dimension), and a
summary with the shift of each value edit, the random shifts' mean and sd, the z-score,
the empirical p-value, the capability cost and the leakage into the other dimensions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlens._io import sha256_json, vlens_version, write_json
from vlens.evaluate import Instruments, evaluate_edits, metric_rows
from vlens.interventions import Edit, _check_set, value_edit
from vlens.locate import LocateResult
from vlens.models import model_info
from vlens.neurons import NeuronSet, random_like
from vlens.stats import NeuronStats

TABLE_COLUMNS = ["steered", "direction", "source", "mode", "gamma", "seed", "metric", "measured", "value"]


@dataclass(frozen=True)
class Condition:
    steered: str | None
    direction: str | None
    source: str  # "none", "value", "random"
    mode: str | None
    gamma: float | None
    seed: int | None


@dataclass
class ValidationResult:
    table: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        return summarise_table(self.table)

    def save(self, folder: str | os.PathLike) -> Path:
        from vlens._io import atomic_write

        folder = Path(folder)
        atomic_write(folder / "validation.csv", lambda tmp: self.table.to_csv(tmp, index=False))
        atomic_write(folder / "validation_summary.csv", lambda tmp: self.summary().to_csv(tmp, index=False))
        write_json(folder / "validation.json", self.meta)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ValidationResult:
        from vlens._io import read_json

        folder = Path(folder)
        table = pd.read_csv(folder / "validation.csv")
        return cls(table, read_json(folder / "validation.json"))


def validate(
    model: Any,
    neuron_sets: LocateResult | dict[str, NeuronSet],
    *,
    stats: NeuronStats | None = None,
    instruments: Instruments | None = None,
    dimensions: Sequence[str] | None = None,
    directions: Sequence[str] = ("+", "-"),
    gammas: Sequence[float] = (0.5, 1.0, 2.0),
    n_random: int = 20,
    match_frequency: bool = False,
    ablations: bool = True,
    seed: int = 0,
    keep_prob: float = 0.9,
    batch_size: int = 32,
    progress: bool = True,
) -> ValidationResult:
    """Validate located neurons causally (see the module docstring); returns a tidy table.

    ``neuron_sets`` is a :class:`~vlens.locate.LocateResult` (its statistics are used for the
    random controls) or a dict ``"<dimension>:<pole>" -> NeuronSet`` with ``stats``.
    """
    if isinstance(neuron_sets, LocateResult):
        stats = stats or neuron_sets.stats
        neuron_sets = neuron_sets.neuron_sets
    info = model_info(model)
    shape = (info.n_layers, info.d_mlp)
    for ns in neuron_sets.values():
        _check_set(shape, ns, model)
    gammas = [float(g) for g in gammas]
    bad = [g for g in gammas if not math.isfinite(g)]
    if bad:
        raise ValueError(f"gamma values must be finite numbers, got {bad}")
    if n_random < 2:
        raise ValueError(f"n_random must be at least 2 (a z-score needs a spread), got {n_random}")
    if stats is None:
        raise ValueError("validate needs the NeuronStats the sets were located with (pass a LocateResult or stats=...)")
    dims = list(dimensions) if dimensions else list(dict.fromkeys(k.rsplit(":", 1)[0] for k in neuron_sets))
    for d in dims:
        for p in "+-":
            if f"{d}:{p}" not in neuron_sets:
                raise ValueError(f"no neuron set for {d}:{p} (have: {', '.join(neuron_sets)})")
    instruments = instruments or Instruments.default(max_dilemmas=20, max_portrait=38, max_neutral=8)

    conditions = [Condition(None, None, "none", None, None, None)]
    edits = [Edit.identity(*shape, label="unedited")]
    for d in dims:
        value_mask = neuron_sets[f"{d}:+"].mask() | neuron_sets[f"{d}:-"].mask()
        for direction in directions:
            other = "-" if direction == "+" else "+"
            target, opposing = neuron_sets[f"{d}:{direction}"], neuron_sets[f"{d}:{other}"]
            if ablations:
                conditions.append(Condition(d, direction, "value", "clamp_only", 0.0, None))
                edits.append(value_edit(shape, target, opposing, 0.0, mode="clamp_only", keep_prob=keep_prob, seed=seed))
            for gamma in gammas:
                modes = ("paper", "boost_only") if ablations else ("paper",)
                for mode in modes:
                    conditions.append(Condition(d, direction, "value", mode, gamma, None))
                    edits.append(value_edit(shape, target, opposing, gamma, mode=mode, keep_prob=keep_prob, seed=seed))
                for r in range(n_random):
                    rs = seed * 100_003 + r
                    rt = random_like(target, rs, stats=stats, exclude=value_mask, match_frequency=match_frequency)
                    ro = random_like(opposing, rs + 50_000, stats=stats, exclude=value_mask | rt.mask(), match_frequency=match_frequency)
                    conditions.append(Condition(d, direction, "random", "paper", gamma, r))
                    edits.append(value_edit(shape, rt, ro, gamma, mode="paper", keep_prob=keep_prob, seed=rs))
    metrics = _evaluate_data_parallel(model, edits, instruments, batch_size=batch_size, progress=progress)
    rows = []
    for cond, m in zip(conditions, metrics, strict=True):
        base = {"steered": cond.steered or "", "direction": cond.direction or "", "source": cond.source,
                "mode": cond.mode or "", "gamma": cond.gamma, "seed": cond.seed}  # fmt: skip
        rows += metric_rows(base, m)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    meta = {
        "model": info.to_dict(), "vlens_version": vlens_version(), "dimensions": dims, "directions": list(directions),
        "gammas": gammas, "n_random": n_random, "match_frequency": match_frequency, "seed": seed, "keep_prob": keep_prob,
        "n_conditions": len(edits), "instrument_sizes": {k: len(v) for k, v in vars(instruments).items()},
        "instruments_sha256": sha256_json(vars(instruments)),
        "neuron_sets": {k: {"size": len(v), "provenance_dataset": v.provenance.get("dataset_sha256"),
                            "selection": v.params} for k, v in neuron_sets.items()},
    }  # fmt: skip
    return ValidationResult(table, meta)


def _evaluate_data_parallel(model: Any, edits: list[Edit], instruments: Instruments, **kwargs: Any) -> list[dict]:
    """All conditions on one process, or split over the ranks of a torch.distributed group.

    Every rank evaluates the unedited model (the KL reference) and every N-th condition;
    the metrics are gathered on all ranks in the original order.
    """
    from vlens import distributed

    rank, world = distributed.rank_world()
    if world == 1:
        return evaluate_edits(model, edits, instruments, **kwargs)
    mine = [0] + [j for j in range(1, len(edits)) if j % world == rank]
    local = evaluate_edits(model, [edits[j] for j in mine], instruments, **kwargs)
    by_index: dict[int, dict] = {}
    for part in distributed.gather_objects(list(zip(mine, local, strict=True))):
        for j, m in part:
            by_index.setdefault(j, m)
    return [by_index[j] for j in range(len(edits))]


def summarise_table(table: pd.DataFrame, metric: str = "orientation") -> pd.DataFrame:
    """One row per (steered dimension, direction, mode, gamma) of the value edits.

    ``shift`` is the change of the steered dimension's ``metric`` from the unedited model,
    signed toward the steering direction (positive = moved the intended way). Random edits
    give ``random_mean`` / ``random_sd``; ``z`` and the empirical ``p`` (one-sided, share
    of random edits that moved at least as far) compare the value edit with them. ``kl``
    is the capability cost; ``leakage`` the mean absolute shift of the other dimensions.
    """
    base = table[table.source == "none"]
    ref = base[base.metric == metric].set_index("measured")["value"]
    ref_kl = base[base.metric == "kl"]["value"].mean()
    out = []
    edited = table[table.source != "none"]
    for (steered, direction, gamma), group in edited.groupby(["steered", "direction", "gamma"], sort=False):
        sign = 1.0 if direction == "+" else -1.0
        rnd = group[(group.source == "random") & (group.metric == metric) & (group.measured == steered)]
        rnd_shift = sign * (rnd["value"] - ref.get(steered, float("nan")))
        rnd_kl = group[(group.source == "random") & (group.metric == "kl")]["value"]
        for mode, vg in group[group.source == "value"].groupby("mode", sort=False):
            m = vg[vg.metric == metric].set_index("measured")["value"]
            if steered not in m:
                continue
            shift = sign * (m[steered] - ref[steered])
            others = [d for d in m.index if d != steered and d in ref]
            leakage = float(sum(abs(m[d] - ref[d]) for d in others) / len(others)) if others else float("nan")
            kl = vg[vg.metric == "kl"]["value"]
            row = {"steered": steered, "direction": direction, "mode": mode, "gamma": gamma, "metric": metric,
                   "baseline": ref[steered], "edited": m[steered], "shift": shift,
                   "kl": float(kl.iloc[0]) if len(kl) else float("nan"), "leakage": leakage}  # fmt: skip
            if mode == "paper" and len(rnd_shift) >= 2:
                mean, sd = float(rnd_shift.mean()), float(rnd_shift.std(ddof=1))
                row |= {"random_mean": mean, "random_sd": sd, "z": (shift - mean) / sd if sd > 0 else float("nan"),
                        "p": (1 + int((rnd_shift >= shift).sum())) / (1 + len(rnd_shift)),
                        "random_kl": float(rnd_kl.mean()) if len(rnd_kl) else float("nan"), "n_random": len(rnd_shift)}  # fmt: skip
            out.append(row)
    df = pd.DataFrame(out)
    if len(df):
        df["baseline_kl"] = ref_kl
    return df
