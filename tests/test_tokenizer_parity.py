"""Same ids as transformers 4.57 on a varied corpus and on generated text; properties of both tokenizers.

The corpus (tokenizer_corpus.py) is standard-library source plus generated text with every case byte-level
BPE implementations trip on. The default run checks a ~300 KB slice; the slow-marked tests check 4 MB.
"""

from __future__ import annotations

import json
import logging
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2kit import GPT2Tokenizer, GPT2TokenizerFast
from gpt2kit.tokenizer.bpe import BytePairEncoder, bytes_to_unicode
from gpt2kit.tokenizer.fast import SEPARATOR, TiktokenEngine, UnsupportedVocabulary, tiktoken_ranks
from gpt2kit.tokenizer.files import Vocabulary, load_bundled
from tokenizer_corpus import EOT, build_corpus
from tokenizer_oracle import gpt2_folder, hf_tokenizer

FRAGMENTS = [EOT, " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "\xa0", "\u3000", "'s", "'re", "n't", "'LL", "a",
             "the", " the", "Hello", "🤗", "👨‍👩‍👧", "e\u0301", "日本", "1", "123", "!", "...", "\x00", "\x1c", "<|", "|>"]  # fmt: skip
tricky_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=30).map("".join)
any_text = st.one_of(st.text(), tricky_text)
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return gpt2_folder(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def hf_fast(folder):
    return hf_tokenizer(folder, fast=True)


@pytest.fixture(scope="module")
def hf_slow(folder):
    return hf_tokenizer(folder, fast=False)


@pytest.fixture(scope="module")
def fast():
    return GPT2TokenizerFast.from_pretrained("gpt2")


@pytest.fixture(scope="module")
def slow():
    return GPT2Tokenizer.from_pretrained("gpt2")


def assert_same_ids(texts, got, want, what):
    bad = [i for i in range(len(texts)) if got[i] != want[i]]
    assert not bad, (
        f"{what}: {len(bad)} texts differ, first {texts[bad[0]]!r:.200}: {got[bad[0]][:20]} != {want[bad[0]][:20]}"
    )


def check_corpus(texts, fast, slow, hf_fast, hf_slow):
    ids_fast = fast(texts, verbose=False)["input_ids"]
    assert_same_ids(texts, ids_fast, hf_fast(texts)["input_ids"], "GPT2TokenizerFast vs transformers fast")
    assert_same_ids(texts, slow(texts, verbose=False)["input_ids"], hf_slow(texts)["input_ids"],
                    "GPT2Tokenizer vs transformers slow")  # fmt: skip
    assert_same_ids(
        texts, ids_fast, [fast.encode(t, verbose=False) for t in texts], "fast batch vs one by one"
    )
    decoded = fast.batch_decode(ids_fast)
    assert decoded == texts  # every corpus text round-trips
    assert decoded == hf_fast.batch_decode(ids_fast)


def test_corpus_slice_matches_transformers(fast, slow, hf_fast, hf_slow):
    texts = build_corpus(300_000, seed=1)
    assert sum(EOT in t for t in texts) > 10 and max(map(len, texts)) > 20_000  # the slice has the hard cases
    check_corpus(texts, fast, slow, hf_fast, hf_slow)


@pytest.mark.slow
def test_full_corpus_matches_transformers(fast, slow, hf_fast, hf_slow):
    texts = build_corpus(4_000_000, seed=0)
    assert sum(len(t.encode("utf-8")) for t in texts) >= 4_000_000
    check_corpus(texts, fast, slow, hf_fast, hf_slow)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["add_prefix_space", "add_bos_token"])
def test_corpus_with_settings_matches_transformers(folder, setting):
    texts = build_corpus(1_000_000, seed=2)
    for ours, is_fast in ((GPT2TokenizerFast, True), (GPT2Tokenizer, False)):
        got = ours.from_pretrained("gpt2", **{setting: True})(texts, verbose=False)["input_ids"]
        want = hf_tokenizer(folder, is_fast, **{setting: True})(texts)["input_ids"]
        assert_same_ids(texts, got, want, f"{ours.__name__} {setting}")


def test_offsets_on_corpus_slice_match_transformers(fast, hf_fast):
    texts = build_corpus(60_000, seed=3)
    got = fast(texts, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    want = [list(map(tuple, o)) for o in hf_fast(texts, return_offsets_mapping=True)["offset_mapping"]]
    assert_same_ids(texts, got, want, "offsets")


# --- properties ------------------------------------------------------------------------------------------


@SETTINGS
@given(text=any_text)
def test_round_trip(fast, slow, text):
    for tok in (fast, slow):
        assert tok.decode(tok.encode(text, verbose=False)) == text


@SETTINGS
@given(text=any_text)
def test_generated_text_matches_transformers(fast, slow, hf_fast, hf_slow, text):
    assert fast.encode(text, verbose=False) == hf_fast(text)["input_ids"]
    assert slow.encode(text, verbose=False) == hf_slow(text)["input_ids"]


def test_unicode_17_letters_split_as_in_each_transformers_tokenizer(fast, slow, hf_fast, hf_slow):
    # U+323B0 (CJK Extension J, Unicode 17) is a letter to the `regex` module that both slow tokenizers
    # use, and unassigned to the Rust regex engines of tiktoken and `tokenizers`: so "'s" after it is a
    # contraction for the slow ones and punctuation + "s" for the fast ones. Each of ours follows its own.
    text = "\U000323b0's"
    assert fast.encode(text) == hf_fast(text)["input_ids"] == [172, 110, 236, 108, 6, 82]
    assert slow.encode(text) == hf_slow(text)["input_ids"] == [172, 110, 236, 108, 338]


@SETTINGS
@given(texts=st.lists(any_text, max_size=12))
def test_one_tiktoken_call_per_batch_equals_one_per_text(fast, slow, texts):
    assert fast(texts, verbose=False)["input_ids"] == [fast.encode(t, verbose=False) for t in texts]
    assert fast._engine.encode_ordinary_batch(texts) == [fast._engine.encode_ordinary(t) for t in texts]
    assert slow(texts, verbose=False)["input_ids"] == [slow.encode(t, verbose=False) for t in texts]


def test_batch_holding_the_separator_is_still_right(fast, slow):
    texts = ["a", f"x{SEPARATOR}y", "b"]
    assert fast(texts)["input_ids"] == [fast.encode(t) for t in texts] == [slow.encode(t) for t in texts]


@SETTINGS
@given(text=any_text, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_iter_encode_equals_encoding_the_whole(fast, slow, text, cuts):
    cuts = sorted({min(c, len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    for tok in (fast, slow):
        assert [i for ids in tok.iter_encode(chunks) for i in ids] == tok.encode(text, verbose=False)


def test_iter_encode_cuts_long_text_into_several_parts(fast):
    text = build_corpus(200_000, seed=4)
    text = "".join(text)
    chunks = [text[i : i + 10_000] for i in range(0, len(text), 10_000)]
    parts = list(fast.iter_encode(chunks))
    assert len(parts) > 10  # it really streams
    assert [i for p in parts for i in p] == fast.encode(text, verbose=False)


# --- vocabularies whose ids are not tiktoken's ranks -----------------------------------------------------


def permuted_folder(path, folder):
    """GPT-2's vocabulary with the ids of merged tokens reversed, so ids no longer follow merges.txt."""
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merged = sorted(i for i in vocab.values() if 256 <= i < 50256)
    flip = dict(zip(merged, reversed(merged)))
    gpt2_folder(path)
    (path / "vocab.json").write_text(
        json.dumps({t: flip.get(i, i) for t, i in vocab.items()}), encoding="utf-8"
    )
    return path


def test_ids_not_in_merge_order_are_translated(tmp_path, folder, caplog):
    path = permuted_folder(tmp_path / "permuted", folder)
    with caplog.at_level(logging.INFO, logger="gpt2kit"):
        fast = GPT2TokenizerFast.from_pretrained(path)
    assert isinstance(fast._engine, TiktokenEngine) and fast._engine.id_of_rank is not None
    assert "not in merges.txt order" in caplog.text
    texts = build_corpus(100_000, seed=5)
    want = hf_tokenizer(path, fast=True)(texts)["input_ids"]
    assert want != hf_tokenizer(folder, fast=True)(texts)["input_ids"]  # the permutation matters
    assert_same_ids(texts, fast(texts, verbose=False)["input_ids"], want, "permuted vocabulary, fast")
    assert_same_ids(
        texts, GPT2Tokenizer.from_pretrained(path)(texts, verbose=False)["input_ids"], want, "slow"
    )


def test_vocabulary_tiktoken_cannot_represent_falls_back_to_python(tmp_path, caplog):
    path = gpt2_folder(tmp_path / "broken")
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    del vocab["Ġthe"]  # its merge now makes a token the vocabulary lacks: transformers' slow maps it to unk
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="gpt2kit"):
        fast = GPT2TokenizerFast.from_pretrained(path)
    assert isinstance(fast._engine, BytePairEncoder) and "using the pure-Python BPE" in caplog.text
    texts = ["the cat and the dog", " the", "Hello world", "other words entirely"]
    want = hf_tokenizer(path, fast=False)(texts)["input_ids"]
    assert fast(texts)["input_ids"] == GPT2Tokenizer.from_pretrained(path)(texts)["input_ids"] == want
    assert want[1] == [50256]


def test_tiktoken_ranks_checks():
    gpt2 = load_bundled()
    ranks, table = tiktoken_ranks(gpt2)
    assert table is None and ranks[b" the"] == 262 and len(ranks) == 50256
    encoder = dict(gpt2.encoder)
    del encoder[bytes_to_unicode()[0]]
    with pytest.raises(UnsupportedVocabulary, match="byte 0x00"):
        tiktoken_ranks(Vocabulary(encoder, gpt2.merges))
    with pytest.raises(UnsupportedVocabulary, match="made by two merges"):
        tiktoken_ranks(Vocabulary(gpt2.encoder, [*gpt2.merges, ("Ġth", "e")]))


@pytest.mark.slow
def test_every_vocabulary_token_encodes_the_same_in_both_engines(fast, slow):
    # tiktoken returns a whole pre-token's id outright when the vocabulary has it, where merges.txt might
    # not reach that token: check that no GPT-2 token is such a case.
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    texts = []
    for token in load_bundled().encoder:
        if token == EOT:
            continue
        try:
            texts.append(bytes(byte_decoder[c] for c in token).decode("utf-8"))
        except (KeyError, UnicodeDecodeError):
            continue
    assert len(texts) > 49_000
    random.Random(0).shuffle(texts)
    assert_same_ids(
        texts, fast(texts)["input_ids"], [slow._engine.encode_ordinary(t) for t in texts], "vocabulary"
    )
