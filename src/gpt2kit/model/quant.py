"""Weight-only int8 quantization for faster generation on CPU (opt-in).

A decode step reads every weight once and does little arithmetic with it, so its speed is the memory
bandwidth divided by the weights' bytes. Storing the projection and LM-head weights as int8 with one fp
scale per output channel halves the bytes of bf16 (a quarter of fp32); the matmul reads the int8 weights
directly (`torch.ops.aten._weight_int8pack_mm`, which dequantizes inside its kernel), so nothing
full-precision is rebuilt per step. Embeddings, LayerNorms, biases and the KV cache keep the model's dtype.

This changes the model's numbers (each weight is rounded to 1/127 of its row's largest magnitude), so greedy
tokens differ from the float model's now and then; it is never applied implicitly.

>>> from gpt2kit.config import GPT2Config
>>> from gpt2kit.model.heads import GPT2LMHeadModel
>>> model = quantize_int8(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).eval())
>>> type(model.lm_head).__name__, model.lm_head.weight_int8.dtype
('Int8Linear', torch.int8)
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from gpt2kit.model.linear import Linear, replace_projections

logger = logging.getLogger(__name__)

# The dtypes _weight_int8pack_mm accepts for activations (and scales).
_ACTIVATION_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (N, K) float, one row per output -> int8 (N, K) and scales (N,) with weight ~= int8 * scale.

    Symmetric, per output channel: a row's largest magnitude maps to 127.
    """
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales


class Int8Linear(nn.Module):
    """y = x @ (weight_int8 * scales).T + bias, weight_int8 (out, in) int8, scales (out,).

    Built from a float layer by `from_float`; the activations' dtype (fp32 or bf16) is the scales' dtype.
    """

    def __init__(
        self,
        weight_int8: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__()
        assert weight_int8.dtype == torch.int8 and weight_int8.dim() == 2
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    @classmethod
    def from_float(cls, module: nn.Module, dtype: torch.dtype) -> Int8Linear:
        """From gpt2kit's Linear (weight (in, out)) or nn.Linear (weight (out, in)); activations in dtype."""
        if isinstance(module, Linear):
            weight = module.weight.t()  # GPT-2 stores (in, out); the kernel reads one row per output
        elif isinstance(module, nn.Linear):
            weight = module.weight
        else:
            raise TypeError(f"cannot quantize a {type(module).__name__}; expected Linear or nn.Linear")
        q, scales = quantize_weight(weight)
        bias = module.bias.detach().to(dtype) if module.bias is not None else None
        return cls(q, scales.to(dtype), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != self.scales.dtype:
            x2 = x2.to(self.scales.dtype)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_int8(model: nn.Module, lm_head: bool = True) -> nn.Module:
    """Replace every projection (and, by default, the LM head) with an Int8Linear, in place; returns model.

    Call it on a loaded model in eval mode, in the dtype the rest of the model should run in (bf16 is the
    fastest on CPUs with AVX512-BF16; fp32 works too). The tied LM head gets its own int8 copy of the token
    embedding; the embedding itself is untouched. Inference only: the quantized weights are buffers, and a
    quantized model cannot be saved in transformers' format (save the float model instead).

    >>> model = quantize_int8(GPT2LMHeadModel.from_pretrained("gpt2", dtype="bfloat16"))  # doctest: +SKIP
    """
    dtype = next(model.parameters()).dtype
    if dtype not in _ACTIVATION_DTYPES:
        raise ValueError(f"quantize_int8 needs a float32, bfloat16 or float16 model, got {dtype}")
    if model.training:
        raise ValueError(
            "quantize_int8 is for inference; call model.eval() first (int8 weights cannot train)"
        )
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        raise ValueError("this model is already quantized")
    if dtype == torch.float32 and next(model.parameters()).device.type == "cpu":
        logger.warning(
            "int8 weights with float32 activations run a slow kernel on CPU (94 ms per 124M decode step on "
            "the dev VM, against 10 ms with bfloat16); load the model with dtype='bfloat16' first"
        )
    with torch.no_grad():
        replace_projections(model, lambda layer: Int8Linear.from_float(layer, dtype), lm_head)
    model.quantized = "int8"
    return model
