"""Causal self-attention and cross-attention.

Shape legend used in this package: B batch, T new positions (queries), S all key positions (cache + new),
C n_embd, nh n_head, hs head_dim = C // nh. After head pruning a layer keeps nh' <= nh heads of the same hs,
so its queries, keys and values are nh' * hs wide, which is then no longer C.

Two paths compute the same thing:
- fast (the default): torch's scaled_dot_product_attention, with `is_causal` or a boolean mask; for one
  query per row (a decode step) on the CPU, SDPA or two matmuls around a softmax, whichever this machine
  measured faster for the batch x heads (decode_kernel);
- exact: the explicit softmax(QK^T)V of transformers' eager attention, step for step, used when the
  caller asks for the attention probabilities (`output_attentions`) or masks heads (`head_mask`), since
  those need the probability matrix that SDPA never materialises, and for attn_implementation="eager".
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gpt2kit.config import GPT2Config
from gpt2kit.model import dropout, kernels, matmul
from gpt2kit.model.cache import Cache
from gpt2kit.model.linear import Linear


@dataclass
class AttentionMask:
    """The masks of one forward pass, built once by GPT2Model and shared by every layer.

    fast path: `is_causal` (no mask tensor needed) or `sdpa`, a bool (B, 1, T, S), True = may attend.
    exact path: `causal`, a bool (T, S), and `additive`, a float (B, 1, T, S) of 0 / dtype-min, the same
    tensors transformers' eager attention applies, so even fully masked rows come out the same.
    """

    is_causal: bool = False
    sdpa: torch.Tensor | None = None
    causal: torch.Tensor | None = None
    additive: torch.Tensor | None = None

    @property
    def exact(self) -> bool:
        """Built for the exact path (GPT2Model asked for it: eager attention, attention outputs or a head
        mask), whose masks the fast path cannot read."""
        return self.causal is not None or self.additive is not None

    @classmethod
    def build(
        cls,
        attention_mask: torch.Tensor | None,
        batch_size: int,
        query_len: int,
        past_len: int,
        dtype: torch.dtype,
        device: torch.device,
        exact: bool,
    ) -> AttentionMask:
        """attention_mask: (B, S) of 1 (attend) / 0 (padding), or None for no padding."""
        key_len = past_len + query_len
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not exact and not padded and (query_len == 1 or past_len == 0):
            # the common cases need no mask tensor: one cached token sees everything; a fresh prompt is causal
            return cls() if query_len == 1 else cls(is_causal=True)
        # Query i sits at absolute position past_len + i and may see keys 0 .. past_len + i.
        causal = torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(diagonal=past_len)
        key_ok = attention_mask.bool()[:, None, None, :] if padded else None  # (B, 1, 1, S)
        if exact:
            allowed = (
                causal[None, None] & key_ok if padded else causal[None, None].expand(batch_size, 1, -1, -1)
            )
            additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
            additive.masked_fill_(~allowed, torch.finfo(dtype).min)
            return cls(causal=causal, additive=additive)
        if not padded:  # several new tokens after a cache: causal with an offset
            return cls(sdpa=causal[None, None])
        allowed = causal[None, None] & key_ok
        # A padding query (left padding) may see no key at all. torch >= 2.5 returns zeros for such a row, older
        # versions NaN, and a NaN at a pad position leaks into real rows through 0 * NaN in the next layer.
        # Letting such rows see their causal keys keeps every version finite; pad positions are garbage anyway.
        empty = ~allowed.any(dim=-1, keepdim=True)
        return cls(sdpa=allowed | (empty & causal[None, None]))


def cross_attention_mask(
    encoder_attention_mask: torch.Tensor | None, dtype: torch.dtype, exact: bool
) -> AttentionMask:
    """encoder_attention_mask: (B, S_enc) of 1/0, or None."""
    if encoder_attention_mask is None or bool(encoder_attention_mask.all()):
        return AttentionMask()
    keep = encoder_attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S_enc)
    if exact:
        additive = (1.0 - keep.to(dtype)) * torch.finfo(dtype).min
        return AttentionMask(additive=additive)
    return AttentionMask(sdpa=keep)


class Attention(nn.Module):
    """Multi-head attention; causal self-attention, or cross-attention over encoder states."""

    def __init__(self, config: GPT2Config, layer_idx: int, is_cross_attention: bool = False) -> None:
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.reorder_and_upcast = config.reorder_and_upcast_attn
        # GPT-2 divides scores by sqrt(hs); some configs also by (layer_idx + 1), or not at all.
        scale = 1.0 / math.sqrt(self.head_dim) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        self.scale = scale
        self.scale_attn_weights = config.scale_attn_weights
        self.scale_by_layer = config.scale_attn_by_inverse_layer_idx
        if is_cross_attention:
            self.c_attn = Linear(C, 2 * C)  # keys and values from the encoder
            self.q_attn = Linear(C, C)
        else:
            self.c_attn = Linear(C, 3 * C)  # queries, keys, values in one matmul
        self.c_proj = Linear(C, C)
        self.pruned_heads: set[int] = set()  # original head numbers removed by prune_heads
        self.attn_dropout = dropout.Dropout(config.attn_pdrop)
        self.resid_dropout = dropout.Dropout(config.resid_pdrop)

    @property
    def inner_dim(self) -> int:
        """Width of the queries (and keys, values) of the heads kept: nh' * hs."""
        return self.n_head * self.head_dim

    def prune_heads(self, heads) -> None:
        """Remove these heads (numbered as in the unpruned layer) for good, as transformers' prune_heads does:
        their columns of c_attn's q, k and v blocks and their rows of c_proj are cut out. Heads already gone
        are skipped, so the call is idempotent."""
        if self.is_cross_attention:
            raise ValueError(
                "prune_heads prunes self-attention heads; cross-attention heads cannot be pruned"
            )
        original = self.n_head + len(self.pruned_heads)
        bad = [h for h in heads if not 0 <= int(h) < original]
        if bad:
            raise ValueError(f"cannot prune heads {bad}: this layer has heads 0 .. {original - 1}")
        drop = {int(h) for h in heads} - self.pruned_heads
        if not drop:
            return
        survivors = [h for h in range(original) if h not in self.pruned_heads]  # current position -> original
        keep_heads = [i for i, h in enumerate(survivors) if h not in drop]
        hs, width = self.head_dim, self.inner_dim
        keep = torch.tensor([i * hs + j for i in keep_heads for j in range(hs)], dtype=torch.long)
        # c_attn's output is [q | k | v], each `width` wide: keep the same columns in all three blocks.
        self.c_attn = _slice_linear(self.c_attn, torch.cat([keep, keep + width, keep + 2 * width]), dim=1)
        self.c_proj = _slice_linear(self.c_proj, keep, dim=0)
        self.n_head = len(keep_heads)
        self.pruned_heads |= drop

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        cache: Cache | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, C) -> (B, T, C), and the attention probabilities (B, nh', T, S) when asked for."""
        if self.is_cross_attention:
            C = x.shape[-1]
            q = self._heads(self.q_attn(x))
            k, v = self.c_attn(encoder_hidden_states).split(C, dim=2)
            k, v = self._heads(k), self._heads(v)
        else:
            # (B, T, 3 * nh' * hs) -> q, k, v (B, nh', T, hs): three views, read from no shape
            qkv = self.c_attn(x).unflatten(-1, (3, self.n_head, self.head_dim))
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)  # (B, nh, S, hs)

        if output_attentions or head_mask is not None or mask.exact:
            y, probs = self._exact(q, k, v, mask, head_mask)
        else:
            y, probs = self._fast(q, k, v, mask), None

        y = self.c_proj(y.transpose(1, 2).flatten(2))  # heads side by side again: (B, T, nh' * hs)
        return self.resid_dropout(y), probs

    def _fast(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        dtype = q.dtype
        if self.reorder_and_upcast and dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()  # the config asks for fp32 scores
        p = self.attn_dropout.p if self.training else 0.0
        if p == 0.0 and _one_query_by_matmul(q, mask):
            y = _attend_matmul(q, k, v, self.scale)
            return y if y.dtype == dtype else y.to(dtype)
        if p > 0.0 and not (self.is_cross_attention and mask.sdpa is not None):
            # CPU SDPA has no kernel with dropout (its math path is 2x slower than this): see model/dropout.py.
            # Not for masked cross-attention, where a query may see no key at all (SDPA gives it zeros).
            y = dropout.attention(q, k, v, self._allowed(q, k, mask), self.scale, p, self.reorder_and_upcast)
            if y is not None:
                return y if y.dtype == dtype else y.to(dtype)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask.sdpa,
            dropout_p=p,
            is_causal=mask.is_causal and not self.is_cross_attention,
            scale=self.scale,
        )
        return y if y.dtype == dtype else y.to(dtype)

    def _allowed(self, q: torch.Tensor, k: torch.Tensor, mask: AttentionMask) -> torch.Tensor | None:
        """The fast path's mask as one bool tensor (True = may attend) for dropout.attention."""
        if mask.sdpa is not None:
            return mask.sdpa
        if mask.is_causal and not self.is_cross_attention:
            T, S = q.shape[-2], k.shape[-2]
            return torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        return None

    def _exact(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: AttentionMask,
        head_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The operations and their order are transformers' eager attention's, so the probabilities match it.
        if self.reorder_and_upcast:
            scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.scale
        else:
            scores = torch.matmul(q, k.transpose(-1, -2))
            if self.scale_attn_weights:
                scores = scores / torch.full([], v.size(-1) ** 0.5, dtype=scores.dtype, device=scores.device)
            if self.scale_by_layer:
                scores = scores / float(self.layer_idx + 1)
        min_value = torch.finfo(scores.dtype).min
        if not self.is_cross_attention and mask.causal is not None:
            scores = torch.where(mask.causal, scores, torch.full([], min_value, dtype=scores.dtype))
        if mask.additive is not None:
            scores = scores + mask.additive.to(scores.dtype)
        elif mask.sdpa is not None:  # a cross mask built for the fast path
            scores = scores.masked_fill(~mask.sdpa, min_value)
        probs = F.softmax(scores, dim=-1).type(v.dtype)
        probs = self.attn_dropout(probs)
        if head_mask is not None:
            probs = probs * head_mask
        return torch.matmul(probs, v), probs


# --- one query per row: a decode step's attention ----------------------------------------------------------

# A decode step's query attends to the whole cache: per row and head a matrix-vector product with the keys,
# a softmax, another with the values, each reading its keys and values from memory (the weights streamed
# between two steps push them out of the cache). torch's fused SDPA kernel and two batched matmuls around a
# softmax compute it; which is faster depends on the CPU and on batch x heads (on a 2-core AMD EPYC Zen 5:
# SDPA ~1.3x faster at batch 1, the matmuls 1.1-1.5x faster from batch 2, 1-7% of an int8 or float32
# batch-8 step), so it is measured, like the products' kernels, at this many cached positions:
DECODE_TIMED_LENGTH = 128
# Smaller attention (multiply-adds of one timed call) is not timed: SDPA. Tiny test models stay there.
DECODE_MIN_MACS = 1 << 16
# (batch x heads, head_dim, threads) -> "sdpa" or "matmul": the hot path's copy of kernels.TABLE's decisions.
_decode_fast: dict[tuple[int, int, int], str] = {}


def _one_query_by_matmul(q: torch.Tensor, mask: AttentionMask) -> bool:
    """Whether this attention is one unmasked query per row (a decode step) that the matmuls compute faster
    here: float32 on the CPU, in eager code or in a decode step recorded for replay here (an exported trace
    or a compiled graph keeps SDPA, which runs anywhere and which inductor compiles itself), and not under
    GPT2KIT_CPU_MATMUL=torch (torch's kernels everywhere: the floor the measured choices are compared with)."""
    return (
        q.shape[-2] == 1
        and mask.sdpa is None
        and not mask.is_causal
        and q.dtype is torch.float32
        and q.device.type == "cpu"
        and not matmul.is_compiling()
        and not matmul.exporting_trace()
        and matmul.cpu_matmul() != "torch"
        # ints: a trace sees traced sizes, and a recording is made per batch size anyway
        and decode_kernel(int(q.shape[0]) * int(q.shape[1]), int(q.shape[-1])) == "matmul"
    )


def decode_kernel(batch_heads: int, head_dim: int) -> str:
    """ "sdpa" or "matmul": the faster kernel here for one float32 query per row and head attending to a cache,
    for batch_heads (batch x heads) of head_dim, measured once per machine (kernels.TABLE, family
    "attn1-float32") and kept; SDPA inside a trace until eager code has decided."""
    key = (batch_heads, head_dim, torch.get_num_threads())
    hit = _decode_fast.get(key)
    if hit is None:
        macs = 2 * DECODE_TIMED_LENGTH * head_dim * batch_heads
        if macs < DECODE_MIN_MACS:
            hit = "sdpa"
        elif torch.jit.is_tracing():  # a step recorded before any eager one: no timing inside the trace
            return "sdpa"
        else:
            hit = kernels.TABLE.decide(
                "attn1-float32",
                head_dim,
                batch_heads,
                1,
                lambda rows: _decode_candidates(batch_heads, head_dim),
                floor="sdpa",
                cold=True,
                macs=macs,
            ).choice
        _decode_fast[key] = hit
    return hit


def _decode_candidates(batch_heads: int, head_dim: int) -> dict[str, object]:
    """SDPA and the matmuls on random queries and caches of DECODE_TIMED_LENGTH positions, cycled through
    copies (kernels.cold_copies) so that each call reads its keys and values from memory."""
    shape = (batch_heads, 1, DECODE_TIMED_LENGTH, head_dim)

    def kv() -> tuple[torch.Tensor, torch.Tensor]:
        return kernels.random_input(*shape), kernels.random_input(*shape)

    nbytes = 2 * math.prod(shape) * 4
    caches = itertools.cycle(kernels.cold_copies(kv(), kv, nbytes, 1))
    q = kernels.random_input(batch_heads, 1, 1, head_dim)
    scale = 1.0 / math.sqrt(head_dim)
    return {
        "sdpa": lambda: F.scaled_dot_product_attention(q, *next(caches), scale=scale),
        "matmul": lambda: _attend_matmul(q, *next(caches), scale),
    }


def _attend_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for one query per row and head: q (B, nh, 1, hs), k and v (B, nh, S, hs).
    The scale multiplies the query (hs numbers), not the scores (S)."""
    scores = torch.matmul(q * scale, k.transpose(-1, -2))
    return torch.matmul(scores.softmax(-1), v)


def _slice_linear(layer: Linear, index: torch.Tensor, dim: int) -> Linear:
    """A new Linear keeping entries `index` of the weight's dim (0: inputs, 1: outputs, with their biases),
    trainable copies on the layer's device and dtype (transformers' prune_conv1d_layer)."""
    index = index.to(layer.weight.device)
    weight = layer.weight.detach().index_select(dim, index).clone()
    bias = layer.bias.detach()
    bias = (bias.index_select(0, index) if dim == 1 else bias).clone()
    new = Linear(weight.shape[0], weight.shape[1])
    new.weight = nn.Parameter(weight)
    new.bias = nn.Parameter(bias)
    return new
