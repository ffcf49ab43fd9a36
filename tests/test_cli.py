"""The `vlens` command: subcommands, run directories, resume and user errors (no tracebacks)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vlens.validate as V
from vlens.cli import build_parser, main
from vlens.models import OFFLINE_MODELS

# Tiny sizes, by stage: each subcommand accepts only the options of the stages it runs.
TINY_LOCATE = ["--model", "tiny-llama", "--max-pairs", "2", "--selection", "top_k:10", "--quiet"]
# Hand-given gamma only (no KL target, no calibrated controls): the quickest validation that runs every stage.
TINY_VALIDATE = ["--max-dilemmas", "1", "--max-portrait", "3", "--max-neutral", "1", "--max-questions", "1", "--gammas", "1",
                 "--kl-targets", "", "--n-random", "2", "--controls", "prompted"]  # fmt: skip
TINY_RUN = TINY_LOCATE + TINY_VALIDATE


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlens", *args], capture_output=True, text=True, timeout=300)


def test_models_and_data(capsys):
    assert main(["models"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out
    assert main(["data", "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert "descriptions: 640" in out and "Conservation + search" in out
    # the per-dimension gate numbers (issue 14)
    assert "quality gates" in out and "Self-Transcendence   dilemma options" in out and "near-duplicates" in out


@pytest.mark.parametrize("args,message", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "--gammas", "one"], "expected comma-separated numbers"),
    (["run", "--dimensions", "kindness"], "unknown dimension"),
    (["run", "--no-such-option"], "unrecognized arguments"),
    (["report", "/nonexistent/run"], "is not a directory"),
    (["data", "/nonexistent/data"], "is not a folder"),
    # issue 15: each of these used to run, or to fail with a misleading message
    (["run", "--dimensions", ""], "no dimension given"),
    (["run", "--dimensions", "co,co"], "listed twice"),
    (["run", "--gammas", "-1", "--out", "/tmp/vlens-never-written"], "gammas must be finite and > 0"),
    (["run", "--gammas", "0", "--out", "/tmp/vlens-never-written"], "gammas must be finite and > 0"),
    (["run", "--kl-targets", "0", "--out", "/tmp/vlens-never-written"], "KL targets must be finite and > 0"),
    (["run", "--controls", "magic", "--out", "/tmp/vlens-never-written"], "unknown control(s) ['magic']"),
    (["run", "--instrument", "cloze-x", "--out", "/tmp/vlens-never-written"], "unknown dilemma instrument 'cloze-x'"),
    (["data", "--examples", "-1"], "expected a whole number >= 0"),
    (["compare", "/tmp", "--sizes", "2"], "expected fractions of all neurons between 0 and 1"),
    (["locate", "--out", "/tmp/vlens-never-written", "--data", "/nonexistent/data"], "/nonexistent/data"),
    (["run", "--resume", "--out", "/tmp/vlens-no-such-run"], "holds no run (no run.json)"),
    (["locate", "--out", "/tmp/vlens-never-written", "--selection", "paper:x"], "takes no value"),
    (["validate", "--out", "/tmp/vlens-never-written"], "has no locate results yet; run `vlens locate --out"),
    (["validate", "--gammas", "1"], "the following arguments are required: --out"),
    (["run", "--resume"], "--resume needs --out"),
])  # fmt: skip
def test_user_errors_are_one_line_and_exit_2(args, message):
    res = run_cli(*args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_sigterm_stops_like_ctrl_c(tmp_path):
    """Issue 15: SIGTERM exited 143 with no message; now it stops like Ctrl-C, with the resume command."""
    import signal
    import time

    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "vlens", "run", "--out", str(out), *TINY_RUN, "--max-pairs", "40"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    for _ in range(600):  # wait until the run has started writing (its run.json), then stop it
        if (out / "run.json").exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"interrupted; continue with: vlens run --out {out} --resume" in err


def test_bad_selection_and_sizes(tmp_path, capsys):
    assert main(["locate", "--out", str(tmp_path / "r"), *TINY_LOCATE, "--selection", "nearest:3"]) == 2
    assert "unknown selection rule" in capsys.readouterr().err
    assert main(["locate", "--out", str(tmp_path / "r"), *TINY_LOCATE, "--max-pairs", "0"]) == 2
    assert "--max-pairs must be at least 1" in capsys.readouterr().err


def test_run_directory_checks(tmp_path, capsys):
    folder = tmp_path / "run"
    assert main(["locate", "--out", str(folder), *TINY_LOCATE]) == 0
    meta = json.loads((folder / "run.json").read_text())
    assert meta["done"] == ["locate"] and (folder / "locate" / "stats.safetensors").exists()
    # same directory, other settings: refused with the differing option named
    assert main(["locate", "--out", str(folder), *TINY_LOCATE, "--seed", "5"]) == 2
    assert "seed differ" in capsys.readouterr().err
    # `run` into an existing directory without --resume: refused
    assert main(["run", "--out", str(folder), *TINY_RUN]) == 2
    assert "--resume" in capsys.readouterr().err
    # another vlens version
    meta["vlens_version"] = "0.0.1"
    (folder / "run.json").write_text(json.dumps(meta))
    assert main(["report", str(folder), "--no-neurons"]) == 2
    assert "vlens 0.0.1" in capsys.readouterr().err


def test_interrupted_run_resumes(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"
    original = V.validate

    def interrupted(*args, **kwargs):  # Ctrl-C while validating
        raise KeyboardInterrupt

    monkeypatch.setattr(V, "validate", interrupted)
    assert main(["run", "--out", str(folder), *TINY_RUN]) == 130
    assert "--resume" in capsys.readouterr().err
    assert json.loads((folder / "run.json").read_text())["done"] == ["locate"]
    monkeypatch.setattr(V, "validate", original)
    assert main(["run", "--out", str(folder), "--resume"]) == 0  # the options come from run.json
    meta = json.loads((folder / "run.json").read_text())
    assert meta["done"] == ["locate", "validate", "generate", "report"]
    for name in ("report.html", "report.md", "answers.jsonl", "log.txt", "validation/validation.csv"):
        assert (folder / name).exists(), name


def test_locate_then_validate_with_other_validation_options(tmp_path, capsys):
    """The README's two stages: validate may choose its own options; locate's stay as run.json has them."""
    folder = tmp_path / "run"
    assert main(["locate", "--out", str(folder), *TINY_LOCATE, "--dimensions", "co"]) == 0
    sizes = ["--max-dilemmas", "1", "--max-portrait", "3", "--max-neutral", "1", "--max-questions", "1"]
    assert main(["validate", "--out", str(folder), *sizes, "--gammas", "0.5,2", "--kl-targets", "", "--n-random", "3",
                 "--controls", "prompted", "--quiet"]) == 0  # fmt: skip
    meta = json.loads((folder / "run.json").read_text())
    assert meta["done"] == ["locate", "validate", "generate"]
    assert meta["config"]["model"] == "tiny-llama" and meta["config"]["gammas"] == [0.5, 2.0] and meta["config"]["n_random"] == 3
    validation = json.loads((folder / "validation" / "validation.json").read_text())
    assert {"instruments_sha256", "keep_prob", "neuron_sets", "instrument_sizes"} <= set(validation)  # validate's own record
    assert validation["gammas"] == [0.5, 2.0] and validation["config"] == meta["config"]
    assert main(["validate", "--out", str(folder), "--gammas", "1"]) == 2  # validate is done: its settings are fixed
    assert "gammas differ" in capsys.readouterr().err


def test_shards_then_merge_then_validate(tmp_path, capsys):
    folder = tmp_path / "run"
    for i in range(2):  # every task of a job array records the settings, so merge and validate find them
        assert main(["locate", "--out", str(folder), *TINY_LOCATE, "--dimensions", "co", "--shard", f"{i}/2"]) == 0
    assert main(["merge", str(folder)]) == 0
    assert f"continue with: vlens validate --out {folder}" in capsys.readouterr().out
    meta = json.loads((folder / "run.json").read_text())
    assert meta["done"] == ["locate"] and meta["merged_shards"] == 2 and meta["config"]["dimensions"] == ["Conservation"]


def test_merge_refuses_shards_located_with_other_settings(tmp_path, capsys):
    """Issue 15: merge accepted shards whose settings differ from run.json's."""
    folder = tmp_path / "run"
    for i in range(2):
        assert main(["locate", "--out", str(folder), *TINY_LOCATE, "--dimensions", "co", "--shard", f"{i}/2"]) == 0
    meta = json.loads((folder / "run.json").read_text())
    meta["config"]["hook"] = "post"  # as if run.json had been written by a run with other settings (located: gate)
    (folder / "run.json").write_text(json.dumps(meta))
    assert main(["merge", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "were located with other settings" in err and "hook: 'gate' vs 'post'" in err
    assert not (folder / "locate").exists()


@pytest.mark.parametrize("bad,message", [
    (["--n-random", "1"], "--n-random must be at least 2"),
    (["--gammas", "nan"], "gammas must be finite and > 0"),
    (["--gammas", ",", "--kl-targets", ","], "give KL targets"),
    (["--device", "foo"], "unknown device 'foo'"),
    (["--device", "cuda:999"], "device 'cuda:999'"),
])  # fmt: skip
def test_bad_options_are_refused_before_the_directory_is_written(tmp_path, capsys, bad, message):
    folder = tmp_path / "run"
    assert main(["run", "--out", str(folder), *TINY_RUN, *bad]) == 2
    assert message in capsys.readouterr().err
    assert not (folder / "run.json").exists()


def test_compare_subcommand(tiny_run_dir, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"  # a copy: the shared run directory's report stays as `vlens run` wrote it
    shutil.copytree(tiny_run_dir, run_dir)
    args = ["compare", str(run_dir), "--sizes", "0.02", "--n-random", "2", "--max-dilemmas", "1", "--max-neutral", "1",
            "--selectors", "delta,lape,random", "--gammas", "1", "--kl-targets", "", "--controls", "prompted", "--quiet"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "comparison:" in out and "lape" in out
    header = out.splitlines()[0].split()  # the verdict table: one line per selector, size, dimension and direction
    assert header[:5] == ["selector", "size", "dimension", "direction", "verdict"] and "p (Holm)" in out.splitlines()[0]
    assert (run_dir / "compare" / "compare_summary.csv").exists()
    assert (run_dir / "compare" / "matched_effects.html").exists() and (run_dir / "compare" / "calibration.csv").exists()
    from vlens.report import write_report

    html = write_report(run_dir, neuron_views=0).read_text()
    assert "Baseline selectors" in html and "Cost of each selector" in html


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    """Issue 15: two runs into one --out both computed. A live holder is refused; a dead one's lock is taken."""
    import json
    import socket

    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        assert main(["locate", "--out", str(out), *TINY_LOCATE]) == 2
        assert f"is in use by process {holder.pid}" in capsys.readouterr().err
        assert not (out / "run.json").exists()  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    assert main(["locate", "--out", str(out), *TINY_LOCATE]) == 0  # the holder is gone: its lock is stale
    assert (out / "locate").is_dir() and not (out / "run.lock").exists()  # released when the run ended


def test_filesystem_and_file_faults_are_one_line(tmp_path, capsys):
    """Issue 15: these printed tracebacks. Each is now one line naming the path, with exit 2."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["locate", "--out", str(a_file / "run"), *TINY_LOCATE]) == 2
    assert str(a_file) in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("[1, 2, 3]")
    assert main(["report", str(run)]) == 2
    assert "is not a vlens run record" in capsys.readouterr().err
    data = tmp_path / "data"
    data.mkdir()
    (data / "descriptions.jsonl").write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    assert main(["data", str(data)]) == 2
    assert f"{data / 'descriptions.jsonl'}: not UTF-8 text" in capsys.readouterr().err


def test_data_runs_the_prompt_building_of_locate(tmp_path, capsys):
    """Issue 15: `vlens data DIR` passed data that `locate` then refused (here: no `-` descriptions)."""
    import vlens.data as D

    shipped = D.load_value_data()
    folder = tmp_path / "mine"
    unpaired = [{k: v for k, v in d.items() if k != "pair"} for d in shipped.descriptions]  # v1 layout: no pairs
    D.write_records(folder / "descriptions.jsonl", [d for d in unpaired if d["pole"] == "+"])
    D.write_records(folder / "questions.jsonl", shipped.questions)
    assert main(["data", str(folder)]) == 2
    assert "both poles need descriptions" in capsys.readouterr().err
    D.write_records(folder / "descriptions.jsonl", [d for d in shipped.descriptions if d["pole"] == "+"])
    assert main(["data", str(folder)]) == 2  # v2: a description without its partner is refused at load
    assert "needs exactly one '+' and one '-' description" in capsys.readouterr().err
    D.write_records(folder / "descriptions.jsonl", shipped.descriptions)
    assert main(["data", str(folder), "--examples", "0"]) == 0
    out = capsys.readouterr().out
    assert "locate can build its prompts" in out and "(version 2," in out


# The options of each stage, as docs/getting_started.md lists them (written out here, not read from the parser).
COMMON = {"--out", "--resume", "--full", "--device", "--quiet", "--model", "--data", "--seed", "--batch-size"}
LOCATE = {"--dimensions", "--scope", "--hook", "--selection", "--max-pairs"}
VALIDATE = {"--kl-targets", "--gammas", "--n-random", "--controls", "--instrument", "--match-frequency", "--max-dilemmas",
            "--max-portrait", "--max-neutral"}  # fmt: skip
GENERATE = {"--max-questions"}


def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command,own", [
    ("run", COMMON | LOCATE | VALIDATE | GENERATE),
    ("locate", COMMON | LOCATE | {"--shard"}),
    ("validate", COMMON | VALIDATE | GENERATE),
])  # fmt: skip
def test_each_subcommand_shows_only_the_options_of_its_stages(command, own, capsys):
    """Issue 15: locate listed the validation options and the reverse; a stage's settings come from run.json."""
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text(command, capsys))) - {"--help"}
    assert shown == own, f"missing {sorted(own - shown)}, of another stage {sorted(shown - own)}"


@pytest.mark.parametrize("argv,option,owners", [
    (["locate", "--out", "/tmp/vlens-never-written", "--gammas", "0.5,1"], "--gammas", "vlens run, vlens validate"),
    (["validate", "--out", "/tmp/vlens-never-written", "--max-pairs", "8"], "--max-pairs", "vlens run, vlens locate"),
])  # fmt: skip
def test_an_option_of_another_stage_is_a_one_line_error(argv, option, owners, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vlens {argv[0]}: error: unrecognized arguments: {option}")
    assert f"{option} is an option of {owners}" in err and f"see vlens {argv[0]} --help" in err


def test_every_option_has_one_line_of_help_with_its_default(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that argparse wraps no help line
    parser = build_parser()
    assert "``" not in parser.format_help()
    for name, sub in parser.commands.items():
        text = sub.format_help()
        assert "``" not in text, name
        # an option's entry: its line "  --opt ..." and the more indented lines that follow it
        entries = re.findall(r"^  (-[^\n]*(?:\n {4,}\S[^\n]*)*)", text, re.M)
        options = [e for e in entries if not e.startswith("-h")]
        assert len(options) == sum(bool(a.option_strings) for a in sub._actions) - 1, name
        for entry in options:
            assert entry.count("\n") <= 1, f"vlens {name}: more than one line of help: {entry}"
            assert "(default: " in entry or "(required)" in entry, f"vlens {name}: no default shown: {entry}"
            if entry.startswith("--model"):
                assert all(m in entry for m in OFFLINE_MODELS), entry


def test_a_stage_takes_the_settings_of_the_others_from_run_json(tmp_path, monkeypatch):
    """--resume needs no retyping, and --full lifts the sizes of the subcommand's own stages only."""
    import vlens.pipeline as P

    folder = tmp_path / "run"
    (folder / "locate").mkdir(parents=True)
    (folder / "locate" / "locate.json").write_text("{}")
    saved = P.RunConfig(P.LocateConfig(model="tiny-llama", max_pairs=2, seed=3), P.ValidateConfig(n_random=4))
    (folder / "run.json").write_text(json.dumps({"vlens_version": P.vlens_version(), "config": saved.to_dict(), "done": ["locate"]}))
    seen = []
    monkeypatch.setattr(P, "run_pipeline", lambda out, config, **kw: seen.append(config) or Path(out))
    assert main(["run", "--out", str(folder), "--resume", "--quiet"]) == 0
    assert seen[-1] == saved
    assert main(["validate", "--out", str(folder), "--full", "--quiet"]) == 0
    assert seen[-1].locate == saved.locate  # locate's sizes stay as located
    v = seen[-1].validate
    assert v.n_random == 40 and v.kl_targets == [0.05, 0.1, 0.2] and v.max_dilemmas is None and v.max_questions is None
    assert main(["locate", "--out", str(tmp_path / "new"), "--full", "--quiet"]) == 0
    assert seen[-1].locate.max_pairs is None and seen[-1].validate == P.ValidateConfig()
