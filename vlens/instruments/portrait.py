"""Portrait items (PVQ style): "How much is this person like you?", letters A-F from "not like me
at all" to "very much like me". The expected rating from the six renormalised letter
probabilities, centred by the mean over all items, averaged per basic value and aggregated
into the four dimensions. A reverse-keyed item (``keyed: "-"``) portrays someone who does not
care about the value, so agreeing with it lowers the value's score: its centred rating counts
negatively."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlens.instruments.base import Instrument, Metrics, ScoredSeq, letter_ids
from vlens.models import format_prompt, tokenize
from vlens.values import DIMENSIONS, SCORING_KEY, basic_value_of

LETTERS = "ABCDEF"
RATING_LABELS = ("Not like me at all", "Not like me", "A little like me", "Somewhat like me", "Like me", "Very much like me")
TEMPLATE = (
    "Here is a short description of a person.\n\n\"{text}\"\n\nHow much is this person like you? Answer with one letter.\n"
    + "\n".join(f"{letter}) {label}" for letter, label in zip(LETTERS, RATING_LABELS, strict=True))
)


class Portrait(Instrument):
    name = "portrait"

    def __init__(self, items: list[dict[str, Any]]):
        self.items = list(items)

    def sequences(self, model: Any) -> list[ScoredSeq]:
        """Prefix = the instruction and rating scale shared by all items; suffix = the item
        (the letters are read at its end)."""
        self.letters = letter_ids(model, LETTERS)
        marker = "\x00ITEM\x00"
        head_text, tail_text = format_prompt(model, TEMPLATE.format(text=marker)).split(marker)
        head = tuple(tokenize(model, head_text)[0])
        seqs = []
        for i, item in enumerate(self.items):
            ids = model.tokenizer(item["text"] + tail_text, add_special_tokens=False)["input_ids"]
            seqs.append(ScoredSeq(self.name, head, list(ids), len(head) + len(ids), (i,)))
        return seqs

    def read(self, seq: ScoredSeq, lp: Tensor, ref: Tensor | None) -> Tensor:
        return lp[-1, self.letters].cpu()

    def summarise(self, readings: dict[tuple, Any]) -> Metrics:
        return {"portrait": portrait_scores([readings[(i,)] for i in range(len(self.items))], self.items)}


def portrait_scores(letter_logprobs: Sequence[Float[Tensor, " 6"]], items: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Centred dimension scores from the A-F log-probabilities of each portrait item.

    Ratings are centred by the mean over all items (a respondent's general tendency to agree), before a
    reverse-keyed item's sign is flipped: with half the items reversed, agreeing with everything scores zero.
    """
    if len(letter_logprobs) != len(items):
        raise ValueError(f"got readings for {len(letter_logprobs)} portrait items but {len(items)} items")
    keys = [item.get("keyed", "+") for item in items]
    if bad := sorted({k for k in keys if k not in ("+", "-")}):
        raise ValueError(f"a portrait item's 'keyed' is '+' or '-' (reverse-keyed), got {bad}")
    probs = torch.stack(list(letter_logprobs)).softmax(-1)  # renormalised over the six letters
    ratings = probs @ torch.arange(1, 7, dtype=probs.dtype)  # expected rating, 1..6
    sign = torch.tensor([1.0 if k == "+" else -1.0 for k in keys], dtype=probs.dtype)
    centred = (ratings - ratings.mean()) * sign
    per_value: dict[str, list[float]] = defaultdict(list)
    for item, r in zip(items, centred.tolist(), strict=True):
        per_value[item.get("basic_value") or basic_value_of(item["value"])].append(r)
    value_means = {v: sum(rs) / len(rs) for v, rs in per_value.items()}
    out = {}
    for dim in DIMENSIONS:
        vals = [m for v, m in value_means.items() if dim in SCORING_KEY[v]]
        if vals:
            out[dim] = sum(vals) / len(vals)
    return out
