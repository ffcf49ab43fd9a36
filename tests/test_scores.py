"""Scores and selection against hand-computed formulas on hand-made statistics."""

from __future__ import annotations

import math

import pytest
import torch

from vlens.neurons import NeuronSet, Selection, select
from vlens.scores import all_scores, score
from vlens.stats import NeuronStats


def hand_stats() -> NeuronStats:
    """Two poles, 2 layers x 3 neurons, from explicit activation lists."""
    acts = {
        "+": [[[1.0, 2.0, 0.0], [0.5, 0.0, 0.0]], [[1.0, -1.0, 3.0], [0.0, 0.0, 1.0]], [[2.0, 1.0, 0.0], [0.5, 0.0, 0.0]]],
        "-": [[[0.0, 1.0, 0.0], [0.5, 2.0, 0.0]], [[-1.0, 1.0, 1.0], [0.0, 2.0, 0.0]]],
    }  # pole -> tokens -> layer -> neuron
    stats = NeuronStats.empty(["D:+", "D:-"], [0, 1], 3, hist_edges=torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    for c, pole in enumerate("+-"):
        a = torch.tensor(acts[pole], dtype=torch.float64)  # [tok, layer, neuron]
        w = torch.zeros(1, len(a), 2, dtype=torch.float64)
        w[..., c] = 1
        for layer in range(2):
            stats.add(layer, a[None, :, layer, :], w)
        stats.add_token_counts(w)
    return stats, acts


def test_scores_match_hand_formulas():
    stats, acts = hand_stats()
    a_plus, a_minus = (torch.tensor(acts[p], dtype=torch.float64) for p in "+-")
    p_plus, p_minus = (a_plus > 0).double().mean(0), (a_minus > 0).double().mean(0)
    torch.testing.assert_close(score(stats, "D", "delta"), p_plus - p_minus)
    mu_p, mu_m = a_plus.mean(0), a_minus.mean(0)
    torch.testing.assert_close(score(stats, "D", "mean_diff"), mu_p - mu_m)
    var_p, var_m = a_plus.var(0), a_minus.var(0)  # unbiased
    n_p, n_m = len(a_plus), len(a_minus)
    pooled = ((n_p - 1) * var_p + (n_m - 1) * var_m) / (n_p + n_m - 2)
    d = torch.where(pooled > 0, (mu_p - mu_m) / pooled.sqrt(), torch.zeros_like(pooled))
    torch.testing.assert_close(score(stats, "D", "cohens_d"), d)
    se = (var_p / n_p + var_m / n_m).sqrt()
    t = torch.where(se > 0, (mu_p - mu_m) / se, torch.zeros_like(se))
    torch.testing.assert_close(score(stats, "D", "welch_t"), t)
    # entropy of layer 0, neuron 0: p+ = 1, p- = 0 -> 0; layer 0 neuron 1: p+ = 2/3, p- = 1 -> shares 0.4/0.6
    ent = score(stats, "D", "entropy")
    assert ent[0, 0].item() == pytest.approx(0.0)
    assert ent[0, 1].item() == pytest.approx(-(0.4 * math.log(0.4) + 0.6 * math.log(0.6)))
    assert ent[1, 2].item() == pytest.approx(0.0)  # active in + only
    assert set(all_scores(stats, "D")) == {"delta", "mean_diff", "cohens_d", "welch_t", "entropy"}
    with pytest.raises(ValueError, match="unknown score"):
        score(stats, "D", "magic")


def test_quantile_from_histogram():
    stats, _ = hand_stats()
    # + pole, layer 0, neuron 1: values 2, -1, 1 -> bins (<0):1, [1,2):1, [2,inf):1; the median
    # falls in [1, 2), whose upper edge is 2.0; the 0.2 quantile in (<0), upper edge 0.0
    assert stats.quantile(0.5)[0, 0, 1].item() == 2.0
    assert stats.quantile(0.2)[0, 0, 1].item() == 0.0


def test_selection_rules():
    stats, _ = hand_stats()
    delta = score(stats, "D", "delta")
    top2 = select(stats, "D", "+", Selection("top_k", k=2, threshold=None))
    assert len(top2) == 2 and set(top2.scores.tolist()) <= set(delta.flatten().tolist())
    assert top2.scores[0] >= top2.scores[1] and top2.scores[0] == delta.max()
    minus = select(stats, "D", "-", "top_k:1")
    assert minus.scores[0] == (-delta).max()
    per_layer = select(stats, "D", "+", "top_k:1,per_layer")
    assert per_layer.counts_per_layer().tolist() == [1, 1]
    thr = select(stats, "D", "+", "threshold:0.5")
    assert sorted(thr.scores.tolist()) == sorted(v for v in delta.flatten().tolist() if v >= 0.5)
    paper = select(stats, "D", "+", Selection("paper", k=1, threshold=0.3))
    assert len(paper) == int(((delta >= 0.3) | (delta == delta.max())).sum())
    frac = select(stats, "D", "+", "top_frac:0.5")
    assert len(frac) == 3
    lape = select(stats, "D", "+", "top_k:2,score=entropy")
    assert lape.scores.tolist() == [-0.0, -0.0] or lape.scores.max().item() == 0.0
    assert all(d > 0 for d in lape.delta.tolist())  # entropy picks among neurons more active in the pole


def test_selection_parse_errors():
    for bad in ("top_k", "top_k:abc", "nearest:3", "top_k:3,everywhere", "top_frac:2", "paper:x", "threshold:nan",
                "top_k:3,score=bogus"):
        with pytest.raises(ValueError):
            Selection.parse(bad)


def test_neuron_set_save_load_overlap(tmp_path):
    stats, _ = hand_stats()
    a = select(stats, "D", "+", "top_k:3")
    b = select(stats, "D", "+", "top_k:2")
    assert a.jaccard(b) == pytest.approx(2 / 3) and a.jaccard(a) == 1.0
    a.save(tmp_path / "set")
    back = NeuronSet.load(tmp_path / "set")
    assert torch.equal(back.layers, a.layers) and torch.equal(back.neurons, a.neurons)
    assert back.params == a.params and back.mask().sum() == 3
    with pytest.raises(ValueError, match="neuron indices"):
        NeuronSet("D", "+", torch.tensor([0]), torch.tensor([5]), torch.tensor([1.0]), 2, 3)
    with pytest.raises(ValueError, match="unknown pole"):
        NeuronSet("D", "x", torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]), 2, 3)


def test_indices_edited_after_construction_are_refused():
    """Issue 15: a negative index set after construction used to wrap around (neuron -5 became 91)."""
    stats, _ = hand_stats()
    ns = select(stats, "D", "+", "top_k:2")
    ns.neurons[0] = -1
    for use in (ns.mask, ns.counts_per_layer):
        with pytest.raises(ValueError, match="neuron indices must be in 0..2"):
            use()


def test_an_empty_selection_is_refused_before_any_edit():
    """Issue 15: `threshold:2` kept no neuron and the empty sets were validated anyway (z = nan)."""
    from vlens.interventions import _check_set

    stats, _ = hand_stats()
    empty = select(stats, "D", "+", "threshold:2")
    assert len(empty) == 0 and empty.params["largest_score"] == pytest.approx(max(select(stats, "D", "+", "top_k:1").scores))
    with pytest.raises(ValueError, match=r"D:\+ is empty: the selection \(threshold 2.0, score delta\).*largest score 1\.0"):
        _check_set((2, 3), empty)
