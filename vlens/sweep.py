"""``vlens sweep``: which locate settings give neurons that matter, chosen on dev and reported on test.

A grid of locate settings (:class:`Grid`), each **cell** a run directory of its own under
``DIR/cells/<cell id>/`` that :func:`vlens.pipeline.run_pipeline` locates and validates (no generation, no
report). A cell whose validation is done is skipped, so an interrupted sweep continues where it stopped
(``--resume``), and a grid can grow later. Cells that differ only in their selection share one set of
statistics: the first of them locates, the others select from its statistics (locate is the expensive
step, selection is not).

Cell ids name their settings: ``scope=question,hook=post,sel=paper,score=delta``. The axes:

- ``scope``: the tokens that count when locating (``question``, ``generated``, ``all``, ``last``);
- ``hook``: ``post`` (``act(gate) * up``) or ``gate`` (``act(gate)``, the authors' reading);
- ``sel``: a selection rule without options (``paper``, ``top_k:300``, ``top_frac:0.01``, ``threshold:0.05``);
- ``score``: ``delta`` (the paper's), ``cohens_d``, ... (:data:`vlens.scores.SCORES`). With another score
  than delta the ``paper`` preset keeps its top 2,000 only (``top_k:2000``): its 0.1 threshold is a
  delta, which means nothing on another score's scale.

Named grids: ``paper`` is the paper-faithful cell (generated, gate, paper, delta); ``full`` is the
issue's grid, scope question / generated / all x hook post / gate x sel paper / top_k:300 with score
delta, then Cohen's d (both selections) at the scope x hook of the best delta cell on dev.

**Dev and test.** Settings are chosen on the ``dev`` dilemmas (held out from locate, never ``test``):
every cell is validated there. The best cell is then validated once more on the ``test`` dilemmas
(``DIR/test/<cell id>/``, the same neuron sets), and only that number is a result. The rule
(:func:`choose`): the mean, over the cell's (dimension, direction) rows at every KL target (matched cost;
the hand-given gammas when there are no KL targets), of ``z``, the value edit's shift against the random
null of the same cost in null standard deviations, signed toward the steered direction. One number over
all dimensions, both directions and all costs, so no single lucky row decides; a non-specific edit that
moves orientation the same way in both directions scores about 0; rows with no z (a null without spread)
are left out; ties go to the earlier cell of the grid. The prompted control does not enter the rule.

**Stability** (:mod:`vlens.stability`), per cell: the same prompt pairs split in two halves by question,
each located once per scope x hook (``DIR/stability/``), the cell's selection on each half, the Jaccard of
the two sets against chance and the Spearman correlation of the scores; the overlap of every set with its
circumplex mirror (Openness_to_Change ``+`` with Conservation ``-``, ...) against chance; the layer profile.

Output: ``DIR/sweep.csv`` (one row per cell x split x dose level x dimension x direction, see
:data:`COLUMNS`), ``DIR/sweep.png`` (:func:`vlens.viz.sweep_effects`), ``DIR/sweep.html`` and ``sweep.md``
(:func:`vlens.report.write_sweep_report`).

The study of issue 17, reproduced (hours on a CPU). SmolLM2-135M-Instruct, the whole grid; then
Gemma-3-270M, the paper-faithful cell and the two best SmolLM2 cells on dev (``BEST1``, ``BEST2``: their
ids, from the ``cell score`` column of ``runs/sweep-smollm2/sweep.md``)::

    vlens sweep --out runs/sweep-smollm2 --grid full --full
    vlens sweep --out runs/sweep-gemma --model gemma-3-270m --full --grid paper BEST1 BEST2

A quick look (minutes): ``vlens sweep --out runs/sweep-quick --grid scope=question,all hook=post,gate``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vlens._io import atomic_write, read_json, vlens_version, write_json
from vlens.pipeline import LocateConfig, Run, RunConfig, RunDirError, check_run_dir, run_pipeline

AXES = ("scope", "hook", "sel", "score")
SWEEP_FULL = ("max_pairs", "max_dilemmas", "max_neutral", "kl_targets", "n_random")
"""The settings ``vlens sweep --full`` lifts to :data:`vlens.pipeline.FULL` (portrait items and questions stay out)."""
TOP_K_300 = "top_k:300"
RULE = ("the best cell on dev has the largest mean z over its (dimension, direction) rows at every KL target "
        "(z: the value edit's shift against the random null of the same KL, in null standard deviations, signed toward "
        "the steered direction); only the best cell is validated on test")  # fmt: skip
COLUMNS = [
    "cell", "scope", "hook", "sel", "score", "split", "chosen", "cell_score", "level", "at", "steered", "direction",
    "verdict", "effect", "ci_low", "ci_high", "z", "p_greater_holm", "p_less_holm", "null_mean", "null_sd", "band_low",
    "band_high", "n_null", "n_items", "kl", "random_kl", "prompted_shift", "prompted_z", "steering_shift", "steering_z",
    "dense_shift", "dense_z", "set_size", "half_overlap", "half_jaccard", "half_jaccard_chance", "half_p",
    "half_spearman", "mirror", "mirror_overlap", "mirror_expected", "mirror_p", "layer_profile",
]  # fmt: skip
"""The columns of ``sweep.csv``. ``split``: the dilemmas the row's numbers come from (``dev`` or ``test``);
``cell_score``: the choosing rule's number (:func:`choose`); ``effect`` .. ``dense_z``: the cell's verdict
table (:func:`vlens.experiment.cells`), with ``band_low``/``band_high`` = null mean -/+ 2 null sd (the
random band); ``set_size``: the steered direction's set; ``half_*``: its split-half stability (overlap,
Jaccard, chance Jaccard, hypergeometric p, Spearman of the scores); ``mirror*``: its overlap with its
circumplex mirror set against chance; ``layer_profile``: its neurons per layer."""


class SweepError(RunDirError):
    """A sweep cannot run as asked (a bad grid, a folder holding another sweep...)."""


@dataclass(frozen=True)
class Cell:
    """One setting of the grid."""

    scope: str
    hook: str
    sel: str
    score: str = "delta"

    def __post_init__(self) -> None:
        from vlens.activations import SCOPES
        from vlens.neurons import Selection
        from vlens.runner import HOOK_POINTS
        from vlens.scores import SCORES

        for axis, value, choices in (("scope", self.scope, SCOPES), ("hook", self.hook, tuple(HOOK_POINTS)),
                                     ("score", self.score, SCORES)):  # fmt: skip
            if value not in choices:
                raise SweepError(f"grid: unknown {axis} {value!r}; choose from {', '.join(choices)}")
        if "," in self.sel or "=" in self.sel:
            raise SweepError(f"grid: sel {self.sel!r} takes no options here; give a rule such as paper or top_k:300")
        try:
            Selection.parse(self.selection)
        except ValueError as err:
            raise SweepError(f"grid: sel {self.sel!r}: {err}") from None

    @property
    def id(self) -> str:
        return f"scope={self.scope},hook={self.hook},sel={self.sel},score={self.score}"

    @property
    def selection(self) -> str:
        """The :class:`~vlens.neurons.Selection` string of the cell (see the module docstring for ``paper``)."""
        if self.score == "delta":
            return self.sel
        return f"{'top_k:2000' if self.sel == 'paper' else self.sel},score={self.score}"

    @classmethod
    def parse(cls, text: str) -> Cell:
        """From a cell id, ``scope=question,hook=post,sel=paper,score=delta`` (score may be left out)."""
        parts = dict(p.partition("=")[::2] for p in text.split(","))
        if unknown := sorted(set(parts) - set(AXES)) or sorted({"scope", "hook", "sel"} - set(parts)):
            raise SweepError(f"grid: cell {text!r} must name scope, hook, sel (and optionally score) once each, "
                             f"e.g. scope=question,hook=post,sel=paper,score=delta (wrong or missing: {', '.join(unknown)})")  # fmt: skip
        return cls(**parts)

    def config(self, base: RunConfig, split: str) -> RunConfig:
        """``base`` with this cell's locate settings, validated on the ``split`` dilemmas."""
        return RunConfig(dataclasses.replace(base.locate, scope=self.scope, hook=self.hook, selection=self.selection),
                         dataclasses.replace(base.validate, dilemma_split=split))  # fmt: skip


PAPER_CELL = Cell("generated", "gate", "paper", "delta")
FULL_AXES = {"scope": ("question", "generated", "all"), "hook": ("post", "gate"), "sel": ("paper", TOP_K_300),
             "score": ("delta",)}  # fmt: skip


@dataclass
class Grid:
    """The cells of a sweep; ``best_scores`` are run after them, at the scope x hook of the best cell on
    dev (the ``full`` grid's Cohen's d), with every selection of ``best_sels``."""

    cells: list[Cell]
    best_scores: tuple[str, ...] = ()
    best_sels: tuple[str, ...] = ()

    @classmethod
    def parse(cls, specs: str | Sequence[str], base: LocateConfig | None = None) -> Grid:
        """From the words of ``--grid``: ``paper``, ``full``, cell ids, and ``NAME=v1,v2`` axes (NAME one of
        scope, hook, sel, score), which together make one product; an axis not named keeps ``base``'s value."""
        from vlens.neurons import Selection

        base = base or LocateConfig()
        specs = [specs] if isinstance(specs, str) else list(specs)
        if not specs:
            raise SweepError("grid: empty; give paper, full, NAME=v1,v2 (NAME: scope, hook, sel, score) or cell ids")
        cells: list[Cell] = []
        axes: dict[str, list[str]] = {}
        best_scores: tuple[str, ...] = ()
        for spec in specs:
            if spec == "paper":
                cells.append(PAPER_CELL)
            elif spec == "full":
                cells += [Cell(*values) for values in itertools.product(*FULL_AXES.values())]
                best_scores = ("cohens_d",)
            elif spec.count("=") > 1:
                cells.append(Cell.parse(spec))
            elif "=" in spec:
                name, _, values = spec.partition("=")
                if name not in AXES:
                    raise SweepError(f"grid: unknown axis {name!r} in {spec!r}; the axes are {', '.join(AXES)}")
                if name in axes:
                    raise SweepError(f"grid: axis {name} is given twice; list all its values once, e.g. {name}=a,b")
                axes[name] = [v.strip() for v in values.split(",") if v.strip()]
                if not axes[name]:
                    raise SweepError(f"grid: axis {name} has no values in {spec!r}; e.g. {name}=a,b")
            else:
                raise SweepError(f"grid: unknown grid {spec!r}; give paper, full, NAME=v1,v2 (NAME: {', '.join(AXES)}) "
                                 "or a cell id like scope=question,hook=post,sel=paper,score=delta")  # fmt: skip
        if axes:
            selection = Selection.parse(base.selection)
            default = {"scope": base.scope, "hook": base.hook, "sel": base.selection.split(",")[0], "score": selection.score}
            cells += [Cell(*values) for values in itertools.product(*(axes.get(a, [default[a]]) for a in AXES))]
        return cls(list(dict.fromkeys(cells)), best_scores, FULL_AXES["sel"] if best_scores else ())


@dataclass
class SweepResult:
    """The sweep table (:data:`COLUMNS`), the chosen cell (None without dev) and the folder."""

    table: pd.DataFrame
    best: str | None
    folder: Path


def sweep(
    model_name: str, grid: Grid | str | Sequence[str] | None, out_dir: str | os.PathLike, *, base: RunConfig | None = None,
    dev: bool = True, stability: bool = True, resume: bool = False, model: Any = None, device: str | None = None,
    progress: bool = True,
) -> SweepResult:  # fmt: skip
    """Locate and validate every cell of ``grid`` on ``model_name`` into ``out_dir`` (see the module docstring).

    ``base``: every setting that is not a grid axis (sample sizes, KL targets, random edits ...).
    ``dev``: validate the cells on the dev dilemmas and the chosen one on test (default); ``dev=False``
    validates every cell on test and chooses nothing. ``stability``: the split-half checks (two more
    locate passes per scope x hook). ``resume``: continue a sweep ``out_dir`` already holds; its grid grows by
    ``grid`` (None: the cells it holds).
    ``model``: an already loaded model (it must be ``model_name``).
    """
    import vlens

    base = base or RunConfig()
    base = RunConfig(dataclasses.replace(base.locate, model=model_name), base.validate)
    if grid is not None and not isinstance(grid, Grid):
        grid = Grid.parse(grid, base.locate)
    folder = Path(out_dir)
    grid, record = _claim(folder, base, dev, resume, grid)
    model = model if model is not None else vlens.load_model(model_name, device=device)  # a wrong name leaves no folder
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "sweep.json", record)
    split = "dev" if dev else "test"
    run = lambda cell, where, split: _run_cell(cell, folder, where, base, split, model, progress)  # noqa: E731
    for cell in grid.cells:
        run(cell, "cells", split)
        if stability:
            _halves(cell, folder, base, model, progress)
    if grid.best_scores:  # the second phase of the full grid: other scores where delta did best
        at = _best_cell(folder, [c for c in grid.cells if c.score == "delta"]) if dev else None
        scope, hook = (at.scope, at.hook) if at else (base.locate.scope, base.locate.hook)
        extra = [Cell(scope, hook, sel, score) for score in grid.best_scores for sel in grid.best_sels]
        grid = Grid(list(dict.fromkeys(grid.cells + extra)))
        for cell in extra:
            run(cell, "cells", split)
            if stability:
                _halves(cell, folder, base, model, progress)
    best = _best_cell(folder, grid.cells) if dev else None
    if best is not None:
        run(best, "test", "test")
    table = sweep_table(folder, grid.cells, best=best, stability=stability)
    atomic_write(folder / "sweep.csv", lambda tmp: table.to_csv(tmp, index=False))
    _write_outputs(folder, table, model_name, dev)
    return SweepResult(table, best.id if best else None, folder)


def _claim(folder: Path, base: RunConfig, dev: bool, resume: bool, grid: Grid | None) -> tuple[Grid, dict[str, Any]]:
    """Check ``folder`` against ``sweep.json`` when resuming (the settings every cell shares, and the grid, which
    a resumed sweep extends by ``grid``); returns the whole grid and the record to write."""
    shared = {k: v for k, v in base.to_dict().items() if k not in ("scope", "hook", "selection")}
    path = folder / "sweep.json"
    if path.exists():
        if not resume:
            raise SweepError(f"{folder} already holds a sweep; pass --resume to continue it or choose a new --out")
        old = read_json(path)
        if old.get("vlens_version") != vlens_version():
            raise SweepError(f"{folder} was swept by vlens {old.get('vlens_version')}, this is vlens {vlens_version()}; "
                             "choose a new --out")  # fmt: skip
        saved = old.get("config", {})
        changed = sorted(k for k in set(shared) | set(saved) if saved.get(k) != shared.get(k))
        if changed or old.get("dev") != dev:
            raise SweepError(f"{folder} holds a sweep with other settings ({', '.join(changed or ['dev'])} differ); "
                             "resume it with those settings or choose a new --out")  # fmt: skip
        g = old["grid"]
        before = Grid([Cell.parse(c) for c in g["cells"]], tuple(g["best_scores"]), tuple(g["best_sels"]))
        grid = before if grid is None else Grid(list(dict.fromkeys(before.cells + grid.cells)),
                                                tuple(dict.fromkeys(before.best_scores + grid.best_scores)),
                                                tuple(dict.fromkeys(before.best_sels + grid.best_sels)))  # fmt: skip
    elif resume:
        raise SweepError(f"--resume: {folder} holds no sweep (no sweep.json); leave out --resume to start one there")
    elif grid is None:
        raise SweepError("no grid given; give paper, full, NAME=v1,v2 (NAME: scope, hook, sel, score) or cell ids")
    record = {"vlens_version": vlens_version(), "config": shared, "dev": dev,
              "grid": {"cells": [c.id for c in grid.cells], "best_scores": list(grid.best_scores),
                       "best_sels": list(grid.best_sels)}}  # fmt: skip
    return grid, record


def _done(cell_dir: Path, stage: str) -> bool:
    return (cell_dir / "run.json").exists() and stage in check_run_dir(cell_dir)["done"]


def _run_cell(cell: Cell, folder: Path, where: str, base: RunConfig, split: str, model: Any, progress: bool) -> Path:
    """Locate (or select from a located sibling's statistics) and validate one cell, unless done."""
    from vlens.locate import from_stats
    from vlens.stats import NeuronStats

    cell_dir = folder / where / cell.id
    if _done(cell_dir, "validate"):
        return cell_dir
    config = cell.config(base, split)
    if not _done(cell_dir, "locate") and (source := _located_sibling(folder, config.locate)) is not None:
        stats = NeuronStats.load(source / "locate" / "stats")
        result = from_stats(stats, config.locate.selection)
        run = Run(cell_dir, config, resume=True)
        result.save(cell_dir / "locate")
        run.finish("locate", 0.0, located_from=str(source.relative_to(folder)))
        run.log.info("selected %s from the statistics of %s", config.locate.selection, source)
        del run  # releases the directory's lock before run_pipeline takes it
    return run_pipeline(cell_dir, config, resume=True, stages=("locate", "validate"), model=model, progress=progress)


def _located_sibling(folder: Path, lc: LocateConfig) -> Path | None:
    """A cell directory of this sweep located with the same settings as ``lc`` except the selection."""
    want = {k: v for k, v in dataclasses.asdict(lc).items() if k != "selection"}
    for cell_dir in sorted(p for where in ("cells", "test") if (folder / where).is_dir() for p in (folder / where).iterdir()):
        if _done(cell_dir, "locate"):
            cfg = check_run_dir(cell_dir)["config"]
            if all(cfg.get(k) == v for k, v in want.items()):
                return cell_dir
    return None


def _halves_dir(folder: Path, cell: Cell) -> Path:
    return folder / "stability" / f"scope={cell.scope},hook={cell.hook}"


def _halves(cell: Cell, folder: Path, base: RunConfig, model: Any, progress: bool) -> None:
    """Locate the two disjoint halves of the cell's prompt pairs, once per scope x hook (kept on disk)."""
    import vlens
    from vlens.locate import locate
    from vlens.stability import split_pairs

    out = _halves_dir(folder, cell)
    if all((out / f"{h}.json").exists() for h in ("half-a", "half-b")):
        return
    lc = base.locate
    prompts = vlens.build_prompts(vlens.load_value_data(lc.data_dir), model, dimensions=lc.dimensions, template=lc.template,
                                  pairs_per_question=lc.pairs_per_question, max_pairs=lc.max_pairs, seed=lc.seed)  # fmt: skip
    for name, half in zip(("half-a", "half-b"), split_pairs(prompts, seed=lc.seed), strict=True):
        if not (out / f"{name}.json").exists():
            # only the statistics are kept: each cell selects from them with its own rule
            stats = locate(model, half, scope=cell.scope, hook=cell.hook, selection="top_k:1", batch_size=lc.batch_size,
                           progress=progress).stats  # fmt: skip
            stats.save(out / name)


def choose(table: pd.DataFrame) -> pd.Series:
    """Each cell's score under the choosing rule (module docstring), from the dev rows of a sweep table
    (columns ``cell``, ``split``, ``level``, ``z``): the mean z over its rows at every KL target (over its
    hand-given gammas when the table has no KL target). Indexed by cell, in the table's order; nan for a
    cell without any z."""
    dev = table[table.split == "dev"]
    if dev.empty:
        raise ValueError("the sweep table has no dev rows; the best cell is chosen on dev only")
    rows = dev[dev.level == "kl"] if (dev.level == "kl").any() else dev
    return rows.groupby("cell", sort=False)["z"].mean().reindex(list(dict.fromkeys(dev.cell)))


def _best_cell(folder: Path, cells: Sequence[Cell]) -> Cell | None:
    table = pd.concat([_cell_rows(folder / "cells" / c.id, c) for c in cells], ignore_index=True)
    scores = choose(table)
    if scores.isna().all():
        return None
    best = scores.idxmax()  # first of equal maxima: the earlier cell of the grid
    return next(c for c in cells if c.id == best)


def _cell_rows(cell_dir: Path, cell: Cell) -> pd.DataFrame:
    """The verdict table of one cell's validation, with the cell's settings and split."""
    from vlens.validate import ValidationResult

    summary = ValidationResult.load(cell_dir / "validation").summary()
    split = check_run_dir(cell_dir)["config"].get("dilemma_split", "test")
    return summary.assign(cell=cell.id, scope=cell.scope, hook=cell.hook, sel=cell.sel, score=cell.score, split=split)


def sweep_table(folder: str | os.PathLike, cells: Sequence[Cell], *, best: Cell | None = None,
                stability: bool = True) -> pd.DataFrame:  # fmt: skip
    """The tidy table of a sweep folder (:data:`COLUMNS`): every cell's rows, then the chosen cell's test rows."""
    from vlens.locate import LocateResult
    from vlens.stability import MIRROR_PAIRS, circumplex_overlap, layer_profile, split_half
    from vlens.stats import NeuronStats

    folder = Path(folder)
    parts = [_cell_rows(folder / "cells" / c.id, c) for c in cells]
    if best is not None:
        parts.append(_cell_rows(folder / "test" / best.id, best))
    table = pd.concat(parts, ignore_index=True)
    scores = choose(table) if (table.split == "dev").any() else pd.Series(dtype=float)
    table["cell_score"] = table.cell.map(scores)
    table["chosen"] = table.cell == (best.id if best else None)
    table["band_low"] = table.null_mean - 2 * table.null_sd
    table["band_high"] = table.null_mean + 2 * table.null_sd
    mirror_of = dict(MIRROR_PAIRS) | {b: a for a, b in MIRROR_PAIRS}
    extra = []
    halves: dict[Path, tuple[NeuronStats, NeuronStats] | None] = {}
    for c in cells:
        loc = LocateResult.load(folder / "cells" / c.id / "locate")
        mirror = circumplex_overlap(loc.neuron_sets, layers=loc.stats.layers)
        mirror = pd.concat([mirror, mirror.rename(columns={"set": "mirror", "mirror": "set"})]).set_index("set")
        half = pd.DataFrame()
        hdir = _halves_dir(folder, c)
        if stability and hdir not in halves:
            present = all((hdir / f"{h}.json").exists() for h in ("half-a", "half-b"))
            halves[hdir] = tuple(NeuronStats.load(hdir / h) for h in ("half-a", "half-b")) if present else None  # type: ignore[assignment]
        if stability and halves[hdir] is not None:
            half = split_half(*halves[hdir], c.selection).set_index(["dimension", "pole"])
        for name, ns in loc.neuron_sets.items():
            dim, pole = name.rsplit(":", 1)
            row = {"cell": c.id, "steered": dim, "direction": pole, "set_size": len(ns), "layer_profile": layer_profile(ns),
                   "mirror": mirror_of.get(name)}  # fmt: skip
            if name in mirror.index:
                m = mirror.loc[name]
                row |= {"mirror_overlap": m.overlap, "mirror_expected": m.expected, "mirror_p": m.p}
            if (dim, pole) in half.index:
                h = half.loc[(dim, pole)]
                row |= {"half_overlap": h.overlap, "half_jaccard": h.jaccard, "half_jaccard_chance": h.jaccard_chance,
                        "half_p": h.p, "half_spearman": h.spearman}  # fmt: skip
            extra.append(row)
    table = table.merge(pd.DataFrame(extra), on=["cell", "steered", "direction"], how="left")
    return table.reindex(columns=COLUMNS)


def _write_outputs(folder: Path, table: pd.DataFrame, model_name: str, dev: bool) -> None:
    from vlens import viz
    from vlens.report import write_sweep_report

    fig = viz.sweep_effects(table)
    atomic_write(folder / "sweep.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    notes = [f"Model {model_name}; {table.cell.nunique()} cells."]
    if dev:
        notes.append(f"Choosing rule: {RULE}. Every cell's numbers come from the dev dilemmas (split = dev); the "
                     "chosen cell's rows with split = test are the result.")  # fmt: skip
    else:
        notes.append("Every cell validated on the test dilemmas; no cell was chosen (run with dev to choose one).")
    write_sweep_report(folder, table, title=f"vlens sweep: {model_name}", notes=notes)


__all__ = ["AXES", "COLUMNS", "PAPER_CELL", "RULE", "Cell", "Grid", "SweepError", "SweepResult", "choose", "sweep",
           "sweep_table"]  # fmt: skip
