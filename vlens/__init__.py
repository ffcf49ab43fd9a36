"""vlens: find the neurons of a language model that carry human values, and test them causally.

The data path of a run reads straight down the modules:
``data`` (ValueInsight prompts) -> ``activations`` (streaming hooks) -> ``stats``
(NeuronStats) -> ``scores`` -> ``neurons`` (NeuronSet) -> ``interventions`` ->
``evaluate`` -> ``validate`` -> ``viz`` / ``report``; ``cli`` is a thin layer on top.
"""

from vlens import data, interventions
from vlens import display as _display  # noqa: F401 (attaches the Jupyter view; IPython has its own `display`)
from vlens._version import __version__
from vlens.activations import collect_stats
from vlens.data import build_prompts, load_value_data, load_valueinsight
from vlens.locate import LocateResult, from_stats, locate, locate_shard
from vlens.models import (
    DEFAULT_MODEL,
    ModelInfo,
    ModelNotAvailableError,
    encode,
    format_prompt,
    load_model,
    model_info,
    tiny_model,
)
from vlens.neurons import NeuronSet, Selection, select
from vlens.selectors import SELECTORS, compare
from vlens.stats import NeuronStats

__all__ = [
    "DEFAULT_MODEL", "LocateResult", "ModelInfo", "ModelNotAvailableError", "NeuronSet", "NeuronStats", "SELECTORS",
    "Selection", "__version__", "build_prompts", "collect_stats", "compare", "data", "encode", "format_prompt",
    "interventions", "from_stats", "load_model", "load_value_data", "load_valueinsight", "locate", "locate_shard",
    "model_info", "select", "tiny_model",
]  # fmt: skip
