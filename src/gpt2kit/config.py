"""GPT2Config: the hyper-parameters of a GPT-2 model, under the key names of transformers' config.json.

A plain dataclass, validated on construction. Keys we do not know (written by transformers or by a user)
are kept in `extra` and written back out, so a config survives a round trip through either library.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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


def _default_id2label(n: int) -> dict[int, str]:
    return {i: f"LABEL_{i}" for i in range(n)}


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
    # Fields that transformers keeps on every PretrainedConfig and GPT-2 models read.
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
    torch_dtype: str | None = None
    # Keys we do not model ourselves, kept verbatim for the round trip.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __init__(self, **kwargs: Any) -> None:
        num_labels = kwargs.pop("num_labels", None)
        if "dtype" in kwargs and "torch_dtype" not in kwargs:  # transformers 5 spelling
            kwargs["torch_dtype"] = kwargs.pop("dtype")
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
        kwargs.pop("transformers_version", None)
        extra.update(kwargs)
        self.extra = extra

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

    # --- the names transformers code reads -----------------------------------------------------------

    @property
    def num_labels(self) -> int:
        return len(self.id2label or {})

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if n != self.num_labels:
            self.id2label = _default_id2label(n)
            self.label2id = {v: k for k, v in self.id2label.items()}

    # Readable and writable, like transformers' attribute_map.
    hidden_size = property(lambda self: self.n_embd, lambda self, v: setattr(self, "n_embd", v))
    max_position_embeddings = property(
        lambda self: self.n_positions, lambda self, v: setattr(self, "n_positions", v)
    )
    num_attention_heads = property(lambda self: self.n_head, lambda self, v: setattr(self, "n_head", v))
    num_hidden_layers = property(lambda self: self.n_layer, lambda self, v: setattr(self, "n_layer", v))
    model_type = "gpt2"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        """Width of the MLP: n_inner, or 4 * n_embd when n_inner is None."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    def __getattr__(self, name: str) -> Any:
        # Unknown config.json keys read like attributes, as on transformers' configs.
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"GPT2Config has no attribute {name!r}")

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
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPT2Config.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"choose n_head from the divisors of {self.n_embd}"
            )
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
        """Every field under config.json's names, unknown keys included (ids in id2label as strings)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            out[f.name] = copy.deepcopy(getattr(self, f.name))
        out["id2label"] = {str(k): v for k, v in (self.id2label or {}).items()}
        out["model_type"] = "gpt2"
        for key, value in self.extra.items():
            out.setdefault(key, copy.deepcopy(value))
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __repr__(self) -> str:
        return f"{self.__class__.__name__} {self.to_json_string()}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GPT2Config) and self.to_dict() == other.to_dict()

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> GPT2Config:
        """Build from config.json's keys; `overrides` win, and num_labels=n resizes the label maps."""
        model_type = data.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ValueError(
                f"this config describes a {model_type!r} model, not GPT-2; gpt2kit loads only model_type 'gpt2'"
            )
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
        config = cls(**{**data, **overrides})
        if num_labels is not None:
            # As transformers' from_pretrained(..., num_labels=n): the override replaces the file's label map.
            config.num_labels = int(num_labels)
        return config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> GPT2Config:
        return cls.from_dict(cls._read_json(Path(path)))

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
    def from_pretrained(cls, name_or_path: str | os.PathLike, **overrides: Any) -> GPT2Config:
        """Load from a folder, a config.json path, a local HF-cache entry, or a built-in GPT-2 name.

        >>> GPT2Config.from_pretrained("gpt2-medium").n_layer
        24
        """
        from gpt2kit import hub

        local_files_only = overrides.pop("local_files_only", False)
        overrides.pop("revision", None)
        path = Path(name_or_path)
        if path.is_file():
            return cls.from_dict(cls._read_json(path), **overrides)
        folder = hub.find_model_dir(name_or_path, local_files_only=local_files_only, required=False)
        if folder is not None and (folder / CONFIG_NAME).is_file():
            return cls.from_dict(cls._read_json(folder / CONFIG_NAME), **overrides)
        key = str(name_or_path)
        if key in PRESETS:
            return cls.from_dict(dict(PRESETS[key]), **overrides)
        if folder is not None:
            raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; a GPT-2 model folder needs one")
        raise FileNotFoundError(hub.not_found_message(name_or_path, [CONFIG_NAME]))

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write config.json into save_directory (created if needed); transformers loads it unchanged."""
        from gpt2kit.data import atomic_write_text

        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_pretrained needs a folder, but {folder} is a file")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / CONFIG_NAME, self.to_json_string())
        return folder / CONFIG_NAME
