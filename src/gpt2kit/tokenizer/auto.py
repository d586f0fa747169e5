"""AutoTokenizer: transformers' entry point, which for GPT-2 means the fast tokenizer (or the slow one)."""

from __future__ import annotations

import os
from typing import Any

from gpt2kit.tokenizer.base import TokenizerBase
from gpt2kit.tokenizer.fast import GPT2TokenizerFast
from gpt2kit.tokenizer.slow import GPT2Tokenizer


class AutoTokenizer:
    """`AutoTokenizer.from_pretrained(...)` gives a GPT2TokenizerFast (use_fast=False: a GPT2Tokenizer).

    >>> type(AutoTokenizer.from_pretrained("gpt2")).__name__
    'GPT2TokenizerFast'
    """

    def __init__(self) -> None:
        raise TypeError("AutoTokenizer is not instantiated: call AutoTokenizer.from_pretrained(name_or_path)")

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *, use_fast: bool = True, **kwargs: Any
    ) -> TokenizerBase:
        tokenizer_class = GPT2TokenizerFast if use_fast else GPT2Tokenizer
        return tokenizer_class.from_pretrained(pretrained_model_name_or_path, **kwargs)
