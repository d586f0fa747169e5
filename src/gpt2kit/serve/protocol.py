"""OpenAI's request and error shapes: parse and validate JSON bodies into plain dataclasses.

Pure Python (no torch, no Starlette), so the rules can be read and tested on their own. Every rejection is
an `APIError` whose message names the parameter, the bad value and what to send instead; the app turns it
into OpenAI's error body `{"error": {"message", "type", "param", "code"}}` with a 4xx status.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

MAX_LOGPROBS = 5  # OpenAI's limit for the legacy completions endpoint
# OpenAI allows 4 stop sequences; local tools written for vLLM send more (lm-evaluation-harness tasks up to
# ~10), and vLLM has no limit. The default bound is large; `gpt2kit serve --max-stop` changes it.
MAX_STOP = 64
MAX_EMBED_INPUTS = 2048  # OpenAI: at most 2048 inputs per embeddings request


class APIError(Exception):
    """An error the client caused (or back-pressure); rendered as OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 (OpenAI's field name)
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(param: str, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# --- field checks -------------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_finite(x: Any) -> bool:
    """A JSON number that is not nan or +-Infinity (Python's json reads those) and fits in a float."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer literal beyond a float's range
        return False


def _number(
    body: dict, name: str, default: float, lo: float, hi: float = math.inf, lo_open: bool = False
) -> float:
    """A finite number in [lo, hi] ((lo, hi] with lo_open); nan and infinities are refused everywhere."""
    value = body.get(name)
    if value is None:
        return default
    if hi == math.inf:
        span = f"> {lo}" if lo_open else f">= {lo}"
    else:
        span = f"in {'(' if lo_open else '['}{lo}, {hi}]"
    if not _is_finite(value):
        raise _bad(name, f"'{name}' must be a finite number {span}, got {_short(value)}")
    if value < lo or (lo_open and value == lo) or value > hi:
        raise _bad(name, f"'{name}' must be {span}, got {value}")
    return float(value)


def _integer(body: dict, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value):
        raise _bad(name, f"'{name}' must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        span = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise _bad(name, f"'{name}' must be {span}, got {value}")
    return value


def _boolean(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, f"'{name}' must be true or false, got {value!r}")
    return value


def check_model(body: dict, served: set[str]) -> str:
    """The `model` field must name the served model (404 otherwise, as OpenAI answers)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(
            "model", f"'model' must be the served model's name (one of {sorted(served)}), got {model!r}"
        )
    if model not in served:
        raise APIError(
            404,
            f"The model '{model}' does not exist; this server serves {sorted(served)} (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )
    return model


def token_lists(value: Any, name: str, vocab_size: int, encode) -> tuple[list[list[int]], list[str | None]]:
    """OpenAI's prompt / input forms -> token ids per item, and the text of each (None for id input).

    Accepted: a string, a list of strings, a list of token ids (one item), a list of lists of token ids.
    """
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(_is_int(t) for t in value):
        items = [value]
    elif isinstance(value, list) and value:
        items = value
    else:
        raise _bad(
            name,
            f"'{name}' must be a non-empty string, list of strings, list of token ids or list of lists of "
            f"token ids, got {_short(value)}",
        )
    ids: list[list[int]] = []
    texts: list[str | None] = []
    for i, item in enumerate(items):
        where = name if len(items) == 1 else f"{name}[{i}]"
        if isinstance(item, str):
            if not item:
                raise _bad(name, f"'{where}' is an empty string; send at least one character")
            ids.append(encode(item))
            texts.append(item)
        elif isinstance(item, list) and item and all(_is_int(t) for t in item):
            bad = next((t for t in item if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise _bad(name, f"'{where}' holds token id {bad}, outside the vocabulary [0, {vocab_size})")
            ids.append(list(item))
            texts.append(None)
        else:
            raise _bad(
                name,
                f"'{where}' must be a non-empty string or a non-empty list of integer token ids, got "
                f"{_short(item)}",
            )
        if not ids[-1]:  # a string of only characters the tokenizer drops
            raise _bad(name, f"'{where}' encodes to no tokens")
    return ids, texts


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- generation requests ------------------------------------------------------------------------------------


@dataclass
class SamplingParams:
    """One sequence's decoding settings: OpenAI's semantics (temperature 0 = greedy) and vLLM's extras."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: every token (vLLM's -1 is read as 0)
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # CTRL's, over prompt and generated tokens (transformers' and vLLM's)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    min_tokens: int = 0  # eos and stop_token_ids are banned until this many tokens are generated
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely tokens' logprobs
    echo: bool = False
    n: int = 1
    logit_bias: dict[int, float] = field(default_factory=dict)
    # vLLM 0.6.2's search fields. best_of: sequences generated per prompt, of which the n best are returned
    # (None: n); with use_beam_search it is the beam width, else it samples best_of and keeps the n with the
    # highest cumulative logprob.
    best_of: int | None = None
    use_beam_search: bool = False
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    # the engine's finish events carry each sequence's cumulative logprob (set for best_of > n)
    cumulative_logprob: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def width(self) -> int:
        """Sequences generated per prompt: best_of (the beam width with use_beam_search), n by default."""
        return self.best_of or self.n


@dataclass
class CompletionRequest:
    """A validated /v1/completions or /v1/chat/completions body: the prompts as token ids (a chat request has
    one, its messages rendered by the chat template) and the sampling settings they share."""

    model: str
    prompts: list[list[int]]
    prompt_texts: list[str | None]
    params: SamplingParams
    stream: bool
    include_usage: bool


# OpenAI's /v1/completions fields and the sampling fields vLLM adds that this server honours.
_COMPLETION_FIELDS = {
    "model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options",
    "logprobs", "echo", "stop", "presence_penalty", "frequency_penalty", "best_of", "logit_bias", "user",
    "seed", "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "skip_special_tokens",
    "stop_token_ids", "spaces_between_special_tokens", "use_beam_search", "length_penalty", "early_stopping",
}  # fmt: skip
# vLLM's other request fields: accepted only at the value that means "off" (what this server does anyway),
# otherwise refused by name, so that no setting a client relies on is silently dropped.
_UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "include_stop_str_in_output": (False, "the stop string is never returned"),
    "prompt_logprobs": (None, "use 'echo': true with 'logprobs' to score the prompt"),
    "allowed_token_ids": (None, "use 'logit_bias' instead"),
    "bad_words": (None, "use 'logit_bias' with -100 for single tokens instead"),
    "truncate_prompt_tokens": (None, "shorten the prompt on the client"),
    "guided_json": (None, "guided decoding is not available"),
    "guided_regex": (None, "guided decoding is not available"),
    "guided_choice": (None, "guided decoding is not available"),
    "guided_grammar": (None, "guided decoding is not available"),
    "guided_decoding_backend": (None, "guided decoding is not available"),
    "guided_whitespace_pattern": (None, "guided decoding is not available"),
    "structured_outputs": (None, "structured outputs are not available"),
    "response_format": (None, "structured outputs are not available"),
    "logits_processors": (None, "custom logits processors are not available"),
    "return_tokens_as_token_ids": (False, "token strings are always returned as text"),
}


def _refuse_unsupported(body: dict, known: set[str], unsupported: dict[str, tuple[Any, str]]) -> None:
    for name, (off, why) in unsupported.items():
        value = body.get(name)
        if (
            value is None
            or value in ([], {})
            or (value == off and isinstance(value, bool) == isinstance(off, bool))
        ):
            continue
        raise _bad(
            name, f"'{name}' is not supported by this server ({why}); leave it out, got {_short(value)}"
        )
    unknown = sorted(set(body) - known - set(unsupported))
    if unknown:  # as vLLM: ignored, but said so in the log
        logger.warning("ignoring fields this server does not know: %s", ", ".join(unknown))


def _token_ids(body: dict, name: str, vocab_size: int) -> list[int]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(_is_int(t) for t in value):
        raise _bad(name, f"'{name}' must be a list of token ids, got {_short(value)}")
    bad = next((t for t in value if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise _bad(name, f"'{name}' holds token id {bad}, outside the vocabulary [0, {vocab_size})")
    return list(value)


# --- shared by /v1/completions and /v1/chat/completions -----------------------------------------------------


def _check_context(
    prompts: list[list[int]], max_tokens: int, n_positions: int, param: str, limit_name: str = "max_tokens"
) -> None:
    """Every prompt plus max_tokens must fit the context; the error names the prompt when it alone is too
    long (no max_tokens >= 1 could help), else max_tokens."""
    longest = max(len(p) for p in prompts)
    if longest + max_tokens <= n_positions:
        return
    if longest >= n_positions > max_tokens:
        i = max(range(len(prompts)), key=lambda j: len(prompts[j]))
        if param != "prompt":
            which = f"the rendered '{param}'"
        else:
            which = "the prompt" if len(prompts) == 1 else f"prompt {i}"
        raise _bad(
            param,
            f"{which} has {longest} tokens, this model's context is {n_positions} and {limit_name} is "
            f"{max_tokens}: shorten it by {longest + max_tokens - n_positions} tokens (to at most "
            f"{n_positions - max_tokens})",
            code="context_length_exceeded",
        )
    raise _bad(
        limit_name,
        f"this model's context is {n_positions} tokens, but the prompt has {longest} and {limit_name} is "
        f"{max_tokens} ({longest + max_tokens} in all, {longest + max_tokens - n_positions} too many); "
        f"lower {limit_name} to at most {n_positions - longest} or shorten the prompt",
        code="context_length_exceeded",
    )


def _stop_strings(body: dict, max_stop: int) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise _bad(
            "stop", f"'stop' must be a string or a list of up to {max_stop} strings, got {_short(stop)}"
        )
    if len(stops) > max_stop:
        raise _bad(
            "stop",
            f"'stop' holds {len(stops)} strings; this server allows at most {max_stop} "
            "(start it with a larger --max-stop)",
        )
    if any(not s for s in stops):
        raise _bad("stop", "'stop' strings must not be empty")
    return stops


def _logit_bias(body: dict, vocab_size: int) -> dict[int, float]:
    bias_raw = body.get("logit_bias") or {}
    if not isinstance(bias_raw, dict):
        raise _bad("logit_bias", f"'logit_bias' must map token ids to numbers, got {_short(bias_raw)}")
    bias: dict[int, float] = {}
    for key, value in bias_raw.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise _bad("logit_bias", f"'logit_bias' keys must be token ids, got {key!r}") from None
        if not 0 <= token < vocab_size:
            raise _bad(
                "logit_bias", f"'logit_bias' token id {token} is outside the vocabulary [0, {vocab_size})"
            )
        if not _is_finite(value) or not -100 <= value <= 100:
            raise _bad("logit_bias", f"'logit_bias' values must be numbers in [-100, 100], got {value!r}")
        bias[token] = float(value)
    return bias


def _sampling(
    body: dict,
    vocab_size: int,
    max_n: int,
    max_stop: int,
    max_tokens: int,
    logprobs: int | None,
    echo: bool = False,
    limit_name: str = "max_tokens",
) -> SamplingParams:
    """The sampling fields both generation endpoints share, checked; max_tokens, logprobs and echo are read
    by the caller (their names and meanings differ between the two)."""
    # GPT-2's decoding never puts spaces between special tokens; vLLM's option only acts on slow tokenizers
    # with added tokens, so either value gives the same text here: checked, nothing more.
    _boolean(body, "spaces_between_special_tokens", True)
    n = _integer(body, "n", 1, 1, max_n)
    stops = _stop_strings(body, max_stop)
    min_tokens = _integer(body, "min_tokens", 0, 0)
    if min_tokens > max_tokens:
        raise _bad("min_tokens", f"'min_tokens' ({min_tokens}) is more than '{limit_name}' ({max_tokens})")
    if min_tokens and stops:
        raise _bad(
            "min_tokens",
            "'min_tokens' cannot be combined with 'stop' strings on this server; drop one of them "
            "('stop_token_ids' do work with min_tokens)",
        )
    # torch generators take 64-bit seeds; a larger one was a 500 before it was checked here
    seed = _integer(body, "seed", None, 0, 2**64 - 1)
    top_k = max(_integer(body, "top_k", 0, -1), 0)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    min_p = _number(body, "min_p", 0.0, 0.0, 1.0)
    best_of, beam, length_penalty, early_stopping = _search(body, n, max_n, temperature, top_p, top_k, min_p)
    if beam:
        temperature = 0.0  # left out: beam search is deterministic (checked above: 0 if sent)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, lo_open=True),
        seed=seed,
        stop=stops,
        stop_token_ids=_token_ids(body, "stop_token_ids", vocab_size),
        min_tokens=min_tokens,
        ignore_eos=_boolean(body, "ignore_eos"),
        skip_special_tokens=_boolean(body, "skip_special_tokens", True),
        logprobs=logprobs,
        echo=echo,
        n=n,
        logit_bias=_logit_bias(body, vocab_size),
        best_of=best_of,
        use_beam_search=beam,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )


def _search(
    body: dict, n: int, max_n: int, temperature: float, top_p: float, top_k: int, min_p: float
) -> tuple[int | None, bool, float, bool | str]:
    """vLLM 0.6.2's search fields, with its rules: (best_of, use_beam_search, length_penalty, early_stopping).

    best_of (default n, at least n) sequences are generated per prompt and the n best returned. With
    use_beam_search, best_of is the beam width (at least 2) and the beams are scored as transformers'
    beam search scores them (length_penalty, early_stopping); sampling settings do not apply to it. Without
    it, best_of > n samples best_of sequences and keeps the n with the highest cumulative logprob, which
    needs sampling (temperature > 0); length_penalty and early_stopping only apply to beam search.
    """
    beam = _boolean(body, "use_beam_search")
    best_of = _integer(body, "best_of", None, 1, max_n)
    if best_of is not None and best_of < n:
        raise _bad(
            "best_of",
            f"'best_of' ({best_of}) must be at least 'n' ({n}): best_of sequences are generated and the n "
            "best returned",
        )
    length_penalty = body.get("length_penalty")
    if length_penalty is not None and not _is_finite(length_penalty):
        raise _bad(
            "length_penalty", f"'length_penalty' must be a finite number, got {_short(length_penalty)}"
        )
    early_stopping = body.get("early_stopping")
    if early_stopping is not None and not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise _bad(
            "early_stopping",
            f"'early_stopping' must be true, false or \"never\", got {_short(early_stopping)}",
        )
    width = best_of or n
    if beam:
        if width < 2:
            raise _bad(
                "best_of",
                f"'use_beam_search' needs a beam width of at least 2; the width is 'best_of' (by default 'n', "
                f"here {width}): send 'n' or 'best_of' >= 2",
            )
        for name, value, off, words in (
            ("temperature", temperature, 0.0, "0"),
            ("top_p", top_p, 1.0, "1"),
            ("top_k", top_k, 0, "-1 or 0"),
            ("min_p", min_p, 0.0, "0"),
        ):
            if body.get(name) is not None and value != off:
                raise _bad(
                    name,
                    f"'{name}' must be {words} (or left out) with 'use_beam_search': beam search keeps the "
                    f"most likely sequences and does not sample, got {body[name]!r}",
                )
    else:
        if length_penalty is not None and length_penalty != 1.0:
            raise _bad(
                "length_penalty",
                f"'length_penalty' only applies to beam search: send it with 'use_beam_search': true, or "
                f"leave it out (got {length_penalty!r})",
            )
        if early_stopping not in (None, False):
            raise _bad(
                "early_stopping",
                f"'early_stopping' only applies to beam search: send it with 'use_beam_search': true, or "
                f"leave it out (got {early_stopping!r})",
            )
        if width > n and temperature == 0.0:
            raise _bad(
                "best_of",
                f"'best_of' ({width}) > 'n' ({n}) keeps the n of best_of samples with the highest cumulative "
                "logprob, but at temperature 0 every sample is the same greedy sequence: set a temperature "
                "above 0, or leave best_of out",
            )
    penalty = 1.0 if length_penalty is None else float(length_penalty)
    return best_of, beam, penalty, bool(early_stopping) if early_stopping != "never" else "never"


def _streaming(body: dict) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage)."""
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options", f"'stream_options' must be an object, got {_short(options)}")
    include_usage = _boolean(options or {}, "include_usage")
    if options is not None and not stream:
        raise _bad("stream_options", "'stream_options' is only allowed when 'stream' is true")
    return stream, include_usage


# --- /v1/completions ----------------------------------------------------------------------------------------


def parse_completion(
    body: Any,
    served: set[str],
    vocab_size: int,
    n_positions: int,
    max_n: int,
    encode,
    max_prompts: int | None = None,
    max_stop: int = MAX_STOP,
) -> CompletionRequest:
    """Validate a /v1/completions body. encode: text -> token ids; max_prompts: the server's --max-queue;
    max_stop: its --max-stop."""
    if not isinstance(body, dict):
        raise _bad("body", f"the request body must be a JSON object, got {type(body).__name__}")
    model = check_model(body, served)
    if "prompt" not in body:
        raise _bad("prompt", "'prompt' is required: a string, a list of strings or token ids")
    prompts, texts = token_lists(body["prompt"], "prompt", vocab_size, encode)
    if max_prompts is not None and len(prompts) > max_prompts:
        raise _bad(
            "prompt",
            f"'prompt' holds {len(prompts)} prompts, more than this server can ever queue at once "
            f"(--max-queue {max_prompts}); send at most {max_prompts} per request, or start the server with "
            "a larger --max-queue",
        )
    for name in ("suffix",):
        if body.get(name) is not None:
            raise _bad(name, f"'{name}' is not supported by this server; leave it out")
    _refuse_unsupported(body, _COMPLETION_FIELDS, _UNSUPPORTED)
    _integer(body, "n", 1, 1, max_n)  # before max_tokens, so that n's error is the one reported
    max_tokens = _integer(body, "max_tokens", 16, 0)
    echo = _boolean(body, "echo")
    if max_tokens == 0 and not echo:
        raise _bad(
            "max_tokens", "'max_tokens' is 0; ask for at least 1 token (or set echo to score the prompt)"
        )
    _check_context(prompts, max_tokens, n_positions, "prompt")
    logprobs = _integer(body, "logprobs", None, 0, MAX_LOGPROBS)
    params = _sampling(body, vocab_size, max_n, max_stop, max_tokens, logprobs, echo)
    stream, include_usage = _streaming(body)
    return CompletionRequest(model, prompts, texts, params, stream, include_usage)


# --- /v1/chat/completions -----------------------------------------------------------------------------------

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat's top_logprobs
CHAT_ROLES = ("system", "developer", "user", "assistant")

# OpenAI's chat fields this server honours, vLLM's sampling extras, and vLLM's chat-template fields.
_CHAT_FIELDS = (_COMPLETION_FIELDS - {"prompt", "suffix", "echo"}) | {
    "messages", "max_completion_tokens", "top_logprobs", "add_generation_prompt", "continue_final_message",
    "chat_template_kwargs", "tool_choice", "parallel_tool_calls",
}  # fmt: skip
_CHAT_UNSUPPORTED: dict[str, tuple[Any, str]] = {
    **_UNSUPPORTED,
    "echo": (False, "the prompt of a chat is the rendered messages; use /v1/completions with echo"),
    "tools": (None, "this server has no tool calling"),
    "functions": (None, "this server has no tool calling"),
    "function_call": (None, "this server has no tool calling"),
    "documents": (None, "documents are not passed to the chat template"),
    "chat_template": (
        None,
        "the server's template is fixed when it starts: gpt2kit serve --chat-template FILE",
    ),
    "add_special_tokens": (False, "the chat template places any special tokens itself"),
}
# Names chat.render passes to the template itself: chat_template_kwargs may not replace them.
_RESERVED_TEMPLATE_VARS = {"messages", "add_generation_prompt", "continue_final_message", "template"}


def _content_text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (joined by newlines, as vLLM's string format)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise _bad(
                    "messages",
                    f"'{where}.content[{j}]' must be a text part {{'type': 'text', 'text': ...}}, got "
                    f"{_short(part)}; this model reads text only",
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise _bad(
        "messages",
        f"'{where}.content' must be a string or a list of text parts, got {_short(content)}",
    )


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad(
            "messages",
            "'messages' must be a non-empty list of {'role': ..., 'content': ...} objects, got "
            f"{_short(messages)}",
        )
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad("messages", f"'{where}' must be an object with 'role' and 'content', got {_short(m)}")
        role = m.get("role")
        if role in ("tool", "function") or m.get("tool_calls") or m.get("function_call"):
            raise _bad(
                "messages", f"'{where}': tool calls and tool messages are not supported by this server"
            )
        if role not in CHAT_ROLES:
            raise _bad(
                "messages", f"'{where}.role' must be one of {', '.join(CHAT_ROLES)}, got {_short(role)}"
            )
        msg = {"role": role, "content": _content_text(m.get("content"), where)}
        name = m.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise _bad("messages", f"'{where}.name' must be a string, got {_short(name)}")
            msg["name"] = name
        out.append(msg)
    return out


def chat_prompt(body: dict, render) -> str:
    """A chat body's messages, checked and rendered by the server's template into the prompt text: the
    fields /v1/chat/completions and /tokenize share (messages, add_generation_prompt,
    continue_final_message, chat_template_kwargs). render(messages, add_generation_prompt,
    continue_final_message, variables) -> text, raising APIError when the template refuses them."""
    messages = _messages(body)
    add_generation_prompt = _boolean(body, "add_generation_prompt", True)
    continue_final = _boolean(body, "continue_final_message")
    if add_generation_prompt and continue_final:
        raise _bad(
            "continue_final_message",
            "'continue_final_message' continues the last message and 'add_generation_prompt' (true by "
            "default) starts a new one; send 'add_generation_prompt': false with it",
        )
    if continue_final and messages[-1]["role"] != "assistant":
        raise _bad(
            "continue_final_message",
            "'continue_final_message' continues the final message, which must be the assistant's; it is "
            f"{messages[-1]['role']!r}",
        )
    variables = body.get("chat_template_kwargs") or {}
    if not isinstance(variables, dict) or not all(isinstance(k, str) for k in variables):
        raise _bad(
            "chat_template_kwargs",
            f"'chat_template_kwargs' must map names to values, got {_short(variables)}",
        )
    clash = sorted(_RESERVED_TEMPLATE_VARS & set(variables))
    if clash:
        raise _bad(
            "chat_template_kwargs",
            f"'chat_template_kwargs' may not set {', '.join(clash)}; use the request's own fields",
        )
    return render(messages, add_generation_prompt, continue_final, variables)


def parse_chat(
    body: Any,
    served: set[str],
    vocab_size: int,
    n_positions: int,
    max_n: int,
    render,
    encode,
    max_stop: int = MAX_STOP,
) -> CompletionRequest:
    """Validate a /v1/chat/completions body into one prompt: its messages rendered by the chat template
    (`chat_prompt`; encode: text -> token ids). max_tokens (or OpenAI's newer max_completion_tokens, which
    wins) defaults to the rest of the context, as OpenAI's and vLLM's; logprobs is true or false, with
    top_logprobs (0-20) the number of alternatives per token."""
    if not isinstance(body, dict):
        raise _bad("body", f"the request body must be a JSON object, got {type(body).__name__}")
    model = check_model(body, served)
    _refuse_unsupported(body, _CHAT_FIELDS, _CHAT_UNSUPPORTED)
    text = chat_prompt(body, render)
    ids = encode(text)
    if not ids:
        raise _bad("messages", "the messages render to an empty prompt; send some content")
    _integer(body, "n", 1, 1, max_n)
    # both are checked; OpenAI's newer name wins when both are sent
    max_tokens = _integer(body, "max_tokens", None, 1)
    limit_name = "max_tokens"
    if body.get("max_completion_tokens") is not None:
        max_tokens = _integer(body, "max_completion_tokens", None, 1)
        limit_name = "max_completion_tokens"
    if max_tokens is not None:
        _check_context([ids], max_tokens, n_positions, "messages", limit_name)
    elif len(ids) >= n_positions:
        raise _bad(
            "messages",
            f"the rendered 'messages' have {len(ids)} tokens and this model's context is {n_positions}: shorten "
            f"them by {len(ids) - n_positions + 1} tokens, to leave room for at least one generated token",
            code="context_length_exceeded",
        )
    else:
        max_tokens = n_positions - len(ids)  # the rest of the context, as OpenAI's and vLLM's
    want = _boolean(body, "logprobs")
    top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if top is not None and not want:
        raise _bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    logprobs = (top or 0) if want else None
    params = _sampling(body, vocab_size, max_n, max_stop, max_tokens, logprobs, limit_name=limit_name)
    stream, include_usage = _streaming(body)
    return CompletionRequest(model, [ids], [text], params, stream, include_usage)


# --- /v1/embeddings -----------------------------------------------------------------------------------------


@dataclass
class EmbeddingRequest:
    model: str
    inputs: list[list[int]]
    encoding_format: str


def parse_embedding(
    body: Any, served: set[str], vocab_size: int, n_positions: int, dim: int, encode
) -> EmbeddingRequest:
    if not isinstance(body, dict):
        raise _bad("body", f"the request body must be a JSON object, got {type(body).__name__}")
    model = check_model(body, served)
    if "input" not in body:
        raise _bad("input", "'input' is required: a string, a list of strings or token ids")
    inputs, _ = token_lists(body["input"], "input", vocab_size, encode)
    if len(inputs) > MAX_EMBED_INPUTS:
        raise _bad("input", f"'input' holds {len(inputs)} items; at most {MAX_EMBED_INPUTS} per request")
    for i, ids in enumerate(inputs):
        if len(ids) > n_positions:
            raise _bad(
                "input",
                f"input {i} has {len(ids)} tokens, beyond this model's context of {n_positions}; "
                "shorten or split it",
                code="context_length_exceeded",
            )
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise _bad("encoding_format", f"'encoding_format' must be 'float' or 'base64', got {fmt!r}")
    dims = body.get("dimensions")
    if dims is not None and dims != dim:
        raise _bad(
            "dimensions",
            f"this model's embeddings have {dim} dimensions and cannot be shortened; got dimensions={dims!r} "
            "(leave it out)",
        )
    return EmbeddingRequest(model, inputs, fmt)
