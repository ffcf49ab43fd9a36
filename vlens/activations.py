"""Streaming capture of MLP neuron activations into NeuronStats.

Prompts are tokenized once, sorted by length into padded batches (so little compute goes
to padding), and run with the attention mask. Hooks on one hook family reduce each
layer's activations over the selected tokens into per-class sums *inside the hook*, so no
``[prompts, pos, layers, d_mlp]`` tensor ever exists, and the forward pass stops after the
last layer needed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlens._io import read_json, write_json
from vlens.data.prompts import Prompt
from vlens.models import model_info, tokenize
from vlens.runner import (
    Batch,
    Hook,
    activation_fn,
    check_layers,
    forward,
    generate,
    hook_name,
    resolve_hook,
    run_prefixes,
)
from vlens.stats import NeuronStats, class_label

SCOPES = ("question", "all", "last", "generated")
# The defaults of locate and `vlens run`, chosen by the study (docs/study.md, `vlens sweep` on dev, reported on
# test): every prompt token, read at the gate activation act(gate) as the paper's authors read it, the top 2,000
# neurons per pole by Cohen's d. Edits on the sets it locates beat random edits of the same KL on SmolLM2's dev
# dilemmas; the `question` x `hook_post` x paper reading, the defaults before, did not.
DEFAULT_SCOPE = "all"
DEFAULT_HOOK = "gate"
DEFAULT_SELECTION = "top_k:2000,score=cohens_d"


@dataclass
class TokenizedPrompt:
    prompt: Prompt
    ids: list[int]
    select: list[bool]  # which tokens count for the statistics (empty until generation for "generated")


def check_pairs(prompts: Sequence[Prompt]) -> None:
    """Every pair has one `+` and one `-` prompt of one dimension, with identical shared parts."""
    by_pair: dict[str, list[Prompt]] = defaultdict(list)
    for p in prompts:
        by_pair[p.pair_id].append(p)
    for pair_id, members in by_pair.items():
        poles = sorted(p.pole for p in members)
        if poles != ["+", "-"]:
            raise ValueError(f"mismatched pair {pair_id!r}: expected one '+' and one '-' prompt, got poles {poles}")
        a, b = members
        if a.dimension != b.dimension:
            raise ValueError(f"mismatched pair {pair_id!r}: dimensions {a.dimension!r} and {b.dimension!r}")
        if a.text[a.shared_start :] != b.text[b.shared_start :]:
            raise ValueError(f"mismatched pair {pair_id!r}: the parts after the descriptions differ")


def tokenize_prompts(model: Any, prompts: Sequence[Prompt], scope: str, *, max_new_tokens: int = 0) -> list[TokenizedPrompt]:
    """Tokenize every prompt and mark the tokens its scope selects."""
    if scope not in SCOPES:
        raise ValueError(f"unknown token scope {scope!r}; expected one of {', '.join(SCOPES)}")
    n_ctx = model_info(model).n_ctx
    out = []
    for p in prompts:
        ids, offs = tokenize(model, p.text)
        if len(ids) + max_new_tokens > n_ctx:
            raise ValueError(
                f"prompt {p.id!r} has {len(ids)} tokens (+{max_new_tokens} to generate), more than the model's "
                f"context window of {n_ctx}; shorten it or drop it"
            )
        if scope == "question":
            select = [start >= p.shared_start for start, _ in offs]
        elif scope == "all":
            select = [True] * len(ids)
        elif scope == "last":
            select = [False] * (len(ids) - 1) + [True]
        else:  # generated: filled in after generation
            select = []
        out.append(TokenizedPrompt(p, ids, select))
    if scope == "question":
        _check_shared_tokens(out)
    return out


def _check_shared_tokens(rows: list[TokenizedPrompt]) -> None:
    """Under the question scope, both prompts of a pair must select exactly the same tokens."""
    shared: dict[str, list[int]] = {}
    for r in rows:
        toks = [t for t, s in zip(r.ids, r.select, strict=True) if s]
        if not toks:
            raise ValueError(f"prompt {r.prompt.id!r} has no tokens after its description (shared_start is at the end)")
        if (seen := shared.setdefault(r.prompt.pair_id, toks)) != toks:
            raise ValueError(
                f"mismatched pair {r.prompt.pair_id!r}: the tokens after the description differ between the poles "
                f"({len(seen)} vs {len(toks)} tokens); the description must end at a token boundary"
            )


def pole_classes(prompts: Sequence[Prompt]) -> list[str]:
    """The ``"<dimension>:<pole>"`` classes of ``prompts``: dimensions in the order the data gives them, + before -."""
    dims = list(dict.fromkeys(p.dimension for p in prompts))
    keys = sorted({(p.dimension, p.pole) for p in prompts}, key=lambda k: (dims.index(k[0]), k[1] == "-"))
    return [class_label(*key) for key in keys]


def _question_start(row: TokenizedPrompt) -> int:
    """Index of the first selected token (question scope: everything from there on is selected)."""
    return row.select.index(True)


def plan_batches(rows: Sequence[TokenizedPrompt], batch_size: int, *, by_prefix: bool = False) -> list[list[int]]:
    """Row indices grouped into batches of similar length (longest first, deterministic); ``by_prefix``
    puts rows that share a prefix (instruction + description) side by side, for prefix reuse."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    prefix = lambda i: tuple(rows[i].ids[: _question_start(rows[i])]) if by_prefix else ()  # noqa: E731
    order = sorted(range(len(rows)), key=lambda i: (prefix(i), -len(rows[i].ids), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _selection_weights(
    rows: list[TokenizedPrompt], classes: list[str], width: int, padding_side: str
) -> tuple[Float[Tensor, "batch pos cls"], Int[Tensor, " batch"]]:
    sel = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        s = torch.tensor(r.select, dtype=torch.float32)
        if padding_side == "right":
            sel[i, : len(s)] = s
        else:
            sel[i, width - len(s) :] = s
    cls = torch.tensor([classes.index(class_label(r.prompt.dimension, r.prompt.pole)) for r in rows])
    onehot = torch.nn.functional.one_hot(cls, len(classes)).to(sel)
    return einops.einsum(sel, onehot, "b p, b c -> b p c"), cls


def _plan_hash(rows: list[TokenizedPrompt], batches: list[list[int]], settings: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for b in batches:
        h.update(("|".join(rows[i].prompt.id for i in b) + "\n").encode())
    return h.hexdigest()


def collect_stats(
    model: Any,
    prompts: Sequence[Prompt],
    *,
    scope: str = DEFAULT_SCOPE,
    hook: str = DEFAULT_HOOK,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    padding_side: str = "right",
    hist_edges: Tensor | None = None,
    max_new_tokens: int = 64,
    repetition_penalty: float = 1.1,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 20,
    prefix_reuse: bool = True,
    classes: Sequence[str] | None = None,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> NeuronStats:
    """Run ``prompts`` through ``model`` and return per-class statistics of every neuron.

    Classes are ``"<dimension>:<pole>"``. ``scope`` picks the tokens that count:
    ``question`` (after the description: identical in both poles), ``all``, ``last``, or
    ``generated`` (greedy generation with ``repetition_penalty``; only generated tokens,
    up to ``max_new_tokens``). With ``checkpoint_dir`` the statistics are saved every
    ``checkpoint_every`` batches and an interrupted run resumes where it stopped, with the
    same result as an uninterrupted one. ``classes`` fixes the class list (a shard of the
    data may lack some); classes without tokens are then allowed, for summing later.

    Under the ``question`` scope, ``prefix_reuse`` (default) runs each distinct prefix
    (instruction and description, never recorded) once per batch and only the questions
    against its cached keys and values; the statistics equal the full computation up to
    float rounding. ``prefix_reuse=False`` runs every full prompt.
    """
    if not prompts:
        raise ValueError("no prompts given")
    hook_name(hook, 0)
    layers = check_layers(model, layers)
    check_pairs(prompts)
    rows = tokenize_prompts(model, prompts, scope, max_new_tokens=max_new_tokens if scope == "generated" else 0)
    fixed_classes = classes is not None
    classes = list(classes) if fixed_classes else pole_classes(prompts)
    reuse = prefix_reuse and scope == "question"
    batches = plan_batches(rows, batch_size, by_prefix=reuse)
    info = model_info(model)
    settings = {"scope": scope, "hook": hook, "layers": layers, "batch_size": batch_size, "padding_side": padding_side,
                "max_new_tokens": max_new_tokens if scope == "generated" else None,
                "repetition_penalty": repetition_penalty if scope == "generated" else None, "prefix_reuse": reuse,
                "hist_edges": None if hist_edges is None else hist_edges.tolist()}  # fmt: skip
    plan = _plan_hash(rows, batches, settings | {"model": info.fingerprint})
    meta = {"model": info.to_dict(), "model_fingerprint": info.fingerprint, "hook": hook, "hook_points": [resolve_hook(model, hook, lay) for lay in layers],
            "scope": scope, **settings, **(meta or {})}  # fmt: skip
    device = torch.device(model.cfg.device)
    stats = NeuronStats.empty(classes, layers, info.d_mlp, hist_edges=hist_edges, device=device, meta=meta)

    done = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt:
        stats, done = _resume_or_start(ckpt, plan, len(batches), stats)

    act = activation_fn(model, hook)
    points = [resolve_hook(model, hook, layer) for layer in layers]

    def reducers(weights: Float[Tensor, "batch pos cls"]) -> list[Hook]:
        w = weights.to(device)

        def make_hook(layer_pos: int) -> Callable:
            def reduce_hook(tensor: Tensor, hook: Any) -> None:
                stats.add(layer_pos, act(tensor), w)

            return reduce_hook

        return [(point, make_hook(i)) for i, point in enumerate(points)]

    stop_at = points[-1]  # nothing after the last layer read is computed
    bar = _progress(len(batches), initial=done, enabled=progress, desc=f"locate ({scope})")
    try:
        for b, batch in enumerate(batches):
            if b < done:
                continue
            with torch.inference_mode():
                weights, row_cls = pool_batch(
                    model, [rows[i] for i in batch], classes, reducers, stop_at=stop_at, scope=scope, prefix_reuse=reuse,
                    padding_side=padding_side, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                )  # fmt: skip
                stats.add_token_counts(weights, row_cls)
            bar.update(1)
            if ckpt and ((b + 1) % checkpoint_every == 0 or b + 1 == len(batches)):
                # The batch counter travels inside the statistics file: one atomic write, so a crash at
                # any point leaves a checkpoint that resumes exactly.
                stats.save(ckpt / "stats", extra={"batches_done": torch.tensor(b + 1)})
    finally:
        bar.close()
    empty = [c for c, n in zip(classes, stats.tokens.tolist(), strict=True) if n == 0]
    if empty and not fixed_classes:
        raise ValueError(f"no tokens were recorded for class(es) {empty} under scope {scope!r}")
    return stats


def pool_batch(
    model: Any,
    batch_rows: list[TokenizedPrompt],
    classes: list[str],
    hooks: Callable[[Float[Tensor, "batch pos cls"]], Sequence[Hook]],
    *,
    stop_at: str,
    scope: str,
    prefix_reuse: bool,
    padding_side: str = "right",
    max_new_tokens: int = 64,
    repetition_penalty: float = 1.1,
) -> tuple[Float[Tensor, "batch pos cls"], Int[Tensor, " batch"]]:
    """Run one batch of tokenized prompts with hooks that pool over the tokens their scope selects.

    ``hooks(weights)`` gives this batch's hooks: ``weights[b, p, c]`` is 1 where token ``(b, p)``
    of the pass counts for class ``c`` (``classes``), 0 elsewhere and on padding, so a hook pools
    with ``einsum(acts, weights)``. With ``prefix_reuse`` (question scope) each distinct prefix
    (instruction + description, never pooled) runs once and the pass holds only the question
    parts; under the ``generated`` scope the rows are first continued greedily (and ``batch_rows``
    are extended in place). Returns the weights (on the CPU) and the class index of every row.
    """
    prefixes, pick = None, None
    if prefix_reuse:
        # Each distinct prefix (instruction + description: never recorded) runs once,
        # then every row's question part continues from its keys and values.
        starts = [_question_start(r) for r in batch_rows]
        keys = [tuple(r.ids[:k]) for r, k in zip(batch_rows, starts, strict=True)]
        distinct = list(dict.fromkeys(keys))
        prefixes = run_prefixes(model, distinct, stop_at=stop_at)
        pick = torch.tensor([distinct.index(k) for k in keys])
        batch_rows = [TokenizedPrompt(r.prompt, r.ids[k:], r.select[k:]) for r, k in zip(batch_rows, starts, strict=True)]
    elif scope == "generated":
        ids = [r.ids for r in batch_rows]
        new = generate(model, ids, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
        for r, extra in zip(batch_rows, new, strict=True):
            r.ids, r.select = r.ids + extra, [False] * len(r.ids) + [True] * len(extra)
    tokens = Batch.of(model, [r.ids for r in batch_rows], padding_side=padding_side)
    weights, row_cls = _selection_weights(batch_rows, classes, tokens.tokens.shape[1], padding_side)
    forward(model, tokens, hooks=hooks(weights), stop_at=stop_at, prefixes=prefixes, pick=pick)
    return weights, row_cls


def _resume_or_start(ckpt: Path, plan: str, total: int, empty: NeuronStats) -> tuple[NeuronStats, int]:
    """The checkpoint's statistics and batch count if it belongs to this ``plan``; else a fresh start
    (the old statistics removed BEFORE the new plan is recorded, so they can never be taken for it)."""
    files = [ckpt / "progress.json", ckpt / "stats.safetensors", ckpt / "stats.json"]
    if all(f.exists() for f in files) and read_json(files[0]).get("plan") == plan:
        stats, extra = NeuronStats.load(ckpt / "stats", with_extra=True)
        if "batches_done" in extra:  # absent in checkpoints of older vlens versions: start over
            return stats.to(empty.tokens.device), int(extra["batches_done"])
    for f in files[1:]:
        f.unlink(missing_ok=True)
    write_json(files[0], {"plan": plan, "batches": total})
    return empty, 0


def _progress(total: int, *, initial: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar that works in a terminal and in Jupyter, with an estimate of the time left."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="batch")
