"""vlens.explain: direct effects against finite differences and a per-neuron loop, layer bands, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vlens
from vlens import explain
from vlens.instruments import Dilemmas
from vlens.instruments.dilemmas import ALL_VARIANTS
from vlens.interventions import dosed_edit
from vlens.neurons import NeuronSet
from vlens.runner import Batch, forward, hook_name, logprobs

# The naive references freeze the final norm's scale with a hook, which the bridge notes each time.
pytestmark = pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")

# Short texts: the tiny tokenizer is byte-level, and the finite differences run every sequence several times.
ITEMS = [
    {"id": "a", "dimension": "Self-Transcendence", "context": "A friend is ill.", "option_plus": "I visit.", "option_minus": "I rest."},
    {"id": "b", "dimension": "Conservation", "context": "A new rule.", "option_plus": "I obey.", "option_minus": "I skip it."},
]  # fmt: skip


def neuron_set(model, pole, layers, neurons, dimension="Self-Transcendence"):
    info = vlens.model_info(model)
    n = len(layers)
    return NeuronSet(dimension, pole, torch.tensor(layers), torch.tensor(neurons), torch.ones(n), info.n_layers, info.d_mlp,
                     act_prob=torch.linspace(0.3, 0.9, n), delta=torch.linspace(0.1, 0.4, n))  # fmt: skip


@pytest.fixture(scope="module")
def llama64():
    return vlens.tiny_model("llama", seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def gpt2_64():
    return vlens.tiny_model("gpt2", seed=0, dtype=torch.float64)


# ----------------------------------------------------------------------------- naive references (one sequence at a time)


def frozen_scales(model, inst):
    """The final norm's scale of every sequence of ``inst``, unedited, run whole."""
    out = {}
    for s in inst.sequences(model):
        box = {}
        with torch.no_grad():
            forward(model, Batch.of(model, [s.ids]), hooks=[(explain.NORM_SCALE, lambda t, hook, box=box: box.setdefault("s", t.clone()))])
        out[s.key] = box["s"]
    return out


def naive_logodds(model, inst, extra_hooks, scales):
    """Each item's log-odds from whole sequences, run one by one with ``extra_hooks(seq)`` and the final
    norm's scale frozen, read by the instrument itself."""
    readings = {}
    for s in inst.sequences(model):
        hooks = [(explain.NORM_SCALE, lambda t, hook, s=s: scales[s.key].clone()), *extra_hooks(s)]
        with torch.no_grad():
            hidden = forward(model, Batch.of(model, [s.ids]), hooks=hooks)
        readings[s.key] = inst.read(s, logprobs(model, hidden[0, s.split - 1 :]), None)
    return inst.item_scores(readings)[inst.variant.name]


def read_positions(s):
    return slice(s.split - 1, len(s.ids) - 1)  # the positions that predict the option's tokens


def add_at_read_positions(vector_of):
    """A hook adding ``vector_of(seq)`` ([pos, d] or [d]) at the read positions."""

    def hooks(s):
        def add(t, hook):
            t = t.clone()
            t[0, read_positions(s)] += vector_of(s)
            return t

        return [add]

    return hooks


# ----------------------------------------------------------------------------- 1. the derivative, by finite differences


@pytest.mark.parametrize("arch,variant,how", [("llama", "cloze-sum", "activation"), ("gpt2", "listed-mean", "residual")])
def test_unit_effect_matches_finite_differences(arch, variant, how, llama64, gpt2_64):
    """Raising one neuron's activation by eps at the read positions, with the final norm's scale frozen, moves
    each item's log-odds by eps * per_unit (central differences, 1e-4 relative). ``activation``: the neuron of
    the last layer, perturbed at its own hook_post (so W_out's row and orientation are the model's); ``residual``:
    a layer-0 neuron, its eps * W_out row written into the final residual (only the direct path)."""
    model = llama64 if arch == "llama" else gpt2_64
    info = vlens.model_info(model)
    layer = info.n_layers - 1 if how == "activation" else 0
    neuron = 5
    edit = dosed_edit((info.n_layers, info.d_mlp), neuron_set(model, "+", [layer], [neuron]), None, 1.0, keep_prob=1.0)
    de = explain.direct_effects(model, edit, ITEMS, variant=variant)
    assert de.per_unit.shape == (len(ITEMS), 1)
    inst = Dilemmas(ITEMS, variant=variant)
    scales = frozen_scales(model, inst)
    eps = 1e-4
    if how == "activation":
        point = hook_name("post", layer)
        onehot = torch.zeros(info.d_mlp, dtype=torch.float64)
        onehot[neuron] = 1.0
        perturbed = lambda sign: lambda s: [(point, add_at_read_positions(lambda s: sign * eps * onehot)(s)[0])]  # noqa: E731
    else:
        row = model.W_out[layer, neuron].detach()
        perturbed = lambda sign: lambda s: [(explain.NORM_IN, add_at_read_positions(lambda s: sign * eps * row)(s)[0])]  # noqa: E731
    fd = (naive_logodds(model, inst, perturbed(1), scales) - naive_logodds(model, inst, perturbed(-1), scales)) / (2 * eps)
    got = de.per_unit[:, 0].numpy()
    assert np.all(np.abs(fd) > 1e-3), fd  # a real signal to compare
    np.testing.assert_allclose(got, fd, rtol=1e-4)


# ----------------------------------------------------------------------------- the edit's direct effect, by finite differences


def edit_hooks(model, edit, start_of):
    """The edit (boost + partial clamp, keep_prob 1, at hook_post) written by hand, from ``start_of(seq)`` on."""
    layers = [int(layer) for layer in edit.touched_layers().nonzero()]

    def hooks(s):
        def at(layer):
            def f(t, hook):
                t = t.clone()
                a = t[:, start_of(s) :]
                a = torch.where(edit.clamp_mask[layer], a - edit.clamp_strength * a.clamp(min=0), a) + edit.boost[layer]
                t[:, start_of(s) :] = a
                return t

            return f

        return [(hook_name("post", layer), at(layer)) for layer in layers]

    return hooks


def naive_deltas(model, inst, edit, start_of, layers, neurons):
    """Per sequence: edited minus unedited hook_post of the edit's neurons at the read positions, run whole."""
    out = {}
    for s in inst.sequences(model):
        acts = []
        for hooks in ([], edit_hooks(model, edit, start_of)(s)):
            box = {}
            rec = [(hook_name("post", layer), lambda t, hook, layer=layer, box=box: box.__setitem__(layer, t.clone()))
                   for layer in sorted(set(layers.tolist()))]  # fmt: skip
            with torch.no_grad():
                forward(model, Batch.of(model, [s.ids]), hooks=hooks + rec)
            acts.append(torch.stack([box[int(layer)][0, read_positions(s), int(n)] for layer, n in zip(layers, neurons, strict=True)], -1))
        out[s.key] = acts[1] - acts[0]  # [read pos, neuron]
    return out


@pytest.fixture(scope="module", params=["answer", "all"])
def edited(request, llama64):
    """A dosed edit of 3 boosted and 2 clamped neurons over all layers, its direct effects, and the naive deltas."""
    model, scope = llama64, request.param
    info = vlens.model_info(model)
    target = neuron_set(model, "+", [0, 1, 2], [3, 40, 7])
    opposing = neuron_set(model, "-", [0, 2], [4, 8])
    edit = dosed_edit((info.n_layers, info.d_mlp), target, opposing, 0.7, keep_prob=1.0)
    de = explain.direct_effects(model, edit, ITEMS, scope=scope, batch_size=4)
    inst = Dilemmas(ITEMS)
    start_of = (lambda s: len(s.prefix) - 1) if scope == "answer" else (lambda s: 0)
    deltas = naive_deltas(model, inst, edit, start_of, de.layers, de.neurons)
    return model, inst, de, deltas


def test_edit_direct_effect_matches_finite_differences(edited):
    """Writing t * (every neuron's activation change) x W_out into the final residual at the read positions, the
    norm's scale frozen: d x / d t at 0 (central differences) equals the summed direct effect, 1e-4 relative."""
    model, inst, de, deltas = edited
    w = model.W_out[de.layers, de.neurons].detach()  # [neuron, d_model]
    scales = frozen_scales(model, inst)
    t = 1e-4
    moved = lambda sign: add_at_read_positions(lambda s: sign * t * deltas[s.key] @ w)  # noqa: E731
    hooks = lambda sign: lambda s: [(explain.NORM_IN, moved(sign)(s)[0])]  # noqa: E731
    fd = (naive_logodds(model, inst, hooks(1), scales) - naive_logodds(model, inst, hooks(-1), scales)) / (2 * t)
    assert np.all(np.abs(fd) > 1e-3), fd
    np.testing.assert_allclose(de.total().numpy(), fd, rtol=1e-4)
    # the activation changes themselves: the engine's cached passes against whole sequences
    summed = {i: sum(deltas[s.key].sum(0) for s in inst.sequences(model) if s.key[1] == i) for i in range(len(ITEMS))}
    np.testing.assert_allclose(de.delta_sum.numpy(), torch.stack([summed[i] for i in range(len(ITEMS))]).numpy(),
                               rtol=1e-5, atol=1e-7)  # float32 normalisation in the tiny Llama
    # the exact direct path: every change written in at once (t = 1), the log-softmax not linearised
    path = naive_logodds(model, inst, hooks(1 / t), scales) - naive_logodds(model, inst, lambda s: [], scales)
    np.testing.assert_allclose(de.exact.numpy(), path, rtol=1e-6)


def test_vectorised_equals_a_loop_over_neurons(edited):
    """Per neuron, in a Python loop, by autograd through the model's own final norm (scale frozen) and
    unembedding: d x_i / d t of writing t * delta_n * W_out[n] at the read positions, on the cloze-sum readout
    written out by hand. Equals the vectorised per_item column for 3 neurons."""
    model, inst, de, deltas = edited
    seqs = inst.sequences(model)
    scales = frozen_scales(model, inst)
    for n in range(3):
        w = model.W_out[de.layers[n], de.neurons[n]].detach()
        t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        x = [torch.zeros((), dtype=torch.float64) for _ in ITEMS]
        for s in seqs:
            def inject(r, hook, s=s, t=t, n=n, w=w):
                r = r.clone()
                r[0, read_positions(s)] += t * deltas[s.key][:, n : n + 1] * w
                return r

            hooks = [(explain.NORM_SCALE, lambda r, hook, s=s: scales[s.key].clone()), (explain.NORM_IN, inject)]
            lp = logprobs(model, forward(model, Batch.of(model, [s.ids]), hooks=hooks)[0, read_positions(s)])
            scored = lp.gather(-1, torch.tensor(s.ids[s.split :])[:, None]).sum()
            x[s.key[1]] = x[s.key[1]] + (scored if s.key[3] == "plus" else -scored)
        grads = [torch.autograd.grad(xi, t, retain_graph=True)[0].item() for xi in x]
        np.testing.assert_allclose(de.per_item[:, n].numpy(), grads, rtol=1e-6)  # the tiny Llama normalises in float32


def test_readout_terms_reproduce_every_variant(tiny_llama):
    """The (position, token, weight) terms of each variant, applied to the log-probs, give the instrument's own
    log-odds (item_scores) for every formulation and normalisation."""
    everything = Dilemmas(ITEMS, variants=ALL_VARIANTS)
    lps = {}
    for s in everything.sequences(tiny_llama):
        with torch.no_grad():
            lps[s.key] = logprobs(tiny_llama, forward(tiny_llama, Batch.of(tiny_llama, [s.ids]))[0]).double()
    readings = {s.key: everything.read(s, lps[s.key][s.split - 1 :].float(), None) for s in everything.sequences(tiny_llama)}
    want = everything.item_scores(readings)
    for v in ALL_VARIANTS:
        inst = Dilemmas(ITEMS, variant=v)
        x = np.zeros(len(ITEMS))
        for s in inst.sequences(tiny_llama):
            for pos, tok, w in explain.readout_terms(inst, s):
                x[s.key[1]] += w * lps[s.key][pos, tok].item()
        np.testing.assert_allclose(x, want[v.name], rtol=1e-5, atol=1e-5, err_msg=v.name)


# ----------------------------------------------------------------------------- 3. layer bands


def test_bands_partition_the_set(tiny_llama):
    assert explain.layer_bands(30, 4) == [list(range(0, 8)), list(range(8, 16)), list(range(16, 23)), list(range(23, 30))]
    assert explain.layer_bands(3, 3) == [[0], [1], [2]]
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="bands must be a whole number from 1 to the model's 3 layers"):
            explain.layer_bands(3, bad)
    info = vlens.model_info(tiny_llama)
    shape = (info.n_layers, info.d_mlp)
    target = neuron_set(tiny_llama, "+", [0, 0, 1, 2, 2], [1, 2, 3, 4, 5])
    opposing = neuron_set(tiny_llama, "-", [1, 2], [6, 7])
    bands = explain.layer_bands(info.n_layers, 2)
    parts = [explain.restrict(target, b) for b in bands]
    assert sum(len(p) for p in parts) == len(target)
    assert torch.equal(torch.stack([p.mask() for p in parts]).sum(0), target.mask().long())  # disjoint, covering
    assert torch.equal(torch.cat([p.delta for p in parts]), target.delta)  # scores stay with their neurons
    whole = dosed_edit(shape, target, opposing, 0.8, seed=3)
    edits = explain.band_edits(shape, target, opposing, 0.8, bands, seed=3)
    assert torch.allclose(sum(e.boost for e in edits), whole.boost)
    assert torch.equal(torch.stack([e.clamp_mask for e in edits]).sum(0), whole.clamp_mask.long())
    assert all(not (e.neuron_layers() & ~torch.isin(torch.arange(info.n_layers), torch.tensor(b))).any()
               for e, b in zip(edits, bands, strict=True))  # fmt: skip
    # one band = the whole edit: the same shift, measured in the same batched evaluation
    table = explain.band_shifts(tiny_llama, target, opposing, 0.8, ITEMS, n_bands=1, seed=3)
    for _, g in table.groupby("dimension"):
        assert list(g.band) == ["all layers", "L0-L2"]
        assert g["shift"].iloc[0] == pytest.approx(g["shift"].iloc[1], abs=1e-6)
        assert g["shift"].abs().max() > 0


# ----------------------------------------------------------------------------- 4. the command


def test_cli_explains_a_run(tiny_run_dir, tmp_path, capsys):
    from vlens.cli import main

    out = tmp_path / "st.html"
    assert main(["explain", str(tiny_run_dir), "--set", "st:+", "--bands", "2", "--views", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Self-Transcendence:+ at dose" in text and "direct path of the edited neurons" in text
    assert "top 5 neurons by |direct effect|" in text and "layer bands" in text and "L0-L1" in text
    page = out.read_text()
    assert "Where the top neurons fire" in page and "unpkg.com" not in page
    import pandas as pd

    shares = pd.read_csv(tmp_path / "st_shares.csv")
    bands = pd.read_csv(tmp_path / "st_bands.csv")
    whole = bands[bands.band == "all layers"].set_index("dimension")["shift"]
    assert np.allclose(shares.set_index("dimension").measured_shift.loc[whole.index], whole)  # one evaluation
    neurons = pd.read_csv(tmp_path / "st_neurons.csv")
    assert set(neurons.role) <= {"boost", "clamp", "boost+clamp"} and len(neurons) % len(shares) == 0


def test_cli_bad_set_name_lists_the_valid_ones(tiny_run_dir, capsys):
    from vlens.cli import main

    assert main(["explain", str(tiny_run_dir), "--set", "Kindness:+", "--views", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no neuron set 'Kindness:+'" in err and "valid sets: " in err and "Self-Transcendence:+" in err
