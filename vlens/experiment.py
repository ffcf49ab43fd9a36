"""The experiment core of :func:`vlens.validate.validate` and :func:`vlens.selectors.compare`.

:func:`run` evaluates a list of :class:`Condition` (an edit and its labels) after the unedited
reference, batched and data-parallel over torch.distributed ranks, into one tidy table (one row
per condition, metric and measured dimension; :data:`TABLE_COLUMNS`, "" or NaN where a label
does not apply); :func:`summarise` compares every value edit with its random controls. A new
condition kind is a ``source`` label and a function that builds its conditions, like
:func:`steering_conditions` (value edits and random controls).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from vlens import distributed
from vlens.evaluate import Instruments, evaluate_edits, metric_rows
from vlens.interventions import Edit, value_edit
from vlens.models import model_info
from vlens.neurons import NeuronSet, random_like
from vlens.stats import NeuronStats

CONDITION_KEYS = ["selector", "steered", "direction", "source", "mode", "size", "gamma", "seed", "target_kl"]
TABLE_COLUMNS = [*CONDITION_KEYS, "metric", "measured", "value"]
SUMMARY_KEYS = ["selector", "steered", "direction", "mode", "size", "gamma"]
Draw = Callable[[int, int], tuple[NeuronSet, NeuronSet]]


@dataclass(frozen=True, eq=False)
class Condition:
    """One evaluated model: the edit that makes it and its labels in the table."""

    source: str  # "none" (the unedited reference), "value" (a selector's sets), "random" (a size-matched control)
    edit: Edit
    selector: str = ""
    steered: str = ""
    direction: str = ""
    mode: str = ""
    size: int | None = None
    gamma: float | None = None
    seed: int | None = None  # the random control's index r (see random_seeds)
    target_kl: float | None = None  # the KL (nats/token on neutral text) the dose ``gamma`` was calibrated to

    def labels(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in CONDITION_KEYS}


def check_design(gammas: Sequence[float], n_random: int) -> list[float]:
    """The gammas as floats, or one clear error for a design that cannot be summarised."""
    if not gammas or not all(math.isfinite(g) for g in map(float, gammas)):
        raise ValueError(f"gamma values must be finite numbers, got {list(gammas)}")
    if n_random < 2:
        raise ValueError(f"n_random must be at least 2 (a z-score needs a spread), got {n_random}")
    return [float(g) for g in gammas]


def random_seeds(seed: int, r: int) -> tuple[int, int]:
    """Seeds of random control ``r``: its target-pole set (and Bernoulli mask), its opposing set."""
    rs = seed * 100_003 + r
    return rs, rs + 50_000


def matched_pair(
    target: NeuronSet, opposing: NeuronSet, seeds: tuple[int, int], *, stats: NeuronStats | None = None,
    match_frequency: bool = False,
) -> tuple[NeuronSet, NeuronSet]:  # fmt: skip
    """Random sets with the counts per layer of ``target`` and ``opposing``: outside both, and disjoint."""
    value_mask = target.mask() | opposing.mask()
    rt = random_like(target, seeds[0], stats=stats, exclude=value_mask, match_frequency=match_frequency)
    ro = random_like(opposing, seeds[1], stats=stats, exclude=value_mask | rt.mask(), match_frequency=match_frequency)
    return rt, ro


def steering_conditions(
    shape: tuple[int, int], target: NeuronSet, opposing: NeuronSet, gammas: Sequence[float], *,
    modes: Sequence[str] = ("paper",), n_random: int = 0, selector: str | None = None, stats: NeuronStats | None = None,
    match_frequency: bool = False, draw: Draw | None = None, keep_prob: float = 0.9, seed: int = 0,
) -> list[Condition]:  # fmt: skip
    """Steering toward ``target``'s pole (its set boosted, ``opposing`` clamped): the value edits in
    ``modes`` (clamp_only, gamma-free, once at gamma 0), then per gamma those of the other modes and
    ``n_random`` paper-mode random controls, drawn by ``draw(*random_seeds(seed, r))`` (default:
    :func:`matched_pair`). Value edits use the Bernoulli seed ``seed``, random control r its own."""
    labels = {"selector": selector or target.method, "steered": target.dimension, "direction": target.pole,
              "size": len(target)}  # fmt: skip
    draw = draw or (lambda *s: matched_pair(target, opposing, s, stats=stats, match_frequency=match_frequency))

    def edit(t: NeuronSet, o: NeuronSet, gamma: float, mode: str, s: int) -> Edit:
        return value_edit(shape, t, o, gamma, mode=mode, keep_prob=keep_prob, seed=s)

    out = []
    if "clamp_only" in modes:
        out.append(Condition("value", edit(target, opposing, 0.0, "clamp_only", seed), mode="clamp_only", gamma=0.0,
                             **labels))  # fmt: skip
    for gamma in gammas:
        out += [Condition("value", edit(target, opposing, gamma, mode, seed), mode=mode, gamma=gamma, **labels)
                for mode in modes if mode != "clamp_only"]  # fmt: skip
        for r in range(n_random):
            seeds = random_seeds(seed, r)
            out.append(Condition("random", edit(*draw(*seeds), gamma, "paper", seeds[0]), mode="paper", gamma=gamma,
                                 seed=r, **labels))  # fmt: skip
    return out


def run(model: Any, conditions: Sequence[Condition], instruments: Instruments, *, batch_size: int = 32,
        progress: bool = True, scope: str = "answer") -> pd.DataFrame:  # fmt: skip
    """The tidy table of the unedited model (the KL reference, evaluated first) and ``conditions``.

    ``scope`` is where the edits act (:func:`vlens.evaluate.evaluate_edits`): ``"answer"`` (the
    last prompt token and the answer) or ``"all"`` (every token).

    Over the N ranks of a torch.distributed group, every rank evaluates the reference and every
    N-th condition, and every rank gets the whole table, in the order of ``conditions``.
    """
    info = model_info(model)
    conditions = [Condition("none", Edit.identity(info.n_layers, info.d_mlp, label="unedited")), *conditions]
    rank, world = distributed.rank_world()
    mine = [j for j in range(len(conditions)) if j == 0 or j % world == rank]
    local = evaluate_edits(model, [conditions[j].edit for j in mine], instruments, batch_size=batch_size, progress=progress, scope=scope)
    part = list(zip(mine, local, strict=True))
    metrics: dict[int, dict[str, Any]] = {}
    for each in distributed.gather_objects(part) if world > 1 else [part]:
        for j, m in each:
            metrics.setdefault(j, m)  # the reference: rank 0's
    rows = [row for j, c in enumerate(conditions) for row in metric_rows(c.labels(), metrics[j])]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def table_of(result: Any) -> pd.DataFrame:
    """The tidy table of a ValidationResult, a CompareResult or the table itself, normalised: a CSV
    round trip's NaN strings back to "", numbers as numbers, ``selector`` and ``size`` added if absent."""
    table = getattr(result, "table", result)
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"expected a ValidationResult, a CompareResult or their table, got {type(result).__name__}")
    if missing := [c for c in TABLE_COLUMNS if c not in table.columns and c not in ("selector", "size", "target_kl")]:
        raise ValueError(f"not an experiment table: missing column(s) {', '.join(missing)}")
    if table.empty:
        raise ValueError("the experiment table is empty")
    t = table.copy()
    for c in ("selector", "steered", "direction", "source", "mode", "metric", "measured"):
        t[c] = t[c].fillna("").astype(str) if c in t else ""
    for c in ("size", "gamma", "seed", "value", "target_kl"):
        t[c] = pd.to_numeric(t[c], errors="coerce") if c in t else math.nan
    return t


def per_condition(result: Any, metric: str = "orientation", cost: str = "kl") -> pd.DataFrame:
    """One row per edited condition: its labels, the steered dimension's ``metric`` unedited
    (``baseline``) and ``edited``, the ``shift`` signed toward the steering direction, ``leakage``
    (mean absolute change of the other measured dimensions) and ``cost`` (the model-wide metric)."""
    t = expand_shared(table_of(result))
    t["condition"] = t.groupby(CONDITION_KEYS, dropna=False, sort=False).ngroup()
    base = t[(t.source == "none") & (t.metric == metric)].groupby("measured")["value"].mean()
    m = t[(t.source != "none") & (t.metric == metric)]
    own = m.measured == m.steered
    out = m[own].drop(columns=["metric", "measured"]).rename(columns={"value": "edited"}).set_index("condition")
    out["baseline"] = out.steered.map(base).astype(float)
    out["shift"] = np.where(out.direction == "-", -1.0, 1.0) * (out.edited - out.baseline)
    out["leakage"] = (m.value - m.measured.map(base))[~own].abs().groupby(m.condition[~own]).mean()
    out["cost"] = t[t.metric == cost].groupby("condition")["value"].first()
    return out.reset_index(drop=True)


def expand_shared(t: pd.DataFrame) -> pd.DataFrame:
    """Shared random edits (no steered dimension) as the control of every value cell: one copy per
    (steered, direction, size) of the value edits, so per-cell views compare like with like."""
    shared = t[(t.source == "random") & (t.steered == "")]
    if shared.empty:
        return t
    cells = t[t.source == "value"][["steered", "direction", "size"]].drop_duplicates()
    by_size = shared["size"].nunique() > 1  # a comparison's null per set size (as in cells); else one null for all
    copies = [(shared[shared["size"] == c.size] if by_size else shared).assign(steered=c.steered, direction=c.direction,
                                                                               size=c.size) for c in cells.itertuples()]  # fmt: skip
    return pd.concat([t[~t.index.isin(shared.index)], *copies], ignore_index=True)


def controls(randoms: pd.DataFrame, selector: str) -> pd.DataFrame:
    """The random controls of ``selector``'s edits: those drawn for it, else all (a shared pool)."""
    own = randoms[randoms.selector == selector]
    return own if len(own) else randoms


def summarise(result: Any, metric: str = "orientation") -> pd.DataFrame:
    """One row per value edit (:data:`SUMMARY_KEYS`): ``shift`` is the change of the steered dimension's
    ``metric`` (``baseline`` -> ``edited``) signed toward the steering direction. Paper-mode edits are
    compared with the random controls of the same steered dimension, direction, size and gamma:
    ``random_mean`` / ``random_sd`` of their shifts, ``z``, the empirical one-sided ``p = (1 + #random
    >= shift) / (1 + n_random)``, ``kl`` (the cost) beside ``random_kl``; ``leakage`` is the mean
    absolute shift of the other dimensions."""
    t = table_of(result)
    c = per_condition(t, metric)
    c["level"] = c.target_kl.where(c.target_kl.notna(), c.gamma)  # calibrated edits pair by target KL
    group = c[["steered", "direction", "size", "level"]].map(str).agg("|".join, axis=1)
    randoms = c[c.source == "random"].assign(group=group)
    out = []
    for i, v in c[c.source == "value"].iterrows():
        rnd = controls(randoms[randoms.group == group[i]], v.selector) if v["mode"] == "paper" else randoms.iloc[:0]
        mean, sd = rnd["shift"].mean(), rnd["shift"].std(ddof=1)
        out.append({k: v[k] for k in SUMMARY_KEYS} | {
            "metric": metric, "baseline": v.baseline, "edited": v.edited, "shift": v["shift"], "random_mean": mean,
            "random_sd": sd, "z": (v["shift"] - mean) / sd if sd > 0 else math.nan,
            "p": (1 + int((rnd["shift"] >= v["shift"]).sum())) / (1 + len(rnd)) if len(rnd) else math.nan,
            "kl": v.cost, "random_kl": rnd.cost.mean(), "leakage": v.leakage, "n_random": len(rnd),
        })  # fmt: skip
    df = pd.DataFrame(out)
    if len(df):
        df["baseline_kl"] = t[(t.source == "none") & (t.metric == "kl")]["value"].mean()
    return df



# ----------------------------------------------------------------------------- matched cost, shared null


@dataclass(frozen=True, eq=False)
class Family:
    """An edit whose dose is free (gamma of a neuron edit, the scale of a control): it is either
    calibrated to a target KL on neutral text or given by hand. ``make(dose)`` builds the edit."""

    source: str  # "value", "random" (the shared null), "steering" or "dense" (the positive controls)
    make: Callable[[float], Edit]
    steered: str = ""
    direction: str = ""
    seed: int | None = None
    size: int | None = None
    selector: str = ""
    mode: str = "paper"

    @property
    def key(self) -> tuple:
        return (self.source, self.selector, self.size, self.steered, self.direction, self.seed)

    def condition(self, dose: float, target_kl: float | None = None) -> Condition:
        return Condition(self.source, self.make(dose), selector=self.selector, steered=self.steered,
                         direction=self.direction, mode=self.mode, size=self.size, gamma=dose, seed=self.seed,
                         target_kl=target_kl)  # fmt: skip


def union_profile(sets: Sequence[NeuronSet]) -> NeuronSet:
    """A template with the layer profile of the union of ``sets`` and their mean size (largest remainder
    rounding): random edits drawn like it are matched to the value sets as a whole, so one null serves
    every dimension and direction."""
    if not sets:
        raise ValueError("union_profile needs at least one neuron set")
    union = torch.stack([ns.mask() for ns in sets]).any(0)
    per_layer = union.sum(-1).double()
    size = round(sum(len(ns) for ns in sets) / len(sets))
    want = per_layer * size / per_layer.sum().clamp(min=1)
    counts = want.floor().long()
    rest = size - int(counts.sum())
    counts[torch.argsort(want - counts, descending=True)[:rest]] += 1
    layers = torch.repeat_interleave(torch.arange(len(counts)), counts)
    neurons = torch.cat([torch.arange(int(c)) for c in counts]) if len(layers) else layers
    first = sets[0]
    return NeuronSet(first.dimension, "+", layers, neurons, torch.zeros(len(layers)), first.n_layers, first.d_mlp,
                     method="union_profile", provenance=dict(first.provenance))  # fmt: skip


def shared_random_pairs(
    sets: Sequence[NeuronSet], n_random: int, seed: int, *, stats: NeuronStats, match_frequency: bool = False,
    template: NeuronSet | None = None,
) -> list[tuple[NeuronSet, NeuronSet]]:  # fmt: skip
    """``n_random`` (boosted, clamped) pairs of random sets, each layer-matched to the union profile of
    ``sets`` (or to ``template``, e.g. one uniform over layers) and outside all of ``sets``, the two of a
    pair disjoint. A random neuron's ``v`` is its activation probability averaged over every pole, so the
    null belongs to no dimension."""
    template = union_profile(sets) if template is None else template
    excluded = torch.zeros(template.n_layers, template.d_mlp, dtype=torch.bool)
    if sets:
        excluded = torch.stack([ns.mask() for ns in sets]).any(0)
    prob = torch.zeros(template.n_layers, template.d_mlp)
    prob[torch.tensor(stats.layers)] = stats.activation_probability().mean(0).float().cpu()
    pairs = []
    for r in range(n_random):
        s_boost, s_clamp = random_seeds(seed, r)
        boost = random_like(template, s_boost, stats=stats, exclude=excluded, match_frequency=match_frequency)
        clamp = random_like(template, s_clamp, stats=stats, exclude=excluded | boost.mask(), match_frequency=match_frequency)
        boost.act_prob = prob[boost.layers, boost.neurons]
        boost.delta = torch.ones(len(boost))  # a random neuron has no contrast: full weight, sigmoid(10*(1-0.15))
        pairs.append((boost, clamp))
    return pairs


def dosed_conditions(
    model: Any, families: Sequence[Family], instruments: Instruments, *, kl_targets: Sequence[float] = (),
    gammas: Sequence[float] = (), max_dose: dict[str, float], tol: float = 0.1, batch_size: int = 32,
    progress: bool = False,
) -> tuple[list[Condition], pd.DataFrame]:  # fmt: skip
    """The conditions of every family at every dose: neuron edits (value and random) at each hand-given
    gamma, and every family at the dose whose KL on ``instruments``' neutral text reaches each target
    (:func:`vlens.calibrate.calibrate`, one batched pass per bisection step over all families; the dose
    search of each source is bounded by ``max_dose[source]``). Also returns the calibration table."""
    from vlens.calibrate import calibrate
    from vlens.instruments import NeutralText

    conditions = [f.condition(g) for g in gammas for f in families if f.source in ("value", "random")]
    rows = []
    if kl_targets:
        if not instruments.neutral_text:
            raise ValueError("matching edits on KL needs neutral text; give neutral_text items (or doses by hand: gammas)")
        neutral = NeutralText(instruments.neutral_text)
        by_key = {f.key: f for f in families}
        for source in dict.fromkeys(f.source for f in families):
            if source not in max_dose:
                raise ValueError(f"no largest dose for {source} edits; give max_dose[{source!r}]")
            targets = {(f.key, float(t)): float(t) for f in families if f.source == source for t in kl_targets}
            cal = calibrate(model, lambda fam, dose: by_key[fam[0]].make(dose), targets, neutral, high=max_dose[source],
                            tol=tol, batch_size=batch_size, progress=progress, desc=f"match {source} edits on KL")  # fmt: skip
            for (key, target), dose in cal.doses.items():
                conditions.append(by_key[key].condition(dose, target))
                rows.append(dict(zip(("source", "selector", "size", "steered", "direction", "seed"), key, strict=True))
                            | {"target_kl": target, "dose": dose, "kl": cal.kls[(key, target)], "passes": cal.passes})  # fmt: skip
    return conditions, pd.DataFrame(rows)


def prompted_conditions(
    model: Any, instruments: Instruments, descriptions: Sequence[dict[str, Any]], *, directions: Sequence[str] = ("+", "-"),
    seed: int = 0, batch_size: int = 32,
) -> pd.DataFrame:  # fmt: skip
    """The prompted control as tidy rows: the unedited model on the same dilemmas, each preceded by a
    value description of its own dimension (a ``+`` one for direction ``+``, a ``-`` one for ``-``),
    read with the same variant. Its shift is what the neurons are supposed to carry, induced directly."""
    from vlens.instruments import Dilemmas, personas

    if not instruments.dilemmas:
        raise ValueError("the prompted control needs dilemmas")
    info = model_info(model)
    identity = Edit.identity(info.n_layers, info.d_mlp, label="unedited")
    rows = []
    for direction in directions:
        stated = personas(instruments.dilemmas, descriptions, direction, seed=seed)
        inst = Dilemmas(instruments.dilemmas, variant=instruments.dilemma_variant, personas=stated)
        metrics = evaluate_edits(model, [identity], [inst], batch_size=batch_size)[0]
        rows += metric_rows(Condition("prompted", identity, direction=direction).labels(), metrics)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def instrument_sensitivity(
    model: Any, dilemmas: Sequence[dict[str, Any]], descriptions: Sequence[dict[str, Any]], *,
    variants: Sequence[str] | None = None, persona_slot: str = "system", seed: int = 0, batch_size: int = 32,
) -> pd.DataFrame:  # fmt: skip
    """How well each dilemma formulation sees a stated value: the prompted control's paired shift and
    z over items, per variant, dimension (and ``"all"``: every item) and direction (rows), all variants
    read from the same three passes (no description, a ``+`` one, a ``-`` one). Run it on the ``dev``
    dilemmas to choose the default instrument; ``min_z`` (the weaker direction's z, per variant and
    dimension) of the ``"all"`` rows is the criterion."""
    from vlens.instruments import Dilemmas, personas
    from vlens.instruments.dilemmas import ALL_VARIANTS
    from vlens.significance import paired_z

    names = [v.name for v in ALL_VARIANTS] if variants is None else list(variants)
    info = model_info(model)
    identity = Edit.identity(info.n_layers, info.d_mlp)
    scores = {}
    for pole in (None, "+", "-"):
        stated = None if pole is None else personas(dilemmas, descriptions, pole, seed=seed)
        inst = Dilemmas(dilemmas, variant=names[0], variants=names, personas=stated, persona_slot=persona_slot)
        metrics = evaluate_edits(model, [identity], [inst], batch_size=batch_size)[0]
        scores[pole] = {n: np.array(list(metrics["logodds" if n == names[0] else f"logodds[{n}]"].values())) for n in names}
    dims = np.array([d["dimension"] for d in dilemmas])
    rows = []
    for name in names:
        for pole, sign in (("+", 1.0), ("-", -1.0)):
            diff = sign * (scores[pole][name] - scores[None][name])
            for dim in [*dict.fromkeys(dims), "all"]:  # "all": every item, the criterion of the choice
                d = diff if dim == "all" else diff[dims == dim]
                rows.append({"variant": name, "dimension": dim, "direction": pole, "n": len(d), "shift": float(d.mean()),
                             "z": paired_z(d)})  # fmt: skip
    out = pd.DataFrame(rows)
    out["min_z"] = out.groupby(["variant", "dimension"]).z.transform("min")
    return out


def item_logodds(result: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From a tidy table: the per-item log-odds of the ``+`` option (rows: conditions, columns: items
    named ``<dimension>/<item id>``) and the conditions' labels (one row each, same index)."""
    t = table_of(result)
    t["condition"] = t.groupby(CONDITION_KEYS, dropna=False, sort=False).ngroup()
    labels = t.drop_duplicates("condition").set_index("condition")[CONDITION_KEYS]
    x = t[t.metric == "logodds"].pivot_table(index="condition", columns="measured", values="value", aggfunc="first")
    if x.empty:
        raise ValueError("the table has no per-item log-odds (metric 'logodds'): evaluate with the dilemma instrument")
    cost = t[t.metric == "kl"].groupby("condition")["value"].first()
    return x, labels.assign(kl=cost.reindex(labels.index))


def item_changes(result: Any) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Every condition's per-item change of the log-odds from the unedited model (as
    :func:`item_logodds`), the conditions' labels, and each item column's dimension."""
    x, labels = item_logodds(result)
    dim_of = pd.Series([c.split("/", 1)[0] for c in x.columns], index=x.columns)
    return x - x.loc[labels.index[labels.source == "none"][0]], labels, dim_of


def cells(result: Any, *, alpha: float = 0.05, p: str = "t", confidence: float = 0.95) -> pd.DataFrame:
    """The verdict table: one row per dose level (a target KL, or a hand-given gamma) and (steered
    dimension, direction) cell of the value edits.

    For cell (d, s), with ``s`` = +1 for ``+`` and -1 for ``-``, and items i of dimension d:
    ``effect`` = mean over i of ``s * (x_edit[i] - x_unedited[i])``, the shift of the log-odds of the
    ``+`` option toward the steering direction (``ci_low``/``ci_high``: a bootstrap interval over
    items). The null is every random edit of the same level measured on the same items with the same
    sign: one shared null, sign-flipped for ``-``. ``prompted_shift`` / ``prompted_z``: the prompted
    control's paired shift and z over items; a cell whose prompted z is below
    :data:`vlens.significance.PROMPTED_Z_MIN` is ``blind``. Controls (``steering_*``, ``dense_*``)
    are compared with the same null; ``*_fraction`` = shift / prompted shift. ``items_for_power``: the
    dilemmas per dimension at which the observed mean shift and per-item spread would give a paired
    p < 0.05 (two-sided) with 80% power (:func:`vlens.significance.items_needed` with
    :func:`vlens.significance.power_z`). Verdicts and Holm's correction
    (:func:`vlens.significance.verdicts`) run over the cells of one level; ``p="t"`` by
    default because with 20 random edits no empirical p can survive Holm over 8 cells (min 8/21).
    """
    from vlens.significance import verdicts

    diff, labels, dim_of = item_changes(result)
    sign = lambda direction: -1.0 if direction == "-" else 1.0  # noqa: E731

    def shift(cond: Any, dim: str, direction: str) -> pd.Series:
        return sign(direction) * diff.loc[cond, dim_of.index[dim_of == dim]].dropna()

    prompted = {lab.direction: c for c, lab in labels[labels.source == "prompted"].iterrows()}
    labels = labels.assign(level=np.where(labels.target_kl.notna(), "kl", "gamma"),
                           at=labels.target_kl.where(labels.target_kl.notna(), labels.gamma))  # fmt: skip
    # A validation has one selector and one null (the random edits share the value sets' mean size). A
    # comparison (vlens.selectors.compare) has several selectors and set sizes, and one null per size: each
    # (selector, size) is then its own verdict family (Holm), judged against the random edits of its size.
    edits = labels[labels.source == "value"]
    by_size = labels[labels.source == "random"]["size"].nunique() > 1
    keyed = by_size or edits.selector.nunique() > 1
    out = []
    for (level, at), group in labels[labels.source.isin(["value", "random", "steering", "dense"])].groupby(["level", "at"]):
        randoms = group[group.source == "random"]
        for (selector, size), values in group[group.source == "value"].groupby(["selector", "size"], dropna=False, sort=False):
            null = randoms[randoms["size"] == size] if by_size else randoms
            if len(null) < 2:
                raise ValueError(f"level {level}={at:g} has {len(null)} random edits{f' of size {size}' if by_size else ''}; "
                                 "a null needs at least 2")  # fmt: skip
            rows = [_cell_row(level, at, c, v, null, group, prompted, shift) for c, v in values.iterrows()]
            table = verdicts(pd.DataFrame(rows), alpha=alpha, p=p, confidence=confidence)
            out.append(table.assign(selector=selector, size=size) if keyed else table)
    if not out:
        raise ValueError("no value edits in the table: nothing to give a verdict on")
    return pd.concat(out, ignore_index=True).drop(columns=["diffs", "null"])


def _cell_row(level: str, at: float, c: Any, v: Any, randoms: pd.DataFrame, group: pd.DataFrame, prompted: dict,
              shift: Callable[[Any, str, str], pd.Series]) -> dict[str, Any]:  # fmt: skip
    """One cell of :func:`cells`: value edit ``c`` (labels ``v``) against ``randoms``, with the controls of ``group``."""
    from vlens.significance import instrument_sees, items_needed, null_test, paired_z, power_z

    d, direction = v.steered, v.direction
    diffs = shift(c, d, direction)
    null = [shift(r, d, direction).mean() for r in randoms.index]
    row = {"level": level, "at": at, "steered": d, "direction": direction, "gamma": v.gamma, "effect": diffs.mean(),
           "diffs": diffs.to_numpy(), "null": null, "kl": v.kl, "random_kl": randoms.kl.mean()}  # fmt: skip
    # dilemmas per dimension at which this mean shift, with this per-item spread, would give a paired
    # p < 0.05 (two-sided: its 95% interval excludes 0) with 80% power (the report's sample-size note)
    row["items_for_power"] = (items_needed(diffs.to_numpy(), z_target=power_z()).items_for_paired_z
                              if len(diffs) >= 2 else math.nan)  # fmt: skip
    if direction in prompted:
        pd_ = shift(prompted[direction], d, direction)
        row |= {"prompted_shift": pd_.mean(), "prompted_z": paired_z(pd_.to_numpy())}
        row["blind"] = not instrument_sees(row["prompted_z"])
        row["fraction_of_prompted"] = row["effect"] / row["prompted_shift"] if row["prompted_shift"] else math.nan
    for source in ("steering", "dense"):
        ctl = group[(group.source == source) & (group.steered == d) & (group.direction == direction)]
        if len(ctl):
            eff = shift(ctl.index[0], d, direction).mean()
            row |= {f"{source}_shift": eff, f"{source}_kl": ctl.kl.iloc[0],
                    f"{source}_z": null_test(eff, null).z if len(null) >= 2 else math.nan}  # fmt: skip
            if "prompted_shift" in row:
                row[f"{source}_fraction"] = eff / row["prompted_shift"] if row["prompted_shift"] else math.nan
    return row


def circumplex_changes(result: Any) -> pd.DataFrame:
    """The mean per-item log-odds change of every value edit on every measured dimension (columns
    ``level``, ``at``, ``steered``, ``direction``, ``measured``, ``change``), for
    :func:`vlens.significance.circumplex`."""
    diff, labels, dim_of = item_changes(result)
    rows = []
    for c, v in labels[labels.source == "value"].iterrows():
        at = v.target_kl if pd.notna(v.target_kl) else v.gamma
        for dim in dict.fromkeys(dim_of):
            cols = dim_of.index[dim_of == dim]
            rows.append({"level": "kl" if pd.notna(v.target_kl) else "gamma", "at": at, "steered": v.steered,
                         "direction": v.direction, "measured": dim, "change": float(diff.loc[c, cols].mean())})  # fmt: skip
    return pd.DataFrame(rows)

__all__ = ["CONDITION_KEYS", "SUMMARY_KEYS", "TABLE_COLUMNS", "Condition", "Family", "cells", "check_design", "circumplex_changes",
           "controls", "dosed_conditions", "expand_shared", "instrument_sensitivity", "item_changes", "item_logodds", "matched_pair", "prompted_conditions", "shared_random_pairs", "union_profile",
           "per_condition", "random_seeds", "run", "steering_conditions", "summarise", "table_of"]  # fmt: skip
