"""The projection layer of GPT-2's blocks, with its weight stored (in, out).

OpenAI's TensorFlow checkpoints store these weights input-major, and every GPT-2 checkpoint since keeps that
layout (transformers calls the layer Conv1D). Storing the weight the same way means checkpoints load and
save name-for-name with no transpose anywhere, and no copy of the weights at load time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gpt2kit.model.matmul import fp32_linear


class Linear(nn.Module):
    """y = x @ weight + bias, with weight (in_features, out_features)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        out = fp32_linear(x2, self.weight.t(), self.bias)  # oneDNN where MKL is the slow kernel (matmul.py)
        if out is None:
            out = torch.addmm(self.bias, x2, self.weight)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def out_in_weight(module: nn.Module, action: str = "convert") -> torch.Tensor:
    """The (out, in) weight the replacing kernels read: a transposed view of gpt2kit's Linear (stored (in,
    out)) or an nn.Linear's own weight (the LM head)."""
    if isinstance(module, Linear):
        return module.weight.t()
    if isinstance(module, nn.Linear):
        return module.weight
    raise TypeError(f"cannot {action} a {type(module).__name__}; expected Linear or nn.Linear")


def layout(module: nn.Module) -> str:
    """'io' for GPT-2's (in, out) projections, 'oi' for an nn.Linear: kernels read the two differently, so
    kernel decisions are kept apart by layout."""
    return "io" if isinstance(module, Linear) else "oi"


def replace_projections(
    model: nn.Module, make: Callable[[nn.Module], nn.Module], lm_head: bool = True
) -> None:
    """Swap every block projection (and the `lm_head` nn.Linear, when lm_head) for make(layer), in place.

    What pack_weights and quantize_int8 share: they differ only in the layer they build.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Linear) or (name == "lm_head" and lm_head and isinstance(child, nn.Linear)):
                setattr(parent, name, make(child))
