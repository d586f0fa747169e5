"""Pre-tokenized input (is_split_into_words=True) and split_special_tokens=True, against transformers 4.57:
each gpt2kit class against its transformers namesake, same call, same output (keys, order, values).

The two classes differ here as transformers' do: the slow one puts a space before every word (and a whole
word's text), the fast one before every stretch of a word between added tokens and only with
add_prefix_space=True; split_special_tokens leaves no added token whole in the slow one, and leaves the
non-special ones whole in the fast one.

Two transformers bugs are not copied: its slow tokenizer raises IndexError on an empty list of words in a
batch, and ignores split_special_tokens= in a call on a batch (it reads only the tokenizer's setting there,
where a call on one text reads the argument). So the slow tokenizer's batches are compared text by text.
"""

from __future__ import annotations

import json

import pytest
from transformers import AddedToken as HFAddedToken

from gpt2kit import GPT2Tokenizer, GPT2TokenizerFast
from gpt2kit.tokenizer import AddedToken
from tokenizer_corpus import EOT
from tokenizer_oracle import gpt2_folder, hf_tokenizer

WORD_LISTS = [
    ["Hello", "world"],
    ["a<|endoftext|>b", " lead", "", "two words", "x  ", "🤗", "naïve", "'s", "don't"],
    ["", ""],
    [" ", "\n", "\t x"],
    ["東京", "e\u0301", "3.14", "1,000", "\U000323b0's"],
    [EOT, EOT + EOT, f" {EOT} "],
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return gpt2_folder(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(params=[GPT2Tokenizer, GPT2TokenizerFast], ids=["slow", "fast"])
def cls(request):
    return request.param


def pair(cls, folder, **settings):
    return cls.from_pretrained("gpt2", **settings), hf_tokenizer(folder, cls.is_fast, **settings)


def plain(enc) -> dict:
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in enc.items()}


def same(a, b) -> None:
    a, b = plain(a), plain(b)
    assert list(a) == list(b)
    for key in b:
        got, want = a[key], b[key]
        if key == "offset_mapping":  # transformers' offsets are tuples in lists
            got, want = json.loads(json.dumps(got)), json.loads(json.dumps(want))
        assert got == want, key


@pytest.mark.parametrize(
    "settings",
    [
        {"add_prefix_space": True},
        {"add_prefix_space": True, "add_bos_token": True},
        {"add_prefix_space": False},
    ],
)
def test_words_match_transformers(cls, folder, settings):
    if cls.is_fast and not settings["add_prefix_space"]:
        pytest.skip("the fast tokenizers refuse words without add_prefix_space (test below)")
    ours, theirs = pair(cls, folder, **settings)
    kw = {"is_split_into_words": True}
    same(ours(WORD_LISTS, **kw), theirs(WORD_LISTS, **kw))
    assert ours([[], ["a"]], **kw).input_ids == [ours.encode([], **kw), ours.encode(["a"], **kw)]
    same(ours(WORD_LISTS, WORD_LISTS[::-1], **kw), theirs(WORD_LISTS, WORD_LISTS[::-1], **kw))
    for words in WORD_LISTS:
        same(ours(words, **kw), theirs(words, **kw))
        same(
            ours.encode_plus(words, ["pair", "words"], **kw),
            theirs.encode_plus(words, ["pair", "words"], **kw),
        )
        assert ours.encode(words, **kw) == theirs.encode(words, **kw)
    batch = [WORD_LISTS[0], (WORD_LISTS[1], WORD_LISTS[3]), WORD_LISTS[4]]
    same(ours.batch_encode_plus(batch, **kw), theirs.batch_encode_plus(batch, **kw))
    more = dict(return_special_tokens_mask=True, return_token_type_ids=True, return_length=True)
    same(ours(WORD_LISTS, **kw, **more), theirs(WORD_LISTS, **kw, **more))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(truncation=True, max_length=6),
        dict(truncation="only_first", max_length=9, stride=2, return_overflowing_tokens=True),
        dict(padding=True, return_tensors="pt"),
        dict(padding="max_length", max_length=30, padding_side="left"),
    ],
)
def test_words_with_truncation_and_padding_match_transformers(cls, folder, kwargs):
    ours, theirs = pair(cls, folder, add_prefix_space=True, pad_token=EOT)
    lists = [words for words in WORD_LISTS if len(words) > 2]
    pairs = [["and", "a", "pair"]] * len(lists)
    kw = {"is_split_into_words": True, **kwargs}
    if cls.is_fast or not kwargs.get("return_overflowing_tokens"):
        same(ours(lists, **kw), theirs(lists, **kw))
    same(ours(lists, pairs, **kw), theirs(lists, pairs, **kw))


def test_fast_word_offsets_match_transformers(folder):
    ours, theirs = pair(GPT2TokenizerFast, folder, add_prefix_space=True)
    kw = {"is_split_into_words": True, "return_offsets_mapping": True}
    same(ours(WORD_LISTS, **kw), theirs(WORD_LISTS, **kw))


def test_fast_words_need_add_prefix_space_as_in_transformers(folder):
    ours, theirs = pair(GPT2TokenizerFast, folder)
    for call in (lambda t: t(["a", "b"], is_split_into_words=True),
                 lambda t: t.encode(["a", "b"], is_split_into_words=True),
                 lambda t: t.batch_encode_plus([["a", "b"]], is_split_into_words=True),
                 lambda t: t.tokenize(["a", "b"], is_split_into_words=True)):  # fmt: skip
        with pytest.raises(AssertionError, match="add_prefix_space=True"):
            call(theirs)
        with pytest.raises(ValueError, match="add_prefix_space=True"):
            call(ours)
        with pytest.raises(AssertionError):  # what code written against transformers catches
            call(ours)
    # gpt2kit also takes add_prefix_space per call
    assert ours(["a", "b"], is_split_into_words=True, add_prefix_space=True).input_ids == [257, 275]


def test_a_str_with_is_split_into_words_like_transformers(folder):
    slow, hf_slow = pair(GPT2Tokenizer, folder)
    # transformers' slow tokenizer encodes a str as a str; its tokenize() takes it for one word
    assert (
        slow("Hello world", is_split_into_words=True).input_ids
        == hf_slow("Hello world", is_split_into_words=True).input_ids
    )
    assert slow.tokenize("Hello world", is_split_into_words=True) == hf_slow.tokenize(
        "Hello world", is_split_into_words=True
    )
    fast, hf_fast = pair(GPT2TokenizerFast, folder, add_prefix_space=True)
    for tok in (fast, hf_fast):
        with pytest.raises(TypeError):
            tok("Hello world", is_split_into_words=True)
    with pytest.raises(TypeError, match="list of words"):
        fast([["a", 1]], is_split_into_words=True)
    for tok in (slow, hf_slow):  # the slow tokenize() takes one str
        with pytest.raises(TypeError):
            tok.tokenize(["a", "b"], is_split_into_words=True)
    words = WORD_LISTS[1]
    assert fast.tokenize(words, is_split_into_words=True) == hf_fast.tokenize(words, is_split_into_words=True)


# --- split_special_tokens ---------------------------------------------------------------------------------

TEXTS = [
    "a <|endoftext|> b [SP]  c <tool> d",
    "[SP]x<tool><tool>  [SP]",
    f"{EOT}{EOT}",
    " <tool>",
    "plain text",
]


def with_added_tokens(tok, token_class):
    special = token_class("[SP]", lstrip=True, rstrip=True, special=True)
    tok.add_special_tokens({"additional_special_tokens": [special]})
    tok.add_tokens([token_class("<tool>", lstrip=True)])
    return tok


def batch_ids(tok, texts, **kwargs):
    """A batch's ids as transformers' slow tokenizer would give them if it read split_special_tokens= for a
    batch: text by text."""
    return (
        [tok(text, **kwargs)["input_ids"] for text in texts]
        if not tok.is_fast
        else tok(texts, **kwargs)["input_ids"]
    )


def test_split_special_tokens_matches_transformers(cls, folder):
    ours, theirs = pair(cls, folder)
    ours, theirs = with_added_tokens(ours, AddedToken), with_added_tokens(theirs, HFAddedToken)
    for split in (False, True):
        kw = {"split_special_tokens": split, "return_special_tokens_mask": True}
        if cls.is_fast:
            same(ours(TEXTS, **kw), theirs(TEXTS, **kw))
        assert ours(TEXTS, **kw)["input_ids"] == batch_ids(theirs, TEXTS, **kw)
        for text in TEXTS:
            same(ours(text, **kw), theirs(text, **kw))
            assert ours.encode(text, split_special_tokens=split) == theirs.encode(
                text, split_special_tokens=split
            )
            assert ours.tokenize(text, split_special_tokens=split) == theirs.tokenize(
                text, split_special_tokens=split
            )
    assert ours(TEXTS).input_ids == theirs(TEXTS).input_ids  # the call's choice does not stick


def test_split_special_tokens_as_a_setting_matches_transformers(cls, folder, tmp_path):
    ours, theirs = pair(cls, folder, split_special_tokens=True)
    assert ours.split_special_tokens is True is theirs.split_special_tokens
    assert ours(TEXTS).input_ids == theirs(TEXTS).input_ids
    assert ours(TEXTS, split_special_tokens=False).input_ids == batch_ids(
        theirs, TEXTS, split_special_tokens=False
    )
    assert ours.tokenize(TEXTS[2]) == theirs.tokenize(TEXTS[2])
    # saved, it is read back by both libraries
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    for where in ("ours", "theirs"):
        again_ours = cls.from_pretrained(tmp_path / where)
        again_theirs = hf_tokenizer(tmp_path / where, cls.is_fast)
        assert again_ours.split_special_tokens is True is again_theirs.split_special_tokens
        assert again_ours(TEXTS).input_ids == again_theirs(TEXTS).input_ids
    cls.from_pretrained("gpt2").save_pretrained(tmp_path / "plain")
    assert "split_special_tokens" not in json.loads(
        (tmp_path / "plain" / "tokenizer_config.json").read_text()
    )
