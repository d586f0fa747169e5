"""Perplexity of a causal LM with a sliding window: the method of transformers' perplexity guide.

The text is tokenized whole. Windows of max_length tokens start every `stride` tokens; each window scores
only the tokens that no earlier window scored (its last trg_len), with everything before them as context.
The guide weights each window's mean loss by trg_len - 1 ("num_loss_tokens = num_valid_tokens - batch_size")
and divides by the sum of those weights. That weight is one less than the number of tokens the model
averaged over in every window after the first; we keep the guide's accounting all the same, so that a
number printed here can be compared with one computed by the guide's code (transformers 4.57).
"""

from __future__ import annotations

import inspect
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class PerplexityResult:
    """tokens: the guide's n_tokens (sum of trg_len - 1 over windows); loss: mean negative log-likelihood
    (nats per token); perplexity: exp(loss); windows: forward passes' worth of windows evaluated.
    perplexity_of_file also says what it scored: text_tokens, the length of the tokenized text, and rows,
    the number of rows joined by blank lines (None when a .txt file was scored whole, as written)."""

    tokens: int
    loss: float
    perplexity: float
    windows: int
    text_tokens: int | None = None
    rows: int | None = None


def plan_windows(seq_len: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, trg_len) of each window, exactly the guide's loop (which stops at the window that
    reaches the end of the text)."""
    windows, prev_end = [], 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        windows.append((begin, end, end - prev_end))
        prev_end = end
        if end == seq_len:
            break
    return windows


def _as_ids(tokenizer: Any, text: str | None, input_ids: Any) -> torch.Tensor:
    if (text is None) == (input_ids is None):
        raise ValueError("pass either text (with a tokenizer) or input_ids, not both and not neither")
    if text is not None:
        if tokenizer is None:
            raise ValueError("text needs a tokenizer to become ids; pass tokenizer=..., or pass input_ids")
        # One call for the whole text, as the guide does; verbose=False: longer than the context is the point.
        input_ids = tokenizer(text, verbose=False)["input_ids"]
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(
            f"input_ids must be one sequence, shape (T,) or (1, T); got shape {tuple(ids.shape)} "
            "(concatenate the texts first, as the guide joins them with blank lines)"
        )
    return ids


def evaluate_perplexity(
    model: torch.nn.Module,
    tokenizer: Any = None,
    text: str | None = None,
    input_ids: Sequence[int] | torch.Tensor | None = None,
    *,
    stride: int = 512,
    max_length: int | None = None,
    batch_size: int = 1,
    progress: bool = False,
) -> PerplexityResult:
    """Sliding-window perplexity of `text` (or `input_ids`) under a causal LM, as transformers' guide does.

    max_length: window length (default: model.config.n_positions); stride: 1..max_length tokens between
    window starts (smaller is slower and gives each token more context; stride == max_length is disjoint
    chunks). batch_size: windows per forward pass (same result, faster on a GPU). Runs in inference mode
    with the model in eval mode (restored afterwards). progress: a bar on a terminal, a plain line now and
    then where stderr is a file or a pipe.

    >>> r = evaluate_perplexity(model, tok, text=open("wiki.txt").read(), stride=512)  # doctest: +SKIP
    >>> r.tokens, round(r.perplexity, 2)  # doctest: +SKIP
    (287643, 16.45)
    """
    ids = _as_ids(tokenizer, text, input_ids)
    n_positions = getattr(getattr(model, "config", None), "n_positions", None)
    if max_length is None:
        if n_positions is None:
            raise ValueError("the model's config has no n_positions; pass max_length= (the window length)")
        max_length = int(n_positions)
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(
            f"max_length must be an integer of at least 2 (tokens per window), got {max_length!r}"
        )
    if n_positions is not None and max_length > n_positions:
        raise ValueError(
            f"max_length {max_length} is longer than the model's n_positions {n_positions}; use at most that"
        )
    if not isinstance(stride, int) or not 1 <= stride <= max_length:
        raise ValueError(f"stride must be an integer from 1 to max_length ({max_length}), got {stride!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    seq_len = len(ids)
    if seq_len < 2:
        raise ValueError(f"perplexity needs at least 2 tokens (a context and a target), got {seq_len}")

    windows = plan_windows(seq_len, max_length, stride)
    device = next(model.parameters()).device
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    nll_sum, n_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        from gpt2kit.progress import progress_bar

        with (
            torch.inference_mode(),
            progress_bar(total=len(windows), desc="eval", unit=" windows", show=progress) as bar,
        ):
            for group in _batches(windows, batch_size):
                T = group[0][1] - group[0][0]
                x = torch.stack([ids[b:e] for b, e, _ in group]).to(device)  # (B, T)
                # Position p of a window is scored when p >= first = max(1, T - trg_len); its logits sit at
                # p - 1. Only those positions need the vocabulary projection, the costliest matmul here.
                firsts = [max(1, T - trg) for _, _, trg in group]
                keep = T - min(firsts) + 1
                if keeps_logits:
                    logits = model(x, logits_to_keep=keep).logits  # (B, keep, V)
                else:
                    logits = model(x).logits[:, -keep:]
                for k, (_, _, trg_len) in enumerate(group):
                    first = firsts[k]
                    # fp32 cross-entropy mean over the window's targets: what the model's loss computes
                    pred = logits[k, first - 1 - (T - keep) : keep - 1].float()  # (T - first, V)
                    mean = F.cross_entropy(pred, x[k, first:]).item()
                    nll_sum += mean * (trg_len - 1)  # the guide's num_loss_tokens (see the module docstring)
                    n_tokens += trg_len - 1
                bar.update(len(group))
    finally:
        model.train(was_training)
    loss = nll_sum / n_tokens
    perplexity = math.exp(loss) if loss < 709.0 else math.inf
    return PerplexityResult(
        tokens=n_tokens, loss=loss, perplexity=perplexity, windows=len(windows), text_tokens=seq_len
    )


def _batches(windows: list[tuple[int, int, int]], batch_size: int) -> list[list[tuple[int, int, int]]]:
    """Consecutive windows of equal length, up to batch_size a group (only the last window is shorter)."""
    groups: list[list[tuple[int, int, int]]] = []
    for w in windows:
        last = groups[-1] if groups else None
        if last and len(last) < batch_size and last[0][1] - last[0][0] == w[1] - w[0]:
            last.append(w)
        else:
            groups.append([w])
    return groups


def perplexity_of_file(
    model: torch.nn.Module,
    tokenizer: Any,
    path: str | os.PathLike,
    *,
    stride: int = 512,
    max_length: int | None = None,
    column: str = "text",
    progress: bool = False,
) -> PerplexityResult:
    """evaluate_perplexity of a file's text.

    A .txt file (or standard input, "-") is scored as its text, byte for byte: read whole and tokenized once,
    its newlines as written. The rows of a .jsonl, .csv, .tsv or .parquet file (the `column` field / column)
    are joined with "\\n\\n", as transformers' perplexity guide joins WikiText's rows. result.rows says which:
    None for a text scored whole, else the number of rows joined.

    >>> perplexity_of_file(model, tok, "wiki.test.txt", stride=512).perplexity  # doctest: +SKIP
    16.45
    """
    from gpt2kit.data import STDIN, TextSource

    source = TextSource(path, column=column)  # checks the path and the format
    rows: int | None = None
    if source.format == "txt":
        if source.path == STDIN:
            raw = sys.stdin.buffer.read()
        else:
            with open(source.path, "rb") as f:
                raw = f.read()
        text = raw.decode("utf-8", "replace")
    else:
        texts = [t for t, _ in source]
        rows = len(texts)
        text = "\n\n".join(texts)
    if not text.strip():
        raise ValueError(f"{path} holds no text to evaluate; check the file (and --field for .jsonl / .csv)")
    result = evaluate_perplexity(
        model, tokenizer, text=text, stride=stride, max_length=max_length, progress=progress
    )
    result.rows = rows
    return result


__all__ = ["PerplexityResult", "evaluate_perplexity", "perplexity_of_file", "plan_windows"]
