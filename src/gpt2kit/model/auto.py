"""Auto classes: pick the GPT-2 class for a task from a folder, and say clearly when a folder is not GPT-2."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gpt2kit import hub
from gpt2kit.config import GPT2Config
from gpt2kit.model.gpt2 import GPT2Model, GPT2PreTrainedModel
from gpt2kit.model.heads import (
    GPT2DoubleHeadsModel,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
)


def _check_is_gpt2(name_or_path: str | os.PathLike, **kwargs: Any) -> None:
    if isinstance(kwargs.get("config"), GPT2Config):
        return
    folder = hub.find_model_dir(
        name_or_path, local_files_only=kwargs.get("local_files_only", False), download_ok=True, required=True
    )
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        return  # from_pretrained will say what is missing
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(
            f"{name_or_path} holds a {model_type!r} model; gpt2kit implements GPT-2 only (model_type 'gpt2'). "
            "Use transformers for other architectures."
        )


class _Auto:
    model_class: type[GPT2PreTrainedModel]

    def __init__(self) -> None:
        raise TypeError(f"{type(self).__name__} is built with from_pretrained(path) or from_config(config)")

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> GPT2PreTrainedModel:
        _check_is_gpt2(pretrained_model_name_or_path, **kwargs)
        return cls.model_class.from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_config(cls, config: GPT2Config) -> GPT2PreTrainedModel:
        if not isinstance(config, GPT2Config):
            raise TypeError(f"from_config needs a GPT2Config, got {type(config).__name__}")
        return cls.model_class(config)


class AutoModel(_Auto):
    model_class = GPT2Model


class AutoModelForCausalLM(_Auto):
    model_class = GPT2LMHeadModel


class AutoModelForSequenceClassification(_Auto):
    model_class = GPT2ForSequenceClassification


class AutoModelForTokenClassification(_Auto):
    model_class = GPT2ForTokenClassification


class AutoModelForQuestionAnswering(_Auto):
    model_class = GPT2ForQuestionAnswering


class AutoModelForMultipleChoice(_Auto):
    model_class = GPT2DoubleHeadsModel
