"""The HTTP side of `gpt2kit serve`: OpenAI's /v1/completions, /v1/chat/completions, /v1/embeddings and
/v1/models on Starlette, with vLLM's /tokenize, /detokenize, /tokenizer_info and Prometheus' /metrics.

Handlers validate a request (`protocol`; a chat's messages rendered by its template, `chat`), hand it to the
`Engine` thread and await its events on an asyncio queue; they never touch the model. Both generation
endpoints share that path (`_generate`) and differ only in how choices are written (`_Choices`,
`_ChatChoices`). Guarding every request before any handler runs (`_Guard`): the bearer key (compared in
constant time) and the body size; outside it, `metrics.Instrument` counts and times them. Every error, ours
or the client's, is OpenAI's error JSON with a 4xx status (5xx only for a bug), so the `openai` client
raises its usual exceptions.

    app = build_app(engine, "my-gpt2")            # an ASGI app; run it with uvicorn
    run("path/to/model", host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gpt2kit.model import quant
from gpt2kit.serve import metrics as prom
from gpt2kit.serve.chat import load_chat_template
from gpt2kit.serve.connections import HEAD_TIMEOUT_S, guarded_h11
from gpt2kit.serve.engine import EmbeddingJob, Engine, GenerationRequest, QueueFull, bound_kernel_caches
from gpt2kit.serve.protocol import (
    MAX_STOP,
    APIError,
    chat_prompt,
    check_model,
    parse_chat,
    parse_completion,
    parse_embedding,
)

logger = logging.getLogger(__name__)

API_KEY_ENV = "GPT2KIT_API_KEY"
DEFAULT_MAX_BODY = 4 << 20  # 4 MiB: 2048 embedding inputs of ~500 tokens as text still fit
RETRY_AFTER_S = 1
DISCONNECT_POLL_S = 0.5
NO_CHAT_TEMPLATE = (
    "this server has no chat template, so it cannot turn messages into a prompt (GPT-2 has none of its "
    "own): start it with `gpt2kit serve --chat-template FILE` (a Jinja chat template, as transformers and "
    "vLLM use) or put `chat_template` in the model folder's tokenizer_config.json; or send a prompt to "
    "/v1/completions"
)


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class _Guard:
    """ASGI middleware run before routing: the bearer key and the Content-Length limit, on every request."""

    def __init__(self, app, api_key: str | None, max_body: int) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body = max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        error = None
        if self.key is not None:
            auth = headers.get(b"authorization", b"")
            given = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, self.key):  # constant time: no timing leak of the key
                error = APIError(
                    401,
                    "Missing or incorrect API key: send the header 'Authorization: Bearer <key>' with the key "
                    "the server was started with (--api-key or $" + API_KEY_ENV + ")",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = headers.get(b"content-length")
        if error is None and length is not None:
            if not length.isdigit():
                error = APIError(400, f"bad Content-Length header {length.decode(errors='replace')!r}")
            elif int(length) > self.max_body:
                error = _too_large(int(length), self.max_body)
        if error is not None:
            return await _error_response(error)(scope, receive, send)
        return await self.app(scope, receive, send)


def _too_large(size: int | None, limit: int) -> APIError:
    what = f"{size} bytes" if size is not None else "more"
    return APIError(
        413,
        f"the request body is {what}, over this server's limit of {limit} bytes; send fewer or shorter "
        "inputs per request (or start the server with a larger --max-body-bytes)",
        code="request_too_large",
    )


# A request body must arrive within this many seconds of its head: a client trickling it would otherwise
# hold a connection and a task for as long as it likes (connections.py bounds the head).
BODY_TIMEOUT_S = 30.0


async def _json_body(request: Request, limit: int) -> Any:
    """The body as JSON, read in chunks so a body without Content-Length still cannot exceed the limit, and
    within BODY_TIMEOUT_S."""
    chunks: list[bytes] = []
    timeout = BODY_TIMEOUT_S

    async def read() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(None, limit)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise APIError(
            408,
            f"the request body did not arrive within {timeout:g} s of its headers; send it at once",
            param="body",
            code="request_timeout",
        ) from None
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as e:
        raise APIError(
            400, f"the request body is not valid JSON ({e}); send a JSON object", param="body"
        ) from None


class _SSEResponse(StreamingResponse):
    """Server-sent events that notice a client leaving: on disconnect (or any end) `on_close` runs.

    Starlette's own StreamingResponse only notices a disconnect at its next write under ASGI 2.4; a
    generation waiting for its next token should stop at once, so the disconnect is listened for directly.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        import anyio

        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client went away mid-write
                        await self.stream_response(send)
                    tg.cancel_scope.cancel()

                async def listen() -> None:
                    await self.listen_for_disconnect(receive)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                tg.start_soon(listen)
        finally:
            self.on_close()


class Server:
    """The routes over one engine; `app` is the Starlette application."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        aliases: tuple[str, ...] = (),
        api_key: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        max_stop: int = MAX_STOP,
        chat_template: str | os.PathLike | None = None,
    ) -> None:
        if isinstance(max_stop, bool) or not isinstance(max_stop, int) or max_stop < 1:
            raise ValueError(f"max_stop (--max-stop) must be a positive integer, got {max_stop!r}")
        self.max_stop = max_stop
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise ValueError(
                f"max_body (--max-body-bytes) must be a positive number of bytes, got {max_body!r}"
            )
        self.engine = engine
        self.tok = engine.tokenizer
        self.config = engine.config
        self.model_name = model_name
        self.served = {model_name, *aliases}
        self.max_body = max_body
        self.created = int(time.time())
        # --chat-template, else the tokenizer's own; None: /v1/chat/completions answers 400 saying so
        self.chat_template = load_chat_template(chat_template, self.tok)
        if self.chat_template is not None:
            logger.info("chat completions use the chat template from %s", self.chat_template.origin)
        self.metrics = prom.create(engine)  # None without prometheus_client: /metrics says how to get it
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model_info, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/detokenize", self.detokenize, methods=["POST"]),
            Route("/tokenizer_info", self.tokenizer_info, methods=["GET"]),
        ]
        app = Starlette(
            routes=routes,
            exception_handlers={HTTPException: self._http_error, Exception: self._server_error},
            lifespan=self._lifespan,
        )
        self.app = prom.Instrument(_Guard(app, api_key, max_body), self.metrics, routes)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app) -> AsyncIterator[None]:
        self.engine.start()
        try:
            yield
        finally:
            self.engine.shutdown()

    # --- errors ---------------------------------------------------------------------------------------------

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        message = {404: f"no route {request.url.path}; see docs/serving.md for the endpoints"}.get(
            exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"
        )
        return _error_response(APIError(exc.status_code, message, code=str(exc.status_code)))

    async def _server_error(self, request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error in %s", request.url.path)
        return _error_response(APIError(500, f"internal server error: {exc}", type="server_error"))

    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    # --- small endpoints ------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        s = self.engine.stats
        return JSONResponse(
            dict(status="ok", running=len(self.engine.active), queued=self.engine.queued, steps=s.steps,
                 tokens=s.tokens, cancelled=s.cancelled, rejected=s.rejected, max_rows=s.max_rows)
        )  # fmt: skip

    def _model_card(self) -> dict[str, Any]:
        emb = self.engine.embedder
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "gpt2kit",
            "max_model_len": self.config.n_positions,
            "embedding": {
                "dimensions": emb.dim,
                "pooling": emb.pooling,
                "layer": emb.layers[0] if len(emb.layers) == 1 else emb.layers,
            },
        }

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model_info(self, request: Request) -> Response:
        try:
            check_model({"model": request.path_params["model"]}, self.served)
        except APIError as e:
            return _error_response(e)
        return JSONResponse(self._model_card())

    async def metrics_text(self, request: Request) -> Response:
        if self.metrics is None:
            return _error_response(
                APIError(
                    501,
                    f"metrics are off: prometheus_client is not installed; {prom.INSTALL_HINT}, then restart "
                    "the server",
                    type="server_error",
                    code="metrics_unavailable",
                )
            )
        body, content_type = self.metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    async def tokenizer_info(self, request: Request) -> Response:
        """vLLM's /tokenizer_info: the special tokens and the chat template, which lets lm-evaluation-harness
        tokenize through /tokenize (its `remote` tokenizer backend) with no tokenizer files of its own."""
        tok = self.tok
        special = {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
        return JSONResponse(
            dict(
                tokenizer_class=type(tok).__name__,
                **special,
                add_bos_token=bool(getattr(tok, "add_bos_token", False)),
                model_max_length=self.config.n_positions,
                vocab_size=self.config.vocab_size,
                chat_template=self.chat_template.template if self.chat_template else None,
            )
        )

    async def tokenize(self, request: Request) -> Response:
        """vLLM's two shapes: {"prompt": text} and {"messages": [...]} (rendered by the chat template, with
        add_generation_prompt, continue_final_message and chat_template_kwargs as in a chat request)."""
        try:
            body = await _json_body(request, self.max_body)
            if not isinstance(body, dict) or not (isinstance(body.get("prompt"), str) or "messages" in body):
                raise APIError(400, 'send {"prompt": "some text"} or {"messages": [...]}', param="prompt")
            if body.get("model") is not None:
                check_model(body, self.served)
            chat = "messages" in body
            special = body.get("add_special_tokens", not chat)  # vLLM's defaults
            if not isinstance(special, bool):
                raise APIError(
                    400,
                    f"'add_special_tokens' must be true or false, got {special!r}",
                    param="add_special_tokens",
                )
            if chat:
                if self.chat_template is None:
                    raise APIError(400, NO_CHAT_TEMPLATE, param="messages", code="chat_template_missing")
                text = chat_prompt(body, self.chat_template.render)
            else:
                text = body["prompt"]
            ids = self.tok.encode(text, add_special_tokens=special)
        except APIError as e:
            return _error_response(e)
        return JSONResponse(dict(tokens=ids, count=len(ids), max_model_len=self.config.n_positions))

    async def detokenize(self, request: Request) -> Response:
        try:
            body = await _json_body(request, self.max_body)
            ids = body.get("tokens") if isinstance(body, dict) else None
            V = self.config.vocab_size
            if not isinstance(ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < V for t in ids
            ):
                raise APIError(400, f'send {{"tokens": [token ids in [0, {V})]}}', param="tokens")
        except APIError as e:
            return _error_response(e)
        return JSONResponse(dict(prompt=self.tok.decode(ids)))

    # --- embeddings -----------------------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        try:
            body = await _json_body(request, self.max_body)
            cfg = self.config
            req = parse_embedding(
                body, self.served, cfg.vocab_size, cfg.n_positions, self.engine.embedder.dim, self._encode
            )
            loop = asyncio.get_running_loop()
            future: asyncio.Future = loop.create_future()

            def done(result) -> None:
                def settle() -> None:
                    if not future.done():
                        future.set_result(result)

                with contextlib.suppress(RuntimeError):  # a closed loop: the server is shutting down
                    loop.call_soon_threadsafe(settle)

            try:
                self.engine.submit_embedding(EmbeddingJob(req.inputs, done))
            except QueueFull as e:
                raise _busy(e) from None
            result = await future
            if isinstance(result, BaseException):
                raise APIError(500, f"embedding failed: {result}", type="server_error")
        except APIError as e:
            return _error_response(e)
        vectors = np.asarray(result, dtype="<f4")
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.tobytes()).decode("ascii")
                if req.encoding_format == "base64"
                else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ]
        tokens = sum(len(x) for x in req.inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": req.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    # --- completions and chat completions -------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        try:
            body = await _json_body(request, self.max_body)
            cfg = self.config
            req = parse_completion(
                body,
                self.served,
                cfg.vocab_size,
                cfg.n_positions,
                self.engine.max_batch,
                self._encode,
                max_prompts=self.engine.max_queue,
                max_stop=self.max_stop,
            )
        except APIError as e:
            return _error_response(e)
        return await self._generate(request, _Choices(req, self.tok))

    async def chat_completions(self, request: Request) -> Response:
        try:
            if self.chat_template is None:
                raise APIError(400, NO_CHAT_TEMPLATE, param="messages", code="chat_template_missing")
            body = await _json_body(request, self.max_body)
            cfg = self.config
            req = parse_chat(
                body,
                self.served,
                cfg.vocab_size,
                cfg.n_positions,
                self.engine.max_batch,
                self.chat_template.render,
                # as transformers' apply_chat_template: the template places any special tokens itself
                lambda text: self.tok.encode(text, add_special_tokens=False),
                max_stop=self.max_stop,
            )
        except APIError as e:
            return _error_response(e)
        return await self._generate(request, _ChatChoices(req, self.tok))

    async def _generate(self, request: Request, state: _Choices) -> Response:
        """Queue a validated request's prompts on the engine and answer with its choices, whole or streamed."""
        req = state.req
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()  # bounded by the request: <= n * max_tokens events

        def emit(events) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: the server is shutting down
                loop.call_soon_threadsafe(queue.put_nowait, events)

        params, n = req.params, req.params.n
        if params.width > n and not params.use_beam_search:
            # best_of: the engine samples best_of sequences per prompt; the n best come back (`_BestOf`)
            n = params.width
            params = dataclasses.replace(params, n=n, best_of=None, cumulative_logprob=True)
            emit = _BestOf(emit, req.params.n, n)
        jobs = [GenerationRequest(ids, params, emit, p * n) for p, ids in enumerate(req.prompts)]
        try:
            self.engine.submit(jobs)
        except QueueFull as e:
            return _error_response(_busy(e))

        def cancel() -> None:
            for job in jobs:
                job.cancel()

        head = dict(id=f"{state.id_prefix}-{uuid.uuid4().hex}", created=int(time.time()), model=req.model)
        if req.stream:
            return _SSEResponse(self._stream(request, state, queue, head), on_close=cancel)
        try:
            # Look for a departed client every DISCONNECT_POLL_S, whether or not tokens are arriving.
            next_poll = time.monotonic() + DISCONNECT_POLL_S
            while not state.all_done:
                try:
                    events = await asyncio.wait_for(queue.get(), max(next_poll - time.monotonic(), 0.01))
                except asyncio.TimeoutError:
                    events = []
                if time.monotonic() >= next_poll:
                    if await request.is_disconnected():
                        return Response(status_code=499)  # nobody is listening; cancel() runs below
                    next_poll = time.monotonic() + DISCONNECT_POLL_S
                for ev in events:
                    if ev["type"] == "error":
                        return _error_response(APIError(500, ev["message"], type="server_error"))
                    self._observe(request, state, ev)
                    state.add(ev)
        finally:
            cancel()  # a no-op for finished requests; stops the rest when the handler ends early
        return JSONResponse(dict(head, object=state.object, choices=state.choices(), usage=state.usage()))

    def _observe(self, request: Request, state: _Choices, ev: dict) -> None:
        """Time to first token, into the metrics (once per request; a beam search's or best_of's tokens
        arrive with their finish events)."""
        first = ev["type"] == "token" or (ev["type"] == "finish" and ev.get("completion_tokens"))
        if self.metrics is not None and first and not state.first_token_seen:
            state.first_token_seen = True
            self.metrics.first_token(request.scope, request.url.path)

    async def _stream(
        self, request: Request, state: _Choices, queue: asyncio.Queue, head: dict
    ) -> AsyncIterator[str]:
        def sse(obj: dict) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        head = dict(head, object=state.chunk_object)
        for choice in state.opening():
            yield sse(dict(head, choices=[choice]))
        while not state.all_done:
            for ev in await queue.get():
                if ev["type"] == "error":
                    yield sse(APIError(500, ev["message"], type="server_error").body())
                    yield "data: [DONE]\n\n"
                    return
                self._observe(request, state, ev)
                choice = state.add(ev)
                if choice is not None:
                    yield sse(dict(head, choices=[choice]))
        if state.req.include_usage:
            yield sse(dict(head, choices=[], usage=state.usage()))
        yield "data: [DONE]\n\n"


def _busy(e: QueueFull) -> APIError:
    return APIError(
        429,
        f"the server is busy ({e}); retry after {RETRY_AFTER_S} s",
        type="rate_limit_error",
        code="server_busy",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


class _BestOf:
    """best_of > n: holds a prompt's best_of sampled sequences (engine events, on the engine thread) until
    all have finished, then passes on the n with the highest cumulative logprob, best first, as vLLM 0.6.2
    returned them: each as its echoed prompt (if any) and one finish event with its whole text and
    logprobs, renumbered as the request's choices. So a streamed best_of request gets each choice in one
    chunk once its prompt's sequences are done."""

    def __init__(self, emit: Callable[[list[dict]], None], n: int, best_of: int) -> None:
        self.emit, self.n, self.best_of = emit, n, best_of
        self.events: dict[int, list[dict]] = {}  # engine index -> its events so far
        self.scores: dict[int, float] = {}
        self.finished: dict[int, int] = {}  # prompt -> its sequences finished

    def __call__(self, events: list[dict]) -> None:
        out: list[dict] = []
        for ev in events:
            if ev["type"] == "error":
                out.append(ev)
                continue
            i = ev["index"]
            self.events.setdefault(i, []).append(ev)
            if ev["type"] != "finish":
                continue
            self.scores[i] = ev.get("cumulative_logprob", 0.0)
            p = i // self.best_of
            self.finished[p] = self.finished.get(p, 0) + 1
            if self.finished[p] < self.best_of:
                continue
            members = range(p * self.best_of, (p + 1) * self.best_of)
            ranked = sorted(members, key=lambda j: -self.scores[j])  # stable: ties keep their order
            for rank, j in enumerate(ranked[: self.n]):
                out.extend(_merged(self.events[j], p * self.n + rank))
            for j in members:
                self.events.pop(j, None)
                self.scores.pop(j, None)
        if out:
            self.emit(out)


def _merged(events: list[dict], index: int) -> list[dict]:
    """One sequence's events as its prompt event (echo) and a single finish event holding the whole text."""
    prompt = [dict(ev, index=index) for ev in events if ev["type"] == "prompt"]
    rest = [ev for ev in events if ev["type"] != "prompt"]
    last = rest[-1]
    text = "".join(ev.get("text", "") for ev in rest)
    finish = dict(
        type="finish",
        index=index,
        reason=last["reason"],
        text=text,
        completion_tokens=last["completion_tokens"],
    )
    if any("tokens" in ev for ev in rest):
        for key in ("tokens", "token_logprobs", "top_logprobs"):
            finish[key] = [x for ev in rest for x in ev.get(key, [])]
    return [*prompt, finish]


class _Choices:
    """Accumulates engine events into OpenAI's completion choices; `add` also returns the streaming chunk's
    choice for an event. `_ChatChoices` writes the same events as chat messages and deltas."""

    id_prefix = "cmpl"
    object = chunk_object = "text_completion"

    def __init__(self, req, tok) -> None:
        self.req = req
        self.tok = tok
        self.first_token_seen = False
        n = req.params.n
        self.total = len(req.prompts) * n
        self.text = [""] * self.total
        self.finish: list[str | None] = [None] * self.total
        self.completion_tokens = 0
        self.done = 0
        want = req.params.logprobs is not None
        self.logprobs = (
            [dict(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[]) for _ in range(self.total)]
            if want
            else None
        )
        # text_offset counts characters of prompt + completion, as OpenAI's (echo or not)
        self.offset = [len(self._prompt_text(i // n)) for i in range(self.total)]

    def _prompt_text(self, p: int) -> str:
        text = self.req.prompt_texts[p]
        return text if text is not None else self.tok.decode(self.req.prompts[p])

    @property
    def all_done(self) -> bool:
        return self.done == self.total

    def opening(self) -> list[dict]:
        """Chunks' choices sent before any token (none for completions)."""
        return []

    def add(self, ev: dict) -> dict | None:
        i = ev["index"]
        kind = ev["type"]
        text = ev.get("text", "")
        if kind == "prompt":
            text = self._prompt_text(i // self.req.params.n)
            self.offset[i] = 0
        lp = None
        if self.logprobs is not None and "tokens" in ev:
            offsets = []
            for s in ev["tokens"]:
                offsets.append(self.offset[i])
                self.offset[i] += len(s)
            lp = dict(
                tokens=ev["tokens"],
                token_logprobs=ev["token_logprobs"],
                top_logprobs=ev["top_logprobs"],
                text_offset=offsets,
            )
            for key, values in lp.items():
                self.logprobs[i][key].extend(values)
        self.text[i] += text
        reason = None
        if kind == "finish":
            reason = self.finish[i] = ev["reason"]
            self.completion_tokens += ev["completion_tokens"]
            self.done += 1
        if not text and lp is None and reason is None:
            return None
        return dict(text=text, index=i, logprobs=lp, finish_reason=reason)

    def choices(self) -> list[dict]:
        return [
            dict(
                text=self.text[i],
                index=i,
                logprobs=self.logprobs[i] if self.logprobs else None,
                finish_reason=self.finish[i],
            )
            for i in range(self.total)
        ]

    def usage(self) -> dict[str, int]:
        prompt = sum(len(p) for p in self.req.prompts)
        return dict(
            prompt_tokens=prompt,
            completion_tokens=self.completion_tokens,
            total_tokens=prompt + self.completion_tokens,
        )


class _ChatChoices(_Choices):
    """The same events as chat: `message` objects whole, `delta`s streamed (the role first, as OpenAI sends
    it), logprobs as `{"content": [{token, logprob, bytes, top_logprobs}]}`."""

    id_prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def opening(self) -> list[dict]:
        return [
            dict(index=i, delta=dict(role="assistant", content=""), logprobs=None, finish_reason=None)
            for i in range(self.total)
        ]

    def add(self, ev: dict) -> dict | None:
        choice = super().add(ev)
        if choice is None:
            return None
        return dict(
            index=choice["index"],
            delta={"content": choice["text"]} if choice["text"] else {},
            logprobs=self._logprobs(choice["logprobs"]),
            finish_reason=choice["finish_reason"],
        )

    def choices(self) -> list[dict]:
        return [
            dict(
                index=i,
                message=dict(role="assistant", content=self.text[i]),
                logprobs=self._logprobs(self.logprobs[i]) if self.logprobs else None,
                finish_reason=self.finish[i],
            )
            for i in range(self.total)
        ]

    def _logprobs(self, lp: dict | None) -> dict | None:
        """Completion-style logprobs -> chat's. top_logprobs holds the k most likely tokens (the engine's
        also holds the chosen one, which completions always show)."""
        if lp is None:
            return None
        k = self.req.params.logprobs

        def entry(token: str, logprob: float) -> dict:
            return dict(token=token, logprob=logprob, bytes=list(token.encode("utf-8")))

        content = []
        for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
            best = sorted(top.items(), key=lambda kv: -kv[1])[:k]
            content.append(dict(entry(token, logprob), top_logprobs=[entry(t, v) for t, v in best]))
        return {"content": content}


# --- building and running -----------------------------------------------------------------------------------


def load_engine(
    model: str | os.PathLike,
    *,
    dtype: str = "float32",
    device: str | None = None,
    threads: int | None = None,
    weights: str = "float",
    **engine_options: Any,
) -> Engine:
    """Load a checkpoint folder (or cached name) and its tokenizer into an Engine (not started).

    weights: float (as loaded), packed, int8 or auto (packed on CPU): see gpt2kit.model.inference.
    """
    import torch

    from gpt2kit import AutoModelForCausalLM, AutoTokenizer, hub
    from gpt2kit.model.inference import convert_weights, load_dtype, resolve_weights

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    folder = hub.find_model_dir(model, files=("config.json",))
    weights = resolve_weights(weights, device)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=load_dtype(weights, dtype, device))
    if device:
        lm = lm.to(device)
    has_tok = (Path(folder) / "vocab.json").is_file() or (Path(folder) / "tokenizer.json").is_file()
    if not has_tok and lm.config.vocab_size != 50257:
        raise FileNotFoundError(
            f"{folder} has no tokenizer files and its vocabulary ({lm.config.vocab_size}) is not GPT-2's; "
            "save the tokenizer into the folder"
        )
    tok = AutoTokenizer.from_pretrained(folder if has_tok else "gpt2")
    engine = Engine(lm, tok, **engine_options)  # checks its options before the (slower) conversion
    convert_weights(lm.eval(), weights, batch_size=engine.max_batch)  # in place: the engine sees it
    # a server runs long: batched int8 steps on their own engine (Engine() did it before the conversion)
    quant.few_rows_engines_when_due(lm, 0, at_once=True)
    return engine


def build_app(
    engine: Engine,
    model_name: str,
    aliases: tuple[str, ...] = (),
    api_key: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    max_stop: int = MAX_STOP,
    chat_template: str | os.PathLike | None = None,
):
    """The ASGI application for an engine (started and stopped with the app's lifespan). chat_template: a
    Jinja file or the template itself (default: the tokenizer's own, if it has one)."""
    return Server(engine, model_name, aliases, api_key, max_body, max_stop, chat_template).app


def run(
    model: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    served_model_name: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    log_level: str = "info",
    max_stop: int = MAX_STOP,
    chat_template: str | os.PathLike | None = None,
    on_loaded: Callable[[Engine], None] | None = None,
    **engine_options: Any,
) -> None:
    """Load the model and serve it until interrupted (uvicorn). api_key=None reads $GPT2KIT_API_KEY;
    chat_template: --chat-template (a Jinja file), else the tokenizer folder's own; on_loaded: called with
    the engine once the model is loaded (the command line's startup line)."""
    import uvicorn

    from gpt2kit.progress import loading

    if api_key is not None and not api_key.strip():
        raise ValueError("--api-key is empty; give a non-empty key, or leave it out to serve without one")
    if chat_template is not None:
        load_chat_template(chat_template, None)  # a missing file or a syntax error: before loading the model
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach it can use it", host)
    bound_kernel_caches()  # before the model runs: oneDNN reads the capacity once (engine.py says why)
    with loading(model):
        engine = load_engine(model, **engine_options)
    if on_loaded is not None:
        on_loaded(engine)
    name = served_model_name or str(model)
    aliases = tuple({Path(str(model)).name} - {name})
    app = build_app(engine, name, aliases, api_key, max_body, max_stop, chat_template)
    uvicorn.Server(uvicorn_config(app, engine, host=host, port=port, log_level=log_level)).run()


def uvicorn_config(app, engine: Engine, head_timeout: float = HEAD_TIMEOUT_S, **options: Any):
    """uvicorn's settings for the server: open connections bounded, and slow or idle clients unable to hold
    them (connections.py). options: host, port, log_level, ... (uvicorn.Config's)."""
    import uvicorn

    # limit_concurrency bounds open connections (503 past it): memory stays bounded even under a flood.
    limit = 4 * (engine.max_queue + engine.max_batch) + 16
    # Idle connections are closed first one below the limit, so a new client's request is never the 503.
    http = guarded_h11(head_timeout=head_timeout, max_connections=limit - 1)
    return uvicorn.Config(app, limit_concurrency=limit, timeout_keep_alive=5, http=http, **options)
