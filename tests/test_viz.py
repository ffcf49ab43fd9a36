"""vlens.viz: token views against run_with_cache, one shared colour scale, offline HTML, figures of locate and validate."""

from __future__ import annotations

import base64
import html
import json
import re
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from vlens import viz
from vlens.activations import tokenize_prompts
from vlens.data import build_prompts
from vlens.evaluate import Instruments
from vlens.experiment import expand_shared, item_changes, summarise, table_of
from vlens.locate import from_stats, locate
from vlens.validate import ValidationResult, validate

REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?https?://|from\s*[\"']https?://", re.IGNORECASE)


@pytest.fixture(scope="module")
def located(tiny_llama, small_data):
    return locate(tiny_llama, small_data, selection="top_k:8", progress=False)


@pytest.fixture(scope="module")
def validation(tiny_llama, located):
    instruments = Instruments.default(max_dilemmas=1, max_portrait=4, max_neutral=1)
    return validate(tiny_llama, located, dimensions=["Conservation"], gammas=[0.5, 1.0], kl_targets=[], n_random=3, controls=(),
                    instruments=instruments, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def matched(tiny_llama, located):
    """Every edit matched to one KL target, with the prompted and dense controls (no gamma axis)."""
    instruments = Instruments.default(max_dilemmas=3, max_portrait=0, max_neutral=1)
    return validate(tiny_llama, located, dimensions=["Conservation"], kl_targets=[0.001], n_random=3,
                    controls=("prompted", "dense"), instruments=instruments, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def comparison(tiny_llama, located):
    from vlens.selectors import compare

    instruments = Instruments.default(max_dilemmas=1, max_portrait=2, max_neutral=1)
    return compare(tiny_llama, located, dimensions=["Conservation"], sizes=[4, 8], selectors=["delta", "random"],
                   instruments=instruments, n_random=2, kl_targets=[0.001], progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def prompts(tiny_llama, small_data):
    return build_prompts(small_data, tiny_llama, dimensions=["Conservation"], max_pairs=5)


def _render_props(view) -> list[dict]:
    """The props of every ColoredTokens component that a neuron_tokens view renders."""
    calls = [line for line in view.local_src.splitlines() if line.startswith('render("circuits-vis-')]
    return [json.loads(line.split(", ColoredTokens, ", 1)[1].removesuffix(");")) for line in calls]


# ---------------------------------------------------------------------------- token views


@pytest.mark.parametrize("hook", ["post", "gate"])
def test_neuron_activations_match_run_with_cache(tiny_llama, prompts, hook):
    texts = [*prompts, "a short text"]  # different lengths, so batches are padded
    layer, neuron = 1, 17
    rows = viz.neuron_activations(tiny_llama, texts, layer, neuron, hook=hook, batch_size=3)
    assert len(rows) == len(texts)
    name = f"blocks.{layer}.mlp.hook_{'post' if hook == 'post' else 'pre'}"
    for r, p in zip(rows, texts, strict=True):
        text = p if isinstance(p, str) else p.text
        ids = tiny_llama.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not text.startswith(tiny_llama.tokenizer.bos_token):
            ids = [tiny_llama.tokenizer.bos_token_id, *ids]
        _, cache = tiny_llama.run_with_cache(torch.tensor([ids]), names_filter=name)
        ref = cache[name][0, :, neuron]
        if hook == "gate":
            ref = torch.nn.functional.silu(ref)
        assert len(r["activations"]) == len(r["tokens"]) == len(ids)
        torch.testing.assert_close(torch.tensor(r["activations"]), ref.float(), atol=1e-5, rtol=0)
        assert r["layer"] == layer and r["neuron"] == neuron and r["hook"] == hook
    for r, p in zip(rows[: len(prompts)], prompts, strict=True):
        assert "".join(r["tokens"]) == p.text  # the chat text starts with its BOS: every token is a piece of the text
        assert (r["pole"], r["prompt_id"], r["pair_id"]) == (p.pole, p.id, p.pair_id)
    scoped = tokenize_prompts(tiny_llama, prompts, "question")
    assert [r["question_start"] for r in rows[: len(prompts)]] == [s.select.index(True) for s in scoped]
    assert rows[-1]["pole"] == "" and rows[-1]["question_start"] == 1  # a plain string: all but the BOS


def test_top_prompts_rank_by_max_over_question_tokens(tiny_llama, prompts):
    rows = viz.neuron_activations(tiny_llama, prompts, 2, 3)
    table = viz.top_prompts(tiny_llama, prompts, 2, 3, k=2)
    assert isinstance(table, pd.DataFrame) and list(table.pole) == ["+", "+", "-", "-"] and list(table["rank"]) == [1, 2, 1, 2]
    best = {pole: sorted((max(r["activations"][r["question_start"] :]) for r in rows if r["pole"] == pole), reverse=True)
            for pole in "+-"}  # fmt: skip
    for pole in "+-":
        np.testing.assert_allclose(table[table.pole == pole].max_activation, best[pole][:2])
    everything = viz.top_prompts(tiny_llama, prompts, 2, 3, k=None)
    assert len(everything) == len(prompts) and everything.other_pole_max.notna().all()


def test_neuron_tokens_share_one_colour_scale(tiny_llama, prompts):
    import circuitsvis.utils.render as cv_render

    k = 2
    view = viz.neuron_tokens(tiny_llama, prompts, 1, 5, k=k)
    assert isinstance(view, cv_render.RenderedHTML)
    props = _render_props(view)
    assert len(props) == 2 * k  # top-k of each pole
    assert len({p["minValue"] for p in props}) == 1 and len({p["maxValue"] for p in props}) == 1
    shown = np.concatenate([p["values"] for p in props])
    assert props[0]["minValue"] == pytest.approx(min(shown.min(), -1e-6))
    assert props[0]["maxValue"] == pytest.approx(max(shown.max(), 1e-6))
    # the samples are the top prompts' question tokens, in rank order
    table = viz.top_prompts(tiny_llama, prompts, 1, 5, k=k)
    rows = {r["prompt_id"]: r for r in viz.neuron_activations(tiny_llama, prompts, 1, 5)}
    for p, pid in zip(props, table.prompt_id, strict=True):
        r = rows[pid]
        np.testing.assert_allclose(p["values"], r["activations"][r["question_start"] :])
        assert len(p["tokens"]) == len(p["values"])
    assert view.local_src.count("var CircuitsVis=") == 1  # the bundle is inlined once for all samples
    whole = _render_props(viz.neuron_tokens(tiny_llama, prompts, 1, 5, k=1, show="all"))
    assert len(whole[0]["values"]) == len(rows[table.prompt_id[0]]["activations"])


def test_circuitsvis_html_is_offline(tiny_llama, prompts):
    import circuitsvis.tokens

    view = viz.neuron_tokens(tiny_llama, [*prompts[:2], "x </script><b>y"], 0, 1, k=1)
    for obj in (view, circuitsvis.tokens.colored_tokens(["a", "b"], [0.5, -1.0])):
        page = viz.circuitsvis_html(obj, full_page=True)
        assert page.startswith("<!DOCTYPE html>") and "CircuitsVis" in page
        assert not REMOTE_SCRIPT.search(page), "a script is loaded from the network"
        assert "unpkg.com" not in page
    fragment = viz.circuitsvis_html(view)
    assert fragment == view.local_src and fragment.count("</script>") == 1  # token text cannot close the script
    assert REMOTE_SCRIPT.search(view.cdn_src)  # the CDN version is the one that imports from unpkg
    with pytest.raises(TypeError, match="str\\(obj\\) is its CDN version"):
        viz.circuitsvis_html(str(view))


def test_token_views_bad_input(tiny_llama, prompts):
    with pytest.raises(ValueError, match="out of range"):
        viz.neuron_activations(tiny_llama, prompts, 3, 0)
    with pytest.raises(ValueError, match="neuron 96 out of range"):
        viz.neuron_activations(tiny_llama, prompts, 0, 96)
    with pytest.raises(ValueError, match="neuron -1 out of range"):
        viz.neuron_tokens(tiny_llama, prompts, 0, -1)
    with pytest.raises(ValueError, match="no prompts"):
        viz.neuron_activations(tiny_llama, [], 0, 0)
    with pytest.raises(ValueError, match="unknown hook"):
        viz.neuron_activations(tiny_llama, prompts, 0, 0, hook="resid")
    with pytest.raises(ValueError, match="k must be at least 1"):
        viz.top_prompts(tiny_llama, prompts, 0, 0, k=0)
    with pytest.raises(ValueError, match="show must be"):
        viz.neuron_tokens(tiny_llama, prompts, 0, 0, show="description")


# ---------------------------------------------------------------------------- figures of a locate run


def test_neurons_per_layer(located):
    fig = viz.neurons_per_layer(located)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    for ax, dim in zip(fig.axes, located.dimensions, strict=True):
        assert len(ax.patches) == 2 * 3  # two poles x three layers
        heights = [p.get_height() for p in ax.patches]
        assert heights[:3] == located[f"{dim}:+"].counts_per_layer().tolist()
        assert heights[3:] == located[f"{dim}:-"].counts_per_layer().tolist()
    assert len(viz.neurons_per_layer(located, "co").axes) == 1  # the short name of Conservation


def test_score_distribution_marks_each_pole(located):
    fig = viz.score_distribution(located, "Conservation")
    (ax,) = fig.axes
    cuts = [line.get_xdata()[0] for line in ax.lines]
    assert cuts == pytest.approx([located["Conservation:+"].scores.min().item(), -located["Conservation:-"].scores.min().item()])
    paper = from_stats(located.stats, "threshold:0.02")
    assert len(viz.score_distribution(paper, "Conservation").axes[0].lines) == 4  # + the threshold of each pole
    assert isinstance(viz.score_distribution(located, "Self-Transcendence", score="entropy", log=False), Figure)
    with pytest.raises(ValueError, match="unknown score 'nope'"):
        viz.score_distribution(located, "Conservation", score="nope")
    with pytest.raises(ValueError, match="unknown dimension 'Power'"):
        viz.score_distribution(located, "Power")
    with pytest.raises(ValueError, match="unknown dimension 'Openness_to_Change'"):
        viz.neurons_per_layer(located, "Openness_to_Change")  # a real dimension, but not in this result


def test_overlap_heatmap(located):
    fig = viz.overlap_heatmap(located)
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # the map and its colour bar
    ax = fig.axes[0]
    n = len(located.neuron_sets)
    assert ax.images[0].get_array().shape == (n, n) and len(ax.texts) == n * n
    assert ax.texts[0].get_text() == "1.00\n(8)"
    a, b = located["Conservation:+"], located["Self-Transcendence:+"]
    assert ax.images[0].get_array()[0, 2] == pytest.approx(a.jaccard(b))


# ---------------------------------------------------------------------------- figures of a validation


def test_orientation_vs_gamma(validation):
    t = expand_shared(table_of(validation))  # the shared random edits, as every cell's control
    fig = viz.orientation_vs_gamma(validation, "Conservation")
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # one panel per direction
    sel = (t.steered == "Conservation") & (t.metric == "orientation") & (t.measured == "Conservation")
    base = t[(t.source == "none") & (t.metric == "orientation") & (t.measured == "Conservation")].value.item()
    for ax, direction in zip(fig.axes, "+-", strict=True):
        assert len(ax.lines) == 3 and len(ax.collections) == 2  # random mean, paper, baseline; band, random crosses
        rnd_mean, paper, unedited = ax.lines
        assert paper.get_color() == viz.COLORS[direction] and rnd_mean.get_color() == viz.COLORS["random"]
        rows = t[sel & (t.direction == direction)]
        np.testing.assert_allclose(paper.get_ydata(), rows[(rows.source == "value") & (rows["mode"] == "paper")].sort_values("gamma").value)
        np.testing.assert_allclose(rnd_mean.get_ydata(), rows[rows.source == "random"].groupby("gamma").value.mean())
        assert unedited.get_ydata()[0] == pytest.approx(base)
    assert len(viz.orientation_vs_gamma(validation, "Conservation", metric="kl").axes) == 2


def _artists(ax, label):
    """The lines and collections of an axes with this legend label."""
    return [a for a in [*ax.lines, *ax.collections, *ax.containers] if a.get_label() == label]


def test_cost_and_shift_figures(validation):
    fig = viz.cost_vs_gamma(validation)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    (ax,) = fig.axes
    s = summarise(validation)
    for direction in "+-":
        (line,) = _artists(ax, f"value edit toward {direction}")
        paper = s[(s["mode"] == "paper") & (s.direction == direction)].sort_values("gamma")
        np.testing.assert_allclose(line.get_ydata(), paper["kl"], atol=1e-12)
        assert line.get_color() == viz.COLORS[direction]
    (crosses,) = _artists(ax, "random edits")
    assert len(crosses.get_offsets()) == 2 * 3  # the shared null once (not once per direction): 2 gammas x 3 seeds
    fig = viz.shift_vs_kl(validation)
    assert [ax.get_title() for ax in fig.axes] == ["Conservation toward + (the value)", "Conservation toward - (its reversed aspect)"]
    for ax, direction in zip(fig.axes, "+-", strict=True):
        (line,) = _artists(ax, f"value edit toward {direction}")
        paper = s[(s["mode"] == "paper") & (s.direction == direction)].sort_values("gamma")
        np.testing.assert_allclose(line.get_ydata(), paper["shift"], atol=1e-12)
        np.testing.assert_allclose(line.get_xdata(), paper["kl"], atol=1e-12)
        (crosses,) = _artists(ax, "random edits")
        assert len(crosses.get_offsets()) == 2 * 3  # 2 gammas x 3 seeds
        bars = _artists(ax, "random edits: mean ± sd")
        assert len(bars) == 2  # the random edits' mean +- sd at each gamma
        for bar, gamma in zip(bars, (0.5, 1.0), strict=True):
            row = paper[np.isclose(paper.gamma, gamma)].iloc[0]
            assert bar.lines[0].get_ydata()[0] == pytest.approx(row.random_mean)
            assert np.ptp(bar.lines[2][0].get_segments()[0][:, 1]) == pytest.approx(2 * row.random_sd)


def test_one_dose_draws_the_random_edits_beside_the_value_edit(validation):
    """Issue 16: with one gamma the random band had no width and the x axis ran 0.96-1.04. Now the
    edits stand side by side, the random edits as crosses with their mean +- sd as an error bar."""
    t = validation.table
    one = t[t.gamma.isna() | (t.gamma == 1.0)]
    fig = viz.orientation_vs_gamma(one, "Conservation")
    rows = expand_shared(table_of(one))
    for ax, direction in zip(fig.axes, "+-", strict=True):
        assert [tick.get_text() for tick in ax.get_xticklabels()] == ["value edit", "random edits"]
        assert ax.get_xlabel() == "every edit at gamma 1"
        (value,) = _artists(ax, f"value edit toward {direction}")
        (crosses,) = _artists(ax, "random edits")
        (bar,) = _artists(ax, "random edits: mean ± sd")
        x_value, x_random = value.get_offsets()[0][0], crosses.get_offsets()[:, 0]
        assert x_value == 0 and np.all(np.abs(x_random - 1) < 0.2) and bar.lines[0].get_xdata()[0] > x_random.max()
        sel = (rows.source == "random") & (rows.direction == direction) & (rows.metric == "orientation") & (rows.measured == "Conservation")
        np.testing.assert_allclose(np.sort(crosses.get_offsets()[:, 1]), np.sort(rows[sel].value))
        assert bar.lines[0].get_ydata()[0] == pytest.approx(rows[sel].value.mean())
        assert ax.get_xlim()[1] - ax.get_xlim()[0] > 1  # room for both, not a sliver around gamma 1
    cost = viz.cost_vs_gamma(one).axes[0]
    assert [tick.get_text() for tick in cost.get_xticklabels()] == ["toward +", "toward -", "random edits"]


def test_gamma_figures_refuse_a_validation_matched_on_kl(matched):
    for draw in (lambda: viz.orientation_vs_gamma(matched, "Conservation"), lambda: viz.cost_vs_gamma(matched)):
        with pytest.raises(ValueError, match="dosed to a KL target, so the edits share no gamma axis; draw viz.matched_effects"):
            draw()


def test_matched_effects(matched):
    from vlens.significance import paired_ci

    fig = viz.matched_effects(matched)
    assert [ax.get_title() for ax in fig.axes] == ["Conservation toward +", "Conservation toward -"]
    summary = matched.summary()
    change, labels, dim_of = item_changes(matched)
    for ax, direction in zip(fig.axes, "+-", strict=True):
        # one dose level: the edits side by side, each tick naming it and its KL
        ticks = [t.get_text().split("\n")[0] for t in ax.get_xticklabels()]
        assert ticks == ["value edit", "random edits (3)", "dense"]
        cell = summary[summary.direction == direction].iloc[0]
        (value,) = _artists(ax, f"value edit toward {direction} (95% CI)")
        assert value.lines[0].get_ydata()[0] == pytest.approx(cell.effect)
        assert value.lines[0].get_color() == viz.COLORS[direction]
        low, high = np.sort(value.lines[2][0].get_segments()[0][:, 1])
        value_cond = labels.index[(labels.source == "value") & (labels.direction == direction)][0]
        sign = 1.0 if direction == "+" else -1.0
        ci = paired_ci(sign * change.loc[value_cond, dim_of.index[dim_of == "Conservation"]].to_numpy())
        assert (low, high) == pytest.approx((ci.low, ci.high))
        assert (cell.ci_low, cell.ci_high) == pytest.approx((ci.low, ci.high))  # the verdict table's interval
        (crosses,) = _artists(ax, "random edits")
        assert len(crosses.get_offsets()) == 3 and crosses.get_facecolor()[0][:3] == pytest.approx(to_rgb(viz.COLORS["random"]))
        prompted = [line for line in ax.lines if line.get_label() == "prompted (the value stated)"]
        assert len(prompted) == 1 and prompted[0].get_ydata()[0] == pytest.approx(cell.prompted_shift)
        assert prompted[0].get_linestyle() == "--"


def test_leakage_heatmap(validation):
    t = validation.table
    fig = viz.leakage_heatmap(validation)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ax = fig.axes[0]
    grid = ax.images[0].get_array()
    measured = [m for m in t[(t.source == "none") & (t.metric == "orientation")].measured]
    assert grid.shape == (2, len(measured))
    base = t[(t.source == "none") & (t.metric == "orientation")].set_index("measured").value
    edited = t[(t.source == "value") & (t["mode"] == "paper") & (t.gamma == 1.0) & (t.metric == "orientation") & (t.direction == "-")]
    np.testing.assert_allclose(grid[1], edited.set_index("measured").value[measured] - base[measured])
    norm = ax.images[0].norm
    assert norm.vmin == pytest.approx(-norm.vmax)  # diverging, centred at 0
    assert len(ax.patches) == 2  # the steered dimension's own cells are outlined
    assert "gamma = 0.5" in viz.leakage_heatmap(validation, gamma=0.5).axes[0].get_title()


def test_leakage_heatmap_at_a_kl_target(matched):
    t = matched.table
    ax = viz.leakage_heatmap(matched).axes[0]  # default: the first KL target
    assert "matched to KL 0.001" in ax.get_title()
    base = t[(t.source == "none") & (t.metric == "orientation")].set_index("measured").value
    measured = list(base.index)
    edited = t[(t.source == "value") & (t.metric == "orientation") & (t.direction == "+")].set_index("measured").value
    np.testing.assert_allclose(ax.images[0].get_array()[0], edited[measured] - base[measured])
    with pytest.raises(ValueError, match="KL target 0.5 is not in the validation table"):
        viz.leakage_heatmap(matched, kl_target=0.5)
    with pytest.raises(ValueError, match="give gamma or kl_target, not both"):
        viz.leakage_heatmap(matched, gamma=1.0, kl_target=0.001)


def test_figures_from_a_saved_validation(tmp_path, validation):
    """A CSV round trip turns the empty strings into NaN; the figures must not mind."""
    back = ValidationResult.load(validation.save(tmp_path))
    a = viz.leakage_heatmap(back).axes[0].images[0].get_array()
    b = viz.leakage_heatmap(validation).axes[0].images[0].get_array()
    np.testing.assert_allclose(a, b)
    for fig in (viz.orientation_vs_gamma(back.table, "Conservation"), viz.cost_vs_gamma(back), viz.shift_vs_kl(back)):
        assert isinstance(fig, Figure)


def test_validation_figures_bad_input(validation):
    t = validation.table
    with pytest.raises(ValueError, match="metric 'accuracy' is not in the validation table"):
        viz.orientation_vs_gamma(validation, "Conservation", metric="accuracy")
    with pytest.raises(ValueError, match="unknown dimension 'Self-Enhancement'"):
        viz.orientation_vs_gamma(validation, "Self-Enhancement")
    with pytest.raises(ValueError, match="empty"):
        viz.cost_vs_gamma(t.iloc[:0])
    with pytest.raises(ValueError, match="missing column"):
        viz.shift_vs_kl(t.drop(columns="gamma"))
    with pytest.raises(ValueError, match="model-wide"):
        viz.cost_vs_gamma(validation, metric="orientation")
    with pytest.raises(ValueError, match="measured per dimension"):
        viz.leakage_heatmap(validation, metric="kl")
    with pytest.raises(ValueError, match="gamma 3 is not in the validation table"):
        viz.leakage_heatmap(validation, gamma=3)
    with pytest.raises(ValueError, match="no edited conditions"):
        viz.shift_vs_kl(t[t.source == "none"])
    with pytest.raises(TypeError, match="ValidationResult"):
        viz.cost_vs_gamma([1, 2, 3])


def test_figures_of_a_comparison_pick_one_selector(validation):
    """A compare table holds several selectors: the figures draw one, with the random controls it is compared with."""
    t = validation.table
    other = t[t.source == "value"].assign(selector="lape", value=lambda d: d.value + 0.1)
    both = pd.concat([t, other], ignore_index=True)
    with pytest.raises(ValueError, match="several selectors"):
        viz.shift_vs_kl(both)
    with pytest.raises(ValueError, match="selector 'probe' is not in the table"):
        viz.shift_vs_kl(both, selector="probe")
    ax = viz.shift_vs_kl(both, selector="lape").axes[0]  # toward +
    paper = summarise(both).query("selector == 'lape' and mode == 'paper' and direction == '+'").sort_values("gamma")
    (line,) = _artists(ax, "value edit toward +")
    np.testing.assert_allclose(line.get_ydata(), paper["shift"], atol=1e-12)
    (crosses,) = _artists(ax, "random edits")
    assert len(crosses.get_offsets()) == 2 * 3  # the shared random controls
    assert len(viz.orientation_vs_gamma(both, "Conservation", selector="delta", size=8).axes) == 2


# ---------------------------------------------------------------------------- output for HTML and Jupyter


def test_figure_to_data_uri_and_jupyter_png(located):
    fig = viz.overlap_heatmap(located)
    uri = viz.figure_to_data_uri(fig)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig._repr_png_()[:4] == b"\x89PNG"  # shown by Jupyter without a pyplot backend
    with pytest.raises(TypeError, match="matplotlib Figure"):
        viz.figure_to_data_uri("not a figure")


def _every_figure(located, validation, matched, comparison):
    yield "neurons_per_layer", viz.neurons_per_layer(located)
    yield "score_distribution", viz.score_distribution(located, "Conservation")
    yield "overlap_heatmap", viz.overlap_heatmap(located)
    yield "matched_effects", viz.matched_effects(matched)
    yield "shift_vs_kl", viz.shift_vs_kl(validation)
    yield "orientation_vs_gamma", viz.orientation_vs_gamma(validation, "Conservation")
    yield "cost_vs_gamma", viz.cost_vs_gamma(validation)
    yield "leakage_heatmap", viz.leakage_heatmap(matched)
    for name, fig in viz.compare_figures(comparison).items():
        yield f"compare_{name}", fig


def test_every_figure_is_legible_captioned_and_fits_the_report(located, validation, matched, comparison):
    """Issue 16: tiny text and legends over the data. Every figure: no wider than the report's column (where
    it is shown at its own size), no text under FONT_SIZE pt, legends outside the panels, a caption."""
    from matplotlib.text import Text

    names = []
    for name, fig in _every_figure(located, validation, matched, comparison):
        names.append(name)
        png = fig._repr_png_()  # draws the figure, so every tick label exists
        assert int.from_bytes(png[16:20], "big") / fig.dpi <= viz.MAX_WIDTH + 0.05, f"{name} is wider than the report"
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        small = {t.get_text(): t.get_fontsize() for t in texts if t.get_fontsize() < viz.FONT_SIZE}
        assert not small, f"{name}: text below {viz.FONT_SIZE} pt: {small}"
        assert all(ax.get_legend() is None for ax in fig.axes), f"{name}: a legend inside a panel, over the data"
        assert fig.caption == viz.CAPTIONS[name] and fig.caption.endswith(".")
    assert sorted(names) == sorted(viz.CAPTIONS)  # every caption belongs to a figure


def test_figure_html_shows_the_figure_at_its_own_size_with_its_caption(located):
    fig = viz.overlap_heatmap(located)
    page = viz.figure_html(fig, dpi=144)
    uri = re.search(r'src="(data:image/png;base64,[^"]+)"', page).group(1)
    png = base64.b64decode(uri.split(",", 1)[1])
    css_width = float(re.search(r"width: (\d+)px", page).group(1))
    assert css_width == pytest.approx(int.from_bytes(png[16:20], "big") * 96 / 144, abs=0.5) and css_width <= 96 * viz.MAX_WIDTH
    assert f">{html.escape(viz.CAPTIONS['overlap_heatmap'])}</figcaption>" in page
    assert "max-width: 100%" in page and page.count("src=") == 1 and not REMOTE_SCRIPT.search(page)


def test_the_colour_convention_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "validation.md").read_text(encoding="utf-8")
    section = doc[doc.index("Reading the figures") :]
    for key, colour in viz.COLORS.items():
        assert f"`{colour}`" in section, f"docs/validation.md does not state the colour of {key!r} ({colour})"


def test_no_pyplot_state():
    """viz builds Figure objects directly: it never imports pyplot or leaves figures open in it."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


def test_share_bundle_inlines_the_javascript_once(tiny_llama, small_data):
    from vlens import viz as V
    from vlens.data import build_prompts

    prompts = build_prompts(small_data, tiny_llama, pairs_per_question=1)[:4]
    frags = [V.circuitsvis_html(V.neuron_tokens(tiny_llama, prompts, 0, n, k=1)) for n in (1, 2, 3)]
    shared = V.share_bundle(frags)
    bundle = V._circuitsvis_js()
    assert sum(f.count(bundle) for f in shared) == 1
    assert "window.CircuitsVis = CircuitsVis;" in shared[0]
    assert all("= window.CircuitsVis;" in f for f in shared[1:])
