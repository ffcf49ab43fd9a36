"""The experiment core: summarise by hand, the seed scheme, the data-parallel split, compare's random null per size."""

from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from vlens import distributed, experiment
from vlens.evaluate import Instruments
from vlens.experiment import TABLE_COLUMNS, Condition, random_seeds, steering_conditions, summarise
from vlens.interventions import Edit
from vlens.locate import locate
from vlens.neurons import NeuronSet, random_like
from vlens.selectors import compare
from vlens.significance import VERDICTS


def rows(source, values, *, selector="", mode="", size=None, gamma=None, seed=None, kl=0.0):
    labels = {"selector": selector, "steered": "A" if source != "none" else "", "direction": "-" if source != "none" else "",
              "source": source, "mode": mode, "size": size, "gamma": gamma, "seed": seed}  # fmt: skip
    out = [labels | {"metric": "orientation", "measured": m, "value": v} for m, v in values.items()]
    return out + [labels | {"metric": "kl", "measured": "", "value": kl}]


def test_summarise_by_hand():
    paper = dict(mode="paper", size=4, gamma=1.0)
    table = pd.DataFrame(
        rows("none", {"A": 0.5, "B": 0.4})
        + rows("value", {"A": 0.3, "B": 0.5, "C": 0.2}, selector="delta", kl=0.2, **paper)  # C: no baseline, no leakage
        + rows("value", {"A": 0.45, "B": 0.4}, selector="delta", mode="boost_only", size=4, gamma=1.0, kl=0.05)
        + rows("value", {"A": 0.1, "B": 0.1}, selector="lape", kl=0.4, **paper)
        + [r for s, (a, kl) in enumerate([(0.45, 0.1), (0.55, 0.2), (0.35, 0.3)])
           for r in rows("random", {"A": a, "B": 0.4}, selector="delta", seed=s, kl=kl, **paper)]
        + rows("random", {"A": 0.9, "B": 0.4}, selector="delta", mode="paper", size=8, gamma=1.0, seed=0),  # another size
        columns=TABLE_COLUMNS,
    )  # fmt: skip
    s = summarise(table).set_index(["selector", "mode"])
    # toward "-": shift = -(0.3 - 0.5) = 0.2; random shifts 0.05, -0.05, 0.15: mean 0.05, sd 0.1
    d = s.loc[("delta", "paper")]
    assert (d.baseline, d.edited, d["shift"], d.leakage, d.kl) == pytest.approx((0.5, 0.3, 0.2, 0.1, 0.2))
    assert (d.random_mean, d.random_sd, d.z, d.p, d.random_kl, d.n_random) == pytest.approx((0.05, 0.1, 1.5, 0.25, 0.2, 3))
    lape = s.loc[("lape", "paper")]  # no controls of its own: the shared pool of the same size and gamma
    assert (lape["shift"], lape.leakage, lape.z, lape.p) == pytest.approx((0.4, 0.3, 3.5, 0.25))
    boost = s.loc[("delta", "boost_only")]  # random controls are paper-mode edits: no comparison
    assert boost["shift"] == pytest.approx(0.05) and math.isnan(boost.z) and math.isnan(boost.p) and boost.n_random == 0
    assert (s.baseline_kl == 0).all() and (s.metric == "orientation").all()
    back = summarise(table.astype({"steered": object}).replace("", None))  # a CSV round trip turns "" into NaN
    pd.testing.assert_frame_equal(back, summarise(table))


def _set(pole: str, neurons: list[int]) -> NeuronSet:
    n = torch.tensor(neurons)
    return NeuronSet("Conservation", pole, torch.zeros_like(n), n, torch.ones(len(n)), 2, 16,
                     act_prob=torch.full((len(n),), 0.5), delta=torch.full((len(n),), 0.3))  # fmt: skip


def test_steering_conditions_keep_the_seed_scheme():
    target, opposing = _set("-", [0, 1, 2]), _set("+", [3, 4])
    drawn: list = []
    conds = steering_conditions((2, 16), target, opposing, [0.5, 1.0], modes=("clamp_only", "paper", "boost_only"),
                                n_random=2, seed=7, draw=lambda *s: drawn.append(s) or (target, opposing))  # fmt: skip
    labels = pd.DataFrame([c.labels() for c in conds])
    assert list(labels["mode"]) == ["clamp_only"] + ["paper", "boost_only", "paper", "paper"] * 2
    assert set(labels.selector) == {"delta"} and set(labels["size"]) == {3} and set(labels.direction) == {"-"}
    rs = 7 * 100_003 + 1  # validate's scheme: the target set and Bernoulli mask use rs, the opposing set rs + 50_000
    assert drawn == [random_seeds(7, 0), random_seeds(7, 1)] * 2 and random_seeds(7, 1) == (rs, rs + 50_000)
    assert (conds[-1].seed, conds[-1].edit.seed, conds[1].edit.seed) == (1, rs, 7)
    rt, ro = experiment.matched_pair(target, opposing, (rs, rs + 50_000))
    assert torch.equal(rt.mask(), random_like(target, rs, exclude=target.mask() | opposing.mask()).mask())
    assert torch.equal(ro.mask(), random_like(opposing, rs + 50_000, exclude=target.mask() | opposing.mask() | rt.mask()).mask())


def test_run_splits_the_conditions_over_ranks(monkeypatch):
    """A fake world of two ranks (threads): each evaluates the reference and every second condition; both get all."""
    conditions = [Condition("value", Edit.identity(1, 2), selector=f"c{j}") for j in range(1, 5)]
    local, parts, tables, barrier = threading.local(), [None, None], [None, None], threading.Barrier(2)

    def gather(obj):
        parts[local.rank] = obj
        barrier.wait()
        return list(parts)

    monkeypatch.setattr(experiment, "model_info", lambda model: SimpleNamespace(n_layers=1, d_mlp=2))
    monkeypatch.setattr(experiment, "evaluate_edits", lambda model, edits, inst, **kw: [{"kl": model} for _ in edits])
    monkeypatch.setattr(distributed, "gather_objects", gather)
    monkeypatch.setattr(distributed, "rank_world", lambda: (local.rank, 2))

    def rank(r):
        local.rank = r
        tables[r] = experiment.run(r, conditions, None)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert list(tables[0].selector) == ["", "c1", "c2", "c3", "c4"]
    assert list(tables[0].value) == [0, 1, 0, 1, 0]  # the rank that evaluated each condition
    assert [[j for j, _ in part] for part in parts] == [[0, 2, 4], [0, 1, 3]]  # both evaluate the reference (KL)


def test_compare_pools_of_random_controls(tiny_llama, small_data, monkeypatch):
    """compare's null per size: matched to the reference selector's sets of that size, or uniform over layers (None);
    "each" (a pool per selector) is gone. The validate schema and verdicts."""
    import importlib

    from vlens.experiment import shared_random_pairs, union_profile

    compare_module = importlib.import_module("vlens.selectors.compare")  # the module, not the function of that name

    located = locate(tiny_llama, small_data, selection="top_k:8", progress=False)
    # per-token means: a summed option log-prob of a random tiny model saturates the orientation (sigmoid) at 0 or 1
    inst = Instruments.default(max_dilemmas=1, max_portrait=0, max_neutral=1, dilemma_variant="cloze-mean")
    drawn: list = []
    monkeypatch.setattr(compare_module, "shared_random_pairs", lambda sets, *a, **kw: drawn.append(
        (sets, kw["template"], shared_random_pairs(sets, *a, **kw))) or drawn[-1][2])  # fmt: skip
    for match, pool in (("delta", "delta"), (None, "uniform")):
        drawn.clear()
        result = compare(tiny_llama, located, dimensions=["co"], sizes=(7,), selectors=["delta", "mean_diff"], gammas=[1.0],
                         kl_targets=[], instruments=inst, n_random=2, controls=(), random_match=match, progress=False)  # fmt: skip
        t = result.table
        assert list(t.columns) == TABLE_COLUMNS and set(t[t.source == "random"].selector) == {pool}
        s = result.summary()
        assert len(s) == 4 and (s.n_null == 2).all() and s.z.notna().all() and set(s.steered) == {"Conservation"}
        assert set(s.verdict) <= set(VERDICTS) and set(s.selector) == {"delta", "mean_diff"}
        [(sets, template, pairs)] = drawn  # one size: one null
        counts = [boost.counts_per_layer() for boost, _ in pairs]
        if match:  # the union profile of delta's sets of size 7 (both poles), outside them
            assert {(ns.method, len(ns)) for ns in sets} == {("delta", 7)} and template is None
            assert all(torch.equal(c, union_profile(sets).counts_per_layer()) for c in counts)
            excluded = torch.stack([ns.mask() for ns in sets]).any(0)
            assert not any(((b.mask() | c.mask()) & excluded).any() for b, c in pairs)
        else:  # uniform: 7 neurons over 3 layers
            assert sets == [] and all(c.tolist() == [3, 2, 2] for c in counts)
    with pytest.raises(ValueError, match="random_match='each' is gone"):
        compare(tiny_llama, located, dimensions=["co"], sizes=(7,), selectors=["delta"], instruments=inst, random_match="each",
                progress=False)  # fmt: skip
