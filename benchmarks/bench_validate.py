"""Validation speed: batched conditions and prefix reuse against the per-condition loop.

Side by side in one run on the offline model, the same edits (the unedited model plus
``--conditions`` paper edits of random neuron sets) on the same instruments:

- loop:    one evaluation per condition, full prompts (no batching of conditions, no prefix reuse)
- batched: all conditions in the batch, full prompts
- reuse:   all conditions in the batch, each shared prompt prefix computed once per condition

Prints the wall times and the ratios (goal of the prefix issue: reuse at least 10x faster
than the loop), and checks that the three agree.

Usage: python benchmarks/bench_validate.py [--conditions 8] [--dilemmas 2] [--portrait 10]
"""

from __future__ import annotations

import argparse
import time

import torch

import vlens
from vlens.evaluate import Instruments, build_sequences, evaluate_edits
from vlens.interventions import Edit, value_edit
from vlens.neurons import NeuronSet, random_like


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conditions", type=int, default=8)
    ap.add_argument("--dilemmas", type=int, default=2, help="per dimension")
    ap.add_argument("--portrait", type=int, default=10)
    ap.add_argument("--neutral", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    model = vlens.load_model()
    info = vlens.model_info(model)
    shape = (info.n_layers, info.d_mlp)
    inst = Instruments.default(max_dilemmas=args.dilemmas, max_portrait=args.portrait, max_neutral=args.neutral)
    seqs = build_sequences(model, inst)
    full_tokens = sum(len(s.ids) for s in seqs)
    reused_tokens = sum(len(s.suffix) for s in seqs) + sum(len(p) for p in {s.prefix for s in seqs})
    # A 1%-per-pole set spread like located sets (random layers), and random controls of it.
    g = torch.Generator().manual_seed(0)
    n = int(0.01 * info.n_layers * info.d_mlp)
    base = NeuronSet("Conservation", "+", torch.randint(0, info.n_layers, (n,), generator=g), torch.randperm(info.d_mlp * 4, generator=g)[:n] % info.d_mlp,
                     torch.ones(n), *shape, act_prob=torch.full((n,), 0.5), delta=torch.full((n,), 0.1))  # fmt: skip
    edits = [Edit.identity(*shape)]
    for seed in range(args.conditions):
        t, o = random_like(base, seed), random_like(base, 1000 + seed)
        t.act_prob, t.delta = torch.full((n,), 0.5), torch.full((n,), 0.1)
        edits.append(value_edit(shape, t, o, 1.0, seed=seed))
    print(f"model {info.name}, torch threads {torch.get_num_threads()}, {len(edits)} conditions (incl. unedited), "
          f"{len(seqs)} sequences: {full_tokens} tokens per condition in full, {reused_tokens} with prefix reuse")  # fmt: skip

    t0 = time.perf_counter()
    loop = [evaluate_edits(model, [edits[0], e], inst, batch_size=args.batch_size, prefix_reuse=False)[1] for e in edits[1:]]
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = evaluate_edits(model, edits, inst, batch_size=args.batch_size, prefix_reuse=False)[1:]
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    reuse = evaluate_edits(model, edits, inst, batch_size=args.batch_size, prefix_reuse=True)[1:]
    t_reuse = time.perf_counter() - t0

    worst = 0.0
    for a, b, c in zip(loop, batched, reuse, strict=True):
        for key in ("orientation", "letter_orientation", "portrait"):
            for d in a[key]:
                worst = max(worst, abs(a[key][d] - b[key][d]), abs(a[key][d] - c[key][d]))
        worst = max(worst, abs(a["kl"] - c["kl"]))
    print(f"  loop (per condition, full prompts) {t_loop:7.1f} s")
    print(f"  batched conditions, full prompts   {t_batched:7.1f} s")
    print(f"  batched conditions + prefix reuse  {t_reuse:7.1f} s")
    print(f"  largest difference between the three: {worst:.2e}")
    print(f"RATIO loop / batched        = {t_loop / t_batched:.2f}x")
    print(f"RATIO loop / batched+reuse  = {t_loop / t_reuse:.2f}x  (goal >= 10x)")
    print(f"RATIO batched / batched+reuse = {t_batched / t_reuse:.2f}x")


if __name__ == "__main__":
    main()
