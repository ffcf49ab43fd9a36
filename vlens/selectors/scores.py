"""The score-ranked selectors: the paper's delta, and the same ranking on mean difference and Cohen's d."""

from __future__ import annotations

from vlens.neurons import NeuronSet, Selection, select
from vlens.selectors.base import Selector, SelectorContext


def _by_score(method: str) -> Selector:
    def selector(ctx: SelectorContext, dimension: str, pole: str, k: int, reference: NeuronSet | None = None) -> NeuronSet:
        return select(ctx.stats, dimension, pole, Selection("top_k", k=k, threshold=None, score=method))

    selector.__name__ = f"{method}_selector"
    selector.__doc__ = f"The top ``k`` neurons by the directed ``{method}`` score (vlens.neurons.select)."
    return selector


delta_selector = _by_score("delta")
mean_diff_selector = _by_score("mean_diff")
cohens_d_selector = _by_score("cohens_d")
