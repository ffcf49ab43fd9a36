"""The Schwartz theory of basic values as code: 10 basic values, 19 refined values,
4 higher-order dimensions in two opposing pairs, and the two poles of each dimension.

A dimension's ``+`` pole is the value itself; its ``-`` pole is the reversed, opposing
aspect (someone for whom that dimension's goals matter little or feel aversive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

Pole = Literal["+", "-"]
POLES: tuple[Pole, Pole] = ("+", "-")

BASIC_VALUES: tuple[str, ...] = (
    "Self-Direction",
    "Stimulation",
    "Hedonism",
    "Achievement",
    "Power",
    "Security",
    "Conformity",
    "Tradition",
    "Benevolence",
    "Universalism",
)

# Refined value (2012 refinement) -> the basic value it refines. Face (public image) is
# filed under Power and Humility under Tradition, as the basic-value summaries list them.
REFINED_VALUES: dict[str, str] = {
    "Self-Direction-Thought": "Self-Direction",
    "Self-Direction-Action": "Self-Direction",
    "Stimulation": "Stimulation",
    "Hedonism": "Hedonism",
    "Achievement": "Achievement",
    "Power-Dominance": "Power",
    "Power-Resources": "Power",
    "Face": "Power",
    "Security-Personal": "Security",
    "Security-Societal": "Security",
    "Tradition": "Tradition",
    "Conformity-Rules": "Conformity",
    "Conformity-Interpersonal": "Conformity",
    "Humility": "Tradition",
    "Benevolence-Caring": "Benevolence",
    "Benevolence-Dependability": "Benevolence",
    "Universalism-Concern": "Universalism",
    "Universalism-Nature": "Universalism",
    "Universalism-Tolerance": "Universalism",
}


@dataclass(frozen=True)
class Dimension:
    """A higher-order value dimension with its basic values and its opposite."""

    name: str
    short: str  # id prefix used in the shipped data ("oc", "co", "se", "st")
    basic_values: tuple[str, ...]
    opposite: str
    plus: str  # one line on what the + pole cares about
    minus: str  # one line on the reversed (-) pole


DIMENSIONS: dict[str, Dimension] = {
    d.name: d
    for d in (
        Dimension(
            "Openness_to_Change", "oc", ("Self-Direction", "Stimulation", "Hedonism"), "Conservation",
            plus="independent thought and action, novelty, excitement, enjoyment",
            minus="the familiar, the proven and the predictable; guidance and restraint",
        ),
        Dimension(
            "Conservation", "co", ("Security", "Conformity", "Tradition"), "Openness_to_Change",
            plus="safety, stability, rules, customs and restraint",
            minus="questioning norms, changing habits, taking one's own line",
        ),
        Dimension(
            "Self-Enhancement", "se", ("Achievement", "Power", "Hedonism"), "Self-Transcendence",
            plus="personal success, status, influence, wealth and self-indulgence",
            minus="modest, unranked, low-key ways; indifference to status and success",
        ),
        Dimension(
            "Self-Transcendence", "st", ("Benevolence", "Universalism"), "Self-Enhancement",
            plus="the welfare of close others, of all people and of nature",
            minus="one's own projects, interests and circle first; self-reliance",
        ),
    )  # fmt: skip
}

# Scoring key for portrait items: basic value -> the dimensions whose score it enters.
# Hedonism shares Openness to Change and Self-Enhancement, as in the theory.
SCORING_KEY: dict[str, tuple[str, ...]] = {
    value: tuple(d.name for d in DIMENSIONS.values() if value in d.basic_values) for value in BASIC_VALUES
}

# The authors' file layout names the - pole "<Dimension>_reversed".
AUTHOR_KEYS: dict[str, tuple[str, Pole]] = {
    **{name: (name, "+") for name in DIMENSIONS},
    **{f"{name}_reversed": (name, "-") for name in DIMENSIONS},
}


def dimension(name: str) -> Dimension:
    """Look a dimension up by name (also accepts its short prefix, e.g. ``"oc"``, and spaces)."""
    def norm(text: str) -> str:
        return "".join(ch for ch in text.lower() if ch.isalnum())

    key = norm(name)
    for d in DIMENSIONS.values():
        if key in {norm(d.name), d.short}:
            return d
    raise ValueError(f"unknown dimension {name!r}; expected one of {', '.join(DIMENSIONS)} (or oc, co, se, st)")


def check_pole(pole: str) -> Pole:
    if pole not in POLES:
        raise ValueError(f"unknown pole {pole!r}; expected '+' (the value) or '-' (its reversed aspect)")
    return pole  # type: ignore[return-value]


class PoleKey(NamedTuple):
    """The key of one pole of one dimension; written "Conservation:+" in files and dicts."""

    dimension: str
    pole: str

    def __str__(self) -> str:
        return f"{self.dimension}:{self.pole}"

    @classmethod
    def parse(cls, text: str) -> PoleKey:
        dimension, sep, pole = text.rpartition(":")
        if not sep or not dimension or pole not in POLES:
            raise ValueError(f"{text!r} is not a pole key; expected '<dimension>:+' or '<dimension>:-', e.g. 'Conservation:+'")
        return cls(dimension, pole)


def basic_value_of(value: str) -> str:
    """The basic value of a basic or refined value name."""
    if value in BASIC_VALUES:
        return value
    if value in REFINED_VALUES:
        return REFINED_VALUES[value]
    raise ValueError(
        f"unknown value {value!r}; expected a basic value ({', '.join(BASIC_VALUES)}) "
        f"or a refined value ({', '.join(REFINED_VALUES)})"
    )
