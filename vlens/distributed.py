"""Scaling out on torch.distributed: data-parallel locate and validate, and job-array shards.

Under ``torchrun --nproc_per_node=N -m vlens ...`` every rank takes every N-th prompt pair
(or every N-th validation condition), accumulates its own statistics, and the statistics
are summed with ``all_reduce`` (gloo on CPU, nccl on GPU); only rank 0 writes the run
directory. Without a process group, ``--shard i/N`` does the same split for job arrays:
each task writes partial statistics and ``vlens merge`` sums them.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import os
from collections.abc import Sequence
from typing import Any

import torch

from vlens.data.prompts import Prompt
from vlens.stats import NeuronStats


def rank_world() -> tuple[int, int]:
    """(rank, world size); starts the process group when torchrun's environment asks for one."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # A rank that dies makes the collectives of the others fail after this timeout at the
        # latest; torchrun normally stops them at once.
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=int(os.environ.get("VLENS_DIST_TIMEOUT_MIN", "10"))))
        # vlens started the group, so vlens ends it: leaving with gloo's threads alive can abort the
        # process at exit ("terminate called without an active exception").
        atexit.register(lambda: dist.destroy_process_group() if dist.is_initialized() else None)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_device() -> str | None:
    """The device of this rank under torchrun (cuda:LOCAL_RANK on GPUs), else None (the default)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as err:
        raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from err
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < N")
    return i, n


def shard_prompts(prompts: Sequence[Prompt], index: int, count: int) -> list[Prompt]:
    """Every ``count``-th prompt pair starting at ``index`` (both poles of a pair stay together)."""
    pairs = list(dict.fromkeys(p.pair_id for p in prompts))
    mine = set(pairs[index::count])
    return [p for p in prompts if p.pair_id in mine]


def all_reduce_stats(stats: NeuronStats) -> NeuronStats:
    """Sum the statistics of all ranks in place (float64, so the sum matches one process)."""
    import torch.distributed as dist

    for name in ("tokens", "active", "sum", "sumsq", "hist", "prompts"):
        t = getattr(stats, name)
        if t is not None:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return stats


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def merge_shards(paths: Sequence[str | os.PathLike]) -> NeuronStats:
    """Sum partial statistics written by ``--shard i/N`` tasks, refusing ones that do not belong together."""
    if not paths:
        raise ValueError("no partial statistics to merge")
    parts = [NeuronStats.load(p) for p in paths]
    shards = [p.meta.get("shard") for p in parts]
    counts = {s[1] for s in shards if s}
    if None in shards or len(counts) != 1:
        raise ValueError(f"partials must all come from one --shard i/N run, got shards {shards}")
    (n,) = counts
    have = sorted(s[0] for s in shards)
    if have != list(range(n)):
        missing = sorted(set(range(n)) - set(have))
        raise ValueError(f"shards {missing} of {n} are missing (or repeated: {have}); run them before merging")
    total = functools.reduce(NeuronStats.merge, parts)  # merge refuses other models, hooks, scopes, datasets, templates
    total.meta = {k: v for k, v in total.meta.items() if k != "shard"} | {"merged_shards": n, "n_prompts": int(total.prompts.sum())}
    return total
