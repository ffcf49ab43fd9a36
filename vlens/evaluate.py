"""The batching engine: every instrument's sequences under many edits at once.

:func:`evaluate_edits` repeats every sequence once per edit in the batch, each row with its
own edit, and the unedited model is row 0 of every group, so KL needs no stored reference
distributions. Sequences that share a prefix (a dilemma prompt, the portrait instructions)
compute its keys and values once (once per edit under the ``all`` scope) and continue every
suffix from them. What is
measured lives in :mod:`vlens.instruments`: each instrument builds its sequences, reads
its numbers from the log-probs and summarises them.

Two edit scopes (``scope=``):

- ``answer`` (default; the authors' setting, whose code edits only while decoding): the edit
  acts at the positions that predict or carry the scored answer, the last prompt token
  (it predicts the answer's first token, so a one-token answer such as a letter sees the
  edit) and the suffix. Every shared prefix minus its last token is computed once,
  unedited, for all conditions; each condition then runs only ``[last prefix token] +
  suffix`` on that cache with its own edit.
- ``all``: the edit acts on every token, prompt included, so every shared prefix is
  recomputed once per condition (as before the answer scope existed).

Sequences without a prefix (the neutral text of the KL cost) are edited on all their
tokens in both scopes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlens.instruments import Instrument, Instruments, ScoredSeq, portrait_scores
from vlens.interventions import Edit, apply
from vlens.models import model_info
from vlens.runner import Batch, forward, logprobs, run_prefixes

__all__ = ["SCOPES", "Instruments", "build_sequences", "evaluate_edits", "metric_rows", "portrait_scores"]

SCOPES = ("answer", "all")
"""Where an edit acts: the last prompt token and the answer (``answer``), or every token (``all``)."""


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
    scope: str = "answer",
    batch_size: int = 32,
    prefix_reuse: bool = True,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Metrics for every edit, all edits batched together; ``edits[0]`` must be the unedited model.

    ``instruments`` is the shipped bundle or a list of :class:`~vlens.instruments.Instrument`.
    ``scope`` says which tokens the edits act on (see the module docstring):

    - ``"answer"`` (default): the last prompt token and the scored suffix. Each distinct
      prefix minus its last token runs once, unedited (the rows of ``edits[0]``), for every
      condition; each condition then runs ``[last prefix token] + suffix`` on that cache.
    - ``"all"``: every token. With ``prefix_reuse`` (default) the keys and values of each
      shared prefix are computed once per edit, with the edit applied, and reused for every
      suffix; ``prefix_reuse=False`` runs every full sequence, for checking.

    Sequences without a prefix (neutral text) are edited on all their tokens in both scopes:
    the capability cost (KL, perplexity) is measured with the edit everywhere.

    Bernoulli keep masks (``keep_prob < 1``) are drawn per forward step. Every edited pass
    here counts as step 0 (``new_pass``): under ``answer`` the suffix pass is step 0 of its
    own, so each condition keeps the same neurons as under ``all`` (whose prefix and suffix
    passes are both step 0); the scopes differ only in the positions edited.

    Returns one dict per edit: every instrument's metrics, merged (see :func:`metric_rows`).
    """
    if not edits or edits[0].touched_layers().any():
        raise ValueError("edits[0] must be the unedited model (Edit.identity), the reference for KL")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; expected 'answer' (edit the last prompt token and the answer) "
                         "or 'all' (edit every token)")  # fmt: skip
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if scope == "answer" and not prefix_reuse:
        raise ValueError("prefix_reuse=False (full sequences, edited everywhere) needs scope='all'; "
                         "the answer scope always reuses the unedited prompt")  # fmt: skip
    plugins = _plugins(instruments)
    seqs = [(k, s) for k, inst in enumerate(plugins) for s in build_sequences(model, [inst])]
    if scope == "answer" and (inside := [s for _, s in seqs if s.prefix and s.split < len(s.prefix)]):
        raise ValueError(f"{inside[0].kind} sequences score tokens inside their shared prefix (split {inside[0].split} < "
                         f"prefix length {len(inside[0].prefix)}), which the answer scope leaves unedited; "
                         "use scope='all' or end the prefix before the scored tokens")  # fmt: skip
    if not prefix_reuse:
        seqs = [(k, s.without_prefix()) for k, s in seqs]
    readings: dict[tuple[int, int], dict[tuple, Any]] = {}  # (condition, instrument) -> key -> reading

    def read(j: int, cond: int, lp: torch.Tensor, ref: torch.Tensor | None) -> None:
        k, s = seqs[j]
        readings.setdefault((cond, k), {})[s.key] = plugins[k].read(s, lp, ref)

    with apply(model, list(edits)) as handle, torch.inference_mode():
        _Engine(model, handle, len(edits), batch_size, read, scope).run([s for _, s in seqs], progress=progress)
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
    LOGPROB_FLOATS = 2**26  # log-probs computed in one unembedding call (256 MB of float32)

    def __init__(self, model: Any, handle: Any, n_cond: int, batch_size: int, read: Any, scope: str = "all"):
        self.model, self.handle, self.read, self.batch_size, self.scope = model, handle, read, batch_size, scope
        self.n_cond = n_cond
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

        # Under the answer scope a one-token prefix leaves nothing to share: [that token] + suffix
        # is the whole sequence, edited throughout, which is what a plain row computes.
        shared = (lambda s: len(s.prefix) > 1) if self.scope == "answer" else (lambda s: len(s.prefix) > 0)  # noqa: E731
        plain = [i for i, s in enumerate(seqs) if not shared(s)]
        by_prefix: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(seqs):
            if shared(s):
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
            if self.scope == "answer":
                continue
            prefixes = sorted(by_prefix, key=len, reverse=True)
            per = max(1, self.batch_size // len(conds))
            for k in range(0, len(prefixes), per):
                jobs.append(("prefix", prefixes[k : k + per], conds))
        if self.scope == "answer":
            # every condition in one job per chunk of prefixes: the unedited cache serves them all
            prefixes = sorted(by_prefix, key=len, reverse=True)
            jobs += [("answer", prefixes[k : k + self.batch_size], list(range(self.n_cond)))
                     for k in range(0, len(prefixes), self.batch_size)]  # fmt: skip
        for kind, what, conds in tqdm(jobs, disable=not progress, desc="evaluate", unit="batch"):
            if kind == "plain":
                self._plain(seqs, what, conds)
            elif kind == "answer":
                self._answer(seqs, what, [by_prefix[p] for p in what], conds)
            else:
                self._with_prefix(seqs, what, [by_prefix[p] for p in what], conds)

    def _plain(self, seqs: list[ScoredSeq], seq_idx: list[int], conds: list[int]) -> None:
        rows = [(i, c) for i in seq_idx for c in conds]
        hidden = self._forward([seqs[i].ids for i, _ in rows], [c for _, c in rows])
        # the unembedding a few rows at a time (a batched matmul is faster than one per row; the chunk
        # bounds the log-probs held at once to about LOGPROB_FLOATS)
        per = max(1, self.LOGPROB_FLOATS // (hidden.shape[1] * int(self.model.cfg.d_vocab)))
        lps = {}
        for start in range(0, len(rows), per):
            lp = logprobs(self.model, hidden[start : start + per])
            for r, (i, c) in enumerate(rows[start : start + per]):
                lps[(i, c)] = lp[r, seqs[i].split - 1 : len(seqs[i].ids)]
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

    def _answer(self, seqs: list[ScoredSeq], prefixes: list[tuple[int, ...]], members: list[list[int]], conds: list[int]) -> None:
        """The answer scope: ``prefix[:-1]`` once, unedited, then ``[prefix[-1]] + suffix`` per condition, edited."""
        self.handle.set_rows(torch.zeros(len(prefixes), dtype=torch.long))  # edits[0], the unedited model
        self.handle.new_pass()
        done = run_prefixes(self.model, [p[:-1] for p in prefixes])
        # longest suffixes first, so rows of similar length share a batch (conditions mix freely)
        rows = sorted(((i, p, c) for p, m in enumerate(members) for i in m for c in conds), key=lambda r: -len(seqs[r[0]].suffix))
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            tokens = [[prefixes[p][-1], *seqs[i].suffix] for i, p, _ in batch]
            # each pass is step 0 of its own (in _forward): the Bernoulli keep masks are those of the all scope
            hidden = self._forward(tokens, [c for _, _, c in batch], prefixes=done, pick=torch.tensor([p for _, p, _ in batch]))
            # one unembedding for the whole batch (rows are short answers, so padding costs little)
            lp = logprobs(self.model, hidden)
            for b, (i, _, c) in enumerate(batch):
                s = seqs[i]
                # this pass starts at position len(prefix) - 1; the readings start at position split - 1
                first = s.split - len(s.prefix)
                self.read(i, c, lp[b, first : len(s.suffix) + 1], None)
