"""Cutting one sequence or a pair to max_length, the two ways transformers' GPT-2 tokenizers do it.

Both planners work on lengths and return spans (start, stop) into each sequence, so one plan cuts the ids
and their offsets alike. They differ where transformers' two tokenizers differ:

- `slow_cut` is transformers' `truncate_sequences` (its slow tokenizer, and `prepare_for_model` in both):
  one kept part per sequence, and the removed tokens, plus `stride` tokens next to them, as one list of
  overflowing tokens. A pair under "longest_first" returns no overflowing tokens (transformers warns).
- `fast_rows` is the `tokenizers` library's `truncate_encodings` (transformers' fast tokenizer): each
  sequence is cut into windows of the allowed length that overlap by `stride` tokens, and every window
  becomes a row of its own (the first is the kept part, the rest are the overflow).

>>> fast_rows(6, None, 4, "longest_first", stride=1, left=False)
[((0, 4), None), ((3, 6), None)]
>>> slow_cut(6, None, 2, "longest_first", stride=1, left=False).overflow
(0, (3, 6))
"""

from __future__ import annotations

from typing import NamedTuple

Span = tuple[int, int]  # [start, stop) into one sequence's tokens
STRATEGIES = ("longest_first", "only_first", "only_second")

LONGEST_FIRST_PAIR_OVERFLOW = (
    "Be aware, overflowing tokens are not returned for the setting you have chosen, i.e. sequence pairs with the "
    "'longest_first' truncation strategy. So the returned list will always be empty even if some tokens have "
    "been removed."
)


class SlowCut(NamedTuple):
    """What transformers' truncate_sequences keeps and returns as overflow.

    `overflow` is (0 or 1: which sequence, span) or None; `message` is what transformers logs, as
    ("warning" | "error", text), or None.
    """

    first: Span
    second: Span | None
    overflow: tuple[int, Span] | None
    message: tuple[str, str] | None


def slow_cut(
    n_first: int, n_second: int | None, remove: int, strategy: str, stride: int, left: bool
) -> SlowCut:
    """Remove `remove` tokens from a sequence (n_second None) or a pair, as transformers' slow tokenizer.

    A sequence too short to give up `remove` tokens is left whole, and transformers logs an error.
    """
    first: Span = (0, n_first)
    second: Span | None = None if n_second is None else (0, n_second)
    if remove <= 0:
        return SlowCut(first, second, None, None)
    if strategy == "only_first" or (strategy == "longest_first" and n_second is None):
        if n_first <= remove:
            hint = " Please select another truncation strategy than only_first, for instance 'longest_first' or 'only_second'."
            message = f"We need to remove {remove} to truncate the input but the first sequence has a length {n_first}."
            return SlowCut(
                first, second, None, ("error", message + (hint if strategy == "only_first" else ""))
            )
        kept, overflow = _cut_one(n_first, remove, stride, left)
        return SlowCut(kept, second, (0, overflow), None)
    if strategy == "only_second":
        if n_second is None:  # nothing to truncate: transformers silently keeps the text whole
            return SlowCut(first, second, None, None)
        if n_second <= remove:
            message = (
                f"We need to remove {remove} to truncate the input but the second sequence has a length {n_second}. "
                "Please select another truncation strategy than only_second, for instance 'longest_first' or "
                "'only_first'."
            )
            return SlowCut(first, second, None, ("error", message))
        kept, overflow = _cut_one(n_second, remove, stride, left)
        return SlowCut(first, kept, (1, overflow), None)
    assert strategy == "longest_first" and n_second is not None, strategy
    # First even out the two lengths, then take the rest half from each; the odd token comes from the
    # second sequence when the first is longer, else from the first (transformers' arithmetic, kept as is).
    first_remove = min(abs(n_second - n_first), remove)
    rest = remove - first_remove
    if n_first > n_second:
        from_first, from_second = first_remove + rest // 2, rest - rest // 2
    else:
        from_first, from_second = rest // 2, first_remove + rest - rest // 2
    if left:
        first, second = (min(from_first, n_first), n_first), (min(from_second, n_second), n_second)
    else:
        first, second = (0, max(n_first - from_first, 0)), (0, max(n_second - from_second, 0))
    return SlowCut(first, second, None, ("warning", LONGEST_FIRST_PAIR_OVERFLOW))


def _cut_one(n: int, remove: int, stride: int, left: bool) -> tuple[Span, Span]:
    """The kept span and the overflow span (the removed tokens and `stride` kept ones next to them)."""
    window = min(n, stride + remove)
    if left:
        return (remove, n), (0, window)
    return (0, n - remove), (n - window, n)


def windows(n: int, size: int, stride: int, left: bool) -> list[Span]:
    """Cut n tokens into windows of `size` overlapping by `stride`, from the right end when `left`.

    The first window is what truncation keeps (the start of the sequence, or its end when `left`).

    >>> windows(7, 3, 1, left=False), windows(7, 3, 1, left=True)
    ([(0, 3), (2, 5), (4, 7)], [(4, 7), (2, 5), (0, 3)])
    """
    if size >= n:
        return [(0, n)]
    if size == 0:  # everything overflows (only when special tokens take the whole max_length)
        return [(0, 0), (0, n)]
    if stride >= size:
        raise ValueError(
            f"stride={stride} must be smaller than the room left for each truncated text ({size} tokens: max_length "
            "less the special tokens, shared between the two texts of a pair); lower stride or raise max_length"
        )
    step = size - stride
    out = []
    if left:
        for last in range(n - 1, -1, -step):
            start = max(last + 1 - size, 0)
            out.append((start, last + 1))
            if start == 0:
                break
    else:
        for start in range(0, n, step):
            stop = min(start + size, n)
            out.append((start, stop))
            if stop == n:
                break
    return out


def fast_rows(
    n_first: int, n_second: int | None, size: int, strategy: str, stride: int, left: bool
) -> list[tuple[Span, Span | None]]:
    """The rows (span of the first sequence, span of the second) that `tokenizers` makes; the first row is
    the truncated sequence, the others its overflow. `size` is max_length less the special tokens.

    Raises ValueError where `tokenizers` raises: only_second without a second text, or a sequence too
    short to remove what must go.
    """
    total = n_first + (n_second or 0)
    if size == 0:
        first = windows(n_first, 0, stride, left)
        second = None if n_second is None else windows(n_second, 0, stride, left)
    elif total <= size:
        return [((0, n_first), None if n_second is None else (0, n_second))]
    elif strategy == "longest_first":
        if n_second is None:
            first, second = windows(n_first, size, stride, left), None
        else:
            # Keep the shorter text whole if the longer one can give up everything; otherwise split the room
            # in two halves, the odd token going to the longer text (to the second one when they are equal).
            short, long_ = sorted((n_first, n_second))
            keep_short, keep_long = short, (short if short > size else max(short, size - short))
            if keep_short + keep_long > size:
                keep_short, keep_long = size // 2, size // 2 + size % 2
            keep_first, keep_second = (
                (keep_long, keep_short) if n_first > n_second else (keep_short, keep_long)
            )
            first = windows(n_first, keep_first, stride, left)
            second = windows(n_second, keep_second, stride, left)
    else:
        which = "first" if strategy == "only_first" else "second"
        target = n_first if strategy == "only_first" else n_second
        if target is None:
            raise ValueError(
                "truncation='only_second' needs a text pair, but this text has no second text; use "
                "truncation=True (longest_first) or 'only_first'"
            )
        remove = total - size
        if target <= remove:
            raise ValueError(
                f"truncation={strategy!r} must remove {remove} tokens from the {which} text, which has only "
                f"{target}; raise max_length or use truncation=True (longest_first)"
            )
        cut = windows(target, target - remove, stride, left)
        whole = [(0, n_first)] if strategy == "only_second" else [(0, n_second or 0)]
        first, second = (cut, whole) if strategy == "only_first" else (whole, cut)
        if n_second is None:
            second = None
    return _combine(first, second)


def _combine(first: list[Span], second: list[Span] | None) -> list[tuple[Span, Span | None]]:
    """Pair up windows in `tokenizers`' order: the kept pair; each overflow window of the first text with
    the kept second window, then with each overflow window of the second; the kept first window with each
    overflow window of the second."""
    if second is None:
        return [(w, None) for w in first]
    rows = [(first[0], second[0])]
    for a in first[1:]:
        rows.append((a, second[0]))
        rows += [(a, b) for b in second[1:]]
    rows += [(first[0], b) for b in second[1:]]
    return rows
