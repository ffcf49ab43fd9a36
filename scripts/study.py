"""The study of docs/study.md on any model, in one command: the positive control first, then the sweep.

1. **Can the instrument see a stated value?** The prompted control (:func:`vlens.experiment.instrument_sensitivity`)
   on the ``dev`` dilemmas, for every dilemma formulation and every place a description can go (the system
   and the user turn for a chat model; the raw text for a base model), with descriptions from the held-out
   ``test`` split. Written to ``OUT/instrument_dev.csv``; its ``min_z`` (the weaker direction's paired z)
   says whether any neuron claim can be checked on this model (docs/validation.md: z >= 5).
2. **Which locate settings give neurons that matter?** ``vlens sweep`` (:mod:`vlens.sweep`) over the full
   grid into ``OUT/sweep/``: every cell chosen on dev, the best one reported on test, with split-half
   stability, the circumplex check and the layer profile.

Both steps resume: the instrument table is kept once written, and the sweep continues where it stopped.

On a GPU, a hub model (the authors' code used Qwen2-0.5B and Llama-3.2-1B)::

    python scripts/study.py --model Qwen/Qwen2-0.5B-Instruct --device cuda --out runs/study-qwen2

``--quick`` shrinks every size (a smoke run of the recipe in minutes; its numbers mean nothing), which is how
tests/test_study.py runs this very script on a tiny random model on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

import vlens
from vlens._io import atomic_write
from vlens.experiment import instrument_sensitivity
from vlens.instruments.dilemmas import dilemma_split
from vlens.pipeline import FULL, LocateConfig, RunConfig, ValidateConfig
from vlens.sweep import SWEEP_FULL, sweep

QUICK_LOCATE = {"max_pairs": 4}
QUICK_VALIDATE = {"max_dilemmas": 2, "max_neutral": 1, "n_random": 3, "controls": ["prompted"]}
QUICK_GRID = ["scope=question,all", "hook=post,gate", "sel=top_k:20", "score=delta"]  # top 20 fits a tiny model too


def prompted_table(model, data, slots: Sequence[str], split: str = "dev") -> pd.DataFrame:
    """The prompted control per formulation, dimension and direction, for each slot, on ``split`` dilemmas."""
    items = [d for d in data.dilemmas if dilemma_split(d) == split]
    if not items:
        raise ValueError(f"the value data has no {split!r} dilemmas: the study needs the v2 splits")
    held = data.descriptions_of("test")
    name = vlens.model_info(model).name
    # a base model reads the description as raw text whatever the slot says (vlens.instruments.Dilemmas)
    return pd.concat([instrument_sensitivity(model, items, held, persona_slot="system" if slot == "raw" else slot)
                      .assign(model=name, slot=slot, split=split) for slot in slots], ignore_index=True)  # fmt: skip


def slots_of(model) -> list[str]:
    """A chat model takes the description in its system or its user turn; a base model reads it as raw text."""
    return ["system", "user"] if vlens.model_info(model).is_chat else ["raw"]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=vlens.models.DEFAULT_MODEL, help="any name vlens.load_model takes")
    ap.add_argument("--out", type=Path, required=True, help="study folder: instrument_dev.csv and sweep/")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if torch sees a GPU)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the recipe runs, measures nothing")
    ap.add_argument("--no-sweep", action="store_true", help="only step 1, the prompted-control table")
    ap.add_argument("--kl-targets", default=None, help="comma-separated KL costs (default: 0.05,0.1,0.2; quick: 0.1)")
    args = ap.parse_args(argv)
    kl = [float(k) for k in args.kl_targets.split(",")] if args.kl_targets else None

    t0 = time.time()
    model = vlens.load_model(args.model, device=args.device)
    data = vlens.load_value_data()
    args.out.mkdir(parents=True, exist_ok=True)
    table_path = args.out / "instrument_dev.csv"
    if table_path.exists():
        table = pd.read_csv(table_path)
        print(f"[study] step 1/2: prompted control kept from {table_path}")
    else:
        print(f"[study] step 1/2: the prompted control on dev, slots {', '.join(slots_of(model))}", flush=True)
        table = prompted_table(model, data, slots_of(model))
        atomic_write(table_path, lambda tmp: table.to_csv(tmp, index=False))
    best = table[table.dimension == "all"].groupby(["slot", "variant"]).z.min().sort_values(ascending=False)
    print(f"[study] the prompted control's best weaker-direction z on dev: {best.iloc[0]:.2f} ({' / '.join(best.index[0])}); "
          f"z >= 5 is needed before any neuron claim can be checked", flush=True)  # fmt: skip

    if args.no_sweep:
        return 0

    sizes = ({}, {}) if not args.quick else (QUICK_LOCATE, QUICK_VALIDATE)
    full = {} if args.quick else {k: FULL[k] for k in SWEEP_FULL}  # as `vlens sweep --full`
    locate_kw = {**{k: v for k, v in full.items() if k in LocateConfig.__dataclass_fields__}, **sizes[0]}
    validate_kw = {**{k: v for k, v in full.items() if k in ValidateConfig.__dataclass_fields__}, **sizes[1]}
    if kl is not None:
        validate_kw["kl_targets"] = kl
    base = RunConfig(LocateConfig(model=args.model, **locate_kw), ValidateConfig(**validate_kw))
    folder = args.out / "sweep"
    print("[study] step 2/2: the sweep (vlens.sweep)", flush=True)
    result = sweep(args.model, QUICK_GRID if args.quick else "full", folder, base=base, model=model,
                   resume=(folder / "sweep.json").exists(), progress=not args.quick)  # fmt: skip
    print(f"[study] done in {time.time() - t0:.0f} s: chosen on dev {result.best}; {folder / 'sweep.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
