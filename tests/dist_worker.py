"""Run under torchrun by tests/test_distributed.py: data-parallel locate and validate on a tiny model."""

from __future__ import annotations

import os
import sys

import torch

import vlens
from vlens import distributed
from vlens.evaluate import Instruments
from vlens.stats import NeuronStats
from vlens.validate import validate


def main(out: str) -> None:
    rank, world = distributed.rank_world()
    assert world == int(os.environ["WORLD_SIZE"]) > 1
    fail_rank = int(os.environ.get("VLENS_TEST_FAIL_RANK", "-1"))
    if rank == fail_rank:  # die in the second batch, after the first checkpoint
        original, calls = NeuronStats.add_token_counts, {"n": 0}

        def dying(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError(f"simulated failure of rank {rank}")
            return original(self, *args, **kwargs)

        NeuronStats.add_token_counts = dying
    model = vlens.tiny_model("llama")
    result = vlens.locate(model, vlens.load_value_data(), dimensions=["co", "st"], max_pairs=6, batch_size=1,
                          selection="top_k:12", checkpoint_dir=f"{out}/ckpt", checkpoint_every=1, progress=False)  # fmt: skip
    inst = Instruments.default(max_dilemmas=1, max_portrait=3, max_neutral=1)
    v = validate(model, result, instruments=inst, dimensions=["Conservation"], gammas=[1.0], kl_targets=[], n_random=2,
                 controls=(), progress=False)
    if rank == 0:
        result.save(f"{out}/locate")
        v.table.to_csv(f"{out}/validation.csv", index=False)
    distributed.barrier()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
