"""gpt2kit: GPT-2 from the ground up on PyTorch, with the API of transformers 4.x.

Only re-exports. Names are resolved lazily (PEP 562) so that `gpt2kit tokenize` and other torch-free
paths do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "GPT2Config": "gpt2kit.config",
    "GPT2Tokenizer": "gpt2kit.tokenizer",
    "GPT2TokenizerFast": "gpt2kit.tokenizer",
    "AutoTokenizer": "gpt2kit.tokenizer",
    "GPT2Model": "gpt2kit.model",
    "GPT2PreTrainedModel": "gpt2kit.model",
    "GPT2LMHeadModel": "gpt2kit.model",
    "GPT2DoubleHeadsModel": "gpt2kit.model",
    "GPT2ForSequenceClassification": "gpt2kit.model",
    "GPT2ForTokenClassification": "gpt2kit.model",
    "GPT2ForQuestionAnswering": "gpt2kit.model",
    "AutoModel": "gpt2kit.model",
    "AutoModelForCausalLM": "gpt2kit.model",
    "AutoModelForSequenceClassification": "gpt2kit.model",
    "AutoModelForTokenClassification": "gpt2kit.model",
    "AutoModelForQuestionAnswering": "gpt2kit.model",
    "DynamicCache": "gpt2kit.model",
    "StaticCache": "gpt2kit.model",
    "GenerationConfig": "gpt2kit.generation",
    "WatermarkingConfig": "gpt2kit.generation",
    "PhrasalConstraint": "gpt2kit.generation",
    "DisjunctiveConstraint": "gpt2kit.generation",
    "stream": "gpt2kit.generation.streaming",
    "TextStreamer": "gpt2kit.generation.streaming",
    "TextIteratorStreamer": "gpt2kit.generation.streaming",
    "Embedder": "gpt2kit.embeddings",
    "Trainer": "gpt2kit.training",
    "TrainingConfig": "gpt2kit.training",
    "evaluate_perplexity": "gpt2kit.training",
    "pack_weights": "gpt2kit.model.packed",
    "quantize_int8": "gpt2kit.model.quant",
    "LoraConfig": "gpt2kit.model.lora",
    "load_adapter": "gpt2kit.model.lora",
    "merge_adapter": "gpt2kit.model.lora",
    "merge_and_unload": "gpt2kit.model.lora",
}

__all__ = [
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForQuestionAnswering",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoTokenizer",
    "DisjunctiveConstraint",
    "DynamicCache",
    "Embedder",
    "GPT2Config",
    "GPT2DoubleHeadsModel",
    "GPT2ForQuestionAnswering",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
    "GPT2LMHeadModel",
    "GPT2Model",
    "GPT2PreTrainedModel",
    "GPT2Tokenizer",
    "GPT2TokenizerFast",
    "GenerationConfig",
    "LoraConfig",
    "PhrasalConstraint",
    "StaticCache",
    "TextIteratorStreamer",
    "TextStreamer",
    "Trainer",
    "TrainingConfig",
    "WatermarkingConfig",
    "evaluate_perplexity",
    "load_adapter",
    "merge_adapter",
    "merge_and_unload",
    "pack_weights",
    "quantize_int8",
    "stream",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gpt2kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the eager spelling of the lazy table above
    from gpt2kit.config import GPT2Config
    from gpt2kit.embeddings import Embedder
    from gpt2kit.generation import (
        DisjunctiveConstraint,
        GenerationConfig,
        PhrasalConstraint,
        WatermarkingConfig,
    )
    from gpt2kit.generation.streaming import TextIteratorStreamer, TextStreamer, stream
    from gpt2kit.model import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        DynamicCache,
        GPT2DoubleHeadsModel,
        GPT2ForQuestionAnswering,
        GPT2ForSequenceClassification,
        GPT2ForTokenClassification,
        GPT2LMHeadModel,
        GPT2Model,
        GPT2PreTrainedModel,
        StaticCache,
    )
    from gpt2kit.model.lora import LoraConfig, load_adapter, merge_adapter, merge_and_unload
    from gpt2kit.model.packed import pack_weights
    from gpt2kit.model.quant import quantize_int8
    from gpt2kit.tokenizer import AutoTokenizer, GPT2Tokenizer, GPT2TokenizerFast
    from gpt2kit.training import Trainer, TrainingConfig, evaluate_perplexity
