"""Causal validation: edit the value neurons, measure the shift, compare with size-matched random edits.

For every steered dimension, direction (``+``: toward the value; ``-``: reverse steering,
the two sets swapped) and gamma, the conditions are: the value edit (paper mode), its
boost-only half, its clamp-only half (gamma-free), and ``n_random`` random edits with the
same number of neurons per layer (optionally matched on activation frequency), built and
evaluated by the experiment core (:mod:`vlens.experiment`, shared with ``compare``).

The result is a tidy table, one row per (condition, metric, measured dimension), and a
summary (:func:`vlens.experiment.summarise`) with the shift of each value edit, the random
shifts' mean and sd, the z-score, the empirical p-value, the capability cost and the
leakage into the other dimensions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlens._io import VlensFileError, atomic_write, read_json, sha256_file, sha256_json, vlens_version, write_json
from vlens.evaluate import Instruments
from vlens.experiment import check_design, run, steering_conditions, summarise
from vlens.interventions import _check_set
from vlens.locate import LocateResult
from vlens.models import model_info
from vlens.neurons import NeuronSet
from vlens.stats import NeuronStats
from vlens.values import dimension


@dataclass
class ValidationResult:
    table: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self, metric: str = "orientation") -> pd.DataFrame:
        return summarise(self.table, metric)

    def save(self, folder: str | os.PathLike) -> Path:
        """The table, its summary and the metadata; the metadata records the table's row count and
        sha256, so a table cut short or edited later is refused on loading."""
        folder = Path(folder)
        atomic_write(folder / "validation.csv", lambda tmp: self.table.to_csv(tmp, index=False))
        atomic_write(folder / "validation_summary.csv", lambda tmp: self.summary().to_csv(tmp, index=False))
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
        return cls(table, meta)


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
    scope: str = "answer",
) -> ValidationResult:
    """Validate located neurons causally (see the module docstring); returns a tidy table.

    ``neuron_sets`` is a :class:`~vlens.locate.LocateResult` (its statistics are used for the
    random controls) or a dict ``"<dimension>:<pole>" -> NeuronSet`` with ``stats``. ``scope``
    is where the edits act (:func:`vlens.evaluate.evaluate_edits`): ``"answer"`` (the last
    prompt token and the answer; the neutral text of the cost everywhere) or ``"all"``.
    """
    if isinstance(neuron_sets, LocateResult):
        stats = stats or neuron_sets.stats
        neuron_sets = neuron_sets.neuron_sets
    info = model_info(model)
    shape = (info.n_layers, info.d_mlp)
    for ns in neuron_sets.values():
        _check_set(shape, ns, model)
    gammas = check_design(gammas, n_random)
    if stats is None:
        raise ValueError("validate needs the NeuronStats the sets were located with (pass a LocateResult or stats=...)")
    located = dict.fromkeys(k.rsplit(":", 1)[0] for k in neuron_sets)
    dims = [dimension(d).name for d in dimensions] if dimensions else list(located)
    if missing := [f"{d}:{p}" for d in dims for p in "+-" if f"{d}:{p}" not in neuron_sets]:
        raise ValueError(f"no neuron set for {', '.join(missing)} (have: {', '.join(neuron_sets)})")
    instruments = instruments or Instruments.default(max_dilemmas=20, max_portrait=38, max_neutral=8)
    modes = ("clamp_only", "paper", "boost_only") if ablations else ("paper",)
    conditions = []
    for d in dims:
        for direction in directions:
            target, opposing = neuron_sets[f"{d}:{direction}"], neuron_sets[f"{d}:{'-' if direction == '+' else '+'}"]
            conditions += steering_conditions(shape, target, opposing, gammas, modes=modes, n_random=n_random, stats=stats,
                                              match_frequency=match_frequency, keep_prob=keep_prob, seed=seed)  # fmt: skip
    table = run(model, conditions, instruments, batch_size=batch_size, progress=progress, scope=scope)
    meta = {
        "model": info.to_dict(), "vlens_version": vlens_version(), "dimensions": dims, "directions": list(directions),
        "gammas": gammas, "n_random": n_random, "match_frequency": match_frequency, "seed": seed, "keep_prob": keep_prob,
        "scope": scope,
        "n_conditions": len(conditions) + 1, "instrument_sizes": {k: len(v) for k, v in vars(instruments).items()},
        "instruments_sha256": sha256_json(vars(instruments)),
        "neuron_sets": {k: {"size": len(v), "provenance_dataset": v.provenance.get("dataset_sha256"),
                            "provenance_dataset_version": v.provenance.get("dataset_version"),
                            "selection": v.params} for k, v in neuron_sets.items()},
    }  # fmt: skip
    return ValidationResult(table, meta)

