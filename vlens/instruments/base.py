"""The instrument interface: what to score, what to read from the log-probs, how to summarise.

An instrument is one class. :func:`vlens.evaluate.evaluate_edits` batches the sequences of
every instrument under every edit, hands each instrument the log-probs of its own
sequences, and merges the summaries; adding an instrument touches no other file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from jaxtyping import Float
from torch import Tensor

Metrics = dict[str, "dict[str, float] | float | None"]
"""metric -> {measured dimension: value}, or one number (see :func:`vlens.evaluate.metric_rows`)."""


@dataclass
class ScoredSeq:
    """One sequence to score: a prefix shared with other sequences (computed once per edit) and
    the part scored against it. Readings use the log-probs at positions ``split - 1 .. end``
    of ``prefix + suffix``. ``key`` identifies the reading within its instrument."""

    kind: str
    prefix: tuple[int, ...]
    suffix: list[int]
    split: int
    key: tuple

    @property
    def ids(self) -> list[int]:
        return list(self.prefix) + self.suffix

    def without_prefix(self) -> ScoredSeq:
        return ScoredSeq(self.kind, (), self.ids, self.split, self.key)


class Instrument:
    """Subclass and set ``name``; implement the three methods. ``needs_reference``: :meth:`read`
    gets the unedited model's log-probs of the same sequence too (e.g. for a KL divergence)."""

    name: ClassVar[str] = "instrument"
    needs_reference: ClassVar[bool] = False

    def sequences(self, model: Any) -> list[ScoredSeq]:
        raise NotImplementedError

    def read(self, seq: ScoredSeq, lp: Float[Tensor, "scored vocab"], ref: Float[Tensor, "scored vocab"] | None) -> Any:
        """A few numbers from ``lp``, the log-probs at positions ``split - 1 .. end`` of ``seq``."""
        raise NotImplementedError

    def summarise(self, readings: dict[tuple, Any]) -> Metrics:
        """Metrics of one condition from its readings (``seq.key -> read(...)``)."""
        raise NotImplementedError


def scored_logprobs(seq: ScoredSeq, lp: Float[Tensor, "scored vocab"]) -> Float[Tensor, " scored"]:
    """Log-prob of each scored token of ``seq``."""
    import torch

    scored = torch.tensor(seq.ids[seq.split :], device=lp.device)
    return lp[: len(scored)].gather(-1, scored[:, None]).squeeze(-1)


def letter_ids(model: Any, letters: str) -> list[int]:
    ids = []
    for letter in letters:
        toks = model.tokenizer(letter, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise ValueError(f"the letter {letter!r} is not a single token for this tokenizer ({toks})")
        ids.append(toks[0])
    return ids
