"""The `vlens` commands the documentation shows run as written, on the tiny model.

Every `vlens ...` line of a shell block (```bash, ```sh, ```shell, ```console) in README.md and
docs/getting_started.md runs through `vlens.cli.main`, in order (later commands continue the run
directories of earlier ones), in a temporary working directory. The only changes, all below:

1. `[...]` marks an optional part: the command runs without it. With every optional part put in,
   it must still parse (`test_every_documented_command_parses`, which covers all of docs/ too).
2. `--model tiny-llama` for every subcommand that takes `--model`.
3. `--selection top_k:20` for every subcommand that takes `--selection`: the paper's 2,000 and
   the README's 500 are more than tiny-llama's 288 neurons.
4. The sample sizes of TINY for every subcommand that takes them, and `--quiet`. Rules 2-4 append
   their options, so they win over the example's own (argparse keeps the last value). TINY also
   sets `--kl-targets 0.001` (a random tiny model's logits are so flat that no edit reaches a KL of
   0.1) and `--controls prompted` (the dose search of the other controls adds minutes, tested elsewhere).
5. `--dimensions co` where the example names no dimensions (all four would repeat the same code
   four times).
6. A folder that `vlens data DIR` or `--data DIR` names holds a copy of the shipped value data.

A command that cannot run on the tiny model goes into SKIP, with the reason.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vlens.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
RUN_DOCS = ("README.md", "docs/getting_started.md")
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)[ \t]*\n(.*?)^```", re.M | re.S)
TINY = {"--model": "tiny-llama", "--selection": "top_k:20", "--max-pairs": "2", "--max-dilemmas": "1",
        "--max-portrait": "3", "--max-neutral": "1", "--max-questions": "1", "--n-random": "2", "--kl-targets": "0.001",
        "--controls": "prompted"}  # fmt: skip
SKIP: dict[str, str] = {}  # a command as written, without its optional parts -> why it cannot run on the tiny model


def documented_commands(text: str) -> list[list[str]]:
    """The `vlens` commands of the shell blocks, each as the words after `vlens` (lines ending in `\\` joined,
    comments dropped); `torchrun ... -m vlens ...` counts too."""
    commands = []
    for block in SHELL_BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["vlens"]:
                commands.append(words[1:])
            elif "-m" in words[:-1] and words[words.index("-m") + 1] == "vlens":
                commands.append(words[words.index("-m") + 2 :])
    return commands


def without_optional(words: list[str]) -> list[str]:
    """Rule 1: leave out every `[...]` part (it may span words: `[--out DIR]`)."""
    kept, depth = [], 0
    for word in words:
        depth += word.startswith("[")
        if not depth:
            kept.append(word)
        depth -= word.endswith("]")
    return kept


def with_optional(words: list[str]) -> list[str]:
    return [w.removeprefix("[").removesuffix("]") for w in words]


def options_of(command: str) -> set[str]:
    return set(build_parser().commands[command]._option_string_actions)


def as_run(command: list[str]) -> list[str]:
    """Rules 1-5: the argv the test runs for a documented command."""
    argv = without_optional(command)
    accepted = options_of(argv[0])
    for option, value in TINY.items():
        if option in accepted:
            argv += [option, value]
    if "--dimensions" in accepted and "--dimensions" not in argv:
        argv += ["--dimensions", "co"]  # rule 5
    return argv + (["--quiet"] if "--quiet" in accepted else [])


def with_shipped_data(argv: list[str]) -> None:
    """Rule 6."""
    from vlens.data import load_value_data, write_records

    folders = [argv[1]] if argv[0] == "data" and len(argv) > 1 and not argv[1].startswith("-") else []
    folders += [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--data"]
    shipped = load_value_data()
    for folder in map(Path, folders):
        if not folder.exists():
            write_records(folder / "descriptions.jsonl", shipped.descriptions)
            write_records(folder / "questions.jsonl", shipped.questions)


def test_every_documented_command_parses():
    """Every `vlens` command in the README and docs/ parses, with its optional parts in and out."""
    parser = build_parser()
    commands = {str(page.relative_to(ROOT)): documented_commands(page.read_text(encoding="utf-8"))
                for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}  # fmt: skip
    assert sum(map(len, commands.values())) >= 20, commands
    for page, found in commands.items():
        for command in found:
            for form in (without_optional(command), with_optional(command)):
                try:
                    parser.parse_args(form)
                except SystemExit as err:
                    raise AssertionError(f"{page}: `vlens {shlex.join(form)}` does not parse") from err


def test_skipped_commands_are_still_documented():
    documented = {shlex.join(without_optional(c)) for doc in RUN_DOCS
                  for c in documented_commands((ROOT / doc).read_text(encoding="utf-8"))}  # fmt: skip
    assert set(SKIP) <= documented, f"SKIP names commands the docs no longer show: {set(SKIP) - documented}"


@pytest.mark.parametrize("doc", RUN_DOCS)
def test_documented_commands_run_on_the_tiny_model(doc, tmp_path, monkeypatch, capsys):
    commands = documented_commands((ROOT / doc).read_text(encoding="utf-8"))
    subcommands = {c[0] for c in commands}
    assert {"run", "report", "models", "data"} <= subcommands, f"{doc}: fewer examples than expected: {commands}"
    monkeypatch.chdir(tmp_path)  # relative run directories and data folders land here
    for command in commands:
        if shlex.join(without_optional(command)) in SKIP:
            continue
        argv = as_run(command)
        with_shipped_data(argv)
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as err:  # argparse refused it
            code = err.code
        assert code == 0, f"{doc}: `vlens {shlex.join(command)}` failed (run as `vlens {shlex.join(argv)}`):\n{capsys.readouterr().err}"
