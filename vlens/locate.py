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
from vlens.activations import collect_stats
from vlens.data.loaders import ValueData, load_value_data
from vlens.data.prompts import Prompt, build_prompts
from vlens.neurons import NeuronSet, Selection, provenance_of, select
from vlens.scores import all_scores
from vlens.stats import NeuronStats
from vlens.values import POLES


@dataclass
class LocateResult:
    """Statistics, scores and the selected neuron sets of a locate run."""

    stats: NeuronStats
    neuron_sets: dict[str, NeuronSet]  # "<dimension>:<pole>" -> set
    selection: Selection
    scores: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # dimension -> score name -> [layer, neuron]

    @property
    def dimensions(self) -> list[str]:
        return list(dict.fromkeys(c.rsplit(":", 1)[0] for c in self.stats.classes))

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
        sets = {}
        for name in meta["sets"]:
            sets[name] = NeuronSet.load(folder / "neurons" / _set_file(name))
        result = cls(stats, sets, Selection(**meta["selection"]))
        result.scores = {d: all_scores(stats, d) for d in result.dimensions}
        return result


def _set_file(name: str) -> str:
    """File name of a neuron set: "Self-Enhancement:-" -> "Self-Enhancement_minus"."""
    dimension, pole = name.rsplit(":", 1)
    return f"{dimension}_{'plus' if pole == '+' else 'minus'}"


def locate(
    model: Any,
    data: ValueData | Sequence[Prompt] | None = None,
    *,
    dimensions: Sequence[str] | None = None,
    scope: str = "question",
    hook: str = "post",
    selection: Selection | str = "paper",
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    max_pairs: int | None = None,
    split: str = "search",
    template: str = "auto",
    pairs_per_question: int = 7,
    seed: int = 0,
    hist_edges: Tensor | None | str = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 20,
    max_new_tokens: int = 64,
    prefix_reuse: bool = True,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> LocateResult | NeuronStats:
    """Locate value neurons: contrast the ``+`` and ``-`` prompts of each dimension.

    ``data`` is a :class:`~vlens.data.ValueData` (default: the shipped ValueInsight) from
    which prompt pairs of ``split`` are built (``max_pairs`` per dimension), or a ready list
    of :class:`~vlens.data.Prompt`. Returns statistics, every score and a neuron set per
    dimension and pole. ``hist_edges="auto"`` also collects a histogram (for the 95th
    percentile, the edit's NPTI variant) over [-2, 6] in 0.05 steps; it costs memory
    (classes x neurons x 162 bins) and time, so it is off by default.

    Under ``torchrun`` every rank takes every N-th prompt pair and the statistics are summed
    across ranks (the result equals one process up to float64 rounding). ``shard=(i, N)``
    takes the i-th of N shards without a process group and returns only the partial
    :class:`~vlens.stats.NeuronStats`, to be summed by :func:`vlens.distributed.merge_shards`.
    """
    from vlens import distributed

    if data is None or isinstance(data, ValueData):
        data = data or load_value_data()
        prompts = build_prompts(data, model, split=split, dimensions=list(dimensions) if dimensions else None,
                                template=template, pairs_per_question=pairs_per_question, max_pairs=max_pairs,
                                seed=seed)  # fmt: skip
        dataset_sha = data.sha256
        source = data.source
    else:
        prompts = list(data)
        if dimensions:
            from vlens.values import dimension as dim_of

            wanted = {dim_of(d).name for d in dimensions}
            prompts = [p for p in prompts if p.dimension in wanted]
        dataset_sha = sha256_json([p.to_dict() for p in prompts])
        source = "user prompts"
    from vlens.stats import class_label

    all_classes = sorted({class_label(p.dimension, p.pole) for p in prompts},
                         key=lambda c: ([p.dimension for p in prompts].index(c.rsplit(":", 1)[0]), c[-1] == "-"))  # fmt: skip
    rank, world = distributed.rank_world()
    if shard is not None:
        part = shard
    elif world > 1:
        part = (rank, world)
        if checkpoint_dir is not None:
            checkpoint_dir = f"{checkpoint_dir}/rank-{rank}-of-{world}"
    else:
        part = None
    if part is not None:
        prompts = distributed.shard_prompts(prompts, *part)
    if hist_edges == "auto":
        hist_edges = torch.arange(-2.0, 6.0 + 1e-9, 0.05, dtype=torch.float64)
    meta = {"dataset_sha256": dataset_sha, "data_source": source, "template": template, "split": split, "shard": shard,
            "max_pairs": max_pairs, "pairs_per_question": pairs_per_question, "seed": seed,
            "n_prompts": len(prompts)}  # fmt: skip
    stats = collect_stats(
        model, prompts, scope=scope, hook=hook, layers=layers, batch_size=batch_size, hist_edges=hist_edges,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, max_new_tokens=max_new_tokens,
        prefix_reuse=prefix_reuse, classes=all_classes if part else None, progress=progress, meta=meta,
    )  # fmt: skip
    if shard is not None:
        return stats
    if world > 1:
        stats = distributed.all_reduce_stats(stats)
        stats.meta["n_prompts"] = int(stats.prompts.sum().item())
        stats.meta["world_size"] = world
    return from_stats(stats, selection)


def from_stats(stats: NeuronStats, selection: Selection | str = "paper") -> LocateResult:
    """Scores and neuron sets from existing statistics (e.g. merged shards, or another selection rule)."""
    selection = Selection.parse(selection) if isinstance(selection, str) else selection
    dims = list(dict.fromkeys(c.rsplit(":", 1)[0] for c in stats.classes))
    provenance = provenance_of(stats) | {"selection_sha256": sha256_json(selection.to_dict())}
    sets = {f"{d}:{p}": select(stats, d, p, selection, provenance=provenance) for d in dims for p in POLES}
    return LocateResult(stats, sets, selection, {d: all_scores(stats, d) for d in dims})
