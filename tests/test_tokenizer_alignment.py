"""BatchEncoding's alignment (tokens, word_ids, sequence_ids, token_to_chars, char_to_token, word_to_tokens...)
against transformers 4.57's GPT2TokenizerFast, question by question, on tricky text and every call shape:
pairs, BOS, add_prefix_space, truncation windows with stride, left/right padding, tensors, added tokens that
strip whitespace, split_special_tokens and pre-tokenized words. GPT2Tokenizer, like transformers' slow
tokenizer, has no alignment: there every one of these methods raises.
"""

from __future__ import annotations

import copy
import pickle
import random

import pytest
from transformers import AddedToken as HFAddedToken

from gpt2kit import GPT2Tokenizer, GPT2TokenizerFast
from gpt2kit.tokenizer import AddedToken
from tokenizer_corpus import EMOJI_SEQUENCES, EOT, WORDS, eot_cases, generated_text
from tokenizer_oracle import gpt2_folder, hf_tokenizer

METHODS = ["tokens", "word_ids", "words", "sequence_ids", "token_to_sequence", "token_to_word", "token_to_chars",
           "word_to_tokens", "word_to_chars", "char_to_token", "char_to_word"]  # fmt: skip


def tricky_texts() -> list[str]:
    rng = random.Random(13)
    texts = [
        "Hello world!", "", " ", "  two  spaces ", "a\n\nb\t c", "don't we'll I'M", "naïve café 東京 🤗!",
        "e\u0301\u0301 x", "👨‍👩‍👧‍👦 and 🏳️‍🌈", "3.14159 1,000,000 0x1F", "\U000323b0's", "\x00\x1c\x85 end",
        "tail   ", "\u3000\u2028x\xa0y", "A" * 40 + " " + "ab" * 30,
    ]  # fmt: skip
    texts += [t for t in eot_cases() if len(t) < 60]
    texts += [generated_text(rng)[:300] for _ in range(25)]
    texts += [
        " ".join(rng.choice(WORDS + EMOJI_SEQUENCES) for _ in range(rng.randint(1, 12))) for _ in range(10)
    ]
    return texts


TEXTS = tricky_texts()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return gpt2_folder(tmp_path_factory.mktemp("gpt2"))


def hf_word_to_chars(enc, row, word, seq):
    try:
        return enc.word_to_chars(row, word, sequence_index=seq)
    except TypeError:  # transformers' CharSpan(*None) for a word without tokens; ours returns None
        return None


def answers(enc, row: int, lengths: tuple[int, int]) -> dict:
    """Every alignment question about one row, asked through the BatchEncoding API."""
    tokens = enc.tokens(row)
    n = len(tokens)
    words = [w for w in enc.word_ids(row) if w is not None]
    top = max(words, default=-1) + 2
    chars = range(max(lengths) + 2)
    e = enc.encodings[row]
    return {
        "ids": list(e.ids),
        "type_ids": list(e.type_ids),
        "offsets": [tuple(o) for o in e.offsets],
        "special_tokens_mask": list(e.special_tokens_mask),
        "attention_mask": list(e.attention_mask),
        "n_sequences": e.n_sequences,
        "tokens": tokens,
        "word_ids": enc.word_ids(row),
        "sequence_ids": enc.sequence_ids(row),
        "token_to_sequence": [enc.token_to_sequence(row, t) for t in range(n + 2)],
        "token_to_word": [enc.token_to_word(row, t) for t in range(n + 2)],
        "token_to_chars": [enc.token_to_chars(row, t) for t in range(n + 2)],
        "word_to_tokens": [enc.word_to_tokens(row, w, sequence_index=s) for s in (0, 1) for w in range(top)],
        "word_to_chars": [hf_word_to_chars(enc, row, w, s) for s in (0, 1) for w in range(top)],
        "char_to_token": [enc.char_to_token(row, c, sequence_index=s) for s in (0, 1) for c in chars],
        "char_to_word": [enc.char_to_word(row, c, sequence_index=s) for s in (0, 1) for c in chars],
    }


def assert_same_alignment(ours, theirs, texts, pairs=None):
    assert _plain(ours["input_ids"]) == _plain(theirs["input_ids"])
    assert len(ours.encodings) == len(theirs.encodings)
    assert ours.n_sequences == theirs.n_sequences and ours.is_fast and theirs.is_fast
    mapping = theirs.get("overflow_to_sample_mapping")
    for row in range(len(theirs.encodings)):
        sample = int(mapping[row]) if mapping is not None else row
        lengths = (_length(texts[sample]), _length(pairs[sample]) if pairs else 0)
        got, want = answers(ours, row, lengths), answers(theirs, row, lengths)
        for key in want:
            assert got[key] == want[key], (key, row, texts[sample], pairs[sample] if pairs else None)


def _plain(values):
    return values.tolist() if hasattr(values, "tolist") else values


def _length(text) -> int:
    return max(map(len, text), default=0) if isinstance(text, list) else len(text)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"add_prefix_space": True},
        {"add_bos_token": True},
        {"add_bos_token": True, "add_prefix_space": True},
    ],
)
def test_alignment_of_texts_matches_transformers(folder, settings):
    ours, theirs = (
        GPT2TokenizerFast.from_pretrained("gpt2", **settings),
        hf_tokenizer(folder, True, **settings),
    )
    assert_same_alignment(ours(TEXTS), theirs(TEXTS), TEXTS)
    one = TEXTS[5]
    assert_same_alignment(ours(one), theirs(one), [one])  # a single text, no batch axis


@pytest.mark.parametrize("settings", [{}, {"add_bos_token": True}])
def test_alignment_of_pairs_matches_transformers(folder, settings):
    ours, theirs = (
        GPT2TokenizerFast.from_pretrained("gpt2", **settings),
        hf_tokenizer(folder, True, **settings),
    )
    firsts, seconds = TEXTS[:30], TEXTS[10:40]
    assert_same_alignment(ours(firsts, seconds), theirs(firsts, seconds), firsts, seconds)
    batch = [(a, b) for a, b in zip(firsts[:8], seconds[:8])] + firsts[8:12]  # pairs and single texts mixed
    assert_same_alignment(
        ours.batch_encode_plus(batch), theirs.batch_encode_plus(batch), [b[0] if isinstance(b, tuple) else b for b in batch],
        [b[1] if isinstance(b, tuple) else "" for b in batch],
    )  # fmt: skip


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(truncation=True, max_length=7, stride=2, return_overflowing_tokens=True),
        dict(truncation="only_first", max_length=12, stride=3, return_overflowing_tokens=True),
        dict(truncation="only_second", max_length=12, return_overflowing_tokens=True),
        dict(truncation="longest_first", max_length=10),
        dict(padding=True),
        dict(padding="max_length", max_length=40, truncation=True, padding_side="left"),
        dict(padding=True, return_tensors="pt"),
        dict(padding=True, return_tensors="np", padding_side="left", return_offsets_mapping=True),
    ],
)
@pytest.mark.parametrize("bos", [False, True])
def test_alignment_under_truncation_padding_and_tensors_matches_transformers(folder, kwargs, bos):
    settings = {"pad_token": EOT, "add_bos_token": bos}
    ours, theirs = (
        GPT2TokenizerFast.from_pretrained("gpt2", **settings),
        hf_tokenizer(folder, True, **settings),
    )
    texts = [t for t in TEXTS if t][:16]
    if kwargs.get("truncation") in ("only_first", "only_second", "longest_first"):
        long, short = [t for t in TEXTS if len(t) > 60][:8], ["x y", "a", " hello there", "🤗"] * 2
        texts, pairs = (short, long) if kwargs["truncation"] == "only_second" else (long, short)
        assert_same_alignment(ours(texts, pairs, **kwargs), theirs(texts, pairs, **kwargs), texts, pairs)
    else:
        assert_same_alignment(ours(texts, **kwargs), theirs(texts, **kwargs), texts)


def with_added_tokens(tok, token_class):
    """A special token that strips whitespace on both sides and a plain added token that strips on its left."""
    special = token_class("[SP]", lstrip=True, rstrip=True, special=True)
    tok.add_special_tokens({"additional_special_tokens": [special]})
    tok.add_tokens([token_class("<tool>", lstrip=True)])
    return tok


@pytest.mark.parametrize("split_special_tokens", [False, True])
def test_alignment_with_added_tokens_matches_transformers(folder, split_special_tokens):
    ours = with_added_tokens(GPT2TokenizerFast.from_pretrained("gpt2"), AddedToken)
    theirs = with_added_tokens(hf_tokenizer(folder, True), HFAddedToken)
    texts = [
        "a <|endoftext|> b [SP]  c <tool> d",
        "[SP]x<tool><tool>  [SP]",
        " <tool>",
        "x [SP]",
        "🤗<tool>🤗",
    ]
    texts += [t.replace(" ", " <tool> ", 1) for t in TEXTS[15:30]]
    kwargs = {"split_special_tokens": split_special_tokens}
    assert_same_alignment(ours(texts, **kwargs), theirs(texts, **kwargs), texts)


def test_alignment_of_pretokenized_words_matches_transformers(folder):
    ours = GPT2TokenizerFast.from_pretrained("gpt2", add_prefix_space=True, add_bos_token=True)
    theirs = hf_tokenizer(folder, True, add_prefix_space=True, add_bos_token=True)
    lists = [t.split(" ") for t in TEXTS[:30]] + [["a<|endoftext|>b", " lead", "", "two words", "x  "], []]
    assert_same_alignment(
        ours(lists, is_split_into_words=True), theirs(lists, is_split_into_words=True), lists
    )
    pairs = lists[5:] + lists[:5]
    assert_same_alignment(
        ours(lists, pairs, is_split_into_words=True),
        theirs(lists, pairs, is_split_into_words=True),
        lists,
        pairs,
    )


def test_encodings_and_indexing_like_transformers(folder):
    ours, theirs = GPT2TokenizerFast.from_pretrained("gpt2"), hf_tokenizer(folder, True)
    a, b = ours(["Hello world", "x y z"]), theirs(["Hello world", "x y z"])
    assert a[1].ids == b[1].ids and a[1].offsets == b[1].offsets and a[1].word_ids == b[1].word_ids
    assert a[1].words == a[1].word_ids and len(a[1]) == len(b[1])
    assert [e.ids for e in a[0:2]] == [e.ids for e in b[0:2]]
    assert a["input_ids"] == b["input_ids"]
    # a row's overflow windows, on the first row of the sample
    kwargs = dict(truncation=True, max_length=3, stride=1, return_overflowing_tokens=True)
    a, b = ours("one two three four five", **kwargs), theirs("one two three four five", **kwargs)
    assert [e.ids for e in a.encodings[0].overflowing] == [e.ids for e in b.encodings[0].overflowing][
        : len(a.encodings) - 1
    ]
    # the deprecated words() warns, as transformers' does
    with pytest.warns(FutureWarning, match="word_ids"):
        assert a.words(0) == a.word_ids(0)


def test_unicode_17_letters_are_cut_into_words_as_tiktoken_cuts_them(folder):
    # U+323B0 (Unicode 17) is a letter to Python's `regex` and unassigned to the Rust engines (Unicode 16), so
    # "'s" after it is a contraction to one and punctuation + "s" to the other (see test_tokenizer_parity.py).
    # The words follow the engine that made the ids, as in transformers.
    text = "\U000323b0's \U000323b0\U000323b0a \U00010d4a's"
    ours, theirs = GPT2TokenizerFast.from_pretrained("gpt2")(text), hf_tokenizer(folder, True)(text)
    assert ours.input_ids == theirs.input_ids and ours[0].offsets == theirs[0].offsets
    assert ours.word_ids() == theirs.word_ids()
    assert ours.word_ids()[:6] == [0, 0, 0, 0, 0, 1]


def test_negative_indices_count_from_the_end():
    enc = GPT2TokenizerFast.from_pretrained("gpt2")(["Hello world", "a b c"])
    assert enc.token_to_chars(-1, -1) == enc.token_to_chars(1, 2) == (3, 5)
    assert enc.token_to_word(-1) == 1 and enc.token_to_sequence(0, -1) == 0


def test_alignment_survives_pickle_without_the_tokenizer():
    enc = GPT2TokenizerFast.from_pretrained("gpt2")(["Hello world", "x"], ["again", "y z"])
    blob = pickle.dumps(enc)
    assert b"GPT2TokenizerFast" not in blob  # worked out before pickling, not recomputed from a tokenizer
    again = pickle.loads(blob)
    assert dict(again) == dict(enc) and again.is_fast and again.n_sequences == 2
    assert again.word_ids(1) == enc.word_ids(1) and again.char_to_token(1, 2, sequence_index=1) == 2


def test_a_plain_call_does_not_work_out_the_alignment(monkeypatch):
    tok = GPT2TokenizerFast.from_pretrained("gpt2")
    calls = []
    align = tok._align_texts
    monkeypatch.setattr(tok, "_align_texts", lambda *a: calls.append(a) or align(*a))
    enc = tok(["Hello world"] * 3, padding=False)
    shallow = copy.copy(enc)  # as torch's default_collate copies a batch's first item
    assert calls == [] and shallow == enc
    assert shallow.word_ids(2) == [0, 1] and len(calls) == 1


def test_alignment_refuses_when_the_tokenizer_changed_since():
    tok = GPT2TokenizerFast.from_pretrained("gpt2")
    enc = tok("a <tool> b")
    tok.add_tokens(["<tool>"])
    with pytest.raises(ValueError, match="no longer encodes the texts as it did"):
        enc.word_ids()


@pytest.mark.parametrize("method", METHODS)
def test_slow_tokenizers_have_no_alignment_in_either_library(folder, method):
    args = [0] if method in ("tokens", "word_ids", "words", "sequence_ids") else [0, 0]
    for enc in (
        GPT2Tokenizer.from_pretrained("gpt2")(["Hello world"]),
        hf_tokenizer(folder, False)(["Hello world"]),
    ):
        assert enc.encodings is None and not enc.is_fast and enc.n_sequences is None
        with pytest.raises(ValueError, match=f"{method}\\(\\)"):
            getattr(enc, method)(*args)
    with pytest.raises(ValueError, match="only available on what a fast tokenizer returns"):
        GPT2Tokenizer.from_pretrained("gpt2")("x").word_ids()
