"""Write the golden outputs that the runner refactor must reproduce (issue 12).

Run once with the *old* code paths (commit 70401e5) on the offline model; the files it
writes are committed, and ``tests/test_golden.py`` compares the current code with them:
statistics to 1e-6, neuron sets identical, validation table to 1e-5.

    python tests/golden/make_golden.py
"""

from __future__ import annotations

from pathlib import Path

import torch

import vlens
from vlens.evaluate import Instruments
from vlens.validate import validate

HERE = Path(__file__).parent
DIMENSIONS = ["Openness_to_Change", "Self-Enhancement"]
LAYERS = [2, 15, 29]


def main() -> None:
    torch.manual_seed(0)
    model = vlens.load_model()
    for name, kwargs in {
        "question_reuse": {"scope": "question", "hook": "post", "prefix_reuse": True},
        "question_full": {"scope": "question", "hook": "post", "prefix_reuse": False},
        "all_gate": {"scope": "all", "hook": "gate", "prefix_reuse": False},
    }.items():
        result = vlens.locate(model, dimensions=DIMENSIONS, max_pairs=6, layers=LAYERS, batch_size=4,
                              selection="top_k:40", progress=False, **kwargs)  # fmt: skip
        result.stats.save(HERE / f"stats_{name}")
        for key, ns in result.neuron_sets.items():
            dim, pole = key.rsplit(":", 1)
            ns.save(HERE / f"set_{name}_{dim}_{'plus' if pole == '+' else 'minus'}")
    full = vlens.locate(model, dimensions=DIMENSIONS, max_pairs=6, batch_size=4, selection="top_k:40", progress=False,
                        scope="question", hook="post")  # the reading the golden table was made with
    instruments = Instruments.default(max_dilemmas=2, max_portrait=4, max_neutral=1, max_questions=0)
    res = validate(model, full, instruments=instruments, gammas=[1.0], n_random=2, batch_size=8, progress=False)
    res.table.to_csv(HERE / "validation.csv", index=False)


if __name__ == "__main__":
    main()
