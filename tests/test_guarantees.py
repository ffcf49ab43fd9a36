"""docs/guarantees.md: every test it names exists, and the claims no other test file checks."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import vlens._io
import vlens.pipeline as P
import vlens.validate as V
from vlens.cli import main
from vlens.locate import LocateResult

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "guarantees.md"
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
LOCATE = ["--model", "tiny-llama", "--dimensions", "co,oc", "--max-pairs", "2", "--selection", "top_k:10", "--quiet"]
VALIDATE = {"max_dilemmas": 1, "max_portrait": 3, "max_neutral": 1, "max_questions": 1, "n_random": 2, "kl_targets": [0.001],
            "controls": ["prompted", "steering"]}  # a random tiny model never reaches KL 0.1


def test_every_test_named_on_the_guarantees_page_exists():
    text = PAGE.read_text(encoding="utf-8")
    refs = TEST_REF.findall(text)
    assert len(refs) >= 15, "the page names too few tests"
    for path, name in refs:
        assert (ROOT / path).is_file(), f"docs/guarantees.md names {path}, which does not exist"
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^(?:async )?def {name}\(", source, re.M), f"docs/guarantees.md names {path}::{name}, no such test"
    # Every claim names its test: each list item (with its indented lines) and table row, outside the limits.
    claims, limits = text.split("\n## What vlens does not promise")
    items = re.findall(r"^- .*(?:\n  .*)*", claims, re.M)
    rows = [r for r in re.findall(r"^\|.*", claims, re.M) if not set(r) <= set("|-: ") and "| test |" not in r]
    assert len(items) >= 10 and len(rows) >= 10 and "tests/" not in limits
    for claim in items + rows:
        assert TEST_REF.search(claim), f"docs/guarantees.md: a claim without a test: {claim}"


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")

    def half_then_stop(tmp: Path) -> None:
        tmp.write_text("half of the new")
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        vlens._io.atomic_write(target, half_then_stop)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    vlens._io.atomic_write_text(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


@pytest.fixture(scope="module")
def located(tmp_path_factory) -> Path:
    """An uninterrupted `vlens locate` on the tiny model."""
    folder = tmp_path_factory.mktemp("located") / "run"
    assert main(["locate", "--out", str(folder), *LOCATE]) == 0
    return folder


def assert_same_locate(a: Path, b: Path) -> None:
    ra, rb = LocateResult.load(a / "locate"), LocateResult.load(b / "locate")
    assert ra.stats.equal(rb.stats, rtol=0, atol=0)
    assert set(ra.neuron_sets) == set(rb.neuron_sets)
    for name, ns in ra.neuron_sets.items():
        assert torch.equal(ns.mask(), rb[name].mask()), name


def test_a_full_disk_is_one_line_and_the_run_resumes_to_the_same_result(located, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"
    real_replace = os.replace

    def full_disk(src, dst):
        if "locate" in Path(dst).parts:  # run.json goes in; the first file of the locate stage does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(vlens._io.os, "replace", full_disk)
    assert main(["locate", "--out", str(folder), *LOCATE]) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # after the progress log: the error, in one line, naming the file
    assert last.startswith("vlens locate: error: ") and "Traceback" not in err
    assert "No space left on device" in last and str(folder / "locate") in last
    assert not list(folder.rglob("*.tmp")), "a temporary file was left behind"
    assert json.loads((folder / "run.json").read_text())["done"] == []
    monkeypatch.setattr(vlens._io.os, "replace", real_replace)  # space again
    assert main(["locate", "--out", str(folder), "--quiet"]) == 0  # the options come from run.json
    assert_same_locate(folder, located)


def validate_stage(folder: Path) -> None:
    """The validate stage alone (generating answers would add nothing here), on run.json's settings."""
    config = P.RunConfig.from_dict(P.check_run_dir(folder)["config"] | VALIDATE)
    P.run_pipeline(folder, config, resume=True, stages=("validate",), progress=False)


@pytest.fixture(scope="module")
def validated(located, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("validated") / "run"
    shutil.copytree(located, folder)
    validate_stage(folder)
    return folder


def test_an_interrupted_validation_resumes_to_the_same_table(located, validated, tmp_path, monkeypatch):
    """Ctrl-C during validation keeps what the stage had computed (the steering vectors of the
    positive control) and a resumed run gives the table of an uninterrupted one."""
    folder = tmp_path / "run"
    shutil.copytree(located, folder)
    original, calls = V.validate, []

    def interrupted(*args, **kwargs):  # Ctrl-C in the first call, once the stage has started
        calls.append(kwargs.get("steering"))
        if len(calls) == 1:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(V, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        validate_stage(folder)
    vectors = folder / "validation" / "steering.json"
    assert vectors.exists() and json.loads((folder / "run.json").read_text())["done"] == ["locate"]
    kept = vectors.stat().st_mtime_ns
    validate_stage(folder)
    assert vectors.stat().st_mtime_ns == kept  # reused, not recomputed
    pd.testing.assert_frame_equal(pd.read_csv(folder / "validation" / "validation.csv"),
                                  pd.read_csv(validated / "validation" / "validation.csv"))  # fmt: skip
    done = [json.loads((f / "run.json").read_text())["done"] for f in (folder, validated)]
    assert done[0] == done[1] == ["locate", "validate"]


def test_an_edited_validation_table_is_refused(validated, tmp_path, capsys):
    """A table with the recorded number of rows but one value changed: its sha256 differs."""
    folder = tmp_path / "run"
    shutil.copytree(validated, folder)
    csv = folder / "validation" / "validation.csv"
    table = pd.read_csv(csv)
    table.loc[len(table) - 1, "value"] += 0.5
    table.to_csv(csv, index=False)
    with pytest.raises(ValueError, match="validation.csv does not match validation.json"):
        V.ValidationResult.load(folder / "validation")
    assert main(["report", str(folder), "--no-neurons"]) == 2
    assert f"{csv} does not match validation.json" in capsys.readouterr().err


def test_a_run_directory_refuses_another_model(located, tmp_path, capsys):
    """Same model name, other weights (a hub model updated since, another seed): the fingerprint differs."""
    folder = tmp_path / "run"
    shutil.copytree(located, folder)
    meta = json.loads((folder / "run.json").read_text())
    meta["model"]["fingerprint"] = {"weights": "of another model"}
    (folder / "run.json").write_text(json.dumps(meta))
    assert main(["validate", "--out", str(folder), "--quiet"]) == 2
    assert "was run on another model" in capsys.readouterr().err
    assert not (folder / "validation").exists()


def test_shards_take_no_lock(tmp_path):
    """The tasks of a job array write into one directory at once, each into its own files."""
    import socket

    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname()}
        (folder / "run.lock").write_text(json.dumps(lock))
        assert main(["locate", "--out", str(folder), *LOCATE, "--shard", "0/2"]) == 0
        assert (folder / "shards" / "stats-0-of-2.json").is_file()
        assert json.loads((folder / "run.lock").read_text()) == lock  # the live holder's lock stays
    finally:
        holder.kill()
        holder.wait()
