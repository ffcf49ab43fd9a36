"""Neuron selectors against hand computations, attribution patching against real patching, and compare()."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import vlens
from vlens.data import build_prompts
from vlens.evaluate import Instruments, build_sequences
from vlens.experiment import item_changes
from vlens.locate import locate
from vlens.neurons import provenance_of
from vlens.report import selector_verdicts
from vlens.selectors import (
    SELECTORS,
    TABLE_COLUMNS,
    AttributionOptions,
    LapeOptions,
    ProbeOptions,
    SelectorContext,
    attribution_scores,
    compare,
    lape_scores,
    pooled_features,
    probe_scores,
    select_neurons,
    set_sizes,
)
from vlens.significance import VERDICTS
from vlens.stats import NeuronStats
from vlens.viz import compare_figures

# Short forced-choice items: the tiny models' tokenizer has one token per byte.
DILEMMAS = [
    {"id": "t.fc.1", "dimension": "Conservation", "context": "Keep or change the plan?", "option_plus": "Keep it.",
     "option_minus": "Change it now."},
    {"id": "t.fc.2", "dimension": "Conservation", "context": "Old route or new one?", "option_plus": "The old route.",
     "option_minus": "A new one."},
]  # fmt: skip


@pytest.fixture(scope="module")
def prompts(tiny_llama, small_data):
    return build_prompts(small_data, tiny_llama, pairs_per_question=2)


@pytest.fixture(scope="module")
def located(tiny_llama, prompts):
    return locate(tiny_llama, prompts, dimensions=["Conservation"], selection="top_k:8", progress=False)


@pytest.fixture(scope="module")
def ctx(tiny_llama, located, prompts, small_data):
    return SelectorContext(located.stats, tiny_llama, dataclasses.replace(small_data, dilemmas=DILEMMAS), prompts)


def _pairs(ns) -> list[tuple[int, int]]:
    return list(zip(ns.layers.tolist(), ns.neurons.tolist(), strict=True))


def _quiet_select(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return select_neurons(*args, **kwargs)


# ----------------------------------------------------------------------------- score selectors and LAPE


def test_score_selectors_take_the_hand_computed_top_k(located, ctx):
    st = located.stats
    n = st.tokens[:, None, None]
    p, mu = st.active / n, st.sum / n
    var = (st.sumsq - n * mu * mu) / (n - 1)
    plus, minus = st.class_index("Conservation:+"), st.class_index("Conservation:-")
    n1, n2 = st.tokens[plus], st.tokens[minus]
    pooled = ((n1 - 1) * var[plus] + (n2 - 1) * var[minus]) / (n1 + n2 - 2)
    by_hand = {
        "delta": p[plus] - p[minus],
        "mean_diff": mu[plus] - mu[minus],
        "cohens_d": (mu[plus] - mu[minus]) / pooled.sqrt(),
    }
    for name, score in by_hand.items():
        for pole, sign in (("+", 1), ("-", -1)):
            ns = select_neurons(name, st, "Conservation", pole, 7, context=ctx)
            top = torch.topk((sign * score).flatten(), 7).indices
            assert set(_pairs(ns)) == {(int(i) // st.d_mlp, int(i) % st.d_mlp) for i in top}, (name, pole)
            assert torch.allclose(ns.delta, sign * (p[plus] - p[minus])[ns.layers, ns.neurons])
            assert torch.allclose(ns.act_prob, p[plus if pole == "+" else minus][ns.layers, ns.neurons])


def _stats(p_plus: list[float], p_minus: list[float], tokens: float = 10.0) -> NeuronStats:
    st = NeuronStats.empty(["Conservation:+", "Conservation:-"], [0], len(p_plus), meta={"model": {"n_layers": 1}})
    st.tokens += tokens
    st.active[0, 0] = torch.tensor(p_plus, dtype=torch.float64) * tokens
    st.active[1, 0] = torch.tensor(p_minus, dtype=torch.float64) * tokens
    return st


def test_lape_by_hand():
    p_plus = [0.9, 0.8, 0.1, 0.5, 0.0, 0.6, 0.2, 0.3]
    p_minus = [0.1, 0.8, 0.9, 0.5, 0.0, 0.2, 0.6, 0.3]
    st = _stats(p_plus, p_minus)
    # 16 probabilities sorted: 0 0 .1 .1 .2 .2 .3 .3 .5 ...; filter_rate 0.5 -> the 8th smallest, 0.3.
    # Strictly above it in some pole: neurons 0, 1, 2, 3, 5, 6 (not 4: never active; not 7: 0.3 is not above).
    lape = lape_scores(st, "Conservation", filter_rate=0.5)
    assert lape.threshold == pytest.approx(0.3)
    assert lape.eligible[0].tolist() == [True, True, True, True, False, True, True, False]
    h = lambda a, b: -(a * math.log(a) + b * math.log(b))  # noqa: E731
    assert lape.entropy[0, 0].item() == pytest.approx(h(0.9, 0.1)) and lape.entropy[0, 5].item() == pytest.approx(
        h(0.75, 0.25)
    )
    assert lape.entropy[0, 1].item() == pytest.approx(math.log(2))
    half = LapeOptions(filter_rate=0.5)
    # + pole: the eligible neurons more active in + are 0 (H 0.325) and 5 (H 0.562); 1 and 3 are ties (no pole).
    ns = select_neurons("lape", st, "Conservation", "+", 2, options=half)
    assert ns.neurons.tolist() == [0, 5] and ns.params["n_fallback"] == 0 and ns.params["filter_rate"] == 0.5
    assert ns.scores.tolist() == pytest.approx([-h(0.9, 0.1), -h(0.75, 0.25)])
    assert select_neurons("lape", st, "Conservation", "-", 2, options=half).neurons.tolist() == [2, 6]
    # A third neuron comes from the fallback: nothing else is more active in +, so the largest directed
    # delta among the rest (0 for neurons 1, 3, 4, 7; the first by position wins the tie).
    with pytest.warns(UserWarning, match="fallback"):
        three = select_neurons("lape", st, "Conservation", "+", 3, options=half)
    assert three.neurons.tolist() == [0, 5, 1] and three.params["n_fallback"] == 1 and len(three) == 3


def test_lape_matches_the_original_code_on_real_statistics(located):
    st = located.stats
    # Tang et al.'s identify step, restricted to the two poles of one dimension.
    probs = torch.stack([st.activation_probability()[st.class_index(f"Conservation:{p}")] for p in "+-"], -1)
    normed = probs / probs.sum(-1, keepdim=True)
    normed[torch.isnan(normed)] = 0
    entropy = -(normed * torch.where(normed > 0, normed.log(), 0)).sum(-1)
    flat = probs.flatten()
    top_value = flat.kthvalue(round(len(flat) * 0.95)).values.item()
    entropy[(probs > top_value).sum(-1) == 0] = torch.inf
    ranked = entropy.flatten().argsort()
    ranked = ranked[torch.isfinite(entropy.flatten()[ranked])]
    for pole, col in (("+", 0), ("-", 1)):
        mine = [int(i) for i in ranked if probs.flatten(0, 1)[i, col] > probs.flatten(0, 1)[i, 1 - col]]
        k = min(len(mine), 5)
        assert k >= 1
        ns = select_neurons("lape", st, "Conservation", pole, k)
        ours = sorted((-ns.scores).tolist())
        assert ours == pytest.approx(sorted(entropy.flatten()[mine[:k]].tolist()), abs=1e-12)
        assert ns.params["n_fallback"] == 0 and ns.params["threshold"] == pytest.approx(top_value)


# ----------------------------------------------------------------------------- probe


def test_pooled_features_are_the_mean_over_question_tokens(tiny_llama, prompts):
    feats, n_fwd = pooled_features(tiny_llama, prompts[:4], batch_size=3)
    assert feats.shape == (4, 3, 96) and n_fwd == 2
    rows = vlens.activations.tokenize_prompts(tiny_llama, prompts[:4], "question")
    kept = {}
    hooks = [
        (f"blocks.{layer}.mlp.hook_post", lambda t, hook, layer=layer: kept.__setitem__(layer, t.detach()))
        for layer in range(3)
    ]
    for i in (0, 3):
        with torch.inference_mode(), tiny_llama.hooks(fwd_hooks=hooks):
            tiny_llama(torch.tensor([rows[i].ids]))
        sel = torch.tensor(rows[i].select)
        for layer in range(3):
            assert torch.allclose(feats[i, layer], kept[layer][0, sel].mean(0), atol=1e-5)


def test_probe_finds_planted_neurons_and_orients_them():
    g = torch.Generator().manual_seed(0)
    is_plus = torch.tensor([True, False] * 20)
    feats = torch.randn(40, 2, 30, generator=g)
    feats[:, 0, 5] += 3.0 * is_plus  # a + neuron
    feats[:, 1, 7] += 3.0 * ~is_plus  # a - neuron
    s = probe_scores(feats, is_plus, C=1.0, seed=0)
    assert s.coef[0, 5] > 0 and s.coef[1, 7] < 0
    assert 2 <= s.n_nonzero < 60 and torch.equal(s.importance, s.coef.abs())
    assert s.importance.flatten().topk(2).indices.tolist() in ([5, 37], [37, 5])
    plus, minus = feats[is_plus].double(), feats[~is_plus].double()
    d = (plus.mean(0) - minus.mean(0)) / ((plus.var(0) + minus.var(0)) / 2).sqrt()
    assert torch.allclose(s.univariate, d)


def test_probe_selector_end_to_end(ctx, located):
    ns = _quiet_select("probe", located.stats, "Conservation", "+", 10, context=ctx)
    coef = ctx.cache[("probe", "Conservation", ProbeOptions())][0].coef
    n_pos = int((coef > 0).sum())
    primary = ns.params["n_primary"]
    assert primary == n_pos and ns.params["n_fallback"] == max(0, 10 - n_pos)
    first = min(10, n_pos)
    assert (coef[ns.layers[:first], ns.neurons[:first]] > 0).all()  # the pole follows the sign of the weight
    assert ns.scores[:first].tolist() == sorted(ns.scores[:first].tolist(), reverse=True)


# ----------------------------------------------------------------------------- attribution patching


@pytest.fixture(scope="module")
def tiny64():
    # float64, so that the small effect of patching one neuron is measured far above rounding
    return vlens.tiny_model("llama", seed=0, dtype=torch.float64)


def _metric(model, dilemmas, adds=None, *, grad=False):
    """M for each patch in ``adds`` ([n_patch, n_layers, d_mlp] added at every position), one sequence per row."""
    seqs = build_sequences(model, Instruments(dilemmas=dilemmas, dilemma_variant="listed-mean"))
    n_patch = 1 if adds is None else adds.shape[0]
    rows = [(g, s) for g in range(n_patch) for s in seqs]
    width = max(len(s.ids) for s in seqs)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for r, (_, s) in enumerate(rows):
        tokens[r, : len(s.ids)], mask[r, : len(s.ids)] = torch.tensor(s.ids), 1
    group = torch.tensor([g for g, _ in rows])
    hooks = [] if adds is None else [
        (f"blocks.{layer}.mlp.hook_post", lambda t, hook, layer=layer: t + adds[group, layer][:, None, :]) for layer in range(adds.shape[1])
    ]  # fmt: skip
    with torch.set_grad_enabled(grad), model.hooks(fwd_hooks=hooks):
        logits = model(tokens, attention_mask=mask)
    lp = logits.log_softmax(-1)
    out = torch.zeros(n_patch, dtype=lp.dtype)
    for r, (g, s) in enumerate(rows):
        scored = torch.tensor(s.ids[s.split :])
        mean = lp[r, s.split - 1 : len(s.ids) - 1].gather(-1, scored[:, None]).mean()
        out = out.index_add(
            0, torch.tensor([g]), ((1 if s.key[-1] == "plus" else -1) * mean / (2 * len(dilemmas)))[None]
        )
    return out


def test_attribution_equals_explicit_autograd(tiny64, located):
    st = located.stats
    items = DILEMMAS[:1]
    att = attribution_scores(tiny64, st, "Conservation", items, batch_size=3)  # two padded batches
    assert att.n_batches == 2 and att.metric == pytest.approx(_metric(tiny64, items).item(), abs=1e-10)
    diff = st.mean()[0] - st.mean()[1]
    for layer, neuron in ((0, 3), (2, 40)):
        eps = torch.zeros((), dtype=torch.float64, requires_grad=True)
        add = torch.zeros(1, 3, 96, dtype=torch.float64)
        add[0, layer, neuron] = 1.0
        m = _metric(tiny64, items, add * eps, grad=True)[0]
        (dm,) = torch.autograd.grad(m, eps)  # dM/d(shift of this neuron at every position)
        assert att.gradient[layer, neuron].item() == pytest.approx(dm.item(), rel=1e-6, abs=1e-14)
        assert att.attribution[layer, neuron].item() == pytest.approx(
            diff[layer, neuron].item() * dm.item(), rel=1e-6, abs=1e-14
        )


def test_attribution_agrees_with_activation_patching(tiny64, located):
    """Patching = adding (mean+ - mean-) to one neuron at all positions of the dilemma sequences.

    The mean differences of the tiny model are small (|diff| < 0.01), so one patch stays in the
    linear regime and the full difference is used, no scaling down.
    """
    st = located.stats
    att = attribution_scores(tiny64, st, "Conservation", DILEMMAS).attribution
    diff = (st.mean()[0] - st.mean()[1]).double()
    assert diff.abs().max() < 0.05
    order = att.flatten().argsort()
    picks = order[torch.linspace(0, len(order) - 1, 24).round().long()]  # spread over the whole ranking
    adds = torch.zeros(len(picks), 3, 96, dtype=torch.float64)
    for g, i in enumerate(picks.tolist()):
        adds[g, i // 96, i % 96] = diff.flatten()[i]
    base = _metric(tiny64, DILEMMAS)[0]
    effect = _metric(tiny64, DILEMMAS, adds) - base
    predicted = att.flatten()[picks]
    rank = lambda x: x.argsort().argsort().double()  # noqa: E731
    spearman = torch.corrcoef(torch.stack([rank(effect), rank(predicted)]))[0, 1].item()
    assert spearman >= 0.8
    big = predicted.abs() > 0.05 * predicted.abs().max()
    assert (torch.sign(effect[big]) == torch.sign(predicted[big])).all()


# ----------------------------------------------------------------------------- every selector


def test_every_selector_returns_exactly_k_with_the_same_provenance(ctx, located):
    st = located.stats
    expected = provenance_of(st)
    for name in SELECTORS:
        for k in (1, 6, 40):
            for pole in "+-":
                ns = _quiet_select(name, st, "Conservation", pole, k, context=ctx)
                assert len(ns) == k and len(set(_pairs(ns))) == k, (name, k, pole)
                assert ns.provenance == expected and ns.dimension == "Conservation" and ns.pole == pole
                assert ns.delta is not None and ns.act_prob is not None and len(ns.scores) == k
    assert ctx.costs["probe"].forward_passes > 0 and ctx.costs["attribution"].backward_passes == 1
    ref = located["Conservation:+"]
    matched = select_neurons("random", st, "Conservation", "+", len(ref), reference=ref)
    assert torch.equal(matched.counts_per_layer(), ref.counts_per_layer()) and matched.method == "random"
    with pytest.raises(ValueError, match="unknown selector"):
        select_neurons("nope", st, "Conservation", "+", 3)
    with pytest.raises(ValueError, match="k must be"):
        select_neurons("delta", st, "Conservation", "+", 0)


def test_set_sizes():
    st = _stats([0.5] * 100, [0.5] * 100)
    assert set_sizes(st, (0.001, 0.02, 0.021, 5)) == [1, 2, 5]
    with pytest.raises(ValueError, match="fraction"):
        set_sizes(st, (1.5,))


# ----------------------------------------------------------------------------- compare


def test_compare_table_summary_and_figures(tmp_path, tiny_llama, located, prompts):
    inst = _tiny_instruments()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # KL 0.1 is out of reach on a random tiny model: a small target (hand-given gammas: the next test)
        result = compare(tiny_llama, located, dimensions=["Conservation"], sizes=(0.02,), instruments=inst, n_random=2,
                         kl_targets=[0.001], prompts=prompts, dilemmas=DILEMMAS[1:], progress=False)  # fmt: skip
    t = result.table
    assert list(t.columns) == TABLE_COLUMNS
    assert set(t[t.source == "value"].selector) == set(SELECTORS)
    assert set(t.loc[t.source.isin(["value", "random"]), "size"]) == {6}
    kl = t[t.metric == "kl"]
    assert len(kl[kl.source == "random"]) == 2  # one shared null: 2 random edits for both directions
    # the controls: once per (dimension, direction), calibrated only (a steering scale is no gamma), without a size
    for source in ("steering", "dense"):
        ctl = kl[kl.source == source]
        assert sorted(zip(ctl.steered, ctl.direction, strict=True)) == [("Conservation", "+"), ("Conservation", "-")]
        assert ctl["size"].isna().all() and (ctl.target_kl == 0.001).all()
    prompted = t[(t.source == "prompted") & (t.metric == "orientation")]
    assert sorted(prompted.direction) == ["+", "-"]  # the dilemmas read under a stated value, one pass per direction
    assert set(result.calibration.source) == {"value", "random", "steering", "dense"}
    assert len(result.calibration) == len(SELECTORS) * 2 + 2 + 2 * 2  # one row per family and KL target
    s = result.summary()
    assert len(s) == len(SELECTORS) * 2 and set(s.level) == {"kl"}  # selectors x directions
    assert set(s.selector) == set(SELECTORS) and set(s["size"]) == {6} and (s.n_null == 2).all()
    assert set(s.verdict) <= set(VERDICTS) and s.verdict.notna().all()
    assert s.z.notna().all() and (s.kl >= 0).all() and s.target_delta.notna().all()
    assert s.steering_shift.notna().all() and s.dense_shift.notna().all() and s.prompted_shift.notna().all()
    shifts = result.shifts()  # the per-gamma view
    assert len(shifts) == len(s) and (shifts.n_random == 2).all()
    assert set(result.costs.selector) == set(SELECTORS)
    costs = result.costs.set_index("selector")
    assert costs.loc["attribution", "backward_passes"] == 1 and costs.loc["delta", "forward_passes"] == 0
    diag = result.overlap[result.overlap.selector_a == result.overlap.selector_b]
    assert (diag.jaccard == 1.0).all()
    figs = compare_figures(result)
    assert set(figs) == {"matched_effects", "overlap"}
    for name, fig in figs.items():
        assert isinstance(fig, Figure) and fig.axes
        assert fig._repr_png_().startswith(b"\x89PNG")  # shown as the value of a Jupyter cell
        fig.savefig(tmp_path / f"{name}.png")
    panels = [ax for ax in figs["matched_effects"].axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["Conservation toward +", "Conservation toward -"]
    assert all(len(ax.lines) >= 4 for ax in panels)  # zero, prompted, steering and dense as reference lines
    result.save(tmp_path / "out")
    for name in ("compare", "compare_summary", "calibration", "overlap", "costs"):
        assert (tmp_path / "out" / f"{name}.csv").exists(), name
    meta = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert (meta["kl_targets"], meta["n_random"], meta["controls"]) == ([0.001], 2, ["prompted", "steering", "dense"])
    table = selector_verdicts(pd.read_csv(tmp_path / "out" / "compare_summary.csv"))
    assert list(table.columns[:2]) == ["selector", "size"] and len(table) == len(SELECTORS) * 2


def test_the_null_of_each_size_holds_only_random_edits_of_that_size(tiny_llama, located):
    result = compare(tiny_llama, located, dimensions=["Conservation"], sizes=(4, 9), selectors=["delta", "mean_diff"],
                     instruments=_tiny_instruments(), n_random=2, kl_targets=[], gammas=[1.0], controls=(),
                     progress=False)  # fmt: skip
    t = result.table
    randoms = t[(t.source == "random") & (t.metric == "kl")]
    assert sorted(randoms["size"]) == [4, 4, 9, 9] and set(randoms.selector) == {"delta"}  # the pool: matched to delta
    s = result.summary()
    assert len(s) == 2 * 2 * 2 and (s.n_null == 2).all()  # selectors x sizes x directions, each against 2 edits
    change, labels, dim_of = item_changes(result.table)
    items = dim_of.index[dim_of == "Conservation"]
    for r in s.itertuples():  # the null, by hand: the random edits of the row's size, signed toward its direction
        own = labels.index[(labels.source == "random") & (labels["size"] == r.size)]
        sign = -1.0 if r.direction == "-" else 1.0
        assert r.null_mean == pytest.approx(float((sign * change.loc[own, items].mean(axis=1)).mean()), abs=1e-9)
    shifts = result.shifts()  # the per-gamma view compares like with like too
    assert (shifts.n_random == 2).all()
    for k in (4, 9):
        mean = shifts[shifts["size"] == k].random_kl.iloc[0]
        assert mean == pytest.approx(t[(t.source == "random") & (t.metric == "kl") & (t["size"] == k)].value.mean())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"controls": ("prompted", "telepathy")}, "unknown control(s) ['telepathy']"),
    ({"n_random": 1}, "n_random must be at least 2"),
    ({"random_match": "random"}, "random_match must name a selector other than 'random'"),
    ({"kl_targets": [], "gammas": []}, "give KL targets"),
])  # fmt: skip
def test_compare_bad_designs_fail_with_one_line(tiny_llama, located, kwargs, message):
    with pytest.raises(ValueError) as err:
        compare(tiny_llama, located, dimensions=["Conservation"], sizes=(4,), selectors=["delta"],
                instruments=_tiny_instruments(), progress=False, **kwargs)  # fmt: skip
    assert message in str(err.value) and "\n" not in str(err.value)


def _tiny_instruments():
    data = vlens.load_value_data()
    # per-token means: a summed option log-prob of a random tiny model saturates the orientation at 0 or 1
    return Instruments(dilemmas=DILEMMAS[:1], portrait_items=data.portrait_items[:2],
                       neutral_text=[{"id": "n", "text": "The sun rose over the quiet town."}], dilemma_variant="cloze-mean")  # fmt: skip


@pytest.mark.filterwarnings("ignore:lape ranks only")
def test_compare_builds_the_reference_sets_of_a_selector_it_does_not_compare(tiny_llama, located):
    # Regression: compare(selectors=["lape"]) raised KeyError: the random controls match the delta sets,
    # which were never built.
    result = compare(tiny_llama, located, dimensions=["Conservation"], sizes=(6,), selectors=["lape"],
                     instruments=_tiny_instruments(), n_random=2, kl_targets=[], gammas=[1.0], controls=(),
                     progress=False)  # fmt: skip
    t = result.table
    assert set(t[t.source == "value"].selector) == {"lape"} and set(t[t.source == "random"].selector) == {"delta"}
    assert len(t[(t.source == "random") & (t.metric == "kl")]) == 2  # one shared null for both directions
    assert list(result.costs.selector) == ["lape"] and {key[0] for key in result.neuron_sets} == {"lape"}
    s = result.summary()
    assert set(s.selector) == {"lape"} and s.z.notna().all() and s.target_delta.notna().all()


def test_probe_and_attribution_use_the_runs_data(tiny_llama, small_data):
    # Regression: both read the shipped data even when the run had its own.
    data = dataclasses.replace(small_data, dilemmas=DILEMMAS)
    st = locate(tiny_llama, data, dimensions=["Conservation"], pairs_per_question=2, selection="top_k:4", progress=False).stats
    ctx = SelectorContext(st, tiny_llama, data)
    probe = _quiet_select("probe", st, "Conservation", "+", 5, context=ctx)
    assert probe.params["n_prompts"] == len([p for p in build_prompts(data, tiny_llama, pairs_per_question=2)
                                             if p.dimension == "Conservation"])  # fmt: skip
    att = select_neurons("attribution", st, "Conservation", "+", 5, context=ctx)
    assert att.params["dilemmas"] == ["t.fc.1", "t.fc.2"]
    with pytest.raises(ValueError, match="not collected on this value data"):
        select_neurons("probe", st, "Conservation", "+", 5, model=tiny_llama)  # the shipped data is not the run's


def test_attribution_warns_when_its_items_are_evaluation_items(tiny_llama, located, small_data):
    ctx = SelectorContext(located.stats, tiny_llama, dataclasses.replace(small_data, dilemmas=DILEMMAS))
    # By default the held-out (evaluation) items are left out of the run's dilemmas ...
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ns = select_neurons("attribution", located.stats, "Conservation", "+", 3, context=ctx,
                            options=AttributionOptions(held_out=DILEMMAS[:1]))  # fmt: skip
    assert ns.params["dilemmas"] == ["t.fc.2"]
    # ... and items given explicitly that are also evaluation items raise a warning, here and in compare.
    with pytest.warns(UserWarning, match="also evaluation items"):
        select_neurons("attribution", located.stats, "Conservation", "+", 3, context=ctx,
                       options=AttributionOptions(DILEMMAS, held_out=DILEMMAS[:1]))  # fmt: skip
    with pytest.warns(UserWarning, match="also evaluation items"):
        compare(tiny_llama, located, dimensions=["Conservation"], sizes=(6,), selectors=["attribution"],
                instruments=_tiny_instruments(), n_random=2, kl_targets=[], gammas=[1.0], controls=(), dilemmas=DILEMMAS,
                progress=False)  # fmt: skip
