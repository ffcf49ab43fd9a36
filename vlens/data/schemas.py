"""Record schemas of ValueInsight files and their validation.

Every loader goes through :func:`read_records`, so a malformed file — shipped or the
user's own — is rejected with an error naming the file, the line and the problem.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlens.values import BASIC_VALUES, DIMENSIONS, POLES, REFINED_VALUES

SPLITS = ("search", "test")
# Dilemmas are evaluation material: `dev` to tune an instrument, `test` for the final numbers; never `search`.
DILEMMA_SPLITS = ("dev", "test")
# Portrait items: `+` describes someone who holds the value, `-` (reverse-keyed) someone who does not.
KEYS = ("+", "-")


class DataFormatError(ValueError):
    """A data file does not follow its vlens schema."""


@dataclass(frozen=True)
class Field:
    name: str
    required: bool = True
    check: Callable[[Any], str | None] | None = None  # returns a problem description or None
    default: Any = None


def _one_of(allowed: tuple[str, ...] | list[str], what: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in allowed else f"unknown {what} {v!r} (expected one of: {', '.join(allowed)})"

    return check


_dimension = _one_of(tuple(DIMENSIONS), "dimension")
_pole = _one_of(POLES, "pole")
_basic = _one_of(BASIC_VALUES, "basic value")
_any_value = _one_of(BASIC_VALUES + tuple(REFINED_VALUES), "value")
_split = _one_of(SPLITS, "split")
_dilemma_split = _one_of(DILEMMA_SPLITS, "dilemma split")
_keyed = _one_of(KEYS, "keying")

# kind -> fields. Text fields are checked for type and emptiness by read_records. The v2 fields (`pair`, `group`,
# a description's or a dilemma's `split`, `keyed`) are optional and have no default, so a v1 record loads unchanged
# (same fields, same sha256) and old run directories still match their data.
SCHEMAS: dict[str, tuple[Field, ...]] = {
    "descriptions": (
        Field("id"), Field("pair", required=False), Field("dimension", check=_dimension), Field("pole", check=_pole),
        Field("value", check=_basic), Field("subvalue", required=False, default=""),
        Field("split", required=False, check=_split), Field("group", required=False), Field("text"),
    ),
    "questions": (
        Field("id"), Field("dimension", check=_dimension), Field("domain", required=False, default="unspecified"),
        Field("split", required=False, check=_split, default="search"), Field("group", required=False), Field("text"),
    ),
    "dilemmas": (
        Field("id"), Field("dimension", check=_dimension), Field("domain", required=False, default="unspecified"),
        Field("subvalue", required=False), Field("split", required=False, check=_dilemma_split),
        Field("group", required=False), Field("context"), Field("option_plus"), Field("option_minus"),
    ),
    "portrait_items": (
        Field("id"), Field("text"), Field("value", check=_any_value), Field("basic_value", required=False, check=_basic),
        Field("keyed", required=False, check=_keyed),
    ),
    "neutral_text": (Field("id"), Field("topic", required=False, default=""), Field("text")),
}  # fmt: skip


def _rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed row) for a JSON Lines or CSV file."""
    if not path.exists():
        raise DataFormatError(f"{path}: file not found")
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                return [(i + 2, dict(row)) for i, row in enumerate(csv.DictReader(f))]  # line 1 is the header
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataFormatError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from err
        return rows
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from err


def validate_record(row: Any, kind: str, where: str) -> dict[str, Any]:
    """Check one record against the ``kind`` schema; return it with defaults filled in."""
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    out: dict[str, Any] = {}
    for f in SCHEMAS[kind]:
        if f.name not in row or row[f.name] is None or row[f.name] == "" and not f.required:
            if f.required:
                raise DataFormatError(f"{where}: missing field {f.name!r} (a {kind} record needs {_required(kind)})")
            if f.default is not None:
                out[f.name] = f.default
            elif kind == "portrait_items" and f.name == "basic_value":
                out[f.name] = REFINED_VALUES.get(row["value"], row["value"])
            continue
        value = row[f.name]
        if not isinstance(value, str):
            raise DataFormatError(f"{where}: field {f.name!r} must be a string, got {type(value).__name__} {value!r}")
        if not value.strip():
            raise DataFormatError(f"{where}: field {f.name!r} is empty")
        if f.check and (problem := f.check(value)):
            raise DataFormatError(f"{where}: {problem}")
        out[f.name] = value
    if kind == "descriptions":
        _check_value_of_dimension(out, where)
    return out


def _check_value_of_dimension(rec: dict[str, Any], where: str) -> None:
    """A description's value is one of its dimension's basic values; a ``-`` description may instead
    name a value of the opposite dimension (the circumplex opposite it stands for)."""
    if rec.get("dimension") not in DIMENSIONS or rec.get("pole") not in POLES:
        raise DataFormatError(f"{where}: needs a dimension ({', '.join(DIMENSIONS)}) and a pole (+ or -), got "
                              f"{rec.get('dimension')!r} and {rec.get('pole')!r}")  # fmt: skip
    dim = DIMENSIONS[rec["dimension"]]
    allowed = dim.basic_values + (DIMENSIONS[dim.opposite].basic_values if rec["pole"] == "-" else ())
    if rec["value"] not in allowed:
        raise DataFormatError(f"{where}: value {rec['value']!r} does not belong to {dim.name} (pole {rec['pole']}); "
                              f"expected one of {', '.join(dict.fromkeys(allowed))}")  # fmt: skip


def check_pairs(descriptions: list[dict[str, Any]]) -> None:
    """v2 descriptions come in minimal pairs: every ``pair`` id has exactly one ``+`` and one ``-`` description of
    the same dimension, split and group. Either every description carries ``pair`` (v2) or none does (v1)."""
    with_pair = [d for d in descriptions if d.get("pair")]
    if not with_pair:
        return
    if len(with_pair) != len(descriptions):
        lone = next(d["id"] for d in descriptions if not d.get("pair"))
        raise DataFormatError(f"description {lone!r} has no 'pair' while others have one: give every description "
                              f"its pair id (v2) or remove 'pair' from all of them (v1)")  # fmt: skip
    members: dict[str, list[dict[str, Any]]] = {}
    for d in descriptions:
        members.setdefault(d["pair"], []).append(d)
    for pair, ds in members.items():
        poles = sorted(d["pole"] for d in ds)
        ids = ", ".join(repr(d["id"]) for d in ds)
        if poles != ["+", "-"]:
            raise DataFormatError(f"pair {pair!r} ({ids}) needs exactly one '+' and one '-' description, got poles "
                                  f"{poles}: add the missing partner or remove the pair")  # fmt: skip
        for key in ("dimension", "split", "group"):
            if ds[0].get(key) != ds[1].get(key):
                raise DataFormatError(f"pair {pair!r} ({ids}) straddles {key} {ds[0].get(key)!r} and "
                                      f"{ds[1].get(key)!r}: both descriptions of a pair need the same {key}")  # fmt: skip


def _required(kind: str) -> str:
    return ", ".join(f.name for f in SCHEMAS[kind] if f.required)


def read_records(path: str | os.PathLike, kind: str) -> list[dict[str, Any]]:
    """Read and validate a JSON Lines (``.jsonl``/``.json``) or ``.csv`` file of ``kind`` records."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {', '.join(SCHEMAS)}")
    path = Path(path)
    records, seen = [], {}
    for lineno, row in _rows(path):
        where = f"{path}, line {lineno}"
        rec = validate_record(row, kind, where)
        if rec["id"] in seen:
            raise DataFormatError(f"{where}: duplicate id {rec['id']!r} (first on line {seen[rec['id']]})")
        seen[rec["id"]] = lineno
        records.append(rec)
    if not records:
        raise DataFormatError(f"{path}: no records")
    return records


def write_records(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    from vlens._io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
