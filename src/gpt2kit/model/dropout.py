"""Dropout for training on CPUs: cheaper masks, and attention with dropout that skips SDPA's math path.

Two costs of dropout in a CPU training step, both paid by `nn.Dropout` and by
`scaled_dot_product_attention(dropout_p=...)` in eager mode:

- The mask. `bernoulli_` draws one float from torch's generator per element, on one thread (torch's default
  kernel; some torch releases took MKL's parallel generator on Intel CPUs instead; not measured): 18 ms for a
  (4, 12, 256, 256) attention mask on the dev VM (AMD EPYC, 2 threads). `keep_mask` draws one 32-bit
  integer per two elements (`random_`, the same generator) and keeps an element when 15 of its bits are at
  or above round(p * 2^15): ~4.5 ms for the same mask.
- The attention. CPU SDPA has no fused kernel with dropout, so `dropout_p > 0` runs its math path, which
  upcasts bf16 to float32 and materialises every intermediate: 53 ms forward + backward a layer at
  (4, 12, 256, 64) under bf16 autocast, against 24 for the flash kernel without dropout. `attention` here
  computes the same softmax(QK^T) with dropout in a handful of batched products and keeps the
  probabilities and the mask for its backward (q, k, v are views SDPA would keep too): ~28 ms.

What changes: the masks are drawn differently from torch's (seeded from the same generator, so
`torch.manual_seed` and a resumed checkpoint's RNG state reproduce them), and an element is dropped with
probability round(p * 2^15) / 2^15 (0.100006 for p = 0.1), the kept ones scaled by the exact inverse of the
keep rate, so the expected value is unchanged. Where that rounding would move p by more than 0.1% of itself
(possible only for p below 0.016), under torch.func and on other devices, torch's own dropout runs; under
torch.compile too for plain dropout (inductor fuses its own masks into its kernels), while the attention
with dropout runs there as the opaque op `gpt2kit::attention_with_dropout` (the same masks as eager mode
for the same seed where attention is the only dropout: inductor draws the others its own way). Scores in bf16 autocast are bf16 products (as transformers' eager attention under autocast), the
softmax accumulates in float32; where bf16 products are emulated (no AVX512-BF16 / AMX / AVX-NE-CONVERT),
the attention runs in float32 instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt2kit.model import kernels
from gpt2kit.model.matmul import _autocast_on, _transformed, is_compiling

_LEVELS = 1 << 15  # 15 random bits an element: two elements from one 31-bit draw of random_()
# Below this many elements torch's own dropout is as fast (the mask is a few microseconds either way).
MIN_ELEMENTS = 1 << 14


def _threshold(p: float) -> int | None:
    """The integer level below which an element is dropped, or None where it would move p by > 0.1%."""
    level = round(p * _LEVELS)
    if not 0 < level < _LEVELS or abs(level / _LEVELS - p) > 1e-3 * p:
        return None
    return level


def usable(x: torch.Tensor, p: float) -> bool:
    """Whether the fast masks may stand in for torch's dropout on x."""
    return (
        x.device.type == "cpu"
        and x.is_floating_point()
        and x.numel() >= MIN_ELEMENTS
        and _threshold(p) is not None
        and not is_compiling()
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not _transformed(x)
    )


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> tuple[torch.Tensor, float]:
    """A bool mask of `shape`, True where an element is kept (probability 1 - round(p * 2^15) / 2^15), and
    the scale that keeps the expected value: 1 / that probability."""
    level = _threshold(p)
    if level is None:
        raise ValueError(f"dropout probability {p} cannot be drawn from 15-bit levels; use torch's dropout")
    n = 1
    for s in shape:
        n *= s
    # random_() on int32 fills [0, 2^31): bits 0-14 and 16-30 of each draw are two independent 15-bit levels.
    bits = torch.empty((n + 1) // 2, dtype=torch.int32, device="cpu").random_().view(torch.int16)[:n]
    keep = bits.bitwise_and_(_LEVELS - 1) >= level
    return keep.view(shape), _keep_scale(p)


def _keep_scale(p: float) -> float:
    """1 / the keep rate of keep_mask's masks: the scale that keeps the expected value."""
    return _LEVELS / (_LEVELS - _threshold(p))


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep, scale = keep_mask(x.shape, p)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None  # plain ops: differentiable again


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout(x, p, training) with the cheaper mask where `usable`."""
    if not training or p == 0.0:
        return x
    if not usable(x, p):
        return F.dropout(x, p, training)
    if not (torch.is_grad_enabled() and x.requires_grad):
        keep, scale = keep_mask(x.shape, p)
        return torch.where(keep, x, 0).mul_(scale)
    return _Dropout.apply(x, p)


class Dropout(nn.Dropout):
    """nn.Dropout (same arguments, repr and state) with the cheaper CPU mask where it can stand in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


def _attention_forward(q, k, v, allowed, scale: float, p: float):
    """dropout(softmax(scale * q k^T masked)) v, for q (B, nh, T, hs) and k, v (B, nh, S, hs); returns it, the
    probabilities (B * nh, T, S), the kept mask and its scale: what the backward keeps besides q, k and v."""
    B, nh, T, hs = q.shape
    S = k.shape[2]
    qs = (q * scale).reshape(B * nh, T, hs)  # scaled once, on the small side
    k3, v3 = k.reshape(B * nh, S, hs), v.reshape(B * nh, S, hs)
    scores = torch.bmm(qs, k3.transpose(1, 2))
    if allowed is not None:  # bool, broadcastable to (B, nh, T, S); every row keeps at least one key
        scores.view(B, nh, T, S).masked_fill_(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    del scores
    keep, keep_scale = keep_mask(probs.shape, p)
    dropped = torch.where(keep, probs, 0)  # (a bool operand to mul would be converted first)
    y = torch.bmm(dropped, v3).mul_(keep_scale).view(B, nh, T, hs)
    return y, probs, keep, keep_scale


def _attention_backward(gy, q, k, v, scale: float, probs, keep, keep_scale):
    """The gradients for q, k and v. What the forward had besides probs and keep is recomputed (a few small
    copies and one pass over the probabilities) rather than kept: 5 (T, S)-or-(S, hs)-sized tensors a layer."""
    B, nh, T, hs = q.shape
    qs = (q * scale).reshape(B * nh, T, hs)
    k3, v3 = k.reshape(B * nh, -1, hs), v.reshape(B * nh, -1, hs)
    g = gy.reshape(B * nh, T, hs) * keep_scale
    # dv and dk come out transposed, (hs, S) a head: bmm copies a transposed (T, S) operand first (44 ms
    # a bf16 step at 4 x 256), and transposing the small result is a view.
    dv = torch.bmm(g.transpose(1, 2), torch.where(keep, probs, 0)).transpose(1, 2)
    dprobs = torch.where(keep, torch.bmm(g, v3.transpose(1, 2)), 0)
    dscores = torch._softmax_backward_data(dprobs, probs, -1, probs.dtype)
    del dprobs
    dq = torch.bmm(dscores, k3).mul_(scale)
    dk = torch.bmm(qs.transpose(1, 2), dscores).transpose(1, 2)
    return dq.view(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


class _AttentionWithDropout(torch.autograd.Function):
    """_attention_forward with its backward, in eager mode."""

    @staticmethod
    def forward(ctx, q, k, v, allowed, scale: float, p: float):
        y, probs, keep, keep_scale = _attention_forward(q, k, v, allowed, scale, p)
        # q, k, v are views of the layer's qkv product, which SDPA would keep for its backward too
        ctx.save_for_backward(q, k, v, probs, keep)
        ctx.scale, ctx.keep_scale, ctx.allowed = scale, keep_scale, allowed
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        q, k, v, probs, keep = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: rebuild from differentiable ops (rare)
            inputs = [t for t, need in zip((q, k, v), ctx.needs_input_grad) if need]
            with torch.enable_grad():
                y = _composite(q, k, v, ctx.allowed, ctx.scale, keep, ctx.keep_scale)
            grads = iter(torch.autograd.grad(y, inputs, gy, create_graph=True))
            return (*(next(grads) if need else None for need in ctx.needs_input_grad[:3]), None, None, None)
        return (*_attention_backward(gy, q, k, v, ctx.scale, probs, keep, ctx.keep_scale), None, None, None)


# The same computation as one op that torch.compile leaves opaque (it would trace keep_mask's random_ into
# its graph otherwise): a compiled training step then runs this attention, and inductor fuses the rest.
# It also returns the probabilities and the mask for its backward (no output may alias an input, so q, k and
# v are saved as inputs). Tagged nondeterministic_seeded: where the compiled graph recomputes it (activation
# checkpointing), torch restores the generator's state first, so the recomputation draws the same mask.
# torch.library.custom_op exists from torch 2.4; before, compiled code takes SDPA.
attention_op = None
if hasattr(torch.library, "custom_op"):

    @torch.library.custom_op(
        "gpt2kit::attention_with_dropout", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
    )
    def attention_op(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        allowed: torch.Tensor | None,
        scale: float,
        p: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, probs, keep, _ = _attention_forward(q, k, v, allowed, scale, p)
        return y, probs, keep

    @attention_op.register_fake
    def _(q, k, v, allowed, scale, p):
        square = (q.shape[0] * q.shape[1], q.shape[2], k.shape[2])
        return q.new_empty(q.shape), q.new_empty(square), q.new_empty(square, dtype=torch.bool)

    def _op_setup(ctx, inputs, output) -> None:
        q, k, v, _, scale, p = inputs
        _, probs, keep = output
        ctx.save_for_backward(q, k, v, probs, keep)
        ctx.scale, ctx.keep_scale = scale, _keep_scale(p)
        ctx.mark_non_differentiable(probs, keep)

    def _op_backward(ctx, gy, *_):
        q, k, v, probs, keep = ctx.saved_tensors
        return (*_attention_backward(gy, q, k, v, ctx.scale, probs, keep, ctx.keep_scale), None, None, None)

    attention_op.register_autograd(_op_backward, setup_context=_op_setup)


def _composite(q, k, v, allowed, scale, keep, keep_scale):
    """The forward above from differentiable ops, with a given mask (for double backward)."""
    scores = torch.matmul(q * scale, k.transpose(-1, -2))
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1) * keep.view(scores.shape)
    return torch.matmul(probs, v) * keep_scale


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor | None,
    scale: float,
    p: float,
    float32: bool = False,
) -> torch.Tensor | None:
    """Attention with dropout on the probabilities, or None where torch's SDPA should run instead.

    allowed: None (every query sees every key) or a bool mask broadcastable to (B, nh, T, S), True = may
    attend, in which every query row allows at least one key. Under CPU autocast the products run in the
    autocast dtype, as SDPA's would, unless float32 (the config's reorder_and_upcast_attn) asks for float32.
    """
    compiling = is_compiling()
    if compiling:
        if (
            attention_op is None
            or q.device.type != "cpu"
            or q.numel() < MIN_ELEMENTS
            or _threshold(p) is None
        ):
            return None
    elif not usable(q, p) or _transformed(k, v):
        return None
    dtype = q.dtype
    if _autocast_on() and not float32:
        dtype = _autocast_dtype()
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if not q.dtype == k.dtype == v.dtype:
        return None
    if float32 or (
        dtype in (torch.bfloat16, torch.float16) and not (dtype == torch.bfloat16 and kernels.native_bf16())
    ):
        # Emulated low-precision products (bf16 on AVX2-only x86): 429 ms a layer against 40 in float32
        # (ONEDNN_MAX_CPU_ISA=AVX2 on the AMD VM), so compute in float32, as SDPA's math path does.
        q, k, v = q.float(), k.float(), v.float()
    with torch.autocast("cpu", enabled=False):
        if compiling:
            y = attention_op(q, k, v, allowed, scale, p)[0]
        else:
            y = _AttentionWithDropout.apply(q, k, v, allowed, scale, p)
    return y.to(dtype)


def _autocast_dtype() -> torch.dtype:
    try:
        return torch.get_autocast_dtype("cpu")
    except (AttributeError, TypeError):  # torch < 2.4
        return torch.get_autocast_cpu_dtype()
