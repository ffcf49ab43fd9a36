"""compare: every selector's sets edited the same way, each at a dose matched on KL, against one random null per set size.

The design of :func:`vlens.validate.validate`, on the same core (:mod:`vlens.experiment`): every
family (each selector's value edit per dimension, size and direction; ``n_random`` random edits
per size; the steering-vector and dense-MLP controls per dimension and direction) is calibrated
to each KL target by one :func:`~vlens.experiment.dosed_conditions` call and evaluated in one
:func:`~vlens.experiment.run`, beside the prompted control. :meth:`CompareResult.summary` gives
one verdict per (selector, size, dimension, direction), each (selector, size) against the random
edits of its size (:func:`vlens.experiment.cells`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from vlens._io import atomic_write, sha256_json, vlens_version, write_json
from vlens.data import Prompt, ValueData
from vlens.evaluate import Instruments
from vlens.experiment import cells, shared_random_pairs, summarise
from vlens.interventions import _check_set
from vlens.locate import LocateResult
from vlens.models import model_info
from vlens.neurons import NeuronSet, provenance_of
from vlens.selectors.attribution import AttributionOptions
from vlens.selectors.base import Selector, SelectorContext, run_selector
from vlens.selectors.probe import ProbeOptions
from vlens.selectors.registry import SELECTORS, get_selector
from vlens.stats import NeuronStats
from vlens.validate import (
    CONTROLS,
    MAX_DOSE,
    _control_families,
    check_doses,
    check_null_and_controls,
    default_steering,
    evaluate_families,
    random_families,
    value_family,
)
from vlens.values import POLES
from vlens.values import dimension as dimension_of

DEFAULT_SIZES = (0.001, 0.005, 0.01, 0.02)


@dataclass
class CompareResult:
    """The tidy table of a comparison, the dose calibration, the sets, their overlap and the selectors' cost."""

    table: pd.DataFrame
    overlap: pd.DataFrame  # dimension, pole, size, selector_a, selector_b, jaccard
    costs: pd.DataFrame  # selector, wall_s, forward_passes, backward_passes
    neuron_sets: dict[tuple[str, str, str, int], NeuronSet] = field(default_factory=dict)  # (selector, dim, pole, k)
    meta: dict[str, Any] = field(default_factory=dict)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per family and KL target

    def summary(self, **kwargs: Any) -> pd.DataFrame:
        """The verdicts (:func:`vlens.experiment.cells`, keyword arguments passed on): one row per dose level,
        selector, size, dimension and direction, each (selector, size) against the random edits of its size;
        with the mean directed delta of each target set (``target_delta``) and its fallback count."""
        s = cells(self.table, **kwargs)
        if "selector" not in s:  # one selector and one size: cells leaves them out; a comparison always shows them
            edits = self.table[self.table.source == "value"]
            s = s.assign(selector=edits.selector.iloc[0], size=edits["size"].iloc[0])
        sets = [self.neuron_sets.get((r.selector, r.steered, r.direction, int(r.size))) for r in s.itertuples()]
        return s.assign(target_delta=[float(ns.delta.mean()) if ns and ns.delta is not None else math.nan for ns in sets],
                        n_fallback=[int(ns.params.get("n_fallback", 0)) if ns else 0 for ns in sets])  # fmt: skip

    def shifts(self, metric: str = "orientation") -> pd.DataFrame:
        """Per value edit, the change of ``metric`` beside the random edits of its size and dose
        (:func:`vlens.experiment.summarise`; the per-gamma view, for doses given by hand)."""
        return summarise(self.table, metric)

    def save(self, folder: str | os.PathLike) -> Path:
        """The table, its verdicts, the calibration, the overlap, the costs, the sets and the metadata."""
        folder = Path(folder)
        for name, df in (("compare", self.table), ("compare_summary", self.summary()), ("calibration", self.calibration),
                         ("overlap", self.overlap), ("costs", self.costs)):  # fmt: skip
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
    instruments: Instruments | None = None, kl_targets: Sequence[float] = (0.1,), gammas: Sequence[float] = (),
    n_random: int = 20, controls: Sequence[str] = CONTROLS, descriptions: Sequence[dict[str, Any]] | None = None,
    steering: Any = None, random_match: str | None = "delta", match_frequency: bool = False,
    max_dose: dict[str, float] | None = None, tol: float = 0.1, data: ValueData | None = None,
    prompts: Sequence[Prompt] | None = None, dilemmas: Sequence[dict[str, Any]] | None = None,
    n_attribution_items: int = 16, probe_C: float = 1.0, keep_prob: float = 0.9, seed: int = 0, batch_size: int = 32,
    selector_batch_size: int = 8, progress: bool = True, scope: str = "answer",
) -> CompareResult:  # fmt: skip
    """Compare selectors on the same footing (see :mod:`vlens.selectors` and the module docstring).

    For every selector, dimension and size (:func:`set_sizes`) the ``+`` and ``-`` sets are built;
    the paper's edit toward ``+`` and toward ``-`` (the target pole's set boosted, the other clamped)
    is one dose family, calibrated to each of ``kl_targets`` (nats/token on neutral text) and also
    run at each hand-given gamma in ``gammas``. The null of size k is ``n_random`` random edits
    (:func:`vlens.experiment.shared_random_pairs`) layer-matched to the union profile of the sets of
    size k of ``random_match`` (a selector name, default the paper's ``delta``; its sets are built
    even when it is not compared), outside them; ``None``: uniform over the statistics' layers. The
    ``random`` selector matches the same reference sets. ``controls`` (as in
    :func:`vlens.validate.validate`): the prompted control (``descriptions``, default the ``test``
    descriptions of ``data``), the steering vectors (``steering``, default from ``prompts``, else
    from ``data``) and the dense MLP edit, once per dimension and direction, at the same KL targets.

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
    kl_targets, gammas = check_doses(kl_targets, gammas)
    check_null_and_controls(n_random, controls)
    if random_match == "each":
        raise ValueError("random_match='each' is gone: a comparison has one shared null per set size; give a selector "
                         "name to match its layer profile (default 'delta') or None for uniform over layers")  # fmt: skip
    if random_match is not None and (random_match == "random" or random_match not in {*SELECTORS, *funcs}):
        raise ValueError(f"random_match must name a selector other than 'random' (e.g. 'delta') or be None (uniform over "
                         f"layers), got {random_match!r}")  # fmt: skip
    ref_name = random_match
    if ref_name:  # its sets are built even when it is not compared: the random edits match them
        funcs[ref_name] = funcs.get(ref_name) or SELECTORS[ref_name]
    all_dims = list(dict.fromkeys(c.rsplit(":", 1)[0] for c in stats.classes))
    dims = [dimension_of(d).name for d in dimensions] if dimensions else all_dims
    if missing := [d for d in dims if d not in all_dims]:
        raise ValueError(f"no statistics for {missing} (have: {', '.join(all_dims)})")
    ks = set_sizes(stats, sizes)
    ctx = SelectorContext(stats, model, data, prompts, seed, selector_batch_size)
    instruments = instruments or Instruments.default(ctx.value_data(), max_dilemmas=20, max_portrait=0, max_neutral=8)
    if not instruments.dilemmas:
        raise ValueError("a comparison needs dilemmas to measure orientation on; the instruments have none")
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

    # 2. the dose families: every selector's value edit, the null of each size, the controls once per cell
    families = [value_family(shape, sets[(name, dim, direction, k)], sets[(name, dim, _other(direction), k)], dim,
                             direction, selector=name, keep_prob=keep_prob, seed=seed)
                for name in names for dim in dims for k in ks for direction in POLES]  # fmt: skip
    pool = ref_name or "uniform"
    for k in ks:
        reference = [sets[(ref_name, dim, pole, k)] for dim in dims for pole in POLES] if ref_name else []
        template = None if ref_name else _uniform_template(stats, k, shape, dims[0])
        pairs = shared_random_pairs(reference, n_random, seed, stats=stats, match_frequency=match_frequency,
                                    template=template)  # fmt: skip
        families += random_families(shape, pairs, selector=pool, keep_prob=keep_prob, seed=seed)
    if "steering" in controls and steering is None:
        own = [p for p in prompts or () if p.dimension in dims] or None  # locate's own prompts, where given
        steering = default_steering(model, dims, data=ctx.value_data(), prompts=own, batch_size=batch_size)
    for dim in dims:
        for direction in POLES:
            families += _control_families(model, stats, steering, controls, dim, direction)
    max_dose = MAX_DOSE | (max_dose or {})
    start = time.perf_counter()
    table, calibration, prompted_meta, n_conditions = evaluate_families(
        model, families, instruments, kl_targets=kl_targets, gammas=gammas, max_dose=max_dose, tol=tol, controls=controls,
        descriptions=descriptions, data=ctx.data, seed=seed, batch_size=batch_size, progress=progress, scope=scope)  # fmt: skip
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
        "kl_targets": kl_targets, "gammas": gammas, "n_random": n_random, "random_match": random_match, "null": pool,
        "match_frequency": match_frequency, "controls": list(controls), "prompted": prompted_meta,
        "dilemma_variant": instruments.dilemma_variant, "max_dose": max_dose, "tol": tol, "keep_prob": keep_prob,
        "seed": seed, "scope": scope, "probe_C": probe_C, "n_conditions": n_conditions, "evaluation_wall_s": eval_s,
        "instrument_sizes": {k: len(v) for k, v in instruments.items().items()}, "instruments_sha256": sha256_json(vars(instruments)),
        "attribution_dilemmas": sorted(d.get("id", "") for d in dilemmas) if dilemmas is not None else None,
        "sets": {f"{s}|{d}|{p}|{k}": ns.params for (s, d, p, k), ns in sets.items() if s in names},
    }  # fmt: skip
    kept = {key: ns for key, ns in sets.items() if key[0] in names}
    result = CompareResult(table, overlap, costs, kept, meta, calibration)
    result.summary()  # a table that cannot be summarised fails here, not later in the report
    return result


def _other(pole: str) -> str:
    return "-" if pole == "+" else "+"


def _uniform_template(stats: NeuronStats, k: int, shape: tuple[int, int], dim: str) -> NeuronSet:
    """A template of ``k`` neurons spread evenly over the statistics' layers (the first ``k % L`` layers one
    more): the null of ``random_match=None``, uniform over layers. Only its counts per layer matter."""
    layers = torch.tensor(stats.layers)
    counts = torch.full((len(layers),), k // len(layers), dtype=torch.long)
    counts[: k % len(layers)] += 1
    per_layer = torch.repeat_interleave(layers, counts)
    neurons = torch.cat([torch.arange(int(c)) for c in counts])
    return NeuronSet(dim, "+", per_layer, neurons, torch.zeros(k), *shape, method="uniform", provenance=provenance_of(stats))
