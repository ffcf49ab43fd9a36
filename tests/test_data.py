"""ValueInsight: counts, balance, near-duplicates, splits, prompts, loaders and malformed files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

import vlens.data as D
from vlens.data.quality import NEAR_DUPLICATE, most_similar, wording
from vlens.values import BASIC_VALUES, DIMENSIONS, REFINED_VALUES, SCORING_KEY, dimension


@pytest.fixture(scope="module")
def data():
    return D.load_value_data()


def test_counts_and_balance(data):
    for dim, spec in DIMENSIONS.items():
        for pole in "+-":
            descs = [d for d in data.descriptions if d["dimension"] == dim and d["pole"] == pole]
            assert len(descs) == 80
            per_value = Counter(d["value"] for d in descs)
            assert set(per_value) == set(spec.basic_values)
            assert max(per_value.values()) - min(per_value.values()) <= 1  # spread evenly
        qs = [q for q in data.questions if q["dimension"] == dim]
        assert len(qs) >= 400
        assert sum(q["split"] == "test" for q in qs) >= 100
        domains = Counter(q["domain"] for q in qs)
        assert len(domains) == 11 and min(domains.values()) >= 30
        assert len([f for f in data.dilemmas if f["dimension"] == dim]) >= 60
    assert len(data.descriptions) == 640 and len(data.questions) >= 1600
    per_refined = Counter(p["value"] for p in data.portrait_items)
    assert set(per_refined) == set(REFINED_VALUES) and min(per_refined.values()) >= 2
    per_basic = Counter((p["basic_value"], p["keyed"]) for p in data.portrait_items)
    assert per_basic == {(v, k): 4 for v in BASIC_VALUES for k in "+-"}  # 8 per basic value, half reverse-keyed
    assert len(data.neutral_text) >= 40


def test_ids_unique_and_text_nonempty(data):
    ids = [r["id"] for recs in data.parts().values() for r in recs]
    assert len(ids) == len(set(ids))
    for recs in data.parts().values():
        for r in recs:
            assert all(isinstance(v, str) and v.strip() for k, v in r.items() if k != "subvalue")


@pytest.mark.parametrize("part", ["descriptions", "questions", "dilemmas", "portrait_items", "neutral_text"])
def test_no_near_duplicates(data, part):
    recs = data.parts()[part]
    groups = {r.get("dimension", "all") for r in recs}
    for g in groups:
        # A minimal pair shares its frame by design: one pole at a time for descriptions.
        for pole in ("+", "-") if part == "descriptions" else (None,):
            sub = [r for r in recs if r.get("dimension", "all") == g and r.get("pole") == pole]
            texts = [r.get("text") or r["context"] for r in sub]
            jac, i, j = most_similar(texts)
            assert jac < NEAR_DUPLICATE, f"{sub[i]['id']} and {sub[j]['id']} are near-duplicates (3-gram Jaccard {jac:.2f})"


@pytest.mark.parametrize("part,field", [("questions", "text"), ("dilemmas", "context")])
def test_no_near_duplicates_across_dimensions(data, part, field):
    recs = data.parts()[part]
    jac, i, j = most_similar([r[field] for r in recs])
    assert jac < NEAR_DUPLICATE, f"{recs[i]['id']} and {recs[j]['id']} are near-duplicates (3-gram Jaccard {jac:.2f})"


def test_dilemmas_share_no_context_with_questions(data):
    jac, _, _ = most_similar([f["context"] for f in data.dilemmas], [q["text"] for q in data.questions])
    assert jac < NEAR_DUPLICATE


def test_poles_are_worded_alike(data):
    """Negations, hedges and length must not give a pole away (method.md: the probe's wording confound)."""
    for dim in DIMENSIONS:
        plus = wording([d["text"] for d in data.descriptions if d["dimension"] == dim and d["pole"] == "+"])
        minus = wording([d["text"] for d in data.descriptions if d["dimension"] == dim and d["pole"] == "-"])
        assert abs(plus.negation_share - minus.negation_share) <= 0.06
        assert abs(plus.hedge_share - minus.hedge_share) <= 0.06
        assert abs(plus.mean_words - minus.mean_words) <= 2
        fc = [f for f in data.dilemmas if f["dimension"] == dim]
        op, om = wording([f["option_plus"] for f in fc]), wording([f["option_minus"] for f in fc])
        assert abs(op.negation_share - om.negation_share) <= 0.06 and abs(op.mean_words - om.mean_words) <= 1.5


def test_splits_are_disjoint_and_prompts_cover_both_poles(data):
    search = {q["id"] for q in data.questions_of("search")}
    test = {q["id"] for q in data.questions_of("test")}
    assert search and test and not search & test
    prompts = D.build_prompts(data, None, template="raw")
    assert len(prompts) >= 15_000
    poles_of = {}
    for p in prompts:
        poles_of.setdefault(p.question_id, set()).add(p.pole)
        assert p.question_id in search
    assert set(poles_of) == search and all(v == {"+", "-"} for v in poles_of.values())
    # deterministic
    again = D.build_prompts(data, None, template="raw")
    assert [p.id for p in again] == [p.id for p in prompts]


def test_pairs_differ_only_in_description(data, tiny_llama):
    for template, model in (("raw", None), ("chat", tiny_llama)):
        prompts = D.build_prompts(data, model, template=template, max_pairs=3)
        for plus, minus in zip(prompts[::2], prompts[1::2], strict=True):
            assert plus.pair_id == minus.pair_id and (plus.pole, minus.pole) == ("+", "-")
            assert plus.text[plus.shared_start :] == minus.text[minus.shared_start :]
            desc = {d["id"]: d["text"] for d in data.descriptions}
            assert plus.text[: plus.shared_start].endswith(desc[plus.description_id])
            assert minus.text[: minus.shared_start].endswith(desc[minus.description_id])
    with pytest.raises(ValueError, match="needs the model"):
        D.build_prompts(data, None, template="chat", max_pairs=1)


def test_max_pairs_spreads_over_questions(data):
    prompts = D.build_prompts(data, None, template="raw", dimensions=["oc"], max_pairs=50)
    assert len(prompts) == 100 and len({p.question_id for p in prompts}) == 50


def test_load_valueinsight_dataset_dict(data):
    dd = D.load_valueinsight()
    assert set(dd) == {"descriptions", "search", "test", "dilemmas", "portrait_items", "neutral_text"}
    assert dd["descriptions"].num_rows == 640 and dd["test"].num_rows == len(data.questions_of("test"))
    assert D.prompts_dataset(D.build_prompts(data, None, template="raw", max_pairs=2)).num_rows == 16


def test_user_files_round_trip(tmp_path, data):
    folder = tmp_path / "mine"
    for part, recs in data.parts().items():
        D.write_records(folder / f"{part}.jsonl", recs[:20] if part != "descriptions" else recs)
    back = D.load_value_data(folder)
    for part, recs in back.parts().items():
        assert recs == (data.parts()[part][:20] if part != "descriptions" else data.parts()[part])
    # CSV works too
    import csv

    with open(tmp_path / "q.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "dimension", "domain", "split", "group", "text"])
        w.writeheader()
        w.writerows(data.questions[:5])
    assert D.read_records(tmp_path / "q.csv", "questions") == data.questions[:5]


def test_author_layout(tmp_path):
    (tmp_path / "search").mkdir()
    (tmp_path / "test").mkdir()
    lines = [json.dumps({"Conservation": "I keep to the old ways."}), json.dumps({"Conservation_reversed": "I try new ways."})]
    (tmp_path / "value_descrption.json").write_text("\n".join(lines))
    (tmp_path / "search" / "Conservation.json").write_text(json.dumps({"question": "You may move abroad. What do you do?"}))
    (tmp_path / "test" / "Conservation.json").write_text(json.dumps({"question": "A new rule comes. Do you follow it?", "question_id": 7}))
    data = D.load_author_layout(tmp_path)
    assert [d["pole"] for d in data.descriptions] == ["+", "-"]
    assert [q["split"] for q in data.questions] == ["search", "test"]
    assert D.load_valueinsight(tmp_path, layout="authors")["test"][0]["id"] == "test.Conservation.7"
    (tmp_path / "value_descrption.json").write_text(json.dumps({"Kindness": "x"}))
    with pytest.raises(D.DataFormatError, match=r"value_descrption.json, line 1: unknown dimension key 'Kindness'"):
        D.load_author_layout(tmp_path)


@pytest.mark.parametrize(
    "line,problem",
    [
        ({"id": "a", "dimension": "Conservation", "text": "x"}, "missing field 'context'"),
        ({"id": "a", "dimension": "Kindness", "context": "c", "option_plus": "p", "option_minus": "m"}, "unknown dimension 'Kindness'"),
        ({"id": "a", "dimension": "Conservation", "context": " ", "option_plus": "p", "option_minus": "m"}, "field 'context' is empty"),
        ({"id": "a", "dimension": "Conservation", "context": 3, "option_plus": "p", "option_minus": "m"}, "field .context. must be a string, got int"),
    ],
)
def test_malformed_dilemma_files_are_rejected(tmp_path, line, problem):
    good = {"id": "ok", "dimension": "Conservation", "context": "c", "option_plus": "p", "option_minus": "m"}
    path = tmp_path / "dilemmas.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(D.DataFormatError, match=f"dilemmas.jsonl, line 2: {problem}"):
        D.read_records(path, "dilemmas")


def test_other_malformed_files_are_rejected(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "t", "value": "Kindness"}) + "\n")
    with pytest.raises(D.DataFormatError, match="line 1: unknown value 'Kindness'"):
        D.read_records(path, "portrait_items")
    path.write_text(json.dumps({"id": "a", "text": "t", "value": "Face"}) + "\n" + json.dumps({"id": "a", "text": "u", "value": "Face"}) + "\n")
    with pytest.raises(D.DataFormatError, match="line 2: duplicate id 'a' \\(first on line 1\\)"):
        D.read_records(path, "portrait_items")
    path.write_text('{"id": "a", "text": \n')
    with pytest.raises(D.DataFormatError, match="line 1: not valid JSON"):
        D.read_records(path, "portrait_items")
    path.write_text(json.dumps({"id": "a", "dimension": "Conservation", "pole": "+", "value": "Security", "text": "t", "split": "x"}))
    with pytest.raises(D.DataFormatError, match="line 1: unknown pole|unknown split"):
        D.read_records(path, "questions")


def test_a_value_outside_its_dimension_is_refused(tmp_path, small_data):
    """Issue 15: descriptions whose value does not belong to their dimension were accepted."""
    rec = {"id": "a", "dimension": "Conservation", "pole": "+", "value": "Power", "text": "I like being in charge."}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(D.DataFormatError, match="line 1: value 'Power' does not belong to Conservation .pole \\+.; expected one of Security"):
        D.read_records(path, "descriptions")
    with pytest.raises(D.DataFormatError, match="description 'a': value 'Power' does not belong to Conservation"):
        D.ValueData([*small_data.descriptions, rec], small_data.questions)
    opposite = rec | {"pole": "-", "value": "Self-Direction"}  # a - description may name the opposite dimension's value
    assert D.ValueData([opposite], small_data.questions).descriptions == [opposite]


def test_taxonomy():
    assert dimension("oc").name == "Openness_to_Change" and dimension("self enhancement").name == "Self-Enhancement"
    assert SCORING_KEY["Hedonism"] == ("Openness_to_Change", "Self-Enhancement")
    assert DIMENSIONS["Conservation"].opposite == "Openness_to_Change"
    with pytest.raises(ValueError, match="unknown dimension"):
        dimension("Kindness")
