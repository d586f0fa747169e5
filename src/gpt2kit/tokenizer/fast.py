"""GPT2TokenizerFast: the same ids as GPT2Tokenizer, from tiktoken's native BPE.

tiktoken's BPE takes `mergeable_ranks` (token bytes -> rank) and always merges the adjacent pair whose
concatenation has the lowest rank, using the rank as the token id. GPT-2's vocab.json gives every merged
token the id 256 + its line in merges.txt, so its ids *are* its ranks, and tiktoken built from them gives
GPT-2's ids. Other vocabularies are checked when loaded:

- ids in another order (special tokens first, say): tiktoken gets the merge order as ranks, and its output
  is translated to ids through a table (a little slower; logged at INFO);
- a vocabulary tiktoken cannot represent (a merge whose result is missing from vocab.json, a byte without
  a token, two merges making the same token): the pure-Python engine runs instead (logged as a WARNING).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import os
from typing import Any

import regex
import tiktoken

from gpt2kit.tokenizer import pretokenize, truncation
from gpt2kit.tokenizer.alignment import RowPlan
from gpt2kit.tokenizer.base import ROW_PLANS, Sample, Span, TokenizerBase
from gpt2kit.tokenizer.bpe import PATTERN, PATTERN_RE, BytePairEncoder, bytes_to_unicode
from gpt2kit.tokenizer.files import AddedToken, Vocabulary
from gpt2kit.tokenizer.options import CallOptions
from gpt2kit.tokenizer.slow import _vocabulary_from_files, python_engine

logger = logging.getLogger(__name__)

# Joins a batch into one string for a single tiktoken call: tiktoken encodes the text between two special
# tokens independently (its regex runs on that stretch alone), so "a<SEP>b" gives exactly the ids of "a",
# then SEP, then those of "b". Non-characters U+FDD0/U+FDD1 make it unlikely in text, and a batch that
# does contain it is encoded text by text instead.
SEPARATOR = "\ufdd0gpt2kit-separator\ufdd1"
# One tiktoken call handles at most this many characters, so that the ids of a huge batch never sit in
# one giant list.
CHUNK_CHARS = 1 << 20


class UnsupportedVocabulary(ValueError):
    """A vocabulary that tiktoken's BPE would not encode the way merges.txt says."""


def tiktoken_ranks(vocab: Vocabulary) -> tuple[dict[bytes, int], list[int] | None]:
    """tiktoken's mergeable_ranks for a vocabulary, and the rank -> id table when ids are not the ranks.

    Raises UnsupportedVocabulary when tiktoken cannot reproduce the merges.
    """
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for b, c in bytes_to_unicode().items():
        if c not in vocab.encoder:
            raise UnsupportedVocabulary(f"byte {b:#04x} (spelled {c!r}) has no token in vocab.json")
        ranks[bytes([b])] = vocab.encoder[c]
    merged_ids = []
    for first, second in vocab.merges:
        token = first + second
        token_id = vocab.encoder.get(token)
        if token_id is None:
            raise UnsupportedVocabulary(
                f"merge {first!r} {second!r} makes {token!r}, which is not in vocab.json"
            )
        try:
            key = bytes(byte_decoder[c] for c in token)
        except KeyError:
            raise UnsupportedVocabulary(
                f"merged token {token!r} is not spelled in byte-level characters"
            ) from None
        if key in ranks:
            raise UnsupportedVocabulary(f"{token!r} is made by two merges (or is a byte and a merge)")
        ranks[key] = token_id
        merged_ids.append(token_id)
    if len(set(ranks.values())) != len(ranks):
        raise UnsupportedVocabulary("two byte-level tokens share one id in vocab.json")
    # Only merged tokens' ranks are ever compared, so byte tokens may have any ids.
    if all(a < b for a, b in zip(merged_ids, merged_ids[1:])):
        return ranks, None
    # Ranks in merge order (bytes first, then merges.txt line by line), and each rank's id.
    return {key: rank for rank, key in enumerate(ranks)}, list(ranks.values())


class TiktokenEngine:
    """Ordinary text -> ids with tiktoken, for a vocabulary tiktoken_ranks accepts.

    >>> from gpt2kit.tokenizer.files import load_bundled
    >>> TiktokenEngine(load_bundled()).encode_ordinary("Hello world")
    [15496, 995]
    """

    def __init__(self, vocab: Vocabulary):
        ranks, self.id_of_rank = tiktoken_ranks(vocab)
        self.separator_rank = max(ranks.values()) + 1
        self.encoding = tiktoken.Encoding(
            name="gpt2kit",
            pat_str=PATTERN,
            mergeable_ranks=ranks,
            special_tokens={SEPARATOR: self.separator_rank},
        )
        self._allowed = {SEPARATOR}

    def encode_ordinary(self, text: str) -> list[int]:
        ids = self.encoding.encode_ordinary(text)
        return ids if self.id_of_rank is None else [self.id_of_rank[r] for r in ids]

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, from one tiktoken call per ~1M characters instead of one per text.

        tiktoken's per-call overhead dominates short texts (lines average a few dozen characters), and its
        own encode_ordinary_batch adds a thread-pool task per text on top.
        """
        ends = list(itertools.accumulate(map(len, texts)))  # characters up to the end of each text
        out: list[list[int]] = []
        start = 0
        while start < len(texts):
            # Cut after the text that crosses the next CHUNK_CHARS boundary (at least one text per call).
            stop = bisect.bisect_left(ends, (ends[start - 1] if start else 0) + CHUNK_CHARS, lo=start) + 1
            out += self._encode_joined(texts[start:stop])
            start = stop
        return out

    def _encode_joined(self, texts: list[str]) -> list[list[int]]:
        if len(texts) == 1:
            return [self.encode_ordinary(texts[0])]
        joined = SEPARATOR.join(texts)
        if joined.count(SEPARATOR) != len(texts) - 1:  # some text holds the separator itself
            return [self.encode_ordinary(t) for t in texts]
        ranks = self.encoding.encode(joined, allowed_special=self._allowed, disallowed_special=())
        out = []
        find, sep = ranks.index, self.separator_rank
        start = 0
        for _ in range(len(texts) - 1):
            end = find(sep, start)
            out.append(ranks[start:end])
            start = end + 1
        out.append(ranks[start:])
        if self.id_of_rank is not None:
            table = self.id_of_rank
            out = [[table[r] for r in row] for row in out]
        return out


@functools.lru_cache(maxsize=8)
def native_engine(vocab: Vocabulary) -> TiktokenEngine | None:
    """The tiktoken engine for a vocabulary (built once per vocabulary), or None if tiktoken can't do it."""
    try:
        engine = TiktokenEngine(vocab)
    except UnsupportedVocabulary as e:
        logger.warning(
            "GPT2TokenizerFast: tiktoken cannot encode this vocabulary (%s); using the pure-Python BPE", e
        )
        return None
    if engine.id_of_rank is not None:
        logger.info(
            "GPT2TokenizerFast: vocab.json ids are not in merges.txt order; translating tiktoken's ranks"
        )
    return engine


class GPT2TokenizerFast(TokenizerBase):
    """GPT-2's tokenizer on tiktoken: transformers' GPT2TokenizerFast API and ids, several times faster.

    >>> tok = GPT2TokenizerFast.from_pretrained("gpt2")
    >>> tok("Hello world")["input_ids"], tok.decode([15496, 995])
    ([15496, 995], 'Hello world')
    >>> tok.pad_token = tok.eos_token
    >>> tok(["Hello world", "Hi"], padding=True, return_tensors="pt")["input_ids"].shape
    torch.Size([2, 2])
    """

    is_fast = True
    _prefix_space_per_segment = True
    _spaces_between_added_tokens = False
    _length_after_padding = True
    _split_special_keeps_added = True
    # Unicode White_Space (what tokenizers strips): str.strip()'s whitespace less U+001C..U+001F.
    _strip_chars = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        merges_file: str | os.PathLike | None = None,
        tokenizer_file: str | os.PathLike | None = None,
        unk_token: str | AddedToken | None = "<|endoftext|>",
        bos_token: str | AddedToken | None = "<|endoftext|>",
        eos_token: str | AddedToken | None = "<|endoftext|>",
        add_prefix_space: bool = False,
        **kwargs: Any,
    ):
        vocab, settings = _vocabulary_from_files(vocab_file, merges_file, tokenizer_file)
        self._setup(
            vocab,
            **{
                **settings,
                "unk_token": unk_token,
                "bos_token": bos_token,
                "eos_token": eos_token,
                "add_prefix_space": add_prefix_space,
                **kwargs,
            },
        )
        self._engine = self._make_engine()

    def _make_engine(self) -> TiktokenEngine | BytePairEncoder:
        engine = native_engine(self._vocab)
        if engine is None:
            unk = self.unk_token
            return python_engine(self._vocab, None if unk is None else self.convert_tokens_to_ids(unk))
        return engine

    def _word_pattern(self, text: str) -> regex.Pattern:
        """The pre-tokenizer regex as tiktoken applies it to `text` (pretokenize.py)."""
        return pretokenize.rust_pattern(text) if isinstance(self._engine, TiktokenEngine) else PATTERN_RE

    # --- transformers' fast tokenizer's way of truncating and adding special tokens -----------------------

    def _assemble(self, samples: list[Sample], o: CallOptions) -> tuple[dict[str, list], list[int]]:
        """Each sample as `tokenizers` builds it: truncation cuts windows of max_length (less the BOS) that
        overlap by `stride`, and with return_overflowing_tokens every window is a row of its own, traced back
        to its sample by `overflow_to_sample_mapping`. The BOS of add_bos_token goes before the first text
        only ("<bos> $A $B"), and the second text's tokens have token type 1."""
        bos = [self.bos_token_id] if o.add_special_tokens and self.add_bos_token else []
        k = len(bos)
        left = self.truncation_side == "left"
        if o.truncation is not None and o.stride > o.max_length - self.add_bos_token:
            # `tokenizers` refuses this when truncation is set up, before looking at any text.
            raise ValueError(
                f"stride={o.stride} is larger than the room max_length={o.max_length} leaves for text "
                f"({o.max_length - self.add_bos_token} tokens after the special ones); lower stride or raise max_length"
            )
        rows: list[list[int]] = []
        types: list[list[int]] = []
        spans: list[list[Span]] = []
        plans: list[RowPlan] = []  # per row: its sample, BOS count and token spans (for the alignment)
        mapping: list[int] = []
        main_rows: list[int] = []
        room = None if o.truncation is None else o.max_length - k
        for n, (ids, pair_ids, offsets, pair_offsets) in enumerate(samples):
            if pair_ids is None and (room is None or len(ids) <= room):
                # The common case, one text kept whole: no windows to plan.
                main_rows.append(len(rows))
                mapping.append(n)
                row = bos + ids if k else ids
                rows.append(row)
                plans.append((n, k, (0, len(ids)), None))
                if o.return_token_type_ids:
                    types.append([0] * len(row))
                if o.return_offsets_mapping:
                    spans.append([(0, 0)] * k + offsets)
                continue
            n_pair = None if pair_ids is None else len(pair_ids)
            if room is None or len(ids) + (n_pair or 0) <= room:
                plan = [((0, len(ids)), None if n_pair is None else (0, n_pair))]
            else:
                plan = truncation.fast_rows(len(ids), n_pair, room, o.truncation, o.stride, left)
                if not o.return_overflowing_tokens:
                    plan = plan[:1]
            main_rows.append(len(rows))
            for first, second in plan:
                row = bos + _part(ids, first) if k else _part(ids, first)
                n_first = len(row)
                if second is not None:
                    row = row + _part(pair_ids, second)
                rows.append(row)
                plans.append((n, k, first, second))
                mapping.append(n)
                if o.return_token_type_ids:
                    types.append([0] * n_first + [1] * (len(row) - n_first))
                if o.return_offsets_mapping:
                    spans.append(
                        [(0, 0)] * k
                        + _part(offsets, first)
                        + ([] if second is None else _part(pair_offsets, second))
                    )
        out: dict[str, list] = {"input_ids": rows}
        if o.return_token_type_ids:
            out["token_type_ids"] = types
        if o.return_attention_mask:
            out["attention_mask"] = [[1] * len(row) for row in rows]
        if o.return_special_tokens_mask:
            out["special_tokens_mask"] = [[1] * k + [0] * (len(row) - k) for row in rows]
        if o.return_offsets_mapping:
            out["offset_mapping"] = spans
        if o.return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = mapping
        out[ROW_PLANS] = plans  # not an output column: _finish_rows moves it onto the BatchEncoding
        return out, main_rows

    # transformers' GPT2TokenizerFast answers these three from the `tokenizers` backend or its base class, not
    # as GPT2Tokenizer does: one BOS for a pair, and build_inputs_with_special_tokens adds nothing at all (so
    # prepare_for_model adds no BOS either, in transformers too).

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many special tokens encoding adds to one text or a pair: the one BOS of add_bos_token."""
        return int(self.add_bos_token)

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """The ids joined, as transformers' GPT2TokenizerFast returns them (without its BOS)."""
        return token_ids_0 if token_ids_1 is None else token_ids_0 + token_ids_1

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """With already_has_special_tokens, 1 for each special token id; else all 0s, as
        build_inputs_with_special_tokens adds none (transformers raises here instead)."""
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        return [0] * (len(token_ids_0) + len(token_ids_1 or []))


def _part(values: list, span: Span) -> list:
    """values[start:stop], without a copy when the span is all of it."""
    start, stop = span
    return values if start == 0 and stop == len(values) else values[start:stop]
