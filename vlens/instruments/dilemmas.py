"""Forced-choice dilemmas: a situation and two options, listed in both orders (counterbalanced).

Two readings per item and order: *option likelihood* (mean per-token log-probability of each
option's text as the answer; ``p(+) = sigmoid(lp+ - lp-)``) and *letter choice* (the
probabilities of "A" and "B" as the answer's first token, reported with the model's
position bias beside it: small models mostly pick "A"). Orientation = mean ``p(+)`` over
items and orders; 0.5 is indifference.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from vlens.instruments.base import Instrument, Metrics, ScoredSeq, letter_ids, scored_logprobs
from vlens.models import format_prompt, tokenize

TEMPLATE = "{context}\n\nWhich of these would you do?\nA) {first}\nB) {second}\n\nAnswer with A or B."


class Dilemmas(Instrument):
    name = "dilemma"

    def __init__(self, items: list[dict[str, Any]]):
        self.items = list(items)

    def sequences(self, model: Any) -> list[ScoredSeq]:
        """Prefix = the prompt of one item in one option order (its last position gives the letter
        reading); suffixes = the two option texts as the answer."""
        self.ab = letter_ids(model, "AB")
        seqs = []
        for i, item in enumerate(self.items):
            for order in (0, 1):  # 0: + listed first (A), 1: - listed first
                first, second = (item["option_plus"], item["option_minus"])[:: 1 if order == 0 else -1]
                text = format_prompt(model, TEMPLATE.format(context=item["context"], first=first, second=second))
                prompt = tuple(tokenize(model, text)[0])
                for option in ("plus", "minus"):
                    answer = model.tokenizer(item[f"option_{option}"], add_special_tokens=False)["input_ids"]
                    seqs.append(ScoredSeq(self.name, prompt, list(answer), len(prompt), (i, order, option)))
        return seqs

    def read(self, seq: ScoredSeq, lp: torch.Tensor, ref: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        return scored_logprobs(seq, lp).mean().item(), lp[0, self.ab].cpu()

    def summarise(self, readings: dict[tuple, Any]) -> Metrics:
        by_dim: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        p_a = []
        for i, item in enumerate(self.items):
            for order in (0, 1):
                (lp_plus, letters), (lp_minus, _) = readings[(i, order, "plus")], readings[(i, order, "minus")]
                likelihood = torch.sigmoid(torch.tensor(lp_plus - lp_minus)).item()
                letters = letters.softmax(-1)
                p_a.append(letters[0].item())
                by_dim[item["dimension"]].append((likelihood, letters[order].item(), float(lp_plus > lp_minus)))
        out: Metrics = {"orientation": {}, "letter_orientation": {}, "plus_preferred": {}}
        for dim, vals in by_dim.items():
            out["orientation"][dim], out["letter_orientation"][dim], out["plus_preferred"][dim] = torch.tensor(vals).mean(0).tolist()
        out["position_bias_A"] = sum(p_a) / len(p_a) if p_a else None
        return out
