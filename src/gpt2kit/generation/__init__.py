"""Generation: settings (config.py) and logits processors (processors.py).

Only re-exports. Names resolve lazily (PEP 562), so reading a GenerationConfig does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "GENERATION_CONFIG_NAME",
    "Constraint",
    "ConstraintListState",
    "DisjunctiveConstraint",
    "EpsilonLogitsWarper",
    "EtaLogitsWarper",
    "ExponentialDecayLengthPenalty",
    "ForcedEOSTokenLogitsProcessor",
    "GenerationConfig",
    "HammingDiversityLogitsProcessor",
    "InfNanRemoveLogitsProcessor",
    "LogitNormalization",
    "LogitsProcessor",
    "LogitsProcessorList",
    "MinLengthLogitsProcessor",
    "MinNewTokensLengthLogitsProcessor",
    "MinPLogitsWarper",
    "NoBadWordsLogitsProcessor",
    "NoRepeatNGramLogitsProcessor",
    "PhrasalConstraint",
    "PresenceFrequencyPenaltyLogitsProcessor",
    "RepetitionPenaltyLogitsProcessor",
    "SequenceBiasLogitsProcessor",
    "SuppressTokensAtBeginLogitsProcessor",
    "SuppressTokensLogitsProcessor",
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "TypicalLogitsWarper",
    "WatermarkLogitsProcessor",
    "WatermarkingConfig",
    "build_processors",
]
_FROM_CONFIG = {"GENERATION_CONFIG_NAME", "GenerationConfig", "WatermarkingConfig"}
_FROM_CONSTRAINTS = {"Constraint", "ConstraintListState", "DisjunctiveConstraint", "PhrasalConstraint"}
# everything else is in processors.py


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'gpt2kit.generation' has no attribute {name!r}")
    if name in _FROM_CONFIG:
        module = "gpt2kit.generation.config"
    elif name in _FROM_CONSTRAINTS:
        module = "gpt2kit.generation.constraints"
    else:
        module = "gpt2kit.generation.processors"
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the eager spelling of the lazy lookup above
    from gpt2kit.generation.config import GENERATION_CONFIG_NAME, GenerationConfig, WatermarkingConfig
    from gpt2kit.generation.constraints import (
        Constraint,
        ConstraintListState,
        DisjunctiveConstraint,
        PhrasalConstraint,
    )
    from gpt2kit.generation.processors import (
        EpsilonLogitsWarper,
        EtaLogitsWarper,
        ExponentialDecayLengthPenalty,
        ForcedEOSTokenLogitsProcessor,
        HammingDiversityLogitsProcessor,
        InfNanRemoveLogitsProcessor,
        LogitNormalization,
        LogitsProcessor,
        LogitsProcessorList,
        MinLengthLogitsProcessor,
        MinNewTokensLengthLogitsProcessor,
        MinPLogitsWarper,
        NoBadWordsLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
        PresenceFrequencyPenaltyLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        SequenceBiasLogitsProcessor,
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
        WatermarkLogitsProcessor,
        build_processors,
    )
