"""Neuron selectors on the same footing: the paper's delta against other attribution baselines.

A *selector* turns statistics (or, for the probe and attribution patching, the model and
data) into a :class:`~vlens.neurons.NeuronSet` of exactly ``k`` neurons for one dimension
and pole. Every set carries the same fields whatever made it: its own ``scores``, the
activation probability and the directed activation-probability difference ``delta`` of
each neuron from the statistics (the paper's edit formula needs both), and the
statistics' provenance (:func:`vlens.neurons.provenance_of`). The selectors:

- ``delta``: the paper's ``P(a > 0 | pole) - P(a > 0 | other pole)``;
- ``mean_diff``, ``cohens_d``: the same ranking rule on other scores of the same statistics;
- ``lape``: language-activation-probability entropy (Tang et al. 2024) over the two poles;
- ``probe``: a sparse (L1) logistic probe on per-prompt pooled activations;
- ``attribution``: attribution patching of the forced-choice orientation metric;
- ``random``: layer-matched to a reference set (or uniform without one).

One module per method (with its options dataclass), ``base`` for what they share, and
:data:`SELECTORS` (``registry``) by name: a new selector is one module and one entry.
:func:`compare` edits every selector's sets against the same random controls in one batched
evaluation; :func:`vlens.viz.compare_figures` draws the result.

Every selector ranks the neurons of ``stats.layers`` and takes the top ``k``. Where a method proper
ranks fewer (LAPE's activity filter, the probe's zero weights), the set is filled from a documented
fallback ranking and ``params["n_fallback"]`` says how many neurons came from it.
"""

from vlens.experiment import TABLE_COLUMNS
from vlens.selectors.attribution import AttributionOptions, AttributionScores, attribution_scores, dilemma_metric_rows
from vlens.selectors.base import Cost, Selector, SelectorContext, random_like
from vlens.selectors.compare import DEFAULT_SIZES, CompareResult, compare, set_sizes
from vlens.selectors.lape import LapeOptions, LapeScores, lape_scores
from vlens.selectors.probe import ProbeOptions, ProbeScores, pooled_features, probe_scores
from vlens.selectors.registry import SELECTORS, select_neurons

__all__ = ["DEFAULT_SIZES", "SELECTORS", "TABLE_COLUMNS", "AttributionOptions", "AttributionScores", "CompareResult",
    "Cost", "LapeOptions", "LapeScores", "ProbeOptions", "ProbeScores", "Selector", "SelectorContext",
    "attribution_scores", "compare", "dilemma_metric_rows", "lape_scores", "pooled_features", "probe_scores",
    "random_like", "select_neurons", "set_sizes"]  # fmt: skip
