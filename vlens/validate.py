"""Causal validation: do edits of the located neurons move value orientation more than other edits?

For every steered dimension and direction (``+``: toward the value; ``-``: reverse steering,
the two sets swapped), on held-out dilemmas:

- the **value edit** (the paper's gamma-scaled edit of the located sets);
- a **shared random null**: ``n_random`` random edits layer-matched to the union profile of the
  value sets, each measured on every dimension's items; the null of direction ``-`` is the
  sign-flipped null of ``+``;
- **positive controls**: *prompted* (the same dilemmas with a held-out value description
  stated before them: the behaviour itself, induced directly, the ceiling), a *steering vector*
  (difference of means in the residual stream) and a *dense* MLP edit (every neuron moved by
  its mean difference).

Every edit family is calibrated to the same cost before it is compared: its dose (gamma, or a
control's scale) is bisected until its KL on neutral text reaches each target
(``kl_targets``; 0.1 nats/token by default); doses can also be given by hand (``gammas``).
:func:`vlens.experiment.cells` turns the tidy table into one verdict per cell.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlens._io import VlensFileError, atomic_write, read_json, sha256_file, sha256_json, vlens_version, write_json
from vlens.evaluate import Instruments
from vlens.experiment import Family, cells, circumplex_changes, random_seeds, summarise
from vlens.interventions import _check_set, dosed_edit
from vlens.locate import LocateResult
from vlens.models import model_info
from vlens.neurons import NeuronSet
from vlens.stats import NeuronStats
from vlens.values import dimension


@dataclass
class ValidationResult:
    """The tidy table of a validation (one row per condition, metric and measured dimension or item),
    its metadata, and the dose calibration (one row per family and KL target)."""

    table: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)

    _summary: pd.DataFrame | None = field(default=None, init=False, repr=False, compare=False)

    def summary(self, **kwargs: Any) -> pd.DataFrame:
        """The verdict table: one row per dose level and (dimension, direction) cell (:func:`vlens.experiment.cells`).
        The default one is computed once (its bootstrap intervals take a few seconds) and kept."""
        if kwargs:
            return cells(self.table, **kwargs)
        if self._summary is None:
            self._summary = cells(self.table)
        return self._summary.copy()

    def circumplex(self) -> pd.DataFrame:
        """Does steering a dimension toward ``+`` move its circumplex opposite the other way?"""
        from vlens.significance import circumplex

        changes = circumplex_changes(self.table)
        return pd.concat([circumplex(g).assign(level=lv, at=at) for (lv, at), g in changes.groupby(["level", "at"])],
                         ignore_index=True)  # fmt: skip

    def shifts(self, metric: str = "orientation") -> pd.DataFrame:
        """Per value edit, the change of ``metric`` beside its random edits' (the per-gamma view of earlier vlens)."""
        return summarise(self.table, metric)

    def save(self, folder: str | os.PathLike) -> Path:
        """The table, its verdicts, the calibration and the metadata; the metadata records the table's row
        count and sha256, so a table cut short or edited later is refused on loading."""
        folder = Path(folder)
        atomic_write(folder / "validation.csv", lambda tmp: self.table.to_csv(tmp, index=False))
        atomic_write(folder / "validation_summary.csv", lambda tmp: self.summary().to_csv(tmp, index=False))
        atomic_write(folder / "calibration.csv", lambda tmp: self.calibration.to_csv(tmp, index=False))
        table = {"rows": len(self.table), "sha256": sha256_file(folder / "validation.csv")}
        write_json(folder / "validation.json", self.meta | {"table": table})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ValidationResult:
        """Reload what :meth:`save` wrote, refusing a table that does not match its metadata."""
        folder = Path(folder)
        csv, meta = folder / "validation.csv", read_json(folder / "validation.json")
        if not csv.exists():
            raise VlensFileError(f"{csv} is missing (validation.json is there); rerun the validate stage")
        try:
            table = pd.read_csv(csv)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise VlensFileError(f"{csv} cannot be read ({err}); rerun the validate stage") from err
        want = meta.get("table")  # absent in runs saved before vlens recorded it
        if want and (len(table) != want["rows"] or sha256_file(csv) != want["sha256"]):
            raise VlensFileError(f"{csv} does not match validation.json ({len(table)} rows, {want['rows']} recorded, or its "
                                 "checksum differs): it was cut short or edited; rerun the validate stage")  # fmt: skip
        cal = folder / "calibration.csv"
        calibration = pd.read_csv(cal) if cal.exists() and cal.stat().st_size > 1 else pd.DataFrame()
        return cls(table, meta, calibration)


CONTROLS = ("prompted", "steering", "dense")
MAX_DOSE = {"value": 32.0, "random": 32.0, "steering": 256.0, "dense": 256.0}  # bisection bounds per family


def validate(
    model: Any,
    neuron_sets: LocateResult | dict[str, NeuronSet],
    *,
    stats: NeuronStats | None = None,
    instruments: Instruments | None = None,
    dimensions: Sequence[str] | None = None,
    directions: Sequence[str] = ("+", "-"),
    kl_targets: Sequence[float] = (0.1,),
    gammas: Sequence[float] = (),
    n_random: int = 20,
    controls: Sequence[str] = CONTROLS,
    descriptions: Sequence[dict[str, Any]] | None = None,
    steering: Any = None,
    match_frequency: bool = False,
    max_dose: dict[str, float] | None = None,
    tol: float = 0.1,
    seed: int = 0,
    keep_prob: float = 0.9,
    batch_size: int = 32,
    progress: bool = True,
    scope: str = "answer",
) -> ValidationResult:
    """Validate located neurons causally (see the module docstring); returns a tidy table.

    ``neuron_sets`` is a :class:`~vlens.locate.LocateResult` (its statistics are used for the
    random edits and the dense control) or a dict ``"<dimension>:<pole>" -> NeuronSet`` with
    ``stats``. ``descriptions``: value descriptions for the prompted control (default: the
    shipped data's held-out ``test`` descriptions where the data has them). ``steering``: a
    :class:`vlens.controls.SteeringVectors` (default: from 24 contrastive prompt pairs per
    dimension of the shipped data, at the middle layer). ``scope`` is where the edits act
    (:func:`vlens.evaluate.evaluate_edits`): ``"answer"`` (the last prompt token and the answer;
    the neutral text of the cost everywhere) or ``"all"``.
    """
    from vlens.experiment import shared_random_pairs

    if isinstance(neuron_sets, LocateResult):
        stats = stats or neuron_sets.stats
        neuron_sets = neuron_sets.neuron_sets
    info = model_info(model)
    shape = (info.n_layers, info.d_mlp)
    for ns in neuron_sets.values():
        _check_set(shape, ns, model)
    kl_targets, gammas = check_doses(kl_targets, gammas)
    check_null_and_controls(n_random, controls)
    if stats is None:
        raise ValueError("validate needs the NeuronStats the sets were located with (pass a LocateResult or stats=...)")
    located = dict.fromkeys(k.rsplit(":", 1)[0] for k in neuron_sets)
    dims = [dimension(d).name for d in dimensions] if dimensions else list(located)
    if missing := [f"{d}:{p}" for d in dims for p in "+-" if f"{d}:{p}" not in neuron_sets]:
        raise ValueError(f"no neuron set for {', '.join(missing)} (have: {', '.join(neuron_sets)})")
    if "steering" in controls and steering is None:  # from the shipped data's own contrastive prompts
        steering = default_steering(model, dims, batch_size=batch_size)
    instruments = instruments or Instruments.default(max_dilemmas=24, max_portrait=0, max_neutral=4)
    if not instruments.dilemmas:
        raise ValueError("validation needs dilemmas to measure orientation on; the instruments have none")
    max_dose = MAX_DOSE | (max_dose or {})

    families = []
    for d in dims:
        for direction in directions:
            target, opposing = neuron_sets[f"{d}:{direction}"], neuron_sets[f"{d}:{'-' if direction == '+' else '+'}"]
            families.append(value_family(shape, target, opposing, d, direction, selector=target.method, keep_prob=keep_prob,
                                         seed=seed))  # fmt: skip
            families += _control_families(model, stats, steering, controls, d, direction)
    value_sets = [neuron_sets[f"{d}:{p}"] for d in dims for p in "+-"]
    pairs = shared_random_pairs(value_sets, n_random, seed, stats=stats, match_frequency=match_frequency)
    families += random_families(shape, pairs, selector="random", keep_prob=keep_prob, seed=seed)
    table, calibration, prompted_meta, n_conditions = evaluate_families(
        model, families, instruments, kl_targets=kl_targets, gammas=gammas, max_dose=max_dose, tol=tol, controls=controls,
        descriptions=descriptions, directions=directions, seed=seed, batch_size=batch_size, progress=progress, scope=scope)  # fmt: skip
    meta = {
        "model": info.to_dict(), "vlens_version": vlens_version(), "dimensions": dims, "directions": list(directions),
        "kl_targets": kl_targets, "gammas": gammas, "n_random": n_random, "controls": list(controls),
        "prompted": prompted_meta, "dilemma_variant": instruments.dilemma_variant, "max_dose": max_dose, "tol": tol,
        "scope": scope,
        "match_frequency": match_frequency, "seed": seed, "keep_prob": keep_prob, "n_conditions": n_conditions,
        "instrument_sizes": {k: len(v) for k, v in instruments.items().items()},
        "instruments_sha256": sha256_json(instruments.items()),
        "neuron_sets": {k: {"size": len(v), "provenance_dataset": v.provenance.get("dataset_sha256"),
                            "provenance_dataset_version": v.provenance.get("dataset_version"),
                            "selection": v.params} for k, v in neuron_sets.items()},
    }  # fmt: skip
    result = ValidationResult(table, meta, calibration)
    result.summary()  # a table that cannot be summarised fails here, not later in the report
    return result


def check_doses(kl_targets: Sequence[float], gammas: Sequence[float]) -> tuple[list[float], list[float]]:
    """The KL targets and hand-given gammas as floats, or one clear error."""
    kl_targets, gammas = [float(t) for t in kl_targets or ()], [float(g) for g in gammas or ()]
    if not kl_targets and not gammas:
        raise ValueError("give KL targets (kl_targets=[0.1]) or doses by hand (gammas=[1.0]): there is nothing to run")
    if bad := [t for t in kl_targets if not (math.isfinite(t) and t > 0)]:
        raise ValueError(f"KL targets must be finite and > 0 (nats per token, e.g. 0.05,0.1,0.2), got {bad}")
    if bad := [g for g in gammas if not (math.isfinite(g) and g > 0)]:
        raise ValueError(f"gammas must be finite and > 0 (reverse steering is the '-' direction), got {bad}")
    return kl_targets, gammas


def _held_out_descriptions(descriptions: Sequence[dict[str, Any]] | None, data: Any = None) -> tuple[list[dict[str, Any]], bool]:
    """The prompted control's descriptions (default: the ``test`` ones of ``data``, else of the shipped data;
    v1 data has no description split, so it states locate's own), and whether locate never saw them."""
    if descriptions is None:
        from vlens.data import load_value_data

        descriptions = (data or load_value_data()).descriptions_of("test")
    descriptions = list(descriptions)
    return descriptions, bool(descriptions) and all(d.get("split") == "test" for d in descriptions)


def check_null_and_controls(n_random: int, controls: Sequence[str]) -> None:
    """One clear error for a null without a spread or an unknown positive control."""
    if n_random < 2:
        raise ValueError(f"n_random must be at least 2 (a null needs a spread), got {n_random}")
    if unknown := sorted(set(controls) - set(CONTROLS)):
        raise ValueError(f"unknown control(s) {unknown}; expected some of {', '.join(CONTROLS)}")


def default_steering(model: Any, dims: Sequence[str], *, data: Any = None, prompts: Sequence[Any] | None = None,
                     batch_size: int = 32) -> Any:  # fmt: skip
    """The steering-vector control's default vectors: from ``prompts`` (locate's contrastive prompts) when
    given, else from 24 contrastive prompt pairs per dimension of ``data`` (default: the shipped data)."""
    from vlens.controls import steering_vectors
    from vlens.data import build_prompts, load_value_data

    if prompts is None:
        prompts = build_prompts(data or load_value_data(), model, dimensions=list(dims), max_pairs=24)
    return steering_vectors(model, prompts, batch_size=batch_size)


def value_family(shape: tuple[int, int], target: NeuronSet, opposing: NeuronSet, d: str, direction: str, *, selector: str,
                 keep_prob: float, seed: int) -> Family:  # fmt: skip
    """Steering ``d`` toward ``direction`` with ``target`` boosted and ``opposing`` clamped, its gamma free."""
    make = lambda g: dosed_edit(shape, target, opposing, g, keep_prob=keep_prob, seed=seed)  # noqa: E731
    return Family("value", make, d, direction, size=len(target), selector=selector)


def random_families(shape: tuple[int, int], pairs: Sequence[tuple[NeuronSet, NeuronSet]], *, selector: str,
                    keep_prob: float, seed: int) -> list[Family]:  # fmt: skip
    """The shared null's families, one per (boosted, clamped) pair r, with random edit r's Bernoulli seed."""
    def make(boost: NeuronSet, clamp: NeuronSet, r: int) -> Any:
        return lambda g: dosed_edit(shape, boost, clamp, g, keep_prob=keep_prob, seed=random_seeds(seed, r)[0])

    return [Family("random", make(b, c, r), seed=r, size=len(b), selector=selector) for r, (b, c) in enumerate(pairs)]


def evaluate_families(
    model: Any, families: Sequence[Family], instruments: Instruments, *, kl_targets: Sequence[float],
    gammas: Sequence[float], max_dose: dict[str, float], tol: float, controls: Sequence[str],
    descriptions: Sequence[dict[str, Any]] | None, directions: Sequence[str] = ("+", "-"), data: Any = None,
    seed: int = 0, batch_size: int = 32, progress: bool = True, scope: str = "answer",
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any] | None, int]:  # fmt: skip
    """Every family at every dose (one :func:`vlens.experiment.dosed_conditions` call, one
    :func:`vlens.experiment.run`), plus the prompted control when ``controls`` has it (its descriptions
    default to the ``test`` ones of ``data``). Returns the tidy table, the calibration, the prompted
    control's record and the number of conditions evaluated."""
    from vlens.experiment import dosed_conditions, prompted_conditions, run

    conditions, calibration = dosed_conditions(model, families, instruments, kl_targets=kl_targets, gammas=gammas,
                                               max_dose=max_dose, tol=tol, batch_size=batch_size, progress=progress)  # fmt: skip
    table = run(model, conditions, instruments, batch_size=batch_size, progress=progress, scope=scope)
    prompted_meta = None
    if "prompted" in controls:
        descriptions, held_out = _held_out_descriptions(descriptions, data)
        table = pd.concat([table, prompted_conditions(model, instruments, descriptions, directions=directions, seed=seed,
                                                      batch_size=batch_size)], ignore_index=True)  # fmt: skip
        prompted_meta = {"descriptions": len(descriptions), "held_out": held_out}
    return table, calibration, prompted_meta, len(conditions) + 1


def _control_families(model: Any, stats: NeuronStats, steering: Any, controls: Sequence[str], d: str, direction: str) -> list:
    """The steering-vector and dense-MLP controls of one cell, as dose families."""
    from vlens.experiment import Family

    out = []
    if "steering" in controls:
        out.append(Family("steering", lambda s: steering.edit(model, d, direction, s), d, direction, selector="steering"))
    if "dense" in controls:
        from vlens.controls import dense_mlp_edit

        shape = (model_info(model).n_layers, model_info(model).d_mlp)
        out.append(Family("dense", lambda s: dense_mlp_edit(stats, d, direction, s, shape=shape), d, direction,
                          selector="dense"))  # fmt: skip
    return out
