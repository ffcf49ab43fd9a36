"""``vlens.locate``: from a model and value data to neuron sets, in one call.

prompts (data) -> NeuronStats (activations) -> scores -> NeuronSet per dimension and pole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlens._io import read_json, sha256_json, write_json
from vlens.activations import DEFAULT_HOOK, DEFAULT_SCOPE, DEFAULT_SELECTION, collect_stats
from vlens.data.loaders import ValueData, load_value_data
from vlens.data.prompts import Prompt, build_prompts
from vlens.neurons import NeuronSet, Selection, provenance_of, select
from vlens.scores import all_scores
from vlens.stats import NeuronStats, class_label
from vlens.values import POLES, PoleKey, dimension


@dataclass
class LocateResult:
    """Statistics, scores and the selected neuron sets of a locate run."""

    stats: NeuronStats
    neuron_sets: dict[str, NeuronSet]  # "<dimension>:<pole>" -> set
    selection: Selection
    scores: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # dimension -> score name -> [layer, neuron]

    @property
    def dimensions(self) -> list[str]:
        return self.stats.dimensions

    def __getitem__(self, key: str) -> NeuronSet:
        return self.neuron_sets[key]

    def overlap(self) -> dict[tuple[str, str], float]:
        """Jaccard overlap between every two neuron sets."""
        names = list(self.neuron_sets)
        return {(a, b): self.neuron_sets[a].jaccard(self.neuron_sets[b]) for a in names for b in names}

    def summary(self) -> str:
        lines = [f"{'set':32s} {'size':>6s} {'max delta':>9s} {'mean delta':>10s}  layers with most"]
        for name, s in self.neuron_sets.items():
            d = s.delta if s.delta is not None else s.scores
            lines.append(f"{name:32s} {len(s):6d} {d.max().item() if len(s) else 0:9.3f} "
                         f"{d.mean().item() if len(s) else 0:10.3f}  {s._top_layers()}")  # fmt: skip
        return "\n".join(lines)

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        self.stats.save(folder / "stats")
        for name, s in self.neuron_sets.items():
            s.save(folder / "neurons" / _set_file(name))
        write_json(folder / "locate.json", {"selection": self.selection.to_dict(), "sets": list(self.neuron_sets)})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> LocateResult:
        folder = Path(folder)
        meta = read_json(folder / "locate.json")
        stats = NeuronStats.load(folder / "stats")
        sets = {name: NeuronSet.load(folder / "neurons" / _set_file(name)) for name in meta["sets"]}
        return cls(stats, sets, Selection(**meta["selection"]), {d: all_scores(stats, d) for d in stats.dimensions})


def _set_file(name: str) -> str:
    """File name of a neuron set: "Self-Enhancement:-" -> "Self-Enhancement_minus"."""
    key = PoleKey.parse(name)
    return f"{key.dimension}_{'plus' if key.pole == '+' else 'minus'}"


def locate(
    model: Any, data: ValueData | Sequence[Prompt] | None = None, *, dimensions: Sequence[str] | None = None,
    scope: str = DEFAULT_SCOPE, hook: str = DEFAULT_HOOK, selection: Selection | str = DEFAULT_SELECTION, layers: Sequence[int] | None = None,
    batch_size: int = 16, max_pairs: int | None = None, split: str = "search", template: str = "auto",
    pairs_per_question: int = 7, seed: int = 0, hist_edges: Tensor | None | str = None,
    checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 20, max_new_tokens: int = 64,
    prefix_reuse: bool = True, progress: bool = True,
) -> LocateResult:  # fmt: skip
    """Locate value neurons: contrast the ``+`` and ``-`` prompts of each dimension.

    ``data`` is a :class:`~vlens.data.ValueData` (default: the shipped ValueInsight) or the
    ``DatasetDict`` of :func:`~vlens.data.load_valueinsight`, from which prompt pairs of
    ``split`` are built (``max_pairs`` per dimension), or a ready list of
    :class:`~vlens.data.Prompt`. Returns statistics, every score and a neuron set per
    dimension and pole. ``hist_edges="auto"`` also collects a histogram (for the 95th
    percentile, the edit's NPTI variant) over [-2, 6] in 0.05 steps; it costs memory
    (classes x neurons x 162 bins) and time, so it is off by default.

    Under ``torchrun`` every rank takes every N-th prompt pair and the statistics are summed
    across ranks (the result equals one process up to float64 rounding); for job arrays
    without a process group see :func:`locate_shard`.
    """
    options = {k: v for k, v in locals().items() if k not in ("model", "data", "selection")}
    from vlens import distributed

    rank, world = distributed.rank_world()
    if world == 1:
        return from_stats(_collect(model, data, None, **options), selection)
    if checkpoint_dir is not None:
        options["checkpoint_dir"] = f"{checkpoint_dir}/rank-{rank}-of-{world}"
    stats = distributed.all_reduce_stats(_collect(model, data, (rank, world), **options))
    stats.meta |= {"shard": None, "n_prompts": int(stats.prompts.sum().item()), "world_size": world}
    return from_stats(stats, selection)


def locate_shard(model: Any, data: ValueData | Sequence[Prompt] | None, shard: tuple[int, int], **options: Any) -> NeuronStats:
    """The partial statistics of the i-th of N shards (``shard=(i, N)``) of a :func:`locate` run.

    ``options`` are :func:`locate`'s, except ``selection``; sum the N partials with
    :func:`vlens.distributed.merge_shards` and select with :func:`from_stats`.
    """
    return _collect(model, data, shard, **options)


def _collect(model: Any, data: Any, part: tuple[int, int] | None, *, dimensions: Sequence[str] | None = None,
             split: str = "search", template: str = "auto", pairs_per_question: int = 7, max_pairs: int | None = None,
             seed: int = 0, hist_edges: Tensor | None | str = None, **collect: Any) -> NeuronStats:  # fmt: skip
    """The statistics of the prompts of ``data`` (only of its ``part=(i, N)``-th shard, when given)."""
    from vlens import distributed

    if type(data).__name__ == "DatasetDict":
        data = ValueData.from_datasets(data)
    if data is None or isinstance(data, ValueData):
        data = data or load_value_data()
        prompts = build_prompts(data, model, split=split, dimensions=list(dimensions) if dimensions else None,
                                template=template, pairs_per_question=pairs_per_question, max_pairs=max_pairs,
                                seed=seed)  # fmt: skip
        dataset_sha, source, version = data.sha256, data.source, data.version
    else:
        prompts = list(data)
        if not all(isinstance(p, Prompt) for p in prompts):
            raise TypeError(f"locate's data must be a ValueData, the DatasetDict of vlens.load_valueinsight() or a list "
                            f"of Prompt, got {type(data).__name__}")  # fmt: skip
        if dimensions:
            wanted = {dimension(d).name for d in dimensions}
            prompts = [p for p in prompts if p.dimension in wanted]
        # A list of prompts names no data layout: its version is unknown (None), not guessed.
        dataset_sha, source, version = sha256_json([p.to_dict() for p in prompts]), "user prompts", None
    present = {(p.dimension, p.pole) for p in prompts}  # every shard gets all classes, in the order of the data
    all_classes = [class_label(d, p) for d in dict.fromkeys(q.dimension for q in prompts) for p in POLES if (d, p) in present]
    if part is not None:
        prompts = distributed.shard_prompts(prompts, *part)
    if hist_edges == "auto":
        hist_edges = torch.arange(-2.0, 6.0 + 1e-9, 0.05, dtype=torch.float64)
    meta = {"dataset_sha256": dataset_sha, "dataset_version": version, "data_source": source, "template": template,
            "split": split, "shard": part, "max_pairs": max_pairs, "pairs_per_question": pairs_per_question, "seed": seed,
            "n_prompts": len(prompts)}  # fmt: skip
    return collect_stats(model, prompts, hist_edges=hist_edges, classes=all_classes if part else None, meta=meta, **collect)


def from_stats(stats: NeuronStats, selection: Selection | str = DEFAULT_SELECTION) -> LocateResult:
    """Scores and neuron sets from existing statistics (e.g. merged shards, or another selection rule)."""
    selection = Selection.parse(selection) if isinstance(selection, str) else selection
    provenance = provenance_of(stats) | {"selection_sha256": sha256_json(selection.to_dict())}
    sets = {f"{d}:{p}": select(stats, d, p, selection, provenance=provenance) for d in stats.dimensions for p in POLES}
    return LocateResult(stats, sets, selection, {d: all_scores(stats, d) for d in stats.dimensions})
