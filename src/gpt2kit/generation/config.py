"""GenerationConfig: how generate() decodes, under the key names of transformers' generation_config.json.

A plain dataclass with transformers 4.57's names, defaults and meaning for the strategies gpt2kit runs
(greedy, sampling, beam search). Keys we do not model (other strategies, newer transformers) are kept in
`extra` and written back out, so a file survives a round trip through either library.

Validation follows transformers: settings that cannot work raise ValueError (ours also catches the values
its logits processors would only reject inside generate(), and nan or infinite numbers, which it lets
through); settings that are merely unused (top_p without sampling, length_penalty without beams) log a
warning.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

GENERATION_CONFIG_NAME = "generation_config.json"

# Written by transformers for its own bookkeeping; not settings, so not kept.
_METADATA_KEYS = ("transformers_version", "_commit_hash", "_original_object_hash")
# Read only when sampling / only with beams: set elsewhere they are ignored, which is worth a warning.
_SAMPLING_DEFAULTS = {
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
}
_BEAM_DEFAULTS = {
    "early_stopping": False,
    "length_penalty": 1.0,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
}
_OUTPUT_FLAGS = ("output_attentions", "output_hidden_states", "output_scores", "output_logits")
# transformers 4.57's ALL_CACHE_IMPLEMENTATIONS: the names a generation_config.json may hold.
_CACHE_IMPLEMENTATIONS = (
    "static",
    "offloaded_static",
    "sliding_window",
    "hybrid",
    "hybrid_chunked",
    "offloaded_hybrid",
    "offloaded_hybrid_chunked",
    "dynamic",
    "dynamic_full",
    "offloaded",
    "quantized",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_non_finite(value: Any) -> bool:
    """nan or an infinity: never a meaningful setting, though transformers' config lets them through."""
    return isinstance(value, float) and not math.isfinite(value)


def _is_id_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(_is_int(v) and v >= 0 for v in value)


_SEQUENCE_BIAS_FIX = "pass {(token ids...): bias} or [[[token ids...], bias], ...], e.g. {(50256,): -10.0}"


def sequence_bias_dict(sequence_bias: Any) -> dict[tuple[int, ...], float]:
    """Check a sequence_bias setting and return it as {(ids...): bias}; [[ids, bias], ...] (the form JSON can
    hold) is accepted too.

    >>> sequence_bias_dict([[[1, 2], 0.5]])
    {(1, 2): 0.5}
    """
    if isinstance(sequence_bias, dict):
        pairs = list(sequence_bias.items())
    elif isinstance(sequence_bias, (list, tuple)):
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in sequence_bias):
            raise ValueError(
                f"sequence_bias must hold [token ids, bias] pairs, got {sequence_bias!r}; {_SEQUENCE_BIAS_FIX}"
            )
        pairs = [(p[0], p[1]) for p in sequence_bias]
    else:
        raise ValueError(
            f"sequence_bias must be a dict or a list, got {type(sequence_bias).__name__}; {_SEQUENCE_BIAS_FIX}"
        )
    if not pairs:
        raise ValueError(f"sequence_bias is empty; {_SEQUENCE_BIAS_FIX}, or None for no bias")
    out: dict[tuple[int, ...], float] = {}
    for ids, bias in pairs:
        if not isinstance(ids, (list, tuple)) or len(ids) == 0 or not _is_id_list(ids):
            raise ValueError(
                f"sequence_bias keys must be non-empty sequences of token ids >= 0, got {ids!r}; {_SEQUENCE_BIAS_FIX}"
            )
        if not _is_number(bias) or math.isnan(bias):
            raise ValueError(
                f"sequence_bias values must be numbers, got {bias!r} for {tuple(ids)}; {_SEQUENCE_BIAS_FIX}"
            )
        out[tuple(ids)] = float(bias)
    return out


def check_exponential_decay(value: Any) -> tuple[int, float]:
    """exponential_decay_length_penalty as (start_index, decay_factor), checked."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not _is_int(value[0])
        or value[0] < 0
        or not _is_number(value[1])
        or _is_non_finite(value[1])
    ):
        raise ValueError(
            "exponential_decay_length_penalty must be (start_index, decay_factor): an integer >= 0 and a finite "
            f"number, e.g. (10, 1.05), got {value!r}"
        )
    return value[0], float(value[1])


def _check_force_words(value: Any) -> None:
    """force_words_ids: per word a list of token ids, or a list of alternative id lists (any one will do)."""

    def ok_word(word: Any) -> bool:
        if isinstance(word, list) and word and all(isinstance(alt, list) for alt in word):
            return all(alt and _is_id_list(alt) for alt in word)
        return isinstance(word, list) and len(word) > 0 and _is_id_list(word)

    if not (isinstance(value, list) and value and all(ok_word(w) for w in value)):
        raise ValueError(
            "force_words_ids has to either be a list[list[list[int]]] or list[list[int]] of positive integers, "
            f"but is {value!r}; e.g. [[464], [11, 318]] forces two words, [[[464], [1212]]] one of two"
        )


@dataclass
class WatermarkingConfig:
    """Settings of Kirchenbauer et al.'s watermark (transformers' WatermarkingConfig): each step adds `bias` to a
    green list of greenlist_ratio * V tokens seeded by the previous token ("lefthash") or by each candidate
    itself ("selfhash"), with hashing_key as the secret.

    >>> WatermarkingConfig(bias=2.5).to_dict()["seeding_scheme"]
    'lefthash'
    """

    greenlist_ratio: float = 0.25
    bias: float = 2.0
    hashing_key: int = 15485863
    seeding_scheme: str = "lefthash"
    context_width: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> WatermarkingConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"watermarking_config has unknown keys {unknown}; known: {sorted(known)}")
        config = cls(**data)
        for key, value in kwargs.items():
            if key in known:
                setattr(config, key, value)
        return config

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def validate(self) -> None:
        if self.seeding_scheme not in ("lefthash", "selfhash"):
            raise ValueError(
                f"watermarking_config.seeding_scheme must be 'lefthash' or 'selfhash', got {self.seeding_scheme!r}"
            )
        if not _is_number(self.greenlist_ratio) or not 0.0 < self.greenlist_ratio < 1.0:
            raise ValueError(
                f"watermarking_config.greenlist_ratio must be in (0, 1), got {self.greenlist_ratio!r}"
            )
        if not _is_number(self.bias) or _is_non_finite(self.bias):
            raise ValueError(f"watermarking_config.bias must be a finite number, got {self.bias!r}")
        if not _is_int(self.hashing_key):
            raise ValueError(f"watermarking_config.hashing_key must be an integer, got {self.hashing_key!r}")
        if not _is_int(self.context_width) or self.context_width < 1:
            raise ValueError(
                f"watermarking_config.context_width must be an integer >= 1, got {self.context_width!r}"
            )

    def construct_processor(self, vocab_size: int | None, device=None):
        """The WatermarkLogitsProcessor for these settings (imports torch)."""
        from gpt2kit.generation.processors import WatermarkLogitsProcessor

        return WatermarkLogitsProcessor(vocab_size, device, **self.to_dict())


@dataclass
class GenerationConfig:
    """Decoding settings for generate(); field names and defaults are transformers' GenerationConfig's.

    >>> cfg = GenerationConfig(do_sample=True, temperature=0.7, max_new_tokens=40)
    >>> cfg.top_k, cfg.update(top_p=0.9, foo=1)
    (50, {'foo': 1})
    """

    # Length. max_length counts the prompt; max_new_tokens, when set, wins over it (as in transformers).
    max_length: int = 20
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    early_stopping: bool | str = False  # beam search: True, False (heuristic) or "never"
    stop_strings: str | list[str] | None = None
    # Strategy.
    do_sample: bool = False
    num_beams: int = 1
    num_beam_groups: int = 1  # > 1: group (diverse) beam search, with diversity_penalty > 0
    penalty_alpha: float | None = None  # > 0 with top_k > 1 and greedy: contrastive search
    dola_layers: str | list[int] | None = None  # "low", "high" or layer indices: DoLa decoding
    use_cache: bool = True
    # Prompt lookup decoding (transformers' PromptLookupCandidateGenerator): propose up to this many tokens
    # that followed an earlier occurrence of the last n-gram, verified by the model in one pass.
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int | None = None  # None: 2, as transformers
    num_assistant_tokens: int = 20
    # The type of the past_key_values returned: "static" (a StaticCache) or "dynamic" (a DynamicCache, also
    # what None gives); gpt2kit decodes on its own preallocated cache either way.
    cache_implementation: str | None = None
    low_memory: bool | None = None  # contrastive search one candidate at a time in transformers; same tokens
    # Logits: warpers (sampling only) and processors (every strategy).
    temperature: float | None = 1.0
    top_k: int | None = 50
    top_p: float | None = 1.0
    min_p: float | None = None
    typical_p: float | None = 1.0
    epsilon_cutoff: float | None = 0.0
    eta_cutoff: float | None = 0.0
    diversity_penalty: float = 0.0
    repetition_penalty: float | None = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int | None = 0
    bad_words_ids: list[list[int]] | None = None
    # Constrained beam search: token ids that must appear (a list per word, or per word a list of
    # alternatives), or Constraint objects (PhrasalConstraint, DisjunctiveConstraint).
    force_words_ids: list | None = None
    constraints: list | None = None
    renormalize_logits: bool = False
    forced_eos_token_id: int | list[int] | None = None
    remove_invalid_values: bool = False  # nan -> 0 and +-inf -> the dtype's max / min in the scores
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    sequence_bias: dict | list | None = None  # {(ids...): bias} or [[ids, bias], ...]
    exponential_decay_length_penalty: tuple[int, float] | None = None  # (start_index, decay_factor)
    watermarking_config: WatermarkingConfig | None = None  # a dict is turned into a WatermarkingConfig
    # Outputs.
    num_return_sequences: int = 1
    output_attentions: bool = False
    output_hidden_states: bool = False
    output_scores: bool = False
    output_logits: bool | None = None
    return_dict_in_generate: bool = False
    # Special tokens.
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    # Keys we do not model ourselves, kept verbatim for the round trip.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __init__(self, **kwargs: Any) -> None:
        for f in fields(self):
            if f.name != "extra":
                setattr(self, f.name, kwargs.pop(f.name, f.default))
        extra = dict(kwargs.pop("extra", None) or {})
        for key in _METADATA_KEYS:
            kwargs.pop(key, None)
        extra.update(kwargs)
        self.extra = extra
        if isinstance(self.watermarking_config, dict):
            self.watermarking_config = WatermarkingConfig.from_dict(self.watermarking_config)
        self.validate()

    def __getattr__(self, name: str) -> Any:
        # Unknown generation_config.json keys read like attributes, as on transformers' config.
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"GenerationConfig has no attribute {name!r}")

    # --- validation -------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ValueError for settings generate() cannot run; log a warning for settings it would ignore.

        Range checks on temperature apply only when sampling, because greedy decoding ignores it (and
        `temperature=0` with `do_sample=False` is a common way to write "greedy").
        """
        self._check_lengths()
        self._check_strategy()
        self._check_advanced_strategies()
        self._check_logits_settings()
        self._check_token_ids()
        self._warn_unused()

    def _check_lengths(self) -> None:
        if not _is_int(self.max_length) or self.max_length < 0:
            raise ValueError(f"max_length must be a non-negative integer, got {self.max_length!r}")
        if self.max_new_tokens is not None and (not _is_int(self.max_new_tokens) or self.max_new_tokens <= 0):
            raise ValueError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}; "
                "pass None to stop at max_length instead"
            )
        if not _is_int(self.min_length) or self.min_length < 0:
            raise ValueError(f"min_length must be a non-negative integer, got {self.min_length!r}")
        if self.min_new_tokens is not None and (not _is_int(self.min_new_tokens) or self.min_new_tokens < 0):
            raise ValueError(
                f"min_new_tokens must be a non-negative integer or None, got {self.min_new_tokens!r}"
            )
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.stop_strings is not None and not (
            isinstance(self.stop_strings, str)
            or (isinstance(self.stop_strings, list) and all(isinstance(s, str) for s in self.stop_strings))
        ):
            raise ValueError(f"stop_strings must be a string or a list of strings, got {self.stop_strings!r}")

    def _check_strategy(self) -> None:
        if not _is_int(self.num_beams) or self.num_beams < 1:
            raise ValueError(
                f"num_beams must be an integer >= 1 (1 means no beam search), got {self.num_beams!r}"
            )
        n = self.num_return_sequences
        if not _is_int(n) or n < 1:
            raise ValueError(f"num_return_sequences must be an integer >= 1, got {n!r}")
        if n != 1 and self.num_beams == 1 and not self.do_sample:
            raise ValueError(
                f"greedy decoding returns one sequence per prompt, but num_return_sequences={n}; "
                f"set do_sample=True or num_beams>={n}"
            )
        if self.cache_implementation is not None and self.cache_implementation not in _CACHE_IMPLEMENTATIONS:
            raise ValueError(
                f"Invalid cache_implementation ({self.cache_implementation!r}); choose one of "
                f"{_CACHE_IMPLEMENTATIONS} or None (gpt2kit's generate() runs 'static' and 'dynamic')"
            )
        for name in ("prompt_lookup_num_tokens", "max_matching_ngram_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if not _is_int(self.num_assistant_tokens) or self.num_assistant_tokens < 1:
            raise ValueError(
                f"num_assistant_tokens must be a positive integer, got {self.num_assistant_tokens!r}"
            )
        if self.num_beams > 1 and n > self.num_beams:
            raise ValueError(
                f"num_return_sequences={n} is more than num_beams={self.num_beams}; "
                f"beam search can return at most num_beams sequences, so raise num_beams to {n} or more"
            )

    def _check_advanced_strategies(self) -> None:
        # contrastive, group beam, constrained beam and DoLa, with transformers 4.55's rules and messages
        if not _is_int(self.num_beam_groups) or self.num_beam_groups < 1:
            raise ValueError(f"num_beam_groups must be an integer >= 1, got {self.num_beam_groups!r}")
        if (
            not _is_number(self.diversity_penalty)
            or _is_non_finite(self.diversity_penalty)
            or self.diversity_penalty < 0
        ):
            raise ValueError(
                f"diversity_penalty must be a finite number >= 0 (0 turns it off), got {self.diversity_penalty!r}"
            )
        if self.penalty_alpha is not None and (
            not _is_number(self.penalty_alpha) or _is_non_finite(self.penalty_alpha) or self.penalty_alpha < 0
        ):
            raise ValueError(
                f"penalty_alpha must be a number >= 0 (contrastive search with top_k > 1, typically 0.6), got "
                f"{self.penalty_alpha!r}; None turns it off"
            )
        if self.dola_layers is not None and not (
            self.dola_layers in ("low", "high")
            or (isinstance(self.dola_layers, list) and all(_is_int(i) and i >= 0 for i in self.dola_layers))
        ):
            raise ValueError(
                f"dola_layers must be 'low', 'high' or a list of layer indices, got {self.dola_layers!r}"
            )
        if self.force_words_ids is not None:
            _check_force_words(self.force_words_ids)
        if self.constraints is not None and not isinstance(self.constraints, list):
            raise ValueError(
                f"constraints must be a list of PhrasalConstraint / DisjunctiveConstraint, got {self.constraints!r}"
            )
        if self.num_beams == 1:
            return
        if self.constraints is not None or self.force_words_ids is not None:
            message = (
                "one of `constraints`, `force_words_ids` is not `None`, triggering constrained beam search. However, "
                "`{}` is set to `{}`, which is incompatible with this generation mode. Set `constraints` and "
                "`force_words_ids` to `None` or unset `{}` to continue."
            )
            if self.do_sample is True:
                raise ValueError(message.format("do_sample", True, "do_sample"))
            if self.num_beam_groups != 1:
                raise ValueError(message.format("num_beam_groups", self.num_beam_groups, "num_beam_groups"))
        elif self.diversity_penalty != 0.0 or self.num_beam_groups != 1:
            prefix = (
                "`diversity_penalty` is not 0.0 or `num_beam_groups` is not 1, triggering group beam search. In this "
                "generation mode, "
            )
            if self.do_sample is True:
                raise ValueError(prefix + "`do_sample` must be set to `False`")
            if self.num_beams % self.num_beam_groups != 0:
                raise ValueError(
                    prefix
                    + f"`num_beams` should be divisible by `num_beam_groups` (got {self.num_beams} and "
                    f"{self.num_beam_groups})"
                )
            if self.diversity_penalty == 0.0:
                raise ValueError(
                    prefix
                    + "`diversity_penalty` should be greater than `0.0`, otherwise your groups will be identical."
                )

    def _check_logits_settings(self) -> None:
        # nan and inf are refused although transformers' config accepts them (temperature=inf samples
        # uniformly, a nan is ignored or fails later in a processor); finite values follow its rules.
        defaults = {f.name: f.default for f in fields(self)}
        for name in ("temperature", "top_p", "min_p", "typical_p", "repetition_penalty", "length_penalty"):
            value = getattr(self, name)
            if _is_non_finite(value):
                raise ValueError(
                    f"{name} must be a finite number, got {value!r}; leave it out for the default "
                    f"({defaults[name]!r})"
                )
        if (
            self.do_sample
            and self.temperature is not None
            and (not _is_number(self.temperature) or self.temperature <= 0)
        ):
            raise ValueError(
                f"temperature must be > 0 when do_sample=True, got {self.temperature!r}; "
                "for greedy decoding set do_sample=False instead"
            )
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 turns top-k off), got {self.top_k!r}")
        if self.top_p is not None and (not _is_number(self.top_p) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (1.0 turns top-p off), got {self.top_p!r}")
        if self.min_p is not None and (not _is_number(self.min_p) or not 0 <= self.min_p <= 1):
            raise ValueError(f"min_p must be in [0, 1] (None turns min-p off), got {self.min_p!r}")
        if self.typical_p is not None and (not _is_number(self.typical_p) or not 0 < self.typical_p <= 1):
            raise ValueError(
                f"typical_p must be in (0, 1] (1.0 turns typical sampling off), got {self.typical_p!r}"
            )
        if self.repetition_penalty is not None and (
            not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0
        ):
            raise ValueError(
                f"repetition_penalty must be > 0 (1.0 means no penalty), got {self.repetition_penalty!r}"
            )
        if not _is_number(self.length_penalty):
            raise ValueError(f"length_penalty must be a number, got {self.length_penalty!r}")
        if self.no_repeat_ngram_size is not None and (
            not _is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0
        ):
            raise ValueError(
                f"no_repeat_ngram_size must be an integer >= 0 (0 turns it off), got {self.no_repeat_ngram_size!r}"
            )
        if self.bad_words_ids is not None and not (
            isinstance(self.bad_words_ids, list)
            and self.bad_words_ids
            and all(_is_id_list(seq) and len(seq) > 0 for seq in self.bad_words_ids)
        ):
            raise ValueError(
                "bad_words_ids must be a non-empty list of non-empty lists of token ids, e.g. [[50256], [11, 198]], "
                f"got {self.bad_words_ids!r}; pass None for no bad words"
            )
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            value = getattr(self, name)
            if value is not None and not _is_id_list(value):
                raise ValueError(f"{name} must be a list of token ids (integers >= 0) or None, got {value!r}")
        for name in ("epsilon_cutoff", "eta_cutoff"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not 0 <= value < 1):
                raise ValueError(
                    f"{name} must be in [0, 1) (0.0 turns it off; 3e-4 is typical), got {value!r}"
                )
        if self.sequence_bias is not None:
            sequence_bias_dict(self.sequence_bias)
        if self.exponential_decay_length_penalty is not None:
            check_exponential_decay(self.exponential_decay_length_penalty)
        if self.watermarking_config is not None:
            if not isinstance(self.watermarking_config, WatermarkingConfig):
                raise ValueError(
                    "watermarking_config must be a WatermarkingConfig or a dict of its settings, got "
                    f"{type(self.watermarking_config).__name__}"
                )
            self.watermarking_config.validate()

    def _check_token_ids(self) -> None:
        for name in ("pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is not None and not _is_int(value):
                raise ValueError(f"{name} must be an integer token id or None, got {value!r}")
        for name in ("eos_token_id", "forced_eos_token_id"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) or _is_id_list(value)):
                raise ValueError(
                    f"{name} must be a token id or a list of token ids (integers >= 0), got {value!r}"
                )

    def _warn_unused(self) -> None:
        # As transformers' validate(): these combinations are legal but a setting has no effect.
        unused = []
        if not self.do_sample:
            unused += [
                f"{name}={getattr(self, name)!r} (only used when do_sample=True)"
                for name, default in _SAMPLING_DEFAULTS.items()
                if getattr(self, name) is not None
                and getattr(self, name) != default
                and not (name == "top_k" and self.penalty_alpha is not None)  # contrastive search reads it
            ]
        if self.num_beams == 1:
            unused += [
                f"{name}={getattr(self, name)!r} (only used when num_beams>1)"
                for name, default in _BEAM_DEFAULTS.items()
                if getattr(self, name) != default
            ]
        if self.return_dict_in_generate is not True:
            unused += [
                f"{name}=True (only used when return_dict_in_generate=True)"
                for name in _OUTPUT_FLAGS
                if getattr(self, name) is True
            ]
        if _is_int(self.pad_token_id) and self.pad_token_id < 0:
            unused.append(
                f"pad_token_id={self.pad_token_id} (negative; batched generation with padding will fail)"
            )
        eos = [self.eos_token_id] if _is_int(self.eos_token_id) else list(self.eos_token_id or [])
        if any(_is_int(t) and t < 0 for t in eos):
            unused.append(f"eos_token_id={self.eos_token_id!r} (negative ids never stop generation)")
        if unused:
            logger.warning("GenerationConfig settings that will be ignored: %s", "; ".join(unused))

    # --- updating -------------------------------------------------------------------------------------------

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the attributes named in kwargs; return the kwargs that name no attribute (as transformers).

        The config is validated afterwards; if that fails, it is left as it was.
        """
        known = {f.name for f in fields(self)} - {"extra"}
        before = copy.deepcopy(self.__dict__)
        unused = {}
        for key, value in kwargs.items():
            if key in known:
                setattr(self, key, value)
            elif key in self.extra:
                self.extra[key] = value
            else:
                unused[key] = value
        if isinstance(self.watermarking_config, dict):
            try:
                self.watermarking_config = WatermarkingConfig.from_dict(self.watermarking_config)
            except (TypeError, ValueError):
                self.__dict__.update(before)
                raise
        try:
            self.validate()
        except ValueError:
            self.__dict__.update(before)
            raise
        return unused

    # --- (de)serialisation ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field under generation_config.json's names, unknown keys included."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        if isinstance(self.watermarking_config, WatermarkingConfig):
            out["watermarking_config"] = self.watermarking_config.to_dict()
        if isinstance(self.sequence_bias, dict):  # tuple keys cannot be JSON keys: the list form can
            out["sequence_bias"] = [[list(ids), bias] for ids, bias in self.sequence_bias.items()]
        for key, value in self.extra.items():
            out.setdefault(key, copy.deepcopy(value))
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """Only the settings that differ from the defaults (what transformers writes to the file)."""
        defaults = GenerationConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if k not in defaults or defaults[k] != v}

    def to_json_string(self, use_diff: bool = True) -> str:
        return (
            json.dumps(
                self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True, default=repr
            )
            + "\n"
        )

    def __repr__(self) -> str:
        return f"{self.__class__.__name__} {self.to_json_string()}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GenerationConfig) and self.to_dict() == other.to_dict()

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> GenerationConfig:
        return cls(**{**data, **overrides})

    @classmethod
    def from_model_config(cls, model_config: Any) -> GenerationConfig:
        """The generation settings a model config carries (special tokens, legacy keys such as max_length).

        >>> from gpt2kit.config import GPT2Config
        >>> GenerationConfig.from_model_config(GPT2Config()).eos_token_id
        50256
        """
        known = {f.name for f in fields(cls)} - {"extra"}
        # As transformers: None in the model config means "not set", so the generation default holds.
        data = {k: v for k, v in model_config.to_dict().items() if k in known and v is not None}
        config = cls(**data)
        # transformers marks such files so that it keeps reading legacy generation keys from config.json.
        config.extra["_from_model_config"] = True
        if not config.return_dict_in_generate and any(getattr(config, f) is True for f in _OUTPUT_FLAGS):
            config.return_dict_in_generate = True
        return config

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, config_file_name: str | None = None, **overrides: Any
    ) -> GenerationConfig:
        """Load generation_config.json from a folder, a file path, the local HF cache, or a built-in GPT-2 name.

        >>> GenerationConfig.from_pretrained("gpt2").eos_token_id
        50256
        """
        from gpt2kit import hub
        from gpt2kit.config import PRESETS, GPT2Config

        file_name = config_file_name or GENERATION_CONFIG_NAME
        overrides.pop("local_files_only", None)
        revision = overrides.pop("revision", None)
        path = Path(name_or_path).expanduser()
        if path.is_file():
            return cls.from_dict(_read_json(path), **overrides)
        folder = hub.find_model_dir(name_or_path, revision=revision, required=False)
        if folder is not None and (folder / file_name).is_file():
            return cls.from_dict(_read_json(folder / file_name), **overrides)
        if str(name_or_path) in PRESETS and folder is None:
            # The hub's generation_config.json for these is exactly what the model config implies.
            config = cls.from_model_config(GPT2Config.from_pretrained(name_or_path))
            config.update(**overrides)
            return config
        if folder is not None:
            raise FileNotFoundError(
                f"{folder} has no {file_name}; create one with GenerationConfig(...).save_pretrained({str(folder)!r})"
                " or use GenerationConfig.from_model_config(config)"
            )
        raise FileNotFoundError(hub.not_found_message(name_or_path, [file_name]))

    def save_pretrained(self, save_directory: str | os.PathLike, config_file_name: str | None = None) -> Path:
        """Write generation_config.json (only non-default settings, as transformers) atomically; return its path."""
        from gpt2kit.data import atomic_write_text

        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_pretrained needs a folder, but {folder} is a file")
        self.validate()
        if self.constraints is not None:
            raise ValueError(
                "constraints are Python objects that generation_config.json cannot hold; pass them to generate() "
                "(or save force_words_ids instead)"
            )
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / (config_file_name or GENERATION_CONFIG_NAME)
        atomic_write_text(target, self.to_json_string(use_diff=True))
        return target


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-save it or pass another file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data
