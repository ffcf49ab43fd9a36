"""ValueInsight: the shipped value data, its schemas, loaders and contrastive prompts."""

from vlens.data.loaders import SHIPPED_DIR, ValueData, load_author_layout, load_value_data, load_valueinsight
from vlens.data.prompts import Prompt, build_prompts, prompts_dataset, render
from vlens.data.schemas import DataFormatError, read_records, write_records

__all__ = [
    "SHIPPED_DIR",
    "DataFormatError",
    "Prompt",
    "ValueData",
    "build_prompts",
    "load_author_layout",
    "load_value_data",
    "load_valueinsight",
    "prompts_dataset",
    "read_records",
    "render",
    "write_records",
]
