"""Text as it is generated: transformers-style streamers, and a plain iterator.

- `stream(model, tok, prompt, ...)` is a generator of text pieces, no threads needed:
  `for piece in stream(model, tok, "Once upon a time", max_new_tokens=50): print(piece, end="")`.
- `TextStreamer` prints pieces as generate() produces them; `TextIteratorStreamer` hands them to another
  thread through a queue (run generate() in a thread and iterate in the caller), as in transformers.

All three use `IncrementalDecoder`: a token can end in the middle of a UTF-8 character (GPT-2's
byte-level tokens do that for emoji and CJK), so a piece is released only once its characters are
complete; and text that might be the start of a stop string is held back until it is known not to be.
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import torch


class IncrementalDecoder:
    """Turns a growing list of token ids into new text, never splitting a character or a stop string.

    >>> from gpt2kit import GPT2TokenizerFast
    >>> dec = IncrementalDecoder(GPT2TokenizerFast.from_pretrained("gpt2"))
    >>> [dec.add([t]) for t in [15496, 995]]
    ['Hello', ' world']
    """

    def __init__(self, tokenizer, stop_strings: list[str] | None = None, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in (stop_strings or []) if s]
        self.decode_kwargs = decode_kwargs
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already released
        self.stopped = False

    def add(self, ids: list[int]) -> str:
        """Append token ids; return the text that is now safe to show ('' if none)."""
        if self.stopped:
            return ""
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, **self.decode_kwargs)
        for stop in self.stops:
            at = text.find(stop, max(0, self.emitted - len(stop) + 1))
            if at >= 0:
                self.stopped = True
                piece = text[self.emitted : at]
                self.emitted = at
                return piece
        end = len(text)
        while end > self.emitted and text[end - 1] == "\ufffd":
            end -= 1  # an incomplete UTF-8 sequence decodes to U+FFFD: wait for its next bytes
        for stop in self.stops:  # hold back a tail that could still grow into a stop string
            for k in range(min(len(stop) - 1, end - self.emitted), 0, -1):
                if stop.startswith(text[end - k : end]):
                    end -= k
                    break
        piece = text[self.emitted : end]
        self.emitted = end
        return piece

    def flush(self) -> str:
        """Whatever is left at the end (held-back text that never became a stop string)."""
        if self.stopped:
            return ""
        text = self.tokenizer.decode(self.ids, **self.decode_kwargs)
        piece = text[self.emitted :]
        self.emitted = len(text)
        return piece


class BaseStreamer:
    """What generate(streamer=...) calls: put(ids) with the prompt first, then each new token; end()."""

    def put(self, value: torch.Tensor) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class TextStreamer(BaseStreamer):
    """Writes text to a stream (stdout by default) as soon as it is complete; batch size 1.

    >>> model.generate(**tok("Hi", return_tensors="pt"), streamer=TextStreamer(tok))  # doctest: +SKIP
    """

    def __init__(
        self, tokenizer, skip_prompt: bool = False, file: TextIO | None = None, **decode_kwargs: Any
    ):
        self.decoder = IncrementalDecoder(tokenizer, **decode_kwargs)
        self.skip_prompt = skip_prompt
        self.file = file
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError("TextStreamer only supports batch size 1; stream one prompt at a time")
        ids = value.reshape(-1).tolist()
        if not self._prompt_seen:
            self._prompt_seen = True
            if self.skip_prompt:
                self.decoder = IncrementalDecoder(self.decoder.tokenizer, **self.decoder.decode_kwargs)
                return
        self.on_finalized_text(self.decoder.add(ids))

    def end(self) -> None:
        self.on_finalized_text(self.decoder.flush(), stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        out = self.file or sys.stdout
        out.write(text + ("\n" if stream_end else ""))
        out.flush()


class TextIteratorStreamer(TextStreamer):
    """Queues text for another thread: iterate over it while generate() runs in a thread.

    >>> streamer = TextIteratorStreamer(tok, skip_prompt=True)  # doctest: +SKIP
    >>> Thread(target=model.generate, kwargs=dict(**inputs, streamer=streamer)).start()  # doctest: +SKIP
    >>> for piece in streamer: print(piece, end="")  # doctest: +SKIP
    """

    _END = object()

    def __init__(
        self, tokenizer, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs: Any
    ):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.queue: queue.Queue = queue.Queue()
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.queue.put(text, timeout=self.timeout)
        if stream_end:
            self.queue.put(self._END, timeout=self.timeout)

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self.queue.get(timeout=self.timeout)
            if item is self._END:
                return
            yield item


def stream(
    model,
    tokenizer,
    prompt: str | list[int],
    stop_strings: str | list[str] | None = None,
    **generate_kwargs: Any,
) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece, as it is generated (greedy or sampling).

    Stops at eos, at max_new_tokens, or at a stop string (which is not yielded, as in OpenAI's API).
    Breaking out of the loop stops the generation.

    >>> for piece in stream(model, tok, "The meaning of life is", max_new_tokens=30):  # doctest: +SKIP
    ...     print(piece, end="", flush=True)
    """
    from gpt2kit.generation.search import decode, plan_generation

    if generate_kwargs.get("num_beams", 1) > 1:
        raise ValueError("stream() supports greedy and sampling, not beam search (num_beams > 1)")
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
    stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or [])
    generator = generate_kwargs.pop("generator", None)
    plan = plan_generation(
        model,
        input_ids,
        generate_kwargs.pop("attention_mask", None),
        generate_kwargs.pop("generation_config", None),
        tokenizer=tokenizer,
        stop_strings=stops or None,
        **generate_kwargs,
    )
    decoder = IncrementalDecoder(tokenizer, stops, skip_special_tokens=True)
    for token in decode(model, plan, generator):
        piece = decoder.add([int(token[0])])
        if piece:
            yield piece
        if decoder.stopped:
            return
    tail = decoder.flush()
    if tail:
        yield tail
