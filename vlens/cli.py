"""The ``vlens`` command: parses options and calls the library, nothing else."""

from __future__ import annotations

import argparse
import sys

from vlens.models import DEFAULT_MODEL, OFFLINE_MODELS


class UserError(Exception):
    """A mistake in what the user asked for: printed as one message, exit code 2."""


def _cmd_card(args: argparse.Namespace) -> int:
    from vlens.models import encode, format_prompt, load_model, model_info

    model = load_model(args.model, device=args.device)
    print(model_info(model).card())
    prompt = format_prompt(model, args.question)
    batch = encode(model, [prompt])
    out = model.generate(
        batch.tokens, max_new_tokens=args.max_new_tokens, do_sample=False, use_past_kv_cache=True,
        verbose=False, return_type="tokens",
    )  # fmt: skip
    answer = model.tokenizer.decode(out[0, batch.tokens.shape[1] :], skip_special_tokens=True).strip()
    print(f"\nQ: {args.question}\nA: {answer}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    print("Offline (no network needed):")
    for name, what in OFFLINE_MODELS.items():
        print(f"  {name:24s} {what}")
    print("\nNeeds the Hugging Face hub: any other name TransformerLens can load, e.g.")
    print("  HuggingFaceTB/SmolLM2-135M-Instruct, gpt2, meta-llama/Llama-3.2-1B, Qwen/Qwen2-0.5B")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlens", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    card = sub.add_parser("card", help="load a model, print its card and answer one question")
    card.add_argument("--model", default=DEFAULT_MODEL)
    card.add_argument("--device", default=None)
    card.add_argument("--question", default="What is the capital of France?")
    card.add_argument("--max-new-tokens", type=int, default=30)
    card.set_defaults(func=_cmd_card)

    run = sub.add_parser("run", help="the main job on the offline default model")
    run.add_argument("--model", default=DEFAULT_MODEL)
    run.add_argument("--device", default=None)
    run.add_argument("--question", default="What is the capital of France?")
    run.add_argument("--max-new-tokens", type=int, default=30)
    run.set_defaults(func=_cmd_card)

    models = sub.add_parser("models", help="which models load offline and which need the hub")
    models.set_defaults(func=_cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from vlens.models import ModelNotAvailableError

    try:
        return args.func(args)
    except (UserError, ModelNotAvailableError, ValueError, FileNotFoundError) as err:
        print(f"vlens {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nvlens {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
