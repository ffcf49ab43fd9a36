"""Contrastive prompt pairs: one situational question, once with a `+` and once with a `-` description.

The two prompts of a pair differ only in the description; with v2 data the two descriptions are a
minimal pair (same frame, topic and sub-value), so the prompts differ only in the stance. Each prompt records
``shared_start``, the character offset where the part shared by both poles begins (everything
after the description), so activation code can pool over exactly those tokens.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from vlens.data.loaders import ValueData
from vlens.values import DIMENSIONS, dimension

INSTRUCTION = (
    "Answer the question below directly and briefly, in under 300 words, "
    "as a person who holds the value described."
)
# The paper's shape for base models (no chat template).
RAW_TEMPLATE = INSTRUCTION + "\n\n### Value: {description}\n### Question: {question}\n### Response:"
# For instruct models the same content goes into one user turn of the model's chat template.
CHAT_USER_TEMPLATE = INSTRUCTION + "\n\nValue: {description}\nQuestion: {question}"
TEMPLATES = ("raw", "chat", "auto")


@dataclass(frozen=True)
class Prompt:
    """One prompt of a contrastive pair."""

    id: str
    pair_id: str
    dimension: str
    pole: str
    question_id: str
    description_id: str
    text: str
    shared_start: int  # characters [shared_start, len(text)) are identical in both poles of the pair

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render(description: str, question: str, *, template: str, model: Any = None) -> tuple[str, int]:
    """The prompt text and the character offset where the shared (post-description) part starts."""
    if template == "auto":
        template = "chat" if model is not None and getattr(model.tokenizer, "chat_template", None) else "raw"
    if template == "raw":
        head = RAW_TEMPLATE.split("{description}")[0] + description
        return RAW_TEMPLATE.format(description=description, question=question), len(head)
    if template == "chat":
        if model is None:
            raise ValueError("the chat template needs the model (its tokenizer holds the chat template)")
        from vlens.models import format_prompt

        user = CHAT_USER_TEMPLATE.format(description=description, question=question)
        text = format_prompt(model, user, chat=True)
        head = CHAT_USER_TEMPLATE.split("{description}")[0] + description
        return text, text.index(user) + len(head)
    raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")


def _minimal_pairs(descriptions: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """v2: the `+` description and ITS `-` partner (same ``pair``), in the order of the pair ids."""
    by_pair: dict[str, dict[str, dict]] = defaultdict(dict)
    for d in descriptions:
        by_pair[d["pair"]][d["pole"]] = d
    return [(by_pair[p]["+"], by_pair[p]["-"]) for p in sorted(by_pair)]  # ValueData checked every pair complete


def _description_pairs(descriptions: list[dict[str, Any]], rng: random.Random) -> list[tuple[dict, dict]]:
    """v1: pair `+` and `-` descriptions of one dimension, matched on basic value where the counts allow."""
    by_pole: dict[str, list[dict]] = {"+": [], "-": []}
    for d in descriptions:
        by_pole[d["pole"]].append(d)
    for pole in by_pole:
        items = sorted(by_pole[pole], key=lambda d: d["id"])
        rng.shuffle(items)
        by_pole[pole] = sorted(items, key=lambda d: d["value"])  # stable: shuffled within each value
    return list(zip(by_pole["+"], by_pole["-"], strict=False))


def build_prompts(
    data: ValueData,
    model: Any = None,
    *,
    split: str = "search",
    dimensions: list[str] | None = None,
    template: str = "auto",
    pairs_per_question: int = 7,
    max_pairs: int | None = None,
    seed: int = 0,
) -> list[Prompt]:
    """Contrastive prompts (``+`` then ``-`` of each pair, pairs in a deterministic order).

    Only the descriptions and questions of ``split`` are used (v1 descriptions belong to both splits), so
    ``search`` prompts never contain a held-out description. A description pair is a minimal pair of the data
    (v2, its ``pair`` id) or, for v1 data, a `+` and a `-` description matched on basic value.
    Every question of ``split`` is combined with ``pairs_per_question`` description pairs,
    each description being used about equally often. Pairs are ordered round by round
    (every question once, then every question again ...), so ``max_pairs`` (per dimension)
    takes as many distinct questions as it can.
    """
    if split not in {"search", "test"}:
        raise ValueError(f"split must be 'search' or 'test', got {split!r}")
    if pairs_per_question < 1:
        raise ValueError(f"pairs_per_question must be at least 1, got {pairs_per_question}")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1 (or None for all), got {max_pairs}")
    present = {d["dimension"] for d in data.descriptions}
    dims = [dimension(d).name for d in dimensions] if dimensions else [d for d in DIMENSIONS if d in present]
    descs: dict[str, list[dict]] = defaultdict(list)
    for d in data.descriptions_of(split):
        descs[d["dimension"]].append(d)
    questions: dict[str, list[dict]] = defaultdict(list)
    for q in data.questions_of(split):
        questions[q["dimension"]].append(q)

    prompts: list[Prompt] = []
    for dim in dims:
        rng = random.Random(f"{seed}:{dim}")
        # v1 draws its pairs from the same rng as before v2, so v1 prompts are unchanged.
        pairs = _minimal_pairs(descs[dim]) if data.version == 2 else _description_pairs(descs[dim], rng)
        qs = sorted(questions[dim], key=lambda q: q["id"])
        if not pairs:
            raise ValueError(f"no `+`/`-` description pairs of the {split} split for {dim}: both poles need descriptions")
        if not qs:
            raise ValueError(f"no {split} questions for {dim}")
        rng.shuffle(qs)
        order = list(range(len(pairs)))
        rng.shuffle(order)
        n_pairs = 0
        # A question never meets the same description pair twice.
        per_question = min(pairs_per_question, len(pairs))
        for r in range(per_question):
            for j, q in enumerate(qs):
                if max_pairs is not None and n_pairs >= max_pairs:
                    break
                plus, minus = pairs[order[(j * per_question + r) % len(pairs)]]
                pair_id = f"{q['id']}|{plus['id']}|{minus['id']}"
                for desc in (plus, minus):
                    text, start = render(desc["text"], q["text"], template=template, model=model)
                    prompts.append(
                        Prompt(f"{pair_id}|{desc['pole']}", pair_id, dim, desc["pole"], q["id"], desc["id"], text, start)
                    )
                n_pairs += 1
    return prompts


def prompts_dataset(prompts: list[Prompt]) -> Any:
    """The prompts as a Hugging Face ``datasets.Dataset``."""
    from datasets import Dataset

    return Dataset.from_list([p.to_dict() for p in prompts])
