"""Keras 3 models on the PyTorch backend, named as transformers' TensorFlow classes.

Tutorial code written for `transformers.TFGPT2LMHeadModel` runs with only its import changed:

    from gpt2kit.keras import TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel.from_pretrained(folder)
    model.compile(optimizer=keras.optimizers.Adam(5e-5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x=ids[:, :-1], y=ids[:, 1:], epochs=2)
    model.save_pretrained(out)  # transformers' folder format, as gpt2kit's own models write it

Each class is a `keras.Model` that holds the gpt2kit torch module (wrapped in `keras.layers.TorchModuleWrapper`,
so Keras tracks the module's own parameters: Keras's optimizer updates the very tensors that
`save_pretrained` writes). Calling the model returns logits: (B, T, V) for the LM, (B, num_labels) for the
classifier. Two ways to train, as in transformers' TF models:

- compile(loss=...): a Keras loss on (y, logits), so for the LM y is aligned with the logits, i.e. the
  inputs shifted by one (x = ids[:, :-1], y = ids[:, 1:]). The legacy form loss=[loss, *[None] * n_layer]
  (one entry per output of transformers' old TF models) is accepted and means the same.
- compile() without loss: the model's own loss (gpt2kit's, i.e. transformers'), on labels given as y or as
  the "labels" entry of the input dict; LM labels are then the input ids themselves (-100 = ignored),
  shifted inside the loss.

Keras must run on its PyTorch backend: importing this module sets KERAS_BACKEND=torch when keras is not yet
imported, and refuses a keras already imported with another backend.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch


def _import_keras():
    """Import Keras 3 on the torch backend, or say exactly what to change."""
    if "keras" not in sys.modules:
        chosen = os.environ.get("KERAS_BACKEND")
        if chosen and chosen != "torch":
            raise ImportError(
                f"gpt2kit.keras runs Keras on its PyTorch backend, but KERAS_BACKEND={chosen!r}; "
                "set KERAS_BACKEND=torch (or unset it) before starting Python"
            )
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError as e:
        raise ImportError(
            'gpt2kit.keras needs Keras 3 (no TensorFlow required): pip install "gpt2kit[keras]" '
            '(or pip install "keras>=3")'
        ) from e
    major = str(getattr(keras, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) < 3:
        raise ImportError(
            f"gpt2kit.keras needs Keras 3 (its PyTorch backend), found keras {keras.__version__}; "
            'pip install -U "keras>=3"'
        )
    backend = keras.backend.backend()
    if backend != "torch":
        raise ImportError(
            f"keras was already imported with the {backend!r} backend; gpt2kit.keras needs KERAS_BACKEND=torch, "
            "set before keras is first imported (in the shell, or os.environ['KERAS_BACKEND'] = 'torch' at the "
            "top of the script)"
        )
    return keras


keras = _import_keras()

from gpt2kit.config import GPT2Config  # noqa: E402  (after the backend is settled)
from gpt2kit.model.gpt2 import GPT2PreTrainedModel  # noqa: E402
from gpt2kit.model.heads import (  # noqa: E402
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    causal_lm_loss,
    classification_loss,
)

_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def _single_output(value: Any, what: str) -> Any:
    """[x, None, None, ...] (transformers' old TF models had logits + one output per layer) -> x."""
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        return value
    if any(v is not None for v in value[1:]):
        if what == "metrics":
            return value  # several metrics for the one output
        raise ValueError(
            f"{what}={value!r} gives several outputs a {what}, but the model has one output (the logits); "
            f"pass one {what} (or [{what}, None, ...] as transformers' TF tutorials do)"
        )
    if what == "metrics" and not isinstance(value[0], (list, tuple, dict)):
        return [value[0]]  # compile takes a list of metrics for one output
    return value[0]


def _as_tensor(value: Any, device: torch.device) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value)
    return value.to(device) if value.device != device else value


class _TorchBackedModel(keras.Model):
    """A keras.Model around one gpt2kit model; subclasses name the torch class and the loss."""

    torch_class: type[GPT2PreTrainedModel]

    def __init__(
        self, config: GPT2Config | None = None, *, torch_model: GPT2PreTrainedModel | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if (config is None) == (torch_model is None):
            raise TypeError(
                f"{type(self).__name__} takes either a GPT2Config (random weights) or torch_model= (a gpt2kit "
                f"model), exactly one; use {type(self).__name__}.from_pretrained(folder) for trained weights"
            )
        if torch_model is None:
            if not isinstance(config, GPT2Config):
                raise TypeError(f"{type(self).__name__} needs a GPT2Config, got {type(config).__name__}")
            torch_model = self.torch_class(config)
        elif not isinstance(torch_model, self.torch_class):
            raise TypeError(
                f"torch_model must be a gpt2kit {self.torch_class.__name__}, got {type(torch_model).__name__}"
            )
        self._wrap(torch_model)

    def _wrap(self, torch_model: GPT2PreTrainedModel) -> None:
        # The wrapper turns each parameter into a Keras variable holding that same tensor (tied weights once).
        old = self._modules.get("gpt2")
        if old is not None:  # re-wrapping after a resize: Keras keeps a replaced layer unless told
            self._tracker.untrack(old)
            if "_torch_params" in self._modules:
                del self._torch_params  # rebuilt from the variables on next use
        self.gpt2 = keras.layers.TorchModuleWrapper(torch_model, name="gpt2")
        self.built = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load a transformers-format folder (or a hub name) as gpt2kit's from_pretrained does.

        >>> model = TFGPT2LMHeadModel.from_pretrained("gpt2kit-demo")  # doctest: +SKIP
        """
        kwargs.pop("from_pt", None)  # transformers' TF flag for PyTorch weights: ours always are
        return cls(torch_model=cls.torch_class.from_pretrained(pretrained_model_name_or_path, **kwargs))

    def save(self, filepath: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """keras.Model.save to a .keras file (keras.models.load_model reads it back once gpt2kit.keras is
        imported); for transformers' folder format use save_pretrained."""
        if str(filepath).endswith(".h5") and not str(filepath).endswith(".weights.h5"):
            raise ValueError(
                f"{filepath}: Keras's legacy .h5 model format cannot hold a gpt2kit model; save to a .keras "
                "file, weights to a .weights.h5 file (ModelCheckpoint(..., save_weights_only=True)), or "
                "transformers' folder format with model.save_pretrained(folder)"
            )
        return super().save(filepath, *args, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        max_shard_size: int | str = "5GB",
        saved_model: bool = False,
    ) -> Path:
        """Write config.json and model.safetensors, which transformers' PyTorch class (and gpt2kit) loads."""
        if saved_model:
            raise ValueError(
                "saved_model=True writes a TensorFlow SavedModel, which needs TensorFlow; drop it"
            )
        return self.torch_model.save_pretrained(
            save_directory, safe_serialization=safe_serialization, max_shard_size=max_shard_size
        )

    @property
    def torch_model(self) -> GPT2PreTrainedModel:
        """The gpt2kit torch module whose parameters this model trains."""
        return self.gpt2.module

    @property
    def config(self) -> GPT2Config:
        return self.torch_model.config

    def resize_token_embeddings(self, new_num_tokens: int | None = None, **kwargs: Any):
        """As gpt2kit's; the new embedding's variables replace the old ones, so compile after it."""
        module = self.torch_model
        out = module.resize_token_embeddings(new_num_tokens, **kwargs)
        self._wrap(module)
        # The optimizer knows the old variables only; fit() now asks for compile() rather than failing there.
        self.compiled = False
        return out

    def build(self, input_shape: Any = None) -> None:
        self.built = True  # the torch module exists from __init__: nothing to build from shapes

    # --- calling ---------------------------------------------------------------------------------------

    def call(
        self,
        input_ids: Any = None,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        position_ids: Any = None,
        training: bool = False,
    ) -> torch.Tensor:
        """input_ids (B, T), or a dict of the inputs (a "labels" entry is left for the loss) -> logits."""
        if isinstance(input_ids, dict):
            inputs = input_ids
            unknown = set(inputs) - set(_INPUT_KEYS) - {"labels"}
            if unknown:
                raise ValueError(
                    f"input dict has keys {sorted(unknown)} the model does not take; it takes "
                    f"{list(_INPUT_KEYS)} (and 'labels' for the loss)"
                )
        else:
            inputs = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "token_type_ids": token_type_ids,
                "position_ids": position_ids,
            }
        if inputs.get("input_ids") is None:
            raise ValueError("the model needs input_ids: a (batch, length) array of token ids")
        module = self.torch_model
        device = next(module.parameters()).device
        ids = inputs["input_ids"]
        if isinstance(ids, torch.Tensor) and ids.device.type == "meta":
            # Keras infers output shapes by calling the model on meta tensors; answer without running it.
            return torch.empty(self._logits_shape(tuple(ids.shape)), device="meta", dtype=module.dtype)
        kwargs = {k: _as_tensor(v, device) for k, v in inputs.items() if k in _INPUT_KEYS and v is not None}
        module.train(bool(training))
        return module(**kwargs, use_cache=False, return_dict=True).logits

    def compute_output_shape(self, input_shape: Any) -> tuple:
        if isinstance(input_shape, dict):
            input_shape = input_shape["input_ids"]
        return self._logits_shape(tuple(input_shape))

    def _logits_shape(self, ids_shape: tuple) -> tuple:
        raise NotImplementedError

    # --- training ------------------------------------------------------------------------------------

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, loss_weights: Any = None, **kwargs: Any):
        """keras.Model.compile; without loss= the model's own loss is used (labels as transformers takes them)."""
        if loss is None:
            self._compile_loss = None  # Keras would keep a previous compile's loss
        for key in ("metrics", "weighted_metrics"):
            if key in kwargs:
                kwargs[key] = _single_output(kwargs[key], "metrics")
        super().compile(
            optimizer=optimizer,
            loss=_single_output(loss, "loss"),
            loss_weights=_single_output(loss_weights, "loss_weights"),
            **kwargs,
        )

    def _targets(self, x: Any, y: Any, y_pred: torch.Tensor, sample_weight: Any):
        """(y, y_pred, sample_weight) for a compiled loss and the metrics, with the dict's labels resolved."""
        labels = x.get("labels") if isinstance(x, dict) else None
        if self._compile_loss is not None:
            if y is None and labels is not None:
                y = self._labels_for_keras_loss(labels)
            if y is None:
                raise ValueError(
                    "compile(loss=...) needs targets: fit(x, y) or a dataset of (x, y) batches; "
                    "or compile without loss= and pass labels to use the model's own loss"
                )
            return y, y_pred, sample_weight
        if y is None:
            y = labels
        if y is None:
            raise ValueError(
                "no loss to compute: compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)) "
                "and pass (x, y), or compile without loss= and pass labels (y, or a 'labels' entry in the "
                "input dict) for the model's own loss"
            )
        return self._own_targets(y, y_pred, sample_weight)

    def _labels_for_keras_loss(self, labels: Any) -> Any:
        return labels

    def _own_targets(self, labels: Any, y_pred: torch.Tensor, sample_weight: Any):
        return labels, y_pred, sample_weight

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self._compile_loss is not None:
            y, y_pred, sample_weight = self._targets(x, y, y_pred, sample_weight)
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        labels = y if y is not None else (x.get("labels") if isinstance(x, dict) else None)
        if labels is None:
            self._targets(x, y, y_pred, sample_weight)  # raises, saying how to pass labels
        loss = self._own_loss(y_pred, _as_tensor(labels, y_pred.device))
        for extra in self.losses:  # add_loss() terms, as Keras adds them
            loss = loss + extra.sum()
        return loss

    def _own_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if self._compile_metrics is not None:
            y, y_pred, sample_weight = self._targets(x, y, y_pred, sample_weight)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    # --- .keras files ----------------------------------------------------------------------------------

    def compile_from_config(self, config: dict[str, Any]) -> None:
        # Keras skips a custom compile() when loading a .keras file unless the model says how to call it.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)

    def get_config(self) -> dict[str, Any]:
        # The GPT-2 config rebuilds the module; the weights travel in the file's weights store.
        return {"name": self.name, "trainable": self.trainable, "gpt2_config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None):
        config = dict(config)
        gpt2_config = GPT2Config.from_dict(config.pop("gpt2_config"))
        return cls(gpt2_config, **config)


@keras.saving.register_keras_serializable(package="gpt2kit")
class TFGPT2LMHeadModel(_TorchBackedModel):
    """GPT-2 with its LM head as a Keras model: call -> logits (B, T, V); generate(); save_pretrained().

    >>> model = TFGPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100))
    >>> tuple(model(torch.tensor([[1, 2, 3]])).shape)
    (1, 3, 100)
    """

    torch_class = GPT2LMHeadModel

    def _logits_shape(self, ids_shape: tuple) -> tuple:
        return (*ids_shape, self.config.vocab_size)

    def _labels_for_keras_loss(self, labels: Any) -> Any:
        # The dict's labels are transformers' (unshifted, -100 ignored), which a Keras loss on the logits
        # would read as "predict the current token": refuse rather than train that.
        raise ValueError(
            "the input dict holds 'labels', which are transformers' unshifted LM labels; with a Keras loss= "
            "pass (x, y) with y = ids[:, 1:] and x = ids[:, :-1], or compile without loss= to use the model's "
            "own loss on those labels"
        )

    def _own_targets(self, labels: Any, y_pred: torch.Tensor, sample_weight: Any):
        # The metrics see what the loss sees: position t predicts token t+1, -100 weighted out.
        labels = _as_tensor(labels, y_pred.device)[..., 1:]
        weight = (labels != -100).to(y_pred.dtype)
        return labels.clamp_min(0), y_pred[..., :-1, :], weight

    def _own_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return causal_lm_loss(logits, labels.long())

    @property
    def generation_config(self):
        return self.torch_model.generation_config

    @generation_config.setter
    def generation_config(self, value) -> None:
        self.torch_model.generation_config = value

    def generate(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any):
        """gpt2kit's (transformers 4.57's) generate(); arrays or tensors in, a torch tensor of ids out.

        >>> model.generate(ids, max_new_tokens=20)  # doctest: +SKIP
        """
        module = self.torch_model
        device = next(module.parameters()).device
        module.eval()
        if input_ids is not None:
            input_ids = _as_tensor(input_ids, device)
        if attention_mask is not None:
            attention_mask = _as_tensor(attention_mask, device)
        return module.generate(input_ids, attention_mask=attention_mask, **kwargs)


@keras.saving.register_keras_serializable(package="gpt2kit")
class TFGPT2ForSequenceClassification(_TorchBackedModel):
    """GPT-2 scoring a sequence as a Keras model: call -> logits (B, num_labels), from each row's last
    non-padding token (set model.config.pad_token_id = tokenizer.pad_token_id for batches)."""

    torch_class = GPT2ForSequenceClassification

    def _logits_shape(self, ids_shape: tuple) -> tuple:
        return (ids_shape[0], self.config.num_labels)

    def _own_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not labels.is_floating_point():
            labels = labels.long()
        return classification_loss(logits, labels, self.config)


__all__ = ["TFGPT2ForSequenceClassification", "TFGPT2LMHeadModel"]
