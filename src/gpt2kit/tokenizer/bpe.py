"""GPT-2's byte-level BPE in plain Python: the reference engine, readable top to bottom.

Encoding one piece of text (after OpenAI's encoder.py and minGPT's bpe.py) is four steps:

1. split the text into pre-tokens with GPT-2's regex (a word with its leading space, a number, a run of
   punctuation, a run of whitespace), so that merges never cross a word boundary;
2. spell each pre-token's UTF-8 bytes with printable characters (`bytes_to_unicode`), because that is how
   vocab.json and merges.txt store byte strings: "Ġworld" is b" world";
3. merge adjacent symbols, the pair that comes first in merges.txt first, until no listed pair is left;
4. look the merged symbols up in vocab.json.

Special and added tokens (`<|endoftext|>`) are cut out of the text before step 1, by the shared tokenizer
code in base.py; this module only ever sees ordinary text.

>>> from gpt2kit.tokenizer.files import load_bundled
>>> vocab = load_bundled()
>>> bpe = BytePairEncoder(vocab.encoder, vocab.merges)
>>> bpe.encode_ordinary("Hello world")
[15496, 995]
"""

from __future__ import annotations

import functools

import regex

# GPT-2's pre-tokenizer, exactly as OpenAI's encoder.py (and transformers, and tokenizers) spell it.
# `\s+(?!\S)` keeps the last space of a run for the word after it, so "a  b" splits as "a", " ", " b".
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PATTERN_RE = regex.compile(PATTERN)

# Pre-tokens repeat a lot (" the", "\n"); beyond this many distinct ones the memo is dropped and rebuilt,
# so that encoding an endless stream cannot grow memory without bound.
CACHE_LIMIT = 200_000


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The printable character that stands for each of the 256 byte values in vocab.json and merges.txt.

    BPE works on strings, and the vocabulary must be able to hold any byte sequence, but a raw byte such as
    b" " or b"\\n" would be invisible (or a separator) in merges.txt. So the 188 bytes that are already
    printable Latin-1 characters stand for themselves, and the other 68 (control characters, space,
    0x7F-0xA0, 0xAD) are mapped, in order, to the characters from U+0100 on. That is why a space
    shows up as "Ġ" (U+0120) and a newline as "Ċ" (U+010A).

    >>> bytes_to_unicode()[ord(" ")], bytes_to_unicode()[ord("\\n")], bytes_to_unicode()[ord("A")]
    ('Ġ', 'Ċ', 'A')
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return dict(sorted(table.items()))


def get_pairs(word: list[str]) -> set[tuple[str, str]]:
    """The set of adjacent symbol pairs in a word, e.g. ["a", "b", "c"] -> {("a", "b"), ("b", "c")}."""
    return set(zip(word, word[1:]))


class BytePairEncoder:
    """GPT-2's merge loop over one vocabulary: ordinary text -> token ids, with a memo of pre-tokens.

    `encoder` is vocab.json (token string -> id), `merges` is merges.txt in order (rank 0 first).
    Merge results that are missing from the vocabulary become `unk_id`, as in transformers.

    >>> from gpt2kit.tokenizer.files import load_bundled
    >>> v = load_bundled()
    >>> BytePairEncoder(v.encoder, v.merges).bpe("Ġworld")
    ['Ġworld']
    """

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]], unk_id: int | None = None):
        self.encoder = encoder
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.unk_id = unk_id
        self.pattern = PATTERN_RE
        # str.translate table: after `piece.encode("utf-8").decode("latin-1")` each character's code point
        # is one byte, and this maps it to the vocabulary's character for that byte in a single C call.
        self.byte_to_char = str.maketrans(bytes_to_unicode())
        self.cache: dict[str, list[int]] = {}

    def bpe(self, word: str) -> list[str]:
        """Merge one pre-token, spelled in vocabulary characters, into vocabulary tokens.

        Repeatedly find the adjacent pair that was learned earliest (lowest rank in merges.txt) and fuse
        every occurrence of it, left to right, until no adjacent pair is a listed merge.
        """
        symbols = list(word)
        while len(symbols) > 1:
            pairs = get_pairs(symbols)
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def encode_piece(self, piece: str) -> list[int]:
        """Ids of one pre-token (as the regex cut it from the text), memoized."""
        ids = self.cache.get(piece)
        if ids is None:
            word = piece.encode("utf-8").decode("latin-1").translate(self.byte_to_char)
            ids = [self._id(token) for token in self.bpe(word)]
            if len(self.cache) >= CACHE_LIMIT:
                self.cache.clear()
            self.cache[piece] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of text that holds no special tokens (they would be split like any other characters)."""
        cache = self.cache
        ids: list[int] = []
        for piece in self.pattern.findall(text):
            cached = cache.get(piece)
            ids += cached if cached is not None else self.encode_piece(piece)
        return ids

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode_ordinary(text) for text in texts]

    def _id(self, token: str) -> int:
        token_id = self.encoder.get(token, self.unk_id)
        if token_id is None:
            raise ValueError(
                f"BPE produced {token!r}, which is not in vocab.json, and the tokenizer has no unk_token to "
                "stand for it; the vocabulary and merges.txt do not belong together, or set unk_token"
            )
        return token_id
