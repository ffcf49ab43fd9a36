"""Forced-choice dilemmas: a situation and two options, one per pole, in several formulations.

Every formulation reads one number per item, the *log-odds* ``x`` that the model prefers the
``+`` option; orientation = mean ``sigmoid(x)`` over items (0.5 is indifference).

Formulations (``Dilemmas(formulation=...)``), as evaluation suites for small models use them:

- ``listed``: both options listed as A) and B) in the prompt (both orders, counterbalanced),
  each option's *text* scored as the answer. Its likelihood partly measures copying.
- ``cloze``: the options are not listed; each option's text is scored as the answer to the
  situation alone (lm-eval-harness' and OLMES' cloze formulation).
- ``letters``: the options listed, the answer letter scored; averaging the letter log-odds
  over both orders cancels a constant position bias (small models mostly say "A").

Option texts are scored with a normalisation (``norm=``): ``mean`` (per token), ``sum``,
``char`` (per character) or ``pmi`` (the summed log-prob minus that of the same option
after a generic prompt with no situation: domain-conditional PMI). A *persona* (the
prompted control of :mod:`vlens.prompted`) puts a value description before each item, in
the system turn or at the start of the user turn.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vlens.instruments.base import Instrument, Metrics, ScoredSeq, letter_ids, scored_logprobs
from vlens.models import format_prompt, tokenize

LISTED_TEMPLATE = "{context}\n\nWhich of these would you do?\nA) {first}\nB) {second}\n\nAnswer with A or B."
CLOZE_TEMPLATE = "{context}\n\nWhat would you do? Answer in one sentence."
UNCONDITIONAL = "What would you do? Answer in one sentence."  # the PMI baseline: the same ask, no situation
PERSONA_TEMPLATE = 'You are a person who says: "{description}"'

FORMULATIONS = ("listed", "cloze", "letters")
NORMS = ("mean", "sum", "char", "pmi")
PERSONA_SLOTS = ("system", "user")


@dataclass(frozen=True)
class Variant:
    """One way to read a dilemma: a formulation and, for option texts, a normalisation."""

    formulation: str = "listed"
    norm: str = "mean"

    def __post_init__(self) -> None:
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"unknown formulation {self.formulation!r}; expected one of {', '.join(FORMULATIONS)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown normalisation {self.norm!r}; expected one of {', '.join(NORMS)}")

    @property
    def name(self) -> str:
        return "letters" if self.formulation == "letters" else f"{self.formulation}-{self.norm}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``"cloze-pmi"``, ``"listed-mean"``, ``"letters"``."""
        form, _, norm = str(text).strip().partition("-")
        try:
            return cls(form, norm or "mean")
        except ValueError as err:
            names = ", ".join(v.name for v in ALL_VARIANTS)
            raise ValueError(f"unknown dilemma instrument {text!r}; expected one of {names}") from err


ALL_VARIANTS = (Variant("letters"), *(Variant(f, n) for f in ("listed", "cloze") for n in NORMS))
# Chosen on the dev dilemmas by the prompted control (vlens.experiment.instrument_sensitivity; the
# weaker direction's paired z, docs/validation.md): cloze with summed option log-probs was the best
# (with PMI, which gives the same paired shifts) on SmolLM2-135M, though far from z = 5 (docs/results.md).
DEFAULT_VARIANT = Variant("cloze", "sum")


class Dilemmas(Instrument):
    """Forced-choice dilemmas read by one :class:`Variant` (``variants`` may add others, read from
    the same passes: :meth:`item_scores` gives every item's log-odds under each)."""

    name = "dilemma"

    def __init__(
        self, items: Sequence[dict[str, Any]], *, variant: Variant | str = DEFAULT_VARIANT,
        variants: Sequence[Variant | str] = (), personas: Sequence[str] | None = None, persona_slot: str = "system",
    ) -> None:  # fmt: skip
        self.items = list(items)
        as_variant = lambda v: v if isinstance(v, Variant) else Variant.parse(v)  # noqa: E731
        self.variant = as_variant(variant)
        self.variants = list(dict.fromkeys([self.variant, *map(as_variant, variants)]))
        if personas is not None and len(personas) != len(self.items):
            raise ValueError(f"{len(personas)} personas for {len(self.items)} dilemmas: give one per dilemma")
        if persona_slot not in PERSONA_SLOTS:
            raise ValueError(f"unknown persona slot {persona_slot!r}; expected one of {', '.join(PERSONA_SLOTS)}")
        self.personas, self.persona_slot = personas, persona_slot

    def _prompt(self, model: Any, i: int, user: str) -> tuple[int, ...]:
        persona = PERSONA_TEMPLATE.format(description=self.personas[i]) if self.personas is not None else None
        chat = bool(getattr(model.tokenizer, "chat_template", None))
        if persona is not None and (self.persona_slot == "user" or not chat):
            user, persona = f"{persona}\n\n{user}", None
        return tuple(tokenize(model, format_prompt(model, user, system=persona))[0])

    def sequences(self, model: Any) -> list[ScoredSeq]:
        """Per item: the listed prompt in both orders (its last position gives the letters), the cloze
        prompt, and the PMI baseline, each only where a variant reads it; suffixes = the option texts."""
        forms = {v.formulation for v in self.variants}
        listed_text = bool(forms & {"listed"})
        pmi = any(v.norm == "pmi" for v in self.variants if v.formulation != "letters")
        self.ab = letter_ids(model, "AB")
        answers = {}
        seqs = []
        for i, item in enumerate(self.items):
            for option in ("plus", "minus"):
                answers[option] = model.tokenizer(item[f"option_{option}"], add_special_tokens=False)["input_ids"]
            if forms & {"listed", "letters"}:
                for order in (0, 1):  # 0: + listed first (A), 1: - listed first
                    first, second = (item["option_plus"], item["option_minus"])[:: 1 if order == 0 else -1]
                    prompt = self._prompt(model, i, LISTED_TEMPLATE.format(context=item["context"], first=first, second=second))
                    # The letter is read at the prompt's last position, so one suffix always exists.
                    for option in ("plus", "minus") if listed_text else ("plus",):
                        seqs.append(ScoredSeq(self.name, prompt, list(answers[option]), len(prompt), ("listed", i, order, option)))
            if "cloze" in forms:
                prompt = self._prompt(model, i, CLOZE_TEMPLATE.format(context=item["context"]))
                seqs += [ScoredSeq(self.name, prompt, list(answers[o]), len(prompt), ("cloze", i, 0, o)) for o in ("plus", "minus")]
            if pmi:
                # The baseline has no persona: PMI removes the option's prior, not the persona's effect.
                prompt = tuple(tokenize(model, format_prompt(model, UNCONDITIONAL))[0])
                seqs += [ScoredSeq(self.name, prompt, list(answers[o]), len(prompt), ("base", i, 0, o)) for o in ("plus", "minus")]
        return seqs

    def read(self, seq: ScoredSeq, lp: torch.Tensor, ref: torch.Tensor | None) -> tuple[float, int, torch.Tensor]:
        """(summed log-prob of the option text, its token count, the A/B log-probs at the prompt's end)."""
        return scored_logprobs(seq, lp).sum().item(), len(seq.suffix), lp[0, self.ab].cpu()

    def item_scores(self, readings: dict[tuple, Any]) -> dict[str, np.ndarray]:
        """Variant name -> the log-odds of the ``+`` option for every item (in item order)."""
        out = {}
        for v in self.variants:
            x = np.empty(len(self.items))
            for i, item in enumerate(self.items):
                if v.formulation == "letters":
                    lp = [readings[("listed", i, order, "plus")][2] for order in (0, 1)]
                    # order 0 lists + as A, order 1 as B: the mean cancels a constant letter bias
                    x[i] = 0.5 * ((lp[0][0] - lp[0][1]) + (lp[1][1] - lp[1][0])).item()
                    continue
                orders = (0, 1) if v.formulation == "listed" else (0,)
                x[i] = np.mean([self._option_score(readings, item, v, (v.formulation, i, o, "plus")) -
                                self._option_score(readings, item, v, (v.formulation, i, o, "minus")) for o in orders])  # fmt: skip
            out[v.name] = x
        return out

    @staticmethod
    def _option_score(readings: dict[tuple, Any], item: dict[str, Any], v: Variant, key: tuple) -> float:
        total, n_tok, _ = readings[key]
        if v.norm == "sum":
            return total
        if v.norm == "mean":
            return total / n_tok
        if v.norm == "char":
            return total / len(item[f"option_{key[3]}"])
        return total - readings[("base", key[1], 0, key[3])][0]  # pmi

    def summarise(self, readings: dict[tuple, Any]) -> Metrics:
        """``orientation`` per dimension (mean ``sigmoid(x)`` of the main variant), ``plus_preferred``
        (share of items with ``x > 0``), ``logodds``: every item's ``x``, and the same three
        suffixed ``[<variant>]`` for every extra variant."""
        scores = self.item_scores(readings)
        dims = [item["dimension"] for item in self.items]
        out: Metrics = {}
        for name, x in scores.items():
            p = 1 / (1 + np.exp(-x))
            key = "" if name == self.variant.name else f"[{name}]"
            by_dim: dict[str, list[int]] = defaultdict(list)
            for i, d in enumerate(dims):
                by_dim[d].append(i)
            out[f"orientation{key}"] = {d: float(p[idx].mean()) for d, idx in by_dim.items()}
            out[f"plus_preferred{key}"] = {d: float((x[idx] > 0).mean()) for d, idx in by_dim.items()}
        # per item, for paired statistics over items (vlens.experiment.cells): "<dimension>/<item id>"
        ids = [f"{item['dimension']}/{item.get('id', i)}" for i, item in enumerate(self.items)]
        for name, x in scores.items():
            key = "" if name == self.variant.name else f"[{name}]"
            out[f"logodds{key}"] = {k: float(v) for k, v in zip(ids, x, strict=True)}
        if any(v.formulation in ("listed", "letters") for v in self.variants):
            p_a = [readings[("listed", i, o, "plus")][2].softmax(-1)[0].item() for i in range(len(self.items)) for o in (0, 1)]
            out["position_bias_A"] = sum(p_a) / len(p_a) if p_a else None
        return out


def dilemma_split(item: dict[str, Any]) -> str:
    """``dev`` or ``test``: the item's own ``split``, else a fixed third of the items by id (v1 data has no
    split field). Settings such as the default formulation are chosen on ``dev`` and reported on ``test``."""
    if split := item.get("split"):
        return split
    return "dev" if zlib.crc32(str(item["id"]).encode()) % 3 == 0 else "test"


def personas(items: Sequence[dict[str, Any]], descriptions: Sequence[dict[str, Any]], pole: str, *, seed: int = 0) -> list[str]:
    """One value description per dilemma, of the dilemma's dimension and ``pole``, drawn with a fixed seed
    (the prompted control: the value stated in the prompt). Give held-out descriptions."""
    pools: dict[str, list[str]] = defaultdict(list)
    for d in descriptions:
        if d["pole"] == pole:
            pools[d["dimension"]].append(d["text"])
    rng = np.random.default_rng(seed)
    out = []
    for item in items:
        pool = pools.get(item["dimension"])
        if not pool:
            raise ValueError(f"no {pole} description of {item['dimension']} to state before dilemma {item.get('id')}; "
                             "give descriptions of every dimension that has dilemmas")  # fmt: skip
        out.append(pool[int(rng.integers(len(pool)))])
    return out
