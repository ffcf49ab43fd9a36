"""How well can a linear read-out tell the pole of a value description it never saw, layer by layer?

The model organism (scripts/train_organism.py) has to learn, from the ``search`` split alone, a rule that maps a
persona's pole and an option's pole to a choice. This measures the raw material such a rule can use: for every
``search`` description, the model's residual stream after each layer, mean-pooled over the description's tokens
(raw text), and per dimension a logistic regression that predicts ``+`` or ``-``, cross-validated over minimal
pairs (5 folds, :class:`sklearn.model_selection.GroupKFold`; both sides of a pair are always in the same fold,
so every prediction is for a pair the probe never saw). The regularisation (``C = 0.1``) was set once and not
tuned.

If a persona's pole and an option's pole are each read with accuracy ``a``, independently, a rule built on
them picks the right option with probability ``a^2 + (1 - a)^2``: the printed ``ceiling``.

Usage: python scripts/probe_pole.py [--model smollm2-135m-instruct] [--out docs/study/organism_pole_probe.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

import vlens
from vlens._io import atomic_write
from vlens.models import DEFAULT_MODEL, gguf_folder


def pooled_streams(lm, tok, texts: list[str]) -> np.ndarray:
    """``[text, layer + 1, d_model]``: the embeddings, then the stream after each layer, mean over the tokens."""
    out = []
    with torch.no_grad():
        for text in texts:
            states = lm(tok(text, return_tensors="pt").input_ids, output_hidden_states=True).hidden_states
            out.append(torch.stack([h[0].mean(0) for h in states]).numpy())
    return np.asarray(out)


def pair_held_out_accuracy(x: np.ndarray, y: np.ndarray, pairs: np.ndarray, folds: int = 5) -> float:
    """Share of descriptions whose pole a probe fitted on the other folds' minimal pairs predicts correctly."""
    correct = 0
    for train, test in GroupKFold(folds).split(x, y, pairs):
        probe = LogisticRegression(C=0.1, max_iter=3000).fit(x[train], y[train])
        correct += int((probe.predict(x[test]) == y[test]).sum())
    return correct / len(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="an offline GGUF model vlens knows")
    ap.add_argument("--out", type=Path, default=Path("docs/study/organism_pole_probe.csv"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _, _ = gguf_folder(args.model)
    tok = AutoTokenizer.from_pretrained(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    descs = vlens.load_value_data().descriptions_of("search")
    streams = pooled_streams(lm, tok, [d["text"] for d in descs])
    dims = np.array([d["dimension"] for d in descs])
    poles = np.array([d["pole"] == "+" for d in descs], dtype=int)
    pairs = np.array([d["pair"] for d in descs])
    rows = []
    for layer in range(streams.shape[1]):
        row = {"stream_after_layer": layer}  # 0: the embeddings
        for dim in sorted(set(dims)):
            m = dims == dim
            row[dim] = pair_held_out_accuracy(streams[m, layer], poles[m], pairs[m])
        row["mean"] = float(np.mean([row[d] for d in sorted(set(dims))]))
        row["ceiling"] = row["mean"] ** 2 + (1 - row["mean"]) ** 2
        rows.append(row)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    table = pd.DataFrame(rows).assign(model=args.model, n_descriptions=len(descs), n_pairs=len(set(pairs)))
    atomic_write(args.out, lambda tmp: table.to_csv(tmp, index=False))


if __name__ == "__main__":
    main()
