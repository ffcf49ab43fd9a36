"""Instruments: what value orientation and capability are measured on.

One module per instrument, each a :class:`~vlens.instruments.base.Instrument` (sequences to
score, readings from log-probs, a summary); :class:`Instruments` is the shipped bundle.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from vlens.data.loaders import ValueData, load_value_data
from vlens.data.schemas import read_records
from vlens.instruments.base import Instrument, Metrics, ScoredSeq
from vlens.instruments.dilemmas import DEFAULT_VARIANT, Dilemmas, Variant, personas
from vlens.instruments.dilemmas import dilemma_split as dilemma_split_of
from vlens.instruments.neutral import NeutralText
from vlens.instruments.portrait import Portrait, portrait_scores
from vlens.values import DIMENSIONS, SCORING_KEY, basic_value_of


@dataclass
class Instruments:
    """The shipped instruments' items: dilemmas, portrait items, neutral text, held-out questions."""

    dilemmas: list[dict[str, Any]] = field(default_factory=list)
    portrait_items: list[dict[str, Any]] = field(default_factory=list)
    neutral_text: list[dict[str, Any]] = field(default_factory=list)
    questions: list[dict[str, Any]] = field(default_factory=list)  # held-out, for generation
    dilemma_variant: str = DEFAULT_VARIANT.name  # how dilemmas are read (vlens.instruments.dilemmas.Variant)

    def __post_init__(self) -> None:
        Variant.parse(self.dilemma_variant)  # a typo fails here, before anything runs

    def plugins(self) -> list[Instrument]:
        """The instruments that have items, in a fixed order."""
        made = [Dilemmas(self.dilemmas, variant=self.dilemma_variant), Portrait(self.portrait_items),
                NeutralText(self.neutral_text)]  # fmt: skip
        return [inst for inst in made if inst.items]

    def items(self) -> dict[str, list[dict[str, Any]]]:
        """The item lists by instrument (what a run's metadata records the size and hash of)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, list)}

    @classmethod
    def default(
        cls,
        data: ValueData | None = None,
        *,
        max_dilemmas: int | None = None,
        max_portrait: int | None = None,
        max_neutral: int | None = None,
        max_questions: int | None = 8,
        dilemma_split: str | None = "test",
        dilemma_variant: str = DEFAULT_VARIANT.name,
    ) -> Instruments:
        """The shipped instruments. ``max_dilemmas`` and ``max_questions`` are per dimension,
        so every dimension stays represented when sizes are cut. ``dilemma_split``: ``test`` (what
        results are reported on), ``dev`` (where settings are chosen) or None (all)."""
        data = data or load_value_data()
        per_dim = lambda recs, k: [r for d in DIMENSIONS for r in [x for x in recs if x["dimension"] == d][:k]]  # noqa: E731
        if dilemma_split not in ("dev", "test", None):
            raise ValueError(f"dilemma_split must be 'dev', 'test' or None (all), got {dilemma_split!r}")
        dilemmas = [d for d in data.dilemmas if dilemma_split is None or dilemma_split_of(d) == dilemma_split]
        return cls(
            per_dim(dilemmas, max_dilemmas) if max_dilemmas is not None else dilemmas,
            _spread(data.portrait_items, max_portrait),
            list(data.neutral_text[:max_neutral]),
            per_dim(data.questions_of("test"), max_questions) if max_questions is not None else data.questions_of("test"),
            dilemma_variant,
        )

    @classmethod
    def from_files(
        cls,
        *,
        dilemmas: str | os.PathLike | None = None,
        portrait_items: str | os.PathLike | None = None,
        neutral_text: str | os.PathLike | None = None,
        questions: str | os.PathLike | None = None,
    ) -> Instruments:
        """User JSONL/CSV files in vlens' schemas (any subset); the rest stays empty."""
        read = lambda path, kind: read_records(path, kind) if path else []  # noqa: E731
        return cls(read(dilemmas, "dilemmas"), read(portrait_items, "portrait_items"), read(neutral_text, "neutral_text"),
                   read(questions, "questions"))  # fmt: skip


def _spread(items: list[dict], k: int | None) -> list[dict]:
    """Up to ``k`` portrait items, round-robin over the values, with the values ordered so the
    four dimensions alternate: every dimension is scored even when ``k`` < the number of values."""
    if k is None or k >= len(items):
        return list(items)
    by_value: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        by_value[it["value"]].append(it)
    by_dim: dict[str, list[str]] = defaultdict(list)
    for value, group in by_value.items():
        basic = group[0].get("basic_value") or basic_value_of(value)
        by_dim[SCORING_KEY[basic][0]].append(value)
    queues = list(by_dim.values())
    values = [q.pop(0) for _ in range(len(by_value)) for q in queues if q][: len(by_value)]
    out: list[dict] = []
    while len(out) < k:
        for value in values:
            if by_value[value] and len(out) < k:
                out.append(by_value[value].pop(0))
    return out


__all__ = ["Dilemmas", "Instrument", "Instruments", "Metrics", "NeutralText", "Portrait", "ScoredSeq", "Variant", "personas",
           "portrait_scores"]
