"""A whole run in one folder: locate -> validate -> generate -> report, resumable stage by stage.

Run directory layout::

    run.json                 config, vlens version, model provenance, finished stages
    log.txt                  what happened, with timings
    locate/                  NeuronStats + one NeuronSet per dimension and pole (safetensors + JSON)
    locate/checkpoint/       statistics every N batches while locating (resume mid-stage)
    validation/part_*.csv    one validation table per steered dimension (resume between them)
    validation/validation.csv, validation_summary.csv, validation.json
    answers.jsonl            greedy answers to held-out questions, unedited and edited
    report.html, report.md   the report (see vlens.report)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlens._io import atomic_write, atomic_write_text, read_json, vlens_version, write_json
from vlens.models import DEFAULT_MODEL

STAGES = ("locate", "validate", "generate", "report")
# What a quick run measures (the README's `vlens run`); `--full` lifts the sample sizes.
QUICK = {"max_pairs": 24, "max_dilemmas": 2, "max_portrait": 10, "max_neutral": 1, "max_questions": 2, "gammas": [1.0], "n_random": 3}
FULL = {"max_pairs": None, "max_dilemmas": None, "max_portrait": None, "max_neutral": None, "max_questions": None,
        "gammas": [0.5, 1.0, 2.0], "n_random": 20}


class RunDirError(ValueError):
    """A run directory cannot be used as asked (another version or model, a missing file...)."""


@dataclass
class RunConfig:
    """Everything that decides the numbers of a run (saved in run.json; resume requires the same)."""

    model: str = DEFAULT_MODEL
    dimensions: list[str] | None = None
    scope: str = "question"
    hook: str = "post"
    selection: str = "paper"
    template: str = "auto"
    max_pairs: int | None = QUICK["max_pairs"]
    pairs_per_question: int = 7
    gammas: list[float] = field(default_factory=lambda: list(QUICK["gammas"]))
    n_random: int = QUICK["n_random"]
    match_frequency: bool = False
    ablations: bool = True
    max_dilemmas: int | None = QUICK["max_dilemmas"]
    max_portrait: int | None = QUICK["max_portrait"]
    max_neutral: int | None = QUICK["max_neutral"]
    max_questions: int | None = QUICK["max_questions"]
    max_new_tokens: int = 48
    batch_size: int = 16
    seed: int = 0
    data_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Run:
    """A run directory: its config, finished stages and log."""

    def __init__(self, folder: str | os.PathLike, config: RunConfig, *, resume: bool = False, writer: bool = True):
        self.folder = Path(folder)
        self.config = config
        self.writer = writer  # under torch.distributed only rank 0 writes
        if writer:
            self.folder.mkdir(parents=True, exist_ok=True)
        meta_path = self.folder / "run.json"
        if meta_path.exists():
            if not resume:
                raise RunDirError(f"{self.folder} already holds a run; pass --resume to continue it or choose a new --out")
            meta = read_json(meta_path)
            if meta.get("vlens_version") != vlens_version():
                raise RunDirError(
                    f"{self.folder} was written by vlens {meta.get('vlens_version')}, this is vlens {vlens_version()}; "
                    "start a new run directory"
                )
            if meta.get("config") != config.to_dict():
                changed = sorted(k for k, v in config.to_dict().items() if meta.get("config", {}).get(k) != v)
                raise RunDirError(
                    f"{self.folder} was started with other settings ({', '.join(changed)} differ); "
                    "resume with the same options or choose a new --out"
                )
            self.meta = meta
        else:
            self.meta = {"vlens_version": vlens_version(), "config": config.to_dict(), "done": [], "timings": {},
                         "created": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
            self._save()
        self.log = _logger(self.folder / "log.txt" if writer else None)

    def _save(self) -> None:
        if self.writer:
            write_json(self.folder / "run.json", self.meta)

    def done(self, stage: str) -> bool:
        return stage in self.meta["done"]

    def finish(self, stage: str, seconds: float, **extra: Any) -> None:
        self.meta["done"].append(stage)
        self.meta["timings"][stage] = round(seconds, 1)
        self.meta.update(extra)
        self._save()
        self.log.info("%s finished in %.1f s", stage, seconds)


def _logger(path: Path | None) -> logging.Logger:
    if path is None:  # a rank other than 0: stay quiet
        log = logging.getLogger("vlens.run.silent")
        log.addHandler(logging.NullHandler())
        log.propagate = False
        return log
    log = logging.getLogger(f"vlens.run.{path.parent}")
    log.setLevel(logging.INFO)
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in log.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("[vlens] %(message)s"))
        log.addHandler(console)
    return log


def run_pipeline(
    folder: str | os.PathLike,
    config: RunConfig,
    *,
    resume: bool = False,
    stages: tuple[str, ...] = STAGES,
    device: str | None = None,
    model: Any = None,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> Path:
    """Run (or resume) the stages of ``config`` into ``folder``; returns the folder.

    Under ``torchrun`` the ranks share locate and validate and only rank 0 writes.
    ``shard=(i, N)`` runs only the i-th of N shards of locate and writes its partial
    statistics to ``shards/``, for :func:`merge_run`.
    """
    import vlens
    from vlens import distributed
    from vlens.evaluate import Instruments
    from vlens.generation import generate_answers
    from vlens.interventions import value_edit
    from vlens.locate import LocateResult, locate
    from vlens.validate import ValidationResult, validate

    rank, world = distributed.rank_world()
    run = Run(folder, config, resume=resume or world > 1 or shard is not None, writer=rank == 0 and shard is None)
    c = config
    if model is None:
        run.log.info("loading %s%s", c.model, f" on {world} ranks" if world > 1 else "")
        model = vlens.load_model(c.model, device=distributed.local_device() or device)
    info = vlens.model_info(model)
    if "model" in run.meta and run.meta["model"]["fingerprint"] != _jsonable(info.fingerprint):
        raise RunDirError(f"{run.folder} was run on another model ({run.meta['model']['fingerprint']}); start a new run directory")
    run.meta["model"] = {"info": info.to_dict(), "fingerprint": _jsonable(info.fingerprint)}
    run._save()
    data = vlens.load_value_data(c.data_dir)

    if shard is not None:
        i, n = shard
        t = time.time()
        stats = locate(model, data, dimensions=c.dimensions, scope=c.scope, hook=c.hook, batch_size=c.batch_size,
                       max_pairs=c.max_pairs, template=c.template, pairs_per_question=c.pairs_per_question, seed=c.seed,
                       checkpoint_dir=run.folder / "shards" / f"checkpoint-{i}-of-{n}", shard=shard, progress=progress)  # fmt: skip
        stats.save(run.folder / "shards" / f"stats-{i}-of-{n}")
        print(f"[vlens] shard {i}/{n}: {int(stats.prompts.sum())} prompts in {time.time() - t:.1f} s; "
              f"when all {n} shards are done: vlens merge {run.folder}")  # fmt: skip
        return run.folder

    if "locate" in stages and not run.done("locate"):
        t = time.time()
        run.log.info("locate: %s pairs per dimension, scope %s, hook %s, selection %s",
                     c.max_pairs or "all", c.scope, c.hook, c.selection)  # fmt: skip
        result = locate(model, data, dimensions=c.dimensions, scope=c.scope, hook=c.hook, selection=c.selection,
                        batch_size=c.batch_size, max_pairs=c.max_pairs, template=c.template,
                        pairs_per_question=c.pairs_per_question, seed=c.seed,
                        checkpoint_dir=run.folder / "locate" / "checkpoint", progress=progress)  # fmt: skip
        if run.writer:
            result.save(run.folder / "locate")
            run.log.info("neuron sets:\n%s", result.summary())
            run.finish("locate", time.time() - t)
        distributed.barrier()
    else:
        result = _load(LocateResult.load, run.folder / "locate", "locate") if any(s in stages for s in STAGES[:3]) else None

    instruments = Instruments.default(data, max_dilemmas=c.max_dilemmas, max_portrait=c.max_portrait,
                                      max_neutral=c.max_neutral, max_questions=c.max_questions)  # fmt: skip
    if "validate" in stages and not run.done("validate"):
        t = time.time()
        parts = []
        for dim in result.dimensions:
            part = run.folder / "validation" / f"part_{dim}.csv"
            if not part.exists():
                run.log.info("validate %s: gammas %s, %d random sets per condition", dim, c.gammas, c.n_random)
                v = validate(model, result, instruments=instruments, dimensions=[dim], gammas=c.gammas,
                             n_random=c.n_random, match_frequency=c.match_frequency, ablations=c.ablations,
                             seed=c.seed, batch_size=max(c.batch_size, 32), progress=progress and run.writer)  # fmt: skip
                if run.writer:
                    atomic_write(part, lambda tmp, v=v: v.table.to_csv(tmp, index=False))
                distributed.barrier()
            parts.append(pd.read_csv(part))
        first = parts[0]
        table = pd.concat([first] + [p[p.source != "none"] for p in parts[1:]], ignore_index=True)
        meta = {"config": c.to_dict(), "vlens_version": vlens_version(), "model": info.to_dict(),
                "instrument_sizes": {k: len(val) for k, val in vars(instruments).items()}}  # fmt: skip
        if run.writer:
            ValidationResult(table, meta).save(run.folder / "validation")
            run.finish("validate", time.time() - t)
    if not run.writer:  # generation and the report are cheap: rank 0 does them alone
        return run.folder

    if "generate" in stages and not run.done("generate") and instruments.questions:
        t = time.time()
        shape = (info.n_layers, info.d_mlp)
        answers = generate_answers(model, None, instruments.questions, max_new_tokens=c.max_new_tokens)
        for dim in result.dimensions:
            qs = [q for q in instruments.questions if q["dimension"] == dim]
            for direction in "+-":
                other = "-" if direction == "+" else "+"
                gamma = max(c.gammas)
                edit = value_edit(shape, result[f"{dim}:{direction}"], result[f"{dim}:{other}"], gamma, seed=c.seed)
                edit.label = f"{dim} toward {direction}, gamma {gamma:g}"
                answers += generate_answers(model, edit, qs, max_new_tokens=c.max_new_tokens)
        atomic_write_text(run.folder / "answers.jsonl", "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))
        run.finish("generate", time.time() - t)

    if "report" in stages:
        from vlens.report import write_report

        t = time.time()
        html = write_report(run.folder, model=model)
        run.log.info("report: %s", html)
        if not run.done("report"):
            run.finish("report", time.time() - t)
    return run.folder


def merge_run(folder: str | os.PathLike) -> Path:
    """Sum the partial statistics of a ``--shard i/N`` job array and select the neuron sets."""
    from vlens.distributed import merge_shards
    from vlens.locate import from_stats

    meta = check_run_dir(folder)
    folder = Path(folder)
    parts = sorted((folder / "shards").glob("stats-*-of-*.json")) if (folder / "shards").is_dir() else []
    if not parts:
        raise RunDirError(f"{folder} holds no partial statistics (shards/stats-I-of-N); run `vlens locate --shard I/N` first")
    t = time.time()
    stats = merge_shards([p.with_suffix("") for p in parts])
    result = from_stats(stats, meta["config"]["selection"])
    result.save(folder / "locate")
    run = Run(folder, RunConfig(**meta["config"]), resume=True)
    if not run.done("locate"):
        run.finish("locate", time.time() - t, merged_shards=len(parts))
    run.log.info("merged %d shards:\n%s", len(parts), result.summary())
    return folder


def _load(loader: Any, path: Path, stage: str) -> Any:
    try:
        return loader(path)
    except (OSError, ValueError, KeyError) as err:
        raise RunDirError(f"the {stage} results in {path} are missing or unreadable ({err}); rerun that stage") from err


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def check_run_dir(folder: str | os.PathLike) -> dict[str, Any]:
    """Read run.json of an existing run directory, with clear errors for what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunDirError(f"{folder} is not a directory")
    if not (folder / "run.json").exists():
        raise RunDirError(f"{folder} is not a vlens run directory (no run.json)")
    meta = read_json(folder / "run.json")
    if meta.get("vlens_version") != vlens_version():
        raise RunDirError(f"{folder} was written by vlens {meta.get('vlens_version')}, this is vlens {vlens_version()}")
    return meta
