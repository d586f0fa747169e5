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
_LOAD_KWARGS = {"dtype", "torch_dtype", "device", "device_map", "local_files_only", "revision", "config"}


class GPT2PreTrainedModel(nn.Module):
    """Shared by every GPT-2 model class: init, loading and saving, embeddings plumbing."""

    base_model_prefix = "transformer"
    _tied_lm_head = False  # heads whose lm_head shares the token embedding set this

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        if not isinstance(config, GPT2Config):
            raise TypeError(f"{type(self).__name__} needs a GPT2Config, got {type(config).__name__}")
        self.config = config

    # --- weights ---------------------------------------------------------------------------------------

    def post_init(self) -> None:
        """Random init as GPT-2 does it, then tie the LM head. Skipped on the meta device (nothing to fill)."""
        if next(self.parameters()).device.type != "meta":
            self.init_weights()
        self.tie_weights()

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
        self, new_num_tokens: int, pad_to_multiple_of: int | None = None
    ) -> nn.Embedding:
        """Grow or shrink the vocabulary (after tok.add_tokens); new rows start at the mean embedding."""
        if pad_to_multiple_of:
            new_num_tokens = math.ceil(new_num_tokens / pad_to_multiple_of) * pad_to_multiple_of
        if new_num_tokens <= 0:
            raise ValueError(f"new_num_tokens must be positive, got {new_num_tokens}")
        old = self.get_input_embeddings()
        n = min(old.num_embeddings, new_num_tokens)
        new = nn.Embedding(
            new_num_tokens, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype
        )
        with torch.no_grad():
            new.weight[:n] = old.weight[:n]
            if new_num_tokens > n:
                new.weight[n:] = old.weight.float().mean(0).to(old.weight.dtype)
        self.set_input_embeddings(new)
        self.config.vocab_size = new_num_tokens
        if self._tied_lm_head:
            if self.config.tie_word_embeddings:
                self.tie_weights()
            else:
                head = LMHead(
                    old.embedding_dim,
                    new_num_tokens,
                    bias=False,
                    device=new.weight.device,
                    dtype=new.weight.dtype,
                )
                with torch.no_grad():
                    head.weight[:n] = self.lm_head.weight[:n]
                    head.weight[n:] = 0
                self.lm_head = head
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
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load a checkpoint folder in transformers' format (safetensors, .bin, or sharded).

        Built on the meta device and filled by assigning the loaded tensors, so the weights are in memory
        once. Extra keyword arguments that are config fields override the folder's config.json.

        >>> model = GPT2LMHeadModel.from_pretrained("path/to/gpt2")  # doctest: +SKIP
        >>> clf = GPT2ForSequenceClassification.from_pretrained("path/to/gpt2", num_labels=3)  # doctest: +SKIP
        """
        if args:
            raise TypeError("from_pretrained takes the path positionally and everything else by keyword")
        load = {k: kwargs.pop(k) for k in list(kwargs) if k in _LOAD_KWARGS}
        attn_implementation = kwargs.pop("attn_implementation", None)
        check_attn_implementation(attn_implementation)  # before any file is read
        for ignored in ("low_cpu_mem_usage", "use_safetensors", "trust_remote_code", "cache_dir", "token"):
            kwargs.pop(ignored, None)
        unknown = [k for k in kwargs if not _is_config_key(k)]
        if unknown:
            raise TypeError(
                f"from_pretrained got unexpected keyword arguments {unknown}; it takes dtype=, device=, "
                "local_files_only=, revision=, config=, attn_implementation=, and GPT2Config fields"
            )
        folder = hub.find_model_dir(
            pretrained_model_name_or_path,
            local_files_only=load.get("local_files_only", False),
            download_ok=True,
            revision=load.get("revision"),
            files=("config.json", W.SAFE_WEIGHTS),
        )
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
        config.name_or_path = str(pretrained_model_name_or_path)

        device = load.get("device") or load.get("device_map")
        device = "cpu" if device in (None, "auto") else device
        files = W.find_weight_files(folder)
        state = W.read_state_dict(files, device)
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
        W.check_shapes(state, expected, str(folder))
        state = {
            k: v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v for k, v in state.items()
        }
        model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in expected if k not in state and not (tied and k == "lm_head.weight")]
        if missing:
            model.to_empty_missing(device, dtype)
            model.init_weights(only=set(missing))
            logger.warning(
                "Some weights of %s were not initialized from the model checkpoint at %s and are newly "
                "initialized: %s\nYou should probably TRAIN this model on a down-stream task to be able to use "
                "it for predictions and inference.",
                cls.__name__,
                folder,
                missing,
            )
        if unexpected:
            logger.info(
                "Some weights of the model checkpoint at %s were not used when initializing %s: %s",
                folder,
                cls.__name__,
                unexpected,
            )
        model.tie_weights()
        if hasattr(model, "generate") and (folder / "generation_config.json").is_file():
            from gpt2kit.generation.config import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(folder)
        model.name_or_path = str(pretrained_model_name_or_path)
        model.eval()
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

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        max_shard_size: int | str = "5GB",
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write config.json and model.safetensors (sharded above max_shard_size); transformers loads it."""
        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_pretrained needs a folder, but {folder} is a file")
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
        self.drop = nn.Dropout(config.embd_pdrop)
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
        return_dict = cfg.return_dict if return_dict is None else return_dict
        _reject_unknown(kwargs)

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("pass either input_ids or inputs_embeds, not both")
        if input_ids is not None:
            input_ids = _check_ids(input_ids, cfg.vocab_size)
            input_shape = input_ids.shape
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
        if attention_mask is not None:
            attention_mask = attention_mask.reshape(B, -1)
            if attention_mask.shape[1] != past_len + T:
                raise ValueError(
                    f"attention_mask covers {attention_mask.shape[1]} positions but the cache holds {past_len} and "
                    f"the input adds {T}; pass a mask of shape (batch, {past_len + T})"
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

        x = self.ln_f(x).view(*input_shape, x.shape[-1])
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
