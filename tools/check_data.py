"""Quick quality check for hand-written ValueInsight files (used while writing the data).

Usage: python tools/check_data.py FILE.jsonl [FILE.jsonl ...]

Prints counts, schema problems, the most similar pairs (word 3-gram Jaccard) and, for
files with poles or option pairs, how often negation/hedge words and lengths appear
per pole. Exit code 1 if a hard problem (schema, duplicate id, near-duplicate >= 0.5).
"""

from __future__ import annotations

import collections
import itertools
import json
import re
import sys

NEGATIONS = re.compile(r"\b(not|no|never|nothing|don't|doesn't|isn't|won't|can't|cannot|neither|nor|without|rather than)\b", re.I)
HEDGES = re.compile(r"\b(maybe|perhaps|probably|might|somewhat|rather|a bit|kind of|sort of)\b", re.I)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(max(len(w) - n + 1, 1))}


def main(paths: list[str]) -> int:
    bad = 0
    for path in paths:
        rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
        print(f"== {path}: {len(rows)} rows")
        ids = collections.Counter(r.get("id") for r in rows)
        dup = [i for i, c in ids.items() if c > 1]
        if dup:
            print("  DUPLICATE IDS:", dup[:10])
            bad = 1
        for i, r in enumerate(rows, 1):
            for k, v in r.items():
                if isinstance(v, str) and not v.strip():
                    print(f"  line {i}: empty field {k}")
                    bad = 1
        text_of = lambda r: r.get("text") or r.get("context", "") + " " + r.get("option_plus", "") + " " + r.get("option_minus", "")  # noqa: E731
        sh = [shingles(text_of(r)) for r in rows]
        worst = []
        for a, b in itertools.combinations(range(len(rows)), 2):
            inter = len(sh[a] & sh[b])
            if inter:
                j = inter / len(sh[a] | sh[b])
                worst.append((j, a, b))
        worst.sort(reverse=True)
        for j, a, b in worst[:5]:
            print(f"  similar {j:.2f}: {rows[a]['id']} | {rows[b]['id']}")
            if j >= 0.5:
                bad = 1
        for key in ("pole", "option"):
            groups: dict[str, list[str]] = collections.defaultdict(list)
            if key == "pole" and "pole" in rows[0]:
                for r in rows:
                    groups[r["pole"]].append(r["text"])
            elif key == "option" and "option_plus" in rows[0]:
                for r in rows:
                    groups["+"].append(r["option_plus"])
                    groups["-"].append(r["option_minus"])
            for g, texts in sorted(groups.items()):
                n = len(texts)
                neg = sum(bool(NEGATIONS.search(t)) for t in texts) / n
                hed = sum(bool(HEDGES.search(t)) for t in texts) / n
                ln = sum(len(words(t)) for t in texts) / n
                first = collections.Counter(words(t)[0] for t in texts if words(t)).most_common(3)
                print(f"  pole {g}: n={n} negation-share={neg:.2f} hedge-share={hed:.2f} mean-words={ln:.1f} openers={first}")
        for field in ("value", "domain", "pole", "dimension", "basic_value"):
            if field in rows[0]:
                print(f"  by {field}:", dict(collections.Counter(r[field] for r in rows)))
    return bad


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
