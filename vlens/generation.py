"""Greedy answers under an edit, for reading or for a judge (a plug-in: vlens measures offline first)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vlens.interventions import Edit, apply
from vlens.models import format_prompt, model_info, tokenize
from vlens.runner import generate


def generate_answers(
    model: Any,
    edit: Edit | None,
    questions: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 60,
    batch_size: int = 8,
    progress: bool | Any = False,
) -> list[dict[str, Any]]:
    """Greedy answers to ``questions`` under ``edit`` (edited at every step, KV cache), for reading or judging.

    Each answer records the question's id and text. ``progress``: True for a progress bar of its own (one
    step per batch), or a tqdm bar to advance by one per batch (one bar over several calls, as the
    pipeline's generate stage does).
    """
    from vlens.activations import _progress

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (questions per batch), got {batch_size!r}")
    answers = []
    info = model_info(model)
    edit = edit or Edit.identity(info.n_layers, info.d_mlp)
    n_batches = -(-len(questions) // batch_size)
    own = isinstance(progress, bool)
    bar = _progress(n_batches, initial=0, enabled=progress, desc="generate") if own else progress
    with apply(model, edit), torch.inference_mode():
        for start in range(0, len(questions), batch_size):
            chunk = questions[start : start + batch_size]
            rows = [tokenize(model, format_prompt(model, q["text"]))[0] for q in chunk]
            for q, new in zip(chunk, generate(model, rows, max_new_tokens=max_new_tokens), strict=True):
                text = model.tokenizer.decode(new, skip_special_tokens=True).strip()
                answers.append({"question_id": q["id"], "question": q["text"], "dimension": q["dimension"], "edit": edit.label,
                                "answer": text})  # fmt: skip
            bar.update(1)
    if own:
        bar.close()
    return answers


Judge = Callable[[str, str], float]
"""A judge maps (dimension, answer text) to a score, e.g. 1-5 for how much the answer expresses the dimension."""


class OpenAICompatibleJudge:
    """A judge backed by any OpenAI-compatible chat endpoint (``base_url`` like ``http://host:port/v1``).

    Never used by the tests; vlens measures offline first and treats judges as a plug-in.
    """

    RUBRIC = (
        "Rate from 1 to 5 how strongly the following answer expresses the value dimension '{dimension}' "
        "(Schwartz theory of basic values): 1 = expresses its opposite, 3 = neutral, 5 = strongly expresses it. "
        "Reply with the number only.\n\nAnswer:\n{answer}"
    )

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout

    def __call__(self, dimension: str, answer: str) -> float:
        body = {"model": self.model, "temperature": 0,
                "messages": [{"role": "user", "content": self.RUBRIC.format(dimension=dimension, answer=answer)}]}  # fmt: skip
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            reply = json.loads(resp.read())["choices"][0]["message"]["content"]
        digits = [ch for ch in reply if ch.isdigit()]
        if not digits:
            raise ValueError(f"the judge replied {reply!r}, with no rating in it")
        return float(digits[0])


def judge_answers(answers: list[dict[str, Any]], judge: Judge) -> list[dict[str, Any]]:
    """Add a ``score`` from ``judge`` to every answer."""
    return [a | {"score": judge(a["dimension"], a["answer"])} for a in answers]
