"""ValueInsight v2: the quality gates on the shipped files (issue 14), each gate on a constructed example with a
known answer, splits by scenario group, sizes, the v2 schema and loaders, and v1 data and results still loading."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

import vlens.data as D
from vlens.data import quality as Q
from vlens.data.loaders import SHIPPED_DIR, ValueData
from vlens.instruments.portrait import portrait_scores
from vlens.values import BASIC_VALUES, DIMENSIONS

ROOT = Path(__file__).resolve().parents[1]
V1_SHA256 = "cc0f6145f8b2c240a7a7a4c88ee01e5282d1bc0657275c461c362a648d50c8d2"  # its fingerprint (v1 data card)


@pytest.fixture(scope="module")
def data():
    return D.load_value_data()


@pytest.fixture(scope="module")
def gates(data):
    return Q.gates(data)


# ---------------------------------------------------------------------------------------------- gates on the files


def _each_gate(gates):
    for dim, kinds in gates.per_dimension.items():
        for kind, g in kinds.items():
            yield f"{dim} {kind}", g


def test_style_only_classifier_is_near_chance(gates):
    """Issue 14: leave-one-pair-out naive Bayes on function words, punctuation and openers <= 0.60, per dimension,
    for descriptions and for dilemma options (v1: up to 0.77)."""
    seen = set()
    for name, g in _each_gate(gates):
        seen.add(name)
        assert g.style.accuracy <= Q.MAX_STYLE_ACCURACY, (
            f"{name}: style-only accuracy {g.style.accuracy:.3f} (null p95 {g.style.null_p95:.3f})")
        assert len(g.style.null) >= 30 and 0.3 < g.style.null_p95 < 0.75
    assert len(seen) == 8


def test_no_non_content_word_gives_a_pole_away(gates):
    for name, g in _each_gate(gates):
        w = g.worst_word
        assert w is not None and abs(w.z) <= Q.MAX_LOG_ODDS_Z, f"{name}: {w}"


def test_framing_cues_are_balanced_between_poles(gates):
    for name, g in _each_gate(gates):
        off = [(c.cue, c.plus, c.minus) for c in g.cues if not c.passed]
        assert not off, f"{name}: cue counts (+, -) differ by more than 10%: {off}"


def test_near_duplicates_share_a_group_and_never_cross_splits(gates):
    nd = gates.near_duplicates
    assert nd.threshold == Q.NEAR_DUPLICATE_TFIDF and nd.pairs_above > 0
    assert not nd.not_sharing_group, nd.not_sharing_group[:5]
    assert not nd.across_splits, nd.across_splits[:5]


def test_minimal_pairs_are_complete_and_minimal(data):
    members = defaultdict(list)
    for d in data.descriptions:
        members[d["pair"]].append(d)
    assert len(members) == 320
    for pair, ds in members.items():
        plus, minus = sorted(ds, key=lambda d: d["pole"] != "+")
        assert (plus["pole"], minus["pole"]) == ("+", "-"), pair
        for key in ("dimension", "value", "subvalue", "split", "group"):
            assert plus[key] == minus[key], (pair, key)
    gaps = Q.pair_length_gaps(data)
    assert len(gaps) == 320 + len(data.dilemmas)
    assert max(gaps.values()) <= Q.MAX_PAIR_LENGTH_GAP, max(gaps.items(), key=lambda kv: kv[1])


def test_shipped_gate_numbers_are_the_measured_ones(data, gates):
    """quality.json (written by scripts/build_valueinsight_v2.py) holds the numbers of the shipped files."""
    saved = json.loads((SHIPPED_DIR / "quality.json").read_text())
    assert saved["sha256"] == data.sha256 and saved["data_version"] == 2 and saved["passed"] is gates.passed is True
    for dim, kinds in gates.per_dimension.items():
        for kind, g in kinds.items():
            assert saved["per_dimension"][dim][kind]["style"]["accuracy"] == pytest.approx(g.style.accuracy)


# ---------------------------------------------------------------------------------------------- splits and sizes


def test_a_group_never_straddles_search_and_held_out(data):
    side = defaultdict(set)
    for d in data.descriptions + data.questions + data.dilemmas:
        assert d.get("group"), d["id"]
        side[d["group"]].add("search" if d["split"] == "search" else "held out")
    straddle = [g for g, s in side.items() if len(s) > 1]
    assert not straddle, straddle[:5]
    fc_side = defaultdict(set)
    for f in data.dilemmas:
        fc_side[f["group"]].add(f["split"])
    assert all(len(s) == 1 for s in fc_side.values())  # dev and test do not share a scenario either


def test_sizes(data):
    assert data.version == 2 and (SHIPPED_DIR / "VERSION").read_text().strip() == "2"
    assert len(data.descriptions) == 640
    for dim in DIMENSIONS:
        for pole in "+-":
            descs = [d for d in data.descriptions if d["dimension"] == dim and d["pole"] == pole]
            n_test = sum(d["split"] == "test" for d in descs)
            assert len(descs) == 80 and 18 <= n_test <= 22  # ~60/20 per pole
        qs = [q for q in data.questions if q["dimension"] == dim]
        assert len(qs) >= 420 and 95 <= sum(q["split"] == "test" for q in qs) <= 125
        fc = [f for f in data.dilemmas if f["dimension"] == dim]
        assert {f["split"] for f in fc} <= {"dev", "test"} and sum(f["split"] == "test" for f in fc) >= 60
        assert any(f["split"] == "dev" for f in fc)
    assert 1150 <= len(data.questions_of("search")) <= 1330  # roughly v1's 1,240 / 440
    items = data.portrait_items
    assert len(items) >= 80 and sum(i["keyed"] == "-" for i in items) == len(items) // 2
    assert Counter(i["basic_value"] for i in items) == {v: 8 for v in BASIC_VALUES}


def test_build_script_reproduces_the_shipped_splits(tmp_path, data):
    """The assembly is deterministic: on the shipped records it assigns the same groups and splits again."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_v2", ROOT / "scripts" / "build_valueinsight_v2.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("split", "group")} for r in recs]  # noqa: E731
    raw = ValueData(strip(data.descriptions), strip(data.questions), strip(data.dilemmas))
    group_of, _ = build.scenario_groups(raw)
    side, fc_side = build.assign_splits(raw, group_of, seed=json.loads((SHIPPED_DIR / "quality.json").read_text())["seed"])
    for d in data.descriptions + data.questions:
        assert group_of[d["id"]] == d["group"] and (side[d["group"]] == "search") == (d["split"] == "search"), d["id"]
    for f in data.dilemmas:
        assert fc_side[f["group"]] == f["split"], f["id"]


# ---------------------------------------------------------------------------------------------- each gate, known answers


def test_style_classifier_finds_a_planted_cue():
    frames = ["I walk to {} every day.", "On Sundays I visit {}.", "My plan is to see {} soon.", "We often go to {}."]
    places = ["the park", "the market", "the coast", "the hills", "the river", "the old town", "the museum", "the lake"]
    texts, labels, groups = [], [], []
    for k, (frame, place) in enumerate((f, p) for f in frames for p in places):
        base = frame.format(place)
        texts += [base.replace(".", "; indeed."), base]  # the + text of every pair carries "; indeed"
        labels += ["+", "-"]
        groups += [k, k]
    res = Q.style_accuracy(texts, labels, groups, n_shuffles=40, seed=0)
    assert res.accuracy == 1.0 and res.passed is False and res.n_groups == 32
    assert len(res.null) == 40 and res.null_p95 < 0.8  # shuffled within pairs, the cue no longer predicts


def test_leaving_one_text_of_a_minimal_pair_out_gives_accuracy_zero():
    """Why the leave-out holds out whole pairs: with identical partners and no cue, holding out one text leaves
    its partner, with the other label, in training, so every prediction is wrong; a whole pair held out ties."""
    texts = [t for t in ("I do it.", "We do it, too!", "They did; so?", "Would you?") for _ in range(2)]
    labels = ["+", "-"] * 4
    assert Q.style_accuracy(texts, labels).accuracy == 0.0
    assert Q.style_accuracy(texts, labels, [0, 0, 1, 1, 2, 2, 3, 3]).accuracy == 0.5  # a tie counts half


def test_style_accuracy_refuses_bad_input():
    with pytest.raises(ValueError, match="exactly two labels"):
        Q.style_accuracy(["a", "b"], ["+", "+"])
    with pytest.raises(ValueError, match="same length"):
        Q.style_accuracy(["a", "b"], ["+"])


def test_log_odds_by_hand():
    """plus "x y", minus "y y", alpha 4: a_x = 1, a_y = 3; delta_x = log(2/4) - log(1/5), var = 1/2 + 1/1."""
    res = {r.word: r for r in Q.log_odds(["x y"], ["y y"], alpha=4.0)}
    assert res["x"].delta == pytest.approx(math.log(2.5))
    assert res["x"].z == pytest.approx(math.log(2.5) / math.sqrt(1.5))
    swapped = {r.word: r for r in Q.log_odds(["y y"], ["x y"], alpha=4.0)}
    assert res["y"].z < 0 and swapped["x"].z == pytest.approx(-res["x"].z) and swapped["y"].z == pytest.approx(-res["y"].z)
    assert all(r.z == 0 for r in Q.log_odds(["the cat", "a dog"], ["a dog", "the cat"]))
    planted = Q.worst_non_content_word(["I want this one."] * 100, ["I take this one."] * 100)
    assert planted.word == "want" and planted.z > Q.MAX_LOG_ODDS_Z
    with pytest.raises(ValueError, match="alpha"):
        Q.log_odds(["a"], ["b"], alpha=0)


def test_cue_counts_and_the_ten_percent_rule():
    counts = {c.cue: (c.plus, c.minus) for c in Q.cue_counts(
        ["I like tea; I prefer it because it is warm.", "It feels right to me, and I would stay."],
        ["My own way is best.", "I could go, so that my friends can see my own home."])}  # fmt: skip
    assert counts["like/enjoy/prefer/love"] == (3, 0) and counts["because/so that"] == (1, 1)
    assert counts["semicolons"] == (1, 0) and counts["modal verbs"] == (1, 2)
    assert counts["own"] == (0, 2) and counts["my"] == (0, 3)
    rule = lambda a, b: Q.CueCount("x", a, b).passed  # noqa: E731
    assert rule(10, 9) and rule(1, 0) and rule(30, 27) and rule(0, 0)
    assert not rule(2, 0) and not rule(20, 17) and not rule(9, 7)


def test_rare_word_tfidf_finds_retold_scenarios():
    filler = [f"You plan item{i} and thing{i} with the team at work. What do you do?" for i in range(60)]
    texts = filler + ["A friend invites you paragliding over Lisbon at dawn. Do you go?",
                      "At dawn over Lisbon, you could try paragliding with a friend. Will you?"]  # fmt: skip
    pairs = Q.tfidf_pairs(texts, floor=0.1)
    assert pairs[0][1:] == (60, 61) and pairs[0][0] > 0.9
    assert all(s < 0.1 or (i, j) == (60, 61) for s, i, j in pairs)  # "team", "work" are in every text: not rare


def test_connected_groups():
    assert Q.connected_groups(6, [(0, 1), (1, 2), (5, 4)]) == [0, 0, 0, 1, 2, 2]


def _tiny_v2(extra_question: str, *, group: str, split: str) -> ValueData:
    descs = [{"id": f"co.{p}.1", "pair": "co.pair.1", "dimension": "Conservation", "pole": s, "value": "Security",
              "subvalue": "", "split": "search", "group": "g1", "text": t}
             for p, s, t in (("plus", "+", "I keep a spare key with my neighbour."),
                             ("minus", "-", "I keep no spare key at all."))]  # fmt: skip
    questions = [{"id": "co.q.1", "dimension": "Conservation", "domain": "travel", "split": "search", "group": "g2",
                  "text": "A friend invites you paragliding over Lisbon at dawn. Do you go?"},
                 {"id": "oc.q.1", "dimension": "Openness_to_Change", "domain": "travel", "split": split, "group": group,
                  "text": extra_question}]  # fmt: skip
    return ValueData(descs, questions)


def test_near_duplicates_flags_retellings_in_other_groups_and_splits():
    retold = "At dawn over Lisbon, you could try paragliding with a friend. Will you?"
    bad = Q.near_duplicates(_tiny_v2(retold, group="g3", split="test"), threshold=0.3)
    assert [p[:2] for p in bad.not_sharing_group] == [("co.q.1", "oc.q.1")] and not bad.passed
    assert [p[:2] for p in bad.across_splits] == [("co.q.1", "oc.q.1")]
    good = Q.near_duplicates(_tiny_v2(retold, group="g2", split="search"), threshold=0.3)
    assert good.passed and good.pairs_above >= 1 and not good.across_splits
    unrelated = Q.near_duplicates(_tiny_v2("Your bank closes its branch. How do you bank now?", group="g3", split="test"),
                                  threshold=0.3)  # fmt: skip
    assert unrelated.passed and not unrelated.across_splits


def test_pair_length_gaps():
    data = _tiny_v2("Anything?", group="g3", split="test")
    data.dilemmas = [{"id": "co.fc.1", "dimension": "Conservation", "context": "c", "option_plus": "one two three",
                      "option_minus": "one two three four five six seven"}]  # fmt: skip
    assert Q.pair_length_gaps(data) == {"co.pair.1": 1, "co.fc.1": 4}


def test_gate_table_prints_every_dimension(data, gates):
    table = Q.gate_table(gates)
    for dim in DIMENSIONS:
        assert table.count(dim) == 2
    assert "near-duplicates" in table and "NO" not in table


# ---------------------------------------------------------------------------------------------- schema v2, prompts


def _desc(i, pole, pair, **extra):
    return {"id": f"co.{i}", "pair": pair, "dimension": "Conservation", "pole": pole, "value": "Security",
            "subvalue": "", "text": f"I keep things {i}."} | extra  # fmt: skip


def test_a_v2_description_without_its_partner_is_refused(tmp_path):
    q = [{"id": "q", "dimension": "Conservation", "split": "search", "text": "What do you do?"}]
    with pytest.raises(D.DataFormatError, match="pair 'p2' .'co.3'. needs exactly one '\\+' and one '-'"):
        ValueData([_desc(1, "+", "p1"), _desc(2, "-", "p1"), _desc(3, "+", "p2")], q)
    with pytest.raises(D.DataFormatError, match="has no 'pair' while others have one"):
        ValueData([_desc(1, "+", "p1"), _desc(2, "-", "p1"), _desc(3, "+", None)], q)
    with pytest.raises(D.DataFormatError, match="straddles split 'search' and 'test'"):
        ValueData([_desc(1, "+", "p1", split="search"), _desc(2, "-", "p1", split="test")], q)
    folder = tmp_path / "v2"
    D.write_records(folder / "descriptions.jsonl", [_desc(1, "+", "p1"), _desc(3, "+", "p2"), _desc(2, "-", "p1")])
    D.write_records(folder / "questions.jsonl", q)
    with pytest.raises(D.DataFormatError, match="pair 'p2'"):
        D.load_value_data(folder)
    D.write_records(folder / "descriptions.jsonl", [_desc(1, "+", "p1"), _desc(2, "-", "p1")])
    assert D.load_value_data(folder).version == 2
    (folder / "VERSION").write_text("1\n")
    with pytest.raises(D.DataFormatError, match="data version 1 but the descriptions carry 'pair' ids"):
        D.load_value_data(folder)
    (folder / "VERSION").write_text("3\n")
    with pytest.raises(D.DataFormatError, match="VERSION: expected one of 1, 2, got '3'"):
        D.load_value_data(folder)


@pytest.mark.parametrize(
    "kind,row,problem",
    [
        ("dilemmas", {"id": "a", "dimension": "Conservation", "split": "search", "context": "c", "option_plus": "p",
                      "option_minus": "m"}, "unknown dilemma split 'search' \\(expected one of: dev, test\\)"),
        ("portrait_items", {"id": "a", "text": "t", "value": "Face", "keyed": "reverse"}, "unknown keying 'reverse'"),
        ("descriptions", {"id": "a", "dimension": "Conservation", "pole": "+", "value": "Security", "text": "t",
                          "split": "dev"}, "unknown split 'dev'"),
    ],
)  # fmt: skip
def test_v2_fields_are_validated(tmp_path, kind, row, problem):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(D.DataFormatError, match=f"line 1: {problem}"):
        D.read_records(path, kind)


def test_prompts_pair_each_question_with_a_minimal_pair_of_its_split(data):
    by_id = {d["id"]: d for d in data.descriptions}
    for split in ("search", "test"):
        questions = {q["id"] for q in data.questions_of(split)}
        prompts = D.build_prompts(data, None, split=split, template="raw", max_pairs=40)
        assert len(prompts) == 2 * 40 * 4
        for plus, minus in zip(prompts[::2], prompts[1::2], strict=True):
            a, b = by_id[plus.description_id], by_id[minus.description_id]
            assert a["pair"] == b["pair"] and (a["pole"], b["pole"]) == ("+", "-")
            assert a["split"] == b["split"] == split and plus.question_id in questions
    assert {d["id"] for d in data.descriptions_of("test")} == {d["id"] for d in data.descriptions if d["split"] == "test"}
    assert len(data.dilemmas_of("dev")) + len(data.dilemmas_of("test")) == len(data.dilemmas)
    with pytest.raises(ValueError, match="never in search"):
        data.dilemmas_of("search")
    with pytest.raises(ValueError, match="split must be one of search, test"):
        data.descriptions_of("dev")


def test_a_reverse_keyed_item_counts_negatively():
    """Ratings 6, 6, 3 (mean 5, centred +1, +1, -2). The second Security item is reverse-keyed, so Security is
    (+1 - 1) / 2 = 0, not +1; Stimulation stays -2."""
    one_hot = lambda k: torch.log(torch.nn.functional.one_hot(torch.tensor(k - 1), 6).double() + 1e-12)  # noqa: E731
    items = [{"value": "Security-Personal", "basic_value": "Security", "keyed": "+"},
             {"value": "Security-Societal", "basic_value": "Security", "keyed": "-"},
             {"value": "Stimulation", "basic_value": "Stimulation"}]  # fmt: skip
    scores = portrait_scores([one_hot(6), one_hot(6), one_hot(3)], items)
    assert scores["Conservation"] == pytest.approx(0.0, abs=1e-6)
    assert scores["Openness_to_Change"] == pytest.approx(-2.0, abs=1e-6)
    unkeyed = portrait_scores([one_hot(6), one_hot(6), one_hot(3)], [{k: v for k, v in i.items() if k != "keyed"} for i in items])
    assert unkeyed["Conservation"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="'keyed' is '\\+' or '-'"):
        portrait_scores([one_hot(1)], [{"value": "Face", "keyed": "r"}])


# ---------------------------------------------------------------------------------------------- v1 still loads


def test_v1_data_still_loads_and_builds_its_prompts(v1_data_dir):
    v1 = D.load_value_data(v1_data_dir)
    assert v1.version == 1 and v1.sha256 == V1_SHA256  # the same records, no field added
    assert len(v1.descriptions) == 640 and not any("pair" in d for d in v1.descriptions)
    assert v1.descriptions_of("test") == v1.descriptions_of("search") == v1.descriptions  # shared by both splits
    assert v1.dilemmas_of("test") == v1.dilemmas and not v1.dilemmas_of("dev")
    assert all("keyed" not in p for p in v1.portrait_items)
    prompts = D.build_prompts(v1, None, template="raw", dimensions=["oc"], max_pairs=3)
    # v1 pairing (by basic value, seeded) is unchanged: the first prompt of the v1 data card.
    assert prompts[0].id.startswith("oc.q.028|oc.plus.055|oc.minus.057")
    v1_gates = Q.gates(v1, n_shuffles=30)  # the v1 audit's style leaks are found (issue 14: 0.76 / 0.74)
    for dim in ("Self-Enhancement", "Self-Transcendence"):
        assert v1_gates.per_dimension[dim]["descriptions"].style.accuracy > 0.7
    assert not v1_gates.near_duplicates.passed  # v1 has no groups


def test_results_record_the_data_version(tiny_llama, small_data):
    from vlens.locate import locate

    assert small_data.version == 1
    v1 = locate(tiny_llama, small_data, dimensions=["co"], max_pairs=2, selection="top_k:4", progress=False)
    assert v1.stats.meta["dataset_version"] == 1 and v1["Conservation:+"].provenance["dataset_version"] == 1
    descs = [_desc(1, "+", "p1"), _desc(2, "-", "p1")]
    v2 = ValueData(descs, [q for q in small_data.questions if q["dimension"] == "Conservation"])
    located = locate(tiny_llama, v2, max_pairs=2, selection="top_k:4", progress=False)
    assert located["Conservation:-"].provenance["dataset_version"] == 2
    prompts = D.build_prompts(v2, None, template="raw")
    assert locate(tiny_llama, prompts, selection="top_k:4", progress=False).stats.meta["dataset_version"] is None


def test_old_results_without_a_data_version_still_load():
    """Statistics and neuron sets saved before v2 carry no dataset_version; they load and select as before."""
    import vlens
    from vlens.neurons import provenance_of

    golden = ROOT / "tests" / "golden"
    stats = vlens.NeuronStats.load(golden / "stats_question_full")
    assert "dataset_version" not in stats.meta and stats.meta["dataset_sha256"] == V1_SHA256
    assert "dataset_version" not in provenance_of(stats)
    ns = vlens.NeuronSet.load(golden / "set_question_full_Self-Enhancement_plus")
    assert ns.provenance.get("dataset_version") is None and len(ns) > 0
