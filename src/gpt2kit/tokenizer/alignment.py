"""Where each token came from: its characters, its word and its text, as transformers' fast tokenizers say.

transformers' fast tokenizers return one `tokenizers.Encoding` per row beside the ids, and BatchEncoding's
word_ids(), token_to_chars(), char_to_token(), word_to_tokens()... read it. GPT2TokenizerFast returns the
same through `Encoding` below. It is built on the first question, not during the call: a plain
`tok(texts)` pays nothing for it. GPT2Tokenizer, as transformers' slow tokenizer, has no alignment: those
BatchEncoding methods raise there.

The words are what `tokenizers` calls words: each piece GPT-2's pre-tokenizer regex cuts from a text, and
each added token matched in it (`<|endoftext|>`), numbered from 0 in each text; with is_split_into_words=True
they are the words given. Character offsets count from the start of each text (a pair's second text starts
at 0 again; with is_split_into_words, each word does). A padding or BOS token belongs to no word, text or
characters.

>>> from gpt2kit import GPT2TokenizerFast
>>> enc = GPT2TokenizerFast.from_pretrained("gpt2")("Hello world!")
>>> enc.tokens(), enc.word_ids(), enc.token_to_chars(1), enc.char_to_token(6)
(['Hello', 'Ġworld', '!'], [0, 1, 2], CharSpan(start=5, end=11), 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

Span = tuple[int, int]
# One row of a fast tokenizer's output: (sample index, BOS tokens in front, the first text's token span, the
# second text's token span or None when the sample has no second text).
RowPlan = tuple[int, int, Span, Span | None]


class CharSpan(NamedTuple):
    """Characters [start, end) of the text a token or word came from."""

    start: int
    end: int


class TokenSpan(NamedTuple):
    """Tokens [start, end) of a row that a word was cut into."""

    start: int
    end: int


class Encoding:
    """One row of GPT2TokenizerFast's output with its alignment: the `tokenizers.Encoding` API for GPT-2.

    `sequence_index` picks the text of a pair (0 or 1); a row of one text answers every index with the whole
    row, as `tokenizers` does. Indices that point at no token, word or character give None; a negative token
    index counts from the end of the row.

    >>> from gpt2kit import GPT2TokenizerFast
    >>> e = GPT2TokenizerFast.from_pretrained("gpt2")("Hello world", "again")[0]
    >>> e.sequence_ids, e.word_to_tokens(0, sequence_index=1), e.offsets
    ([0, 0, 1], (2, 3), [(0, 5), (5, 11), (0, 5)])
    """

    __slots__ = ("ids", "type_ids", "tokens", "offsets", "word_ids", "special_tokens_mask", "attention_mask",
                 "overflowing", "_ranges")  # fmt: skip

    def __init__(
        self,
        ids: list[int],
        type_ids: list[int],
        tokens: list[str],
        offsets: list[Span],
        word_ids: list[int | None],
        special_tokens_mask: list[int],
        attention_mask: list[int],
        ranges: dict[int, range],
    ):
        self.ids = ids
        self.type_ids = type_ids
        self.tokens = tokens
        self.offsets = offsets
        self.word_ids = word_ids
        self.special_tokens_mask = special_tokens_mask
        self.attention_mask = attention_mask
        self.overflowing: list[Encoding] = []  # the overflow rows of a truncated sample, on its first row
        self._ranges = ranges  # text index -> the tokens of that text

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (
            f"Encoding(num_tokens={len(self.ids)}, attributes=[ids, type_ids, tokens, offsets, word_ids, "
            "attention_mask, special_tokens_mask, overflowing])"
        )

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    @property
    def words(self) -> list[int | None]:
        """The older name of word_ids."""
        return self.word_ids

    @property
    def n_sequences(self) -> int:
        """How many texts the row holds: 2 for a pair, else 1."""
        return len(self._ranges) or 1

    @property
    def sequence_ids(self) -> list[int | None]:
        """Per token: 0 for the first text, 1 for the second, None for BOS and padding."""
        out: list[int | None] = [None] * len(self.ids)
        for seq in range(self.n_sequences):
            r = self._range(seq)
            out[r.start : r.stop] = [seq] * len(r)
        return out

    def _range(self, sequence_index: int) -> range:
        return self._ranges.get(sequence_index, range(len(self.ids)))

    def _token(self, token_index: int) -> int | None:
        n = len(self.ids)
        if token_index < 0:
            token_index += n
        return token_index if 0 <= token_index < n else None

    def token_to_sequence(self, token_index: int) -> int | None:
        """Which text (0 or 1) the token came from; None for BOS, padding or an index past the row."""
        t = self._token(token_index)
        if t is None:
            return None
        if not self._ranges:
            return 0
        return next((seq for seq, r in self._ranges.items() if t in r), None)

    def token_to_word(self, token_index: int) -> int | None:
        """The index of the word the token came from, in its own text."""
        t = self._token(token_index)
        if t is None or self.token_to_sequence(t) is None:
            return None
        return self.word_ids[t]

    def token_to_chars(self, token_index: int) -> Span | None:
        """(start, end): the characters of its own text the token came from."""
        t = self._token(token_index)
        if t is None or self.token_to_sequence(t) is None:
            return None
        return self.offsets[t]

    def word_to_tokens(self, word_index: int, sequence_index: int = 0) -> Span | None:
        """(start, end): the tokens of the row that word `word_index` of text `sequence_index` became."""
        r = self._range(sequence_index)
        start = end = None
        for i in r:
            w = self.word_ids[i]
            if w is None:
                continue
            if w > word_index:  # words only grow along a text
                break
            if w == word_index:
                start = i if start is None else start
                end = i + 1
        return None if start is None else (start, end)

    def word_to_chars(self, word_index: int, sequence_index: int = 0) -> Span | None:
        """(start, end): the characters of text `sequence_index` that word `word_index` spans."""
        tokens = self.word_to_tokens(word_index, sequence_index)
        if tokens is None:
            return None
        start, end = tokens
        return self.offsets[start][0], self.offsets[end - 1][1]

    def char_to_token(self, char_index: int, sequence_index: int = 0) -> int | None:
        """The first token of the row whose characters include character `char_index` of the text."""
        r = self._range(sequence_index)
        offsets = self.offsets
        return next((i for i in r if offsets[i][0] <= char_index < offsets[i][1]), None)

    def char_to_word(self, char_index: int, sequence_index: int = 0) -> int | None:
        """The word of the text that character `char_index` belongs to."""
        t = self.char_to_token(char_index, sequence_index)
        return None if t is None else self.token_to_word(t)


@dataclass
class Aligned:
    """One text tokenized with its alignment: per token its id, characters, word and token string."""

    ids: list[int]
    offsets: list[Span]
    words: list[int]
    tokens: list[str]

    def part(self, span: Span) -> Aligned:
        start, stop = span
        if start == 0 and stop == len(self.ids):
            return self
        return Aligned(self.ids[start:stop], self.offsets[start:stop], self.words[start:stop],
                       self.tokens[start:stop])  # fmt: skip


@dataclass
class Specials:
    """The BOS and padding of a call, as they were when it ran (what build_rows puts around the texts)."""

    bos_id: int | None
    bos_token: str | None
    pad_id: int | None
    pad_token: str | None
    padding_side: str


def build_rows(
    plans: list[RowPlan],
    firsts: list[Aligned],
    seconds: list[Aligned | None],
    lengths: list[int],
    specials: Specials,
) -> list[Encoding]:
    """The Encoding of each output row: its sample's texts cut to the plan's spans, BOS in front, padded
    to `lengths` on the padding side. The first row of a sample lists the others as its overflowing rows."""
    rows: list[Encoding] = []
    main: dict[int, Encoding] = {}
    for (n, k, first_span, second_span), length in zip(plans, lengths):
        a = firsts[n].part(first_span)
        b = None if second_span is None else seconds[n].part(second_span)
        second = b or Aligned([], [], [], [])
        n_a, n_b = len(a.ids), len(second.ids)
        size = k + n_a + n_b
        pad = length - size
        left = pad if specials.padding_side == "left" else 0
        ranges = {0: range(left + k, left + k + n_a)}
        if b is not None:
            ranges[1] = range(left + k + n_a, left + size)
        row = Encoding(
            ids=[specials.bos_id] * k + a.ids + second.ids,
            type_ids=[0] * (k + n_a) + [1] * n_b,
            tokens=[specials.bos_token] * k + a.tokens + second.tokens,
            offsets=[(0, 0)] * k + a.offsets + second.offsets,
            word_ids=[None] * k + a.words + second.words,
            special_tokens_mask=[1] * k + [0] * (n_a + n_b),
            attention_mask=[1] * size,
            ranges=ranges,
        )
        if pad > 0:
            _pad(row, pad, specials)
        if n in main:
            main[n].overflowing.append(row)
        else:
            main[n] = row
        rows.append(row)
    return rows


def _pad(row: Encoding, pad: int, specials: Specials) -> None:
    columns = ((row.ids, specials.pad_id), (row.type_ids, 0), (row.tokens, specials.pad_token),
               (row.offsets, (0, 0)), (row.word_ids, None), (row.special_tokens_mask, 1),
               (row.attention_mask, 0))  # fmt: skip
    for values, fill in columns:
        if specials.padding_side == "left":
            values[:0] = [fill] * pad
        else:
            values += [fill] * pad
