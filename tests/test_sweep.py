"""vlens.stability against hand-computed chance levels, the sweep grid, the choosing rule, and an interrupted
sweep that resumes without redoing anything (tiny model)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pandas as pd
import pytest
import torch

from vlens.neurons import NeuronSet
from vlens.stability import (
    MIRROR_PAIRS,
    circumplex_overlap,
    expected_jaccard,
    expected_overlap,
    layer_profile,
    overlap_test,
    spearman,
    split_half,
    split_pairs,
)
from vlens.stats import NeuronStats
from vlens.sweep import PAPER_CELL, Cell, Grid, SweepError, choose, sweep

# ----------------------------------------------------------------------------- chance levels


@pytest.mark.parametrize("k1,k2,n,want", [
    (2, 2, 4, Fraction(7, 18)),   # X in {0,1,2} w.p. 1/6, 4/6, 1/6; J = 0, 1/3, 1
    (3, 2, 4, Fraction(11, 24)),  # X in {1,2} w.p. 1/2, 1/2; J = 1/4, 2/3
    (1, 1, 5, Fraction(1, 5)),    # J = 1 iff the one neuron is the same one
    (0, 0, 5, Fraction(1)),       # two empty sets are equal
])  # fmt: skip
def test_expected_jaccard_by_hand(k1, k2, n, want):
    assert expected_jaccard(k1, k2, n) == pytest.approx(float(want), abs=1e-12)


def test_expected_jaccard_by_enumerating_every_pair_of_sets():
    n, k1, k2 = 6, 2, 3
    pairs = [(set(a), set(b)) for a in itertools.combinations(range(n), k1) for b in itertools.combinations(range(n), k2)]
    exact = sum(Fraction(len(a & b), len(a | b)) for a, b in pairs) / len(pairs)
    assert expected_jaccard(k1, k2, n) == pytest.approx(float(exact), abs=1e-12)
    assert expected_overlap(k1, k2, n) == pytest.approx(float(sum(Fraction(len(a & b)) for a, b in pairs) / len(pairs)))
    # the plug-in E[X] / (k1 + k2 - E[X]) is not the chance Jaccard (J is convex in X)
    assert expected_jaccard(k1, k2, n) > 1.0 / (k1 + k2 - 1.0)


def test_chance_levels_refuse_impossible_sizes():
    with pytest.raises(ValueError, match="cannot exceed"):
        expected_jaccard(5, 2, 4)
    with pytest.raises(ValueError, match="whole number"):
        expected_overlap(-1, 2, 4)


def _mask(indices, shape=(2, 5)):
    m = torch.zeros(shape, dtype=torch.bool)
    m.view(-1)[list(indices)] = True
    return m


def test_overlap_against_the_hypergeometric_null():
    # N = 10, |A| = 4, |B| = 3, 2 shared: P(X >= 2) = [C(4,2) C(6,1) + C(4,3)] / C(10,3) = (36 + 4) / 120
    o = overlap_test(_mask([0, 1, 2, 3]), _mask([2, 3, 7]))
    assert (o.size_a, o.size_b, o.n, o.overlap) == (4, 3, 10, 2)
    assert o.p == pytest.approx(1 / 3)
    assert o.expected == pytest.approx(1.2) and o.ratio == pytest.approx(2 / 1.2)
    assert o.jaccard == pytest.approx(2 / 5)
    assert overlap_test(_mask([0, 1]), _mask([5, 6])).p == pytest.approx(1.0)  # P(X >= 0)
    with pytest.raises(ValueError, match="same neurons"):
        overlap_test(_mask([0]), torch.zeros(3, 5, dtype=torch.bool))


def test_spearman_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, torch.tensor([0.0, -math.inf, 5.0, 7.0])) == pytest.approx(1.0)  # non-finite pairs left out
    assert math.isnan(spearman(x, torch.ones(4)))


# ----------------------------------------------------------------------------- split halves


def _stats(p_plus, p_minus, *, tokens=100.0):
    """Conservation statistics whose activation probabilities are ``p_plus`` / ``p_minus`` ([2, 5] each)."""
    s = NeuronStats.empty(["Conservation:+", "Conservation:-"], [0, 1], 5)
    s.tokens[:] = tokens
    s.active[0], s.active[1] = torch.as_tensor(p_plus, dtype=torch.float64) * tokens, torch.as_tensor(p_minus, dtype=torch.float64) * tokens
    s.sum[:] = s.active
    s.sumsq[:] = s.active
    return s


def test_split_half_on_synthetic_statistics():
    ramp = torch.linspace(0.05, 0.95, 10, dtype=torch.float64).reshape(2, 5)
    same = split_half(_stats(ramp, 0.5), _stats(ramp, 0.5), "top_k:3").set_index("pole")
    # identical halves: the same 3 of 10 neurons, P(X >= 3) = 1 / C(10, 3)
    assert same.loc["+", "overlap"] == 3 and same.loc["+", "jaccard"] == 1.0
    assert same.loc["+", "jaccard_chance"] == pytest.approx(expected_jaccard(3, 3, 10))
    assert same.loc["+", "p"] == pytest.approx(1 / 120) and same.loc["+", "spearman"] == pytest.approx(1.0)
    flipped = split_half(_stats(ramp, 0.5), _stats(ramp.flip(0).flip(1), 0.5), "top_k:3").set_index("pole")
    # reversed ranks: the top 3 of one half are the bottom 3 of the other
    assert flipped.loc["+", "overlap"] == 0 and flipped.loc["+", "p"] == pytest.approx(1.0)
    assert flipped.loc["+", "spearman"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="different neurons"):
        split_half(_stats(ramp, 0.5), NeuronStats.empty(["Conservation:+", "Conservation:-"], [0], 5), "top_k:3")


def test_split_pairs_gives_disjoint_halves_of_whole_pairs(tiny_llama, small_data):
    from vlens.data import build_prompts

    prompts = build_prompts(small_data, tiny_llama, template="raw", pairs_per_question=2)
    a, b = split_pairs(prompts, seed=0)
    assert sorted(p.id for p in a + b) == sorted(p.id for p in prompts)
    assert not {p.question_id for p in a} & {p.question_id for p in b}
    for half in (a, b):
        for dim in ("Conservation", "Self-Transcendence"):
            poles = [p.pole for p in half if p.dimension == dim]
            assert poles and poles.count("+") == poles.count("-")  # whole pairs, every dimension in both halves
    assert split_pairs(prompts, seed=0) == (a, b)
    one_question = [p for p in prompts if p.question_id == prompts[0].question_id]
    x, y = split_pairs(one_question)  # a single question is split by pair
    assert x and y and not {p.pair_id for p in x} & {p.pair_id for p in y}
    with pytest.raises(ValueError, match="only one prompt pair"):
        split_pairs(prompts[:2])


# ----------------------------------------------------------------------------- circumplex and layers


def _set(name, flat, n_layers=2, d_mlp=5):
    dim, pole = name.split(":")
    idx = torch.tensor(flat)
    return NeuronSet(dim, pole, idx // d_mlp, idx % d_mlp, torch.zeros(len(flat)), n_layers, d_mlp)


def test_circumplex_overlap_against_chance():
    sets = {"Openness_to_Change:+": _set("Openness_to_Change:+", [0, 1, 2, 3]), "Conservation:-": _set("Conservation:-", [2, 3, 7]),
            "Openness_to_Change:-": _set("Openness_to_Change:-", [0, 1]), "Conservation:+": _set("Conservation:+", [5, 6])}
    table = circumplex_overlap(sets).set_index("set")
    assert list(table.index) == ["Openness_to_Change:+", "Openness_to_Change:-"]  # the Self-* pairs are absent
    assert table.loc["Openness_to_Change:+", "mirror"] == "Conservation:-"
    assert table.loc["Openness_to_Change:+", "overlap"] == 2 and table.loc["Openness_to_Change:+", "p"] == pytest.approx(1 / 3)
    assert table.loc["Openness_to_Change:-", "overlap"] == 0 and table.loc["Openness_to_Change:-", "p"] == pytest.approx(1.0)
    assert ("Self-Enhancement:+", "Self-Transcendence:-") in MIRROR_PAIRS and len(MIRROR_PAIRS) == 4
    # only layer 0 located: N = 5, and Conservation:- has 2 neurons there (its third, flat index 7, is in layer 1)
    row = circumplex_overlap(sets, layers=[0]).set_index("set").loc["Openness_to_Change:+"]
    assert (row.n, row.size_a, row.size_b, row.overlap) == (5, 4, 2, 2)


def test_layer_profile():
    assert layer_profile(_set("Conservation:+", [0, 1, 12], n_layers=3)) == "2 0 1"


# ----------------------------------------------------------------------------- the grid and the rule


def test_grid_words():
    full = Grid.parse("full")
    assert len(full.cells) == 12 and full.best_scores == ("cohens_d",) and full.best_sels == ("paper", "top_k:300")
    assert {c.scope for c in full.cells} == {"question", "generated", "all"} and {c.score for c in full.cells} == {"delta"}
    assert Grid.parse("paper").cells == [PAPER_CELL] and PAPER_CELL.id == "scope=generated,hook=gate,sel=paper,score=delta"
    from vlens.pipeline import LocateConfig

    base = LocateConfig(selection="paper")  # the axes a word leaves out keep the base's
    product = Grid.parse(["scope=question,all", "hook=gate"], base).cells
    assert [c.id for c in product] == ["scope=question,hook=gate,sel=paper,score=delta", "scope=all,hook=gate,sel=paper,score=delta"]
    mixed = Grid.parse(["paper", "scope=question,hook=post,sel=top_k:300,score=cohens_d", "paper"]).cells
    assert mixed == [PAPER_CELL, Cell("question", "post", "top_k:300", "cohens_d")]
    assert Cell.parse(mixed[1].id) == mixed[1]
    # the paper preset's 0.1 threshold is a delta: with another score it keeps its top 2,000 only
    assert Cell("question", "post", "paper", "cohens_d").selection == "top_k:2000,score=cohens_d"
    assert Cell("question", "post", "top_k:300").selection == "top_k:300"


@pytest.mark.parametrize("words,message", [
    (["scope=bogus"], "unknown scope 'bogus'; choose from"),
    (["colour=red"], "unknown axis 'colour'"),
    (["sel=top_k:x"], "sel 'top_k:x'"),
    (["sel=top_k:3,per_layer"], "sel 'per_layer'"),
    (["scope=all", "scope=question"], "axis scope is given twice"),
    (["huge"], "unknown grid 'huge'"),
    (["scope=all,hook=post"], "must name scope, hook, sel"),
    (["scope=all,hook=up,sel=paper"], "unknown hook 'up'; choose from post, gate"),
    ([], "grid: empty"),
])  # fmt: skip
def test_bad_grid_words_are_one_line_errors(words, message):
    with pytest.raises(SweepError) as err:
        Grid.parse(words)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_choose_by_mean_z_over_the_kl_targets():
    rows = []
    zs = {"a": ([1.0, 1.0], [3.0, 3.0]), "b": ([3.0, -2.0], [1.0, -2.0]), "c": ([2.0, math.nan], [4.0, math.nan]),
          "d": ([math.nan, math.nan], [math.nan, math.nan])}  # per cell: (+, -) at KL 0.1, then at KL 0.2
    for cell, levels in zs.items():
        for at, pair in zip((0.1, 0.2), levels, strict=True):
            for direction, z in zip("+-", pair, strict=True):
                rows.append({"cell": cell, "split": "dev", "level": "kl", "at": at, "direction": direction, "z": z})
        rows.append({"cell": cell, "split": "dev", "level": "gamma", "at": 1.0, "direction": "+", "z": 50.0})  # not matched
    rows.append({"cell": "a", "split": "test", "level": "kl", "at": 0.1, "direction": "+", "z": 99.0})  # never counts
    scores = choose(pd.DataFrame(rows))
    assert list(scores.index) == ["a", "b", "c", "d"]
    assert scores["a"] == 2.0 and scores["b"] == 0.0 and scores["c"] == 3.0 and math.isnan(scores["d"])
    assert scores.idxmax() == "c"  # a row without z is left out, not counted as 0
    gammas_only = choose(pd.DataFrame([r for r in rows if r["level"] == "gamma"]))
    assert (gammas_only == 50.0).all()  # without KL targets, the hand-given doses
    with pytest.raises(ValueError, match="no dev rows"):
        choose(pd.DataFrame(rows).assign(split="test"))


# ----------------------------------------------------------------------------- the CLI


def test_sweep_cli_parses_and_refuses_bad_grids_in_one_line(tmp_path, capsys):
    from vlens.cli import build_parser, main

    args = build_parser().parse_args(["sweep", "--out", "x", "--grid", "paper", "scope=question,hook=post,sel=paper,score=delta",
                                      "sel=paper,top_k:300", "--max-pairs", "4", "--no-dev"])  # fmt: skip
    assert args.grid == ["paper", "scope=question,hook=post,sel=paper,score=delta", "sel=paper,top_k:300"]
    assert args.max_pairs == 4 and args.no_dev and not args.resume
    for argv, message in ((["--grid", "scope=bogus"], "grid: unknown scope 'bogus'"),
                          (["--grid", "sel=top_k:-3"], "needs k >= 1"),
                          (["--resume"], "holds no sweep (no sweep.json)")):  # fmt: skip
        assert main(["sweep", "--out", str(tmp_path / "s"), "--model", "tiny-llama", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("vlens sweep: error: ") and message in err, err
    assert not (tmp_path / "s").exists()  # a refused sweep leaves nothing behind


# ----------------------------------------------------------------------------- an interrupted sweep resumes


@pytest.fixture(scope="module")
def swept(tiny_llama, tmp_path_factory):
    """A sweep interrupted in its second cell's validation, resumed, then run once more; with the calls each made."""
    import importlib

    from vlens.instruments.dilemmas import dilemma_split
    from vlens.pipeline import LocateConfig, RunConfig, ValidateConfig

    # by module: the name vlens.locate is the function the package re-exports
    locate_module, validate_module = importlib.import_module("vlens.locate"), importlib.import_module("vlens.validate")

    folder = tmp_path_factory.mktemp("sweep") / "s"
    base = RunConfig(LocateConfig(model="tiny-llama", dimensions=["Openness_to_Change", "Conservation"], max_pairs=4,
                                  scope="question", hook="post", selection="paper"),  # the cells below are named by these
                     ValidateConfig(kl_targets=[], gammas=[1.0], n_random=2, controls=["prompted"], max_dilemmas=1,
                                    max_neutral=1))  # fmt: skip
    calls: list[tuple[str, str]] = []
    real_locate, real_validate = locate_module.locate, validate_module.validate
    interrupt = {"after": 1}

    def counted_locate(model, data, **kw):
        calls.append(("locate", "halves" if isinstance(data, list) else "cell"))
        return real_locate(model, data, **kw)

    def counted_validate(*args, **kw):
        calls.append(("validate", dilemma_split(kw["instruments"].dilemmas[0])))
        if interrupt["after"] is not None and sum(c[0] == "validate" for c in calls) > interrupt["after"]:
            raise KeyboardInterrupt
        return real_validate(*args, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(locate_module, "locate", counted_locate)
    mp.setattr(validate_module, "validate", counted_validate)
    grid = ["sel=top_k:5,top_k:10"]
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep("tiny-llama", grid, folder, base=base, model=tiny_llama, progress=False)
        first, calls[:] = list(calls), []
        with pytest.raises(SweepError, match="pass --resume"):
            sweep("tiny-llama", grid, folder, base=base, model=tiny_llama, progress=False)
        done = folder / "cells" / "scope=question,hook=post,sel=top_k:5,score=delta" / "validation" / "validation.csv"
        mtime = done.stat().st_mtime_ns
        interrupt["after"] = None
        result = sweep("tiny-llama", None, folder, base=base, model=tiny_llama, resume=True, progress=False)
        second, calls[:] = list(calls), []
        again = sweep("tiny-llama", grid, folder, base=base, model=tiny_llama, resume=True, progress=False)
        third = list(calls)
    finally:
        mp.undo()
    return {"folder": folder, "first": first, "second": second, "third": third, "result": result, "again": again,
            "kept": done.stat().st_mtime_ns == mtime, "base": base}  # fmt: skip


def test_an_interrupted_sweep_resumes_without_redoing_anything(swept):
    # first: the first cell located and validated, its halves located, the second cell selected from the first
    # cell's statistics (no locate), its validation interrupted
    assert swept["first"] == [("locate", "cell"), ("validate", "dev"), ("locate", "halves"), ("locate", "halves"),
                              ("validate", "dev")]  # fmt: skip
    # resumed: only the interrupted validation, then the chosen cell on test (its sets selected, not located)
    assert swept["second"] == [("validate", "dev"), ("validate", "test")]
    assert swept["kept"], "the finished cell's validation was rewritten"
    assert swept["third"] == []  # a finished sweep reruns nothing
    pd.testing.assert_frame_equal(swept["again"].table, swept["result"].table)


def test_the_sweep_table_figure_and_report(swept):
    from vlens.sweep import COLUMNS

    folder, result = swept["folder"], swept["result"]
    table = pd.read_csv(folder / "sweep.csv")
    assert list(table.columns) == COLUMNS and len(table) == 3 * 2 * 2  # (2 cells on dev + the best on test) x 2 dims x 2 directions
    assert result.best in set(table.cell) and (table.split == "test").sum() == 4
    assert set(table.cell[table.split == "test"]) == {result.best} and table.chosen.sum() == 8
    assert table.loc[table.split == "dev", "cell_score"].notna().all()
    dev, test = (table[(table.cell == result.best) & (table.split == s)].set_index(["steered", "direction"]) for s in ("dev", "test"))
    # the test run edits the same sets: the same stability numbers, other dilemmas
    for column in ("set_size", "half_jaccard", "mirror_overlap", "layer_profile"):
        assert dev[column].equals(test[column]), column
    assert (table.band_low < table.band_high).all() and table.prompted_shift.notna().all()
    assert table.half_jaccard_chance.between(0, 1).all() and table.mirror_p.between(0, 1).all()
    assert set(table.mirror.dropna()) == {"Conservation:-", "Conservation:+", "Openness_to_Change:-", "Openness_to_Change:+"}
    assert table.layer_profile.str.split().map(len).eq(3).all()  # tiny-llama has 3 layers
    small = table[table.sel == "top_k:5"]
    assert (small.set_size == 5).all() and small.layer_profile.map(lambda s: sum(map(int, s.split()))).eq(5).all()
    assert (folder / "sweep.png").stat().st_size > 10_000
    html, md = (folder / "sweep.html").read_text(), (folder / "sweep.md").read_text()
    assert "data:image/png;base64," in html and "Choosing rule" in md and result.best in md and "| test |" in md
    assert (folder / "stability" / "scope=question,hook=post" / "half-a.json").exists()
