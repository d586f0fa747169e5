"""train_new_from_iterator against transformers 4.57's (the `tokenizers` BpeTrainer): the same vocabulary,
merges and special tokens from the same text, and tokenizers that then encode alike in both libraries.
"""

from __future__ import annotations

import json

import pytest

from gpt2kit import GPT2Tokenizer, GPT2TokenizerFast
from gpt2kit.tokenizer import AddedToken
from gpt2kit.tokenizer.fast import TiktokenEngine
from tokenizer_corpus import EOT, build_corpus
from tokenizer_oracle import gpt2_folder, hf_tokenizer

SMALL = [
    ["This is the first sentence.", "This is the second one."],
    ["This sentence (contains #) over symbols and numbers 12 3.", "But not this one."],
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return gpt2_folder(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(40_000, seed=21)  # mixed scripts, emoji, <|endoftext|>, Unicode 17 letters


def hf_merges(tok) -> list[tuple[str, str]]:
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def assert_same_tokenizer(ours, theirs):
    assert ours.get_vocab() == theirs.get_vocab()
    assert ours._vocab.merges == hf_merges(theirs)
    assert len(ours) == len(theirs) and ours.vocab_size == theirs.vocab_size
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert {i: t.content for i, t in ours.added_tokens_decoder.items()} == {
        i: t.content for i, t in theirs.added_tokens_decoder.items()
    }
    assert [ours.convert_tokens_to_ids(t) for t in ours.all_special_tokens] == theirs.all_special_ids


@pytest.mark.parametrize(
    "settings, vocab_size, kwargs",
    [
        ({}, 1000, {}),
        ({"add_prefix_space": True}, 700, {}),
        ({"add_bos_token": True, "pad_token": EOT}, 600, {"min_frequency": 3}),
        ({}, 800, {"new_special_tokens": ["<pad>", "<sep>"], "special_tokens_map": {EOT: "<eos>"}}),
    ],
)
def test_trained_tokenizer_equals_transformers(folder, corpus, settings, vocab_size, kwargs):
    old_ours = GPT2TokenizerFast.from_pretrained("gpt2", **settings)
    old_theirs = hf_tokenizer(folder, True, **settings)
    ours = old_ours.train_new_from_iterator(corpus, vocab_size, show_progress=False, **kwargs)
    theirs = old_theirs.train_new_from_iterator(corpus, vocab_size, show_progress=False, **kwargs)
    assert type(ours) is GPT2TokenizerFast
    assert_same_tokenizer(ours, theirs)
    assert ours.add_prefix_space == old_ours.add_prefix_space and ours.add_bos_token == old_ours.add_bos_token
    texts = corpus[:300] + ["This is the first sentence", "This sentence is different 🤗.", f"a{EOT}b"]
    want = theirs(texts, padding=bool(ours.pad_token))
    assert ours(texts, padding=bool(ours.pad_token)).input_ids == want.input_ids
    assert ours.batch_decode(want.input_ids) == theirs.batch_decode(want.input_ids)


def test_trained_special_tokens_renamed_and_added_like_transformers(folder):
    mapping = {EOT: "<|eos|>"}
    new = [AddedToken("<tool>", lstrip=True, special=True), "<x>"]
    ours = GPT2TokenizerFast.from_pretrained("gpt2").train_new_from_iterator(
        SMALL, 300, new_special_tokens=new, special_tokens_map=mapping, show_progress=False
    )
    theirs = hf_tokenizer(folder, True).train_new_from_iterator(
        SMALL, 300, new_special_tokens=[_hf(t) for t in new], special_tokens_map=mapping, show_progress=False
    )
    assert_same_tokenizer(ours, theirs)
    assert ours.eos_token == ours.bos_token == ours.unk_token == "<|eos|>" and ours.eos_token_id == 0
    assert ours.additional_special_tokens == theirs.additional_special_tokens == ["<tool>", "<x>"]
    assert ours.added_tokens_decoder[1].lstrip and theirs.added_tokens_decoder[1].lstrip
    text = "use <tool>  <x>!<|eos|>"
    assert ours(text).input_ids == theirs(text).input_ids


def _hf(token):
    from transformers import AddedToken as HFAddedToken

    if isinstance(token, str):
        return token
    return HFAddedToken(token.content, lstrip=token.lstrip, rstrip=token.rstrip, special=token.special)


def test_both_classes_train_the_same_vocabulary_and_encode_alike(folder, corpus, tmp_path):
    fast = GPT2TokenizerFast.from_pretrained("gpt2").train_new_from_iterator(corpus, 900, show_progress=False)
    slow = GPT2Tokenizer.from_pretrained("gpt2").train_new_from_iterator(corpus, 900, show_progress=False)
    assert type(slow) is GPT2Tokenizer and slow.get_vocab() == fast.get_vocab()
    assert slow._vocab.merges == fast._vocab.merges
    assert isinstance(fast._engine, TiktokenEngine)  # the trained vocabulary runs on tiktoken
    texts = build_corpus(60_000, seed=22)
    ids = fast(texts, verbose=False).input_ids
    assert slow(texts, verbose=False).input_ids == ids  # tiktoken's merge order equals merges.txt's here
    assert fast.batch_decode(ids) == texts
    # saved, transformers loads both and encodes alike
    fast.save_pretrained(tmp_path / "fast")
    slow.save_pretrained(tmp_path / "slow")
    for where in ("fast", "slow"):
        assert hf_tokenizer(tmp_path / where, True)(texts).input_ids == ids
    assert hf_tokenizer(tmp_path / "slow", False)(texts[:200]).input_ids == ids[:200]


def test_training_cuts_unicode_17_letters_as_transformers_does(folder):
    # Unicode 17 letters are letters to Python's `regex` and not to the Rust regex of `tokenizers`, whose
    # trainer transformers runs: the words counted (and so the merges) follow the Rust one (pretokenize.py).
    texts = ["\U000323b0's and \U000323b0\U000323b1x'd \U000323b2!"] * 20 + ["plain words here"] * 5
    ours = GPT2TokenizerFast.from_pretrained("gpt2").train_new_from_iterator(texts, 300, show_progress=False)
    theirs = hf_tokenizer(folder, True).train_new_from_iterator(texts, 300, show_progress=False)
    assert_same_tokenizer(ours, theirs)
    assert ours(texts[:1]).input_ids == theirs(texts[:1]).input_ids


def test_training_takes_an_iterator_of_texts_or_batches_once(folder):
    def gen():
        yield "low lower lowest"
        yield ["newer", "wider newest"]

    ours = GPT2TokenizerFast.from_pretrained("gpt2").train_new_from_iterator(gen(), 270, show_progress=False)
    theirs = hf_tokenizer(folder, True).train_new_from_iterator(gen(), 270, show_progress=False)
    assert_same_tokenizer(ours, theirs)


def test_training_options_and_errors(folder):
    tok = GPT2TokenizerFast.from_pretrained("gpt2")
    small = tok.train_new_from_iterator(SMALL, 10_000, max_token_length=3, show_progress=False)
    assert max(len(t) for t in small._vocab.encoder if t != EOT) <= 3
    with pytest.raises(TypeError, match="one str"):
        tok.train_new_from_iterator("a text", 300)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        tok.train_new_from_iterator(SMALL, 300, vocab=3)
    with pytest.raises(ValueError, match="continuing_subword_prefix"):
        tok.train_new_from_iterator(SMALL, 300, continuing_subword_prefix="##")
    with pytest.raises(ValueError, match="vocab_size must be"):
        tok.train_new_from_iterator(SMALL, -1)
