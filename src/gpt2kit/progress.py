"""What a long job shows on stderr: a line while a model loads, and its progress as suits the output.

On a terminal (or in a notebook) progress is a tqdm bar. Where stderr is a file or a pipe (a log, CI, `2>
run.log`) a bar is hundreds of carriage-return redraws in one line, so it is a plain line every
LINE_SECONDS instead, and a last one when the job ends (jobs shorter than that print none).

The loading line (`loading MODEL ... done in 1.2 s`) is the command line's: `gpt2kit.cli.main` turns it on
with `announce_loads()`, and the library's own loads (an export, embed_file) then show it too; a library
call stays quiet.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

# Seconds between the plain progress lines written where stderr is not a terminal.
LINE_SECONDS = 30.0

_announce = contextvars.ContextVar("gpt2kit_announce_loads", default=False)


@contextlib.contextmanager
def announce_loads() -> Iterator[None]:
    """Within this block, `loading(...)` prints its line (the command line's setting)."""
    token = _announce.set(True)
    try:
        yield
    finally:
        _announce.reset(token)


def main_process() -> bool:
    """False on the other ranks of a torchrun job, which leave stderr to rank 0."""
    return os.environ.get("RANK", "0") in ("", "0")


@contextlib.contextmanager
def loading(what: Any, verb: str = "loading") -> Iterator[None]:
    """`loading WHAT ... done in X.X s` on stderr around a model load (`... failed` if it raises), when the
    command line turned the lines on (announce_loads) and this is the main process."""
    if not (_announce.get() and main_process()):
        yield
        return
    stream = sys.stderr
    started = time.perf_counter()
    head = f"{verb} {what} ... "
    print(head, end="", file=stream, flush=True)
    cut = _LineCut(stream)  # a log record during the load ends the open line first
    handlers = logging.getLogger().handlers
    for h in handlers:
        h.addFilter(cut)
    try:
        yield
    except BaseException:
        print(("" if cut.open else head) + "failed", file=stream, flush=True)
        raise
    finally:
        for h in handlers:
            h.removeFilter(cut)
    print(
        ("" if cut.open else head) + f"done in {time.perf_counter() - started:.1f} s", file=stream, flush=True
    )


class _LineCut(logging.Filter):
    """Ends the loading line before the first log record written while it is open (then passes it)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream, self.open = stream, True

    def filter(self, record: logging.LogRecord) -> bool:
        if self.open:
            self.open = False
            print(file=self.stream, flush=True)
        return True


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether a progress bar can redraw itself there: a terminal, or a notebook's output."""
    stream = stream or sys.stderr
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or minimal stream
        return False
    return "ipykernel" in sys.modules


def progress_bar(
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    unit_scale: bool = False,
    initial: float = 0,
    show: bool | None = True,
) -> Any:
    """A progress display with tqdm's calls (update, set_postfix, set_postfix_str, total, close, `with`).

    show=True: a tqdm bar on a terminal, plain lines elsewhere (LINE_SECONDS apart); None: the bar on a
    terminal, nothing elsewhere (for a loop that logs lines of its own); False: nothing.
    """
    from tqdm.auto import tqdm

    terminal = on_terminal()
    options = dict(total=total, desc=desc or None, unit=unit, unit_scale=unit_scale, initial=initial)
    if show is False or (show is None and not terminal):
        return tqdm(disable=True, **options)
    if terminal:
        return tqdm(dynamic_ncols=True, file=sys.stderr, **options)
    return ProgressLines(**options)


class ProgressLines:
    """tqdm's counting calls, written as a plain line every LINE_SECONDS (and at the end, if any was)."""

    def __init__(
        self,
        total: float | None = None,
        desc: str | None = None,
        unit: str = "it",
        unit_scale: bool = False,
        initial: float = 0,
    ) -> None:
        self.total, self.desc, self.unit, self.unit_scale = (
            total,
            desc or "progress",
            unit.strip(),
            unit_scale,
        )
        self.n = initial
        self.initial = initial
        self.postfix = ""
        self.started = self.last = time.monotonic()
        self.printed_at: float | None = None  # the count of the last line written

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= LINE_SECONDS:
            self.last = now
            self._write()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def refresh(self) -> None:
        """A bar redraws here; the lines keep their schedule."""

    def close(self) -> None:
        if self.printed_at is not None and self.printed_at != self.n:
            self._write()

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, x: float) -> str:
        from tqdm import tqdm

        return tqdm.format_sizeof(x) if self.unit_scale else f"{x:,.0f}"

    def line(self) -> str:
        """`desc: 1.2k/3.4k tok (35%), 410 tok/s, 00:03 elapsed, ~00:05 left, postfix`."""
        from tqdm import tqdm

        elapsed = time.monotonic() - self.started
        done = self.n - self.initial
        parts = [f"{self._count(self.n)} {self.unit}"]
        if self.total:
            parts = [
                f"{self._count(self.n)}/{self._count(self.total)} {self.unit} ({self.n / self.total:.0%})"
            ]
        rate = done / elapsed if elapsed > 0 else 0.0
        parts.append(f"{self._count(rate) if self.unit_scale else f'{rate:,.1f}'} {self.unit}/s")
        parts.append(f"{tqdm.format_interval(elapsed)} elapsed")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"~{tqdm.format_interval((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: {', '.join(parts)}"

    def _write(self) -> None:
        self.printed_at = self.n
        print(self.line(), file=sys.stderr, flush=True)
