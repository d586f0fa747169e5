"""Which kernel multiplies float32 matrices on a CPU: torch's default (MKL) or oneDNN.

torch sends float32 products on x86 CPUs to MKL's sgemm, and MKL picks its fast AVX-512 kernels only on
Intel CPUs. On AMD (the project's dev VM: EPYC, AVX-512) sgemm runs at ~220 GFLOP/s on 2 cores where oneDNN,
which torch also ships, runs the same product at ~500: every float32 projection, the LM head included,
is 2-2.5x slower than the machine allows, at every row count from a 1-token decode step to training.
bfloat16 products already go to oneDNN, so only float32 is rerouted.

`fp32_linear` computes x @ w.T + b with oneDNN's `_linear_pointwise` on the plain weight (no packing, no copy:
the parameters stay ordinary, trainable tensors) and has its own backward, written with the same kernel.
It sums in another order than MKL, so results agree to float32 rounding (~1e-6 relative), not bit for bit.

The choice: GPT2KIT_CPU_MATMUL=onednn | torch | auto (default), read at the first float32 CPU product of the
process (set it before that; set_cpu_matmul() changes it any time). auto uses oneDNN on AMD CPUs, where it
was measured faster, and torch's default elsewhere. torch's kernels still run under autocast, inside
torch.compile, under torch.func transforms and forward-mode AD, and for double backward's second pass.
"""

from __future__ import annotations

import os

import torch
from torch import nn

CHOICES = ("auto", "onednn", "torch")
_choice: str | None = None  # "onednn" or "torch", once decided


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's linear op (CPU builds on x86 and ARM do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def set_cpu_matmul(choice: str) -> str:
    """Choose the float32 CPU kernel for gpt2kit's projections and LM head; returns what auto resolved to."""
    global _choice
    if choice not in CHOICES:
        raise ValueError(f"CPU matmul {choice!r} is not one of {', '.join(CHOICES)} (GPT2KIT_CPU_MATMUL)")
    available = onednn_linear_available()
    if choice == "onednn" and not available:
        raise ValueError("this torch build has no oneDNN linear op; use GPT2KIT_CPU_MATMUL=torch")
    if choice == "auto":
        choice = "onednn" if available and _cpu_vendor() == "AuthenticAMD" else "torch"
    _choice = choice
    return choice


def cpu_matmul() -> str:
    """ "onednn" or "torch": the float32 CPU kernel in use (decided from GPT2KIT_CPU_MATMUL on first use)."""
    return _choice or set_cpu_matmul(os.environ.get("GPT2KIT_CPU_MATMUL", "auto").strip().lower() or "auto")


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def fp32_linear(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """x2 (M, in) @ weight (out, in).T + bias by oneDNN, when that is the float32 kernel in use; else None.

    None also while torch.compile traces (inductor chooses its kernels; checked first, so tracing never
    reaches the choice below), under autocast (which casts the operands for torch's own kernels), with
    oneDNN switched off (torch.backends.mkldnn.flags(enabled=False)), under torch.func transforms and
    forward-mode AD (which this op does not implement), and for anything but float32 CPU tensors.
    """
    if (
        is_compiling()
        or x2.dtype is not torch.float32
        or weight.dtype is not torch.float32
        or x2.device.type != "cpu"
        or x2.shape[0] == 0
        or _autocast_on()
        or not torch.backends.mkldnn.enabled
        or cpu_matmul() != "onednn"
        or _transformed(x2, weight, bias)
    ):
        return None
    return _OneDNNLinear.apply(x2, weight, None if bias is None else bias.contiguous())


def _transformed(*tensors: torch.Tensor | None) -> bool:
    """Inside torch.func (grad, vmap) or carrying forward-mode tangents: leave those to torch's own ops."""
    wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    for t in tensors:
        if t is None:
            continue
        if wrapped is not None and wrapped(t):
            return True
        if torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
            return True
    return False


def is_compiling() -> bool:
    """Whether torch.compile is tracing this call (torch.compiler.is_compiling exists from torch 2.3)."""
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(check()) if check is not None else False


def _lp(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


class LMHead(nn.Linear):
    """The LM head: an nn.Linear (same parameters, same state dict) whose float32 CPU product goes through
    fp32_linear. It projects onto the vocabulary, a third of a 124M model's FLOPs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The weight's shape, not in/out_features: tying to a resized embedding changes the weight only.
        out = fp32_linear(x.reshape(-1, self.weight.shape[1]), self.weight, self.bias)
        if out is None:
            return super().forward(x)
        return out.view(*x.shape[:-1], self.weight.shape[0])


class _OneDNNLinear(torch.autograd.Function):
    """y = x @ w.T + b with oneDNN, forward and backward (any strides: oneDNN reads them as they are)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        # Keep only what the backward will use: a frozen weight needs no x, a frozen input no w.
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x if need_w else None, w if need_x else None)
        ctx.has_bias = b is not None
        return _lp(x, w, b)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, w = ctx.saved_tensors
        # With create_graph (double backward) use differentiable ops: oneDNN's op has no derivative.
        mm = (lambda a, bt: a.mm(bt.t())) if torch.is_grad_enabled() else _lp
        gx = mm(gy, w.t()) if ctx.needs_input_grad[0] else None  # gy @ w
        gw = mm(gy.t(), x.t()) if ctx.needs_input_grad[1] else None  # gy.T @ x
        gb = gy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb
