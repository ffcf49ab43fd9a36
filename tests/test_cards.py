"""Neuron cards: every section, offline HTML, the logit table against a hand computation, `vlens neuron`, the report's links."""

from __future__ import annotations

import re

import pytest
import torch

import vlens
from vlens import viz
from vlens.cards import TITLES, activation_figure, logit_attribution, neuron_card
from vlens.cli import build_parser, main
from vlens.locate import locate

REMOTE = re.compile(r"<(?:script|img|iframe)\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//|<link\b|@import|url\(\s*[\"']?https?:"
                    r"|\bfrom\s*[\"'](?:https?:)?//", re.IGNORECASE)  # fmt: skip
TINY_LOCATE = ["--model", "tiny-llama", "--dimensions", "co,st", "--max-pairs", "2", "--selection", "top_k:10", "--quiet"]


@pytest.fixture(scope="module")
def located(tiny_llama, small_data):
    return locate(tiny_llama, small_data, selection="top_k:8", progress=False)


@pytest.fixture(scope="module")
def card(tiny_llama, located, small_data):
    ns = located["Conservation:+"]
    return neuron_card(tiny_llama, located, int(ns.layers[1]), int(ns.neurons[1]), data=small_data, k=2, sample=3)


def test_a_card_has_every_section_in_order(card, located):
    page = card.html()
    where = [page.index(f"<h3>{title}</h3>") for title in TITLES.values()]
    assert where == sorted(where), "sections out of order"
    assert f"Neuron {card.name}" in page and card.hook_point in page and "tiny-llama" in page
    assert page.count('class="vlens-caption"') == len(TITLES)  # one caption per section
    # header: the scores of every dimension, and the set it came from with its rank
    assert list(card.scores.dimension) == located.dimensions
    assert "Conservation:+ (rank 2 of 8)" in page
    # activation distribution: an embedded PNG
    assert card.distribution.startswith("data:image/png;base64,") and card.distribution in page
    # top pairs: k pairs, + and - side by side, and the two descriptions that differ both visible as text
    assert len(card.contexts) == 2 and page.count('render("circuits-vis-') == 4
    assert "grid-template-columns: repeat(2" in page
    for row in card.contexts.to_dict("records"):
        plus, minus = row["description +"], row["description -"]
        assert plus and minus and plus != minus
        assert f"description (+): &laquo;{plus}&raquo;" in page and f"description (-): &laquo;{minus}&raquo;" in page
    # the pairs are the ones it fires on most: ranked by their larger maximum, descending
    assert card.contexts.max_activation.is_monotonic_decreasing
    # logit attribution: 10 promoted and 10 suppressed tokens
    assert (card.logits.effect.value_counts() == 10).all() and "<th>promotes</th>" in page


def test_card_scores_and_sets_come_from_the_locate_result(card, located, tiny_llama, small_data):
    lpos = located.stats.layers.index(card.layer)
    for row in card.scores.itertuples(index=False):
        s = located.scores[row.dimension]
        assert row.delta == pytest.approx(float(s["delta"][lpos, card.neuron]))
        assert row[2] == pytest.approx(float(s["cohens_d"][lpos, card.neuron]))
    for name, rank, size in card.sets.itertuples(index=False):
        ns = located[name]
        assert (int(ns.layers[rank - 1]), int(ns.neurons[rank - 1]), len(ns)) == (card.layer, card.neuron, size)
    bare = neuron_card(tiny_llama, located.stats, card.layer, card.neuron, data=small_data, k=1, sample=1)
    assert not bare.sets_given and "statistics alone" in bare.html()
    assert bare.scores.equals(card.scores)


def test_repr_html_is_self_contained(card):
    for page in (card._repr_html_(), card.html(full_page=True)):
        assert not REMOTE.search(page), REMOTE.search(page)
        assert viz._circuitsvis_js() in page  # the JavaScript is inlined, not fetched
    assert card.html(full_page=True).startswith("<!DOCTYPE html>")


def test_saved_card_and_shared_script(card, tmp_path):
    inline = card.save(tmp_path / "a" / "card.html")
    shared = card.save(tmp_path / "b" / "card.html", script_src="circuitsvis.js")
    assert viz._circuitsvis_js() in inline.read_text()
    text = shared.read_text()
    assert viz._circuitsvis_js() not in text and '<script src="circuitsvis.js"></script>' in text
    assert inline.stat().st_size - shared.stat().st_size > 1_000_000


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logit_table_equals_a_hand_computation(arch):
    model = vlens.tiny_model(arch, seed=1)  # its own model: the final norm's weight is changed below
    hf = model.original_model
    norm = hf.model.norm if arch == "llama" else hf.transformer.ln_f
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=torch.Generator().manual_seed(0)) + 0.5)
    layer, neuron = 1, 17
    # W_out's row by hand: Llama's down projection column, GPT-2's Conv1D c_proj row
    w_out = hf.model.layers[layer].mlp.down_proj.weight[:, neuron] if arch == "llama" else hf.transformer.h[layer].mlp.c_proj.weight[neuron]
    expected = (w_out * norm.weight) @ hf.lm_head.weight.T
    expected = expected[: len(model.tokenizer)].detach()
    table = logit_attribution(model, layer, neuron, k=10)
    for effect, descending in (("promotes", True), ("suppresses", False)):
        rows = table[table.effect == effect].sort_values("rank")
        order = expected.argsort(descending=descending)[:10]
        assert rows.token_id.tolist() == order.tolist()
        assert rows.logit.to_numpy() == pytest.approx(expected[order].numpy(), rel=1e-5, abs=1e-7)
        assert rows.token.tolist() == [model.tokenizer.decode([i]) for i in order.tolist()]


def test_histogram_panels_when_the_stats_have_one(tiny_llama, small_data):
    stats = locate(tiny_llama, small_data, selection="top_k:4", hist_edges="auto", max_pairs=2, progress=False).stats
    fig = activation_figure(stats, 0, 3)
    assert len(fig.axes) == 2 + len(stats.dimensions)


def test_a_gate_card_reads_the_gate(tiny_llama, small_data):
    gate = locate(tiny_llama, small_data, hook="gate", selection="top_k:4", max_pairs=2, progress=False)
    card = neuron_card(tiny_llama, gate, 0, 5, data=small_data, k=1, sample=1)
    assert card.hook == "gate" and card.hook_point == "blocks.0.mlp.hook_pre" and "gate activation" in card.html()


@pytest.mark.parametrize("layer,neuron,k,error,message", [
    (9, 0, 2, ValueError, "layer"),
    (0, 96, 2, ValueError, "neuron 96 out of range"),
    (0, -1, 2, ValueError, "neuron -1 out of range"),
    ("1", 0, 2, ValueError, "layer must be an integer"),
    (0, 1.5, 2, ValueError, "neuron must be an integer"),
    (0, 0, 0, ValueError, "k must be a whole number >= 1"),
])  # fmt: skip
def test_bad_neuron_or_options(tiny_llama, located, small_data, layer, neuron, k, error, message):
    with pytest.raises(error, match=re.escape(message)):
        neuron_card(tiny_llama, located, layer, neuron, data=small_data, k=k)


def test_bad_inputs_of_another_kind(tiny_llama, tiny_gpt2, located, small_data):
    with pytest.raises(TypeError, match="expected a LocateResult or NeuronStats"):
        neuron_card(tiny_llama, located["Conservation:+"], 0, 0, data=small_data)
    with pytest.raises(ValueError, match="another model"):
        neuron_card(tiny_gpt2, located, 0, 0, data=small_data)


# ---------------------------------------------------------------------------- `vlens neuron` and the report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cards") / "run"
    assert main(["locate", "--out", str(folder), *TINY_LOCATE]) == 0
    return folder


def test_vlens_neuron_writes_a_card(run_dir, capsys):
    capsys.readouterr()
    assert main(["neuron", str(run_dir), "1.5", "--pairs", "1"]) == 0
    path = run_dir / "cards" / "L1_N5.html"
    assert capsys.readouterr().out.strip() == str(path.resolve())
    page = path.read_text()
    assert all(f"<h3>{t}</h3>" in page for t in TITLES.values()) and page.count('render("circuits-vis-') == 2
    assert "Neuron L1.N5" in page and not REMOTE.search(page)
    # the report's way of naming a neuron is accepted too, and --out names the file
    args = build_parser().parse_args(["neuron", str(run_dir), "L2.N40", "--out", "mine.html"])
    assert (args.neuron, args.out, args.pairs) == ((2, 40), "mine.html", 4)


@pytest.mark.parametrize("argv,message", [
    (["1"], "expected LAYER.NEURON as two whole numbers like 12.345, got '1'"),
    (["1.x"], "expected LAYER.NEURON"),
    (["1.2.3"], "expected LAYER.NEURON"),
    (["3.0"], "layer 3 out of range"),
    (["0.96"], "neuron 96 out of range: this model has neurons 0..95"),
    (["0.1", "--pairs", "0"], "expected a whole number >= 1"),
])  # fmt: skip
def test_vlens_neuron_bad_input_is_one_line_exit_2(run_dir, argv, message, capsys):
    capsys.readouterr()
    try:
        code = main(["neuron", str(run_dir), *argv])
    except SystemExit as stop:  # argparse's own refusal
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_report_links_the_top_neurons_to_their_cards(run_dir):
    from vlens.report import write_report

    page = write_report(run_dir, neuron_views=0, model=vlens.load_model("tiny-llama"), cards=1).read_text()
    assert "<h2>Neuron cards</h2>" in page
    hrefs = re.findall(r'href="(report_cards/L\d+_N\d+\.html)"', page)
    assert len(hrefs) == 4  # 2 dimensions x 2 poles x the top 1
    folder = run_dir / "report_cards"
    assert all((run_dir / h).is_file() for h in hrefs) and (folder / "circuitsvis.js").is_file()
    for card in folder.glob("L*_N*.html"):
        text = card.read_text()
        assert '<script src="circuitsvis.js"></script>' in text and not REMOTE.search(text)
        assert len(text) < 300_000  # the 1.3 MB bundle is shared, not copied into each card
