"""Output records of the models, with transformers' field names.

Each is a dataclass; like transformers' ModelOutput it also reads by key (`out["logits"]`) and by index
over its fields that are set (`out[0]`), so code written against transformers keeps working.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.utils._pytree as pytree

Tensors = tuple[torch.Tensor, ...]


def _register_pytree(cls: type, flatten, unflatten, flatten_with_keys) -> None:
    """Make cls a pytree node (a second registration, as a module reload makes, is skipped)."""
    with contextlib.suppress(ValueError):  # already registered
        pytree.register_pytree_node(
            cls,
            flatten,
            unflatten,
            serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
            flatten_with_keys_fn=flatten_with_keys,
        )


class ModelOutput:
    """Attribute, key and index access over a dataclass's fields; None fields are skipped like in HF.

    Each subclass is a pytree node (its set fields, by name), as transformers' ModelOutput is: torch.export
    and torch.utils._pytree see the tensors inside (without it `torch.export.export(model, (ids,))` failed on
    the output type, where transformers' models export).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register_pytree(
            cls,
            lambda out: (out.values(), out.keys()),
            lambda values, keys: cls(**dict(zip(keys, values))),
            lambda out: ([(pytree.GetAttrKey(k), v) for k, v in out.items()], out.keys()),
        )

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v for _, v in self.items())

    def keys(self) -> list[str]:
        return [k for k, _ in self.items()]

    def values(self) -> list[Any]:
        return [v for _, v in self.items()]

    def items(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]  # type: ignore[arg-type]

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            value = getattr(self, key, None)
            if value is None:
                raise KeyError(f"{key!r} is not set on this {type(self).__name__}; set fields: {self.keys()}")
            return value
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class BaseModelOutputWithPastAndCrossAttentions(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
    cross_attentions: Tensors | None = None


@dataclass
class CausalLMOutputWithCrossAttentions(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
    cross_attentions: Tensors | None = None


@dataclass
class GPT2DoubleHeadsModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    mc_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mc_logits: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class SequenceClassifierOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class TokenClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
