"""vlens.display: the Jupyter view of the four result classes is self-contained HTML with their key numbers."""

from __future__ import annotations

import base64
import html
import math
import re

import pytest

import vlens
from vlens import display
from vlens.evaluate import Instruments
from vlens.experiment import item_changes
from vlens.locate import LocateResult, locate
from vlens.neurons import NeuronSet
from vlens.report import sample_size_note, verdict_table
from vlens.selectors.compare import CompareResult, compare
from vlens.validate import ValidationResult, validate

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
REMOTE = re.compile(r"<script|<link|<iframe|@import|(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE)


@pytest.fixture(scope="module")
def located(tiny_llama, small_data):
    return locate(tiny_llama, small_data, selection="top_k:8", progress=False)


@pytest.fixture(scope="module")
def validation(tiny_llama, located):
    instruments = Instruments.default(max_dilemmas=2, max_portrait=0, max_neutral=1)
    return validate(tiny_llama, located, dimensions=["Conservation"], gammas=[1.0], kl_targets=[], n_random=3, controls=(),
                    instruments=instruments, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def comparison(tiny_llama, located):
    dilemmas = [{"id": "t.fc.1", "dimension": "Conservation", "context": "Keep or change the plan?", "option_plus": "Keep it.",
                 "option_minus": "Change it now."}]  # fmt: skip
    instruments = Instruments(dilemmas=dilemmas, neutral_text=[{"id": "n", "text": "The sun rose over the quiet town."}],
                              dilemma_variant="cloze-mean")  # fmt: skip
    return compare(tiny_llama, located, dimensions=["Conservation"], sizes=(6,), selectors=["delta", "mean_diff"],
                   instruments=instruments, n_random=2, kl_targets=[0.001], progress=False)  # fmt: skip


def self_contained(page: str, figures: int = 1) -> str:
    """Check that ``page`` loads nothing from anywhere and embeds ``figures`` PNGs; returns its text."""
    assert not REMOTE.search(page), REMOTE.search(page)
    pngs = IMG.findall(page)
    assert len(pngs) == figures
    for data in pngs:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    return IMG.sub("", page)


def test_every_result_class_displays_through_the_registered_renderer():
    for cls, render in ((NeuronSet, display.neuron_set_html), (LocateResult, display.locate_html),
                        (ValidationResult, display.validation_html), (CompareResult, display.compare_html)):  # fmt: skip
        assert cls._repr_html_ is render
    assert vlens.NeuronSet._repr_html_ is display.neuron_set_html  # registered by `import vlens` itself


def test_neuron_set(located):
    ns = located["Conservation:+"]
    text = self_contained(ns._repr_html_())
    assert "NeuronSet Conservation:+" in text and f"<td>{len(ns)}</td>" in text
    assert f"<td>{ns.provenance['hook']}</td>" in text and "tiny-llama" in text
    # the top neuron and its delta, first row of the table of top neurons
    first = re.search(r"Top \d+ of \d+ neurons.*?<tbody>\s*<tr>\s*<td>(\d+)</td>\s*<td>(\d+)</td>\s*<td>([-\d.e]+)</td>", text, re.S)
    assert first and (int(first[1]), int(first[2])) == (int(ns.layers[0]), int(ns.neurons[0]))
    assert float(first[3]) == pytest.approx(float(ns.delta[0]), rel=1e-2)
    empty = NeuronSet("Conservation", "-", ns.layers[:0], ns.neurons[:0], ns.scores[:0], ns.n_layers, ns.d_mlp)
    assert "The set is empty" in self_contained(empty._repr_html_())


def test_locate_result(located):
    text = self_contained(located._repr_html_())
    for name, ns in located.neuron_sets.items():
        assert f"<td>{name}</td>" in text and display._neuron_names(ns, display.TOP_PER_SET) in text
        assert f"<td>{float(ns.delta.max()):.3g}</td>" in text  # max delta
    a, b = "Conservation:+", "Conservation:-"
    assert f"<td>{round(located.overlap()[(a, b)], 3):.3g}</td>" in text and "Jaccard" in text


def test_validation_result(validation):
    text = self_contained(validation._repr_html_())
    table = verdict_table(validation.summary())
    assert len(table) == 2
    for row in table.itertuples(index=False):
        assert row.verdict in text and row.effect in text and row._4 in text  # _4: the 95% CI
    note = sample_size_note(validation.summary())
    assert "p (Holm)" in text and "1/4 = 0.25" in note and html.escape(note) in text  # 3 random edits: p >= 1/4


def test_cells_give_the_items_for_power(validation):
    """items_for_power of every cell, by hand from its per-item differences: ((z_0.975 + z_0.8) * sd / |mean|)^2."""
    change, labels, dim_of = item_changes(validation)
    items = dim_of.index[dim_of == "Conservation"]
    summary = validation.summary()
    for _, cell in summary.iterrows():
        row = labels[(labels.source == "value") & (labels.direction == cell.direction)].index[0]
        diffs = (change.loc[row, items] * (1 if cell.direction == "+" else -1)).to_numpy()
        want = max(2, math.ceil(((1.959964 + 0.841621) * diffs.std(ddof=1) / abs(diffs.mean())) ** 2))  # at least 2 (a spread)
        assert cell.items_for_power == want


def test_compare_result(comparison):
    text = self_contained(comparison._repr_html_())
    s = comparison.summary()
    assert "CompareResult: delta, mean_diff" in text
    for effect, verdict in zip(s["effect"], s["verdict"], strict=True):
        assert f"<td>{effect:.3g}</td>" in text and verdict in text
