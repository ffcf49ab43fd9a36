"""Quality measures for value data: near-duplicates and wording balance between poles.

Used by the tests, the data card and anyone writing their own value data:
``python -m vlens.data.quality [DATA_DIR]`` prints the report for a folder of files.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

NEGATION = re.compile(r"\b(not|no|never|nothing|nobody|none|don't|doesn't|isn't|won't|can't|cannot|neither|nor|without)\b", re.I)
HEDGE = re.compile(r"\b(maybe|perhaps|probably|might|somewhat|rather|a bit|kind of|sort of)\b", re.I)
# Near-duplicate threshold on word 3-gram Jaccard. Two texts sharing half of their 3-grams
# are rewordings of one text; distinct items written to a template share under 0.3 here.
NEAR_DUPLICATE = 0.5


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def shingles(text: str, n: int = 3) -> frozenset[tuple[str, ...]]:
    w = words(text)
    return frozenset(tuple(w[i : i + n]) for i in range(max(len(w) - n + 1, 1)))


def most_similar(texts: Sequence[str], others: Sequence[str] | None = None) -> tuple[float, int, int]:
    """The largest word 3-gram Jaccard between two texts (within ``texts``, or between ``texts`` and ``others``)."""
    a = [shingles(t) for t in texts]
    b = a if others is None else [shingles(t) for t in others]
    pairs = itertools.combinations(range(len(a)), 2) if others is None else itertools.product(range(len(a)), range(len(b)))
    best = (0.0, -1, -1)
    for i, j in pairs:
        inter = len(a[i] & b[j])
        if inter and (jac := inter / len(a[i] | b[j])) > best[0]:
            best = (jac, i, j)
    return best


@dataclass(frozen=True)
class Wording:
    n: int
    negation_share: float
    hedge_share: float
    mean_words: float
    top_openers: list[tuple[str, int]]


def wording(texts: Sequence[str]) -> Wording:
    """How often negations and hedges appear, mean length and the commonest first words."""
    n = len(texts)
    return Wording(
        n,
        sum(bool(NEGATION.search(t)) for t in texts) / n,
        sum(bool(HEDGE.search(t)) for t in texts) / n,
        sum(len(words(t)) for t in texts) / n,
        Counter(words(t)[0] for t in texts if words(t)).most_common(3),
    )


def report(data_dir: str | None = None) -> str:
    from vlens.data.loaders import load_value_data

    data = load_value_data(data_dir)
    lines = []
    for name, recs in data.parts().items():
        if not recs:
            continue
        for dim in sorted({r.get("dimension", "") for r in recs}):
            sub = [r for r in recs if r.get("dimension", "") == dim]
            texts = [r.get("text") or f"{r['context']} {r['option_plus']} {r['option_minus']}" for r in sub]
            jac, i, j = most_similar(texts)
            worst = f"{sub[i]['id']} / {sub[j]['id']}" if i >= 0 else "-"
            lines.append(f"{name:15s} {dim or 'all':20s} n={len(sub):4d}  most similar pair {jac:.2f} ({worst})")
            groups = {f"pole {pole}": [r["text"] for r in sub if r["pole"] == pole] for pole in "+-"} if name == "descriptions" else \
                {key: [r[key] for r in sub] for key in ("option_plus", "option_minus")} if name == "dilemmas" else {}  # fmt: skip
            for label, group in groups.items():
                w = wording(group)
                lines.append(f"{'':37s}{label}: negation {w.negation_share:.2f}, hedge {w.hedge_share:.2f}, {w.mean_words:.1f} words")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(sys.argv[1] if len(sys.argv) > 1 else None))
