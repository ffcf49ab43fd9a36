"""Assemble ValueInsight v2 into the package: the writers' minimal pairs and dilemmas, the v1 questions, scenario
groups, splits by group, the reviewers' verdicts and the quality gates.

    python scripts/build_valueinsight_v2.py [--source /work/v2data] [--reviews /work/v2data/reviews] [--seed 0]
    python scripts/build_valueinsight_v2.py --calibrate     # print the 30 pairs nearest the near-duplicate threshold

Steps (deterministic for a given seed):

1. Read ``<source>/<Dimension>/descriptions.jsonl`` and ``dilemmas.jsonl`` (nothing else the writers left there)
   and the questions shipped in the package (v1's 420 per dimension, ids and text kept; old split and group dropped).
2. With review files (one per reviewer, rows ``{"id", "label"}`` for every description and every dilemma option,
   ``"<dilemma id>:plus"`` / ``":minus"``; any ``*.jsonl`` of that shape in the reviews folder), keep an item only when at least 2 labels agree with its intended pole; a
   description pair or a dilemma goes as a whole when one of its texts fails. Then apply ``CORRECTIONS``
   (a few words changed after the review, to balance a framing cue; none changes a stance).
3. Scenario groups: connected components of the graph whose edges are the two descriptions of every pair and every
   two items (descriptions, questions, whole dilemmas; across all files, splits and dimensions) whose rare-word
   TF-IDF cosine is at least ``vlens.data.quality.NEAR_DUPLICATE_TFIDF``.
4. Splits by group: a group is either ``search`` or held out. Every group with a dilemma is held out (dilemmas are
   never in search). The other groups are visited in a seeded order, and one is held out when that brings the
   held-out counts closer to the targets: 1/4 of the description pairs and 440/1,680 of the questions of each
   dimension. Held-out descriptions and questions are ``test``; held-out dilemmas are split ``dev`` / ``test`` by
   group, as many ``dev`` per dimension as leaves at least 60 ``test`` (``--min-test-dilemmas``).
5. Write the package files, ``VERSION`` (2) and ``quality.json`` (the gate numbers, split sizes, review agreement).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

from vlens.data import quality as Q
from vlens.data.loaders import SHIPPED_DIR, ValueData, load_value_data
from vlens.data.schemas import read_records, write_records
from vlens.values import DIMENSIONS

TEST_PAIR_SHARE = 0.25  # ~60/20 pairs per pole
TEST_QUESTION_SHARE = 440 / 1680  # v1's 1,240 / 440
# Issue 14 asks for at least 60 test dilemmas per dimension; with ~70 written per dimension that leaves ~10 for
# dev (not the 1/3 first planned, which would leave 47 for test).
MIN_TEST_DILEMMAS = 60
# Word-level corrections made at assembly, after the review (none changes a stance): the writers' dilemma options
# used "my" 28 / 22 times (Self-Enhancement + / -) and 7 / 9 times (Self-Transcendence), outside the 10% cue gate.
# id -> field -> (old text, new text); the old text must match, so a rewritten source fails loudly.
CORRECTIONS: dict[str, dict[str, tuple[str, str]]] = {
    "se.fc.034": {"option_minus": ("the lifeguard volunteers at the lake.", "the lifeguard volunteers at my local lake.")},
    "se.fc.039": {"option_minus": ("around the night shift's needs.", "around my night-shift colleagues' needs.")},
    "se.fc.056": {"option_minus": ("who ran the corner shop here.", "who ran my corner shop here.")},
    "se.fc.065": {"option_plus": ("so my street's preferred option", "so our street's preferred option")},
    "st.fc.052": {"option_minus": ("where my side can plan", "where our side can plan")},
}
DESCRIPTION_FIELDS = ("id", "pair", "dimension", "pole", "value", "subvalue", "split", "group", "text")
QUESTION_FIELDS = ("id", "dimension", "domain", "split", "group", "text")
DILEMMA_FIELDS = ("id", "dimension", "domain", "subvalue", "split", "group", "context", "option_plus", "option_minus")


def read_sources(source: Path, package: Path) -> tuple[list[dict], list[dict], list[dict]]:
    descriptions, dilemmas = [], []
    for dim in DIMENSIONS:
        folder = source / dim
        for name, out in (("descriptions", descriptions), ("dilemmas", dilemmas)):
            path = folder / f"{name}.jsonl"
            if not path.exists():
                sys.exit(f"{path} is missing: every dimension needs descriptions.jsonl and dilemmas.jsonl")
            out += read_records(path, name)
    questions = [{k: q[k] for k in ("id", "dimension", "domain", "text")}
                 for f in sorted((package / "questions").glob("*.jsonl")) for q in read_records(f, "questions")]  # fmt: skip
    return descriptions, questions, dilemmas


def correct(records: list[dict]) -> None:
    """Apply :data:`CORRECTIONS` in place."""
    by_id = {r["id"]: r for r in records}
    for rid, fields in CORRECTIONS.items():
        for key, (old, new) in fields.items():
            if rid not in by_id or old not in by_id[rid][key]:
                sys.exit(f"correction of {rid} {key}: {old!r} not found; the source changed, review CORRECTIONS")
            by_id[rid][key] = by_id[rid][key].replace(old, new)


def read_reviews(folder: Path | None) -> dict[str, list[str]] | None:
    """id -> the labels the reviewers gave it, or None when there are no review files. A review file is any
    ``*.jsonl`` in ``folder`` whose rows are ``{"id": ..., "label": "+" | "-" | "?"}`` (one file per reviewer);
    other files there (packets, raw answers) are skipped."""
    files = sorted(folder.glob("*.jsonl")) if folder and folder.is_dir() else []
    labels: dict[str, list[str]] = defaultdict(list)
    n_files = 0
    for f in files:
        rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not rows or not all(isinstance(r, dict) and set(r) == {"id", "label"} for r in rows):
            continue
        n_files += 1
        for lineno, row in enumerate(rows, 1):
            if row["label"] not in ("+", "-", "?"):
                sys.exit(f"{f}, row {lineno}: label must be '+', '-' or '?', got {row['label']!r}")
            labels[str(row["id"])].append(row["label"])
    return dict(labels) if n_files else None


def review(descriptions: list[dict], dilemmas: list[dict], labels: dict[str, list[str]] | None) -> tuple[list, list, dict]:
    """Keep what at least 2 reviewers labelled with the intended pole; the agreement numbers for the data card."""
    if labels is None:
        return descriptions, dilemmas, {"reviewed": False}
    intended = {d["id"]: d["pole"] for d in descriptions}
    intended |= {f"{f['id']}:{side}": pole for f in dilemmas for side, pole in (("plus", "+"), ("minus", "-"))}
    agree = {i: sum(lab == pole for lab in labels.get(i, [])) for i, pole in intended.items()}
    kept_ids = {i for i, n in agree.items() if n >= 2}
    bad_pairs = {d["pair"] for d in descriptions if d["id"] not in kept_ids}
    bad_dilemmas = {f["id"] for f in dilemmas if not {f"{f['id']}:plus", f"{f['id']}:minus"} <= kept_ids}
    given = [(lab, intended[i]) for i in intended for lab in labels.get(i, [])]
    n_reviewers = max((len(v) for v in labels.values()), default=0)
    stats = {
        "reviewed": True, "reviewers": n_reviewers, "items": len(intended), "labels": len(given),
        "label_agreement": round(sum(a == b for a, b in given) / max(len(given), 1), 4),
        "unanimous_items": sum(n == n_reviewers for n in agree.values()), "majority_items": len(kept_ids),
        "unlabelled_items": sum(i not in labels for i in intended), "question_marks": sum(a == "?" for a, _ in given),
        "dropped_pairs": sorted(bad_pairs), "dropped_dilemmas": sorted(bad_dilemmas),
        "per_dimension": {},
    }  # fmt: skip
    for dim in DIMENSIONS:
        prefix = DIMENSIONS[dim].short + "."
        mine = [(lab, intended[i]) for i in intended if i.startswith(prefix) for lab in labels.get(i, [])]
        stats["per_dimension"][dim] = round(sum(a == b for a, b in mine) / max(len(mine), 1), 4)
    return ([d for d in descriptions if d["pair"] not in bad_pairs], [f for f in dilemmas if f["id"] not in bad_dilemmas],
            stats)  # fmt: skip


def scenario_groups(data: ValueData) -> tuple[dict[str, str], list[tuple[float, Q.Item, Q.Item]]]:
    """item id -> group id, and the near-duplicate pairs (score, item, item) that made them."""
    items = Q.items_of(data)
    index = {it.id: i for i, it in enumerate(items)}
    near = Q.tfidf_pairs([it.text for it in items], floor=Q.NEAR_DUPLICATE_TFIDF)
    partners: dict[str, list[int]] = defaultdict(list)
    for d in data.descriptions:
        partners[d["pair"]].append(index[d["id"]])
    edges = [(i, j) for _, i, j in near] + [tuple(p) for p in partners.values()]
    component = Q.connected_groups(len(items), edges)
    # Groups are numbered by their smallest item id, so the numbering does not depend on the order of the files.
    first: dict[int, str] = {}
    for it, c in zip(items, component, strict=True):
        first[c] = min(first.get(c, it.id), it.id)
    number = {c: k for k, c in enumerate(sorted(first, key=first.__getitem__), 1)}
    return {it.id: f"g{number[c]:04d}" for it, c in zip(items, component, strict=True)}, [(s, items[i], items[j]) for s, i, j in near]


def _closer(target: list[float], have: list[float], add: list[float]) -> bool:
    before = sum((t - h) ** 2 for t, h in zip(target, have, strict=True))
    return sum((t - h - a) ** 2 for t, h, a in zip(target, have, add, strict=True)) < before


def assign_splits(data: ValueData, group_of: dict[str, str], seed: int, min_test_dilemmas: int = MIN_TEST_DILEMMAS,
                  ) -> tuple[dict[str, str], dict[str, str]]:  # fmt: skip
    """group -> "search" / "held" for descriptions and questions, and group -> "dev" / "test" for held-out dilemmas."""
    dims = list(DIMENSIONS)
    size: dict[str, list[float]] = defaultdict(lambda: [0.0] * (2 * len(dims)))  # pairs per dim, questions per dim
    for d in data.descriptions:
        size[group_of[d["id"]]][dims.index(d["dimension"])] += 0.5  # two descriptions make one pair
    for q in data.questions:
        size[group_of[q["id"]]][len(dims) + dims.index(q["dimension"])] += 1
    n_pairs = Counter(d["dimension"] for d in data.descriptions)
    n_questions = Counter(q["dimension"] for q in data.questions)
    target = [TEST_PAIR_SHARE * n_pairs[d] / 2 for d in dims] + [TEST_QUESTION_SHARE * n_questions[d] for d in dims]
    with_dilemma = {group_of[f["id"]] for f in data.dilemmas}
    groups = sorted(set(group_of.values()))
    side = {g: "held" for g in groups if g in with_dilemma}
    have = [sum(size[g][k] for g in side) for k in range(len(target))]
    rest = [g for g in groups if g not in side]
    random.Random(seed).shuffle(rest)
    for g in rest:
        if _closer(target, have, size[g]):
            side[g] = "held"
            have = [h + a for h, a in zip(have, size[g], strict=True)]
        else:
            side[g] = "search"
    # Dilemmas: dev / test by group among the held-out groups.
    fc_size: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(dims))
    for f in data.dilemmas:
        fc_size[group_of[f["id"]]][dims.index(f["dimension"])] += 1
    n_fc = Counter(f["dimension"] for f in data.dilemmas)
    fc_target = [max(0, n_fc[d] - min_test_dilemmas) for d in dims]
    fc_groups = sorted(with_dilemma)
    random.Random(seed + 1).shuffle(fc_groups)
    fc_side, fc_have = {}, [0.0] * len(dims)
    for g in fc_groups:  # a group goes to dev only while no dimension's dev count passes its target
        if any(fc_size[g]) and all(h + a <= t for h, a, t in zip(fc_have, fc_size[g], fc_target, strict=True)):
            fc_side[g] = "dev"
            fc_have = [h + a for h, a in zip(fc_have, fc_size[g], strict=True)]
        else:
            fc_side[g] = "test"
    return side, fc_side


def calibrate(data: ValueData, n: int = 30) -> None:
    """The n item pairs nearest the threshold (description pair partners left out): read them and decide."""
    items = Q.items_of(data)
    pair_of = {d["id"]: d["pair"] for d in data.descriptions}
    near = [(s, items[i], items[j]) for s, i, j in Q.tfidf_pairs([it.text for it in items], floor=0.2)
            if pair_of.get(items[i].id, "a") != pair_of.get(items[j].id, "b")]  # fmt: skip
    th = Q.NEAR_DUPLICATE_TFIDF
    for s, a, b in sorted(sorted(near, key=lambda p: abs(p[0] - th))[:n], key=lambda p: -p[0]):
        print(f"--- {s:.3f}  {a.id} / {b.id}\n    {a.text}\n    {b.text}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=Path("/work/v2data"), help="the writers' folder (one per dimension)")
    p.add_argument("--reviews", type=Path, default=None, help="folder of review files (default SOURCE/reviews)")
    p.add_argument("--out", type=Path, default=SHIPPED_DIR, help="the package's data folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-test-dilemmas", type=int, default=MIN_TEST_DILEMMAS, help="per dimension; the rest is dev")
    p.add_argument("--calibrate", action="store_true", help="print the pairs nearest the near-duplicate threshold")
    args = p.parse_args(argv)

    descriptions, questions, dilemmas = read_sources(args.source, args.out)
    labels = read_reviews(args.reviews or args.source / "reviews")
    descriptions, dilemmas, review_stats = review(descriptions, dilemmas, labels)
    correct(descriptions + dilemmas)
    raw = ValueData(descriptions, questions, dilemmas, source=str(args.source))
    if args.calibrate:
        calibrate(raw)
        return 0
    group_of, near = scenario_groups(raw)
    side, fc_side = assign_splits(raw, group_of, args.seed, args.min_test_dilemmas)
    split = lambda rec: "search" if side[group_of[rec["id"]]] == "search" else "test"  # noqa: E731
    for rec in descriptions + questions:
        rec |= {"split": split(rec), "group": group_of[rec["id"]]}
    for f in dilemmas:
        f |= {"split": fc_side[group_of[f["id"]]], "group": group_of[f["id"]]}

    pick = lambda rec, fields: {k: rec[k] for k in fields if k in rec}  # noqa: E731
    for dim in DIMENSIONS:
        for part, recs, fields in (("descriptions", descriptions, DESCRIPTION_FIELDS), ("questions", questions, QUESTION_FIELDS),
                                   ("dilemmas", dilemmas, DILEMMA_FIELDS)):  # fmt: skip
            write_records(args.out / part / f"{dim}.jsonl", [pick(r, fields) for r in recs if r["dimension"] == dim])
    (args.out / "VERSION").write_text("2\n", encoding="utf-8")

    data = load_value_data(args.out)
    gates = Q.gates(data)
    sizes = {part: dict(sorted(Counter(f"{r['dimension']} {r.get('pole', '')} {r['split']}".replace("  ", " ")
                                       for r in recs).items()))
             for part, recs in (("descriptions", data.descriptions), ("questions", data.questions), ("dilemmas", data.dilemmas))}  # fmt: skip
    group_sizes = Counter(Counter(group_of.values()).values())
    summary = gates.to_dict() | {
        "data_version": data.version, "sha256": data.sha256, "seed": args.seed,
        "min_test_dilemmas": args.min_test_dilemmas, "sizes": sizes,
        "groups": {"n": len(set(group_of.values())), "largest": max(Counter(group_of.values()).values()),
                   "by_size": dict(sorted(group_sizes.items()))},
        "near_duplicate_pairs_by_kind": dict(Counter(" / ".join(sorted((a.kind, b.kind))) for _, a, b in near)),
        "review": review_stats, "corrections": CORRECTIONS,
    }  # fmt: skip
    (args.out / "quality.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(Q.gate_table(gates))
    print(json.dumps({k: summary[k] for k in ("sizes", "groups", "review")}, indent=1))
    return 0 if gates.passed else 1


if __name__ == "__main__":
    sys.exit(main())
