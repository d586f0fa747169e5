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
_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": None, "typical_p": 1.0}
_BEAM_DEFAULTS = {"early_stopping": False, "length_penalty": 1.0}
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
    use_cache: bool = True
    # Prompt lookup decoding (transformers' PromptLookupCandidateGenerator): propose up to this many tokens
    # that followed an earlier occurrence of the last n-gram, verified by the model in one pass.
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int | None = None  # None: 2, as transformers
    num_assistant_tokens: int = 20
    # The type of the past_key_values returned: "static" (a StaticCache) or "dynamic" (a DynamicCache, also
    # what None gives); gpt2kit decodes on its own preallocated cache either way.
    cache_implementation: str | None = None
    # Logits: warpers (sampling only) and processors (every strategy).
    temperature: float | None = 1.0
    top_k: int | None = 50
    top_p: float | None = 1.0
    min_p: float | None = None
    typical_p: float | None = 1.0
    repetition_penalty: float | None = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int | None = 0
    bad_words_ids: list[list[int]] | None = None
    renormalize_logits: bool = False
    forced_eos_token_id: int | list[int] | None = None
    remove_invalid_values: bool = False  # nan -> 0 and +-inf -> the dtype's max / min in the scores
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
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
                if getattr(self, name) is not None and getattr(self, name) != default
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
        for key, value in self.extra.items():
            out.setdefault(key, copy.deepcopy(value))
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """Only the settings that differ from the defaults (what transformers writes to the file)."""
        defaults = GenerationConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if k not in defaults or defaults[k] != v}

    def to_json_string(self, use_diff: bool = True) -> str:
        return (
            json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True) + "\n"
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
