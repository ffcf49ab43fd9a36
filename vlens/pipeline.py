"""A whole run in one folder: locate -> validate -> generate -> report, resumable stage by stage.

Run directory layout::

    run.json                 config, vlens version, model provenance, finished stages
    log.txt                  what happened, with timings
    locate/                  NeuronStats + one NeuronSet per dimension and pole (safetensors + JSON)
    locate/checkpoint/       statistics every N batches while locating (resume mid-stage)
    validation/steering.*    the steering vectors of the positive control (computed once, reused on resume)
    validation/validation.csv, validation_summary.csv (the verdicts), calibration.csv, validation.json
    answers.jsonl            greedy answers to held-out questions, unedited and edited
    report.html, report.md   the report (see vlens.report)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlens._io import atomic_write_text, read_json, vlens_version, write_json
from vlens.activations import DEFAULT_HOOK, DEFAULT_SCOPE, DEFAULT_SELECTION
from vlens.models import DEFAULT_MODEL

STAGES = ("locate", "validate", "generate", "report")
GENERATE_BATCH = 8  # questions per batch of the generate stage
# The config defaults are a quick run (the README's `vlens run`); `--full` lifts these sample sizes.
FULL = {"max_pairs": None, "max_dilemmas": None, "max_portrait": None, "max_neutral": None, "max_questions": None,
        "kl_targets": [0.05, 0.1, 0.2], "n_random": 40}


# Each stage's share of a whole run's time: the default quick run as measured in docs/performance.md
# (locate 84 s, validate 2,094 s, generate 38 s, report 30 s, of 2,246 s).
STAGE_SHARE = {"locate": 0.037, "validate": 0.932, "generate": 0.017, "report": 0.013}


class RunDirError(ValueError):
    """A run directory cannot be used as asked (another version or model, a missing file...)."""


@dataclass
class LocateConfig:
    """The settings that decide the neuron sets; once locate is done a run directory keeps them."""

    model: str = DEFAULT_MODEL
    dimensions: list[str] | None = None
    scope: str = DEFAULT_SCOPE  # chosen by the study: docs/study.md
    hook: str = DEFAULT_HOOK
    selection: str = DEFAULT_SELECTION
    template: str = "auto"
    max_pairs: int | None = 24
    pairs_per_question: int = 7
    batch_size: int = 16
    seed: int = 0
    data_dir: str | None = None

    def __post_init__(self) -> None:  # checked here, so a typo fails before run.json is written
        from vlens.neurons import Selection

        Selection.parse(self.selection)
        _at_least(1, max_pairs=self.max_pairs, pairs_per_question=self.pairs_per_question, batch_size=self.batch_size)


@dataclass
class ValidateConfig:
    """The settings of validate and generate: free to change until validate is done."""

    kl_targets: list[float] = field(default_factory=lambda: [0.1])
    gammas: list[float] = field(default_factory=list)  # doses by hand, beside the matched ones
    n_random: int = 20
    controls: list[str] = field(default_factory=lambda: ["prompted", "steering", "dense"])
    instrument: str = "cloze-sum"  # chosen on the dev dilemmas: vlens.instruments.dilemmas.DEFAULT_VARIANT
    match_frequency: bool = False
    max_dilemmas: int | None = 24
    max_portrait: int | None = 0
    max_neutral: int | None = 4
    max_questions: int | None = 2
    max_new_tokens: int = 48
    dilemma_split: str = "test"  # the dilemmas validated on: "dev" to choose settings (vlens.sweep), "test" to report

    def __post_init__(self) -> None:
        from vlens.instruments import Variant
        from vlens.validate import CONTROLS, check_doses

        self.kl_targets, self.gammas = check_doses(self.kl_targets, self.gammas)
        if unknown := sorted(set(self.controls) - set(CONTROLS)):
            raise ValueError(f"--controls: unknown control(s) {unknown}; choose from {', '.join(CONTROLS)}")
        Variant.parse(self.instrument)
        if self.dilemma_split not in ("dev", "test"):
            raise ValueError(f"dilemma_split must be 'dev' (to choose settings on) or 'test' (to report), got {self.dilemma_split!r}")
        _at_least(2, n_random=self.n_random)  # a z-score needs a spread
        _at_least(1, max_dilemmas=self.max_dilemmas, max_neutral=self.max_neutral, max_questions=self.max_questions,
                  max_new_tokens=self.max_new_tokens)  # fmt: skip
        _at_least(0, max_portrait=self.max_portrait)


def _at_least(low: int, **values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")


@dataclass
class RunConfig:
    """Everything that decides the numbers of a run, by stage; run.json keeps it as one flat dict."""

    locate: LocateConfig = field(default_factory=LocateConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.locate) | dataclasses.asdict(self.validate)

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> RunConfig:
        if unknown := sorted(set(settings) - set(SETTINGS)):
            raise ValueError(f"unknown run settings {unknown}; expected some of {', '.join(SETTINGS)}")
        section = lambda kind: kind(**{k: v for k, v in settings.items() if SETTINGS[k] is kind})  # noqa: E731
        return cls(section(LocateConfig), section(ValidateConfig))


# setting -> its section; a finished stage fixes the settings of its section
SETTINGS = {f.name: kind for kind in (LocateConfig, ValidateConfig) for f in dataclasses.fields(kind)}
STAGE_SECTION = {"locate": LocateConfig, "validate": ValidateConfig, "generate": ValidateConfig}


class Run:
    """A run directory: its config, finished stages and log."""

    def __init__(self, folder: str | os.PathLike, config: RunConfig, *, resume: bool = False, writer: bool = True,
                 lock: bool = True):  # fmt: skip
        self.folder = Path(folder)
        self.config = config
        self.writer = writer  # under torch.distributed only rank 0 writes
        if writer:
            self.folder.mkdir(parents=True, exist_ok=True)
            if lock:  # released when this object goes, or with its process (a dead holder's lock is taken over)
                weakref.finalize(self, _hold_lock(self.folder))
        if (self.folder / "run.json").exists():
            if not resume:
                raise RunDirError(f"{self.folder} already holds a run; pass --resume to continue it or choose a new --out")
            meta = check_run_dir(self.folder)
            settled = {STAGE_SECTION[stage] for stage in meta["done"] if stage in STAGE_SECTION}
            old, new = meta.get("config", {}), config.to_dict()
            changed = sorted(k for k, section in SETTINGS.items() if section in settled and old.get(k) != new.get(k))
            if changed:
                raise RunDirError(
                    f"{self.folder} has finished {', '.join(meta['done'])} with other settings ({', '.join(changed)} "
                    "differ); resume with those settings or choose a new --out"
                )
            self.meta = meta | {"config": new}  # the settings of the stages still to run may change
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


def _hold_lock(folder: Path) -> Any:
    """Take ``folder/run.lock`` (this process and host) and return its release; refuse a live holder."""
    path, me = folder / "run.lock", {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                held = json.loads(path.read_text())
            except (OSError, ValueError):
                held = {}
            if held == me:
                return lambda: None  # this process holds it already (a second call in one session)
            if held.get("host") == me["host"] and not _alive(held.get("pid")):
                path.unlink(missing_ok=True)  # stale: the process that held it is gone
                continue
            raise RunDirError(f"{folder} is in use by process {held.get('pid')} on {held.get('host')} ({path}); wait for it "
                              "to finish, or delete that file if the process is gone") from None  # fmt: skip
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return lambda: path.unlink(missing_ok=True)
    raise RunDirError(f"could not take {path}; delete it if no vlens process uses {folder}")


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


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


def eta_seconds(timings: dict[str, float], todo: list[str]) -> float | None:
    """Seconds the stages in ``todo`` will take, from the stages already timed (``timings``, as in run.json).

    The finished stages tell how fast this machine, model and configuration are: their seconds over
    their :data:`STAGE_SHARE` give the seconds of a whole run, and ``todo`` takes its share of that. Every
    stage that finishes joins the estimate, so it is refined as the run goes on (and a resumed run starts
    from the stages it did before). None before any stage has been timed.
    """
    done = {stage: t for stage, t in timings.items() if stage in STAGE_SHARE and stage not in todo}
    if not done:
        return None
    per_run = sum(done.values()) / sum(STAGE_SHARE[stage] for stage in done)
    return per_run * sum(STAGE_SHARE[stage] for stage in todo)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def stage_line(stage: str, todo: list[str], timings: dict[str, float], elapsed: float) -> str:
    """The overall progress line printed as ``stage`` starts: which of the run's stages it is, the time
    so far and the time left for the rest of the run (:func:`eta_seconds`)."""
    rest = todo[todo.index(stage):]
    eta = eta_seconds(timings, rest)
    left = f"about {_duration(eta)} left for the run" if eta is not None else "time left known after the first stage"
    return f"[vlens] stage {todo.index(stage) + 1}/{len(todo)}: {stage} | {_duration(elapsed)} so far | {left}"


def run_pipeline(
    folder: str | os.PathLike, config: RunConfig, *, resume: bool = False, stages: tuple[str, ...] = STAGES,
    device: str | None = None, model: Any = None, shard: tuple[int, int] | None = None, progress: bool = True,
) -> Path:  # fmt: skip
    """Run (or resume) the stages of ``config`` into ``folder``; returns the folder.

    Under ``torchrun`` the ranks share locate and validate and only rank 0 writes.
    ``shard=(i, N)`` runs only the i-th of N shards of locate and writes its partial
    statistics to ``shards/``, for :func:`merge_run`.
    """
    import vlens
    from vlens import distributed
    from vlens.activations import _progress
    from vlens.evaluate import Instruments
    from vlens.generation import generate_answers
    from vlens.interventions import value_edit
    from vlens.locate import LocateResult, locate, locate_shard
    from vlens.validate import validate

    rank, world = distributed.rank_world()
    lc, vc = config.locate, config.validate
    loaded = model is None
    data = vlens.load_value_data(lc.data_dir)  # the data and the model before run.json is written, so a wrong
    if loaded:  # --data, --model or --device leaves no directory behind
        model = vlens.load_model(lc.model, device=distributed.local_device() or device)
    # Job-array shards share one directory at once, so they take no lock.
    run = Run(folder, config, resume=resume or world > 1 or shard is not None, writer=rank == 0, lock=shard is None)
    if loaded:
        run.log.info("loaded %s%s", lc.model, f" on {world} ranks" if world > 1 else "")
    info = vlens.model_info(model)
    if "model" in run.meta and run.meta["model"]["fingerprint"] != _jsonable(info.fingerprint):
        raise RunDirError(f"{run.folder} was run on another model ({run.meta['model']['fingerprint']}); start a new run directory")
    run.meta["model"] = {"info": info.to_dict(), "fingerprint": _jsonable(info.fingerprint)}
    run._save()
    # the stages this call runs (the report is rewritten each time), for the overall progress line
    todo = [s for s in STAGES if s in stages and (s == "report" or not run.done(s))
            and (s != "generate" or data.questions_of("test"))]  # fmt: skip
    started = time.time()

    def announce(stage: str) -> None:
        if progress and run.writer and shard is None:
            print(stage_line(stage, todo, run.meta["timings"], time.time() - started), file=sys.stderr, flush=True)
    options = dict(dimensions=lc.dimensions, scope=lc.scope, hook=lc.hook, batch_size=lc.batch_size, max_pairs=lc.max_pairs,
                   template=lc.template, pairs_per_question=lc.pairs_per_question, seed=lc.seed, progress=progress)  # fmt: skip

    if shard is not None:
        i, n = shard
        t = time.time()
        stats = locate_shard(model, data, shard, checkpoint_dir=run.folder / "shards" / f"checkpoint-{i}-of-{n}", **options)
        stats.save(run.folder / "shards" / f"stats-{i}-of-{n}")
        print(f"[vlens] shard {i}/{n}: {int(stats.prompts.sum())} prompts in {time.time() - t:.1f} s; "
              f"when all {n} shards are done: vlens merge {run.folder}")  # fmt: skip
        return run.folder

    if "locate" in stages and not run.done("locate"):
        announce("locate")
        t = time.time()
        run.log.info("locate: %s pairs per dimension, scope %s, hook %s, selection %s",
                     lc.max_pairs or "all", lc.scope, lc.hook, lc.selection)  # fmt: skip
        result = locate(model, data, selection=lc.selection, checkpoint_dir=run.folder / "locate" / "checkpoint", **options)
        if run.writer:
            result.save(run.folder / "locate")
            run.log.info("neuron sets:\n%s", result.summary())
            run.finish("locate", time.time() - t)
        distributed.barrier()
    elif any(s in stages for s in STAGES[:3]):
        try:
            result = LocateResult.load(run.folder / "locate")
        except (OSError, ValueError, KeyError) as err:
            raise RunDirError(f"the locate results in {run.folder / 'locate'} are missing or unreadable ({err}); rerun locate") from err

    instruments = Instruments.default(data, max_dilemmas=vc.max_dilemmas, max_portrait=vc.max_portrait,
                                      max_neutral=vc.max_neutral, max_questions=vc.max_questions,
                                      dilemma_split=vc.dilemma_split, dilemma_variant=vc.instrument)  # fmt: skip
    if "validate" in stages and not run.done("validate"):
        announce("validate")
        t = time.time()
        steering = None
        if "steering" in vc.controls:
            steering = _steering_vectors(model, data, lc, run)
        run.log.info("validate: KL targets %s, gammas %s, %d random edits, controls %s, %d dilemmas (%s)",
                     vc.kl_targets, vc.gammas, vc.n_random, vc.controls, len(instruments.dilemmas), vc.instrument)  # fmt: skip
        v = validate(model, result, instruments=instruments, kl_targets=vc.kl_targets, gammas=vc.gammas,
                     n_random=vc.n_random, controls=vc.controls, descriptions=data.descriptions_of("test"), steering=steering,
                     match_frequency=vc.match_frequency, seed=lc.seed, batch_size=max(lc.batch_size, 32),
                     progress=progress and run.writer)  # fmt: skip
        if run.writer:
            v.meta["config"] = config.to_dict()  # the run's settings beside validate's own record
            v.save(run.folder / "validation")
            run.finish("validate", time.time() - t)
        distributed.barrier()
    if not run.writer:  # generation and the report are cheap: rank 0 does them alone
        return run.folder

    if "generate" in stages and not run.done("generate") and instruments.questions:
        announce("generate")
        t = time.time()
        shape = (info.n_layers, info.d_mlp)
        jobs = [[q for q in instruments.questions if q["dimension"] == dim] for dim in result.dimensions]
        batches = -(-len(instruments.questions) // GENERATE_BATCH) + 2 * sum(-(-len(qs) // GENERATE_BATCH) for qs in jobs)
        bar = _progress(batches, initial=0, enabled=progress, desc="generate")  # one bar over every edit's batches
        answers = generate_answers(model, None, instruments.questions, max_new_tokens=vc.max_new_tokens,
                                   batch_size=GENERATE_BATCH, progress=bar)  # fmt: skip
        gamma = _generation_gamma(run.folder, vc)
        for dim, qs in zip(result.dimensions, jobs, strict=True):
            for direction, other in (("+", "-"), ("-", "+")):
                edit = value_edit(shape, result[f"{dim}:{direction}"], result[f"{dim}:{other}"], gamma, seed=lc.seed)
                edit.label = f"{dim} toward {direction}, gamma {gamma:g}"
                answers += generate_answers(model, edit, qs, max_new_tokens=vc.max_new_tokens, batch_size=GENERATE_BATCH,
                                            progress=bar)  # fmt: skip
        bar.close()
        atomic_write_text(run.folder / "answers.jsonl", "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))
        run.finish("generate", time.time() - t)

    if "report" in stages:
        from vlens.report import write_report

        announce("report")
        t = time.time()
        html = write_report(run.folder, model=model, progress=progress)
        run.log.info("report: %s", html)
        if not run.done("report"):
            run.finish("report", time.time() - t)
    return run.folder


def _steering_vectors(model: Any, data: Any, lc: LocateConfig, run: Run) -> Any:
    """The positive control's steering vectors from locate's own contrastive prompts, computed once per run."""
    from vlens.controls import SteeringVectors, steering_vectors
    from vlens.data import build_prompts

    path = run.folder / "validation" / "steering"
    if path.with_suffix(".json").exists():
        return SteeringVectors.load(path)
    t = time.time()
    prompts = build_prompts(data, model=model, dimensions=lc.dimensions, split="search", max_pairs=lc.max_pairs,
                            template=lc.template, pairs_per_question=lc.pairs_per_question, seed=lc.seed)  # fmt: skip
    vectors = steering_vectors(model, prompts, scope=lc.scope, batch_size=lc.batch_size)
    if run.writer:
        vectors.save(path)
    run.log.info("steering vectors at layer %d from %d prompts in %.1f s", vectors.layer, len(prompts), time.time() - t)
    return vectors


def _generation_gamma(folder: Path, vc: ValidateConfig) -> float:
    """The gamma of the edited answers: the largest hand-given one, else the value edits' mean calibrated dose."""
    if vc.gammas:
        return max(vc.gammas)
    cal = folder / "validation" / "calibration.csv"
    table = pd.read_csv(cal) if cal.exists() else pd.DataFrame()
    doses = table[table.source == "value"].dose if len(table) else []
    return float(doses.mean()) if len(doses) else 1.0


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
    cfg = meta["config"]
    recorded = {"model": stats.meta.get("model", {}).get("name")} | {k: stats.meta[k] for k in
                ("scope", "hook", "template", "max_pairs", "pairs_per_question", "seed", "batch_size") if k in stats.meta}  # fmt: skip
    if differ := sorted(k for k, v in recorded.items() if cfg.get(k) != v):
        raise RunDirError(f"the shards in {folder / 'shards'} were located with other settings than {folder / 'run.json'} "
                          f"({', '.join(f'{k}: {recorded[k]!r} vs {cfg.get(k)!r}' for k in differ)}); rerun them or merge elsewhere")  # fmt: skip
    result = from_stats(stats, cfg["selection"])
    result.save(folder / "locate")
    run = Run(folder, RunConfig.from_dict(meta["config"]), resume=True)
    if not run.done("locate"):
        run.finish("locate", time.time() - t, merged_shards=len(parts))
    run.log.info("merged %d shards:\n%s", len(parts), result.summary())
    return folder


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
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise RunDirError(f"{folder / 'run.json'} is not a vlens run record (it holds {str(meta)[:60]}); start a new run directory")
    if meta.get("vlens_version") != vlens_version():
        raise RunDirError(f"{folder} was written by vlens {meta.get('vlens_version')}, this is vlens {vlens_version()}; "
                          "start a new run directory")  # fmt: skip
    return meta
