"""GPT2Model, the trunk: token + position embeddings, n_layer blocks, a final LayerNorm.

Also GPT2PreTrainedModel, the base every model class shares: weight init, from_pretrained /
save_pretrained in transformers' folder format, tying, resizing.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gpt2kit import hub
from gpt2kit.config import GPT2Config, check_attn_implementation
from gpt2kit.model import weights as W
from gpt2kit.model.attention import AttentionMask, cross_attention_mask
from gpt2kit.model.block import Block
from gpt2kit.model.cache import Cache, DynamicCache, as_cache
from gpt2kit.model.dropout import Dropout
from gpt2kit.model.linear import Linear
from gpt2kit.model.matmul import LMHead, is_compiling
from gpt2kit.model.outputs import BaseModelOutputWithPastAndCrossAttentions

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
}


def resolve_dtype(
    dtype: str | torch.dtype | None, checkpoint_dtype: torch.dtype | None = None
) -> torch.dtype:
    """None -> float32 (transformers' default); "auto" -> the checkpoint's dtype; names or torch dtypes."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return checkpoint_dtype or torch.float32
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16, 'auto'")
    return _DTYPES[name]


@contextlib.contextmanager
def _skip_torch_init():
    """Make torch.nn.init's fillers no-ops while a model is built on the meta device.

    nn.Embedding and nn.Linear initialise themselves in __init__; on the meta device that does no work but
    makes torch import its reference-op machinery the first time (~2 s). The loaded weights replace every
    tensor anyway, and the few that are missing are initialised by init_weights afterwards.
    """
    names = ("normal_", "uniform_", "kaiming_uniform_", "zeros_", "ones_", "constant_", "trunc_normal_")
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


# from_pretrained's own keywords; any other keyword must be a config field (num_labels=3, pad_token_id=...).
_LOAD_KWARGS = {
    "dtype",
    "torch_dtype",
    "device",
    "device_map",
    "local_files_only",
    "revision",
    "config",
    "state_dict",
    "output_loading_info",
    "ignore_mismatched_sizes",
}


class GPT2PreTrainedModel(nn.Module):
    """Shared by every GPT-2 model class: init, loading and saving, embeddings plumbing."""

    base_model_prefix = "transformer"
    _tied_lm_head = False  # heads whose lm_head shares the token embedding set this
    # transformers' class attributes that code written for it reads.
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _tied_weights_keys: list[str] | None = None

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        if not isinstance(config, GPT2Config):
            raise TypeError(f"{type(self).__name__} needs a GPT2Config, got {type(config).__name__}")
        if config.n_embd % config.n_head != 0:
            # Checked here, not in GPT2Config: as in transformers, such a config is valid to build and save,
            # and only a model cannot split n_embd into heads.
            raise ValueError(
                f"GPT2Config.n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head}) to build "
                f"{type(self).__name__}; choose n_head from the divisors of {config.n_embd}"
            )
        self.config = config

    @classmethod
    def can_generate(cls) -> bool:
        """Whether generate() works on this class (the LM heads), as transformers' PreTrainedModel says."""
        return hasattr(cls, "generate")

    # --- weights ---------------------------------------------------------------------------------------

    def post_init(self) -> None:
        """Prune the heads config.pruned_heads names, random init as GPT-2 does it (skipped on the meta device:
        nothing to fill), then tie the LM head."""
        if self.config.pruned_heads:  # before init, as transformers, so a pruned checkpoint's shapes load
            self.prune_heads(self.config.pruned_heads)
        if next(self.parameters()).device.type != "meta":
            self.init_weights()
        self.tie_weights()
        # transformers' backward compatibility: a config with gradient_checkpointing=True (a key of old
        # config.json files) turns it on, and the key is dropped so that it is not saved again.
        if self.config.extra.pop("gradient_checkpointing", False):
            self.gradient_checkpointing_enable()

    def init_weights(self, only: set[str] | None = None) -> None:
        """Normal(0, initializer_range) for matrices and embeddings, zero biases, unit LayerNorms; the residual
        projections (c_proj) scaled by 1/sqrt(2 * n_layer), as in GPT-2, so the residual stream's variance does
        not grow with depth. `only` restricts the init to those parameter names (new heads after loading)."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if only is not None and name not in only:
                continue
            with torch.no_grad():
                if name.endswith("c_proj.weight"):
                    p.normal_(0.0, std / math.sqrt(2 * self.config.n_layer))
                elif ".ln_" in "." + name:  # LayerNorms: ln_1, ln_2, ln_f, ln_cross_attn
                    p.fill_(1.0) if name.endswith("weight") else p.zero_()
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, std)

    def prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        """Remove attention heads for good: {layer: [head, ...]}, heads numbered as in the unpruned model.

        The union with earlier prunings is kept in config.pruned_heads, so save_pretrained / from_pretrained
        (and a model built from that config) give the same shapes, as in transformers.

        >>> model = GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100))
        >>> model.prune_heads({0: [1, 2]})
        >>> model.h[0].attn.n_head, model.config.pruned_heads
        (2, {0: [1, 2]})
        """
        if not isinstance(heads_to_prune, dict):
            raise TypeError(
                f"prune_heads takes a dict {{layer: [heads]}}, got {type(heads_to_prune).__name__}"
            )
        trunk = getattr(self, self.base_model_prefix, self)
        n_layer = len(trunk.h)
        for layer, heads in list(heads_to_prune.items()):
            if not -n_layer <= int(layer) < n_layer:
                raise ValueError(
                    f"cannot prune heads of layer {layer}: the model has layers 0 .. {n_layer - 1}"
                )
            union = set(self.config.pruned_heads.get(layer, [])) | {int(h) for h in heads}
            self.config.pruned_heads[layer] = sorted(union)
        for layer, heads in heads_to_prune.items():
            trunk.h[int(layer)].attn.prune_heads(heads)

    def tie_weights(self) -> None:
        if self._tied_lm_head and self.config.tie_word_embeddings:
            self.lm_head.weight = self.get_input_embeddings().weight

    def get_input_embeddings(self) -> nn.Embedding:
        return getattr(self, self.base_model_prefix, self).wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        getattr(self, self.base_model_prefix, self).wte = value

    def get_output_embeddings(self) -> nn.Module | None:
        return getattr(self, "lm_head", None)

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """Grow or shrink the vocabulary (after tok.add_tokens), as transformers 4.57 does it.

        New rows of the embedding (and of an untied LM head) are drawn around the mean of the old rows, from
        a normal with 1e-9 x their covariance (the mean itself where that covariance is singular);
        mean_resizing=False draws them from Normal(0, initializer_range) instead. pad_to_multiple_of rounds
        the size up; new_num_tokens=None keeps the size (and only pads).
        """
        old = self.get_input_embeddings()
        if pad_to_multiple_of is not None:
            if isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int):
                raise ValueError(
                    f"pad_to_multiple_of must be an integer, got {pad_to_multiple_of!r}; pass e.g. 64"
                )
            if new_num_tokens is None:
                new_num_tokens = old.num_embeddings
            new_num_tokens = math.ceil(new_num_tokens / pad_to_multiple_of) * pad_to_multiple_of
        if new_num_tokens is None:
            return old
        if new_num_tokens <= 0:
            raise ValueError(f"new_num_tokens must be positive, got {new_num_tokens}")
        new = self._resized_rows(old, new_num_tokens, mean_resizing)
        self.set_input_embeddings(new)
        self.config.vocab_size = new_num_tokens
        if self._tied_lm_head:
            if self.config.tie_word_embeddings:
                self.tie_weights()
            else:
                self.lm_head = self._resized_rows(self.lm_head, new_num_tokens, mean_resizing)
        return new

    def _resized_rows(self, old: nn.Module, n_rows: int, mean_resizing: bool) -> nn.Module:
        """A copy of an embedding or LM head (weight (rows, C)) with n_rows rows: the old rows kept, the new
        ones initialised as transformers' _init_added_embeddings_weights_with_mean does."""
        weight = old.weight
        n_old, dim = weight.shape
        if isinstance(old, nn.Embedding):
            new = nn.Embedding(n_rows, dim, device=weight.device, dtype=weight.dtype)
        else:
            new = LMHead(dim, n_rows, bias=False, device=weight.device, dtype=weight.dtype)
        n = min(n_old, n_rows)
        with torch.no_grad():
            new.weight[:n] = weight[:n]
            added = n_rows - n
            if added and not mean_resizing:
                new.weight[n:].normal_(0.0, self.config.initializer_range)
            elif added:
                old_rows = weight.float()
                mean = old_rows.mean(0)
                centered = old_rows - mean
                covariance = centered.T @ centered / n_old
                eps = 1e-9
                from torch.distributions import MultivariateNormal, constraints

                if constraints.positive_definite.check(eps * covariance).all():
                    dist = MultivariateNormal(mean, covariance_matrix=eps * covariance)
                    new.weight[n:] = dist.sample((added,)).to(weight.dtype)
                else:
                    new.weight[n:] = mean.to(weight.dtype)
        return new

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters counted once each (the tied LM head is the token embedding)."""
        params = {id(p): p for p in self.parameters() if p.requires_grad or not only_trainable}
        if exclude_embeddings:
            for emb in (self.get_input_embeddings(), getattr(self, self.base_model_prefix, self).wpe):
                params.pop(id(emb.weight), None)
        return sum(p.numel() for p in params.values())

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each block's activations in backward instead of storing them: less memory, ~30% slower."""
        getattr(self, self.base_model_prefix, self).gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        getattr(self, self.base_model_prefix, self).gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return getattr(self, self.base_model_prefix, self).gradient_checkpointing

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --- folders ---------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | None, *args: Any, **kwargs: Any
    ):
        """Load a checkpoint folder in transformers' format (safetensors, .bin, or sharded).

        Built on the meta device and filled by assigning the loaded tensors, so the weights are in memory
        once. Extra keyword arguments that are config fields override the folder's config.json. As in
        transformers: state_dict= (with config=, the path may be None) loads those tensors instead of the
        folder's; ignore_mismatched_sizes=True initialises the weights whose shapes differ from the config's
        (a new num_labels) instead of raising; output_loading_info=True returns (model, info) with the
        missing, unexpected and mismatched keys. A LoRA adapter folder (adapter_config.json, no config.json)
        loads its base model (base_model_name_or_path) with the adapter on it, as transformers does.

        >>> model = GPT2LMHeadModel.from_pretrained("path/to/gpt2")  # doctest: +SKIP
        >>> clf = GPT2ForSequenceClassification.from_pretrained("path/to/gpt2", num_labels=3)  # doctest: +SKIP
        """
        if args:
            raise TypeError("from_pretrained takes the path positionally and everything else by keyword")
        given_kwargs = dict(kwargs)
        load = {k: kwargs.pop(k) for k in list(kwargs) if k in _LOAD_KWARGS}
        attn_implementation = kwargs.pop("attn_implementation", None)
        check_attn_implementation(attn_implementation)  # before any file is read
        for ignored in ("low_cpu_mem_usage", "use_safetensors", "trust_remote_code", "cache_dir", "token"):
            kwargs.pop(ignored, None)
        unknown = [k for k in kwargs if not _is_config_key(k)]
        if unknown:
            raise TypeError(
                f"from_pretrained got unexpected keyword arguments {unknown}; it takes dtype=, device=, "
                "local_files_only=, revision=, config=, state_dict=, ignore_mismatched_sizes=, "
                "output_loading_info=, attn_implementation=, and GPT2Config fields"
            )
        given_state = load.get("state_dict")
        if pretrained_model_name_or_path is None and (given_state is None or load.get("config") is None):
            raise ValueError(
                "from_pretrained(None, ...) needs both config= and state_dict=; otherwise pass a folder or "
                "a hub name"
            )
        folder = None
        if pretrained_model_name_or_path is not None:
            folder = hub.find_model_dir(
                pretrained_model_name_or_path,
                local_files_only=load.get("local_files_only", False),
                download_ok=True,
                revision=load.get("revision"),
                files=("config.json", W.SAFE_WEIGHTS),
            )
        if folder is not None and given_state is None and _is_adapter_folder(folder):
            # As transformers does with peft installed: the adapter's base model, with the adapter on it.
            from gpt2kit.model import lora

            loaded = cls.from_pretrained(lora.base_model_of(folder), **given_kwargs)
            model = loaded[0] if isinstance(loaded, tuple) else loaded
            model.load_adapter(folder)
            return loaded
        source = str(folder) if folder is not None else "the given state_dict"
        config = load.get("config")
        if config is None:
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"{folder} has no config.json; a GPT-2 model folder needs one")
            config = GPT2Config.from_json_file(folder / "config.json")
        elif not isinstance(config, GPT2Config):
            raise TypeError(f"config= must be a GPT2Config, got {type(config).__name__}")
        else:
            config = copy.deepcopy(config)
        if kwargs:
            config = GPT2Config.from_dict(config.to_dict(), **kwargs)
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation  # GPT2Model reads it when built
        config.name_or_path = str(pretrained_model_name_or_path or "")

        device = load.get("device") or load.get("device_map")
        device = "cpu" if device in (None, "auto") else device
        if given_state is not None:
            # copies: the model must not share storage with the caller's tensors
            state = {k: v.detach().to(device, copy=True) for k, v in given_state.items()}
        else:
            state = W.read_state_dict(W.find_weight_files(folder), device)
        ckpt_dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
        dtype = resolve_dtype(load.get("dtype", load.get("torch_dtype")), ckpt_dtype)
        if dtype == torch.bfloat16 and torch.device(device).type == "cpu":
            from gpt2kit.model.kernels import warn_if_slow_bf16

            warn_if_slow_bf16("a bfloat16 model")

        with torch.device("meta"), _skip_torch_init():
            model = cls(config)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        state, unexpected = W.match_keys(state, expected)
        tied = model._tied_lm_head and config.tie_word_embeddings
        if tied:
            state.pop("lm_head.weight", None)  # the head is the embedding; a saved copy is redundant
        mismatched = [
            (k, tuple(t.shape), tuple(expected[k])) for k, t in state.items() if t.shape != expected[k]
        ]
        if mismatched and not load.get("ignore_mismatched_sizes"):
            W.check_shapes(
                state, expected, source
            )  # raises, naming the keys and ignore_mismatched_sizes=True
        for key, _, _ in mismatched:
            del state[key]
        state = {
            k: v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v for k, v in state.items()
        }
        model.load_state_dict(state, strict=False, assign=True)
        mismatched_keys = {k for k, _, _ in mismatched}
        missing = [
            k
            for k in expected
            if k not in state and k not in mismatched_keys and not (tied and k == "lm_head.weight")
        ]
        if missing or mismatched:
            model.to_empty_missing(device, dtype)
            model.init_weights(only=set(missing) | mismatched_keys)
        if missing:
            logger.warning(
                "Some weights of %s were not initialized from the model checkpoint at %s and are newly "
                "initialized: %s\nYou should probably TRAIN this model on a down-stream task to be able to use "
                "it for predictions and inference.",
                cls.__name__,
                source,
                missing,
            )
        if mismatched:
            # transformers' wording, which scripts and tests look for ("the shapes did not match").
            logger.warning(
                "Some weights of %s were not initialized from the model checkpoint at %s and are newly "
                "initialized because the shapes did not match:\n%s\nYou should probably TRAIN this model on a "
                "down-stream task to be able to use it for predictions and inference.",
                cls.__name__,
                source,
                "\n".join(
                    f"- {k}: found shape {got} in the checkpoint and {want} in the model instantiated"
                    for k, got, want in mismatched
                ),
            )
        if unexpected:
            logger.info(
                "Some weights of the model checkpoint at %s were not used when initializing %s: %s",
                source,
                cls.__name__,
                unexpected,
            )
        model.tie_weights()
        if (
            folder is not None
            and hasattr(model, "generate")
            and (folder / "generation_config.json").is_file()
        ):
            from gpt2kit.generation.config import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(folder)
        model.name_or_path = str(pretrained_model_name_or_path or "")
        model.eval()
        if load.get("output_loading_info"):
            info = {
                "missing_keys": missing,
                "unexpected_keys": unexpected,
                "mismatched_keys": [k for k, _, _ in mismatched],  # names only, as transformers 4.57
                "error_msgs": [],
            }
            return model, info
        return model

    def to_empty_missing(self, device, dtype: torch.dtype) -> None:
        """Give real (uninitialised) storage to parameters still on the meta device."""
        for module in self.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if p.device.type == "meta":
                    setattr(module, name, nn.Parameter(torch.empty(p.shape, device=device, dtype=dtype)))

    def set_attn_implementation(self, name: str) -> None:
        """ "sdpa" (fast, default) or "eager" (always the explicit path, like transformers' eager); recorded
        on the config as config._attn_implementation, as transformers does."""
        check_attn_implementation(name)
        getattr(self, self.base_model_prefix, self).attn_implementation = name
        self.config._attn_implementation = name

    # --- LoRA adapters in peft's format (model/lora.py), under transformers' PeftAdapterMixin names ----------

    def add_adapter(self, adapter_config: Any, adapter_name: str | None = None) -> None:
        """Add a trainable LoRA adapter (a gpt2kit.LoraConfig) and freeze everything else."""
        from gpt2kit.model import lora

        lora.add_adapter(self, adapter_config, adapter_name)

    def load_adapter(
        self,
        peft_model_id: str | os.PathLike,
        adapter_name: str | None = None,
        revision: str | None = None,
        is_trainable: bool = False,
    ) -> None:
        """Load a LoRA adapter folder written by peft or gpt2kit (adapter_config.json and
        adapter_model.safetensors) onto this model.

        >>> model = GPT2LMHeadModel.from_pretrained("path/to/gpt2")  # doctest: +SKIP
        >>> model.load_adapter("path/to/adapter")                    # doctest: +SKIP
        """
        from gpt2kit.model import lora

        lora.load_adapter(self, peft_model_id, adapter_name, revision=revision, is_trainable=is_trainable)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        max_shard_size: int | str = "5GB",
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write config.json and model.safetensors (sharded above max_shard_size); transformers loads it.

        While the model holds a LoRA adapter, only the adapter is written (adapter_config.json and
        adapter_model.safetensors, peft's format), as transformers does; merge_and_unload first for a full
        checkpoint."""
        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_pretrained needs a folder, but {folder} is a file")
        if getattr(self, "peft_config", None):
            from gpt2kit.model import lora

            return lora.save_adapter(self, folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = dict(state_dict if state_dict is not None else self.state_dict())
        if self._tied_lm_head and self.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # shared with wte; safetensors refuses shared storage
        W.save_state_dict(state, folder, safe_serialization, max_shard_size)
        config = copy.deepcopy(self.config)
        config.architectures = [type(self).__name__]
        config.dtype = str(self.dtype).removeprefix("torch.")
        if hasattr(self, "generate"):  # LM models carry their decoding defaults, as in transformers
            generation_config = copy.deepcopy(self.generation_config)
            # As transformers 4.57: legacy generation settings in the model config move to
            # generation_config.json, and config.json keeps them as None ("see the generation config").
            misplaced = config._get_non_default_generation_parameters()
            if misplaced:
                logger.warning(
                    "Moving the following attributes in the config to the generation config: %s. You are seeing "
                    "this warning because you've set generation parameters in the model config, as opposed to in "
                    "the generation config.",
                    misplaced,
                )
                unknown = generation_config.update(**misplaced)
                generation_config.extra.update(unknown)
                config.update(dict.fromkeys(misplaced))
            config.save_pretrained(folder)
            generation_config.save_pretrained(folder)
        else:
            config.save_pretrained(folder)
        return folder


def _is_adapter_folder(folder: Path) -> bool:
    """A LoRA adapter folder (peft's adapter_config.json, no model config): from_pretrained loads its base."""
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def _is_config_key(key: str) -> bool:
    from dataclasses import fields

    from gpt2kit.config import ALIASES

    return key in {f.name for f in fields(GPT2Config)} | set(ALIASES) | {"num_labels"}


class GPT2Model(GPT2PreTrainedModel):
    """The GPT-2 trunk: returns hidden states, no head.

    >>> model = GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100)).eval()
    >>> model(torch.tensor([[1, 2, 3]])).last_hidden_state.shape
    torch.Size([1, 3, 64])
    """

    base_model_prefix = ""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        # As transformers: the config's choice, else "sdpa", which is then recorded on the config.
        self.attn_implementation = config._attn_implementation or "sdpa"
        config._attn_implementation = self.attn_implementation
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Cache | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPastAndCrossAttentions | tuple:
        """input_ids (B, T) (or (B, k, T) for multiple choice) -> last_hidden_state (..., T, C)."""
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        use_cache = cfg.use_cache if use_cache is None else use_cache
        return_dict = cfg.use_return_dict if return_dict is None else return_dict
        _reject_unknown(kwargs)

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("pass either input_ids or inputs_embeds, not both")
        if input_ids is not None:
            input_ids = _check_ids(input_ids, cfg.vocab_size)
            input_shape = input_ids.shape
            if input_ids.dim() != 2:  # (B, k, T) of multiple choice; a 2-D input needs no op here
                input_ids = input_ids.reshape(-1, input_shape[-1])
            inputs_embeds = self.wte(input_ids)
        elif inputs_embeds is not None:
            input_shape = inputs_embeds.shape[:-1]
            inputs_embeds = inputs_embeds.reshape(-1, input_shape[-1], inputs_embeds.shape[-1])
        else:
            raise ValueError("pass input_ids or inputs_embeds")
        B, T, _ = inputs_embeds.shape
        device = inputs_embeds.device

        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputed blocks cannot append to a cache
        cache = as_cache(past_key_values)
        if cache is None and use_cache:
            cache = DynamicCache()
        past_len = cache.get_seq_length() if cache is not None else 0

        if position_ids is None:
            if past_len + T > cfg.n_positions:
                raise ValueError(
                    f"sequence length {past_len + T} exceeds the model's n_positions={cfg.n_positions}; "
                    f"truncate the input (tokenizer: truncation=True, max_length={cfg.n_positions})"
                )
            start = int(cache_position[0]) if cache_position is not None else past_len
            position_ids = torch.arange(start, start + T, device=device).unsqueeze(0)
        else:
            if position_ids.dim() != 2 or position_ids.shape[-1] != T:
                position_ids = position_ids.reshape(-1, T)
            if position_ids.numel() and (
                int(position_ids.max()) >= cfg.n_positions or int(position_ids.min()) < 0
            ):
                raise ValueError(
                    f"position_ids must be in [0, n_positions={cfg.n_positions}), got values up to "
                    f"{int(position_ids.max())}"
                )
        x = inputs_embeds + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(_check_ids(token_type_ids, cfg.vocab_size, "token_type_ids").reshape(-1, T))
        x = self.drop(x)

        exact = output_attentions or head_mask is not None or self.attn_implementation == "eager"
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = _custom_4d_mask(attention_mask, B, T, past_len, x.dtype, exact)
        else:
            if attention_mask is not None:
                attention_mask = attention_mask.reshape(B, -1)
                if attention_mask.shape[1] != past_len + T:
                    raise ValueError(
                        f"attention_mask covers {attention_mask.shape[1]} positions but the cache holds "
                        f"{past_len} and the input adds {T}; pass a mask of shape (batch, {past_len + T})"
                    )
            mask = AttentionMask.build(attention_mask, B, T, past_len, x.dtype, device, exact)
        enc_mask = None
        if encoder_hidden_states is not None:
            enc_mask = cross_attention_mask(encoder_attention_mask, x.dtype, exact)
        head_masks = _expand_head_mask(head_mask, cfg.n_layer, x.dtype)

        all_hidden: tuple[torch.Tensor, ...] | None = () if output_hidden_states else None
        all_attn: tuple[torch.Tensor, ...] | None = () if output_attentions else None
        all_cross = () if output_attentions and cfg.add_cross_attention else None
        for i, block in enumerate(self.h):
            if all_hidden is not None:
                all_hidden += (x,)
            hm = head_masks[i] if head_masks is not None else None
            if self.gradient_checkpointing and self.training:
                x, attn, cross = checkpoint(
                    block,
                    x,
                    mask,
                    None,
                    hm,
                    output_attentions,
                    encoder_hidden_states,
                    enc_mask,
                    use_reentrant=False,
                )
            else:
                x, attn, cross = block(x, mask, cache, hm, output_attentions, encoder_hidden_states, enc_mask)
            if all_attn is not None:
                all_attn += (attn,)
                if all_cross is not None:
                    all_cross += (cross,)

        x = self.ln_f(x)
        if len(input_shape) != 2:
            x = x.view(*input_shape, x.shape[-1])
        if all_hidden is not None:
            all_hidden += (x,)
        out = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=x,
            past_key_values=cache if use_cache else None,
            hidden_states=all_hidden,
            attentions=all_attn,
            cross_attentions=all_cross,
        )
        return out if return_dict else out.to_tuple()


def _custom_4d_mask(
    mask: torch.Tensor, B: int, T: int, past_len: int, dtype: torch.dtype, exact: bool
) -> AttentionMask:
    """A caller-built (B or 1, 1, T, S) float mask, added to the attention scores as it is (0 = attend, a large
    negative number = masked), as transformers 4.57 uses one. It must hold the causal structure itself
    (packed sequences, shared prefixes, trees of continuations)."""
    S = past_len + T
    if not mask.is_floating_point():
        # transformers adds a 4D mask to the scores whatever its dtype, so a 0/1 or bool mask masks nothing
        # there; refusing it is the only reading that cannot be silently wrong.
        raise TypeError(
            f"a 4D attention_mask must be a float mask to add to the scores (0 where a query may attend, "
            f"torch.finfo(dtype).min where not), got dtype {mask.dtype}; for a bool mask `allowed` pass "
            "(~allowed).float() * torch.finfo(torch.float32).min"
        )
    if mask.shape[0] not in (1, B) or mask.shape[1] != 1 or tuple(mask.shape[2:]) != (T, S):
        raise ValueError(
            f"a 4D attention_mask must have shape ({B}, 1, {T}, {S}) (batch, 1, queries, cache + queries), "
            f"got {tuple(mask.shape)}"
        )
    additive = mask.to(dtype)
    if exact:
        return AttentionMask(additive=additive.expand(B, 1, T, S))
    return AttentionMask(sdpa=additive)  # SDPA adds a float mask to the scores likewise


def _check_ids(ids: torch.Tensor, vocab_size: int, name: str = "input_ids") -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor of token ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    # Under torch.compile the check would split the graph (a data-dependent int()); a compiled caller
    # (Trainer with compile=True) checks its batches itself before the call.
    if ids.numel() and not is_compiling():
        hi, lo = int(ids.max()), int(ids.min())
        if hi >= vocab_size or lo < 0:
            bad = hi if hi >= vocab_size else lo
            raise ValueError(
                f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size}); the tokenizer and the "
                "model do not match (after tok.add_tokens, call model.resize_token_embeddings(len(tok)))"
            )
    return ids


def _expand_head_mask(
    head_mask: torch.Tensor | None, n_layer: int, dtype: torch.dtype
) -> torch.Tensor | None:
    """(nh,) or (n_layer, nh) of 1 = keep / 0 = drop -> (n_layer, 1, nh, 1, 1), broadcast over (B, nh, T, S)."""
    if head_mask is None:
        return None
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(n_layer, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask[:, None, :, None, None]
    elif head_mask.dim() != 5:
        raise ValueError(
            f"head_mask must be (n_head,) or (n_layer, n_head), got shape {tuple(head_mask.shape)}"
        )
    if head_mask.shape[0] != n_layer:
        raise ValueError(f"head_mask has {head_mask.shape[0]} layers but the model has {n_layer}")
    return head_mask.to(dtype)


def _reject_unknown(kwargs: dict[str, Any]) -> None:
    # transformers passes a few through **kwargs; anything else is a typo the user should hear about.
    unknown = [k for k in kwargs if k not in ("labels", "num_items_in_batch", "logits_to_keep")]
    if unknown:
        raise TypeError(f"forward() got unexpected keyword arguments {unknown}")


__all__ = ["GPT2Model", "GPT2PreTrainedModel", "Linear"]
