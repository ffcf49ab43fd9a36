"""The batching engine: every instrument's sequences under many edits at once.

:func:`evaluate_edits` repeats every sequence once per edit in the batch, each row with its
own edit, and the unedited model is row 0 of every group, so KL needs no stored reference
distributions. Sequences that share a prefix (a dilemma prompt, the portrait instructions)
compute its keys and values once per edit and continue every suffix from them. What is
measured lives in :mod:`vlens.instruments`: each instrument builds its sequences, reads
its numbers from the log-probs and summarises them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlens.instruments import Instrument, Instruments, ScoredSeq, portrait_scores
from vlens.interventions import Edit, apply
from vlens.models import model_info
from vlens.runner import Batch, forward, logprobs, run_prefixes

__all__ = ["Instruments", "build_sequences", "evaluate_edits", "metric_rows", "portrait_scores"]


def _plugins(instruments: Instruments | Sequence[Instrument]) -> list[Instrument]:
    plugins = instruments.plugins() if isinstance(instruments, Instruments) else list(instruments)
    if not plugins:
        raise ValueError("no instrument items to evaluate on: give dilemmas, portrait items or neutral text")
    return plugins


def build_sequences(model: Any, instruments: Instruments | Sequence[Instrument]) -> list[ScoredSeq]:
    """Token sequences of every instrument item, split into shared prefix and scored suffix."""
    seqs = [s for inst in _plugins(instruments) for s in inst.sequences(model)]
    n_ctx = model_info(model).n_ctx
    too_long = [s.key for s in seqs if len(s.ids) > n_ctx]
    if too_long:
        raise ValueError(f"{len(too_long)} instrument sequences are longer than the context window ({n_ctx}); shorten them")
    return seqs


def evaluate_edits(
    model: Any,
    edits: Sequence[Edit],
    instruments: Instruments | Sequence[Instrument],
    *,
    batch_size: int = 32,
    prefix_reuse: bool = True,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Metrics for every edit, all edits batched together; ``edits[0]`` must be the unedited model.

    ``instruments`` is the shipped bundle or a list of :class:`~vlens.instruments.Instrument`.
    With ``prefix_reuse`` (default) the keys and values of each shared prompt prefix are
    computed once per edit (with the edit applied: it acts on every token) and reused for
    every suffix; ``prefix_reuse=False`` runs every full sequence, for checking. Returns one
    dict per edit: every instrument's metrics, merged (see :func:`metric_rows`).
    """
    if not edits or edits[0].touched_layers().any():
        raise ValueError("edits[0] must be the unedited model (Edit.identity), the reference for KL")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    plugins = _plugins(instruments)
    seqs = [(k, s) for k, inst in enumerate(plugins) for s in build_sequences(model, [inst])]
    if not prefix_reuse:
        seqs = [(k, s.without_prefix()) for k, s in seqs]
    readings: dict[tuple[int, int], dict[tuple, Any]] = {}  # (condition, instrument) -> key -> reading

    def read(j: int, cond: int, lp: torch.Tensor, ref: torch.Tensor | None) -> None:
        k, s = seqs[j]
        readings.setdefault((cond, k), {})[s.key] = plugins[k].read(s, lp, ref)

    with apply(model, list(edits)) as handle, torch.inference_mode():
        _Engine(model, handle, len(edits), batch_size, read).run([s for _, s in seqs], progress=progress)
    out = []
    for c in range(len(edits)):
        merged: dict[str, Any] = {}
        for k, inst in enumerate(plugins):
            merged |= inst.summarise(readings[(c, k)])
        out.append(merged)
    return out


def metric_rows(base: dict[str, Any], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One tidy row (``base`` plus metric, measured, value) per number: a metric that is a dict
    gives one row per measured dimension, a plain number one row with ``measured=""``."""
    rows = []
    for metric, value in metrics.items():
        if isinstance(value, dict):
            rows += [base | {"metric": metric, "measured": measured, "value": v} for measured, v in value.items()]
        elif value is not None:
            rows.append(base | {"metric": metric, "measured": "", "value": value})
    return rows


class _Engine:
    """Runs (sequence, edit) rows in batches through :mod:`vlens.runner` and hands out the log-probs."""

    TOKEN_BUDGET = 4096  # rows x positions of log-probs held at once (x vocab floats)

    def __init__(self, model: Any, handle: Any, n_cond: int, batch_size: int, read: Any):
        self.model, self.handle, self.read, self.batch_size = model, handle, read, batch_size
        # Condition chunks; each starts with the unedited model, the reference for KL.
        step = max(batch_size - 1, 1)
        self.cond_chunks = [list(range(n_cond))] if n_cond <= batch_size else [
            [0, *range(start, min(start + step, n_cond))] for start in range(1, n_cond, step)
        ]  # fmt: skip

    def _forward(self, rows: list[list[int]], conds: list[int], **kwargs: Any) -> torch.Tensor:
        self.handle.set_rows(torch.tensor(conds))
        self.handle.new_pass()
        return forward(self.model, Batch.of(self.model, rows), **kwargs)

    def run(self, seqs: list[ScoredSeq], *, progress: bool) -> None:
        from tqdm.auto import tqdm

        plain = [i for i, s in enumerate(seqs) if not s.prefix]
        by_prefix: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(seqs):
            if s.prefix:
                by_prefix.setdefault(s.prefix, []).append(i)
        jobs: list[tuple[str, Any, list[int]]] = []
        for conds in self.cond_chunks:
            # plain rows: longest first, as many sequences per batch as the budgets allow
            order = sorted(plain, key=lambda i: -len(seqs[i].ids))
            chunk: list[int] = []
            for i in order:
                if chunk and ((len(chunk) + 1) * len(conds) > max(self.batch_size, len(conds)) or
                              (len(chunk) + 1) * len(conds) * len(seqs[chunk[0]].ids) > self.TOKEN_BUDGET):  # fmt: skip
                    jobs.append(("plain", chunk, conds))
                    chunk = []
                chunk.append(i)
            if chunk:
                jobs.append(("plain", chunk, conds))
            prefixes = sorted(by_prefix, key=len, reverse=True)
            per = max(1, self.batch_size // len(conds))
            for k in range(0, len(prefixes), per):
                jobs.append(("prefix", prefixes[k : k + per], conds))
        for kind, what, conds in tqdm(jobs, disable=not progress, desc="evaluate", unit="batch"):
            if kind == "plain":
                self._plain(seqs, what, conds)
            else:
                self._with_prefix(seqs, what, [by_prefix[p] for p in what], conds)

    def _plain(self, seqs: list[ScoredSeq], seq_idx: list[int], conds: list[int]) -> None:
        rows = [(i, c) for i in seq_idx for c in conds]
        hidden = self._forward([seqs[i].ids for i, _ in rows], [c for _, c in rows])
        lps = {(i, c): logprobs(self.model, hidden[r, seqs[i].split - 1 : len(seqs[i].ids)]) for r, (i, c) in enumerate(rows)}
        for (i, c), lp in lps.items():
            self.read(i, c, lp, lps.get((i, 0)))

    def _with_prefix(self, seqs: list[ScoredSeq], prefixes: list[tuple[int, ...]], members: list[list[int]], conds: list[int]) -> None:
        prow = [(p, c) for p in range(len(prefixes)) for c in conds]
        self.handle.set_rows(torch.tensor([c for _, c in prow]))
        self.handle.new_pass()
        done = run_prefixes(self.model, [prefixes[p] for p, _ in prow])
        last = logprobs(self.model, done.last_hidden)  # [prefix rows, vocab]: predicts each suffix's first token
        srows = [(i, r) for r, (p, _) in enumerate(prow) for i in members[p]]
        for start in range(0, len(srows), self.batch_size):
            batch = srows[start : start + self.batch_size]
            pick = torch.tensor([r for _, r in batch])
            hidden = self._forward([seqs[i].suffix for i, _ in batch], [prow[r][1] for _, r in batch], prefixes=done, pick=pick)
            for b, (i, r) in enumerate(batch):
                s = seqs[i]
                first_scored = s.split - len(s.prefix)  # index in the suffix of the first scored token
                lp = logprobs(self.model, hidden[b, max(first_scored - 1, 0) : len(s.suffix)])
                self.read(i, prow[r][1], torch.cat([last[r : r + 1], lp]) if first_scored == 0 else lp, None)
