"""The evaluation engine's edit scopes: ``answer`` (the last prompt token and the answer) and ``all`` (every token)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlens
from vlens import experiment
from vlens.evaluate import Instruments, evaluate_edits
from vlens.instruments import Instrument, ScoredSeq
from vlens.interventions import Edit, apply, value_edit
from vlens.runner import Batch, forward, logprobs


class Recorded(Instrument):
    """An instrument whose summary is its raw readings, so a test can compare every reading."""

    def __init__(self, inner: Instrument):
        self.inner, self.name = inner, inner.name

    def sequences(self, model: Any) -> list[ScoredSeq]:
        return self.inner.sequences(model)

    def read(self, seq: ScoredSeq, lp: torch.Tensor, ref: torch.Tensor | None) -> Any:
        return self.inner.read(seq, lp, ref)

    def summarise(self, readings: dict[tuple, Any]) -> dict[str, Any]:
        return {self.name: readings}


class Toy(Instrument):
    """Edge cases of the split: one-token prefixes (nothing left to cache), an empty suffix (only the
    last prompt token is scored), a prefix shared by two suffixes, a split at the end; reads every log-prob."""

    name = "toy"

    def sequences(self, model: Any) -> list[ScoredSeq]:
        cases = [((5,), [6, 7], 1), ((5,), [8], 1), ((5, 9), [], 2), ((5, 9, 10, 11), [12, 13], 6), ((3, 4, 5, 6, 7), [9, 10], 5)]
        return [ScoredSeq(self.name, prefix, suffix, split, (j,)) for j, (prefix, suffix, split) in enumerate(cases)]

    def read(self, seq: ScoredSeq, lp: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        return lp.cpu()

    def summarise(self, readings: dict[tuple, Any]) -> dict[str, Any]:
        return {self.name: readings}


@pytest.fixture(scope="module")
def bundle():
    """Two dilemmas read as listed options (8 sequences: 2 prompts x 2 options, each in both orders; the
    letter reading at each prompt's end), two portrait items, one neutral text."""
    full = Instruments.default(max_dilemmas=1, max_portrait=2, max_neutral=1)
    return Instruments(full.dilemmas[:2], full.portrait_items, full.neutral_text, dilemma_variant="listed-mean")


def recorded(bundle: Instruments) -> list[Recorded]:
    return [Recorded(inst) for inst in bundle.plugins()]


def edits_for(model: Any, hook: str = "post") -> list[Edit]:
    """The unedited model, a paper edit with Bernoulli masks and every neuron zeroed, located at ``hook``
    (``gate``: edited as act(gate), before it multiplies the up-projection; hook_post on gpt2)."""
    info = vlens.model_info(model)
    shape = (info.n_layers, info.d_mlp)
    g = torch.Generator().manual_seed(0)
    n = 40
    ns = vlens.NeuronSet("Conservation", "+", torch.randint(0, info.n_layers, (n,), generator=g),
                         torch.randperm(info.d_mlp, generator=g)[:n], torch.ones(n), *shape,
                         act_prob=torch.rand(n, generator=g), delta=torch.rand(n, generator=g))  # fmt: skip
    paper = value_edit(shape, ns, None, 3.0, keep_prob=0.7, seed=5)
    zero = Edit.identity(*shape, label="zero everything")
    zero.scale[:] = 0.0
    for e in (paper, zero):
        e.hook = hook
    return [Edit.identity(*shape), paper, zero]


def reference_logprobs(model: Any, edit: Edit, seq: ScoredSeq, start: int) -> torch.Tensor:
    """The full sequence alone, with ``edit`` acting only at positions >= ``start``: every
    hook_post is stashed before the edit and restored at the earlier positions after it."""
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(vlens.model_info(model).n_layers)]
    before: dict[str, torch.Tensor] = {}

    def stash(name: str) -> Any:
        return lambda t, hook: before.__setitem__(name, t.clone())

    def restore(name: str) -> Any:
        def fn(t: torch.Tensor, hook: Any) -> torch.Tensor:
            prompt = torch.arange(t.shape[1], device=t.device) < start
            return torch.where(prompt[None, :, None], before[name], t)

        return fn

    with torch.inference_mode(), model.hooks(fwd_hooks=[(n, stash(n)) for n in names]), apply(model, edit), \
            model.hooks(fwd_hooks=[(n, restore(n)) for n in names]):  # fmt: skip
        hidden = forward(model, Batch.of(model, [seq.ids]))
        return logprobs(model, hidden[0, seq.split - 1 : len(seq.ids)])


def assert_same(a: Any, b: Any, what: str) -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-5, msg=what)
    elif isinstance(a, tuple | list):
        assert len(a) == len(b), what
        for x, y in zip(a, b, strict=True):
            assert_same(x, y, what)
    else:
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5), what


def largest_difference(a: Any, b: Any) -> float:
    if isinstance(a, torch.Tensor):
        return (a.float() - b.float()).abs().max().item()
    if isinstance(a, tuple | list):
        return max(largest_difference(x, y) for x, y in zip(a, b, strict=True))
    return abs(a - b)


@pytest.mark.parametrize("hook", ["post", "gate"])
def test_answer_scope_equals_a_per_condition_loop_with_a_position_mask(tiny, bundle, hook):
    """Every reading of every edit equals the full sequence run alone with the edit only at
    positions >= len(prefix) - 1 (all positions for neutral text, which has no prefix)."""
    edits = edits_for(tiny, hook)
    insts = [*recorded(bundle), Recorded(Toy())]
    got = evaluate_edits(tiny, edits, insts, batch_size=7)
    for inst in insts:
        seqs = inst.sequences(tiny)
        assert got[0][inst.name].keys() == {s.key for s in seqs}
        for c, edit in enumerate(edits):
            for s in seqs:
                start = max(len(s.prefix) - 1, 0)
                lp = reference_logprobs(tiny, edit, s, start)
                ref = reference_logprobs(tiny, edits[0], s, 0) if inst.inner.needs_reference else None
                assert_same(got[c][inst.name][s.key], inst.read(s, lp, ref), f"{edit.label} {inst.name} {s.key}")


@pytest.mark.parametrize("scope", ["answer", "all"])
def test_batched_equals_unbatched(tiny_llama, bundle, scope):
    edits = edits_for(tiny_llama)
    one = evaluate_edits(tiny_llama, edits, recorded(bundle), batch_size=1, scope=scope)
    many = evaluate_edits(tiny_llama, edits, recorded(bundle), batch_size=32, scope=scope)
    for c, (a, b) in enumerate(zip(one, many, strict=True)):
        for name, readings in a.items():
            assert readings.keys() == b[name].keys()
            for key, reading in readings.items():
                assert_same(b[name][key], reading, f"{scope} condition {c} {name} {key}")


def test_the_answer_scope_sees_the_prompt_only_through_the_last_token_and_the_answer(tiny_llama, bundle):
    """Zeroing every neuron of the LAST layer changes a position's output only at that position, so
    both scopes read the same (the last prompt token is edited: the letter readings move). Zeroing
    the FIRST layer reaches the readings also through the prompt's keys and values, which only
    ``all`` edits; neutral text (no prefix) is edited everywhere in both scopes."""
    info = vlens.model_info(tiny_llama)
    first, last = Edit.identity(info.n_layers, info.d_mlp), Edit.identity(info.n_layers, info.d_mlp)
    first.scale[0], last.scale[-1] = 0.0, 0.0
    edits = [Edit.identity(info.n_layers, info.d_mlp), first, last]
    answer = evaluate_edits(tiny_llama, edits, recorded(bundle), scope="answer")
    every = evaluate_edits(tiny_llama, edits, recorded(bundle), scope="all")
    for name in ("dilemma", "portrait"):
        for key, reading in answer[2][name].items():
            assert_same(reading, every[2][name][key], f"last layer {name} {key}")
        # the edit reaches the answer-scope readings at all, and the prompt matters under `all`
        assert max(largest_difference(r, answer[0][name][k]) for k, r in answer[2][name].items()) > 1e-3
        assert max(largest_difference(r, every[1][name][k]) for k, r in answer[1][name].items()) > 1e-3
    letters = [r[2] for r in answer[2]["dilemma"].values()]  # a dilemma reading: (log-prob sum, tokens, letters)
    unedited = [r[2] for r in answer[0]["dilemma"].values()]
    assert max(largest_difference(a, b) for a, b in zip(letters, unedited, strict=True)) > 1e-3  # a one-token answer sees it
    for c in (1, 2):
        for key, reading in answer[c]["neutral"].items():
            assert_same(reading, every[c]["neutral"][key], f"neutral {key}")


class ScoresInsideItsPrefix(Instrument):
    name = "inside"

    def sequences(self, model: Any) -> list[ScoredSeq]:
        return [ScoredSeq(self.name, (5, 6, 7), [8], 2, (0,))]

    def read(self, seq: ScoredSeq, lp: torch.Tensor, ref: torch.Tensor | None) -> float:
        return lp[0, 0].item()

    def summarise(self, readings: dict[tuple, Any]) -> dict[str, Any]:
        return {"inside": readings[(0,)]}


def test_bad_scopes_are_one_line_errors(tiny_llama, bundle):
    edits = edits_for(tiny_llama)[:2]
    with pytest.raises(ValueError, match="unknown scope 'prompt'; expected 'answer'"):
        evaluate_edits(tiny_llama, edits, bundle, scope="prompt")
    with pytest.raises(ValueError, match="prefix_reuse=False .* needs scope='all'"):
        evaluate_edits(tiny_llama, edits, bundle, prefix_reuse=False)
    with pytest.raises(ValueError, match="inside sequences score tokens inside their shared prefix .* use scope='all'"):
        evaluate_edits(tiny_llama, edits, [ScoresInsideItsPrefix()])
    with pytest.raises(ValueError, match="unknown scope"):  # experiment.run hands the scope on
        experiment.run(tiny_llama, [], bundle, scope="prompt", progress=False)


def test_experiment_run_takes_the_scope(tiny_llama, bundle):
    info = vlens.model_info(tiny_llama)
    zero_first = Edit.identity(info.n_layers, info.d_mlp)
    zero_first.scale[0] = 0.0
    conditions = [experiment.Condition("value", zero_first, steered="Conservation", direction="+", mode="paper")]
    tables = {scope: experiment.run(tiny_llama, conditions, bundle, scope=scope, progress=False) for scope in ("answer", "all")}
    default = experiment.run(tiny_llama, conditions, bundle, progress=False)
    assert default.equals(tables["answer"])
    value = {scope: t[(t.source == "value") & (t.metric == "orientation")].value.to_numpy() for scope, t in tables.items()}
    assert abs(value["answer"] - value["all"]).max() > 0  # the prompt is edited only under `all`
    kl = {scope: t[(t.source == "value") & (t.metric == "kl")].value.item() for scope, t in tables.items()}
    assert kl["answer"] == pytest.approx(kl["all"], rel=1e-6)  # the cost is measured with the edit everywhere in both
