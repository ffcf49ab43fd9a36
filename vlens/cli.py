"""The vlens command: parses options and calls the library, nothing else.

    vlens run                      locate + validate + report on the offline default model
    vlens locate / validate / report   one stage into a run directory
    vlens locate --shard I/N + vlens merge   job arrays; torchrun --nproc_per_node=N -m vlens ... for one node
    vlens compare DIR              baseline selectors on the same footing
    vlens sweep --out DIR [--grid full]   a grid of locate settings, chosen on dev dilemmas, reported on test
    vlens neuron DIR L.N           one neuron's card (scores, sets, top prompt pairs, output tokens)
    vlens explain DIR --set D:P    why one cell's edit moves the way it does (direct effects, firing tokens, bands)
    vlens models                   what loads offline and what needs the hub
    vlens data [DIR]               counts and examples of the bundled data or of your files
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from vlens.models import DEFAULT_MODEL, OFFLINE_MODELS


class UserError(Exception):
    """A mistake in what the user asked for: printed as one message, exit code 2."""


class _Parser(argparse.ArgumentParser):
    commands: dict[str, argparse.ArgumentParser]  # the subcommands' parsers, by name (set on the top-level parser)

    def error(self, message: str) -> None:  # argparse's own errors: one line (no usage block), exit 2, no traceback
        print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.5,1,2 ({err})") from err


def _fractions(text: str) -> list[float]:
    sizes = _floats(text)
    if not sizes or not all(0 < x < 1 for x in sizes):
        raise argparse.ArgumentTypeError(f"expected fractions of all neurons between 0 and 1 like 0.001,0.01, got {text!r}")
    return sizes


def _dims(text: str) -> list[str]:
    from vlens.values import dimension

    try:
        dims = [dimension(d).name for d in text.split(",") if d.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    if not dims:  # an empty list would silently mean "all four"
        raise argparse.ArgumentTypeError("no dimension given; name one or more, e.g. co,st (leave the option out for all four)")
    if len(set(dims)) < len(dims):
        raise argparse.ArgumentTypeError(f"a dimension is listed twice in {text!r}")
    return dims


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _config(args: argparse.Namespace, stages: tuple[str, ...]):
    """The run's settings: those given on the command line, the rest from run.json when resuming, else the defaults.
    ``--full`` lifts the sample sizes of ``stages`` only: a later stage never changes what an earlier one fixed."""
    from vlens.pipeline import FULL, SETTINGS, STAGE_SECTION, RunConfig, check_run_dir

    given = {k: v for k, v in vars(args).items() if k in SETTINGS}  # run options default to absent (SUPPRESS)
    sections = {STAGE_SECTION[s] for s in stages if s in STAGE_SECTION}
    full = {k: v for k, v in FULL.items() if SETTINGS[k] in sections} if "full" in args else {}
    if "data" in args:
        given["data_dir"] = str(Path(args.data).resolve())
    resuming = (args.resume or args.command != "run") and (Path(args.out) / "run.json").exists()
    saved = check_run_dir(args.out)["config"] if resuming else {}
    return RunConfig.from_dict(RunConfig().to_dict() | saved | full | given)


def _run_stages(args: argparse.Namespace, stages: tuple[str, ...]) -> int:
    from vlens.distributed import parse_shard
    from vlens.pipeline import run_pipeline

    shard = parse_shard(args.shard) if getattr(args, "shard", None) else None
    if shard is not None and not args.out:
        raise UserError("--shard needs --out: every shard of a job array writes into the same run directory")
    if args.resume and not args.out:
        raise UserError("--resume needs --out: the run directory to continue")
    if "locate" not in stages and not (Path(args.out) / "locate" / "locate.json").exists():
        raise UserError(f"{args.out} has no locate results yet; run `vlens locate --out {args.out}` first")
    args.out = args.out or time.strftime("runs/run-%Y%m%d-%H%M%S")  # fixed now, so an interrupted run can name it
    folder = run_pipeline(args.out, _config(args, stages), resume=args.resume or args.command != "run", stages=stages,
                          device=args.device, shard=shard, progress=not args.quiet)  # fmt: skip
    if shard is not None:
        return 0
    print(f"\nrun directory: {folder}")
    if "report" in stages:
        print(f"report: {(folder / 'report.html').resolve()}")
    if "validate" in stages:  # the last screen answers the question: do the neurons beat random, and how sure is it
        from vlens.report import terminal_verdict

        print("\n" + terminal_verdict(folder, width=shutil.get_terminal_size((140, 40)).columns))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from vlens.pipeline import check_run_dir
    from vlens.report import write_report

    check_run_dir(args.run_dir)
    path = write_report(args.run_dir, neuron_views=0 if args.no_neurons else 1)
    print(f"report: {path.resolve()}\nsummary: {(Path(args.run_dir) / 'report.md').resolve()}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import vlens
    from vlens._io import atomic_write_text
    from vlens.controls import SteeringVectors
    from vlens.evaluate import Instruments
    from vlens.locate import LocateResult
    from vlens.pipeline import check_run_dir
    from vlens.report import selector_verdicts
    from vlens.selectors import compare
    from vlens.viz import compare_figures, figure_html

    meta = check_run_dir(args.run_dir)
    folder = Path(args.run_dir)
    if not (folder / "locate" / "locate.json").exists():
        raise UserError(f"{folder} has no locate results yet; run `vlens locate --out {folder}` first")
    cfg = meta["config"]
    model = vlens.load_model(cfg["model"], device=args.device)
    data = vlens.load_value_data(cfg.get("data_dir"))
    inst = Instruments.default(data, max_dilemmas=args.max_dilemmas, max_portrait=args.max_portrait, max_neutral=args.max_neutral,
                               **({"dilemma_variant": cfg["instrument"]} if cfg.get("instrument") else {}))  # the run's own
    prompts = vlens.build_prompts(data, model, dimensions=args.dimensions, max_pairs=cfg["max_pairs"], template=cfg["template"],
                                  pairs_per_question=cfg["pairs_per_question"], seed=cfg["seed"])  # fmt: skip
    steering = folder / "validation" / "steering"  # the run's steering vectors, when validate computed them
    result = compare(model, LocateResult.load(folder / "locate"), dimensions=args.dimensions, sizes=args.sizes,
                     selectors=args.selectors, instruments=inst, kl_targets=args.kl_targets, gammas=args.gammas,
                     n_random=args.n_random, controls=args.controls, data=data, prompts=prompts, seed=cfg["seed"],
                     steering=SteeringVectors.load(steering) if steering.with_suffix(".json").exists() else None,
                     progress=not args.quiet)  # fmt: skip
    out = result.save(folder / "compare")
    for name, fig in compare_figures(result).items():
        atomic_write_text(out / f"{name}.html", figure_html(fig))
    summary = result.summary()
    print(selector_verdicts(summary).to_string(index=False))
    kl = summary[summary.level == "kl"]
    first = (kl if len(kl) else summary).iloc[0]  # the level shown: the first KL target, else the first hand-given gamma
    at = f"KL {first['at']:g} nats/token" if first.level == "kl" else f"gamma {first['at']:g}"
    print(f"\neach selector and size against {args.n_random} random edits of its size, at {at}; every level is in "
          "compare_summary.csv")  # fmt: skip
    print(f"\ncomparison: {out}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from vlens._io import read_json
    from vlens.pipeline import FULL, SETTINGS, RunConfig
    from vlens.sweep import SWEEP_FULL, sweep

    out = Path(args.out)
    saved = read_json(out / "sweep.json") if args.resume and (out / "sweep.json").exists() else {}
    given = {k: v for k, v in vars(args).items() if k in SETTINGS}
    if "data" in args:
        given["data_dir"] = str(Path(args.data).resolve())
    full = {k: FULL[k] for k in SWEEP_FULL} if args.full else {}
    config = RunConfig.from_dict(RunConfig().to_dict() | saved.get("config", {}) | full | given)
    dev = not args.no_dev if "no_dev" in args else saved.get("dev", True)
    grid = args.grid if "grid" in args else (None if args.resume else ["full"])
    result = sweep(config.locate.model, grid, out, base=config, dev=dev, stability=not args.no_stability,
                   resume=args.resume, device=args.device, progress=not args.quiet)  # fmt: skip
    print(f"\nsweep: {(out / 'sweep.csv').resolve()}\nreport: {(out / 'sweep.html').resolve()}")
    print(f"chosen on dev: {result.best}" if result.best else "no cell chosen (no dev validation, or no z to choose by)")
    return 0


def _add_sweep_options(p: argparse.ArgumentParser) -> None:
    """``vlens sweep``'s options: the grid, then the settings every cell shares (as ``vlens run``'s)."""
    from vlens.instruments.dilemmas import ALL_VARIANTS
    from vlens.pipeline import FULL, RunConfig
    from vlens.sweep import SWEEP_FULL
    from vlens.validate import CONTROLS

    defaults = {k: _shown(v) for k, v in RunConfig().to_dict().items()} | {"dimensions": "all four"}

    def add(group: Any, flag: str, text: str, **kw: Any) -> None:
        default = defaults.get(flag[2:].replace("-", "_"))
        group.add_argument(flag, help=text if default is None else f"{text} (default: {default})", **kw)

    g = p.add_argument_group("sweep")
    g.add_argument("--out", metavar="DIR", required=True, help="the sweep folder: cells/, test/, stability/, sweep.csv (required)")
    g.add_argument("--grid", nargs="+", metavar="WORD",
                   help="paper | full | NAME=v1,v2 (NAME: scope, hook, sel, score) | cell ids (default: full)")  # fmt: skip
    g.add_argument("--resume", action="store_true", default=False, help="continue --out's sweep; --grid adds cells")
    g.add_argument("--no-dev", action="store_true", help="validate every cell on test and choose none (default: choose on dev)")
    g.add_argument("--no-stability", action="store_true", default=False, help="skip the split-half locate passes")
    full = ", ".join(f"--{k.replace('_', '-')} {'all' if FULL[k] is None else _shown(FULL[k])}" for k in SWEEP_FULL)
    g.add_argument("--full", action="store_true", default=False, help=f"full sizes: {full}; hours on a CPU")
    g.add_argument("--device", default=None, help=f"cpu, cuda, cuda:1 ... (default: {_DEVICE})")
    g.add_argument("--quiet", action="store_true", default=False, help="no progress bars")
    g = p.add_argument_group("settings of every cell")
    _add_model_options(g, add)
    add(g, "--dimensions", "comma-separated, e.g. oc,co", metavar="DIMS", type=_dims)
    add(g, "--max-pairs", "prompt pairs per dimension", metavar="N", type=int)
    add(g, "--kl-targets", "KL costs every edit is matched to, e.g. 0.05,0.1,0.2", metavar="K,K", type=_floats)
    add(g, "--gammas", "edit strengths given by hand, beside the matched ones", metavar="G,G", type=_floats)
    add(g, "--n-random", "random edits of the shared null, >= 2", metavar="N", type=int)
    add(g, "--controls", f"positive controls, some of {','.join(CONTROLS)} ('' for none)", metavar="C,C", type=_names)
    add(g, "--instrument", f"how dilemmas are read: {', '.join(v.name for v in ALL_VARIANTS)}", metavar="V")
    add(g, "--max-dilemmas", "dev (and test) dilemmas per dimension", metavar="N", type=int)
    add(g, "--max-neutral", "neutral texts for the capability cost", metavar="N", type=int)


def _neuron_id(text: str) -> tuple[int, int]:
    """``L.N`` (or ``L12.N345``, as the report names neurons) -> (layer, neuron)."""
    match = re.fullmatch(r"L?(\d+)\.N?(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected LAYER.NEURON as two whole numbers like 12.345, got {text!r}")
    return int(match[1]), int(match[2])


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _cmd_neuron(args: argparse.Namespace) -> int:
    import vlens
    from vlens.cards import neuron_card
    from vlens.locate import LocateResult
    from vlens.pipeline import check_run_dir

    cfg = check_run_dir(args.run_dir)["config"]
    folder = Path(args.run_dir)
    if not (folder / "locate" / "locate.json").exists():
        raise UserError(f"{folder} has no locate results yet; run `vlens locate --out {folder}` first")
    located = LocateResult.load(folder / "locate")
    layer, neuron = args.neuron
    stats = located.stats
    if layer not in stats.layers:  # checked before the model loads
        raise UserError(f"layer {layer} out of range: {folder} has statistics for layers {min(stats.layers)}..{max(stats.layers)}")
    if neuron >= stats.d_mlp:
        raise UserError(f"neuron {neuron} out of range: this model has neurons 0..{stats.d_mlp - 1} in each layer")
    model = vlens.load_model(cfg["model"], device=args.device)
    card = neuron_card(model, located, layer, neuron, data=vlens.load_value_data(cfg.get("data_dir")), k=args.pairs)
    print(card.save(args.out or folder / "cards" / f"L{layer}_N{neuron}.html").resolve())
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from vlens.explain import explain_run

    exp = explain_run(args.run_dir, args.set, n_bands=args.bands, n_views=args.views, device=args.device)
    dim, pole = exp.cell.rsplit(":", 1)
    out = Path(args.html) if args.html else Path(args.run_dir) / "explain" / f"{dim}_{'plus' if pole == '+' else 'minus'}.html"
    exp.save(out)
    print(exp.summary())
    print(f"\nexplanation: {out.resolve()} (tables: {out.stem}_neurons.csv, _shares.csv, _bands.csv beside it)")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from vlens.pipeline import merge_run

    folder = merge_run(args.run_dir)
    print(f"merged: {folder / 'locate'}; continue with: vlens validate --out {folder}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    print("Offline (no network needed):")
    for name, what in OFFLINE_MODELS.items():
        print(f"  {name:24s} {what}")
    print("\nNeeds the Hugging Face hub: any other name TransformerLens can load, e.g.")
    print("  HuggingFaceTB/SmolLM2-135M-Instruct, gpt2, meta-llama/Llama-3.2-1B, Qwen/Qwen2-0.5B")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from vlens.data import build_prompts, load_value_data
    from vlens.models import tiny_model

    data = load_value_data(args.data_dir)
    # The prompt building of `locate` (search split, both poles per dimension), on a tiny tokenizer: data
    # that passes here does not fail later.
    try:
        pairs = len(build_prompts(data, tiny_model("llama"), template="raw", pairs_per_question=1)) // 2
    except ValueError as err:
        raise UserError(f"{data.source}: {err}") from err
    print(f"data: {data.source}  (version {data.version}, sha256 {data.sha256[:16]}...); locate can build its prompts "
          f"({pairs} pairs, one per question)")  # fmt: skip
    for part, counts in data.counts().items():
        print(f"\n{part}: {counts.pop('total')}")
        for key, n in counts.items():
            print(f"  {key:40s} {n}")
    from vlens.data.quality import gate_table, gates

    print("\nquality gates (vlens.data.quality; style: naive Bayes on style alone, each minimal pair held out in "
          "turn, against 30 label shuffles):")  # fmt: skip
    print(gate_table(gates(data)))
    if args.examples:
        for part, recs in data.parts().items():
            for rec in recs[: args.examples]:
                print(f"\n[{part}] " + "; ".join(f"{k}: {v}" for k, v in rec.items()))
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from vlens.models import encode, format_prompt, load_model, model_info

    model = load_model(args.model, device=args.device)
    print(model_info(model).card())
    batch = encode(model, [format_prompt(model, args.question)])
    out = model.generate(batch.tokens, max_new_tokens=30, do_sample=False, verbose=False, return_type="tokens")
    print(f"\nQ: {args.question}\nA: {model.tokenizer.decode(out[0, batch.tokens.shape[1]:], skip_special_tokens=True).strip()}")
    return 0


# The subcommands that run stages, with the stages each runs; a subcommand accepts the options of its stages only
# (the others come from run.json), plus the common ones.
RUN_COMMANDS = {
    "run": (("locate", "validate", "generate", "report"), "locate, validate, generate and report (quick sizes by default)"),
    "locate": (("locate",), "locate value neurons into a run directory"),
    "validate": (("validate", "generate"), "validate the neurons of a run directory causally, then generate answers"),
}
_RUN_NOTE = "Options left out come from --out's run.json when it holds a run, else from the defaults shown."
_DEVICE = "cuda if torch sees a GPU, else cpu"


class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help, unless the help names it already (options whose value
    comes from run.json have no argparse default and write theirs out)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (argparse.SUPPRESS, None):
            return text
        return f"{text} (default: {_shown(action.default)})"


def _shown(value: object) -> str:
    """A default as a user would type it: 0.5,1,2 for lists, on/off for flags."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in value)
    return str(value).replace("%", "%%")  # help strings are %-formatted


def _add_model_options(g: Any, add: Any) -> None:
    """The model and data options that ``vlens run``'s stages and ``vlens sweep`` share (``add`` shows defaults)."""
    add(g, "--model", f"{', '.join(OFFLINE_MODELS)} load offline, other names need the hub", metavar="NAME")
    g.add_argument("--data", metavar="DIR", help="your value data in vlens' schemas (default: the shipped ValueInsight)")
    add(g, "--seed", "seed of the prompt sample and the random neuron sets", metavar="N", type=int)
    add(g, "--batch-size", "prompts per forward pass", metavar="N", type=int)


def _add_run_options(p: argparse.ArgumentParser, stages: tuple[str, ...]) -> None:
    """The common options, then one group per stage in ``stages``; each help ends with the config's default."""
    from vlens.activations import SCOPES
    from vlens.instruments.dilemmas import ALL_VARIANTS
    from vlens.pipeline import FULL, SETTINGS, STAGE_SECTION, RunConfig
    from vlens.runner import HOOK_POINTS

    defaults = {k: _shown(v) for k, v in RunConfig().to_dict().items()} | {"dimensions": "all four"}
    lifted = [k for k in FULL if SETTINGS[k] in {STAGE_SECTION[s] for s in stages if s in STAGE_SECTION}]  # as _config

    def add(group: Any, flag: str, text: str, **kw: Any) -> None:
        default = defaults.get(flag[2:].replace("-", "_"))  # the setting of the same name, when there is one
        group.add_argument(flag, help=text if default is None else f"{text} (default: {default})", **kw)

    g = p.add_argument_group("run directory")
    if stages[0] == "validate":  # validate continues a located run; it never starts one
        g.add_argument("--out", metavar="DIR", required=True, help="the run directory that locate wrote (required)")
    else:
        g.add_argument("--out", metavar="DIR", default=None, help="the run directory (default: runs/run-DATE-TIME)")
    g.add_argument("--resume", action="store_true", default=False, help="continue --out's run with run.json's options")
    full = ", ".join(f"--{k.replace('_', '-')} {'all' if FULL[k] is None else _shown(FULL[k])}" for k in lifted)
    g.add_argument("--full", action="store_true", help=f"full sizes: {full}; hours on a CPU (default: off)")
    g.add_argument("--device", default=None, help=f"cpu, cuda, cuda:1 ... (default: {_DEVICE})")
    g.add_argument("--quiet", action="store_true", default=False, help="no progress bars")
    g = p.add_argument_group("model and data (locate settings: fixed once locate is done)")
    _add_model_options(g, add)
    if "locate" in stages:
        g = p.add_argument_group("locate")
        add(g, "--dimensions", "comma-separated, e.g. oc,co", metavar="DIMS", type=_dims)
        add(g, "--scope", "tokens that count when locating", choices=SCOPES)
        add(g, "--hook", "post = mlp.hook_post, gate = act(hook_pre)", choices=list(HOOK_POINTS))
        add(g, "--selection", "paper | top_k:N | top_frac:F | threshold:T [,per_layer][,score=NAME]", metavar="RULE")
        add(g, "--max-pairs", "prompt pairs per dimension", metavar="N", type=int)
    if "validate" in stages:
        g = p.add_argument_group("validate")
        _add_design_options(lambda flag, text, **kw: add(g, flag, text, **kw))
        add(g, "--instrument", f"how dilemmas are read: {', '.join(v.name for v in ALL_VARIANTS)}", metavar="V")
        add(g, "--match-frequency", "match random sets on activation frequency too", action="store_true")
        add(g, "--max-dilemmas", "held-out test dilemmas per dimension", metavar="N", type=int)
        add(g, "--max-portrait", "portrait items (0: none)", metavar="N", type=int)
        add(g, "--max-neutral", "neutral texts for the capability cost", metavar="N", type=int)
    if "generate" in stages:
        g = p.add_argument_group("generate and report")
        add(g, "--max-questions", "held-out questions per dimension to answer under edits", metavar="N", type=int)


def _add_design_options(add: Any) -> None:
    """The matched-cost design that validate and compare share: ``add(flag, help, **argparse_kwargs)``."""
    from vlens.validate import CONTROLS

    add("--kl-targets", "KL costs (nats/token on neutral text) every edit is matched to, e.g. 0.05,0.1,0.2",
        metavar="K,K", type=_floats)  # fmt: skip
    add("--gammas", "edit strengths given by hand, beside the matched ones, e.g. 0.5,1,2", metavar="G,G", type=_floats)
    add("--n-random", "random edits of the shared null, >= 2", metavar="N", type=int)
    add("--controls", f"positive controls, some of {','.join(CONTROLS)} ('' for none)", metavar="C,C", type=_names)


def build_parser() -> _Parser:
    parser = _Parser(prog="vlens", description=__doc__, formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parser.commands = sub.choices
    for name, (stages, help_text) in RUN_COMMANDS.items():
        # argument_default SUPPRESS: an option not given is absent, so run.json's value is kept
        p = sub.add_parser(name, help=help_text, description=f"vlens {name}: {help_text}.\n\n{_RUN_NOTE}",
                           formatter_class=_Help, argument_default=argparse.SUPPRESS)  # fmt: skip
        _add_run_options(p, stages)
        if name == "locate":
            job = p.add_argument_group("job arrays")
            job.add_argument("--shard", metavar="I/N", help="shard I of N only, then vlens merge DIR (default: all)")
        p.set_defaults(func=lambda a, stages=stages: _run_stages(a, stages))

    def cmd(name: str, text: str) -> _Parser:
        return sub.add_parser(name, help=text, description=f"vlens {name}: {text}", formatter_class=_Help)

    cmp = cmd("compare", "compare neuron selectors (paper, mean diff, LAPE, probe, attribution, random)")
    cmp.add_argument("run_dir", help="a run directory with locate results")
    cmp.add_argument("--dimensions", type=_dims, help="comma-separated, e.g. oc,co (default: those located)")
    cmp.add_argument("--selectors", type=lambda t: [x for x in t.split(",") if x], help="comma-separated (default: all)")
    cmp.add_argument("--sizes", type=_fractions, default=[0.001, 0.005, 0.01, 0.02], help="fractions of all neurons")
    from vlens.pipeline import ValidateConfig

    design = vars(ValidateConfig())  # validate's defaults
    _add_design_options(lambda flag, text, **kw: cmp.add_argument(flag, help=text, default=design[flag[2:].replace("-", "_")],
                                                                 **kw))  # fmt: skip
    cmp.add_argument("--max-dilemmas", type=int, default=4, help="held-out dilemmas per dimension")
    cmp.add_argument("--max-portrait", type=int, default=0, help="portrait items (the verdicts read the dilemmas only)")
    cmp.add_argument("--max-neutral", type=int, default=2, help="neutral texts for the capability cost")
    cmp.add_argument("--device", help=f"cpu, cuda, cuda:1 ... (default: {_DEVICE})")
    cmp.add_argument("--quiet", action="store_true", default=False, help="no progress bars")
    cmp.set_defaults(func=_cmd_compare)
    sw = sub.add_parser("sweep", help="a grid of locate settings, each located and validated; chosen on dev, reported on test",
                        description="vlens sweep: a grid of locate settings (vlens.sweep).\n\nWith --resume, options left out "
                                    "come from --out's sweep.json, else from the defaults shown.",
                        formatter_class=_Help, argument_default=argparse.SUPPRESS)  # fmt: skip
    _add_sweep_options(sw)
    sw.set_defaults(func=_cmd_sweep)
    neuron = cmd("neuron", "write one neuron's card: scores, sets, top prompt pairs, the tokens its output promotes")
    neuron.add_argument("run_dir", help="a run directory with locate results")
    neuron.add_argument("neuron", metavar="L.N", type=_neuron_id, help="layer and neuron, e.g. 12.345")
    neuron.add_argument("--out", metavar="FILE", help="the HTML file to write (default: RUN_DIR/cards/L<l>_N<n>.html)")
    neuron.add_argument("--pairs", metavar="K", type=_positive, default=4, help="prompt pairs shown, those it fires on most")
    neuron.add_argument("--device", help=f"cpu, cuda, cuda:1 ... (default: {_DEVICE})")
    neuron.set_defaults(func=_cmd_neuron)
    ex = cmd("explain", "why one cell's edit moves the way it does: direct effects, firing tokens, layer bands")
    ex.add_argument("run_dir", help="a run directory with locate and validate done")
    ex.add_argument("--set", required=True, metavar="DIM:POLE", help='the set whose edit to explain, e.g. '
                    '"Self-Transcendence:+" or st:+, at validation\'s dose for the first KL target (required)')
    ex.add_argument("--bands", type=int, default=4, help="equal bands of layers, each edited alone (default: 4)")
    ex.add_argument("--views", type=_count, default=5, help="top neurons shown as firing-token views, 0 for none (default: 5)")
    ex.add_argument("--out", dest="html", metavar="FILE.html", help="where to write (default: RUN_DIR/explain/<dimension>_<plus|minus>.html)")
    ex.add_argument("--device", help=f"cpu, cuda, cuda:1 ... (default: {_DEVICE})")
    ex.set_defaults(func=_cmd_explain)
    merge = cmd("merge", "sum the partial statistics of `vlens locate --shard I/N` tasks")
    merge.add_argument("run_dir", help="the run directory the shards wrote into")
    merge.set_defaults(func=_cmd_merge)
    rep = cmd("report", "write report.html and report.md for a run directory")
    rep.add_argument("run_dir", help="a run directory")
    rep.add_argument("--no-neurons", action="store_true", default=False, help="no circuitsvis neuron views (no model)")
    rep.set_defaults(func=_cmd_report)
    cmd("models", "which models load offline and which need the hub").set_defaults(func=_cmd_models)
    data = cmd("data", "counts and examples of the bundled value data or of your own files")
    data.add_argument("data_dir", nargs="?", help="a folder of your own files (default: the bundled ValueInsight)")
    data.add_argument("--examples", type=_count, default=1, help="records to show per part")
    data.set_defaults(func=_cmd_data)
    card = cmd("card", "load a model, print its card and answer one question")
    card.add_argument("--model", default=DEFAULT_MODEL, help=f"{', '.join(OFFLINE_MODELS)} load offline, others: hub")
    card.add_argument("--device", help=f"cpu, cuda, cuda:1 ... (default: {_DEVICE})")
    card.add_argument("--question", default="What is the capital of France?", help="the question to answer")
    card.set_defaults(func=_cmd_card)
    return parser


def _unrecognized(parser: _Parser, command: str | None, unknown: list[str]) -> str:
    """argparse's message, plus which subcommands take an option that this one does not (a stage's options)."""
    message = f"unrecognized arguments: {' '.join(unknown)}"
    for option in (a.split("=", 1)[0] for a in unknown if a.startswith("--")):
        owners = [name for name, p in parser.commands.items() if option in p._option_string_actions]
        if owners and command:
            where = ", ".join(f"vlens {o}" for o in owners)
            return f"{message} ({option} is an option of {where}, not of vlens {command})"
    return message


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        (parser.commands[args.command] if args.command else parser).error(_unrecognized(parser, args.command, unknown))
    if args.command is None:
        parser.print_help()
        return 2
    from vlens.data.schemas import DataFormatError
    from vlens.models import ModelNotAvailableError
    from vlens.pipeline import RunDirError

    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a scheduler's stop, `kill`) ends a run the way Ctrl-C does: checkpoints kept, resume command printed.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        what = "sweep" if args.command == "sweep" else "run"  # a sweep folder holds run directories, not a run
        if getattr(args, "resume", False) and args.out and not (Path(args.out) / f"{what}.json").exists():
            raise UserError(f"--resume: {args.out} holds no {what} (no {what}.json); leave out --resume to start one there")
        return args.func(args)
    except (UserError, ModelNotAvailableError, RunDirError, DataFormatError, ValueError, FileNotFoundError) as err:
        print(f"vlens {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that is a file, read-only, a full disk...: the path and the reason, not a traceback
        print(f"vlens {args.command}: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = f"; continue with: vlens {args.command} --out {out} --resume" if out else ""
        print(f"\nvlens {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
