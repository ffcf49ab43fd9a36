"""Choose the default dilemma instrument on the dev split: the prompted control's paired z per variant.

Runs :func:`vlens.experiment.instrument_sensitivity` on the shipped data's ``dev`` dilemmas with
its held-out (``test``) descriptions, for every formulation at once, and writes the table and the
ranking (by the weaker direction's z over all dev items) to ``--out`` (CSV). Never touches ``test``
dilemmas. The result decides ``vlens.instruments.dilemmas.DEFAULT_VARIANT``; docs/results.md
reports it.

Usage: python scripts/choose_instrument.py [--model NAME] [--slot system|user] [--out docs/study/instrument_dev.csv]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import vlens
from vlens.experiment import instrument_sensitivity
from vlens.instruments.dilemmas import dilemma_split
from vlens.models import DEFAULT_MODEL


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--slot", default="system", choices=("system", "user"), help="where the value description goes")
    ap.add_argument("--out", type=Path, default=Path("docs/study/instrument_dev.csv"))
    args = ap.parse_args()
    model = vlens.load_model(args.model)
    data = vlens.load_value_data()
    dev = [d for d in data.dilemmas if dilemma_split(d) == "dev"]
    held = data.descriptions_of("test")  # v1 data has no description split: all of them
    t = time.time()
    table = instrument_sensitivity(model, dev, held, persona_slot=args.slot)
    rank = table[table.dimension == "all"].groupby("variant").min_z.first().sort_values(ascending=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # A base model has no system turn: the description goes into the raw prompt whatever --slot says.
    slot = args.slot if vlens.model_info(model).is_chat else "raw"
    table.assign(model=args.model, slot=slot, data_version=getattr(data, "version", 1)).to_csv(args.out, index=False)
    print(table.round(3).to_string(index=False))
    print(f"\n{len(dev)} dev dilemmas, {len(held)} held-out descriptions, {time.time() - t:.0f} s")
    print("\nranking by the weaker direction's paired z over all dev items:")
    print(rank.round(2).to_string())


if __name__ == "__main__":
    main()
