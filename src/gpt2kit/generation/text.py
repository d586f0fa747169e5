"""Text in, text out: batched completion of prompts, for the CLI and the server."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass
class Completion:
    """One generated continuation, as plain data."""

    prompt: str
    text: str  # the continuation only, special tokens dropped, cut before a stop string
    prompt_ids: list[int]
    ids: list[int]  # the continuation's token ids (pad after eos removed)
    logprobs: list[float] = field(default_factory=list)  # per token, log P(token) after the processors
    score: float | None = None  # beam search: the length-normalised sequence score
    finish_reason: str = "length"  # "stop" (eos or a stop string) or "length"


def _batches(items: Sequence[str], size: int) -> Iterator[tuple[int, Sequence[str]]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def complete(
    model,
    tokenizer,
    prompts: Sequence[str],
    batch_size: int = 8,
    stop_strings: Sequence[str] | None = None,
    progress: bool = False,
    **generate_kwargs: Any,
) -> list[Completion]:
    """Generate continuations for `prompts`, batched with left padding; num_return_sequences per prompt.

    >>> complete(model, tok, ["Hello, my dog"], max_new_tokens=10)[0].text  # doctest: +SKIP
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stops = list(stop_strings or [])
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    results: list[Completion] = []
    try:
        from gpt2kit.progress import progress_bar

        bar = progress_bar(total=len(prompts), desc="generate", unit="prompt", show=progress)
        for _, batch in _batches(list(prompts), batch_size):
            enc = tokenizer(list(batch), return_tensors="pt", padding=True)
            out = model.generate(
                enc["input_ids"].to(model.device),
                attention_mask=enc["attention_mask"].to(model.device),
                pad_token_id=tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_scores=True,
                tokenizer=tokenizer if stops else None,
                stop_strings=stops or None,
                **generate_kwargs,
            )
            results.extend(_unpack(out, enc, batch, tokenizer, stops, model))
            bar.update(len(batch))
        bar.close()
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
    return results


def _unpack(out, enc, batch, tokenizer, stops, model) -> list[Completion]:
    T = enc["input_ids"].shape[1]
    n = out.sequences.shape[0] // len(batch)
    eos = model.generation_config.eos_token_id
    eos_ids = set([eos] if isinstance(eos, int) else (eos or []))
    pad = tokenizer.pad_token_id
    if out.scores and getattr(out, "sequences_scores", None) is None:
        # greedy / sampling: log-probability of each chosen token under the processed distribution
        steps = torch.stack(out.scores, dim=1).log_softmax(-1)  # (B*n, new, V)
        chosen = out.sequences[:, T : T + steps.shape[1]]
        token_logprobs = steps.gather(-1, chosen[..., None]).squeeze(-1)
    else:
        token_logprobs = None
    completions = []
    for row in range(out.sequences.shape[0]):
        prompt_ids = enc["input_ids"][row // n][enc["attention_mask"][row // n].bool()].tolist()
        new = out.sequences[row, T:].tolist()
        finish = "length"
        cut = len(new)
        for i, t in enumerate(new):
            if t in eos_ids:
                cut, finish = i + 1, "stop"
                break
        ids = new[:cut]
        if finish == "length" and pad is not None and pad not in eos_ids:
            while ids and ids[-1] == pad:  # beams that ended early are filled with pad
                ids.pop()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        for s in stops:
            at = text.find(s)
            if at >= 0:
                text, finish = text[:at], "stop"
        logprobs = token_logprobs[row, : len(ids)].tolist() if token_logprobs is not None else []
        score = (
            float(out.sequences_scores[row]) if getattr(out, "sequences_scores", None) is not None else None
        )
        completions.append(Completion(batch[row // n], text, prompt_ids, ids, logprobs, score, finish))
    return completions
