"""Streaming statistics against a naive reference, batching, scopes, resume and bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import vlens
from vlens.activations import collect_stats, tokenize_prompts
from vlens.data import build_prompts
from vlens.stats import NeuronStats, class_label


def naive_stats(model, prompts, *, hook="post", scope="question"):
    """Reference: one prompt at a time, full run_with_cache, explicit Python loops."""
    classes = list(dict.fromkeys(class_label(p.dimension, p.pole) for p in prompts))
    info = vlens.model_info(model)
    L, N = info.n_layers, info.d_mlp
    out = {k: torch.zeros(len(classes), L, N, dtype=torch.float64) for k in ("active", "sum", "sumsq")}
    tokens = torch.zeros(len(classes), dtype=torch.float64)
    act = torch.nn.functional.silu if (hook == "gate" and info.gated_mlp) else (lambda t: t)
    name = "hook_pre" if (hook == "gate" and info.gated_mlp) else "hook_post"
    for p in prompts:
        c = classes.index(class_label(p.dimension, p.pole))
        enc = vlens.encode(model, [p.text])
        _, cache = model.run_with_cache(enc.tokens, names_filter=lambda n: n.endswith(f"mlp.{name}"))
        for pos in range(enc.tokens.shape[1]):
            start = enc.offsets[0, pos, 0].item()
            if scope == "question" and start < p.shared_start:
                continue
            if scope == "last" and pos != enc.tokens.shape[1] - 1:
                continue
            tokens[c] += 1
            for layer in range(L):
                a = act(cache[f"blocks.{layer}.mlp.{name}"][0, pos]).double()
                out["active"][c, layer] += (a > 0).double()
                out["sum"][c, layer] += a
                out["sumsq"][c, layer] += a * a
    return classes, tokens, out


@pytest.fixture(scope="module")
def prompts(small_data, tiny_llama):
    return build_prompts(small_data, tiny_llama, pairs_per_question=2)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("hook,scope", [("post", "question"), ("gate", "question"), ("post", "last"), ("post", "all")])
def test_matches_naive_reference(arch, hook, scope, small_data):
    model = vlens.tiny_model(arch)
    ps = build_prompts(small_data, model, pairs_per_question=1)[:8]
    stats = collect_stats(model, ps, hook=hook, scope=scope, batch_size=3, progress=False)
    classes, tokens, ref = naive_stats(model, ps, hook=hook, scope=scope)
    assert stats.classes == classes
    assert torch.equal(stats.tokens, tokens)
    for key in ("active", "sum", "sumsq"):
        torch.testing.assert_close(getattr(stats, key), ref[key], rtol=1e-6, atol=1e-6)


def test_all_scope_counts_every_real_token(tiny_gpt2, small_data):
    ps = build_prompts(small_data, tiny_gpt2, pairs_per_question=1)[:4]
    stats = collect_stats(tiny_gpt2, ps, scope="all", batch_size=4, progress=False)
    n_tokens = [len(vlens.models.tokenize(tiny_gpt2, p.text)[0]) for p in ps]
    assert stats.tokens.tolist() == [n_tokens[0] + n_tokens[2], n_tokens[1] + n_tokens[3]]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_equals_unbatched(tiny, small_data, padding_side):
    ps = build_prompts(small_data, tiny, pairs_per_question=2)
    one = collect_stats(tiny, ps, batch_size=1, progress=False)
    many = collect_stats(tiny, ps, batch_size=7, padding_side=padding_side, progress=False)
    assert torch.equal(one.tokens, many.tokens) and torch.equal(one.active, many.active)
    torch.testing.assert_close(many.sum, one.sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(many.sumsq, one.sumsq, rtol=1e-5, atol=1e-5)


def test_merge_save_load_and_resume(tmp_path, tiny_llama, prompts):
    edges = torch.linspace(-1, 1, 9, dtype=torch.float64)
    # batch_size=1: every prompt's activations are then bitwise the same in both runs, and
    # only the float64 summation order differs between "A + B" and "A and B together".
    whole = collect_stats(tiny_llama, prompts, batch_size=1, progress=False, hist_edges=edges)
    pairs = sorted({p.pair_id for p in prompts})
    first = [p for p in prompts if p.pair_id in pairs[::2]]
    second = [p for p in prompts if p.pair_id not in pairs[::2]]
    a = collect_stats(tiny_llama, first, batch_size=1, progress=False, hist_edges=edges)
    b = collect_stats(tiny_llama, second, batch_size=1, progress=False, hist_edges=edges)
    assert (a + b).equal(whole, rtol=1e-12, atol=1e-12)
    whole.save(tmp_path / "stats")
    assert NeuronStats.load(tmp_path / "stats").equal(whole)

    # Interrupt in the third batch (checkpoint every batch), then resume: identical result.
    original = NeuronStats.add_token_counts
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    for reuse in (True, False):
        ckpt = tmp_path / f"ckpt-{reuse}"
        calls["n"] = 0
        NeuronStats.add_token_counts = flaky
        try:
            with pytest.raises(KeyboardInterrupt):
                collect_stats(tiny_llama, prompts, batch_size=1, progress=False, checkpoint_dir=ckpt, checkpoint_every=1,
                              hist_edges=edges, prefix_reuse=reuse)  # fmt: skip
        finally:
            NeuronStats.add_token_counts = original
        resumed = collect_stats(tiny_llama, prompts, batch_size=1, progress=False, checkpoint_dir=ckpt, checkpoint_every=1,
                                hist_edges=edges, prefix_reuse=reuse)  # fmt: skip
        fresh = whole if reuse else collect_stats(tiny_llama, prompts, batch_size=1, progress=False, hist_edges=edges, prefix_reuse=False)
        assert resumed.equal(fresh)
        assert calls["n"] == 3  # the interrupted run stopped in its third batch


def test_a_crash_at_any_write_boundary_resumes_exactly(tmp_path, tiny_llama, prompts, monkeypatch):
    """Issue 15: a crash between the statistics write and the counter write once counted batches twice.
    Crash at every file replace of the checkpointing (each atomic write's rename), then resume."""
    import os

    import vlens._io

    fresh = collect_stats(tiny_llama, prompts[:8], batch_size=2, progress=False)
    real_replace = os.replace
    for crash_at in range(1, 8):
        calls = {"n": 0}

        def replace(src, dst, calls=calls, crash_at=crash_at):
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise KeyboardInterrupt  # the process dies just before this rename
            return real_replace(src, dst)

        ckpt = tmp_path / f"ckpt-{crash_at}"
        monkeypatch.setattr(vlens._io.os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            collect_stats(tiny_llama, prompts[:8], batch_size=2, progress=False, checkpoint_dir=ckpt, checkpoint_every=1)
        monkeypatch.setattr(vlens._io.os, "replace", real_replace)
        resumed = collect_stats(tiny_llama, prompts[:8], batch_size=2, progress=False, checkpoint_dir=ckpt, checkpoint_every=1)
        assert resumed.equal(fresh, rtol=1e-12, atol=1e-12), f"crash before rename {crash_at}"
        assert resumed.prompts.sum() == 8


def test_merge_refuses_other_hook(tiny_llama, prompts):
    a = collect_stats(tiny_llama, prompts[:4], hook="post", progress=False)
    b = collect_stats(tiny_llama, prompts[:4], hook="gate", progress=False)
    with pytest.raises(ValueError, match="different hook"):
        a.merge(b)


def test_question_scope_is_exactly_the_shared_tokens(tiny_llama, small_data):
    ps = build_prompts(small_data, tiny_llama, pairs_per_question=1)[:2]
    plus, minus = tokenize_prompts(tiny_llama, ps, "question")
    shared = lambda r: [t for t, s in zip(r.ids, r.select, strict=True) if s]  # noqa: E731
    assert shared(plus) == shared(minus)
    text = tiny_llama.tokenizer.decode(shared(plus))
    assert text == ps[0].text[ps[0].shared_start :]
    assert ps[0].text[: ps[0].shared_start].endswith("steady routines.")


def test_generated_scope_counts_only_generated_tokens(tiny_llama, prompts):
    ps = prompts[:4]
    stats = collect_stats(tiny_llama, ps, scope="generated", max_new_tokens=6, batch_size=4, progress=False)
    # Random weights rarely emit EOS: every row generates up to 6 tokens, nothing from the prompt counts.
    assert 0 < stats.tokens.sum().item() <= 6 * len(ps)
    assert stats.tokens.sum().item() == 6 * len(ps)


def test_bad_input_is_a_clear_error(tiny_llama, prompts):
    with pytest.raises(ValueError, match="unknown hook 'resid'"):
        collect_stats(tiny_llama, prompts, hook="resid", progress=False)
    with pytest.raises(ValueError, match=r"out of range.*0\.\.2"):
        collect_stats(tiny_llama, prompts, layers=[0, 7], progress=False)
    with pytest.raises(ValueError, match="unknown token scope"):
        collect_stats(tiny_llama, prompts, scope="everything", progress=False)
    with pytest.raises(ValueError, match="mismatched pair"):  # a pair shares its question tokens
        collect_stats(tiny_llama, [p for p in prompts if p.pole == "+"], scope="question", progress=False)
    twisted = [dataclasses.replace(prompts[1], text=prompts[1].text + " extra")] + [prompts[0]]
    with pytest.raises(ValueError, match="mismatched pair"):
        collect_stats(tiny_llama, twisted, scope="question", progress=False)
    long = [dataclasses.replace(p, text="x" * 1100 + p.text, shared_start=p.shared_start + 1100) for p in prompts[:2]]
    with pytest.raises(ValueError, match="context window"):
        collect_stats(tiny_llama, long, progress=False)
    with pytest.raises(ValueError, match="no prompts"):
        collect_stats(tiny_llama, [], progress=False)
    empty = [dataclasses.replace(p, shared_start=len(p.text)) for p in prompts[:2]]
    with pytest.raises(ValueError, match="no tokens after its description"):
        collect_stats(tiny_llama, empty, scope="question", progress=False)
