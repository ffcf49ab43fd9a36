"""Loading ValueInsight: the files shipped with vlens, the authors' original layout, user files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlens._io import sha256_json
from vlens.data.schemas import SPLITS, DataFormatError, _check_value_of_dimension, _rows, check_pairs, read_records
from vlens.values import AUTHOR_KEYS, DIMENSIONS

SHIPPED_DIR = Path(__file__).parent / "valueinsight"
# The data layouts vlens reads. 1: descriptions without pairs, shared by both splits. 2: minimal pairs (`pair`),
# descriptions split search/test, scenario `group`s, dilemmas split dev/test, reverse-keyed portrait items.
VERSIONS = (1, 2)


@dataclass
class ValueData:
    """All of ValueInsight (or a user's replacement) as plain lists of validated records."""

    descriptions: list[dict[str, Any]]
    questions: list[dict[str, Any]]
    dilemmas: list[dict[str, Any]] = field(default_factory=list)
    portrait_items: list[dict[str, Any]] = field(default_factory=list)
    neutral_text: list[dict[str, Any]] = field(default_factory=list)
    source: str = "vlens ValueInsight"
    version: int | None = None  # the data layout (VERSIONS); None: 2 when the descriptions carry `pair`, else 1

    def __post_init__(self) -> None:  # records built in Python skip the file checks: these matter most
        for rec in self.descriptions:
            _check_value_of_dimension(rec, f"description {rec.get('id')!r}")
        check_pairs(self.descriptions)
        paired = any(d.get("pair") for d in self.descriptions)
        if self.version is None:
            self.version = 2 if paired else 1
        if self.version not in VERSIONS:
            raise DataFormatError(f"{self.source}: unknown data version {self.version!r}; vlens reads versions "
                                  f"{', '.join(map(str, VERSIONS))}")  # fmt: skip
        if (self.version == 2) != paired:
            raise DataFormatError(f"{self.source}: data version {self.version} but the descriptions "
                                  f"{'carry' if paired else 'lack'} 'pair' ids: version 2 needs minimal pairs, "
                                  f"version 1 has none (fix the VERSION file or the descriptions)")  # fmt: skip

    def parts(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "descriptions": self.descriptions,
            "questions": self.questions,
            "dilemmas": self.dilemmas,
            "portrait_items": self.portrait_items,
            "neutral_text": self.neutral_text,
        }

    @property
    def sha256(self) -> str:
        """A hash of every record: results carry it, so they name exactly the data they came from."""
        return sha256_json(self.parts())

    @classmethod
    def from_datasets(cls, splits: Any) -> ValueData:
        """Back from the ``datasets.DatasetDict`` of :func:`load_valueinsight` (its search and test splits rejoined)."""
        rows = {name: _drop_none(splits[name].to_list()) if name in splits else [] for name in
                ("descriptions", "search", "test", "dilemmas", "portrait_items", "neutral_text")}  # fmt: skip
        return cls(rows["descriptions"], rows["search"] + rows["test"], rows["dilemmas"], rows["portrait_items"],
                   rows["neutral_text"], source="datasets.DatasetDict")  # fmt: skip

    def questions_of(self, split: str) -> list[dict[str, Any]]:
        return [q for q in self.questions if q["split"] == split]

    def descriptions_of(self, split: str) -> list[dict[str, Any]]:
        """The descriptions of ``split`` (v2: ``search`` builds locate's prompts, ``test`` is held out for test
        prompts and the prompted control). v1 descriptions carry no split and belong to both."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return [d for d in self.descriptions if d.get("split", split) == split]

    def dilemmas_of(self, split: str) -> list[dict[str, Any]]:
        """The dilemmas of ``split``: ``dev`` to tune an instrument, ``test`` for the final numbers. v1 dilemmas
        carry no split and count as ``test``."""
        if split not in ("dev", "test"):
            raise ValueError(f"a dilemma split is 'dev' or 'test' (dilemmas are never in search), got {split!r}")
        return [d for d in self.dilemmas if d.get("split", "test") == split]

    def counts(self) -> dict[str, Any]:
        """Counts per part and per dimension (and pole / split), for data cards and `vlens data`."""
        out: dict[str, Any] = {}
        for name, recs in self.parts().items():
            by: dict[str, int] = {}
            for r in recs:
                key = r.get("dimension", r.get("basic_value", "all"))
                if "pole" in r:
                    key += f" {r['pole']}"
                if "split" in r:
                    key += f" {r['split']}"
                by[key] = by.get(key, 0) + 1
            out[name] = {"total": len(recs), **dict(sorted(by.items()))}
        return out


def _drop_none(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ``datasets`` table fills a field some rows lack with None; the records never held it."""
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


def read_version(folder: Path) -> int | None:
    """The data version a folder's ``VERSION`` file names, or None when it has none (then the records decide)."""
    path = folder / "VERSION"
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8").strip()
    if text not in {str(v) for v in VERSIONS}:
        raise DataFormatError(f"{path}: expected one of {', '.join(map(str, VERSIONS))}, got {text[:20]!r}")
    return int(text)


def _read_dir(folder: Path, kind: str) -> list[dict[str, Any]]:
    """Records of ``kind`` from ``folder/kind.jsonl`` or every file in ``folder/kind/``."""
    single = folder / f"{kind}.jsonl"
    if single.exists():
        return read_records(single, kind)
    sub = folder / kind
    files = sorted(sub.glob("*.jsonl")) if sub.is_dir() else []
    records = [r for f in files for r in read_records(f, kind)]
    ids = [r["id"] for r in records]
    if len(ids) != len(set(ids)):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DataFormatError(f"{sub}: duplicate ids across files: {dup}")
    return records


def load_value_data(data_dir: str | os.PathLike | None = None) -> ValueData:
    """Load and validate every part of ValueInsight (the shipped copy unless ``data_dir`` is given).

    ``data_dir`` may hold ``descriptions.jsonl`` or ``descriptions/*.jsonl`` (and likewise
    ``questions``, ``dilemmas``, ``portrait_items``, ``neutral_text``); descriptions and
    questions are required, the rest optional.
    """
    folder = Path(data_dir) if data_dir else SHIPPED_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of ValueInsight files")
    parts = {kind: _read_dir(folder, kind) for kind in ("descriptions", "questions", "dilemmas", "portrait_items", "neutral_text")}
    for kind in ("descriptions", "questions"):
        if not parts[kind]:
            raise DataFormatError(f"{folder}: no {kind} found (expected {kind}.jsonl or {kind}/*.jsonl)")
    return ValueData(**parts, source="vlens ValueInsight" if data_dir is None else str(folder), version=read_version(folder))


def load_author_layout(folder: str | os.PathLike) -> ValueData:
    """Load the original ValueInsight files in the authors' layout.

    ``value_descrption.json`` (sic): JSON lines ``{"<Dimension>[_reversed]": text}``;
    ``search/<Dimension>.json`` and ``test/<Dimension>.json``: JSON lines with ``question``
    (test files also ``question_id``).
    """
    folder = Path(folder)
    desc_file = folder / "value_descrption.json"
    if not desc_file.exists():
        raise FileNotFoundError(f"{desc_file} not found: expected the authors' layout (value_descrption.json, search/, test/)")
    descriptions, counters = [], {}
    for lineno, row in _rows(desc_file):
        where = f"{desc_file}, line {lineno}"
        if not isinstance(row, dict) or len(row) != 1:
            raise DataFormatError(f"{where}: expected one key (a dimension name, optionally _reversed)")
        ((key, text),) = row.items()
        if key not in AUTHOR_KEYS:
            raise DataFormatError(f"{where}: unknown dimension key {key!r} (expected one of {', '.join(AUTHOR_KEYS)})")
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{where}: empty or non-string description")
        dim, pole = AUTHOR_KEYS[key]
        n = counters[key] = counters.get(key, 0) + 1
        # The authors' file does not tag basic values; record the dimension's first as unknown-specific.
        descriptions.append(
            {"id": f"{key}.{n:03d}", "dimension": dim, "pole": pole, "value": DIMENSIONS[dim].basic_values[0],
             "subvalue": "untagged (authors' file)", "text": text}
        )  # fmt: skip
    questions = []
    for split in ("search", "test"):
        for dim in DIMENSIONS:
            path = folder / split / f"{dim}.json"
            if not path.exists():
                continue
            for lineno, row in _rows(path):
                where = f"{path}, line {lineno}"
                if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"].strip():
                    raise DataFormatError(f"{where}: missing or empty field 'question'")
                qid = str(row.get("question_id", lineno))
                questions.append({"id": f"{split}.{dim}.{qid}", "dimension": dim, "domain": "unspecified", "split": split, "text": row["question"]})
    if not questions:
        raise DataFormatError(f"{folder}: no questions in search/<Dimension>.json or test/<Dimension>.json")
    return ValueData(descriptions=descriptions, questions=questions, source=f"authors' layout: {folder}")


def load_valueinsight(data_dir: str | os.PathLike | None = None, *, layout: str = "vlens") -> Any:
    """ValueInsight as a Hugging Face ``datasets.DatasetDict``.

    Splits: ``descriptions``, ``search`` and ``test`` (the situational questions),
    ``dilemmas``, ``portrait_items``, ``neutral_text`` (those present). ``layout="authors"``
    reads the authors' original files instead of vlens' own.
    """
    from datasets import Dataset, DatasetDict

    data = load_author_layout(data_dir) if layout == "authors" else load_value_data(data_dir) if layout == "vlens" else None
    if data is None:
        raise ValueError(f"layout must be 'vlens' or 'authors', got {layout!r}")
    splits = {
        "descriptions": data.descriptions,
        "search": data.questions_of("search"),
        "test": data.questions_of("test"),
        "dilemmas": data.dilemmas,
        "portrait_items": data.portrait_items,
        "neutral_text": data.neutral_text,
    }
    return DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items() if rows})
