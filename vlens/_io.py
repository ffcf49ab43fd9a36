"""Atomic writes and the safetensors + JSON format every vlens result is saved in.

A result is two files side by side: ``NAME.safetensors`` (tensors) and ``NAME.json``
(metadata: what produced the tensors). Writes go to a temporary file in the same folder
and are renamed into place, so an interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vlens._version import __version__

FORMAT_VERSION = 1


class VlensFileError(ValueError):
    """A saved vlens file is missing, corrupt or from an incompatible producer."""


def vlens_version() -> str:
    return __version__


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise VlensFileError(f"{path} does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise VlensFileError(f"{path} is not valid JSON ({err}); delete it and recompute.") from err


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any], *, kind: str
) -> Path:
    """Save ``tensors`` to ``path``.safetensors and ``metadata`` to ``path``.json.

    The JSON records ``kind`` (which vlens class wrote it), the format and vlens versions.
    The tensors are written first: a JSON file is only ever next to complete tensors.
    """
    base = Path(path).with_suffix("") if Path(path).suffix in {".safetensors", ".json"} else Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(base.with_suffix(".safetensors"), lambda tmp: save_file(tensors, str(tmp)))
    meta = {"kind": kind, "format_version": FORMAT_VERSION, "vlens_version": vlens_version(), **metadata}
    write_json(base.with_suffix(".json"), meta)
    return base


def load_tensors(path: str | os.PathLike, *, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load what :func:`save_tensors` wrote, checking that it is a ``kind`` result."""
    base = Path(path).with_suffix("") if Path(path).suffix in {".safetensors", ".json"} else Path(path)
    meta = read_json(base.with_suffix(".json"))
    if meta.get("kind") != kind:
        raise VlensFileError(f"{base}.json holds a {meta.get('kind')!r}, not a {kind!r}.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise VlensFileError(
            f"{base}.json was written in vlens format {meta.get('format_version')}, this vlens reads "
            f"format {FORMAT_VERSION}; recompute it with this version."
        )
    st = base.with_suffix(".safetensors")
    if not st.exists():
        raise VlensFileError(f"{st} is missing (the JSON metadata is there); recompute the result.")
    try:
        tensors = load_file(str(st))
    except Exception as err:  # safetensors raises several types for corrupt files
        raise VlensFileError(f"{st} is corrupt ({err}); recompute the result.") from err
    return tensors, meta


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
