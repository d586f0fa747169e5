"""The tokenizer oracle: transformers 4.57's GPT-2 tokenizers, always built with from_pretrained(folder)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from gpt2kit.hub import BUNDLED_VOCAB_DIR


def gpt2_folder(folder: Path) -> Path:
    """What the hub's openai-community/gpt2 holds for its tokenizer: vocab.json, merges.txt and a
    tokenizer_config.json that says model_max_length 1024 (tokenizer.json is left out: transformers then
    converts vocab + merges itself, which is the path under test)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(BUNDLED_VOCAB_DIR / name, folder / name)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
    return folder


def hf_tokenizer(folder: Path | str, fast: bool, **kwargs):
    """transformers' GPT2TokenizerFast (fast=True) or GPT2Tokenizer loaded from a folder."""
    transformers = pytest.importorskip("transformers")
    logging.getLogger("transformers").setLevel(logging.ERROR)  # the "sequence too long" warnings
    cls = transformers.GPT2TokenizerFast if fast else transformers.GPT2Tokenizer
    return cls.from_pretrained(str(folder), **kwargs)
