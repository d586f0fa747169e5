"""GPT2Tokenizer and GPT2TokenizerFast: golden ids, the call surface, special tokens, files, errors.

Behaviour that transformers defines is checked against transformers 4.57 itself (tokenizer_oracle.py);
the corpus-scale parity and the property tests are in test_tokenizer_parity.py.
"""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from gpt2kit import AutoTokenizer, GPT2Tokenizer, GPT2TokenizerFast, hub
from gpt2kit.tokenizer import AddedToken, BatchEncoding
from tokenizer_oracle import gpt2_folder, hf_tokenizer

BOTH = [GPT2Tokenizer, GPT2TokenizerFast]
EOT = "<|endoftext|>"

GOLDEN = {
    "Hello world": [15496, 995],
    " Hello world": [18435, 995],
    EOT: [50256],
    "I'm here, aren't you?": [40, 1101, 994, 11, 3588, 470, 345, 30],
    "  \n\n\tx": [220, 220, 628, 197, 87],
    "日本語": [33768, 98, 17312, 105, 45739, 252],
    "🤗": [8582, 97, 245],
    "naïve café": [2616, 38776, 40304],
    f"x{EOT} y": [87, 50256, 331],
    "1234567890": [10163, 2231, 30924, 3829],
    "def f(x):\n    return x\n": [4299, 277, 7, 87, 2599, 198, 220, 220, 220, 1441, 2124, 198],
}


@pytest.fixture(scope="module", params=BOTH, ids=["slow", "fast"])
def cls(request):
    return request.param


@pytest.fixture
def tok(cls):
    return cls.from_pretrained("gpt2")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return gpt2_folder(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def hf_fast(folder):
    return hf_tokenizer(folder, fast=True)


# --- ids --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", list(GOLDEN))
def test_golden_ids(tok, text):
    assert tok(text)["input_ids"] == GOLDEN[text]
    assert tok.encode(text) == GOLDEN[text]


def test_batch_equals_one_by_one(tok):
    texts = list(GOLDEN) + ["", " ", "a" * 3000, f"{EOT}{EOT}"]
    assert tok(texts)["input_ids"] == [tok.encode(t) for t in texts]


@pytest.mark.parametrize("name", sorted(hub.GPT2_NAMES))
def test_gpt2_names_use_the_bundled_vocabulary_offline(cls, name, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a GPT-2 name must not look in the cache or download")

    monkeypatch.setattr(hub, "download", no_network)
    monkeypatch.setattr(hub, "find_in_cache", no_network)
    tok = cls.from_pretrained(name)
    assert tok("Hello world").input_ids == [15496, 995]
    assert (tok.model_max_length, tok.vocab_size, len(tok), tok.padding_side) == (1024, 50257, 50257, "right")
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (EOT, EOT, EOT, None)


def test_auto_tokenizer_returns_the_fast_one():
    assert type(AutoTokenizer.from_pretrained("gpt2")) is GPT2TokenizerFast
    assert type(AutoTokenizer.from_pretrained("gpt2", use_fast=False)) is GPT2Tokenizer
    with pytest.raises(TypeError, match="from_pretrained"):
        AutoTokenizer()


def test_constructor_takes_files_like_transformers(cls, folder):
    tok = cls(vocab_file=folder / "vocab.json", merges_file=folder / "merges.txt")
    assert tok("Hello world").input_ids == [15496, 995]
    assert tok.model_max_length == int(1e30)  # no tokenizer_config: transformers' "no limit"


def test_add_prefix_space(cls, folder):
    for ours, theirs in [
        (
            cls.from_pretrained("gpt2", add_prefix_space=True),
            hf_tokenizer(folder, cls.is_fast, add_prefix_space=True),
        ),
        (cls.from_pretrained("gpt2"), hf_tokenizer(folder, cls.is_fast)),
    ]:
        for text in ["Hello", "", "  x", f"a{EOT}b", f"{EOT}b", f" {EOT} ", "\nx"]:
            assert ours(text).input_ids == theirs(text).input_ids, text
    assert cls.from_pretrained("gpt2")("Hello", add_prefix_space=True).input_ids == [18435]


def test_add_bos_token(cls, folder):
    ours = cls.from_pretrained("gpt2", add_bos_token=True)
    theirs = hf_tokenizer(folder, cls.is_fast, add_bos_token=True)
    for text in ["Hello", "", f"a{EOT}b"]:
        assert (
            ours(text).input_ids
            == theirs(text).input_ids
            == [50256, *ours.encode(text, add_special_tokens=False)]
        )
    assert ours.tokenize("a b") == ["a", "Ġb"]  # tokenize never adds BOS
    enc = ours(["a b c d"], truncation=True, max_length=3, return_special_tokens_mask=True)
    assert enc.input_ids == [[50256, 64, 275]] and enc.special_tokens_mask == [[1, 0, 0]]
    ours.truncation_side = "left"
    assert ours("a b c d", truncation=True, max_length=3).input_ids == [50256, 269, 288]


# --- padding, truncation, tensors ------------------------------------------------------------------------


def test_padding_needs_a_pad_token_and_says_how(tok):
    with pytest.raises(ValueError, match=r"tokenizer.pad_token = tokenizer.eos_token"):
        tok(["a", "a b"], padding=True)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.pad_token = "[NOT-A-TOKEN]"
    tok.pad_token = tok.eos_token
    assert tok.pad_token_id == 50256
    tok.pad_token_id = 0
    assert tok.pad_token == "!"


def test_padding_and_truncation_match_transformers(tok, folder):
    theirs = hf_tokenizer(folder, tok.is_fast)
    texts = ["a", "a b c", "Hello world, this is longer", ""]
    tok.pad_token = theirs.pad_token = EOT
    cases = [
        dict(padding=True),
        dict(padding="longest", padding_side="left"),
        dict(padding="max_length", max_length=6, truncation=True),
        dict(padding=True, pad_to_multiple_of=4),
        dict(truncation=True, max_length=2),
        dict(max_length=2),  # truncation implied, with transformers' warning
        dict(padding=True, return_token_type_ids=True, return_special_tokens_mask=True),
        dict(padding=True, return_attention_mask=False),
        dict(return_length=True),
        dict(padding=True, return_length=True),
    ]
    for kwargs in cases:
        for side in ("right", "left"):
            tok.truncation_side = theirs.truncation_side = side
            assert dict(tok(texts, **kwargs)) == dict(theirs(texts, **kwargs)), (kwargs, side)
            assert dict(tok(texts[1], **kwargs)) == dict(theirs(texts[1], **kwargs)), (kwargs, side)
    tok.padding_side = theirs.padding_side = "left"
    assert dict(tok(texts, padding=True)) == dict(theirs(texts, padding=True))


def test_padding_max_length_defaults_to_model_max_length(tok):
    tok.pad_token = tok.eos_token
    assert len(tok("a", padding="max_length").input_ids) == 1024
    assert len(tok("a " * 2000, truncation=True).input_ids) == 1024


def test_return_tensors(tok):
    tok.pad_token = tok.eos_token
    enc = tok(["Hello world", "Hi"], padding=True, return_tensors="pt")
    assert isinstance(enc, BatchEncoding) and enc.input_ids.dtype == torch.int64
    assert enc["input_ids"].tolist() == [[15496, 995], [17250, 50256]]
    assert enc.attention_mask.tolist() == [[1, 1], [1, 0]]
    assert enc.to("cpu") is enc and enc.input_ids.device.type == "cpu"
    assert tok("Hello world", return_tensors="pt").input_ids.shape == (1, 2)
    assert tok.encode("Hello world", return_tensors="pt").tolist() == [[15496, 995]]
    arr = tok(["a b", "c d"], return_tensors="np", return_offsets_mapping=True)
    assert arr.input_ids.dtype == np.int64 and arr.offset_mapping.shape == (2, 2, 2)
    with pytest.raises(ValueError, match="padding=True"):
        tok(["a", "a b"], return_tensors="pt")
    with pytest.raises(ValueError, match="'pt'"):
        tok("a", return_tensors="tf")


def test_offsets_match_transformers_fast(tok, hf_fast):
    texts = ["héllo 🤗 world", f"a {EOT}b", "  \n\nx", "日本語 text", "e\u0301\u0301!", ""]
    for kwargs in [{}, {"add_prefix_space": True}]:
        ours = type(tok).from_pretrained("gpt2", **kwargs)
        theirs = hf_fast if not kwargs else hf_tokenizer(hf_fast.name_or_path, True, **kwargs)
        if kwargs and not tok.is_fast:
            continue  # transformers' slow tokenizer has no offsets, and its prefix space differs
        got = ours(texts, return_offsets_mapping=True)["offset_mapping"]
        want = theirs(texts, return_offsets_mapping=True)["offset_mapping"]
        assert got == [list(map(tuple, o)) for o in want], kwargs


def test_too_long_warns_once(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="gpt2kit"):
        assert len(tok("hello " * 1100).input_ids) == 1101
        tok("hello " * 1100)
    warnings = [r for r in caplog.records if "longer than the specified maximum sequence length" in r.message]
    assert len(warnings) == 1 and "(1101 > 1024)" in warnings[0].message


# --- decoding and vocabulary -----------------------------------------------------------------------------


def test_decode(tok):
    assert tok.decode([15496, 995]) == "Hello world"
    assert tok.decode([50256, 15496, 50256]) == f"{EOT}Hello{EOT}"
    assert tok.decode([50256, 15496], skip_special_tokens=True) == "Hello"
    assert tok.decode(torch.tensor([15496, 995])) == tok.decode(np.array([15496, 995])) == "Hello world"
    assert tok.decode(995) == " world"
    assert tok.decode([8582]) == "\ufffd"  # half an emoji, errors="replace"
    assert tok.batch_decode([[15496], [995, 50256]], skip_special_tokens=True) == ["Hello", " world"]
    assert tok.batch_decode(torch.tensor([[15496, 995]])) == ["Hello world"]
    assert tok.decode([15496, 837, 995], clean_up_tokenization_spaces=True) == "Hello, world"
    strict = type(tok).from_pretrained("gpt2", errors="strict")
    with pytest.raises(UnicodeDecodeError):
        strict.decode([8582])


def test_vocabulary_accessors(tok):
    assert tok.tokenize("Hello world") == ["Hello", "Ġworld"]
    assert tok.convert_ids_to_tokens([15496, 995]) == ["Hello", "Ġworld"]
    assert tok.convert_ids_to_tokens(995) == "Ġworld"
    assert tok.convert_tokens_to_ids(["Hello", "Ġworld", "not-a-token-at-all"]) == [15496, 995, 50256]
    assert tok.convert_tokens_to_ids("Ġworld") == 995
    assert tok.convert_tokens_to_string(["Hello", "Ġworld"]) == "Hello world"
    vocab = tok.get_vocab()
    assert len(vocab) == len(tok) == tok.vocab_size == 50257 and vocab["Ġworld"] == 995
    assert tok.all_special_tokens == [EOT] and tok.all_special_ids == [50256]
    assert tok.special_tokens_map == {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}


def test_added_and_special_tokens_match_transformers(tok, folder):
    theirs = hf_tokenizer(folder, tok.is_fast)
    for t in (tok, theirs):
        assert t.add_tokens(["foo_bar", "<tool>"]) == 2
        assert t.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<sep>"]}) == 2
        assert (
            t.add_tokens(AddedToken("<m>", lstrip=True, rstrip=True) if t is tok else _hf_added("<m>")) == 1
        )
    text = f"a foo_bar b<sep>c<pad> x<tool>y  <m>  z {EOT}"
    ids = tok(text).input_ids
    assert ids == theirs(text).input_ids
    assert (len(tok), tok.vocab_size, tok.pad_token_id) == (
        len(theirs),
        theirs.vocab_size,
        theirs.pad_token_id,
    )
    assert tok.all_special_tokens == theirs.all_special_tokens
    assert tok.get_vocab() == theirs.get_vocab()
    # (transformers' fast tokenize() spells an lstrip/rstrip token with the spaces it ate: not copied)
    plain = text.replace("<m>", "")
    assert tok.tokenize(plain) == theirs.tokenize(plain)
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)


def _hf_added(content):
    from transformers import AddedToken as HFAddedToken

    return HFAddedToken(content, lstrip=True, rstrip=True)


# --- files -----------------------------------------------------------------------------------------------


def test_save_pretrained_loads_in_transformers_with_the_same_ids(tok, tmp_path):
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.add_tokens(["<tool>"])
    tok.padding_side = "left"
    saved = tok.save_pretrained(tmp_path / "out")
    # transformers 4.57's files: only the fast tokenizer writes tokenizer.json
    assert [p.rsplit("/", 1)[-1] for p in saved] == [
        "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
        *(["tokenizer.json"] if tok.is_fast else []),
    ]  # fmt: skip
    texts = [f"Hello<tool> world<pad>{EOT}", " x", "日本語 🤗", ""]
    want = tok(texts, padding=True)
    for fast in (False, True):
        theirs = hf_tokenizer(tmp_path / "out", fast)
        assert theirs.padding_side == "left" and theirs.pad_token == "<pad>"
        assert dict(theirs(texts, padding=True)) == dict(want)
    from transformers import AutoTokenizer as HFAuto

    assert dict(HFAuto.from_pretrained(tmp_path / "out")(texts, padding=True)) == dict(want)
    again = type(tok).from_pretrained(tmp_path / "out")
    assert dict(again(texts, padding=True)) == dict(want) and len(again) == len(tok) == 50259


@pytest.mark.parametrize("legacy_format", [None, True, False])
def test_save_pretrained_writes_the_files_transformers_writes(cls, folder, tmp_path, legacy_format):
    ours, theirs = cls.from_pretrained("gpt2"), hf_tokenizer(folder, cls.is_fast)
    for t in (ours, theirs):
        t.add_tokens(["<tool>"])
    kwargs = {} if legacy_format is None else {"legacy_format": legacy_format}
    if legacy_format is False and not cls.is_fast:  # tokenizer.json alone: fast tokenizers only
        for t in (ours, theirs):
            with pytest.raises(ValueError, match="legacy"):
                t.save_pretrained(tmp_path / "no", **kwargs)
        return
    got = [p.rsplit("/", 1)[1] for p in ours.save_pretrained(tmp_path / "ours", **kwargs)]
    want = [p.rsplit("/", 1)[1] for p in theirs.save_pretrained(tmp_path / "theirs", **kwargs)]
    assert got == want
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == sorted(want)
    texts = ["a<tool>b", "Hello world"]
    for where in ("ours", "theirs"):
        assert GPT2TokenizerFast.from_pretrained(tmp_path / where)(texts) == theirs(texts)
        assert dict(hf_tokenizer(tmp_path / where, True)(texts)) == dict(theirs(texts))


@pytest.mark.parametrize("settings", [{"add_prefix_space": True}, {"add_bos_token": True}])
def test_saved_settings_survive_transformers(cls, tmp_path, settings):
    cls.from_pretrained("gpt2", **settings).save_pretrained(tmp_path)
    texts = ["Hello", f"a{EOT}b", ""]
    want = cls.from_pretrained(tmp_path)(texts).input_ids
    assert want == cls.from_pretrained("gpt2", **settings)(texts).input_ids
    assert hf_tokenizer(tmp_path, cls.is_fast)(texts).input_ids == want


def test_loads_transformers_folders(cls, tmp_path, folder):
    # A folder transformers' fast tokenizer wrote (with tokenizer.json, added tokens, a pad token)...
    theirs = hf_tokenizer(folder, True)
    theirs.add_special_tokens({"pad_token": "<pad>"})
    theirs.add_tokens(["<tool>"])
    theirs.save_pretrained(tmp_path / "hf")
    text = f"a<tool>b<pad>{EOT} c"
    assert cls.from_pretrained(tmp_path / "hf")(text).input_ids == theirs(text).input_ids
    assert cls.from_pretrained(tmp_path / "hf").pad_token == "<pad>"
    # ... and the same with tokenizer.json alone.
    only = tmp_path / "json-only"
    only.mkdir()
    (only / "tokenizer.json").write_bytes((tmp_path / "hf" / "tokenizer.json").read_bytes())
    assert cls.from_pretrained(only)(text).input_ids == theirs(text).input_ids


def test_legacy_special_tokens_map(cls, tmp_path, folder):
    legacy = gpt2_folder(tmp_path)
    (legacy / "special_tokens_map.json").write_text(json.dumps({"pad_token": EOT, "eos_token": EOT}))
    (legacy / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 512, "padding_side": "left"})
    )
    ours, theirs = cls.from_pretrained(legacy), hf_tokenizer(legacy, cls.is_fast)
    assert (ours.pad_token, ours.model_max_length, ours.padding_side) == (EOT, 512, "left")
    assert (theirs.pad_token, theirs.model_max_length, theirs.padding_side) == (EOT, 512, "left")
    assert cls.from_pretrained(legacy, pad_token=None, model_max_length=64).pad_token is None


def test_pickle_round_trip(tok):
    tok.add_tokens(["<tool>"])
    again = pickle.loads(pickle.dumps(tok))
    assert again("a<tool> b").input_ids == tok("a<tool> b").input_ids == [64, 50257, 275]


def test_tokenizer_import_does_not_import_torch():
    code = (
        "import sys; from gpt2kit import GPT2TokenizerFast; "
        "t = GPT2TokenizerFast.from_pretrained('gpt2'); t(['a', 'b c']); t.decode([1]); "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- bad input -------------------------------------------------------------------------------------------


def test_bad_inputs_name_the_problem(tok, tmp_path):
    cases = [
        (ValueError, "either `text` or `text_target`", lambda: tok(None)),
        (TypeError, "str or a list of str", lambda: tok(5)),
        (TypeError, "pre-tokenized", lambda: tok([["a", "b"]])),
        (TypeError, "encode takes one str", lambda: tok.encode(["a"])),
        (ValueError, "lone surrogate '\\\\ud83d' at position 1", lambda: tok("a\ud83db")),
        (ValueError, "text 1 holds the lone surrogate", lambda: tok(["ok", "\udc00"])),
        (ValueError, "padding='foo' is not a padding strategy", lambda: tok("a", padding="foo")),
        (ValueError, "truncation='bar'", lambda: tok("a", truncation="bar")),
        (ValueError, "max_length must be a positive int", lambda: tok("a", max_length=0)),
        (ValueError, "padding_side must be 'right' or 'left'", lambda: setattr(tok, "padding_side", "top")),
        (TypeError, "text_pair must be a str when text is one str", lambda: tok("a", ["b"])),
        (ValueError, "batch length of `text`: 2 does not match batch length of `text_pair`: 1", lambda: tok(["a", "b"], ["c"])),
        (TypeError, "item 1 is", lambda: tok.batch_encode_plus(["a", ("b", 2)])),
        (TypeError, "must be a list of words", lambda: tok(["a", 1], is_split_into_words=True, add_prefix_space=True)),
        (ValueError, "token id 60000 is not in the vocabulary", lambda: tok.decode([60000])),
        (ValueError, "ignore index", lambda: tok.decode([15496, -100])),
        (TypeError, "use batch_decode", lambda: tok.decode([[1, 2]])),
        (ValueError, "'foo_token' is not a special token name", lambda: tok.add_special_tokens({"foo_token": "x"})),
        (ValueError, "errors='nope' is not a codec error handler", lambda: type(tok).from_pretrained("gpt2", errors="nope")),
        (ValueError, "return_tensors='tf' is not supported; use 'pt'", lambda: tok.pad({"input_ids": [1]}, padding=False, return_tensors="tf")),
        (FileNotFoundError, "no model folder or cached model named", lambda: type(tok).from_pretrained(str(tmp_path / "missing"))),
        (FileNotFoundError, "holds no GPT-2 tokenizer", lambda: type(tok).from_pretrained(tmp_path)),
        (FileNotFoundError, "vocab_file", lambda: type(tok)(vocab_file=tmp_path / "v.json", merges_file=tmp_path / "m.txt")),
    ]  # fmt: skip
    for exc, message, call in cases:
        with pytest.raises(exc, match=message):
            call()
    assert tok("a", stride=0, is_split_into_words=False).input_ids == [64]  # defaults pass


def test_bad_files_name_the_problem(cls, tmp_path):
    folder = gpt2_folder(tmp_path / "bad-merges")
    (folder / "merges.txt").write_text("#version: 0.2\nĠ t\nthree parts here\n")
    with pytest.raises(ValueError, match="merges.txt line 3"):
        cls.from_pretrained(folder)
    folder = gpt2_folder(tmp_path / "roberta")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
    with pytest.raises(ValueError, match="RobertaTokenizer"):
        cls.from_pretrained(folder)
    folder = tmp_path / "llama3"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(
        json.dumps(
            {
                "model": {"type": "BPE", "vocab": {}, "merges": []},
                "pre_tokenizer": {"type": "Sequence", "pretokenizers": []},
            }
        )  # fmt: skip
    )
    with pytest.raises(ValueError, match="GPT-2-style"):
        cls.from_pretrained(folder)


@pytest.mark.parametrize(
    "module",
    [
        "bpe",
        "base",
        "fast",
        "slow",
        "files",
        "auto",
        "options",
        "truncation",
        "chat",
        "alignment",
        "bpe_trainer",
        "pretokenize",
        "batch_encoding",
    ],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(
        importlib.import_module(f"gpt2kit.tokenizer.{module}"), optionflags=doctest.ELLIPSIS
    )
    assert result.failed == 0


def test_pad_matches_transformers(tok, folder):
    theirs = hf_tokenizer(folder, tok.is_fast)
    tok.pad_token = theirs.pad_token = EOT
    features = [{"input_ids": [1, 2, 3]}, {"input_ids": [4]}]
    for kwargs in [
        {},
        {"padding_side": "left"},
        {"padding": "max_length", "max_length": 5},
        {"pad_to_multiple_of": 4},
    ]:
        assert dict(tok.pad(features, **kwargs)) == dict(theirs.pad(features, **kwargs)), kwargs
    as_dict = {"input_ids": [[1, 2, 3], [4]], "attention_mask": [[1, 1, 1], [1]]}
    got, want = tok.pad(as_dict, return_tensors="np"), theirs.pad(as_dict, return_tensors="np")
    assert all((got[k] == want[k]).all() for k in want) and set(got) == set(want)
    tok.pad_token = None
    with pytest.raises(ValueError, match="pad_token"):
        tok.pad(features)


def test_hub_cache_snapshot_is_read_offline(cls, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hub" / "models--someone--tiny-gpt2"
    gpt2_folder(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert cls.from_pretrained("someone/tiny-gpt2")("Hello world").input_ids == [15496, 995]
    empty = tmp_path / "hub" / "models--someone--weights-only" / "snapshots" / "def456"
    empty.mkdir(parents=True)
    (empty / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="someone/weights-only"):
        cls.from_pretrained("someone/weights-only", local_files_only=True)


def test_iter_encode_with_whitespace_eating_token(tok):
    tok.add_tokens(AddedToken("<m>", lstrip=True, rstrip=True))
    text = "a b  <m>  c d " * 50
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
    assert [i for ids in tok.iter_encode(chunks) for i in ids] == tok.encode(text)


def test_offsets_with_bos_match_transformers_fast(folder):
    texts = ["héllo 🤗", f"a{EOT} b", ""]
    ours = GPT2TokenizerFast.from_pretrained("gpt2", add_bos_token=True)
    theirs = hf_tokenizer(folder, True, add_bos_token=True)
    got = ours(texts, return_offsets_mapping=True)["offset_mapping"]
    assert got == [list(map(tuple, o)) for o in theirs(texts, return_offsets_mapping=True)["offset_mapping"]]
