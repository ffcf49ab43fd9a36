"""Capability cost on neutral text: the mean KL divergence of the next-token distribution from
the unedited model's (nats per token), and the perplexity."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from vlens.instruments.base import Instrument, Metrics, ScoredSeq, scored_logprobs
from vlens.models import tokenize


class NeutralText(Instrument):
    name = "neutral"
    needs_reference = True

    def __init__(self, items: list[dict[str, Any]]):
        self.items = list(items)

    def sequences(self, model: Any) -> list[ScoredSeq]:
        return [ScoredSeq(self.name, (), tokenize(model, item["text"])[0], 1, (i,)) for i, item in enumerate(self.items)]

    def read(self, seq: ScoredSeq, lp: Tensor, ref: Tensor | None) -> tuple[float, int, float]:
        if ref is None:
            raise RuntimeError("neutral text needs the unedited row in the same batch")
        n = len(seq.ids) - seq.split
        r = ref[:n]
        return -scored_logprobs(seq, lp).sum().item(), n, (r.exp() * (r - lp[:n])).sum().item()

    def summarise(self, readings: dict[tuple, Any]) -> Metrics:
        nll, n_tok, kl = (sum(r[j] for r in readings.values()) for j in range(3))
        return {"kl": kl / n_tok, "perplexity": math.exp(nll / n_tok)}
