"""Fine-tuning and evaluation: data pipeline, the Trainer, sliding-window perplexity.

Names are resolved lazily (PEP 562): `gpt2kit train --help` must not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Trainer": "gpt2kit.training.trainer",
    "TrainResult": "gpt2kit.training.trainer",
    "TrainingConfig": "gpt2kit.training.config",
    "evaluate_perplexity": "gpt2kit.training.evaluate",
    "perplexity_of_file": "gpt2kit.training.evaluate",
    "PerplexityResult": "gpt2kit.training.evaluate",
    "tokenize_file": "gpt2kit.training.data",
    "corpus_from_texts": "gpt2kit.training.data",
    "texts_dataset": "gpt2kit.training.data",
    "clean_texts": "gpt2kit.training.data",
    "split_eval": "gpt2kit.training.data",
    "TokenizedCorpus": "gpt2kit.training.data",
    "LMBlocks": "gpt2kit.training.data",
    "LMRows": "gpt2kit.training.data",
    "ClassificationRows": "gpt2kit.training.data",
    "plot_curves": "gpt2kit.training.plot",
}

__all__ = [
    "ClassificationRows",
    "LMBlocks",
    "LMRows",
    "PerplexityResult",
    "TokenizedCorpus",
    "TrainResult",
    "Trainer",
    "TrainingConfig",
    "clean_texts",
    "corpus_from_texts",
    "evaluate_perplexity",
    "perplexity_of_file",
    "plot_curves",
    "split_eval",
    "texts_dataset",
    "tokenize_file",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gpt2kit.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from gpt2kit.training.config import TrainingConfig
    from gpt2kit.training.data import (
        ClassificationRows,
        LMBlocks,
        LMRows,
        TokenizedCorpus,
        clean_texts,
        corpus_from_texts,
        split_eval,
        texts_dataset,
        tokenize_file,
    )
    from gpt2kit.training.evaluate import PerplexityResult, evaluate_perplexity, perplexity_of_file
    from gpt2kit.training.plot import plot_curves
    from gpt2kit.training.trainer import Trainer, TrainResult
