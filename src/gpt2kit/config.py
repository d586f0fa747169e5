"""GPT2Config: the hyper-parameters of a GPT-2 model, under the key names of transformers' config.json.

A plain dataclass, validated on construction. Keys we do not know (written by transformers or by a user)
are kept in `extra` and written back out, so a config survives a round trip through either library.

Besides GPT-2's own keys it carries every attribute transformers 4.57 puts on any PretrainedConfig (the
encoder-decoder flags, the tokenizer hints, the legacy generation settings such as max_length), with the same
defaults, so code written against transformers' config reads and writes the same names. Like transformers,
config.json holds only what differs from those common defaults (GPT-2's own keys are always written).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"

# Activations GPT-2 configs may name; the model maps each to a function (model/block.py).
ACTIVATIONS = (
    "gelu_new",
    "gelu",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "quick_gelu",
    "relu",
    "relu6",
    "silu",
    "swish",
    "tanh",
    "sigmoid",
    "mish",
    "linear",
)

# transformers' attribute_map: the generic names resolve to GPT-2's own.
ALIASES = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}

# The released checkpoints' shapes, so `from_pretrained("gpt2-medium")` needs no download.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    "distilgpt2": dict(n_layer=6, n_head=12, n_embd=768),
}
# Hub ids such as "openai-community/gpt2" name the same checkpoints.
for _name in list(PRESETS):
    PRESETS[f"openai-community/{_name}" if _name != "distilgpt2" else "distilbert/distilgpt2"] = PRESETS[
        _name
    ]


# The attention implementations a config may name. gpt2kit runs the fused kernel and switches to the exact
# (eager) path by itself where output_attentions or head_mask need it, so both names are honoured.
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")

# transformers' PretrainedConfig._get_global_generation_defaults(): generation settings that older configs
# kept in config.json. They are read (GenerationConfig.from_model_config picks them up) but belong in
# generation_config.json.
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_length": 20,
    "min_length": 0,
    "do_sample": False,
    "early_stopping": False,
    "num_beams": 1,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "typical_p": 1.0,
    "repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "num_return_sequences": 1,
    "output_scores": False,
    "return_dict_in_generate": False,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "remove_invalid_values": False,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
}

# The attributes every transformers PretrainedConfig has, with the defaults of a bare PretrainedConfig().
# to_diff_dict leaves a key out when it still holds this default (and GPT-2's default agrees), as
# transformers does; GPT-2's own keys are always written.
COMMON_DEFAULTS: dict[str, Any] = {
    "return_dict": True,
    "output_hidden_states": False,
    "output_attentions": False,
    "torchscript": False,
    "dtype": None,
    "pruned_heads": {},
    "tie_word_embeddings": True,
    "chunk_size_feed_forward": 0,
    "is_encoder_decoder": False,
    "is_decoder": False,
    "cross_attention_hidden_size": None,
    "add_cross_attention": False,
    "tie_encoder_decoder": False,
    "architectures": None,
    "finetuning_task": None,
    "id2label": {0: "LABEL_0", 1: "LABEL_1"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "task_specific_params": None,
    "problem_type": None,
    "tokenizer_class": None,
    "prefix": None,
    "bos_token_id": None,
    "pad_token_id": None,
    "eos_token_id": None,
    "sep_token_id": None,
    "decoder_start_token_id": None,
    **GENERATION_DEFAULTS,
    "_name_or_path": "",
    "tf_legacy_loss": False,
    "use_bfloat16": False,
}

# Arguments of transformers' from_pretrained that say where and how to fetch a file; never config values.
_DOWNLOAD_KWARGS = (
    "cache_dir",
    "force_download",
    "resume_download",
    "proxies",
    "token",
    "use_auth_token",
    "trust_remote_code",
    "_from_auto",
    "_from_pipeline",
    "_commit_hash",
    "gguf_file",
)


def _default_id2label(n: int) -> dict[int, str]:
    return {i: f"LABEL_{i}" for i in range(n)}


def _dtype_name(value: Any) -> Any:
    """torch.float16 or "torch.float16" -> "float16": config.json stores dtypes as names (torch stays unimported)."""
    if value is None or isinstance(value, int):
        return value
    return str(value).removeprefix("torch.")


def check_attn_implementation(value: Any) -> None:
    """Raise ValueError unless value is None, "sdpa" or "eager" (what gpt2kit's attention can honour)."""
    if value is not None and value not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={value!r} is not available in gpt2kit; use 'sdpa' (the default: fused "
            "attention, switching to the exact path by itself where output_attentions or head_mask need it) "
            "or 'eager' (always the exact path)"
        )


@dataclass
class GPT2Config:
    """Hyper-parameters of a GPT-2 model; field names and defaults are transformers' GPT2Config's.

    >>> cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4)
    >>> cfg.hidden_size, cfg.num_hidden_layers
    (64, 2)
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    summary_type: str = "cls_index"
    summary_use_proj: bool = True
    summary_activation: str | None = None
    summary_proj_to_labels: bool = True
    summary_first_dropout: float = 0.1
    scale_attn_weights: bool = True
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    # Fields that transformers keeps on every PretrainedConfig; GPT-2 models read the first group.
    add_cross_attention: bool = False
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True
    problem_type: str | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    architectures: list[str] | None = None
    output_attentions: bool = False
    output_hidden_states: bool = False
    return_dict: bool = True
    # The weights' dtype name ("float32", "bfloat16", ...), written by save_pretrained; `torch_dtype` is
    # the older spelling of the same field. Kept as a name, where transformers holds a torch.dtype.
    dtype: str | None = None
    # ... and the ones that only describe the checkpoint, or matter to other architectures; kept so that a
    # config reads, compares and saves like transformers'.
    torchscript: bool = False
    pruned_heads: dict[int, list[int]] = field(default_factory=dict)
    chunk_size_feed_forward: int = 0
    is_encoder_decoder: bool = False
    is_decoder: bool = False
    cross_attention_hidden_size: int | None = None
    tie_encoder_decoder: bool = False
    finetuning_task: str | None = None
    task_specific_params: dict[str, Any] | None = None
    tokenizer_class: str | None = None
    prefix: str | None = None
    sep_token_id: int | None = None
    decoder_start_token_id: int | None = None
    tf_legacy_loss: bool = False
    use_bfloat16: bool = False
    _name_or_path: str = ""
    transformers_version: str | None = None  # of the file this was read from; None when built here
    # Legacy generation settings (GENERATION_DEFAULTS); generate() reads them through
    # GenerationConfig.from_model_config when the folder has no generation_config.json.
    max_length: int = 20
    min_length: int = 0
    do_sample: bool = False
    early_stopping: bool | str = False
    num_beams: int = 1
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    encoder_no_repeat_ngram_size: int = 0
    bad_words_ids: list[list[int]] | None = None
    num_return_sequences: int = 1
    output_scores: bool = False
    return_dict_in_generate: bool = False
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None
    remove_invalid_values: bool = False
    exponential_decay_length_penalty: tuple[int, float] | None = None
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    num_beam_groups: int = 1
    diversity_penalty: float = 0.0
    # Keys we do not model ourselves, kept verbatim for the round trip.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    # Class-level names transformers' configs have; plain data, never written to config.json.
    model_type: ClassVar[str] = "gpt2"
    attribute_map: ClassVar[dict[str, str]] = ALIASES
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]
    base_config_key: ClassVar[str] = ""
    sub_configs: ClassVar[dict[str, Any]] = {}
    has_no_defaults_at_init: ClassVar[bool] = False
    base_model_tp_plan: ClassVar[dict[str, Any] | None] = None
    base_model_pp_plan: ClassVar[dict[str, Any] | None] = None
    base_model_ep_plan: ClassVar[dict[str, Any] | None] = None
    _auto_class: ClassVar[str | None] = None

    def __init__(self, **kwargs: Any) -> None:
        num_labels = kwargs.pop("num_labels", None)
        # As transformers 4.57: `torch_dtype` is the older spelling of `dtype`; when both are given, dtype wins.
        torch_dtype = kwargs.pop("torch_dtype", None)
        if kwargs.get("dtype") is None and torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        if "name_or_path" in kwargs:
            kwargs["_name_or_path"] = kwargs.pop("name_or_path")
        attn_implementation = kwargs.pop("attn_implementation", None)
        commit_hash = kwargs.pop("_commit_hash", None)
        for alias, name in ALIASES.items():
            if alias in kwargs:
                value = kwargs.pop(alias)
                if name in kwargs and kwargs[name] != value:
                    raise ValueError(
                        f"{alias}={value} contradicts {name}={kwargs[name]}; pass only one of them"
                    )
                kwargs[name] = value
        known = {f.name: f for f in fields(self)}
        extra = dict(kwargs.pop("extra", None) or {})
        for f in known.values():
            if f.name == "extra":
                continue
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            setattr(self, f.name, kwargs.pop(f.name, default))
        kwargs.pop("model_type", None)
        extra.update(kwargs)
        self.extra = extra
        self._name_or_path = str(self._name_or_path)
        self._commit_hash = commit_hash
        self._attn_implementation = attn_implementation

        for name in ("id2label", "label2id"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise ValueError(f"GPT2Config.{name} must be a dict, got {getattr(self, name)!r}")
        # JSON object keys are strings; layer and label ids are ints, as transformers reads them back.
        self.pruned_heads = {int(k): list(v) for k, v in (self.pruned_heads or {}).items()}
        # As in transformers: an explicit id2label wins over num_labels (from_dict overrides work the other way).
        if self.id2label is not None:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
            if num_labels is not None and len(self.id2label) != num_labels:
                logger.warning(
                    "num_labels=%s does not match id2label (%d labels); keeping id2label",
                    num_labels,
                    len(self.id2label),
                )
        else:
            self.id2label = _default_id2label(int(num_labels) if num_labels is not None else 2)
        if self.label2id is None or set(self.label2id.values()) != set(self.id2label.keys()):
            self.label2id = {v: k for k, v in self.id2label.items()}
        self.validate()

    def __setattr__(self, name: str, value: Any) -> None:
        # As on transformers' configs, `config.my_key = 1` is saved with the config: names that are neither
        # fields nor class attributes go to `extra`, which to_dict writes out.
        if name == "dtype":
            value = _dtype_name(value)
        if name.startswith("_") or name in _FIELD_NAMES or hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            self.__dict__.setdefault("extra", {})[name] = value

    def __getattr__(self, name: str) -> Any:
        # Unknown config.json keys read like attributes, as on transformers' configs.
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"GPT2Config has no attribute {name!r}")

    def __iter__(self) -> Iterator[str]:
        """The config.json keys, so that `"n_ctx" in config` works as on transformers' configs."""
        return iter(self.to_dict())

    # --- the names transformers code reads -----------------------------------------------------------

    @property
    def num_labels(self) -> int:
        return len(self.id2label or {})

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if n != self.num_labels:
            self._create_id_label_maps(n)

    def _create_id_label_maps(self, num_labels: int) -> None:
        self.id2label = _default_id2label(num_labels)
        self.label2id = {v: k for k, v in self.id2label.items()}

    # Readable and writable, like transformers' attribute_map.
    hidden_size = property(lambda self: self.n_embd, lambda self, v: setattr(self, "n_embd", v))
    max_position_embeddings = property(
        lambda self: self.n_positions, lambda self, v: setattr(self, "n_positions", v)
    )
    num_attention_heads = property(lambda self: self.n_head, lambda self, v: setattr(self, "n_head", v))
    num_hidden_layers = property(lambda self: self.n_layer, lambda self, v: setattr(self, "n_layer", v))
    torch_dtype = property(lambda self: self.dtype, lambda self, v: setattr(self, "dtype", v))

    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: str | os.PathLike) -> None:
        self._name_or_path = str(value)  # a string, so that it stays JSON

    @property
    def _attn_implementation(self) -> str | None:
        """The attention the model runs: None (not chosen yet; the model picks "sdpa"), "sdpa" or "eager"."""
        return self.__dict__.get("_attn_implementation_internal")

    @_attn_implementation.setter
    def _attn_implementation(self, value: str | None) -> None:
        check_attn_implementation(value)
        self.__dict__["_attn_implementation_internal"] = value

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        """Width of the MLP: n_inner, or 4 * n_embd when n_inner is None."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def use_return_dict(self) -> bool:
        # transformers: torchscript forces tuple outputs.
        return self.return_dict and not self.torchscript

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> GPT2Config:
        """The config of the text model: GPT-2 has no sub-configs, so this config itself."""
        return self

    # --- validation -------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ValueError naming the field when a value cannot describe a GPT-2 model."""
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPT2Config.{name} must be a positive integer, got {value!r}")
        if self.n_inner is not None and (
            isinstance(self.n_inner, bool) or not isinstance(self.n_inner, int) or self.n_inner <= 0
        ):
            raise ValueError(f"GPT2Config.n_inner must be a positive integer or None, got {self.n_inner!r}")
        # n_embd % n_head is checked when a model is built (GPT2PreTrainedModel), as in transformers, whose
        # config accepts n_embd=37 with 12 heads and only the model's attention refuses it.
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"GPT2Config.activation_function {self.activation_function!r} is not supported; "
                f"use one of {', '.join(ACTIVATIONS)}"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"GPT2Config.{name} must be a probability in [0, 1], got {value!r}")
        if not isinstance(self.layer_norm_epsilon, (int, float)) or self.layer_norm_epsilon <= 0:
            raise ValueError(f"GPT2Config.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        if self.summary_type not in ("last", "first", "mean", "cls_index", "attn"):
            raise ValueError(
                f"GPT2Config.summary_type must be one of last, first, mean, cls_index, attn; got {self.summary_type!r}"
            )
        if self.problem_type not in (
            None,
            "regression",
            "single_label_classification",
            "multi_label_classification",
        ):
            raise ValueError(
                "GPT2Config.problem_type must be None, 'regression', 'single_label_classification' or "
                f"'multi_label_classification', got {self.problem_type!r}"
            )

    # --- (de)serialisation ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every attribute under config.json's names, unknown keys included, as transformers' to_dict
        (ids in id2label and pruned_heads stay ints; json turns them into strings on writing)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            out[f.name] = copy.deepcopy(getattr(self, f.name))
        out["model_type"] = self.model_type
        for key, value in self.extra.items():
            out.setdefault(key, copy.deepcopy(value))
        self.dict_dtype_to_str(out)
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """What transformers writes to config.json: GPT-2's own keys and unknown keys always, the common
        PretrainedConfig attributes (COMMON_DEFAULTS) only where they differ from the defaults."""
        ours = type(self)().to_dict()
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if key == "_name_or_path" or (key == "transformers_version" and value is None):
                continue
            if key in COMMON_DEFAULTS and value == COMMON_DEFAULTS[key] and value == ours.get(key, value):
                continue
            out[key] = value
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        """config.json's text: the diff against the defaults (as transformers writes it), or every key."""
        return (
            json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True) + "\n"
        )

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        from gpt2kit.data import atomic_write_text

        atomic_write_text(Path(json_file_path), self.to_json_string(use_diff=use_diff))

    def dict_dtype_to_str(self, d: dict[str, Any]) -> None:
        """Turn torch dtypes under a "dtype" key (nested dicts included) into names, in place."""
        if d.get("dtype") is not None:
            d["dtype"] = _dtype_name(d["dtype"])
        for value in d.values():
            if isinstance(value, dict):
                self.dict_dtype_to_str(value)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__} {self.to_json_string()}"

    def __eq__(self, other: object) -> bool:
        # transformers_version says which library version wrote the file, not how the model is built.
        if not isinstance(other, GPT2Config):
            return False
        mine, theirs = self.to_dict(), other.to_dict()
        mine.pop("transformers_version"), theirs.pop("transformers_version")
        return mine == theirs

    # --- changing a config ------------------------------------------------------------------------------

    def update(self, config_dict: dict[str, Any]) -> None:
        """Set the attributes in config_dict (unknown names are kept as extra keys); validated afterwards,
        and left as it was if that fails."""
        before = copy.deepcopy(self.__dict__)
        try:
            for key, value in config_dict.items():
                setattr(self, key, value)
            self.validate()
        except ValueError:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def update_from_string(self, update_str: str) -> None:
        """Update from "n_embd=10,resid_pdrop=0.2,scale_attn_weights=false": each value is parsed as the type
        the attribute has now (bool, int, float or str), as transformers does.

        >>> cfg = GPT2Config()
        >>> cfg.update_from_string("n_layer=2,use_cache=false")
        >>> cfg.n_layer, cfg.use_cache
        (2, False)
        """
        updates: dict[str, Any] = {}
        for item in update_str.split(","):
            key, sep, text = item.partition("=")
            if not sep:
                raise ValueError(
                    f"update_from_string expects key=value pairs separated by commas, got {item!r}"
                )
            if not hasattr(self, key):
                raise ValueError(f"key {key!r} isn't in the original config dict; set new keys with update()")
            old = getattr(self, key)
            if isinstance(old, bool):
                if text.lower() in ("true", "1", "y", "yes"):
                    value: Any = True
                elif text.lower() in ("false", "0", "n", "no"):
                    value = False
                else:
                    raise ValueError(
                        f"can't derive true or false from {text!r} (key {key!r}); use true or false"
                    )
            elif isinstance(old, int):
                value = int(text)
            elif isinstance(old, float):
                value = float(text)
            elif isinstance(old, str):
                value = text
            else:
                raise TypeError(
                    f"update_from_string can set only int, float, bool or string values, but {key!r} is "
                    f"{old!r}; use update({{{key!r}: ...}}) instead"
                )
            updates[key] = value
        self.update(updates)

    # --- generation settings in the model config ---------------------------------------------------------

    @staticmethod
    def _get_global_generation_defaults() -> dict[str, Any]:
        return copy.deepcopy(GENERATION_DEFAULTS)

    def _get_non_default_generation_parameters(self) -> dict[str, Any]:
        """The legacy generation settings this config sets away from their defaults (None counts as unset):
        transformers warns about them on saving, and a model's save_pretrained moves them to
        generation_config.json."""
        default = type(self)()
        return {
            name: getattr(self, name)
            for name in GENERATION_DEFAULTS
            if getattr(self, name) is not None and getattr(self, name) != getattr(default, name)
        }

    # --- files ------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], **overrides: Any
    ) -> GPT2Config | tuple[GPT2Config, dict[str, Any]]:
        """Build from config.json's keys; `overrides` win, and num_labels=n resizes the label maps.

        With return_unused_kwargs=True, returns (config, the overrides that name no attribute), and those
        are not stored, as in transformers; otherwise they are kept as extra keys.
        """
        model_type = data.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ValueError(
                f"this config describes a {model_type!r} model, not GPT-2; gpt2kit loads only model_type 'gpt2'"
            )
        return_unused = overrides.pop("return_unused_kwargs", False)
        for key in ("_from_auto", "_from_pipeline"):
            overrides.pop(key, None)
        num_labels = overrides.pop("num_labels", None)
        if (
            num_labels is not None
            and overrides.get("id2label") is not None
            and len(overrides["id2label"]) != num_labels
        ):
            raise ValueError(
                f"num_labels={num_labels} contradicts id2label with {len(overrides['id2label'])} labels; "
                "pass only one of them"
            )
        unused: dict[str, Any] = {}
        if return_unused:
            probe = cls()
            special = ("torch_dtype", "attn_implementation", "name_or_path")
            unused = {k: v for k, v in overrides.items() if not hasattr(probe, k) and k not in special}
            overrides = {k: v for k, v in overrides.items() if k not in unused}
        config = cls(**{**data, **overrides})
        if num_labels is not None:
            # As transformers' from_pretrained(..., num_labels=n): the override replaces the file's label map.
            config.num_labels = int(num_labels)
        return (config, unused) if return_unused else config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> GPT2Config:
        return cls.from_dict(cls._read_json(Path(path)))

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        return cls._read_json(Path(json_file))

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no config file at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); re-save it or pass another config") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
        return data

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config.json's keys, the kwargs that are not about finding the file), as transformers returns them.

        >>> GPT2Config.get_config_dict("gpt2-medium", n_layer=2)
        ({'n_layer': 24, 'n_head': 16, 'n_embd': 1024}, {'n_layer': 2})
        """
        from gpt2kit import hub

        kwargs = dict(kwargs)
        local_files_only = kwargs.pop("local_files_only", False)
        kwargs.pop("revision", None)
        subfolder = kwargs.pop("subfolder", "") or ""
        for key in _DOWNLOAD_KWARGS:
            kwargs.pop(key, None)
        path = Path(pretrained_model_name_or_path)
        if path.is_file():
            return cls._read_json(path), kwargs
        if subfolder and (path / subfolder).is_dir():
            path, subfolder = path / subfolder, ""
            pretrained_model_name_or_path = path
        folder = hub.find_model_dir(
            pretrained_model_name_or_path, local_files_only=local_files_only, required=False
        )
        if folder is not None and subfolder:
            folder = folder / subfolder
        if folder is not None and (folder / CONFIG_NAME).is_file():
            return cls._read_json(folder / CONFIG_NAME), kwargs
        key = str(pretrained_model_name_or_path)
        if key in PRESETS and not subfolder:
            return dict(PRESETS[key]), kwargs
        if folder is not None:
            raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; a GPT-2 model folder needs one")
        raise FileNotFoundError(hub.not_found_message(pretrained_model_name_or_path, [CONFIG_NAME]))

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, **overrides: Any
    ) -> GPT2Config | tuple[GPT2Config, dict[str, Any]]:
        """Load from a folder, a config.json path, a local HF-cache entry, or a built-in GPT-2 name.

        Keyword arguments are config values that override the file's (attn_implementation= included), or
        transformers' download arguments (cache_dir=, token=, ...), which are accepted and not stored.

        >>> GPT2Config.from_pretrained("gpt2-medium").n_layer
        24
        """
        data, overrides = cls.get_config_dict(name_or_path, **overrides)
        return cls.from_dict(data, **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
        """Write config.json into save_directory (created if needed); transformers loads it unchanged.

        As transformers, the file holds only what differs from the defaults (to_diff_dict). Legacy generation
        settings away from their defaults are written but warned about: they belong in generation_config.json.
        """
        from gpt2kit.data import atomic_write_text

        if kwargs.get("push_to_hub"):
            raise ValueError(
                "gpt2kit does not upload; save_pretrained(folder) and push the folder with huggingface_hub"
            )
        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_pretrained needs a folder, but {folder} is a file")
        misplaced = self._get_non_default_generation_parameters()
        if misplaced:
            logger.warning(
                "Some non-default generation parameters are set in the model config: %s. They belong in "
                "generation_config.json: set them on model.generation_config (or a GenerationConfig) instead.",
                misplaced,
            )
        data = self.to_diff_dict()
        if data.get("dtype") is not None:
            # transformers before 4.56 reads only "torch_dtype"; 4.57 reads both and prefers "dtype".
            data["torch_dtype"] = data["dtype"]
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / CONFIG_NAME, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return folder / CONFIG_NAME


_FIELD_NAMES = frozenset(f.name for f in fields(GPT2Config))
