"""Learning a byte-level BPE vocabulary from text: what `train_new_from_iterator` runs.

The steps are those of the `tokenizers` library's BpeTrainer, so that a vocabulary learned here has the
same ids and merges as one transformers' GPT2TokenizerFast.train_new_from_iterator learns from the same text:

1. count words: each text is cut with GPT-2's pre-tokenizer regex as the Rust engines apply it (after
   add_prefix_space; pretokenize.py), and each piece is spelled in byte-level characters ("Ġworld");
2. the vocabulary starts with the special tokens, then the alphabet: the 256 byte characters (and any
   `initial_alphabet` extras) sorted by code point;
3. repeatedly merge the most frequent adjacent pair of symbols over all words (ties: the pair of lowest ids),
   adding the merged symbol to the vocabulary, until it has `vocab_size` entries or no pair is frequent
   enough.

Step 3 keeps a heap of candidate pairs that is updated lazily, exactly as `tokenizers` does: a popped pair
whose count has changed since it was pushed goes back with its new count, and each heap entry only knows the
words where its pair appeared when it was pushed. That is not just bookkeeping: a pair that forms again after
it was merged (next to a newer symbol) is merged again later, and its merge then takes the later rank. Doing
the same steps keeps the merges identical, not merely similar.

>>> words = count_words(["low low low lower newest newest"], add_prefix_space=False)
>>> vocab, merges = train_bpe(words, vocab_size=260, special_tokens=["<eos>"],
...                           initial_alphabet=bytes_to_unicode().values(), show_progress=False)
>>> merges, vocab["<eos>"], vocab["low"]
([('l', 'o'), ('lo', 'w'), ('Ġ', 'low')], 0, 258)
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from gpt2kit.tokenizer.bpe import bytes_to_unicode
from gpt2kit.tokenizer.pretokenize import rust_pattern

logger = logging.getLogger(__name__)

# What an initial-alphabet character counts as when the alphabet is limited: never dropped.
_ALWAYS = float("inf")


def count_words(texts: Iterable[str | list[str]], add_prefix_space: bool) -> Counter[str]:
    """How often each pre-token occurs in `texts` (str items, or batches of str), spelled in byte characters.

    >>> count_words(["the cat", ["the end"]], add_prefix_space=False)
    Counter({'the': 2, 'Ġcat': 1, 'Ġend': 1})
    """
    pieces: Counter[str] = Counter()
    for item in texts:
        batch = [item] if isinstance(item, str) else item
        for text in batch:
            if not isinstance(text, str):
                raise TypeError(
                    f"the training iterator must yield str or lists of str, got {type(text).__name__}: {text!r:.80}"
                )
            if add_prefix_space and not text.startswith(" "):
                text = " " + text  # as the ByteLevel pre-tokenizer does
            pieces.update(rust_pattern(text).findall(text))
    to_chars = str.maketrans(bytes_to_unicode())
    words: Counter[str] = Counter()
    for piece, count in pieces.items():
        words[piece.encode("utf-8", "surrogatepass").decode("latin-1").translate(to_chars)] += count
    return words


class _Word:
    """One distinct word as a list of symbol ids, merged in place; `lengths` (characters per symbol) is only
    kept when tokens have a maximum length."""

    __slots__ = ("symbols", "lengths")

    def __init__(self, symbols: list[int], track_lengths: bool):
        self.symbols = symbols
        self.lengths = [1] * len(symbols) if track_lengths else None

    def merge(self, a: int, b: int, new: int, max_length: float) -> list[tuple[tuple[int, int], int]]:
        """Replace every adjacent (a, b), left to right, by `new`; returns the pair count changes.

        The pair (a, b) itself is not counted down (the trainer's count for it goes stale, as in `tokenizers`),
        only the pairs with the neighbours: (prev, a) and (b, next) go, (prev, new) and (new, next) come,
        the latter two only if the joined token would stay shorter than `max_length` characters.
        """
        s, lengths = self.symbols, self.lengths
        changes = []
        i = 0
        while i < len(s) - 1:
            if s[i] == a and s[i + 1] == b:
                new_len = 0 if lengths is None else lengths[i] + lengths[i + 1]
                if i > 0:
                    changes.append(((s[i - 1], a), -1))
                    if lengths is None or lengths[i - 1] + new_len < max_length:
                        changes.append(((s[i - 1], new), 1))
                s[i : i + 2] = [new]
                if lengths is not None:
                    lengths[i : i + 2] = [new_len]
                if i < len(s) - 1:
                    changes.append(((b, s[i + 1]), -1))
                    if lengths is None or lengths[i + 1] + new_len < max_length:
                        changes.append(((new, s[i + 1]), 1))
            i += 1
        return changes


def train_bpe(
    word_counts: dict[str, int],
    vocab_size: int,
    special_tokens: Iterable[str] = (),
    *,
    min_frequency: int = 0,
    limit_alphabet: int | None = None,
    initial_alphabet: Iterable[str] = (),
    max_token_length: int | None = None,
    show_progress: bool = True,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn a BPE vocabulary (token -> id) and its merges (in rank order) from word counts.

    `word_counts` maps words, spelled in the symbols BPE works on (count_words' byte characters), to
    counts. The result holds at most `vocab_size` tokens, fewer when no pair occurs `min_frequency` times.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 0:
        raise ValueError(f"vocab_size must be an int >= 0, got {vocab_size!r}")
    token_to_id: dict[str, int] = {}
    id_to_token: list[str] = []

    def add(token: str) -> int:
        idx = token_to_id.get(token)
        if idx is None:
            idx = token_to_id[token] = len(id_to_token)
            id_to_token.append(token)
        return idx

    for token in special_tokens:
        add(token)

    # The alphabet: every character of the words, by frequency, plus the initial alphabet (always kept);
    # limit_alphabet drops the rarest. The kept ones get ids in code point order.
    frequency: dict[str, float] = Counter()
    for word, count in word_counts.items():
        for ch in word:
            frequency[ch] += count
    for ch in initial_alphabet:
        frequency[ch] = _ALWAYS
    kept = list(frequency)
    if limit_alphabet is not None and len(kept) > limit_alphabet:
        # (`tokenizers` breaks ties between equally rare characters arbitrarily; code point order here.)
        kept = sorted(kept, key=lambda ch: (frequency[ch], ch))[len(kept) - limit_alphabet :]
    for ch in sorted(kept):
        add(ch)

    # Words as symbol ids (characters dropped from the alphabet are dropped from the words), and for each
    # pair of adjacent symbols: its count over all words, and the words it occurs in.
    max_length = _ALWAYS if max_token_length is None else max_token_length
    words: list[_Word] = []
    counts: list[int] = []
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for word, count in word_counts.items():
        symbols = [token_to_id[ch] for ch in word if ch in token_to_id]
        i = len(words)
        words.append(_Word(symbols, max_token_length is not None))
        counts.append(count)
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + count
            where.setdefault(pair, set()).add(i)

    # Max-heap on (count, then the lower pair of ids first); `tick` orders entries that tie completely.
    tick = itertools.count()
    heap: list[tuple[int, int, int, int, set[int]]] = []

    def push(found: dict[tuple[int, int], set[int]]) -> None:
        for (a, b), positions in found.items():
            count = pair_counts[(a, b)]
            if count > 0:
                heapq.heappush(heap, (-count, a, b, next(tick), positions))

    push(where)
    del where
    merges: list[tuple[tuple[int, int], int]] = []
    progress = _progress(vocab_size - len(token_to_id), show_progress)
    while len(token_to_id) < vocab_size and heap:
        neg_count, a, b, _, positions = heapq.heappop(heap)
        count = pair_counts[(a, b)]
        if -neg_count != count:  # stale: back in with its current count
            heapq.heappush(heap, (-count, a, b, next(tick), positions))
            continue
        if count < 1 or count < min_frequency:
            break
        size = len(token_to_id)
        new = add(id_to_token[a] + id_to_token[b])
        merges.append(((a, b), new))
        found: dict[tuple[int, int], set[int]] = {}
        for i in positions:
            for pair, change in words[i].merge(a, b, new, max_length):
                pair_counts[pair] = pair_counts.get(pair, 0) + change * counts[i]
                if change > 0:
                    found.setdefault(pair, set()).add(i)
        push(found)
        if progress is not None and len(token_to_id) > size:
            progress.update(1)
    if progress is not None:
        progress.close()

    # A pair merged twice keeps its later rank, as `tokenizers` stores merges in a map keyed by pair.
    rank = {pair: r for r, (pair, _) in enumerate(merges)}
    ordered = sorted(rank, key=rank.__getitem__)
    return token_to_id, [(id_to_token[a], id_to_token[b]) for a, b in ordered]


def _progress(total: int, show: bool) -> Any:
    if not show or total <= 0:
        return None
    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal only, so logs and test output stay clean.
    return tqdm(total=total, desc="BPE merges", unit="merge", disable=None, leave=False)


def iterate_texts(text_iterator: Iterable[Any]) -> Iterator[str | list[str]]:
    """The iterator train_new_from_iterator takes, checked: str items or lists (batches) of str."""
    if isinstance(text_iterator, str):
        raise TypeError(
            "train_new_from_iterator takes an iterator of texts (or of lists of texts), not one str; wrap it: [text]"
        )
    yield from text_iterator
