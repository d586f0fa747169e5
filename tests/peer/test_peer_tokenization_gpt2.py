"""GPT2TokenizationTest's own tests (transformers 4.5x tests/models/gpt2/test_tokenization_gpt2.py), on both
backends. `toks` gives the slow and fast tokenizers of the test's toy vocabulary (unk_token "<unk>");
`pretrained` loads openai-community/gpt2's tokenizer files (the bundled copy) with add_prefix_space=True.
The inherited TokenizerTesterMixin tests are in test_peer_tokenization_common.py.
"""

from __future__ import annotations

import pytest

# --- GPT2TokenizationTest ------------------------------------------------------------------------------


def test_full_tokenizer(backend, toy_vocab_dir):
    """mirrors GPT2TokenizationTest.test_full_tokenizer"""
    tokenizer = backend.GPT2Tokenizer(
        str(toy_vocab_dir / "vocab.json"), str(toy_vocab_dir / "merges.txt"), unk_token="<unk>"
    )
    tokens = tokenizer.tokenize("lower newer", add_prefix_space=True)
    assert tokens == ["\u0120low", "er", "\u0120", "n", "e", "w", "er"]
    assert tokenizer.convert_tokens_to_ids(tokens + [tokenizer.unk_token]) == [14, 15, 10, 9, 3, 2, 15, 19]


def test_rust_and_python_full_tokenizers(toks):
    """mirrors GPT2TokenizationTest.test_rust_and_python_full_tokenizers"""
    slow, fast = toks.slow(), toks.fast(add_prefix_space=True)
    sequence = "lower newer"
    tokens = slow.tokenize(sequence, add_prefix_space=True)
    assert tokens == fast.tokenize(sequence)
    assert slow.encode(sequence, add_special_tokens=False, add_prefix_space=True) == fast.encode(
        sequence, add_special_tokens=False
    )
    fast = toks.fast(add_prefix_space=True)
    assert slow.encode(sequence, add_prefix_space=True) == fast.encode(sequence)
    assert fast.convert_tokens_to_ids(tokens + [fast.unk_token]) == [14, 15, 10, 9, 3, 2, 15, 19]


def test_padding(pretrained):
    """mirrors GPT2TokenizationTest.test_padding: without a pad token every padded call raises ValueError"""
    tokenizer = pretrained()
    s = "This is a simple input"
    s2 = ["This is a simple input 1", "This is a simple input 2"]
    p = ("This is a simple input", "This is a pair")
    p2 = [
        ("This is a simple input 1", "This is a simple input 2"),
        ("This is a simple pair 1", "This is a simple pair 2"),
    ]
    for method, text in [
        (tokenizer.encode, s),
        (tokenizer.encode_plus, s),
        (tokenizer.batch_encode_plus, s2),
        (tokenizer.encode, p),
        (tokenizer.encode_plus, p),
        (tokenizer.batch_encode_plus, p2),
    ]:
        with pytest.raises(ValueError):
            method(text, max_length=15, padding="max_length")


def test_padding_if_pad_token_set_slow(backend, toy_vocab_dir):
    """mirrors GPT2TokenizationTest.test_padding_if_pad_token_set_slow"""
    tokenizer = backend.GPT2Tokenizer.from_pretrained(toy_vocab_dir, pad_token="<pad>")
    s = "This is a simple input"
    s2 = ["This is a simple input looooooooong", "This is a simple input"]
    p = ("This is a simple input", "This is a pair")
    p2 = [
        ("This is a simple input loooooong", "This is a simple input"),
        ("This is a simple pair loooooong", "This is a simple pair"),
    ]
    pad = tokenizer.pad_token_id
    out_s = tokenizer(s, padding="max_length", max_length=30, return_tensors="np")
    out_s2 = tokenizer(s2, padding=True, truncate=True, return_tensors="np")  # sic: upstream passes truncate=
    out_p = tokenizer(*p, padding="max_length", max_length=60, return_tensors="np")
    out_p2 = tokenizer(p2, padding=True, truncate=True, return_tensors="np")

    assert out_s["input_ids"].shape[-1] == 30
    assert pad in out_s["input_ids"] and 0 in out_s["attention_mask"]
    assert out_s2["input_ids"].shape[-1] == 33
    assert pad not in out_s2["input_ids"][0] and 0 not in out_s2["attention_mask"][0]
    assert pad in out_s2["input_ids"][1] and 0 in out_s2["attention_mask"][1]
    assert out_p["input_ids"].shape[-1] == 60
    assert pad in out_p["input_ids"] and 0 in out_p["attention_mask"]
    assert out_p2["input_ids"].shape[-1] == 52
    assert pad not in out_p2["input_ids"][0] and 0 not in out_p2["attention_mask"][0]
    assert pad in out_p2["input_ids"][1] and 0 in out_p2["attention_mask"][1]


def test_add_bos_token_slow(backend, toy_vocab_dir):
    """mirrors GPT2TokenizationTest.test_add_bos_token_slow"""
    tokenizer = backend.GPT2Tokenizer.from_pretrained(toy_vocab_dir, bos_token="$$$", add_bos_token=True)
    out_s = tokenizer("This is a simple input")
    out_s2 = tokenizer(["This is a simple input 1", "This is a simple input 2"])
    bos = tokenizer.bos_token_id
    assert out_s.input_ids[0] == bos
    assert all(ids[0] == bos for ids in out_s2.input_ids)
    assert tokenizer.decode(out_s.input_ids).startswith("$$$")
    assert all(text.startswith("$$$") for text in tokenizer.batch_decode(out_s2.input_ids))


def test_special_tokens_mask_input_pairs_and_bos_token(toks):
    """mirrors GPT2TokenizationTest.test_special_tokens_mask_input_pairs_and_bos_token"""
    tokenizer = toks.slow(do_lower_case=False, add_bos_token=True)
    seq_0, seq_1 = "Encode this.", "This one too please."
    expected = tokenizer.encode(seq_0, add_special_tokens=False) + tokenizer.encode(
        seq_1, add_special_tokens=False
    )
    encoded = tokenizer.encode_plus(seq_0, seq_1, add_special_tokens=True, return_special_tokens_mask=True)
    ids, mask = encoded["input_ids"], encoded["special_tokens_mask"]
    assert len(mask) == len(ids)
    assert [x for x, m in zip(ids, mask) if not m] == expected


def test_tokenization_for_chat(backend):
    """mirrors GPT2TokenizationTest.test_tokenization_for_chat"""
    pytest.skip(
        "its expected ids come from GPT-2's old default ChatML template, which transformers 4.57 no longer "
        "has (apply_chat_template raises without a template)"
    )
