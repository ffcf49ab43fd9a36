"""Validation speed: the ``answer`` edit scope against today's ``all``, and the engine against a bare forward pass.

Side by side in one run on the offline model, the same edits (the unedited model plus
``--conditions`` paper edits of random neuron sets, Bernoulli masks on) on the same
instruments (``--dilemmas`` per dimension, ``--neutral`` texts for the KL cost, optionally
``--portrait`` items), alternating over ``--repeats`` rounds:

- bare:   the bridge's plain forward pass (logits included, as in ``bench_locate.py``) over
          every instrument sequence once, in full, length-sorted batches of ``--batch-size``
- all:    ``evaluate_edits(scope="all")``, the engine as before the answer scope: every
          shared prompt prefix recomputed once per condition, with its edit
- answer: ``evaluate_edits(scope="answer")``, the default: each prefix minus its last token
          once, unedited, for all conditions; each condition runs only its answer tokens
- before: the engine as the issue found it, ``scope="all"`` with listed options (``--before``),
          against which the new default (answer scope, the default cloze reading) is timed

Printed: the medians with every round's time and the spread (max / min), and the ratios

- condition-items per second (conditions, the unedited one included, x dilemma items),
  answer against all (goal of issue 13: >= 5x);
- the engine's tokens/s against the bare forward pass's (goal >= 0.9x). The engine's tokens
  are the real (unpadded) tokens it ran through ``vlens.runner.forward``, counted during the
  run; bare's are those of the full sequences. "effective tokens/s" counts what the engine
  delivered instead: every condition x every full sequence.

The unedited reference must read the same in both scopes; the largest difference is printed.
``--loop`` adds the prefix-reuse comparison of the earlier issue (scope ``all``: one evaluation
per condition over full prompts, all conditions batched over full prompts, batched with
prefix reuse; goal reuse >= 10x faster than the loop) and checks that the three agree.

Usage: python benchmarks/bench_validate.py [--conditions 20] [--dilemmas 6] [--neutral 1] [--repeats 3] [--loop] [--before listed-mean]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

import vlens
import vlens.evaluate
import vlens.runner
from vlens.evaluate import Instruments, build_sequences, evaluate_edits
from vlens.interventions import Edit, value_edit
from vlens.models import DEFAULT_MODEL, position_ids
from vlens.neurons import NeuronSet, random_like
from vlens.runner import Batch


@contextlib.contextmanager
def counting_tokens() -> Iterator[list[int]]:
    """Count the real tokens of every pass through vlens.runner.forward (the engine's and run_prefixes')."""
    count = [0]
    inner = vlens.runner.forward

    def counted(model: Any, batch: Batch, **kwargs: Any) -> Any:
        count[0] += int(batch.mask.sum())
        return inner(model, batch, **kwargs)

    vlens.runner.forward = vlens.evaluate.forward = counted
    try:
        yield count
    finally:
        vlens.runner.forward = vlens.evaluate.forward = inner


def bare(model: Any, rows: list[list[int]], batch_size: int) -> None:
    order = sorted(rows, key=len, reverse=True)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = Batch.of(model, order[start : start + batch_size])
            model(batch.tokens, attention_mask=batch.mask, position_ids=position_ids(batch.mask))


def make_edits(info: Any, conditions: int) -> list[Edit]:
    """The unedited model and ``conditions`` paper edits of 1%-per-pole random sets (spread like located sets)."""
    shape = (info.n_layers, info.d_mlp)
    g = torch.Generator().manual_seed(0)
    n = int(0.01 * info.n_layers * info.d_mlp)
    base = NeuronSet("Conservation", "+", torch.randint(0, info.n_layers, (n,), generator=g), torch.randperm(info.d_mlp * 4, generator=g)[:n] % info.d_mlp,
                     torch.ones(n), *shape, act_prob=torch.full((n,), 0.5), delta=torch.full((n,), 0.1))  # fmt: skip
    edits = [Edit.identity(*shape)]
    for seed in range(conditions):
        t, o = random_like(base, seed), random_like(base, 1000 + seed)
        t.act_prob, t.delta = torch.full((n,), 0.5), torch.full((n,), 0.1)
        edits.append(value_edit(shape, t, o, 1.0, seed=seed))
    return edits


def largest_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    worst = 0.0
    for key, value in a.items():
        if isinstance(value, dict):
            worst = max([worst, *(abs(v - b[key][d]) for d, v in value.items())])
        elif isinstance(value, float):
            worst = max(worst, abs(value - b[key]))
    return worst


def spread(times: list[float]) -> str:
    return f"median {statistics.median(times):7.2f} s, spread {max(times) / min(times):.2f}x, runs {[round(t, 2) for t in times]}"


def loop_comparison(model: Any, edits: list[Edit], inst: Instruments, batch_size: int) -> None:
    """The earlier issue's comparison, under scope all: per-condition loop, batched, batched + prefix reuse."""
    t0 = time.perf_counter()
    loop = [evaluate_edits(model, [edits[0], e], inst, scope="all", batch_size=batch_size, prefix_reuse=False)[1] for e in edits[1:]]
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = evaluate_edits(model, edits, inst, scope="all", batch_size=batch_size, prefix_reuse=False)[1:]
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    reuse = evaluate_edits(model, edits, inst, scope="all", batch_size=batch_size, prefix_reuse=True)[1:]
    t_reuse = time.perf_counter() - t0
    worst = max(max(largest_difference(a, b), largest_difference(a, c)) for a, b, c in zip(loop, batched, reuse, strict=True))
    print("scope all, the prefix-reuse comparison:")
    print(f"  loop (per condition, full prompts) {t_loop:7.1f} s")
    print(f"  batched conditions, full prompts   {t_batched:7.1f} s")
    print(f"  batched conditions + prefix reuse  {t_reuse:7.1f} s")
    print(f"  largest difference between the three: {worst:.2e}")
    print(f"RATIO loop / batched        = {t_loop / t_batched:.2f}x")
    print(f"RATIO loop / batched+reuse  = {t_loop / t_reuse:.2f}x  (goal >= 10x)")
    print(f"RATIO batched / batched+reuse = {t_batched / t_reuse:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conditions", type=int, default=20, help="edited conditions (the unedited model comes on top)")
    ap.add_argument("--dilemmas", type=int, default=6, help="per dimension (4 dimensions)")
    ap.add_argument("--portrait", type=int, default=0)
    ap.add_argument("--neutral", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="default: the offline SmolLM2; 'tiny-llama' for a smoke run")
    ap.add_argument("--loop", action="store_true", help="also the per-condition loop comparison (scope all)")
    ap.add_argument("--before", default="listed-mean",
                    help="the dilemma reading of the engine before issue 13 (listed options, scope all), timed beside "
                         "the new default ('' to skip)")  # fmt: skip
    args = ap.parse_args()
    if args.conditions < 1 or args.dilemmas < 1 or args.repeats < 1:
        ap.error("--conditions, --dilemmas and --repeats must be at least 1")

    model = vlens.tiny_model("llama") if args.model == "tiny-llama" else vlens.load_model(args.model or DEFAULT_MODEL)
    info = vlens.model_info(model)
    inst = Instruments.default(max_dilemmas=args.dilemmas, max_portrait=args.portrait, max_neutral=args.neutral, max_questions=0)
    seqs = build_sequences(model, inst)
    rows = [s.ids for s in seqs]
    full_tokens = sum(map(len, rows))
    edits = make_edits(info, args.conditions)
    items = len(edits) * len(inst.dilemmas)
    print(f"model {info.name}, torch threads {torch.get_num_threads()}, {len(edits)} conditions (incl. unedited) x "
          f"{len(inst.dilemmas)} dilemmas = {items} condition-items; {len(inst.portrait_items)} portrait items, "
          f"{len(inst.neutral_text)} neutral texts; {len(seqs)} sequences, {full_tokens} tokens in full")  # fmt: skip

    bare(model, rows[:4], args.batch_size)  # warm-up
    times: dict[str, list[float]] = {"bare": [], "all": [], "answer": []} | ({"before": []} if args.before else {})
    old = Instruments(inst.dilemmas, inst.portrait_items, inst.neutral_text, dilemma_variant=args.before or inst.dilemma_variant)
    tokens: dict[str, int] = {"bare": full_tokens}
    results: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        bare(model, rows, args.batch_size)
        times["bare"].append(time.perf_counter() - t0)
        for scope in ("all", "answer"):
            with counting_tokens() as count:
                t0 = time.perf_counter()
                results[scope] = evaluate_edits(model, edits, inst, scope=scope, batch_size=args.batch_size)
                times[scope].append(time.perf_counter() - t0)
            tokens[scope] = count[0]
        if args.before:  # the engine as it was: listed options, every token edited
            with counting_tokens() as count:
                t0 = time.perf_counter()
                evaluate_edits(model, edits, old, scope="all", batch_size=args.batch_size)
                times["before"].append(time.perf_counter() - t0)
            tokens["before"] = count[0]

    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: tokens[k] / med[k] for k in med}
    for k in times:
        per_item = "" if k == "bare" else f", {items / med[k]:7.1f} condition-items/s, {len(edits) * full_tokens / med[k]:8.1f} effective tokens/s"
        print(f"  {k:6s} {spread(times[k])}")
        print(f"         {tokens[k]} tokens run, {rate[k]:7.1f} tokens/s{per_item}")
    print(f"  unedited reference, answer vs all: largest difference {largest_difference(results['all'][0], results['answer'][0]):.2e}")
    print(f"RATIO condition-items/s answer / all = {med['all'] / med['answer']:.2f}x  (same instrument, {inst.dilemma_variant})")
    if args.before:
        print(f"RATIO condition-items/s new default ({inst.dilemma_variant}, answer) / before ({args.before}, all) = "
              f"{med['before'] / med['answer']:.2f}x  (goal >= 5x)")
    print(f"RATIO tokens/s answer / bare         = {rate['answer'] / rate['bare']:.3f}  (goal >= 0.9)")
    print(f"RATIO tokens/s all / bare            = {rate['all'] / rate['bare']:.3f}")
    print(f"RATIO tokens run answer / all        = {tokens['answer'] / tokens['all']:.3f}")
    if args.loop:
        loop_comparison(model, edits, inst, args.batch_size)


if __name__ == "__main__":
    main()
