"""Neuron selectors on the same footing: delta, mean_diff, cohens_d, LAPE, sparse probe, attribution patching, random.

On the offline model: locate statistics on ``--pairs`` prompt pairs per dimension, build
the ``+`` and ``-`` sets of every selector at every size, and validate all of them in one
batched evaluation (the paper's edit toward ``+`` and toward ``-``, each at the dose whose KL
on neutral text reaches ``--kl-targets``, against ``--n-random`` layer-matched random edits
per size, beside the ``--controls``). Prints the verdict table (one line per selector, size,
dimension and direction), the pairwise overlap and the cost of each selector; writes the
tidy table, the verdicts, the calibration, the overlap, the costs, the sets and the figures
into ``--out``.

The defaults are small enough for a CPU (a few minutes); the numbers they give are noisy
(few items and random sets). Attribution patching differentiates ``--attribution-items``
dilemmas per dimension that are not among the evaluation items.

Usage: VLENS_CACHE_DIR=/tmp/vlens_cache python benchmarks/compare_selectors.py --out /tmp/compare
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

import vlens
from vlens.evaluate import Instruments
from vlens.report import selector_verdicts
from vlens.selectors import SELECTORS, compare
from vlens.viz import compare_figures


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the CSV files, the sets and the figures")
    ap.add_argument("--dimensions", default="Conservation", help="comma-separated")
    ap.add_argument(
        "--pairs", type=int, default=16, help="prompt pairs per dimension for the statistics (and the probe)"
    )
    ap.add_argument("--sizes", default="0.005,0.02", help="set sizes per pole, as fractions of all neurons")
    ap.add_argument("--kl-targets", default="0.1", help="KL costs (nats/token on neutral text) the edits are matched to")
    ap.add_argument("--gammas", default="", help="edit strengths given by hand, beside the matched ones")
    ap.add_argument("--n-random", type=int, default=3)
    ap.add_argument("--controls", default="prompted,steering,dense", help="positive controls ('' for none)")
    ap.add_argument("--dilemmas", type=int, default=2, help="evaluation dilemmas per dimension")
    ap.add_argument("--portrait", type=int, default=0)
    ap.add_argument("--neutral", type=int, default=1)
    ap.add_argument("--attribution-items", type=int, default=4, help="dilemmas per dimension for attribution patching")
    ap.add_argument("--selectors", default=",".join(SELECTORS), help="comma-separated names")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    out = Path(args.out)
    dims = [d.strip() for d in args.dimensions.split(",") if d.strip()]
    t0 = time.perf_counter()
    model = vlens.load_model()
    info = vlens.model_info(model)
    t_load = time.perf_counter() - t0
    print(f"model {info.name}: {info.n_layers} layers x {info.d_mlp} neurons, torch threads {torch.get_num_threads()}, "
          f"loaded in {t_load:.1f} s")  # fmt: skip

    t0 = time.perf_counter()
    located = vlens.locate(
        model, dimensions=dims, max_pairs=args.pairs, selection="top_k:10", batch_size=16, progress=False
    )
    t_locate = time.perf_counter() - t0
    tokens = located.stats.tokens.tolist()
    print(f"statistics: {args.pairs} pairs per dimension, tokens per class {[int(t) for t in tokens]}, {t_locate:.1f} s "
          "(shared by every selector; not in their costs)")  # fmt: skip

    inst = Instruments.default(max_dilemmas=args.dilemmas, max_portrait=args.portrait, max_neutral=args.neutral)
    used = {d["id"] for d in inst.dilemmas}
    data = vlens.load_value_data()
    attribution_dilemmas = [
        d for dim in located.dimensions
        for d in [x for x in data.dilemmas if x["dimension"] == dim and x["id"] not in used][: args.attribution_items]
    ]  # fmt: skip

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = compare(
            model, located, dimensions=dims, sizes=_floats(args.sizes), selectors=args.selectors.split(","),
            instruments=inst, kl_targets=_floats(args.kl_targets), gammas=_floats(args.gammas), n_random=args.n_random,
            controls=[c for c in args.controls.split(",") if c], dilemmas=attribution_dilemmas, seed=args.seed,
            batch_size=args.batch_size, progress=False,
        )  # fmt: skip
    t_compare = time.perf_counter() - t0
    for w in caught:
        print(f"note: {w.message}")

    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    s = result.summary()
    print(f"\nconditions evaluated: {result.meta['n_conditions']} in {result.meta['evaluation_wall_s']:.1f} s "
          f"(compare in all {t_compare:.1f} s); instruments {result.meta['instrument_sizes']}")  # fmt: skip
    print("\nVERDICTS (effect: the shift of the + option's log-odds toward the steering direction, at matched KL)")
    print(selector_verdicts(s).to_string(index=False))
    print("\nOVERLAP (Jaccard, mean over dimensions and poles)")
    for k, part in result.overlap.groupby("size"):
        mat = part.groupby(["selector_a", "selector_b"])["jaccard"].mean().unstack()
        names = result.meta["selectors"]
        print(f"  {k} neurons per pole")
        print(mat.reindex(index=names, columns=names).to_string(float_format=lambda v: f"{v:.2f}"))
    print("\nCOST per selector (sets for all dimensions, poles and sizes)")
    print(result.costs.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    result.save(out)
    for name, fig in compare_figures(result).items():
        fig.savefig(out / f"{name}.png", dpi=120)
    print(f"\nwrote {out}/compare.csv (tidy table), compare_summary.csv, calibration.csv, overlap.csv, costs.csv, sets/, *.png")


if __name__ == "__main__":
    main()
