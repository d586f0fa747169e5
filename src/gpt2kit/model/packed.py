"""Prepacked weights for CPU inference: oneDNN's blocked layout, reordered once instead of on every call (opt-in).

A decode step multiplies 1..B rows by every weight matrix. torch's default CPU path for fp32 (MKL sgemm)
runs such skinny products far below the memory bandwidth on the AMD EPYC dev VM (~0.8 ms for a 768x3072
fp32 layer at 8 rows against 0.28 ms prepacked, single-threaded), and bf16 products reorder the weight into
oneDNN's layout on each call. `pack_weights` reorders every projection and the LM head once
(`torch.ops.mkldnn._reorder_linear_weight`) and runs them with `torch.ops.mkldnn._linear_pointwise`,
as torch.compile's CPU freezing pass does, without compiling anything.

The products sum in another order than torch's default kernels, so logits differ in the last bits from
transformers' (~1e-6) and a greedy token can differ where two candidates nearly tie (none did in the tests
and benchmarks). The Python API never packs implicitly: from_pretrained + generate() stay exact and
trainable. The inference commands (`gpt2kit generate`, `gpt2kit serve`) pack by default (--weights auto).
Inference only: packed weights are opaque buffers that cannot train or be saved.

>>> from gpt2kit.config import GPT2Config
>>> from gpt2kit.model.heads import GPT2LMHeadModel
>>> model = pack_weights(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).eval())
>>> type(model.transformer.h[0].mlp.c_fc).__name__
'PackedLinear'
"""

from __future__ import annotations

import torch
from torch import nn

from gpt2kit.model.linear import Linear, replace_projections
from gpt2kit.model.matmul import onednn_linear_available


def packing_available() -> bool:
    """Whether this torch build has oneDNN's linear ops (CPU builds on x86 and ARM do)."""
    return onednn_linear_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinear(nn.Module):
    """y = x @ weight.T + bias with the weight (out, in) reordered into oneDNN's blocked layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_size: int) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # The layout is chosen for batch_size rows; other row counts are still computed correctly.
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), batch_size)
        self.register_buffer("packed_weight", packed)
        self.register_buffer("bias", bias.detach() if bias is not None else None)

    @classmethod
    def from_float(cls, module: nn.Module, batch_size: int) -> PackedLinear:
        """From gpt2kit's Linear (weight (in, out)) or nn.Linear (weight (out, in))."""
        if isinstance(module, Linear):
            weight = module.weight.t()
        elif isinstance(module, nn.Linear):
            weight = module.weight
        else:
            raise TypeError(f"cannot pack a {type(module).__name__}; expected Linear or nn.Linear")
        return cls(weight, module.bias, batch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(x2, self.packed_weight, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN prepacked"


def pack_weights(model: nn.Module, batch_size: int = 8, lm_head: bool = True) -> nn.Module:
    """Replace every projection (and, by default, the LM head) with a PackedLinear, in place; returns model.

    batch_size: the rows per call to tune the layout for (the generation batch; 8 also serves 1 well).
    The tied LM head gets its own packed copy of the token embedding (154 MB more for the 124M model in
    fp32); the projections' float weights are released.

    >>> model = pack_weights(GPT2LMHeadModel.from_pretrained("gpt2", dtype="bfloat16"))  # doctest: +SKIP
    """
    if not packing_available():
        raise RuntimeError("this torch build has no oneDNN (mkldnn) linear ops; use the model unpacked")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"pack_weights needs a float32 or bfloat16 model, got {dtype}")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("pack_weights is for CPU models (oneDNN's CPU layout)")
    if model.training:
        raise ValueError(
            "pack_weights is for inference; call model.eval() first (packed weights cannot train)"
        )
    with torch.no_grad():
        replace_projections(model, lambda layer: PackedLinear.from_float(layer, batch_size), lm_head)
    return model
