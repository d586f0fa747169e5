"""Connections that send nothing cannot lock the server out: a deadline for each request head, and idle
connections closed first when the server is full.

uvicorn counts every open connection against `limit_concurrency` and answers 503 past it, but it has no
deadline for a request's head: a connection that sends nothing, or one header byte a second (slowloris),
stays open for as long as its client likes. 330 such connections made every real request get 503, with or
without an API key. `guarded_h11` builds uvicorn's h11 protocol with three rules:

- a connection must send a complete request head within `head_timeout` seconds of opening (after a response,
  uvicorn's own keep-alive timeout applies), or it is closed;
- past `max_connections` open connections, the oldest connections that are waiting for a request (idle or
  still sending a head) are closed to make room, so a new client always gets in while the server is not
  busy with that many requests;
- past `max_per_client` connections from one address, that address's oldest waiting connection is closed.

A request's body has its own deadline (`read_body` in app.py). Connections busy with a request are never
closed here; when all of them are busy, uvicorn's 503 is the honest answer.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0
MAX_PER_CLIENT = 64


class _GuardedH11(H11Protocol):
    head_timeout = HEAD_TIMEOUT_S
    max_connections = 256
    max_per_client = MAX_PER_CLIENT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.waiting_since = self.loop.time()
        self.head_deadline: asyncio.TimerHandle | None = self.loop.call_later(
            self.head_timeout, self._head_too_slow
        )
        host = self.client[0] if self.client else None
        self._make_room(
            [c for c in self.connections if c.client and c.client[0] == host], self.max_per_client
        )
        self._make_room(list(self.connections), self.max_connections)

    def waiting(self) -> bool:
        """No request in progress: idle, or still sending a request head."""
        return self.cycle is None or self.cycle.response_complete

    def _make_room(self, pool: list, limit: int) -> None:
        """Close the oldest waiting connections of pool (not this one) until it holds at most limit."""
        excess = len(pool) - limit
        if excess <= 0:
            return
        idle = sorted(
            (c for c in pool if c is not self and isinstance(c, _GuardedH11) and c.waiting()),
            key=lambda c: c.waiting_since,
        )
        for c in idle[:excess]:
            c.close()

    def close(self) -> None:
        self._cancel_deadline()
        if not self.transport.is_closing():
            self.transport.close()

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if self.waiting():  # (a request that arrived meanwhile cancelled this timer)
            self.close()

    def _cancel_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def handle_events(self) -> None:
        super().handle_events()
        if not self.waiting():  # a request head arrived: it runs as long as the app needs
            self._cancel_deadline()
            self.waiting_since = None

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timeout for the next request
        if self.waiting_since is None:
            self.waiting_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)


def guarded_h11(
    head_timeout: float = HEAD_TIMEOUT_S, max_connections: int = 256, max_per_client: int = MAX_PER_CLIENT
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a request-head deadline and idle-first eviction (see the module docs);
    pass it as uvicorn.Config(http=...)."""
    for name, value in (
        ("head_timeout", head_timeout),
        ("max_connections", max_connections),
        ("max_per_client", max_per_client),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    attrs = dict(head_timeout=float(head_timeout), max_connections=int(max_connections))
    attrs["max_per_client"] = int(max_per_client)
    return type("GuardedH11Protocol", (_GuardedH11,), attrs)
