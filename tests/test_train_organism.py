"""scripts/train_organism.py: the training set holds only search text, and the fast training path (a cached
stream below the LoRA layers, both answers in one row) computes exactly what separate sequences would."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import vlens

ROOT = Path(__file__).resolve().parents[1]


def train_script():
    spec = importlib.util.spec_from_file_location("train_organism", ROOT / "scripts" / "train_organism.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    return module


def tiny_hf_llama(seed: int = 1):
    """A plain Hugging Face Llama (a bridge wraps the linear layers of its own copy, which peft cannot adapt)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))  # fmt: skip


def test_training_data_holds_no_dev_or_test_text():
    data = vlens.load_value_data()
    script = train_script()
    items = script.training_set(data, n_items=1220)
    assert script.training_sha256(items) == script.training_sha256(script.training_set(data, n_items=1220))
    with pytest.raises(ValueError, match="the search split gives"):
        script.training_set(data, n_items=10**6)
    held = {d["context"] for d in data.dilemmas} | {d[f"option_{o}"] for d in data.dilemmas for o in ("plus", "minus")}
    held |= {d["text"] for d in data.descriptions_of("test")} | {q["text"] for q in data.questions_of("test")}
    search = {d["text"] for d in data.descriptions_of("search")} | {q["text"] for q in data.questions_of("search")}
    fields = ("context", "option_plus", "option_minus", "persona_plus", "persona_minus")
    texts = [item[f] for item in items for f in fields]
    assert all(t in search for t in texts)  # every text is a search-split record, verbatim
    assert not [t for t in texts if t in held or any(h in t for h in held)]
    assert all(item["option_pair"] != item["persona_pair"] for item in items)
    for item in items:  # both personas and both options of one item belong to its dimension
        dims = {d["dimension"] for d in data.descriptions if d["text"] in {item[f] for f in fields[1:]}}
        assert dims == {item["dimension"]}


def separate_logprobs(lm, prompt, answer):
    """The reference: ``prompt + answer`` as one ordinary causal sequence, its answer tokens' summed log-prob."""
    with torch.no_grad():
        lp = lm(torch.tensor([prompt + answer])).logits[0].log_softmax(-1)
    return sum(lp[len(prompt) - 1 + j, t].item() for j, t in enumerate(answer))


@pytest.mark.parametrize("layer", [0, 2])
def test_tree_rows_equal_separate_sequences(layer):
    """One row holding a prompt and both answers (the - answer masked from the + one, its positions restarting)
    gives each answer's log-prob exactly as its own sequence would, batched with rows of other lengths, from
    the embeddings (layer 0) or from a cached stream entering a later layer."""
    script = train_script()
    lm = tiny_hf_llama().eval()
    g = torch.Generator().manual_seed(3)
    draw = lambda n: torch.randint(1, 256, (n,), generator=g).tolist()  # noqa: E731
    prompts = [draw(7), draw(3), draw(11)]
    answers = [(draw(4), draw(2)), (draw(1), draw(5)), (draw(3), draw(3))]
    batch = script.TreeBatch.of(prompts, answers, pad=0)
    with torch.no_grad():
        got = script.option_logprobs(lm, script.stream_below(lm, batch, layer), batch, layer)
    want = torch.tensor(
        [[separate_logprobs(lm, p, a), separate_logprobs(lm, p, b)] for p, (a, b) in zip(prompts, answers, strict=True)]
    )
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    one = script.TreeBatch.of(prompts[1:2], answers[1:2], pad=0)  # batched equals unbatched
    with torch.no_grad():
        alone = script.option_logprobs(lm, script.stream_below(lm, one, layer), one, layer)
    torch.testing.assert_close(alone[0], got[1], atol=1e-5, rtol=0)


def test_cache_and_losses_follow_the_base_model():
    """The cache's base log-odds are the model's own; with the adapter at zero the drift is zero and the loss is
    the hand-computed one of the base model's persona shifts; gradients reach only the LoRA weights above the
    cached layer."""
    peft = pytest.importorskip("peft")
    script = train_script()
    lm = tiny_hf_llama().eval()
    g = torch.Generator().manual_seed(5)
    draw = lambda n: torch.randint(1, 256, (n,), generator=g).tolist()  # noqa: E731
    toks = [{"+": draw(6), "-": draw(5), None: draw(4), "plus": draw(2), "minus": draw(3)} for _ in range(3)]
    cache = script.build_cache(lm, toks, pad=0, layer=1, chunk=2)
    for i, t in enumerate(toks):
        for c, cond in enumerate(script.CONDITIONS):
            x = separate_logprobs(lm, t[cond], t["plus"]) - separate_logprobs(lm, t[cond], t["minus"])
            assert cache.base_x[i, c].item() == pytest.approx(x, abs=1e-4)
    model = peft.get_peft_model(
        lm, peft.LoraConfig(r=2, target_modules=["q_proj", "up_proj"], layers_to_transform=[1, 2])
    )
    out = script.batch_losses(model, cache, [0, 2], pad=0, beta=1.0)
    x = cache.base_x[[0, 2]]
    signed = torch.stack([x[:, 0] - x[:, 2], x[:, 2] - x[:, 1]], 1)  # up is toward the persona's pole
    assert out["drift"].item() < 1e-4
    assert out["margin"].item() == pytest.approx(signed.mean().item(), abs=1e-4)
    assert out["pref"].item() == pytest.approx(torch.nn.functional.softplus(-signed).mean().item(), abs=1e-4)
    (out["pref"] + out["anchor"]).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all("lora_" in n and ("layers.1." in n or "layers.2." in n) for n in grads)


def test_saved_cache_round_trips_and_refuses_other_data(tmp_path):
    script = train_script()
    lm = tiny_hf_llama().eval()
    g = torch.Generator().manual_seed(7)
    draw = lambda n: torch.randint(1, 256, (n,), generator=g).tolist()  # noqa: E731
    toks = [{"+": draw(6), "-": draw(5), None: draw(4), "plus": draw(2), "minus": draw(3)} for _ in range(2)]
    cache = script.build_cache(lm, toks, pad=0, layer=1)
    script.save_cache(cache, tmp_path / "c.safetensors", key="k1")
    back = script.load_cache(tmp_path / "c.safetensors", "k1", cache.rows, layer=1)
    assert all(torch.equal(a, b) for a, b in zip(back.streams, cache.streams, strict=True))
    assert torch.equal(back.base_x, cache.base_x)
    assert script.load_cache(tmp_path / "c.safetensors", "k2", cache.rows, layer=1) is None  # other data
    assert script.load_cache(tmp_path / "c.safetensors", "k1", cache.rows, layer=2) is None  # other layer
