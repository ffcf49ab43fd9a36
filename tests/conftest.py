"""Shared fixtures: tiny random models (fast) and the real offline SmolLM2 and Gemma-3-270M models (marked `model`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

import vlens

V1_COMMIT = "c0ee5ce"  # the last commit with ValueInsight v1 in the package


@pytest.fixture(scope="session")
def tiny_llama():
    return vlens.tiny_model("llama", seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2():
    return vlens.tiny_model("gpt2", seed=0)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny(request):
    return vlens.tiny_model(request.param, seed=0)


@pytest.fixture(scope="session")
def smollm():
    torch.manual_seed(0)
    return vlens.load_model()


@pytest.fixture(scope="session")
def gemma():
    """Gemma-3-270M base from its four GGUF chunk packages; skipped where they are not installed."""
    try:
        vlens.models.find_gguf_parts("gemma-3-270m")
    except vlens.ModelNotAvailableError as err:
        pytest.skip(f"Gemma-3-270M is not installed here: {err}")
    torch.manual_seed(0)
    return vlens.load_model("gemma-3-270m")


@pytest.fixture(scope="session")
def small_data():
    """A small ValueData in vlens' schemas: 2 dimensions, 3 descriptions per pole, 4 questions each."""
    from vlens.data import ValueData

    descriptions, questions = [], []
    for dim, value in (("Conservation", "Security"), ("Self-Transcendence", "Benevolence")):
        for pole, words in (("+", ["steady routines", "old customs", "clear rules"]), ("-", ["fresh starts", "bold changes", "my own path"])):
            for i, w in enumerate(words):
                descriptions.append({"id": f"{dim}.{pole}.{i}", "dimension": dim, "pole": pole, "value": value,
                                     "subvalue": "", "text": f"I care most about {w}."})
        for i in range(4):
            questions.append({"id": f"{dim}.q{i}", "dimension": dim, "domain": "work", "split": "search" if i < 3 else "test",
                              "text": f"Situation {i} at work for {dim}: a choice comes up{'!' * i} What would you do?"})
    return ValueData(descriptions=descriptions, questions=questions, source="test fixture")


@pytest.fixture(scope="session")
def v1_data_dir(tmp_path_factory):
    """ValueInsight v1 (commit c0ee5ce) in its old layout (no VERSION, no pairs), extracted from git."""
    root = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    try:
        listing = subprocess.run([*git, "ls-tree", "-r", "--name-only", V1_COMMIT, "vlens/data/valueinsight"],
                                 capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"needs the git history (commit {V1_COMMIT}) to extract the v1 data")
    folder = tmp_path_factory.mktemp("valueinsight_v1")
    for path in (p for p in listing if p.endswith(".jsonl")):
        out = folder / Path(path).relative_to("vlens/data/valueinsight")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(subprocess.run([*git, "show", f"{V1_COMMIT}:{path}"], capture_output=True, check=True).stdout)
    return folder


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
    """A whole `vlens run` on the tiny model, for report and browser tests."""
    from vlens.cli import main

    folder = tmp_path_factory.mktemp("tiny_run") / "run"
    args = ["run", "--out", str(folder), "--model", "tiny-llama", "--max-pairs", "2", "--max-dilemmas", "1",
            "--max-portrait", "3", "--max-neutral", "1", "--max-questions", "1", "--kl-targets", "0.001", "--n-random", "2",
            "--selection", "top_k:10", "--quiet"]  # fmt: skip
    assert main(args) == 0
    return folder
