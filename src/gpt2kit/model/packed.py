"""Prepacked weights for CPU inference: oneDNN's blocked layout, reordered once instead of on every call (opt-in).

A decode step multiplies 1..B rows by every weight matrix. torch's default CPU path for fp32 (MKL sgemm)
runs such skinny products far below the memory bandwidth on the AMD EPYC dev VM (~0.8 ms for a 768x3072
fp32 layer at 8 rows against 0.28 ms prepacked, single-threaded), and bf16 products reorder the weight into
oneDNN's layout on each call. `pack_weights` reorders every projection and the LM head once
(`torch.ops.mkldnn._reorder_linear_weight`) and runs them with `torch.ops.mkldnn._linear_pointwise`,
as torch.compile's CPU freezing pass does, without compiling anything.

Packing is not always faster: on an AVX2-only EPYC packed weights won at 8 rows and lost at 1. So each
layer is timed packed and as it is (kernels.py: once per shape and machine, cached) and packed only where
that is faster; bf16 weights are packed only where oneDNN has bf16 kernels for this CPU (elsewhere its
reorder refuses them), and left to torch's kernels otherwise.

oneDNN picks the packed layout from the row count it is told: for one row a layout that multiplies no
faster than the plain weight, for two or more a blocked one. On an AMD EPYC Zen 5 the blocked layout runs
a one-row product 1.3-1.7x faster than the one-row layout (65-78 against 30-59 GB/s of weights read), on the
Zen 4 EPYC before it the one-row products kept the plain weight. So for one row both layouts are candidates,
and the one that measured faster is kept.

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

import copy
import itertools

import torch
from torch import nn

from gpt2kit.model import kernels
from gpt2kit.model.linear import layout, out_in_weight, replace_projections
from gpt2kit.model.matmul import _lp, onednn_linear_available


def packing_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN can pack weights of this dtype here: its linear ops are in this torch build (CPU builds
    on x86 and ARM), and for bfloat16 the CPU has what oneDNN's bf16 reorder needs (AVX-512 BW/VL/DQ,
    AVX-NE-CONVERT or ARM's BF16, as oneDNN itself reports it under any ONEDNN_MAX_CPU_ISA limit)."""
    if not (onednn_linear_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    if dtype == torch.bfloat16:
        supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(supported()) if supported is not None else False
    return dtype == torch.float32


class PackedLinear(nn.Module):
    """y = x @ weight.T + bias with the weight (out, in) reordered into oneDNN's blocked layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_size: int) -> None:
        super().__init__()
        if not packing_available(weight.dtype):
            raise ValueError(
                f"oneDNN cannot pack {weight.dtype} weights on this CPU (ISA {kernels.hardware().isa}); "
                "use float32, or leave the layer unpacked (pack_weights does)"
            )
        self.out_features, self.in_features = weight.shape
        # The layout is chosen for batch_size rows; other row counts are still computed correctly.
        self.layout_rows = batch_size
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), batch_size)
        self.register_buffer("packed_weight", packed)
        self.register_buffer("bias", bias.detach() if bias is not None else None)

    @classmethod
    def from_float(cls, module: nn.Module, batch_size: int) -> PackedLinear:
        """From gpt2kit's Linear (weight (in, out)) or nn.Linear (weight (out, in))."""
        return cls(out_in_weight(module, "pack"), module.bias, batch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN takes (..., K) as it is (it makes x contiguous itself): no reshape and view (5 recorded ops)
        if x.dim() >= 2:
            return _lp(x, self.packed_weight, self.bias)
        return _lp(x.reshape(1, -1), self.packed_weight, self.bias).view(self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"oneDNN prepacked for {self.layout_rows} row{'s' if self.layout_rows > 1 else ''}"
        )


def pack_weights(
    model: nn.Module, batch_size: int = 8, lm_head: bool = True, measure: bool = True
) -> nn.Module:
    """Replace the projections (and, by default, the LM head) with PackedLinear layers, in place; returns
    model. With measure (the default) a layer is packed only where packing measured faster on this machine
    at batch_size rows (kernels.py); measure=False packs every layer.

    batch_size: the rows per call to tune the layout for (the generation batch).
    A packed tied LM head gets its own copy of the token embedding (154 MB more for the 124M model in
    fp32); packed projections release their float weights. `model.packed` says how many layers were packed.

    >>> model = pack_weights(GPT2LMHeadModel.from_pretrained("gpt2", dtype="bfloat16"))  # doctest: +SKIP
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"pack_weights needs a float32 or bfloat16 model, got {dtype}")
    if not packing_available(dtype):
        if dtype == torch.bfloat16 and onednn_linear_available():
            # Not an error: the model runs as it is, on torch's (emulated) bf16 kernels.
            kernels.warn_if_slow_bf16("bfloat16 (unpacked: oneDNN cannot pack bf16 weights here)")
            model.packed = 0
            return model
        raise RuntimeError("this torch build has no oneDNN (mkldnn) linear ops; use the model unpacked")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("pack_weights is for CPU models (oneDNN's CPU layout)")
    if model.training:
        raise ValueError(
            "pack_weights is for inference; call model.eval() first (packed weights cannot train)"
        )
    count = 0

    def make(layer: nn.Module) -> nn.Module:
        nonlocal count
        layout_rows = _packed_rows(layer, batch_size) if measure else batch_size
        if layout_rows is None:
            return layer
        count += 1
        return PackedLinear.from_float(layer, layout_rows)

    with torch.no_grad(), kernels.EVICTOR.held():  # one eviction buffer for all the decisions
        replace_projections(model, make, lm_head)
    model.packed = count
    return model


# For one row oneDNN keeps a plain-like layout; the blocked layout it picks for 2+ rows (the same for 2-256
# rows, as timed on a Zen 5 EPYC) is the other candidate, asked for as this many rows.
BLOCKED_ROWS = 8


def _layouts(rows: int) -> dict[str, int]:
    """{candidate name: the rows to lay a packed weight out for} when multiplying `rows` rows."""
    return {"packed": rows} | ({"packed-blocked": BLOCKED_ROWS} if rows < 2 else {})


def _packed_rows(layer: nn.Module, rows: int) -> int | None:
    """The rows to lay layer's packed weight out for, where packing measured faster than the layer as it is
    at `rows` rows; None where it did not (timed once per shape and machine; packed copies are built only
    to time them)."""
    dtype = layer.weight.dtype
    n, k = out_in_weight(layer, "pack").shape
    if k * n * rows < kernels.MIN_MACS:
        return None
    layouts = _layouts(rows)

    def candidates(m: int) -> dict[str, object]:
        # Every candidate cycles through copies of the weight, each read from memory as in a decode step.
        x = kernels.random_input(m, k, dtype=dtype)
        weight, bias = out_in_weight(layer, "pack"), layer.bias
        nbytes = weight.numel() * weight.element_size()
        plain = itertools.cycle(kernels.cold_copies(layer, lambda: copy.deepcopy(layer), nbytes, m))
        calls = {"plain": lambda: next(plain)(x)}
        for name, layout_rows in layouts.items():
            make = lambda r=layout_rows: PackedLinear(weight, bias, r)  # noqa: E731
            packed = itertools.cycle(kernels.cold_copies(make(), make, nbytes, m))
            calls[name] = lambda p=packed: next(p)(x)
        return calls

    family = f"pack-{str(dtype).removeprefix('torch.')}-{layout(layer)}"
    choice = kernels.TABLE.decide(family, k, n, rows, candidates, floor="plain").choice
    return layouts.get(choice)
