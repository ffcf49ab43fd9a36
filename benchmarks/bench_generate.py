"""Generation: vlens' greedy decoding (the ``generated`` locate scope, ``vlens run``'s answers) against Hugging Face.

Both decode the same left-padded batches of ValueInsight prompts greedily with a KV cache, ``--new`` tokens
each (no early stop: the end-of-sequence token is masked out of both, so both produce exactly the same number
of tokens). vlens: :func:`vlens.runner.generate` on the TransformerBridge, with a recorder hook on every
layer's ``mlp.hook_post`` as the ``generated`` scope has (its statistics are read while decoding). Hugging
Face: ``generate`` on a plain ``AutoModelForCausalLM`` loaded from the same cached weights, no hooks. They
alternate over ``--repeats`` rounds; the ratio of the medians of new tokens/s is the result (goal >= 0.8x),
with the spread over rounds. Greedy outputs are compared token for token.

Usage: python benchmarks/bench_generate.py [--prompts 32 --batch 16 --new 32 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vlens
from vlens.models import format_prompt, gguf_folder, model_info, pad_id, tokenize
from vlens.runner import Batch, generate, hook_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    bridge = vlens.load_model()
    folder, _, _ = gguf_folder()
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    eos = bridge.tokenizer.eos_token_id
    for m in (bridge.original_model, hf):  # exactly --new tokens from both: the end token can never win
        m.generation_config.suppress_tokens = [eos]
    data = vlens.load_value_data()
    texts = [q["text"] for q in data.questions_of("search")[: args.prompts]]
    rows = [tokenize(bridge, format_prompt(bridge, t))[0] for t in texts]
    batches = [rows[i : i + args.batch] for i in range(0, len(rows), args.batch)]
    info = model_info(bridge)
    seen = torch.zeros(info.n_layers, info.d_mlp)

    def record(act, hook):  # what the generated scope does at every step: read the activations
        seen[int(hook.name.split(".")[1])] += act[:, -1].float().sum(0).detach()

    def run_vlens():
        with torch.inference_mode():
            for name in (hook_name("post", layer) for layer in range(info.n_layers)):
                bridge.add_hook(name, record)
            try:
                return [ids for b in batches for ids in generate(bridge, b, max_new_tokens=args.new)]
            finally:
                bridge.reset_hooks()

    def run_hf():  # the same left-padded batches vlens.runner.generate builds
        out = []
        with torch.inference_mode():
            for b in batches:
                batch = Batch.of(bridge, b, padding_side="left")
                new = hf.generate(batch.tokens, attention_mask=batch.mask, max_new_tokens=args.new, do_sample=False,
                                  pad_token_id=pad_id(bridge))  # fmt: skip
                out += new[:, batch.tokens.shape[1] :].tolist()
        return out

    times: dict[str, list[float]] = {"vlens": [], "hf": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in (("vlens", run_vlens), ("hf", run_hf)):
            t = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t)
    n_tokens = sum(len(o) for o in outputs["hf"])
    same = sum(a == b for a, b in zip(outputs["vlens"], outputs["hf"], strict=True))
    rate = {k: [n_tokens / t for t in v] for k, v in times.items()}
    ratios = [v / h for v, h in zip(rate["vlens"], rate["hf"], strict=True)]
    print(f"{len(rows)} prompts in batches of {args.batch}, {args.new} new tokens each ({n_tokens} tokens); "
          f"{args.repeats} alternating rounds; threads {torch.get_num_threads()}")  # fmt: skip
    for k in rate:
        print(
            f"  {k:6s} tokens/s: median {statistics.median(rate[k]):.1f} (rounds {', '.join(f'{r:.1f}' for r in rate[k])})"
        )
    print(f"  vlens / HF tokens/s: {statistics.median(rate['vlens']) / statistics.median(rate['hf']):.2f}x "
          f"(per round {min(ratios):.2f}-{max(ratios):.2f}x; goal >= 0.8x)")  # fmt: skip
    print(f"  identical greedy outputs: {same}/{len(rows)}")


if __name__ == "__main__":
    main()
