"""The transformer block: pre-LayerNorm attention and MLP, each added to the residual stream."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt2kit.config import GPT2Config
from gpt2kit.model.attention import Attention, AttentionMask
from gpt2kit.model.cache import Cache
from gpt2kit.model.dropout import Dropout
from gpt2kit.model.linear import Linear


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


# GPT-2's "gelu_new" is the tanh approximation of GELU; torch's fused kernel computes the same formula in
# one pass instead of the six elementwise passes of a hand-written version.
ACT_FNS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "relu6": F.relu6,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "mish": F.mish,
    "linear": lambda x: x,
}


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.inner_dim)
        self.c_proj = Linear(config.inner_dim, config.n_embd)
        self.act = ACT_FNS[config.activation_function]
        self.dropout = Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps)
        self.attn = Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps)
        if config.add_cross_attention:
            self.crossattention = Attention(config, layer_idx, is_cross_attention=True)
            self.ln_cross_attn = nn.LayerNorm(config.n_embd, eps=eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        cache: Cache | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_mask: AttentionMask | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x: (B, T, C) -> (B, T, C), self-attention probabilities, cross-attention probabilities."""
        a, attn_probs = self.attn(self.ln_1(x), mask, cache, head_mask, output_attentions)
        x = x + a
        cross_probs = None
        if encoder_hidden_states is not None:
            if not hasattr(self, "crossattention"):
                raise ValueError(
                    "encoder_hidden_states were passed but this model has no cross-attention layers; "
                    "build it with GPT2Config(add_cross_attention=True)"
                )
            c, cross_probs = self.crossattention(
                self.ln_cross_attn(x),
                encoder_mask or AttentionMask(),
                head_mask=head_mask,
                output_attentions=output_attentions,
                encoder_hidden_states=encoder_hidden_states,
            )
            x = x + c
        x = x + self.mlp(self.ln_2(x))
        return x, attn_probs, cross_probs
