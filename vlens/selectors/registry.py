"""Every selector by name: a new selector is one module and one line in :data:`SELECTORS`."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from vlens.data import Prompt, ValueData
from vlens.neurons import NeuronSet
from vlens.selectors.attribution import attribution_selector
from vlens.selectors.base import Selector, SelectorContext, run_selector
from vlens.selectors.lape import lape_selector
from vlens.selectors.probe import probe_selector
from vlens.selectors.random import random_selector
from vlens.selectors.scores import cohens_d_selector, delta_selector, mean_diff_selector
from vlens.stats import NeuronStats

SELECTORS: dict[str, Selector] = {
    "delta": delta_selector,
    "mean_diff": mean_diff_selector,
    "cohens_d": cohens_d_selector,
    "lape": lape_selector,
    "probe": probe_selector,
    "attribution": attribution_selector,
    "random": random_selector,
}


def get_selector(name: str) -> Selector:
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; expected one of {', '.join(SELECTORS)}")
    return SELECTORS[name]


def select_neurons(
    method: str | Selector, stats: NeuronStats, dimension: str, pole: str, k: int, *, model: Any = None,
    data: ValueData | None = None, prompts: Sequence[Prompt] | None = None, options: Any = None,
    reference: NeuronSet | None = None, seed: int = 0, context: SelectorContext | None = None,
) -> NeuronSet:  # fmt: skip
    """Exactly ``k`` neurons of ``pole`` in ``dimension`` by a selector of :data:`SELECTORS` (or a callable).

    ``options`` are the method's own (``LapeOptions``, ``ProbeOptions``, ``AttributionOptions``).
    Pass one ``context`` to several calls to share the model passes of the probe and of
    attribution patching between poles and sizes (and to read their cost in ``context.costs``).
    """
    name, fn = (method, get_selector(method)) if isinstance(method, str) else (getattr(method, "__name__", "custom"), method)
    fn = partial(fn, options=options) if options is not None else fn
    ctx = context or SelectorContext(stats, model, data, prompts, seed)
    return run_selector(ctx, name, fn, dimension, pole, k, reference)
