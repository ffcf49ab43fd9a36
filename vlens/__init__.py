"""vlens: find the neurons of a language model that carry human values, and test them causally."""

__version__ = "0.1.0"

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

__all__ = [
    "DEFAULT_MODEL",
    "ModelInfo",
    "ModelNotAvailableError",
    "__version__",
    "encode",
    "format_prompt",
    "load_model",
    "model_info",
    "tiny_model",
]
