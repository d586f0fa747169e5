"""The language-modelling loss, computed a few rows at a time.

`F.cross_entropy` over a batch's shifted logits materialises the vocabulary-wide rows four times in float32:
the shifted copy, log_softmax's output, and in the backward a zero-filled gradient plus log_softmax's
backward (205 MB each at 4 x 256 tokens and GPT-2's 50,257 tokens). Blocks that size come from fresh
mmaps that the kernel page-faults in and zeroes on every step: in a profile of a 124M bf16 training step on
the dev VM those four took ~0.7 s of ~4 s (the zero fill alone 266 ms). Here the loss walks the rows in
chunks of a few MB (reused from the heap, cache-sized) and the backward writes the gradient once, in the
logits' own dtype: softmax(row) - onehot(target), scaled. A 124M training step (4 x 256 tokens, AdamW) went
from ~3.85 to ~3.4 s in bf16 autocast and from ~6.1 to ~5.7 s in float32 (alternating processes, same VM).

Same numbers as `F.cross_entropy(..., ignore_index=-100)` (mean over the targets that are not -100) to
float32 rounding. On CPUs only; under torch.compile and torch.func, the plain `F.cross_entropy` path runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt2kit.model.matmul import _transformed, is_compiling

IGNORE = -100
# Rows per chunk: ~8 MB of float32 at GPT-2's vocabulary, small enough to stay in the heap and the L2/L3.
CHUNK_BYTES = 8 << 20


def _chunks(B: int, T: int, V: int) -> list[tuple[int, int, int, int]]:
    """(b, t0, t1, flat0): positions t0..t1 of row b (as predictors: t < T - 1), a few MB each; flat0 is
    the first one's index among the B * (T - 1) flattened targets."""
    step = max(1, CHUNK_BYTES // (4 * V))
    return [(b, t, min(t + step, T - 1), b * (T - 1) + t) for b in range(B) for t in range(0, T - 1, step)]


class _ShiftedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits[:, t] against labels[:, t + 1] over the labels that are not IGNORE."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B, T, V = logits.shape
        targets = labels[:, 1:].reshape(-1).to(logits.device)
        keep = targets != IGNORE
        safe = targets.clamp(min=0)
        lse = torch.empty(targets.shape[0], dtype=torch.float32, device=logits.device)
        picked = torch.empty_like(lse)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            for b, t0, t1, f in _chunks(B, T, V):
                chunk = logits[b, t0:t1].float()
                torch.logsumexp(chunk, dim=-1, out=lse[f : f + t1 - t0])
                picked[f : f + t1 - t0] = chunk.gather(1, safe[f : f + t1 - t0, None]).squeeze(1)
        count = keep.sum()
        ctx.save_for_backward(logits, safe, keep, lse, count)
        return torch.where(keep, lse - picked, 0.0).sum() / count  # ignored rows add nothing, even inf

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, safe, keep, lse, count = ctx.saved_tensors
        B, T, V = logits.shape
        if torch.is_grad_enabled():  # create_graph=True: a gradient of this gradient will be asked for
            return _differentiable_grad(logits, safe, keep, count, grad), None
        out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        out[:, -1] = 0  # the last position predicts nothing
        weight = keep * (grad.float() / count)  # d loss / d (each row's log-probability of its target)
        minus_one = torch.full((1, 1), -1.0, device=logits.device)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            for b, t0, t1, f in _chunks(B, T, V):
                n = t1 - t0
                p = logits[b, t0:t1].float().sub_(lse[f : f + n, None]).exp_()  # softmax
                p.scatter_add_(1, safe[f : f + n, None], minus_one.expand(n, 1))
                out[b, t0:t1] = p.mul_(weight[f : f + n, None])
        return out, None


def _differentiable_grad(logits, safe, keep, count, grad) -> torch.Tensor:
    """The same gradient from differentiable ops on whole tensors (double backward: rare, so not chunked)."""
    B, T, V = logits.shape
    p = torch.softmax(logits[:, :-1].float(), dim=-1)
    p = p - F.one_hot(safe.view(B, T - 1), V).to(p.dtype)
    g = p * (keep * (grad.float() / count)).view(B, T - 1, 1)
    return torch.cat([g, g.new_zeros(B, 1, V)], dim=1).to(logits.dtype)


def _out_of_range(targets: torch.Tensor, vocab: int) -> bool:
    """Targets F.cross_entropy refuses (negative but not IGNORE, or >= vocab): the plain path raises its
    error for them, where the chunks would clamp or index out of bounds."""
    return bool(((targets < 0) & (targets != IGNORE)).any() or (targets >= vocab).any())


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from position t; labels == -100 are ignored.

    logits (B, T, V), labels (B, T): the shift happens here, so labels can simply be input_ids.
    """
    # What F.cross_entropy refuses (shapes, dtypes, ranges) takes its path, for its error message.
    plain = logits.dim() != 3 or logits.shape[1] < 2 or labels.shape != logits.shape[:2]
    plain = plain or labels.dtype != torch.long
    # On a GPU the caching allocator reuses blocks and the fused kernel is one launch: nothing to gain.
    # Compiled code takes F.cross_entropy, and asks nothing of the labels' values first (a data-dependent
    # bool() there is a graph break).
    plain = plain or is_compiling() or logits.device.type != "cpu"
    if plain or _transformed(logits) or _out_of_range(labels[:, 1:], logits.shape[-1]):
        shift_logits = logits[..., :-1, :].float()
        shift_labels = labels[..., 1:].to(logits.device)
        return F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE
        )
    return _ShiftedCrossEntropy.apply(logits, labels)
