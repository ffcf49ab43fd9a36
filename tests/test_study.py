"""scripts/study.py, the one-command recipe of docs/study.md, run as written on a tiny random model on the CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def study_script():
    spec = importlib.util.spec_from_file_location("study", ROOT / "scripts" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "tiny"
    study = study_script()
    # KL 0.001: a random tiny model cannot reach 0.1 (docs/validation.md)
    argv = ["--model", "tiny-llama", "--out", str(out), "--quick", "--kl-targets", "0.001", "--device", "cpu"]
    assert study.main(argv) == 0
    return study, out, argv


def test_the_recipe_writes_the_prompted_control_then_the_sweep(studied, tiny_llama):
    study, out, _ = studied
    table = pd.read_csv(out / "instrument_dev.csv")
    assert set(table.slot) == set(study.slots_of(tiny_llama))
    assert set(table.split) == {"dev"} and {"+", "-"} <= set(table.direction) and "all" in set(table.dimension)
    assert table.z.notna().any()
    sweep = pd.read_csv(out / "sweep" / "sweep.csv")
    assert set(sweep.cell[sweep.split == "dev"]) == {f"scope={s},hook={h},sel=top_k:20,score=delta"
                                                      for s in ("question", "all") for h in ("post", "gate")}  # fmt: skip
    assert sweep[sweep.split == "test"].cell.nunique() == 1 and sweep.chosen.any()
    assert (out / "sweep" / "sweep.md").exists() and (out / "sweep" / "sweep.png").exists()


def test_the_recipe_resumes_without_redoing_anything(studied, capsys):
    study, out, argv = studied
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    assert study.main(argv) == 0
    assert "prompted control kept" in capsys.readouterr().out
    assert before and all(p.stat().st_mtime_ns == t for p, t in before.items())


@pytest.mark.model
def test_slots_follow_the_chat_template(smollm, gemma):
    study = study_script()
    assert study.slots_of(smollm) == ["system", "user"]
    assert study.slots_of(gemma) == ["raw"]  # a base model: the description is raw text


def test_no_sweep_stops_after_the_prompted_control(tmp_path):
    out = tmp_path / "only"
    assert study_script().main(["--model", "tiny-llama", "--out", str(out), "--no-sweep", "--device", "cpu"]) == 0
    assert (out / "instrument_dev.csv").exists() and not (out / "sweep").exists()
