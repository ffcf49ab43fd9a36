"""compare: every selector's sets edited the same way, against the same size-matched random controls."""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from vlens._io import atomic_write, sha256_json, vlens_version, write_json
from vlens.data import Prompt, ValueData
from vlens.evaluate import Instruments
from vlens.experiment import check_design, run, steering_conditions, summarise
from vlens.interventions import _check_set
from vlens.locate import LocateResult
from vlens.models import model_info
from vlens.neurons import NeuronSet, provenance_of
from vlens.selectors.attribution import AttributionOptions
from vlens.selectors.base import Selector, SelectorContext, run_selector
from vlens.selectors.probe import ProbeOptions
from vlens.selectors.random import random_selector
from vlens.selectors.registry import SELECTORS, get_selector
from vlens.stats import NeuronStats
from vlens.values import POLES
from vlens.values import dimension as dimension_of

DEFAULT_SIZES = (0.001, 0.005, 0.01, 0.02)


@dataclass
class CompareResult:
    """The tidy table of a comparison, the sets, their overlap and the selectors' cost."""

    table: pd.DataFrame
    overlap: pd.DataFrame  # dimension, pole, size, selector_a, selector_b, jaccard
    costs: pd.DataFrame  # selector, wall_s, forward_passes, backward_passes
    neuron_sets: dict[tuple[str, str, str, int], NeuronSet] = field(default_factory=dict)  # (selector, dim, pole, k)
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self, metric: str = "orientation") -> pd.DataFrame:
        """:func:`vlens.experiment.summarise`, with the mean directed delta of each target set and its fallback count."""
        s = summarise(self.table, metric)
        sets = [self.neuron_sets.get((r.selector, r.steered, r.direction, int(r.size))) for r in s.itertuples()]
        return s.assign(target_delta=[float(ns.delta.mean()) if ns and ns.delta is not None else math.nan for ns in sets],
                        n_fallback=[int(ns.params.get("n_fallback", 0)) if ns else 0 for ns in sets])  # fmt: skip

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        for name, df in (("compare", self.table), ("compare_summary", self.summary()), ("overlap", self.overlap),
                         ("costs", self.costs)):  # fmt: skip
            atomic_write(folder / f"{name}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))
        for (sel, dim, pole, k), ns in self.neuron_sets.items():
            ns.save(folder / "sets" / f"{sel}_{dim}_{'plus' if pole == '+' else 'minus'}_{k}")
        write_json(folder / "compare.json", self.meta)
        return folder


def set_sizes(stats: NeuronStats, sizes: Sequence[float | int]) -> list[int]:
    """Neuron counts: a float in (0, 1) is a fraction of the statistics' neurons, an int >= 1 a count."""
    n = len(stats.layers) * stats.d_mlp
    out = []
    for s in sizes:
        if isinstance(s, float) and 0 < s < 1:
            k = max(1, round(s * n))
        elif float(s) == int(s) and 1 <= int(s) <= n:
            k = int(s)
        else:
            raise ValueError(f"size {s!r}: give a fraction in (0, 1) or a count in 1..{n}")
        if k not in out:
            out.append(k)
    return out


def compare(
    model: Any, stats: NeuronStats | LocateResult, *, dimensions: Sequence[str] | None = None,
    sizes: Sequence[float | int] = DEFAULT_SIZES, selectors: Sequence[str] | Mapping[str, Selector] | None = None,
    instruments: Instruments | None = None, gammas: Sequence[float] = (1.0,), n_random: int = 10,
    random_match: str | None = "delta", data: ValueData | None = None, prompts: Sequence[Prompt] | None = None,
    dilemmas: Sequence[dict[str, Any]] | None = None, n_attribution_items: int = 16, probe_C: float = 1.0,
    keep_prob: float = 0.9, seed: int = 0, batch_size: int = 32, selector_batch_size: int = 8, progress: bool = True,
    scope: str = "answer",
) -> CompareResult:  # fmt: skip
    """Compare selectors on the same footing (see :mod:`vlens.selectors`).

    For every selector, dimension and size (:func:`set_sizes`) the ``+`` and ``-`` sets are
    built, and the paper's edit (``value_edit``, mode ``paper``, toward ``+`` and toward
    ``-``: the target pole's set boosted, the other clamped) is evaluated at every gamma,
    together with ``n_random`` random edits per dimension, direction, size and gamma, all
    in one :func:`vlens.experiment.run` (batched; data-parallel under torchrun), same Bernoulli seeds.
    Random controls and the ``random`` selector are layer-matched to the sets of
    ``random_match`` (a selector name, default the paper's ``delta``; ``"each"``: every
    selector gets its own controls; ``None``: uniform), excluding those sets' neurons.
    ``data`` is the run's value data (default: the shipped data): the default instruments, the
    probe's prompts (unless ``prompts`` are given) and the attribution dilemmas come from it.
    Attribution patching differentiates ``dilemmas`` (default: up to ``n_attribution_items``
    dilemmas of ``data`` per dimension that are *not* among the evaluation items; a warning
    when given ones are). ``scope`` is where the edits act (:func:`vlens.evaluate.evaluate_edits`).
    """
    stats = stats.stats if isinstance(stats, LocateResult) else stats
    info = model_info(model)
    shape = (info.n_layers, info.d_mlp)
    names = list(selectors) if selectors is not None else list(SELECTORS)
    funcs: dict[str, Selector] = dict(selectors) if isinstance(selectors, Mapping) else {}
    for name in names:
        funcs[name] = funcs.get(name) or get_selector(name)
    gammas = check_design(gammas, n_random)
    if random_match not in (None, "each") and random_match not in SELECTORS and random_match not in funcs:
        raise ValueError(f"random_match must be a selector name, 'each' or None, got {random_match!r}")
    ref_name = random_match if random_match not in (None, "each") else None
    if ref_name:  # its sets are built even when it is not compared: the random controls match them
        funcs[ref_name] = funcs.get(ref_name) or SELECTORS[ref_name]
    all_dims = list(dict.fromkeys(c.rsplit(":", 1)[0] for c in stats.classes))
    dims = [dimension_of(d).name for d in dimensions] if dimensions else all_dims
    if missing := [d for d in dims if d not in all_dims]:
        raise ValueError(f"no statistics for {missing} (have: {', '.join(all_dims)})")
    ks = set_sizes(stats, sizes)
    ctx = SelectorContext(stats, model, data, prompts, seed, selector_batch_size)
    instruments = instruments or Instruments.default(ctx.value_data(), max_dilemmas=20, max_portrait=38, max_neutral=8)
    if dilemmas is None and "attribution" in funcs:
        used = {d.get("id") for d in instruments.dilemmas}
        dilemmas = [d for dim in dims for d in [x for x in ctx.value_data().dilemmas
                    if x["dimension"] == dim and x.get("id") not in used][:n_attribution_items]]  # fmt: skip
    options = {"probe": ProbeOptions(C=probe_C), "attribution": AttributionOptions(dilemmas, held_out=instruments.dilemmas)}
    funcs |= {n: partial(SELECTORS[n], options=o) for n, o in options.items() if funcs.get(n) is SELECTORS[n]}  # built-ins only

    # 1. the sets: reference selector first (the random ones match it), random last
    sets: dict[tuple[str, str, str, int], NeuronSet] = {}

    def get(name: str, dim: str, pole: str, k: int) -> NeuronSet:
        if (name, dim, pole, k) not in sets:
            reference = get(ref_name, dim, pole, k) if name == "random" and ref_name else None
            sets[(name, dim, pole, k)] = run_selector(ctx, name, funcs[name], dim, pole, k, reference)
        return sets[(name, dim, pole, k)]

    for name in sorted(funcs, key=lambda n: (n != ref_name, n == "random")):
        for dim in dims:
            for k in ks:
                for pole in POLES:
                    get(name, dim, pole, k)
    for ns in sets.values():
        _check_set(shape, ns, model)

    # 2. the conditions: every selector's paper edit, then the random controls (one shared pool, or one per selector)
    pools = names if random_match == "each" else [ref_name or "uniform"]
    conditions = []
    for dim, k, direction, gamma in itertools.product(dims, ks, POLES, gammas):
        other = "-" if direction == "+" else "+"
        for name in names:
            conditions += steering_conditions(shape, sets[(name, dim, direction, k)], sets[(name, dim, other, k)], [gamma],
                                              selector=name, keep_prob=keep_prob, seed=seed)  # fmt: skip
        for pool in pools:
            like = names[0] if pool == "uniform" else pool  # a uniform draw takes only the labels of its sets
            draw = partial(_uniform_pair, stats, dim, direction, k) if pool == "uniform" else None
            conditions += steering_conditions(shape, sets[(like, dim, direction, k)], sets[(like, dim, other, k)], [gamma],
                                              modes=(), n_random=n_random, selector=pool, stats=stats, draw=draw,
                                              keep_prob=keep_prob, seed=seed)  # fmt: skip
    start = time.perf_counter()
    table = run(model, conditions, instruments, batch_size=batch_size, progress=progress, scope=scope)
    eval_s = time.perf_counter() - start

    overlap = pd.DataFrame(
        [{"dimension": dim, "pole": pole, "size": k, "selector_a": a, "selector_b": b,
          "jaccard": sets[(a, dim, pole, k)].jaccard(sets[(b, dim, pole, k)])}
         for dim in dims for pole in POLES for k in ks for a in names for b in names]
    )  # fmt: skip
    costs = pd.DataFrame([{"selector": name} | asdict(ctx.cost(name)) for name in names])
    meta = {
        "model": info.to_dict(), "vlens_version": vlens_version(), "provenance": provenance_of(stats), "dimensions": dims,
        "sizes": ks, "size_fractions": [k / (len(stats.layers) * stats.d_mlp) for k in ks], "selectors": names,
        "gammas": gammas, "n_random": n_random, "random_match": random_match, "keep_prob": keep_prob, "seed": seed,
        "scope": scope, "probe_C": probe_C, "n_conditions": len(conditions) + 1, "evaluation_wall_s": eval_s,
        "instrument_sizes": {k: len(v) for k, v in instruments.items().items()}, "instruments_sha256": sha256_json(vars(instruments)),
        "attribution_dilemmas": sorted(d.get("id", "") for d in dilemmas) if dilemmas is not None else None,
        "sets": {f"{s}|{d}|{p}|{k}": ns.params for (s, d, p, k), ns in sets.items() if s in names},
    }  # fmt: skip
    kept = {key: ns for key, ns in sets.items() if key[0] in names}
    return CompareResult(table, overlap, costs, kept, meta)


def _uniform_pair(stats: NeuronStats, dim: str, direction: str, k: int, *seeds: int) -> tuple[NeuronSet, NeuronSet]:
    """Random target and opposing sets of ``k`` neurons, uniform over the statistics' layers (``random_match=None``)."""
    other = "-" if direction == "+" else "+"
    return (random_selector(SelectorContext(stats, seed=seeds[0]), dim, direction, k),
            random_selector(SelectorContext(stats, seed=seeds[1]), dim, other, k))  # fmt: skip
