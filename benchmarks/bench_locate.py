"""Locate: speed and memory against a bare forward pass and against the naive way.

Measured side by side in one run on the offline model (this machine is shared and noisy,
so only the ratios mean much):

- time: locate over full prompts (hooks reduce in place, stop after the last layer) versus
  a bare forward pass over the same batches (goal <= 1.05x); locate with prefix reuse (the
  default: each instruction + description prefix computed once per batch) versus the bare
  forward pass over the full prompts (goal <= 0.60x); and the naive way (``run_with_cache``
  with ``names_filter=hook_post`` per batch, then reduce). They alternate over
  ``--repeats`` rounds and the medians are compared.
- peak memory (max RSS, each in a fresh subprocess): locate on ``--small`` versus
  ``--large`` prompt pairs (goal: <= 1.15x, flat in the number of prompts), and naive
  versus locate on ``--small``.

Usage: python benchmarks/bench_locate.py [--pairs 24] [--small 64] [--large 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

import vlens
from vlens.activations import (
    _selection_weights,
    check_pairs,
    collect_stats,
    plan_batches,
    tokenize_prompts,
)
from vlens.models import pad, pad_id, position_ids
from vlens.stats import NeuronStats, class_label


def prompts_for(model, pairs: int, *, shared: bool = False):
    """``pairs`` prompt pairs of one dimension. ``shared``: with the sharing of the full dataset,
    i.e. every pair of the first few descriptions (each description's prefix recurs in many pairs)."""
    data = vlens.load_value_data()
    if not shared:
        return vlens.build_prompts(data, model, dimensions=["Conservation"], max_pairs=pairs, template="raw")
    everything = vlens.build_prompts(data, model, dimensions=["Conservation"], template="raw")
    by_pair: dict[str, list] = {}
    for p in everything:
        by_pair.setdefault(p.pair_id, []).append(p)
    ordered = sorted(by_pair.values(), key=lambda pair: (pair[0].text[: pair[0].shared_start], pair[0].pair_id))
    return [p for pair in ordered[:pairs] for p in pair]


def batches_of(model, prompts, batch_size):
    rows = tokenize_prompts(model, prompts, "question")
    return rows, plan_batches(rows, batch_size)


def bare(model, prompts, batch_size):
    rows, batches = batches_of(model, prompts, batch_size)
    with torch.inference_mode():
        for batch in batches:
            tokens, mask = pad([rows[i].ids for i in batch], padding_side="right", value=pad_id(model))
            model(tokens, attention_mask=mask, position_ids=position_ids(mask))


def naive(model, prompts, batch_size):
    check_pairs(prompts)
    rows, batches = batches_of(model, prompts, batch_size)
    classes = sorted({class_label(p.dimension, p.pole) for p in prompts})
    info = vlens.model_info(model)
    stats = NeuronStats.empty(classes, list(range(info.n_layers)), info.d_mlp)
    with torch.inference_mode():
        for batch in batches:
            batch_rows = [rows[i] for i in batch]
            tokens, mask = pad([r.ids for r in batch_rows], padding_side="right", value=pad_id(model))
            _, cache = model.run_with_cache(tokens, attention_mask=mask, position_ids=position_ids(mask),
                                            names_filter=lambda n: n.endswith("mlp.hook_post"))  # fmt: skip
            weights, row_cls = _selection_weights(batch_rows, classes, tokens.shape[1], "right")
            for layer in range(info.n_layers):
                stats.add(layer, cache[f"blocks.{layer}.mlp.hook_post"], weights)
            stats.add_token_counts(weights, row_cls)
            del cache
    return stats


def located(model, prompts, batch_size):
    """locate as it runs by default: shared prefixes (instruction + description) computed once."""
    return collect_stats(model, prompts, batch_size=batch_size, progress=False)


def located_full(model, prompts, batch_size):
    """locate over every full prompt (prefix reuse off)."""
    return collect_stats(model, prompts, batch_size=batch_size, progress=False, prefix_reuse=False)


def child(mode: str, pairs: int, batch_size: int) -> None:
    model = vlens.load_model()
    prompts = prompts_for(model, pairs)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    {"locate": located, "naive": naive, "bare": bare}[mode](model, prompts, batch_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kib": peak, "before_kib": base}))


def peak_of(mode: str, pairs: int, batch_size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(pairs), "--batch-size", str(batch_size)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=24, help="prompt pairs for the timing comparison")
    ap.add_argument("--small", type=int, default=64)
    ap.add_argument("--large", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--shared", action="store_true", help="prompts with the full dataset's prefix sharing (for the reuse ratio)")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PAIRS"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.batch_size)
        return

    model = vlens.load_model()
    prompts = prompts_for(model, args.pairs, shared=args.shared)
    prefixes = {p.text[: p.shared_start] for p in prompts}
    print(f"{len(prompts) / len(prefixes):.1f} prompts per distinct prefix")
    n_tokens = sum(len(r.ids) for r in tokenize_prompts(model, prompts, "question"))
    print(f"model {vlens.model_info(model).name}, torch threads {torch.get_num_threads()}, "
          f"{len(prompts)} prompts ({n_tokens} tokens), batch size {args.batch_size}")  # fmt: skip
    bare(model, prompts[:16], args.batch_size)  # warm-up
    times: dict[str, list[float]] = {"bare": [], "locate": [], "locate_full": [], "naive": []}
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("locate", located), ("locate_full", located_full), ("naive", naive)):
            t = time.perf_counter()
            fn(model, prompts, args.batch_size)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k:7s} median {v:7.2f} s  ({len(prompts) / v:6.1f} prompts/s, {n_tokens / v:7.1f} tokens/s)  runs {[round(x, 2) for x in times[k]]}")
    print(f"RATIO locate without prefix reuse / bare forward = {med['locate_full'] / med['bare']:.3f}  (goal <= 1.05)")
    print(f"RATIO locate with prefix reuse / bare forward    = {med['locate'] / med['bare']:.3f}  (goal <= 0.60)")
    print(f"RATIO locate / naive (time)      = {med['locate_full'] / med['naive']:.3f}")
    if args.skip_memory:
        return
    small, large = peak_of("locate", args.small, args.batch_size), peak_of("locate", args.large, args.batch_size)
    naive_small = peak_of("naive", args.small, args.batch_size)
    print(f"  peak RSS locate {args.small} pairs: {small['peak_kib'] / 1024:.0f} MiB; {args.large} pairs: "
          f"{large['peak_kib'] / 1024:.0f} MiB; naive {args.small} pairs: {naive_small['peak_kib'] / 1024:.0f} MiB")  # fmt: skip
    print(f"RATIO peak memory {args.large} / {args.small} pairs = {large['peak_kib'] / small['peak_kib']:.3f}  (goal <= 1.15)")
    print(f"RATIO peak memory naive / locate  = {naive_small['peak_kib'] / small['peak_kib']:.3f}")


if __name__ == "__main__":
    main()
