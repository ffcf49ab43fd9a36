"""Sparse probe: an L1 logistic regression of + versus - on per-prompt pooled activations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import einops
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vlens.activations import plan_batches, tokenize_prompts
from vlens.data import Prompt, build_prompts
from vlens.models import model_info
from vlens.neurons import NeuronSet
from vlens.runner import Batch, activation_fn, check_layers, forward, resolve_hook
from vlens.selectors.base import SelectorContext, _top_exact


@dataclass(frozen=True)
class ProbeOptions:
    C: float = 1.0  # inverse L1 strength (liblinear)
    scope: str = "question"  # the tokens each prompt's activations are averaged over


def pooled_features(
    model: Any, prompts: Sequence[Prompt], *, scope: str = "question", hook: str = "post",
    layers: Sequence[int] | None = None, batch_size: int = 16,
) -> tuple[Float[Tensor, "prompt layer neuron"], int]:  # fmt: skip
    """Per prompt, the mean activation of every neuron over the tokens of ``scope``; and the number of forward passes.

    Reuses :mod:`vlens.activations`' tokenization, token scopes and length-sorted batches, and
    runs through :mod:`vlens.runner`. Each hook reduces its layer to ``[batch, d_mlp]`` at
    once, so no per-token activations are kept.
    """
    if scope == "generated":
        raise ValueError("pooled_features pools prompt tokens: use scope 'question', 'all' or 'last'")
    if not prompts:
        raise ValueError("no prompts given")
    layers = check_layers(model, layers)
    rows = tokenize_prompts(model, prompts, scope)
    out = torch.zeros(len(rows), len(layers), model_info(model).d_mlp)
    act = activation_fn(model, hook)
    box: dict[str, Tensor] = {}

    def make_hook(layer_pos: int) -> Callable:
        def pool_hook(tensor: Tensor, hook: Any) -> None:
            pooled = einops.einsum(act(tensor).float(), box["w"], "b p n, b p -> b n")
            out[box["rows"], layer_pos] = pooled.cpu()

        return pool_hook

    fwd_hooks = [(resolve_hook(model, hook, layer), make_hook(i)) for i, layer in enumerate(layers)]
    batches = plan_batches(rows, batch_size)
    with torch.inference_mode():
        for batch in batches:
            tokens = Batch.of(model, [rows[i].ids for i in batch])
            sel = torch.zeros(tokens.tokens.shape, dtype=torch.float32)
            for j, i in enumerate(batch):
                sel[j, : len(rows[i].select)] = torch.tensor(rows[i].select, dtype=torch.float32)
            box["w"] = (sel / sel.sum(1, keepdim=True).clamp(min=1)).to(model.cfg.device)
            box["rows"] = torch.tensor(batch)
            forward(model, tokens, hooks=fwd_hooks, stop_at=fwd_hooks[-1][0])
    return out, len(batches)


@dataclass
class ProbeScores:
    coef: Float[Tensor, "layer neuron"]  # weights on standardised features (+ pole = class 1)
    importance: Float[Tensor, "layer neuron"]  # |w| * std of the raw feature (= |coef|)
    univariate: Float[Tensor, "layer neuron"]  # standardised mean difference of the pooled features, + minus -
    n_nonzero: int


def probe_scores(
    features: Float[Tensor, "prompt layer neuron"], is_plus: Bool[Tensor, " prompt"], *, C: float = 1.0, seed: int = 0
) -> ProbeScores:
    """An L1 logistic regression (liblinear, fixed ``C`` and seed) of ``+`` versus ``-`` on standardised features.

    With ``w`` the weight on a raw feature, the importance is ``|w| * std`` (the weight on
    the standardised feature); its sign says which pole the neuron points to.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    n_prompts, n_layers, d_mlp = features.shape
    y = is_plus.long().numpy()
    if len(set(y.tolist())) != 2:
        raise ValueError("the probe needs prompts of both poles")
    x = einops.rearrange(features, "p l n -> p (l n)").double().numpy()
    xs = StandardScaler().fit_transform(x)
    clf = LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", random_state=seed, max_iter=1000).fit(xs, y)
    coef = torch.from_numpy(clf.coef_[0]).reshape(n_layers, d_mlp)
    f = features.double()
    plus, minus = f[is_plus], f[~is_plus]
    pooled_var = plus.var(0, unbiased=True) * (len(plus) - 1) + minus.var(0, unbiased=True) * (len(minus) - 1)
    sd = (pooled_var / max(n_prompts - 2, 1)).sqrt()
    diff = plus.mean(0) - minus.mean(0)
    univariate = torch.where(sd > 0, diff / sd.clamp(min=1e-300), torch.zeros_like(diff))
    return ProbeScores(coef, coef.abs(), univariate, int((coef != 0).sum()))


def _probe_prompts(ctx: SelectorContext) -> list[Prompt]:
    if ctx.prompts is None:  # rebuilt once, with the settings the statistics were collected with
        meta, data = ctx.stats.meta, ctx.value_data()
        if meta.get("dataset_sha256") != data.sha256:
            raise ValueError("these statistics were not collected on this value data: for the probe, pass the data "
                             "(data=...) or the prompts (prompts=...) they were collected on")  # fmt: skip
        dims = ctx.stats.dimensions
        ctx.prompts = build_prompts(
            data, ctx.model, split=meta.get("split", "search"), dimensions=dims, template=meta.get("template", "auto"),
            pairs_per_question=meta.get("pairs_per_question", 7), max_pairs=meta.get("max_pairs"), seed=meta.get("seed", 0),
        )  # fmt: skip
    return list(ctx.prompts)


def probe_selector(
    ctx: SelectorContext, dimension: str, pole: str, k: int, reference: NeuronSet | None = None, *,
    options: ProbeOptions | None = None,
) -> NeuronSet:  # fmt: skip
    """Sparse probe: the neurons whose L1-probe weight points to ``pole``, largest importance first.

    Features are per-prompt means over the ``options.scope`` tokens of the statistics' hook
    family (:func:`pooled_features`), on the statistics' layers, for the prompts of
    ``dimension``. An L1 probe keeps at most about as many non-zero weights as there are
    prompts, so the set is filled (``params["n_fallback"]``) with the neurons whose pooled
    activation best separates the poles on its own (directed standardised mean difference).
    ``scores`` are the signed importance (``|w| * std``, negative for the other pole).
    """
    model, options = ctx.need_model("probe"), options or ProbeOptions()
    key = ("probe", dimension, options)
    if key not in ctx.cache:
        prompts = [p for p in _probe_prompts(ctx) if p.dimension == dimension]
        if not prompts:
            raise ValueError(f"no probe prompts for {dimension}")
        feats, n_fwd = pooled_features(model, prompts, scope=options.scope, hook=ctx.stats.hook,
                                       layers=ctx.stats.layers, batch_size=ctx.batch_size)  # fmt: skip
        ctx.count(forward=n_fwd)
        is_plus = torch.tensor([p.pole == "+" for p in prompts])
        ctx.cache[key] = (probe_scores(feats, is_plus, C=options.C, seed=ctx.seed), len(prompts))
    scores, n_prompts = ctx.cache[key]
    sign = 1.0 if pole == "+" else -1.0
    directed = sign * scores.coef
    tier = (directed > 0).long()
    value = torch.where(directed > 0, scores.importance, sign * scores.univariate)
    return _top_exact(ctx.stats, dimension, pole, k, primary=tier == 1, tier=tier, value=value,
                      score=torch.sign(directed) * scores.importance,
                      method="probe", params={"C": options.C, "scope": options.scope, "n_prompts": n_prompts,
                                              "n_nonzero": scores.n_nonzero, "seed": ctx.seed})  # fmt: skip
