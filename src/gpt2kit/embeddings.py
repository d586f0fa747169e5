"""Embedder: GPT-2's hidden states as fixed-size feature vectors, computed fast on a CPU.

texts -> token ids -> segments (a text, or one window of a long text) -> batches of segments of similar
length under a token budget -> GPT2Model -> the requested layers' hidden states -> pooled per text.

Why this is exact: GPT-2's attention is causal, so a real token never attends to a position after it.
Padding every sequence on the right and running the plain causal path (no attention mask, default
position ids) leaves every real token's hidden state what it would be with the text run alone; pooling
then reads only each text's own positions.

Why this is fast: the rows are sorted by length and cut into batches of rows x longest <= batch_tokens at
the points that minimise padding (plan_batches), which wastes almost no compute (~1.003 positions per real
token on log-uniform lengths), keeps the matrices big enough for the matmuls to run near peak, and bounds
memory; blocks past the deepest requested layer are skipped. On a CPU, from_pretrained packs the projections
into oneDNN's blocked layout where that measured faster on the machine (model/packed.py, timed once per
shape and cached) and runs each packed c_fc with its GELU as one oneDNN call (the activation applied to the
product's tiles while they are in cache, not in a pass over the 4 x n_embd activations of its own).

Shape legend as in the model: B batch, T positions, C n_embd; D = C x number of requested layers.

File-to-file embedding with resume and torchrun sharding (the `gpt2kit embed` command) is `embed_file`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "last", "max", "first", "none")
LONG_TEXT = ("truncate", "chunk")
DTYPES = ("float32", "bfloat16", "float16")
# Positions per batch (rows x longest row). On a CPU (124M model, 2 cores) fp32 runs as fast at 2048 as at
# 4096 and bf16 best at 4096; smaller batches starve the matmuls and 8192 is slower again (activations,
# 4 x 3072 floats a position in the MLP, fall out of cache). benchmarks/bench_embed.py --tune measures it.
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 32768}
# Below this many positions a batch runs no faster per position: on a CPU a single 128-token row runs at
# ~85% of the per-position speed of 16 x 128 (the matmuls are already wide), so only tiny batches are
# penalised; a GPU needs far bigger batches to be busy.
MIN_BATCH_TOKENS = {"cpu": 256, "cuda": 4096}


@dataclass
class EmbedStats:
    """What one `embed` call (or one file run) did; `Embedder.last_stats` holds the latest."""

    texts: int = 0
    tokens: int = 0  # real token positions run through the model (chunk windows count their overlap)
    positions: int = 0  # positions computed, padding included
    empty: int = 0  # texts with no tokens: zero vectors
    truncated: int = 0  # texts cut to max_length (long_text="truncate")
    chunked: int = 0  # texts split into windows (long_text="chunk")
    seconds: float = 0.0

    def add(self, other: EmbedStats) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    @property
    def padding_overhead(self) -> float:
        """Positions computed per real token (1.0 = no padding waste)."""
        return self.positions / self.tokens if self.tokens else 1.0

    def summary(self, empty: bool = True) -> str:
        """One line; empty=False leaves out the empty count (a file report names those rows itself)."""
        rate = self.texts / self.seconds if self.seconds else 0.0
        line = (
            f"{self.texts} texts, {self.tokens} tokens in {self.seconds:.1f} s ({rate:.1f} texts/s, "
            f"{self.tokens / self.seconds if self.seconds else 0.0:.0f} tokens/s, "
            f"{self.padding_overhead:.2f} positions computed per token)"
        )
        notes = [f"{self.empty} empty (zero vectors)"] if self.empty and empty else []
        if self.truncated:
            notes.append(f"{self.truncated} truncated")
        if self.chunked:
            notes.append(f"{self.chunked} split into windows")
        return line + "".join(f"; {n}" for n in notes)


@dataclass(frozen=True)
class Segment:
    """One model input: the ids of text `text`, or of one window of it.

    Positions before `keep` are context only (the overlap with the previous window); pooling reads
    positions keep .. len(ids). `first` / `last`: the window holds the text's first / last token.
    """

    text: int
    ids: Sequence[int]
    keep: int = 0
    first: bool = True
    last: bool = True
    window: int = 0  # the window's number within its text


def windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Cut n tokens into windows of at most max_length, starting every `stride` tokens.

    Returns (start, end, keep): window ids[start:end], whose positions from `keep` on are tokens no earlier
    window pooled. Every token is pooled exactly once, and every token after the first window sees at least
    max_length - stride tokens of context (as in transformers' sliding-window perplexity).

    >>> windows(10, 4, 2)
    [(0, 4, 0), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    """
    out, prev_end, start = [], 0, 0
    while True:
        end = min(start + max_length, n)
        out.append((start, end, prev_end - start))
        if end == n:
            return out
        prev_end, start = end, start + stride


def plan_batches(lengths: Sequence[int], batch_tokens: int, min_tokens: int = 256) -> list[list[int]]:
    """Group indices of `lengths` into batches with rows x longest <= batch_tokens, wasting least compute.

    The rows are sorted longest first and cut into consecutive runs; the cuts minimise the positions
    computed, padding included, where a batch smaller than `min_tokens` positions is charged as that many
    (tiny batches do not run faster per position). Exact dynamic programming over the cut points, so a few
    long texts of different lengths run alone instead of padded to each other. A row longer than the
    budget goes alone. Returns lists of indices into `lengths`, longest batch first.

    >>> plan_batches([300, 3, 290, 18, 20, 17], 4096)
    [[0], [2], [4, 3, 5, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    n = len(order)
    ls = np.array([lengths[i] for i in order], dtype=np.int64)
    best = np.zeros(n + 1)  # best[i]: least cost of the first i rows
    cut = np.zeros(n + 1, dtype=np.int64)  # the last batch of that plan starts at row cut[i]
    for i in range(1, n + 1):
        # the last batch is rows j..i-1, as wide as row j; it may hold at most budget // width(i-1) rows
        j = np.arange(max(0, i - max(1, batch_tokens // max(int(ls[i - 1]), 1))), i)
        size = (i - j) * ls[j]
        cost = best[j] + np.maximum(size, min_tokens)
        cost[(size > batch_tokens) & (j != i - 1)] = np.inf
        k = int(np.argmin(cost))
        best[i], cut[i] = cost[k], j[k]
    batches, i = [], n
    while i > 0:
        batches.append(order[cut[i] : i])
        i = int(cut[i])
    return batches[::-1]


# GPT-2's activations that are GELU's tanh approximation (model/block.py's ACT_FNS): oneDNN applies it to
# the packed c_fc's output tile by tile, while it is in cache, instead of in a pass of its own.
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class _PackedTanhGelu(torch.nn.Module):
    """gelu_tanh(x @ W + b) in one oneDNN call (the product with a post-op): a packed c_fc and its activation."""

    def __init__(self, packed: torch.nn.Module) -> None:
        super().__init__()
        self.inner = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.inner
        y = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, p.in_features), p.packed_weight, p.bias, "gelu", [], "tanh"
        )
        return y.view(*x.shape[:-1], p.out_features)


class _StopForward(Exception):
    """Raised by the capture hook of the deepest requested layer: the blocks after it are not needed."""


class Embedder:
    """Texts -> one vector per text from GPT-2's hidden states, pooled over each text's own tokens.

    layer: an index into transformers' `hidden_states` (0 = embeddings, i = after block i, -1 = the final
    LayerNorm's output, i.e. `last_hidden_state`), or a list of them, concatenated in that order.
    pooling: "mean" | "max" over the text's tokens, "first" | "last" token, or "none" (a (T, D) array per
    text). normalize: divide each vector (each token's, for "none") by its L2 norm.
    max_length: tokens per model input (default: the model's context, n_positions).
    long_text: "truncate" keeps the first max_length tokens (counted in `last_stats.truncated` and logged);
    "chunk" runs windows of max_length starting every `stride` tokens (default max_length // 2) and pools
    every token once, so "mean" averages the windows weighted by the tokens each contributes.
    batch_tokens: padded positions per batch (memory and speed; results do not depend on it).
    threads: calls torch.set_num_threads (process-wide); by default torch's own choice, one per core, is
    kept. On a machine other jobs are also using, fewer threads can be much faster: two threads that wait
    on each other at every matmul lose whenever one of them is descheduled.

    In float32, each vector equals the same text run alone through transformers 4.57 (`hidden_states[layer]`
    pooled over its tokens) within 1e-4. dtype="bfloat16" runs the model in bf16 (pooling stays in fp32),
    for CPUs with AVX512-BF16 or AMX: on the project's AMD EPYC (AVX512-BF16) the 124M model embedded
    2.7-2.9x faster than in fp32, and its mean-pooled vectors had a cosine similarity to the fp32 ones of
    0.99995 at worst, 0.99998 on average (300 texts, random weights; benchmarks/RESULTS.md).

    >>> emb = Embedder.from_pretrained("path/to/gpt2", layer=-1, pooling="mean")  # doctest: +SKIP
    >>> emb.embed(["a first text", "and a second"]).shape  # doctest: +SKIP
    (2, 768)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        layer: int | Sequence[int] = -1,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int | None = None,
        long_text: str = "truncate",
        stride: int | None = None,
        batch_tokens: int | None = None,
        threads: int | None = None,
    ) -> None:
        trunk = getattr(model, model.base_model_prefix) if getattr(model, "base_model_prefix", "") else model
        if not hasattr(trunk, "h") or not hasattr(trunk, "wte"):
            raise TypeError(f"Embedder needs a gpt2kit GPT-2 model, got {type(model).__name__}")
        self.model = trunk.eval()
        self.tokenizer = tokenizer
        self.config = trunk.config
        n_layer = self.config.n_layer

        layers = [layer] if isinstance(layer, int) else list(layer)
        if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise TypeError(f"layer must be an int or a non-empty list of ints, got {layer!r}")
        for i in layers:
            if not -(n_layer + 1) <= i <= n_layer:
                raise ValueError(
                    f"layer {i} is out of range: this model has hidden states 0..{n_layer} "
                    f"(or -{n_layer + 1}..-1 counting from the end; -1 is the last)"
                )
        self.layers = [i % (n_layer + 1) for i in layers]
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        self.normalize = bool(normalize)
        if max_length is None:
            max_length = self.config.n_positions
        if not isinstance(max_length, int) or not 1 <= max_length <= self.config.n_positions:
            raise ValueError(
                f"max_length must be an int in [1, {self.config.n_positions}] (the model's context), "
                f"got {max_length!r}"
            )
        self.max_length = max_length
        if long_text not in LONG_TEXT:
            raise ValueError(f"long_text must be 'truncate' or 'chunk', got {long_text!r}")
        self.long_text = long_text
        if stride is None:
            stride = max(1, max_length // 2)
        if not isinstance(stride, int) or not 1 <= stride <= max_length:
            raise ValueError(f"stride must be an int in [1, max_length={max_length}], got {stride!r}")
        self.stride = stride
        if batch_tokens is None:
            batch_tokens = DEFAULT_BATCH_TOKENS.get(self.device.type, DEFAULT_BATCH_TOKENS["cpu"])
        if not isinstance(batch_tokens, int) or batch_tokens < 1:
            raise ValueError(f"batch_tokens must be a positive int, got {batch_tokens!r}")
        self.batch_tokens = batch_tokens
        if threads is not None:
            if not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be a positive int, got {threads!r}")
            torch.set_num_threads(threads)
        self.last_stats = EmbedStats()
        self._fingerprint: str | None = None  # set when from_pretrained packs the weights

    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str | os.PathLike,
        *,
        layer: int | Sequence[int] = -1,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int | None = None,
        long_text: str = "truncate",
        stride: int | None = None,
        dtype: str | torch.dtype = "float32",
        batch_tokens: int | None = None,
        device: str | torch.device | None = None,
        tokenizer: Any = None,
        threads: int | None = None,
        local_files_only: bool = False,
        pack: bool = True,
    ) -> Embedder:
        """Load the model (and its tokenizer) from a checkpoint folder or a cached hub name.

        A folder without tokenizer files gets GPT-2's bundled tokenizer if the vocabulary size is GPT-2's
        (50257), as every GPT-2 checkpoint shares it. device: None = CUDA if available, else CPU.
        pack: on a CPU, reorder each projection's weight once into oneDNN's blocked layout where that measured
        faster here at the row counts embedding runs (`pack_weights`, timed once per shape and machine and
        cached); the model loaded here is the Embedder's own, and the vectors agree to float rounding.
        """
        from gpt2kit import hub
        from gpt2kit.model import GPT2Model
        from gpt2kit.tokenizer import AutoTokenizer

        name = str(dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r}: CUDA is not available on this machine; use device 'cpu'"
            )
        folder = hub.find_model_dir(
            path_or_name, local_files_only=local_files_only, download_ok=True, files=("config.json",)
        )
        model = GPT2Model.from_pretrained(folder, dtype=name, device=str(device))
        model.name_or_path = str(path_or_name)
        if tokenizer is None:
            has_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()
            if has_tokenizer:
                tokenizer = AutoTokenizer.from_pretrained(folder)
            elif model.config.vocab_size == 50257:
                logger.info("%s has no tokenizer files; using GPT-2's bundled tokenizer", folder)
                tokenizer = AutoTokenizer.from_pretrained("gpt2")
            else:
                raise FileNotFoundError(
                    f"{folder} has no tokenizer files (vocab.json + merges.txt or tokenizer.json) and its "
                    f"vocabulary ({model.config.vocab_size}) is not GPT-2's; save the tokenizer into the "
                    "folder or pass tokenizer="
                )
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        emb = cls(
            model,
            tokenizer,
            layer=layer,
            pooling=pooling,
            normalize=normalize,
            max_length=max_length,
            long_text=long_text,
            stride=stride,
            batch_tokens=batch_tokens,
            threads=threads,
        )
        if pack:
            emb._pack()
        return emb

    def _pack(self) -> None:
        """Pack the projections where packing measured faster on this machine, for batch_tokens rows (after
        threads are set: the decisions are per thread count). Only for a model this Embedder owns."""
        from gpt2kit.model.packed import PackedLinear, pack_weights, packing_available

        if self.device.type != "cpu" or self.dtype not in (torch.float32, torch.bfloat16):
            return
        if not packing_available(self.dtype):
            return
        self._fingerprint = model_fingerprint(self.model)  # of the weights as loaded, before the reorder
        pack_weights(self.model, batch_size=self.batch_tokens, lm_head=False)
        if self.config.activation_function in _TANH_GELU:
            for block in self.model.h:
                if isinstance(block.mlp.c_fc, PackedLinear):
                    block.mlp.c_fc = _PackedTanhGelu(block.mlp.c_fc)
                    block.mlp.act = _identity

    # --- properties --------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def dim(self) -> int:
        """D, the width of a vector: n_embd x number of requested layers."""
        return self.config.n_embd * len(self.layers)

    def options(self) -> dict[str, Any]:
        """Everything that decides the vectors (not how fast they come): for resume manifests and logs."""
        return dict(
            layers=self.layers,
            pooling=self.pooling,
            normalize=self.normalize,
            max_length=self.max_length,
            long_text=self.long_text,
            stride=self.stride if self.long_text == "chunk" else None,
            dtype=str(self.dtype).removeprefix("torch."),
            dim=self.dim,
            model=getattr(self.model, "name_or_path", None),
            model_fingerprint=self._fingerprint or model_fingerprint(self.model),
        )

    # --- the public calls --------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray | list[np.ndarray]:
        """texts (N strings) -> float32 array (N, D) in input order; for pooling="none", a list of (T_i, D).

        progress: a tqdm bar on stderr (tokens/s, texts/s, ETA); None shows it only on a terminal.
        An empty text gets a zero vector (counted in `last_stats.empty`).
        """
        if isinstance(texts, str):
            raise TypeError("embed takes a list of texts, got one str; wrap it: embed([text])")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is a {type(t).__name__}, not a str")
        return self.embed_ids(self.tokenize(texts), progress=progress)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, as transformers' tokenizer gives them (no truncation here)."""
        if not texts:
            return []
        return self.tokenizer(list(texts), return_attention_mask=False, verbose=False)["input_ids"]

    def embed_ids(
        self, ids: Sequence[Sequence[int]], progress: bool | None = None
    ) -> np.ndarray | list[np.ndarray]:
        """Like `embed`, for texts already tokenized (N lists of token ids)."""
        from tqdm import tqdm

        stats = EmbedStats(texts=len(ids))
        segs = self.segments(ids, stats)
        total = sum(len(s.ids) for s in segs)
        show = None if progress is None else not progress
        with tqdm(total=total, unit="tok", unit_scale=True, disable=show, dynamic_ncols=True) as bar:
            t0, done = time.perf_counter(), 0

            def on_batch(texts: int, tokens: int) -> None:
                nonlocal done
                done += texts
                bar.update(tokens)
                bar.set_postfix_str(
                    f"{done / max(time.perf_counter() - t0, 1e-9):.1f} texts/s", refresh=False
                )

            out = self.run(segs, len(ids), stats, on_batch)
        self.last_stats = stats
        if stats.truncated:
            logger.warning(
                "%d of %d texts were longer than max_length=%d tokens and were truncated "
                "(long_text='chunk' embeds them whole)",
                stats.truncated,
                stats.texts,
                self.max_length,
            )
        return out

    # --- the work ----------------------------------------------------------------------------------------

    def segments(self, ids: Sequence[Sequence[int]], stats: EmbedStats) -> list[Segment]:
        """Model inputs for each text: itself, its first max_length tokens, or its windows.

        pooling="first" runs each text's first token alone: attention is causal, so its hidden states are
        those it has in the whole text, and nothing after it is needed (nor truncated, nor chunked).
        """
        segs = []
        L = self.max_length
        for i, x in enumerate(ids):
            n = len(x)
            if n == 0:
                stats.empty += 1
            elif self.pooling == "first":
                segs.append(Segment(i, x[:1]))
            elif n <= L:
                segs.append(Segment(i, x))
            elif self.long_text == "truncate":
                stats.truncated += 1
                segs.append(Segment(i, x[:L]))
            else:
                stats.chunked += 1
                ws = windows(n, L, self.stride)
                segs += [
                    Segment(i, x[s:e], keep, first=k == 0, last=k == len(ws) - 1, window=k)
                    for k, (s, e, keep) in enumerate(ws)
                ]
        return segs

    def run(
        self,
        segs: Sequence[Segment],
        n_texts: int,
        stats: EmbedStats,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """Segments of n_texts texts -> their pooled vectors; adds the work done to `stats`.

        on_batch(texts finished, real tokens) is called after each batch (for progress bars).
        """
        t0 = time.perf_counter()
        N, D = n_texts, self.dim
        pooling = self.pooling
        if pooling == "none":
            parts: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(N)]
        else:
            acc = torch.full((N, D), -torch.inf if pooling == "max" else 0.0)
            counts = torch.zeros(N)
        dev = self.device
        min_tokens = MIN_BATCH_TOKENS.get(dev.type, MIN_BATCH_TOKENS["cpu"])
        for batch in plan_batches([len(s.ids) for s in segs], self.batch_tokens, min_tokens):
            rows = [segs[j] for j in batch]
            B, T = len(rows), len(rows[0].ids)
            x = torch.zeros(B, T, dtype=torch.long)  # right padding: pads sit after every real token
            for b, s in enumerate(rows):
                x[b, : len(s.ids)] = torch.as_tensor(s.ids, dtype=torch.long)
            lengths = torch.tensor([len(s.ids) for s in rows], device=dev)
            keep = torch.tensor([s.keep for s in rows], device=dev)
            text = torch.tensor([s.text for s in rows])
            # Pool where the model ran (a GPU sends back B vectors, not B x T); accumulate on the CPU.
            h = self.hidden_states(x.to(dev)).float()  # (B, T, D)
            pos = torch.arange(T, device=dev)
            valid = (pos[None] >= keep[:, None]) & (pos[None] < lengths[:, None])  # (B, T)
            if pooling == "mean":
                acc.index_add_(0, text, torch.bmm(valid[:, None].float(), h)[:, 0].cpu())
                counts.index_add_(0, text, valid.sum(1).float().cpu())
            elif pooling == "max":
                vals = h.masked_fill(~valid[..., None], -torch.inf).amax(1).cpu()
                acc.scatter_reduce_(0, text[:, None].expand(-1, D), vals, "amax")
            elif pooling == "first":
                first = torch.tensor([s.first for s in rows])
                acc[text[first]] = h[first.to(dev), 0].cpu()
            elif pooling == "last":
                last = torch.tensor([s.last for s in rows], device=dev)
                acc[text[last.cpu()]] = h[last, lengths[last] - 1].cpu()
            else:
                h = h.cpu()
                for b, s in enumerate(rows):
                    parts[s.text].append((s.window, h[b, s.keep : len(s.ids)].clone()))
            real = int(lengths.sum())
            stats.tokens += real
            stats.positions += B * T
            if on_batch is not None:
                on_batch(sum(s.last for s in rows), real)

        if pooling == "none":
            out_list = []
            for text_parts in parts:
                v = (
                    torch.cat([p for _, p in sorted(text_parts, key=lambda wp: wp[0])])
                    if text_parts
                    else torch.zeros(0, D)
                )
                if self.normalize:
                    v = torch.nn.functional.normalize(v, dim=-1)
                out_list.append(v.numpy())
            stats.seconds += time.perf_counter() - t0
            return out_list
        if pooling == "mean":
            acc /= counts.clamp(min=1)[:, None]
        elif pooling == "max":
            acc[torch.isinf(acc).all(1)] = 0.0  # empty texts
        if self.normalize:
            acc = torch.nn.functional.normalize(acc, dim=-1)
        stats.seconds += time.perf_counter() - t0
        return acc.numpy()

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T), right-padded -> the requested layers' hidden states, concatenated: (B, T, D).

        Runs the model's causal SDPA path with no attention mask. Layers below the last are captured with
        forward hooks, and the forward stops after the deepest one needed.
        """
        trunk, n_layer = self.model, self.config.n_layer
        captured: dict[int, torch.Tensor] = {}
        deepest = max(self.layers)

        def capture(layer: int):
            def hook(module, args, output):
                captured[layer] = output[0] if isinstance(output, tuple) else output
                if layer == deepest:
                    raise _StopForward

            return hook

        handles = [
            (trunk.drop if i == 0 else trunk.h[i - 1]).register_forward_hook(capture(i))
            for i in sorted(set(self.layers))
            if i != n_layer
        ]
        try:
            with torch.inference_mode(), contextlib.suppress(_StopForward):
                out = trunk(input_ids=input_ids, use_cache=False, output_hidden_states=False)
                captured[n_layer] = out.last_hidden_state
        finally:
            for handle in handles:
                handle.remove()
        hs = [captured[i] for i in self.layers]
        return hs[0] if len(hs) == 1 else torch.cat(hs, dim=-1)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights (names, shapes and sums): tells a resumed run it has the same model."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            h.update(f"{name}{tuple(p.shape)}{float(p.double().sum()):.10e}".encode())
    return h.hexdigest()[:16]


# --- files: `gpt2kit embed` ------------------------------------------------------------------------------

CHUNK_ROWS = 1024  # rows per part file: the most work an interrupted run loses
FINGERPRINT_SUFFIX = ".fingerprint.json"  # OUTPUT + this: how a finished OUTPUT was made
# An input up to this size is hashed whole for the fingerprint (~0.1 s); a larger one by its size and its
# first and last MiB, which tells apart any two inputs a user is likely to confuse.
FULL_HASH_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20
# Fingerprint keys that describe a run but do not decide its vectors: a difference never refuses a resume.
_FINGERPRINT_INFO = ("model.name", "input.path", "input.mtime", "rows")


def fingerprint_path(output: str | os.PathLike) -> Path:
    """Where `embed_file` records how OUTPUT was made: OUTPUT.fingerprint.json, next to it."""
    output = Path(output)
    return output.with_name(output.name + FINGERPRINT_SUFFIX)


def _file_hash(path: str) -> dict[str, Any]:
    """The input file's content identity: its sha256 if small, else the hash of its first and last MiB."""
    size = os.path.getsize(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            while block := f.read(1 << 20):
                h.update(block)
            return dict(size=size, sha256=h.hexdigest())
        h.update(f.read(_EDGE_BYTES))
        f.seek(size - _EDGE_BYTES)
        h.update(f.read(_EDGE_BYTES))
    return dict(size=size, sha256_first_last_mib=h.hexdigest())


def _tokenizer_hash(tokenizer: Any) -> str | None:
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        return None
    vocab = sorted(get_vocab().items())
    return hashlib.sha256(repr(vocab).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def run_fingerprint(options: dict[str, Any], tokenizer: Any, source: Any, fmt: str) -> dict[str, Any]:
    """Everything that decides what `embed_file` writes: the model (its weights' and vocabulary's hashes),
    the options that change the vectors (`Embedder.options()`), the input's identity and the output format.

    `batch_tokens`, `chunk_rows`, threads and the device change only how fast the vectors come, so a
    finished output stays valid across them.
    """
    from gpt2kit import data

    options = dict(options)
    model = dict(
        name=options.pop("model", None),
        weights=options.pop("model_fingerprint", None),
        tokenizer=_tokenizer_hash(tokenizer),
    )
    described = source.describe()
    if source.path == data.STDIN:
        described["stdin"] = True
    else:
        described.update(_file_hash(source.path))
    return dict(version=1, model=model, options=options, input=described, output=fmt)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_fingerprint(output: Path, current: dict[str, Any]) -> None:
    """--resume on a finished OUTPUT: keep it only if the run that wrote it is this run; else say what differs."""
    path = fingerprint_path(output)
    fix = f"pass --overwrite to embed again into {output}, or write to another path"
    if current["input"].get("stdin"):
        raise ValueError(
            f"--resume: {output} is already complete, and standard input cannot be checked against the run "
            f"that wrote it; {fix}"
        )
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"--resume: {output} exists but {path.name} (how it was made) does not, so it may come from "
            f"another model, input or options; {fix}"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--resume: cannot read {path} ({e}); {fix}") from None
    if not isinstance(old, dict):
        raise ValueError(f"--resume: {path} is not a gpt2kit embed fingerprint; {fix}")
    was, now = _flat(old), _flat(current)
    changed = [key for key in sorted(set(was) | set(now)) if was.get(key) != now.get(key)]

    def show(value: Any) -> str:  # hashes in full would drown the message
        return repr(value[:12] + "...") if isinstance(value, str) and len(value) > 24 else repr(value)

    differ = [
        f"{k}={show(was.get(k))} there, {show(now.get(k))} now" for k in changed if k not in _FINGERPRINT_INFO
    ]
    if differ:
        raise ValueError(f"--resume: {output} was made by a different run ({'; '.join(differ)}); {fix}")
    for key in ("input.path", "model.name"):
        if key in changed:
            logger.warning("--resume: the %s changed (%s -> %s)", key, was.get(key), now.get(key))


@dataclass
class FileReport:
    """What `embed_file` did: rows written, the model's work (summed over ranks and resumed parts), and
    what the reader repaired."""

    output: str
    rows: int
    stats: EmbedStats
    read: Any  # data.ReadReport
    resumed_chunks: int = 0
    kept: bool = False  # the output was already complete, made by the same run: nothing was written

    def summary(self) -> str:
        if self.kept:
            return f"kept {self.output}: already complete, made by this same run (--overwrite embeds again)"
        s = f"wrote {self.rows} vectors to {self.output}: {self.stats.summary(empty=False)}"
        if self.resumed_chunks:
            s += f"; {self.resumed_chunks} chunks from the interrupted run"
        read = self.read.summary()
        return s + (f"; {read}" if read else "")


def _dist_env() -> tuple[int, int, int, int]:
    """(rank, world size, local rank, local world size) from torchrun's environment; (0, 1, 0, 1) without."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    return int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")), local_world


def _on_rank0(fn: Callable[[], Any], rank: int, world: int) -> Any:
    """Run fn on rank 0 only and give every rank its result; an error there is raised on every rank."""
    if world == 1:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # every rank must hear of it, or the others wait forever
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def embed_file(
    model: str | os.PathLike | Embedder,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    input_format: str | None = None,
    column: str = "text",
    keep: Sequence[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool | None = None,
    **options: Any,
) -> FileReport:
    """Embed every text of `input` into `output`, resumably; under torchrun, split across the ranks.

    input: .txt (a text per line), .jsonl (`column` = the field), .csv / .tsv / .parquet (`column`), or
    "-" for standard input. output: .npy (N x D), .parquet (id, the `keep` columns, vector) or .jsonl.
    options: Embedder.from_pretrained's (layer, pooling, dtype, ...), when `model` is a path or name.

    The input is cut into chunks of `chunk_rows` rows; each finished chunk is stored in OUTPUT.parts/, and
    the output is assembled from them at the end, atomically. A run stopped at any point (Ctrl-C, kill -9)
    leaves no partial output, and with resume=True goes on from the finished chunks. Under torchrun
    (WORLD_SIZE > 1) rank r embeds chunks r, r + world, ...; rank 0 assembles after a barrier.

    A finished OUTPUT gets OUTPUT.fingerprint.json (`run_fingerprint`: model, options, input, format). An
    existing OUTPUT is never replaced silently: resume=True keeps it only when its fingerprint matches this
    run (and says what differs otherwise), overwrite=True embeds again and replaces it; with neither, the
    call is refused.

    >>> embed_file("path/to/gpt2", "reviews.csv", "features.parquet", column="review", keep=["label"])  # doctest: +SKIP
    """
    from gpt2kit import data
    from gpt2kit.progress import loading, progress_bar

    rank, world, local_rank, local_world = _dist_env()
    source = data.TextSource(input, input_format, column, keep)
    fmt = data.output_format(output)
    output = Path(output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"the output's folder {output.parent} does not exist; create it first")
    if fmt == "npy" and keep:
        raise ValueError("a .npy output holds only the vectors; to keep columns, write .parquet or .jsonl")
    for name in ("id", "vector"):
        if name in keep:
            raise ValueError(f"cannot keep a column named {name!r}: the output has its own {name!r} column")
    pooling = model.pooling if isinstance(model, Embedder) else options.get("pooling", "mean")
    if fmt == "npy" and pooling == "none":
        raise ValueError(
            "pooling='none' gives a (T, D) array per text, which .npy cannot hold; write .parquet or .jsonl"
        )
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    if resume and overwrite:
        raise ValueError(
            "--resume keeps what an earlier run made and --overwrite throws it away; choose one of them"
        )
    if world > 1 and source.path == data.STDIN:
        raise ValueError("under torchrun every rank reads the input itself: pass a file, not standard input")

    dist = None
    if world > 1:
        import torch.distributed as dist

        cuda = torch.cuda.is_available() and options.get("device") in (None, "cuda")
        if cuda:
            options["device"] = f"cuda:{local_rank}"
            torch.cuda.set_device(local_rank)
        elif options.get("threads") is None:
            # torchrun sets OMP_NUM_THREADS=1; share the cores between this machine's ranks instead.
            options["threads"] = max(1, len(os.sched_getaffinity(0)) // local_world)
        if not dist.is_initialized():
            from datetime import timedelta

            # Ranks wait for each other at the end, possibly for hours on uneven inputs.
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(days=7))
    try:
        if isinstance(model, Embedder):
            embedder = model
        else:
            with loading(model):
                embedder = Embedder.from_pretrained(model, **options)
        store = data.PartStore(output)
        embedder_options = embedder.options()
        manifest = dict(
            version=1,
            input=source.describe(),
            options=embedder_options,
            tokenizer=_tokenizer_hash(embedder.tokenizer),
            chunk_rows=chunk_rows,
            output=fmt,
        )
        fingerprint: dict[str, Any] = {}  # rank 0's: written next to the output at the end

        def prepare() -> bool:
            """Rank 0: decide between embedding (True) and keeping a finished output (False)."""
            fingerprint.update(run_fingerprint(embedder_options, embedder.tokenizer, source, fmt))
            if overwrite:
                store.remove()
            elif store.folder.exists():
                if not resume:
                    raise ValueError(
                        f"{store.folder} holds the finished chunks of an interrupted run; add --resume to go "
                        "on from there, or --overwrite to start over"
                    )
            elif output.exists():
                if not resume:
                    raise ValueError(
                        f"{output} already exists; add --resume to keep it if this same run made it (checked "
                        f"against {fingerprint_path(output).name}), --overwrite to replace it, or write to "
                        "another path"
                    )
                _check_fingerprint(output, fingerprint)
                return False
            # From here on the output will be replaced: its old fingerprint no longer describes it.
            fingerprint_path(output).unlink(missing_ok=True)
            store.start(manifest, resume)
            return True

        if not _on_rank0(prepare, rank, world):
            logger.warning(
                "%s is already complete, made by this same run; nothing to resume (--overwrite embeds again)",
                output,
            )
            return FileReport(str(output), 0, EmbedStats(), source.report, kept=True)

        total = source.count() if (rank == 0 and progress is not False) else None
        if total is not None and world > 1:  # this rank's share: chunks rank, rank + world, ...
            total = sum(
                min(chunk_rows, total - k * chunk_rows) for k in range(rank, -(-total // chunk_rows), world)
            )
        # The bar counts tokens, so that a long text moves it too; its total is the tokens of the chunks
        # tokenized so far plus the other texts at their mean. The texts are counted beside it.
        bar = progress_bar(desc="embed", unit="tok", unit_scale=True, show=progress if rank == 0 else False)
        resumed = n_chunks = rows = 0
        texts_done = seen_texts = seen_tokens = 0
        try:
            with bar:
                for k, chunk in enumerate(data.chunks(source, chunk_rows)):
                    n_chunks, rows = k + 1, rows + len(chunk)
                    if k % world != rank:
                        continue
                    texts = [t for t, _ in chunk]
                    digest = data.text_hash(texts)
                    done = store.finished(k)
                    if done is not None:
                        if done["hash"] != digest:
                            raise ValueError(
                                f"--resume: rows {k * chunk_rows}..{k * chunk_rows + len(chunk) - 1} of "
                                f"{source.name} differ from the interrupted run's; delete {store.folder} to start over"
                            )
                        resumed += 1
                        if total is not None:
                            total -= len(chunk)
                        continue

                    stats = EmbedStats(texts=len(texts))
                    segs = embedder.segments(embedder.tokenize(texts), stats)
                    seen_texts += len(texts)
                    seen_tokens += sum(len(s.ids) for s in segs)
                    all_texts = max(total or 0, seen_texts)
                    bar.total = seen_tokens + round((all_texts - seen_texts) * seen_tokens / seen_texts)
                    bar.refresh()

                    def on_batch(n_texts: int, n_tokens: int, all_texts: int = all_texts) -> None:
                        nonlocal texts_done
                        texts_done += n_texts
                        bar.set_postfix_str(f"{texts_done:,}/{all_texts:,} texts", refresh=False)
                        bar.update(n_tokens)

                    vectors = embedder.run(segs, len(texts), stats, on_batch)
                    texts_done += stats.empty  # empty texts have no batch
                    columns = {name: [kept[i] for _, kept in chunk] for i, name in enumerate(source.keep)}
                    block = data.VectorBlock(
                        np.arange(k * chunk_rows, k * chunk_rows + len(chunk)), vectors, columns
                    )
                    store.write(k, block, dict(hash=digest, stats=asdict(stats)))
        except KeyboardInterrupt:
            logger.warning(
                "interrupted: the finished chunks are kept in %s; run the same command with --resume to go on",
                store.folder,
            )
            raise
        except Exception:
            # An input error before any chunk finished (a missing column, bad JSON on line 1) leaves nothing
            # worth resuming: remove the folder, so that the fixed command runs without --resume.
            if rank == 0 and not any(store.folder.glob("part-*.json")):
                store.remove()
            raise

        if dist is not None:
            dist.barrier()
        total_stats = EmbedStats()
        if rank == 0:
            for k in range(n_chunks):
                meta = store.finished(k)
                if meta is None:
                    raise RuntimeError(f"chunk {k} of {output} was not written by any rank")
                total_stats.add(EmbedStats(**meta["stats"]))
            if n_chunks:
                store.assemble(n_chunks, rows)
            else:  # an empty input still gets its (empty) output
                data.write_vectors(output, np.zeros((0, embedder.dim), np.float32))
                store.remove()
            # After the output: a run killed in between leaves an output without a fingerprint, which
            # --resume refuses (safe), never an output with another run's fingerprint.
            data.atomic_write_text(
                fingerprint_path(output),
                json.dumps(dict(fingerprint, rows=rows), indent=2, sort_keys=True) + "\n",
            )
        if dist is not None:
            dist.barrier()  # nobody leaves (and tears the group down) before the output exists
        report = FileReport(str(output), rows, total_stats, source.report, resumed)
        if rank == 0 and total_stats.truncated:
            logger.warning(
                "%d texts were longer than max_length=%d tokens and were truncated (--long-text chunk embeds "
                "them whole)",
                total_stats.truncated,
                embedder.max_length,
            )
        return report
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
