"""Tag each shipped situational question with its split (run once after writing questions).

Within every dimension and domain, questions are ordered by the sha256 of their id and the
first quarter (rounded up) becomes the held-out `test` split; the rest is `search`. The
result is written into the files, so the split never changes silently.

Usage: python tools/assign_splits.py vlens/data/valueinsight/questions/*.jsonl
"""

import hashlib
import json
import math
import sys
from collections import defaultdict

for path in sys.argv[1:]:
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    by_domain = defaultdict(list)
    for r in rows:
        by_domain[r["domain"]].append(r["id"])
    test = set()
    for ids in by_domain.values():
        ids.sort(key=lambda i: hashlib.sha256(i.encode()).hexdigest())
        test.update(ids[: math.ceil(len(ids) / 4)])
    keys = ("id", "dimension", "domain", "split", "text")
    out = [{k: (("test" if r["id"] in test else "search") if k == "split" else r[k]) for k in keys} for r in rows]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    print(f"{path}: {len(out)} questions, {len(test)} test, {len(out) - len(test)} search")
