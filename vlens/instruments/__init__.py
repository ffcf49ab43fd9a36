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
from vlens.instruments.dilemmas import Dilemmas
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

    def plugins(self) -> list[Instrument]:
        """The instruments that have items, in a fixed order."""
        made = [Dilemmas(self.dilemmas), Portrait(self.portrait_items), NeutralText(self.neutral_text)]
        return [inst for inst in made if inst.items]

    @classmethod
    def default(
        cls,
        data: ValueData | None = None,
        *,
        max_dilemmas: int | None = None,
        max_portrait: int | None = None,
        max_neutral: int | None = None,
        max_questions: int | None = 8,
    ) -> Instruments:
        """The shipped instruments. ``max_dilemmas`` and ``max_questions`` are per dimension,
        so every dimension stays represented when sizes are cut."""
        data = data or load_value_data()
        per_dim = lambda recs, k: [r for d in DIMENSIONS for r in [x for x in recs if x["dimension"] == d][:k]]  # noqa: E731
        return cls(
            per_dim(data.dilemmas, max_dilemmas) if max_dilemmas is not None else list(data.dilemmas),
            _spread(data.portrait_items, max_portrait),
            list(data.neutral_text[:max_neutral]),
            per_dim(data.questions_of("test"), max_questions) if max_questions is not None else data.questions_of("test"),
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


__all__ = ["Dilemmas", "Instrument", "Instruments", "Metrics", "NeutralText", "Portrait", "ScoredSeq", "portrait_scores"]
