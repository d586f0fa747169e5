"""TokenizerTesterMixin's tests (transformers 4.5x tests/test_tokenization_common.py) as GPT2TokenizationTest
runs them, on both backends: `toks` is the toy vocabulary's slow and fast tokenizers, `pretrained` the
tokenizers_list entry (openai-community/gpt2's files, bundled copy, add_prefix_space=True).
"""

from __future__ import annotations

import inspect
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from peer_utils import capture_logs

SEQ_TOO_LONG = (
    "Token indices sequence length is longer than the specified maximum sequence length for this model"
)
SAMPLE_TEXT = (
    "Tokenizer parity is checked on mixed text: accents (café, naïve, Øresund), CJK (東京都, 서울), emoji 🤗,\n"
    "numbers like 3.14159 and 1,000,000, code such as `def f(x): return x ** 2`, and  double  spaces.\n"
    "A second paragraph follows after a blank line.\n\n"
    "It talks about the weather: the morning was grey, the afternoon bright, and by evening it rained again.\n"
) * 12
TRAINING_CORPUS = [
    ["This is the first sentence.", "This is the second one."],
    ["This sentence (contains #) over symbols and numbers 12 3.", "But not this one."],
]
SPECIAL_ATTRS = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]
BATCH_TEXTS = [
    "Testing batch encode plus",
    "Testing batch encode plus with different sequence lengths",
    "Testing batch encode plus with different sequence lengths correctly pads",
]


def clean_sequence(tokenizer, with_prefix_space=False, max_length=20, min_length=5):
    """get_clean_sequence: a text made of vocabulary entries that encode to themselves, and its ids."""
    pairs = [
        (i, tokenizer.decode([i], clean_up_tokenization_spaces=False))
        for i in set(tokenizer.get_vocab().values())
    ]
    pairs = [(i, t) for i, t in pairs if re.match(r"^[ a-zA-Z]+$", t)]
    pairs = [(i, t) for i, t in pairs if [i] == tokenizer.encode(t, add_special_tokens=False)]
    pairs = pairs[:max_length]
    while 0 < len(pairs) < min_length:
        pairs = pairs + pairs
    ids = [i for i, _ in pairs]
    text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    if " " not in text and len(ids) > 1:
        text = (
            tokenizer.decode(ids[:1], clean_up_tokenization_spaces=False)
            + " "
            + tokenizer.decode(ids[1:], clean_up_tokenization_spaces=False)
        )
    if with_prefix_space:
        text = " " + text
    return text, tokenizer.encode(text, add_special_tokens=False)


def no_pad_token_padding(tokenizer, sequences):
    """_check_no_pad_token_padding: padding without a pad token raises; then a pad token is added."""
    if tokenizer.pad_token_id is None:
        with pytest.raises(ValueError):
            if isinstance(sequences, list):
                tokenizer.batch_encode_plus(sequences, padding="longest")
            else:
                tokenizer.encode_plus(sequences, padding=True)
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})


def per_example(batch) -> list[dict]:
    """batch_encode_plus's {key: [row, ...]} as encode_plus's [{key: row}, ...]."""
    return [{k: batch[k][i] for k in batch} for i in range(len(batch["input_ids"]))]


# --- TokenizerTesterMixin: the toy vocabulary ------------------------------------------------------------


def test_tokenize_special_tokens(toks):
    """mirrors TokenizerTesterMixin.test_tokenize_special_tokens"""
    for tokenizer in toks.both(do_lower_case=True):
        tokenizer.add_tokens(["[SPECIAL_TOKEN_1]"], special_tokens=True)
        tokenizer.add_special_tokens(
            {"additional_special_tokens": ["[SPECIAL_TOKEN_2]"]}, replace_additional_special_tokens=False
        )
        token_1 = tokenizer.tokenize("[SPECIAL_TOKEN_1]")
        assert len(token_1) == 1 and token_1[0] == "[SPECIAL_TOKEN_1]"
        assert len(tokenizer.tokenize("[SPECIAL_TOKEN_2]")) == 1


def test_model_input_names_signature(toks):
    """mirrors TokenizerTesterMixin.test_model_input_names_signature"""
    for tokenizer in toks.both():
        assert tokenizer.model_input_names[0] in ("input_ids", "input_values")


def test_rust_tokenizer_signature(backend):
    """mirrors TokenizerTesterMixin.test_rust_tokenizer_signature"""
    params = inspect.signature(backend.GPT2TokenizerFast.__init__).parameters
    assert "tokenizer_file" in params and params["tokenizer_file"].default is None


def test_tokenizer_slow_store_full_signature(backend, toks):
    """mirrors TokenizerTesterMixin.test_tokenizer_slow_store_full_signature"""
    tokenizer = toks.slow()
    for name, param in inspect.signature(backend.GPT2Tokenizer.__init__).parameters.items():
        if param.default is not inspect.Parameter.empty:
            assert name in tokenizer.init_kwargs, name


def test_tokenizer_fast_store_full_signature(backend, toks):
    """mirrors TokenizerTesterMixin.test_tokenizer_fast_store_full_signature"""
    tokenizer = toks.fast()
    for name, param in inspect.signature(backend.GPT2TokenizerFast.__init__).parameters.items():
        if param.default is not inspect.Parameter.empty and name not in (
            "vocab_file",
            "merges_file",
            "tokenizer_file",
        ):
            assert name in tokenizer.init_kwargs, name


def test_tokenizers_common_properties(toks):
    """mirrors TokenizerTesterMixin.test_tokenizers_common_properties"""
    for tokenizer in toks.both():
        for attr in SPECIAL_ATTRS:
            assert hasattr(tokenizer, attr) and hasattr(tokenizer, attr + "_id"), attr
        assert hasattr(tokenizer, "additional_special_tokens")
        assert hasattr(tokenizer, "additional_special_tokens_ids")
        names = ["model_max_length", "init_inputs", "init_kwargs"]
        if not tokenizer.is_fast:
            names += ["added_tokens_encoder", "added_tokens_decoder"]
        for attr in names:
            assert hasattr(tokenizer, attr), attr


def test_tokenizers_common_ids_setters(toks):
    """mirrors TokenizerTesterMixin.test_tokenizers_common_ids_setters"""
    for tokenizer in toks.both():
        token_id = next(iter(tokenizer.get_vocab().values()))
        token = tokenizer.convert_ids_to_tokens(token_id, skip_special_tokens=False)
        for attr in SPECIAL_ATTRS:
            setattr(tokenizer, attr + "_id", None)
            assert getattr(tokenizer, attr) is None and getattr(tokenizer, attr + "_id") is None
            setattr(tokenizer, attr + "_id", token_id)
            assert getattr(tokenizer, attr) == token and getattr(tokenizer, attr + "_id") == token_id
        tokenizer.additional_special_tokens_ids = []
        assert tokenizer.additional_special_tokens == [] and tokenizer.additional_special_tokens_ids == []
        tokenizer.additional_special_tokens_ids = [token_id]
        assert tokenizer.additional_special_tokens == [token]
        assert tokenizer.additional_special_tokens_ids == [token_id]


@pytest.mark.parametrize("verbose", [True, False])
def test_tokenizers_special_tokens_properties_unset(toks, verbose):
    """mirrors TokenizerTesterMixin.test_tokenizers_special_tokens_properties_unset"""
    for tokenizer in toks.both(verbose=verbose):
        for attr in [*SPECIAL_ATTRS, "additional_special_tokens"]:
            setattr(tokenizer, attr, None)
            assert getattr(tokenizer, attr) is None, attr


def test_save_and_load_tokenizer(toks, tmp_path):
    """mirrors TokenizerTesterMixin.test_save_and_load_tokenizer"""
    sample = " He is very happy, UNwant\u00e9d,running"
    for i, tokenizer in enumerate(toks.both()):
        assert tokenizer.model_max_length != 42
        before, vocab = tokenizer.encode(sample, add_special_tokens=False), tokenizer.get_vocab()
        tokenizer.save_pretrained(tmp_path / f"plain{i}")
        after = type(tokenizer).from_pretrained(tmp_path / f"plain{i}")
        assert after.encode(sample, add_special_tokens=False) == before
        assert after.get_vocab() == vocab

    for i, tokenizer in enumerate(toks.both(model_max_length=42)):
        tokenizer.add_tokens(["bim", "bambam"])
        extra = list(tokenizer.additional_special_tokens) + ["new_additional_special_token"]
        tokenizer.add_special_tokens(
            {"additional_special_tokens": extra}, replace_additional_special_tokens=False
        )
        before, vocab = tokenizer.encode(sample, add_special_tokens=False), tokenizer.get_vocab()
        tokenizer.save_pretrained(tmp_path / f"added{i}")
        after = type(tokenizer).from_pretrained(tmp_path / f"added{i}")
        assert after.encode(sample, add_special_tokens=False) == before
        assert after.get_vocab() == vocab
        assert "bim" in after.get_vocab() and "bambam" in after.get_vocab()
        assert "new_additional_special_token" in after.additional_special_tokens
        assert after.model_max_length == 42
        assert (
            type(tokenizer).from_pretrained(tmp_path / f"added{i}", model_max_length=43).model_max_length
            == 43
        )
        if tokenizer.is_fast:  # the non-legacy format too
            tokenizer.save_pretrained(tmp_path / f"json{i}", legacy_format=False)
            after = type(tokenizer).from_pretrained(tmp_path / f"json{i}")
            assert after.encode(sample, add_special_tokens=False) == before
            assert after.model_max_length == 42


def test_pickle_tokenizer(toks, tmp_path):
    """mirrors TokenizerTesterMixin.test_pickle_tokenizer"""
    for tokenizer in toks.both():
        text = "Munich and Berlin are nice cities"
        subwords = tokenizer.tokenize(text)
        (tmp_path / "tokenizer.bin").write_bytes(pickle.dumps(tokenizer))
        assert pickle.loads((tmp_path / "tokenizer.bin").read_bytes()).tokenize(text) == subwords


def test_pickle_added_tokens(backend):
    """mirrors TokenizerTesterMixin.test_pickle_added_tokens"""
    tok1 = backend.AddedToken("<s>", rstrip=True, lstrip=True, normalized=False, single_word=True)
    tok2 = pickle.loads(pickle.dumps(tok1))
    assert tok1.__getstate__() == tok2.__getstate__()


def test_added_tokens_do_lower_case(backend, toks):
    """mirrors TokenizerTesterMixin.test_added_tokens_do_lower_case (GPT-2 has no do_lower_case: its second half)"""
    for tokenizer in toks.both(do_lower_case=True):
        assert not getattr(tokenizer, "do_lower_case", False)
        special = tokenizer.all_special_tokens[0]
        text = special + " aaaaa bbbbbb low cccccccccdddddddd l " + special
        text2 = special + " AAAAA BBBBBB low CCCCCCCCCDDDDDDDD l " + special
        before = tokenizer.tokenize(text)
        new = ["aaaaa bbbbbb", "cccccccccdddddddd", "AAAAA BBBBBB", "CCCCCCCCCDDDDDDDD"]
        assert tokenizer.add_tokens([backend.AddedToken(t, lstrip=True, rstrip=True) for t in new]) in (2, 4)
        after, after2 = tokenizer.tokenize(text), tokenizer.tokenize(text2)
        assert len(after) == len(after2)
        assert after[1] != after2[1]
        assert len(before) > len(after)


def test_add_tokens_tokenizer(backend, toks):
    """mirrors TokenizerTesterMixin.test_add_tokens_tokenizer"""
    for tokenizer in toks.both(do_lower_case=False):
        vocab_size, all_size = tokenizer.vocab_size, len(tokenizer)
        assert vocab_size != 0
        new = [
            backend.AddedToken("aaaaa bbbbbb", rstrip=True, lstrip=True),
            backend.AddedToken("cccccccccdddddddd", rstrip=True, lstrip=True),
        ]
        assert tokenizer.add_tokens(new) == 2
        assert tokenizer.vocab_size == vocab_size and len(tokenizer) == all_size + 2
        tokens = tokenizer.encode("aaaaa bbbbbb low cccccccccdddddddd l", add_special_tokens=False)
        assert len(tokens) >= 4
        assert tokens[0] > tokenizer.vocab_size - 1 and tokens[-2] > tokenizer.vocab_size - 1

        special = {
            "eos_token": backend.AddedToken(">>>>|||<||<<|<<", rstrip=True, lstrip=True),
            "pad_token": backend.AddedToken("<<<<<|||>|>>>>|>", rstrip=True, lstrip=True),
        }
        assert tokenizer.add_special_tokens(special) == 2
        assert tokenizer.vocab_size == vocab_size and len(tokenizer) == all_size + 4
        tokens = tokenizer.encode(
            ">>>>|||<||<<|<< aaaaa bbbbbb low cccccccccdddddddd <<<<<|||>|>>>>|> l", add_special_tokens=False
        )
        assert len(tokens) >= 6
        assert tokens[0] > tokenizer.vocab_size - 1 and tokens[0] > tokens[1]
        assert tokens[-2] > tokenizer.vocab_size - 1 and tokens[-2] > tokens[-3]
        assert tokens[0] == tokenizer.eos_token_id and tokens[-2] == tokenizer.pad_token_id


def test_add_special_tokens(backend, toks):
    """mirrors TokenizerTesterMixin.test_add_special_tokens"""
    for tokenizer in toks.both(do_lower_case=False):
        text, ids = clean_sequence(tokenizer)
        tokenizer.add_special_tokens(
            {"cls_token": backend.AddedToken("[SPECIAL_TOKEN]", lstrip=True, rstrip=True)}
        )
        special_ids = tokenizer.encode("[SPECIAL_TOKEN]", add_special_tokens=False)
        assert len(special_ids) == 1
        joined = tokenizer.decode(ids + special_ids, clean_up_tokenization_spaces=False)
        encoded = tokenizer.encode(joined, add_special_tokens=False)
        assert encoded == tokenizer.encode(text, add_special_tokens=False) + special_ids
        assert "[SPECIAL_TOKEN]" not in tokenizer.decode(encoded, skip_special_tokens=True)


def test_internal_consistency(toks):
    """mirrors TokenizerTesterMixin.test_internal_consistency ("lower newer" both ways)"""
    for tokenizer in toks.both():
        tokens = tokenizer.tokenize("lower newer")
        ids = tokenizer.convert_tokens_to_ids(tokens)
        assert ids == tokenizer.encode("lower newer", add_special_tokens=False)
        assert len(tokenizer.convert_ids_to_tokens(ids)) != 0
        text = tokenizer.decode(ids)
        assert isinstance(text, str) and text == "lower newer"


def test_encode_decode_with_spaces(backend, toks):
    """mirrors TokenizerTesterMixin.test_encode_decode_with_spaces (slow tokenizer, as upstream)"""
    tokenizer = toks.slow(do_lower_case=False)
    tokenizer.add_tokens(
        [
            backend.AddedToken("[ABC]", normalized=True, lstrip=True, rstrip=True),
            backend.AddedToken("[DEF]", normalized=True, lstrip=True, rstrip=True),
            backend.AddedToken("GHI IHG", normalized=True, lstrip=True, rstrip=True),
        ]
    )
    tokenizer.add_tokens([backend.AddedToken("[SAMPLE]", normalized=True)], special_tokens=True)
    text = "[ABC][DEF][ABC]GHI IHG[DEF]"
    decoded = tokenizer.decode(
        tokenizer.encode(text, add_special_tokens=False), spaces_between_special_tokens=False
    )
    assert decoded in (text, text.lower())


def test_token_type_ids(toks):
    """mirrors TokenizerTesterMixin.test_token_type_ids"""
    for tokenizer in toks.both():
        assert 0 in tokenizer("Test this method.", return_token_type_ids=True)["token_type_ids"]


def test_sequence_ids(toks):
    """mirrors TokenizerTesterMixin.test_sequence_ids (fast tokenizer)"""
    tokenizer = toks.fast()
    assert 0 in tokenizer("Test this method.").sequence_ids()
    output = tokenizer("Test this method.", "With these inputs.")
    assert 0 in output.sequence_ids() and 1 in output.sequence_ids()
    if tokenizer.num_special_tokens_to_add(pair=True):
        assert None in output.sequence_ids()


DUMMY_TEMPLATE = "{% for message in messages %}{{message['role'] + message['content']}}{% endfor %}"
CONVERSATION = [
    {"role": "system", "content": "system message"},
    {"role": "user", "content": "user message"},
    {"role": "assistant", "content": "assistant message"},
]
RENDERED = "systemsystem messageuseruser messageassistantassistant message"


def test_chat_template(toks, tmp_path):
    """mirrors TokenizerTesterMixin.test_chat_template"""
    for i, tokenizer in enumerate(toks.both()):
        kw = dict(chat_template=DUMMY_TEMPLATE, return_dict=False)
        assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False, **kw) == RENDERED
        ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, **kw)
        as_dict = tokenizer.apply_chat_template(
            CONVERSATION, chat_template=DUMMY_TEMPLATE, tokenize=True, return_dict=True
        )
        assert as_dict["input_ids"] == ids
        tokenizer.chat_template = DUMMY_TEMPLATE
        assert tokenizer.chat_template == DUMMY_TEMPLATE
        assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False, return_dict=False) == RENDERED
        tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
        tokenizer.save_pretrained(tmp_path / str(i))
        tokenizer = tokenizer.from_pretrained(tmp_path / str(i))
        assert tokenizer.chat_template == DUMMY_TEMPLATE
        assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False, return_dict=False) == RENDERED


def test_chat_template_batched(toks):
    """mirrors TokenizerTesterMixin.test_chat_template_batched"""
    second = [{**m, "content": m["content"] + " 2"} for m in CONVERSATION]
    for tokenizer in toks.both():
        out = tokenizer.apply_chat_template(
            [CONVERSATION, second], chat_template=DUMMY_TEMPLATE, tokenize=False
        )
        assert out == [RENDERED, "systemsystem message 2useruser message 2assistantassistant message 2"]
        assert tokenizer.apply_chat_template(
            [CONVERSATION], chat_template=DUMMY_TEMPLATE, tokenize=False
        ) == [RENDERED]
        tokenizer.apply_chat_template([CONVERSATION, second], chat_template=DUMMY_TEMPLATE, tokenize=True)


def test_chat_template_dict(toks):
    """mirrors TokenizerTesterMixin.test_chat_template_dict"""
    conversation = [{"role": "user", "content": "user message"}]
    for tokenizer in toks.both():
        tokenizer.chat_template = {"template1": "{{'a'}}", "template2": "{{'b'}}"}
        for name, template in (("template1", "{{'a'}}"), ("template2", "{{'b'}}")):
            direct = tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False)
            assert direct == tokenizer.apply_chat_template(conversation, chat_template=name, tokenize=False)


def test_chat_template_dict_saving(toks, tmp_path):
    """mirrors TokenizerTesterMixin.test_chat_template_dict_saving"""
    for i, tokenizer in enumerate(toks.both()):
        tokenizer.chat_template = {"template1": "{{'a'}}", "template2": "{{'b'}}"}
        tokenizer.save_pretrained(tmp_path / str(i))
        saved = json.loads((tmp_path / str(i) / "tokenizer_config.json").read_text())
        # transformers 4.57 writes the templates to chat_template.jinja / additional_chat_templates/ by default
        if "chat_template" in saved:
            assert saved["chat_template"] == [
                {"name": "template1", "template": "{{'a'}}"},
                {"name": "template2", "template": "{{'b'}}"},
            ]
        assert tokenizer.from_pretrained(tmp_path / str(i)).chat_template == tokenizer.chat_template


def test_number_of_added_tokens(toks):
    """mirrors TokenizerTesterMixin.test_number_of_added_tokens"""
    for tokenizer in toks.both(do_lower_case=False):
        plain = tokenizer.encode("Test this method.", "With these inputs.", add_special_tokens=False)
        attached = tokenizer.encode("Test this method.", "With these inputs.", add_special_tokens=True)
        if len(attached) != 2:
            assert tokenizer.num_special_tokens_to_add(pair=True) == len(attached) - len(plain)


def too_long_warning(backend, tokenizer, *args, **kwargs):
    """tokenizer(*args, **kwargs) warns once that the sequence is longer than model_max_length (upstream first
    resets transformers' warn-once record, deprecation_warnings); returns the output"""
    tokenizer.deprecation_warnings = {}
    with capture_logs(backend) as logs:
        output = tokenizer(*args, **kwargs)
    assert len(logs.records) == 1 and logs.messages[0].startswith(SEQ_TOO_LONG), logs.messages
    return output


def test_maximum_encoding_length_single_input(backend, toks):
    """mirrors TokenizerTesterMixin.test_maximum_encoding_length_single_input"""
    for tokenizer in toks.both(do_lower_case=False, model_max_length=100):
        seq_0, _ = clean_sequence(tokenizer, max_length=20)
        sequence = tokenizer.encode(seq_0, add_special_tokens=False)
        total = len(sequence)
        assert total > 4
        assert tokenizer.model_max_length == 100
        seq_1 = seq_0 * 100
        assert len(tokenizer(seq_1, add_special_tokens=False)["input_ids"]) > 100
        paddings = (
            [False, True, "longest"] if tokenizer.pad_token and tokenizer.pad_token_id >= 0 else [False]
        )
        for padding in paddings:
            for truncation in (True, "longest_first", "only_first"):
                assert len(tokenizer(seq_1, padding=padding, truncation=truncation)["input_ids"]) == 100
                assert len(tokenizer([seq_1], padding=padding, truncation=truncation)["input_ids"][0]) == 100
            out = too_long_warning(backend, tokenizer, seq_1, padding=padding, truncation=False)
            assert len(out["input_ids"]) != 100
            out = too_long_warning(backend, tokenizer, [seq_1], padding=padding, truncation=False)
            assert len(out["input_ids"][0]) != 100

        info = tokenizer(
            seq_0,
            max_length=total - 2,
            add_special_tokens=False,
            stride=2,
            truncation="longest_first",
            return_overflowing_tokens=True,
        )
        if tokenizer.is_fast:  # overflow as a second row
            assert len(info["input_ids"]) == 2
            truncated, overflow = info["input_ids"]
        else:
            truncated, overflow = info["input_ids"], info["overflowing_tokens"]
        assert truncated == sequence[:-2]
        assert overflow == sequence[-(2 + 2) :]


def test_maximum_encoding_length_pair_input(backend, toks):
    """mirrors TokenizerTesterMixin.test_maximum_encoding_length_pair_input"""
    stride = 2
    for tokenizer in toks.both(do_lower_case=False, model_max_length=100):
        seq_0, ids = clean_sequence(tokenizer, max_length=20)
        if len(ids) <= 2 + stride:
            seq_0 = (seq_0 + " ") * (2 + stride)
        seq0_tokens = tokenizer.encode(seq_0, add_special_tokens=False)
        assert len(seq0_tokens) > 2 + stride
        seq_1 = "This is another sentence to be encoded."
        seq1_tokens = tokenizer.encode(seq_1, add_special_tokens=False)
        if abs(len(seq0_tokens) - len(seq1_tokens)) <= 2:
            seq_1 = tokenizer.decode(seq1_tokens + seq1_tokens, clean_up_tokenization_spaces=False)
        seq1_tokens = tokenizer.encode(seq_1, add_special_tokens=False)
        assert len(seq1_tokens) > 2 + stride
        smallest = seq1_tokens if len(seq0_tokens) > len(seq1_tokens) else seq0_tokens
        sequence = tokenizer.encode(seq_0, seq_1, add_special_tokens=False)

        assert tokenizer.model_max_length == 100
        seq_2 = seq_0 * 100
        assert len(tokenizer(seq_1, add_special_tokens=False)["input_ids"]) < 90
        assert len(tokenizer(seq_2, seq_1, add_special_tokens=False)["input_ids"]) > 100
        paddings = (
            [False, True, "longest"] if tokenizer.pad_token and tokenizer.pad_token_id >= 0 else [False]
        )
        for padding in paddings:
            for truncation in (True, "longest_first", "only_first"):
                assert (
                    len(tokenizer(seq_2, seq_1, padding=padding, truncation=truncation)["input_ids"]) == 100
                )
                batched = tokenizer([seq_2], [seq_1], padding=padding, truncation=truncation)
                assert len(batched["input_ids"][0]) == 100
            assert len(tokenizer(seq_1, seq_2, padding=padding, truncation="only_second")["input_ids"]) == 100
            batched = tokenizer([seq_1], [seq_2], padding=padding, truncation="only_second")
            assert len(batched["input_ids"][0]) == 100
            out = too_long_warning(backend, tokenizer, seq_1, seq_2, padding=padding, truncation=False)
            assert len(out["input_ids"]) != 100
            out = too_long_warning(backend, tokenizer, [seq_1], [seq_2], padding=padding, truncation=False)
            assert len(out["input_ids"][0]) != 100

        first = tokenizer.encode(seq_0, add_special_tokens=False)
        second = tokenizer.encode(seq_1, add_special_tokens=False)
        truncated_first, truncated_second = first[:-2] + second, first + second[:-2]
        truncated_longest = truncated_first if len(seq0_tokens) > len(seq1_tokens) else truncated_second
        overflow_first = first[-(2 + stride) :] + second
        overflow_second = first + second[-(2 + stride) :]
        overflow_longest = overflow_first if len(seq0_tokens) > len(seq1_tokens) else overflow_second
        kwargs = dict(
            max_length=len(sequence) - 2,
            add_special_tokens=False,
            stride=stride,
            return_overflowing_tokens=True,
        )

        for truncation in ("longest_first", True):
            if tokenizer.is_fast:
                info = tokenizer(seq_0, seq_1, truncation=truncation, **kwargs)
                assert len(info["input_ids"]) == 2
                assert info["input_ids"][0] == truncated_longest
                assert len(info["input_ids"][1]) == 2 + stride + len(smallest)
                assert info["input_ids"][1] == overflow_longest
            else:
                with pytest.raises(ValueError) as error:
                    tokenizer(seq_0, seq_1, truncation=truncation, **kwargs)
                assert str(error.value.args[0]).startswith(
                    "Not possible to return overflowing tokens for pair of sequences with the `longest_first`. "
                    "Please select another truncation strategy than `longest_first`, for instance `only_second` or "
                    "`only_first`."
                )

        info = tokenizer(seq_0, seq_1, truncation="only_first", **kwargs)
        if tokenizer.is_fast:
            assert len(info["input_ids"]) == 2
            assert info["input_ids"][0] == truncated_first
            assert info["input_ids"][1] == overflow_first
        else:
            assert info["input_ids"] == truncated_first
            assert info["overflowing_tokens"] == seq0_tokens[-(2 + stride) :]
        info = tokenizer(seq_0, seq_1, truncation="only_second", **kwargs)
        if tokenizer.is_fast:
            assert len(info["input_ids"]) == 2
            assert info["input_ids"][0] == truncated_second
            assert info["input_ids"][1] == overflow_second
        else:
            assert info["input_ids"] == truncated_second
            assert info["overflowing_tokens"] == seq1_tokens[-(2 + stride) :]


def test_special_tokens_mask(toks):
    """mirrors TokenizerTesterMixin.test_special_tokens_mask"""
    for tokenizer in toks.both(do_lower_case=False):
        plain = tokenizer.encode("Encode this.", add_special_tokens=False)
        encoded = tokenizer.encode_plus(
            "Encode this.", add_special_tokens=True, return_special_tokens_mask=True
        )
        ids, mask = encoded["input_ids"], encoded["special_tokens_mask"]
        assert len(mask) == len(ids)
        assert [x for x, m in zip(ids, mask) if not m] == plain


def test_special_tokens_mask_input_pairs(toks):
    """mirrors TokenizerTesterMixin.test_special_tokens_mask_input_pairs"""
    for tokenizer in toks.both(do_lower_case=False):
        expected = tokenizer.encode("Encode this.", add_special_tokens=False)
        expected += tokenizer.encode("This one too please.", add_special_tokens=False)
        encoded = tokenizer.encode_plus(
            "Encode this.", "This one too please.", add_special_tokens=True, return_special_tokens_mask=True
        )
        ids, mask = encoded["input_ids"], encoded["special_tokens_mask"]
        assert len(mask) == len(ids)
        assert [x for x, m in zip(ids, mask) if not m] == expected


@pytest.mark.parametrize("side", ["padding_side", "truncation_side"])
def test_padding_and_truncation_side_in_kwargs(pretrained, side):
    """mirrors TokenizerTesterMixin.test_padding_side_in_kwargs and test_truncation_side_in_kwargs"""
    for fast in (True, False):
        assert getattr(pretrained(fast, **{side: "left"}), side) == "left"
        assert getattr(pretrained(fast, **{side: "right"}), side) == "right"
        with pytest.raises(ValueError):
            pretrained(fast, **{side: "unauthorized"})


def test_right_and_left_padding(toks):
    """mirrors TokenizerTesterMixin.test_right_and_left_padding"""
    for tokenizer in toks.both(do_lower_case=False):
        no_pad_token_padding(tokenizer, "Sequence")
        pad = tokenizer.pad_token_id
        for side in ("right", "left"):
            tokenizer.padding_side = side
            encoded = tokenizer.encode("Sequence")
            padded = tokenizer.encode("Sequence", max_length=len(encoded) + 10, padding="max_length")
            assert padded == (encoded + [pad] * 10 if side == "right" else [pad] * 10 + encoded)
        encoded = tokenizer.encode("Sequence")
        for side, padding in (("right", True), ("left", "longest"), ("right", None), ("left", False)):
            tokenizer.padding_side = side
            kwargs = {} if padding is None else {"padding": padding}
            assert tokenizer.encode("Sequence", **kwargs) == encoded


def test_right_and_left_truncation(toks):
    """mirrors TokenizerTesterMixin.test_right_and_left_truncation"""
    for tokenizer in toks.both(do_lower_case=False):
        text = "This is a test sequence"
        encoded = tokenizer.encode(text, add_special_tokens=False)
        n = len(encoded)
        for side in ("right", "left"):
            tokenizer.truncation_side = side
            cut = tokenizer.encode(text, max_length=n - 3, truncation=True, add_special_tokens=False)
            assert cut == (encoded[:-3] if side == "right" else encoded[3:])
        for side, truncation in (
            ("right", True),
            ("left", "longest_first"),
            ("right", None),
            ("left", False),
        ):
            tokenizer.truncation_side = side
            kwargs = {} if truncation is None else {"truncation": truncation}
            assert tokenizer.encode(text, add_special_tokens=False, **kwargs) == encoded


def test_padding_to_max_length(toks):
    """mirrors TokenizerTesterMixin.test_padding_to_max_length (the deprecated pad_to_max_length=True)"""
    pytest.skip("transformers 4.57 no longer pads for the deprecated pad_to_max_length=True (it is ignored)")
    for tokenizer in toks.both(do_lower_case=False):
        no_pad_token_padding(tokenizer, "Sequence")
        tokenizer.padding_side = "right"
        encoded = tokenizer.encode("Sequence")
        padded = tokenizer.encode("Sequence", max_length=len(encoded) + 10, pad_to_max_length=True)
        assert padded == encoded + [tokenizer.pad_token_id] * 10
        assert tokenizer.encode("Sequence", pad_to_max_length=True) == encoded


def test_padding_to_multiple_of(toks):
    """mirrors TokenizerTesterMixin.test_padding_to_multiple_of"""
    for tokenizer in toks.both():
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens(
                {"pad_token": "<PAD>"}
            )  # upstream skips here; the toy has no pad token
        for text in ("", "This is a sample input"):
            for key, value in tokenizer(text, padding=True, pad_to_multiple_of=8).items():
                assert len(value) % 8 == 0, key
        for key, value in tokenizer("This", pad_to_multiple_of=8).items():
            assert len(value) % 8 != 0, key
        for key, value in tokenizer("This", padding=True, truncation=True, pad_to_multiple_of=8).items():
            assert len(value) % 8 == 0, key
        with pytest.raises(ValueError):
            tokenizer("This", padding=True, truncation=True, max_length=12, pad_to_multiple_of=8)


def test_padding_with_attention_mask(toks):
    """mirrors TokenizerTesterMixin.test_padding_with_attention_mask"""
    for tokenizer in toks.both():
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens(
                {"pad_token": "<PAD>"}
            )  # upstream skips here; the toy has no pad token
        features = [
            {"input_ids": [1, 2, 3, 4, 5, 6], "attention_mask": [1, 1, 1, 1, 1, 0]},
            {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 0]},
        ]
        padded = tokenizer.pad(features)
        expected = [
            [1, 1, 1, 1, 1, 0],
            [1, 1, 0, 0, 0, 0] if tokenizer.padding_side == "right" else [0, 0, 0, 1, 1, 0],
        ]
        assert [list(m) for m in padded["attention_mask"]] == expected


def test_encode_plus_with_padding(toks):
    """mirrors TokenizerTesterMixin.test_encode_plus_with_padding"""
    for tokenizer in toks.both(do_lower_case=False):
        no_pad_token_padding(tokenizer, "Sequence")
        pad = tokenizer.pad_token_id
        base = tokenizer.encode_plus("Sequence", return_special_tokens_mask=True)
        ids, special = base["input_ids"], base["special_tokens_mask"]
        tokenizer.padding_side = "right"
        for padding in (True, False):
            same = tokenizer.encode_plus("Sequence", padding=padding, return_special_tokens_mask=True)
            assert same["input_ids"] == ids and same["special_tokens_mask"] == special
        right = tokenizer.encode_plus(
            "Sequence", max_length=len(ids) + 10, padding="max_length", return_special_tokens_mask=True
        )
        assert right["input_ids"] == ids + [pad] * 10
        assert right["special_tokens_mask"] == special + [1] * 10
        tokenizer.padding_side = "left"
        left = tokenizer.encode_plus(
            "Sequence", max_length=len(ids) + 10, padding="max_length", return_special_tokens_mask=True
        )
        assert left["input_ids"] == [pad] * 10 + ids
        assert left["special_tokens_mask"] == [1] * 10 + special
        if "token_type_ids" in tokenizer.model_input_names:
            types, type_pad = base["token_type_ids"], tokenizer.pad_token_type_id
            assert right["token_type_ids"] == types + [type_pad] * 10
            assert left["token_type_ids"] == [type_pad] * 10 + types
        if "attention_mask" in tokenizer.model_input_names:
            mask = base["attention_mask"]
            assert right["attention_mask"] == mask + [0] * 10
            assert left["attention_mask"] == [0] * 10 + mask


def test_padding_warning_message_fast_tokenizer(backend, toks):
    """mirrors TokenizerTesterMixin.test_padding_warning_message_fast_tokenizer"""
    fast = toks.fast()
    no_pad_token_padding(fast, "This is a text")
    encoding = fast("This is a text")
    with capture_logs(backend) as logs:
        fast.pad(encoding)
    assert len(logs.records) == 1
    assert (
        "Please note that with a fast tokenizer, using the `__call__` method is faster than using a method to encode "
        "the text followed by a call to the `pad` method to get a padded encoding." in logs.messages[0]
    )
    slow = toks.slow()
    no_pad_token_padding(slow, "This is a text")
    encoding = slow("This is a text")
    with capture_logs(backend) as logs:
        slow.pad(encoding)
    assert logs.records == []


def test_separate_tokenizers(toks):
    """mirrors TokenizerTesterMixin.test_separate_tokenizers"""
    for tokenizer, other in zip(toks.both(random_argument=True), toks.both(random_argument=False)):
        assert tokenizer.init_kwargs["random_argument"] is True
        assert other.init_kwargs["random_argument"] is False


def test_get_vocab(toks):
    """mirrors TokenizerTesterMixin.test_get_vocab"""
    for tokenizer in toks.both(do_lower_case=False):
        vocab = tokenizer.get_vocab()
        assert isinstance(vocab, dict) and len(tokenizer) >= len(vocab)
        assert len([tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]) == len(tokenizer)
        tokenizer.add_tokens(["asdfasdfasdfasdf"])
        assert len([tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]) == len(tokenizer)


def test_conversion_reversible(toks):
    """mirrors TokenizerTesterMixin.test_conversion_reversible"""
    for tokenizer in toks.both(do_lower_case=False):
        for word, index in tokenizer.get_vocab().items():
            if word == tokenizer.unk_token:
                continue
            assert tokenizer.convert_tokens_to_ids(word) == index
            assert tokenizer.convert_ids_to_tokens(index) == word


def test_call(toks):
    """mirrors TokenizerTesterMixin.test_call"""
    s = BATCH_TEXTS
    for tokenizer in toks.both(do_lower_case=False):
        assert tokenizer.encode_plus(s[0]) == tokenizer(s[0])
        assert tokenizer.encode_plus(s[0], s[1]) == tokenizer(s[0], s[1])
        assert tokenizer.batch_encode_plus(s) == tokenizer(s)
        assert tokenizer.batch_encode_plus(list(zip(s, s))) == tokenizer(s, s)


def test_batch_encode_plus_batch_sequence_length(toks):
    """mirrors TokenizerTesterMixin.test_batch_encode_plus_batch_sequence_length"""
    for tokenizer in toks.both(do_lower_case=False):
        singles = [tokenizer.encode_plus(s) for s in BATCH_TEXTS]
        assert singles == per_example(tokenizer.batch_encode_plus(BATCH_TEXTS, padding=False))
        longest = max(len(e["input_ids"]) for e in singles)
        no_pad_token_padding(tokenizer, BATCH_TEXTS)
        padded = [tokenizer.encode_plus(s, max_length=longest, padding="max_length") for s in BATCH_TEXTS]
        assert padded == per_example(tokenizer.batch_encode_plus(BATCH_TEXTS, padding=True))
        for padding in (True, False):
            a = tokenizer.batch_encode_plus(BATCH_TEXTS, padding=padding)
            b = tokenizer.batch_encode_plus(
                BATCH_TEXTS, max_length=longest + 10, padding="longest" if padding else False
            )
            for key in a:
                assert a[key] == b[key]


def test_added_token_are_matched_longest_first(backend, toks):
    """mirrors TokenizerTesterMixin.test_added_token_are_matched_longest_first (slow tokenizer)"""
    for order in (("extra_id_1", "extra_id_100"), ("extra_id_100", "extra_id_1")):
        tokenizer = toks.slow()
        for token in order:
            tokenizer.add_tokens([backend.AddedToken(token)])
        assert "extra_id_100" in tokenizer.tokenize("This is some extra_id_100")


def test_added_token_serializable(backend, toks, tmp_path):
    """mirrors TokenizerTesterMixin.test_added_token_serializable"""
    for i, tokenizer in enumerate(toks.both(do_lower_case=False)):
        tokenizer.add_tokens([backend.AddedToken("new_token", lstrip=True)])
        tokenizer.save_pretrained(tmp_path / str(i))
        tokenizer.from_pretrained(tmp_path / str(i))


def test_batch_encode_plus_padding(toks):
    """mirrors TokenizerTesterMixin.test_batch_encode_plus_padding"""
    for side in ("right", "left"):
        for tokenizer in toks.both(do_lower_case=False):
            tokenizer.padding_side = side
            no_pad_token_padding(tokenizer, BATCH_TEXTS)
            singles = [tokenizer.encode_plus(s, max_length=100, padding="max_length") for s in BATCH_TEXTS]
            batch = tokenizer.batch_encode_plus(BATCH_TEXTS, max_length=100, padding="max_length")
            assert singles == per_example(batch)


def test_prepare_for_model(toks):
    """mirrors TokenizerTesterMixin.test_prepare_for_model"""
    for tokenizer in toks.both(do_lower_case=False):
        text = "Testing the prepare_for_model method."
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.prepare_for_model(ids, add_special_tokens=True) == tokenizer.encode_plus(
            text, add_special_tokens=True
        )


def test_batch_encode_plus_overflowing_tokens(toks):
    """mirrors TokenizerTesterMixin.test_batch_encode_plus_overflowing_tokens"""
    for tokenizer in toks.both(do_lower_case=False):
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        tokenizer.batch_encode_plus(
            ["Testing the prepare_for_model method.", "Test"],
            return_overflowing_tokens=True,
            truncation=True,
            padding=True,
            max_length=3,
        )


def test_batch_encode_plus_tensors(toks):
    """mirrors TokenizerTesterMixin.test_batch_encode_plus_tensors (its PyTorch half; TF is not installed)"""
    for tokenizer in toks.both(do_lower_case=False):
        with pytest.raises(ValueError):
            tokenizer.batch_encode_plus(BATCH_TEXTS, return_tensors="pt")
        if tokenizer.pad_token_id is None:
            with pytest.raises(ValueError):
                tokenizer.batch_encode_plus(BATCH_TEXTS, padding=True, return_tensors="pt")
            tokenizer.add_special_tokens({"pad_token": "<PAD>"})
        tensors = tokenizer.batch_encode_plus(BATCH_TEXTS, padding=True, return_tensors="pt")
        lists = tokenizer.batch_encode_plus(BATCH_TEXTS, padding=True)
        for key in lists:
            assert tensors[key].tolist() == lists[key]


@pytest.mark.slow
def test_torch_encode_plus_sent_to_model(backend, pretrained):
    """mirrors TokenizerTesterMixin.test_torch_encode_plus_sent_to_model (a full-size GPT2Model, as upstream)"""
    for tokenizer in (pretrained(), pretrained(fast=False)):
        config = backend.GPT2Config()
        if config.pad_token_id is None:  # upstream returns here: GPT2Config has no pad token
            config.pad_token_id = config.eos_token_id
        model = backend.GPT2Model(config).eval()
        assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
        sequence = " ".join(list(tokenizer.get_vocab().keys())[:10])
        encoded = tokenizer.encode_plus(sequence, return_tensors="pt")
        encoded.to(model.device)
        batch = tokenizer.batch_encode_plus([sequence, sequence], return_tensors="pt")
        with torch.no_grad():
            model(**encoded)
            model(**batch)


def test_np_encode_plus_sent_to_model(pretrained):
    """mirrors TokenizerTesterMixin.test_np_encode_plus_sent_to_model (slow upstream; cheap here)"""
    for tokenizer in (pretrained(fast=False), pretrained()):
        sequence = " ".join(list(tokenizer.get_vocab().keys())[:10])
        single = tokenizer.encode_plus(sequence, return_tensors="np")
        batch = tokenizer.batch_encode_plus([sequence, sequence], return_tensors="np")
        assert isinstance(single["input_ids"], np.ndarray) and single["input_ids"].ndim == 2
        assert isinstance(batch["input_ids"], np.ndarray) and batch["input_ids"].shape[0] == 2


# --- TokenizerTesterMixin: the gpt2 tokenizer (tokenizers_list) -------------------------------------------


def test_is_fast(pretrained):
    """mirrors TokenizerTesterMixin.test_is_fast"""
    assert pretrained().is_fast
    assert not pretrained(fast=False).is_fast


def test_fast_only_inputs(pretrained):
    """mirrors TokenizerTesterMixin.test_fast_only_inputs"""
    tokenizer = pretrained()
    for method in (tokenizer.tokenize, tokenizer.encode, tokenizer.encode_plus, tokenizer.batch_encode_plus):
        with pytest.raises(TypeError):
            method(None)


def test_alignement_methods(pretrained):
    """mirrors TokenizerTesterMixin.test_alignement_methods"""
    tokenizer = pretrained()
    words = ["Wonderful", "no", "inspiration", "example", "with", "subtoken"]
    text = " ".join(words)
    enc = tokenizer.encode_plus(text, add_special_tokens=False)
    batch = tokenizer.batch_encode_plus([text] * 3, add_special_tokens=False)
    n = len(enc["input_ids"])
    last_word, last_token, last_row, last_char = len(words) - 1, n - 1, 2, len(text) - 1

    assert len(enc.words(0)) == n and max(enc.words(0)) == last_word and min(enc.words(0)) == 0
    assert len(batch.words(last_row)) == n and max(batch.words(last_row)) == last_word
    assert len(enc.tokens(0)) == n
    assert enc.token_to_word(0) == 0 and enc.token_to_word(0, 0) == 0
    assert enc.token_to_word(last_token) == last_word and enc.token_to_word(0, last_token) == last_word
    assert batch.token_to_word(1, 0) == 0 and batch.token_to_word(last_row, last_token) == last_word
    assert enc.word_to_tokens(0).start == 0 and enc.word_to_tokens(0, 0).start == 0
    assert enc.word_to_tokens(last_word).end == last_token + 1
    assert batch.word_to_tokens(1, 0).start == 0 and batch.word_to_tokens(last_row, last_word).end == n
    assert enc.token_to_chars(0).start == 0 and enc.token_to_chars(last_token).end == last_char + 1
    assert batch.token_to_chars(1, 0).start == 0
    assert batch.token_to_chars(last_row, last_token).end == last_char + 1
    assert enc.char_to_token(0) == 0 and enc.char_to_token(last_char) == last_token
    assert batch.char_to_token(1, 0) == 0 and batch.char_to_token(last_row, last_char) == last_token
    assert enc.char_to_word(0) == 0 and enc.char_to_word(last_char) == last_word
    assert batch.char_to_word(1, 0) == 0 and batch.char_to_word(last_row, last_char) == last_word
    assert enc.word_to_chars(0).start == 0 and enc.word_to_chars(last_word).end == last_char + 1
    assert (
        batch.word_to_chars(1, 0).start == 0 and batch.word_to_chars(last_row, last_word).end == last_char + 1
    )
    assert enc.token_to_sequence(n // 2) == 0 and batch.token_to_sequence(last_row, n // 2) == 0

    pair_words = ["Amazing", "example", "full", "of", "inspiration"]
    pair_text = " ".join(pair_words)
    w0, w1 = words.index("inspiration"), pair_words.index("inspiration")
    c0, c1 = text.find("inspiration"), pair_text.find("inspiration")
    pair = tokenizer.encode_plus(text, pair_text, add_special_tokens=False)
    pairs = tokenizer.batch_encode_plus([(text, pair_text)] * 3, add_special_tokens=False)
    ids = pair["input_ids"]
    t0, t1 = pair.word_to_tokens(w0, sequence_index=0).start, pair.word_to_tokens(w1, sequence_index=1).start
    assert t0 != t1 and ids[t0] == ids[t1]
    t0, t1 = (
        pairs.word_to_tokens(1, w0, sequence_index=0).start,
        pairs.word_to_tokens(1, w1, sequence_index=1).start,
    )
    assert t0 != t1 and pairs["input_ids"][1][t0] == pairs["input_ids"][1][t1]
    t0, t1 = pair.char_to_token(c0, sequence_index=0), pair.char_to_token(c1, sequence_index=1)
    assert t0 != t1 and ids[t0] == ids[t1]
    a, b = pair.char_to_word(c0, sequence_index=0), pair.char_to_word(c1, sequence_index=1)
    assert a != b and words[a] == pair_words[b]
    a, b = pair.word_to_chars(w0, sequence_index=0).start, pair.word_to_chars(w1, sequence_index=1).start
    assert a != b and text[a] == pair_text[b]

    pair = tokenizer.encode_plus(text, pair_text, add_special_tokens=True)
    sequence_ids = [pair.token_to_sequence(i) for i in range(len(pair["input_ids"]))]
    assert 0 in sequence_ids and 1 in sequence_ids
    if tokenizer.num_special_tokens_to_add(pair=True):
        assert None in sequence_ids


def test_tokenization_python_rust_equals(pretrained):
    """mirrors TokenizerTesterMixin.test_tokenization_python_rust_equals (its own sample text)"""
    fast, slow = pretrained(), pretrained(fast=False)
    keys = ("input_ids", "token_type_ids", "attention_mask")
    for args, kwargs in (
        ((SAMPLE_TEXT,), {}),
        ((SAMPLE_TEXT, SAMPLE_TEXT), {}),
        ((SAMPLE_TEXT,), dict(max_length=512, truncation=True)),
    ):
        p, r = slow.encode_plus(*args, **kwargs), fast.encode_plus(*args, **kwargs)
        for key in (k for k in p if k in keys):
            assert list(p[key]) == list(r[key]), key
    kwargs = dict(max_length=512, truncation=True, stride=3, return_overflowing_tokens=True)
    p, r = slow.encode_plus(SAMPLE_TEXT, **kwargs), fast.encode_plus(SAMPLE_TEXT, **kwargs)
    for key in (k for k in p if k in keys):
        assert list(p[key]) == list(r[key][0]), key


def test_num_special_tokens_to_add_equal(pretrained):
    """mirrors TokenizerTesterMixin.test_num_special_tokens_to_add_equal"""
    fast, slow = pretrained(), pretrained(fast=False)
    for pair in (False, True):
        assert fast.num_special_tokens_to_add(pair) == slow.num_special_tokens_to_add(pair)


def test_max_length_equal(pretrained):
    """mirrors TokenizerTesterMixin.test_max_length_equal"""
    fast, slow = pretrained(), pretrained(fast=False)
    assert fast.max_len_single_sentence == slow.max_len_single_sentence
    assert fast.max_len_sentences_pair == slow.max_len_sentences_pair


def test_special_tokens_map_equal(pretrained):
    """mirrors TokenizerTesterMixin.test_special_tokens_map_equal"""
    assert list(pretrained(fast=False).special_tokens_map.items()) == list(
        pretrained().special_tokens_map.items()
    )


def test_add_tokens(pretrained):
    """mirrors TokenizerTesterMixin.test_add_tokens"""
    tokenizer = pretrained()
    size = len(tokenizer)
    assert tokenizer.add_tokens("") == 0
    assert tokenizer.add_tokens("testoken") == 1
    assert tokenizer.add_tokens(["testoken1", "testtoken2"]) == 2
    assert len(tokenizer) == size + 3
    assert tokenizer.add_special_tokens({}) == 0
    assert tokenizer.add_special_tokens({"bos_token": "[BOS]", "eos_token": "[EOS]"}) == 2
    with pytest.raises(AssertionError):
        tokenizer.add_special_tokens({"additional_special_tokens": "<testtoken1>"})
    assert tokenizer.add_special_tokens({"additional_special_tokens": ["<testtoken2>"]}) == 1
    assert tokenizer.add_special_tokens({"additional_special_tokens": ["<testtoken3>", "<testtoken4>"]}) == 2
    extra = tokenizer.special_tokens_map["additional_special_tokens"]
    assert "<testtoken3>" in extra and isinstance(extra, list) and len(extra) >= 2
    assert len(tokenizer) == size + 8


def test_offsets_mapping(pretrained):
    """mirrors TokenizerTesterMixin.test_offsets_mapping"""
    tokenizer = pretrained()
    text, pair = "Wonderful no inspiration example with subtoken", "Along with an awesome pair"
    for args, is_pair in (((text,), False), ((text, pair), True)):
        out = tokenizer.encode_plus(
            *args, return_special_tokens_mask=True, return_offsets_mapping=True, add_special_tokens=True
        )
        assert len(out["offset_mapping"]) == len(out["input_ids"])
        assert sum(out["special_tokens_mask"]) == tokenizer.num_special_tokens_to_add(is_pair)


def test_batch_encode_dynamic_overflowing(pretrained):
    """mirrors TokenizerTesterMixin.test_batch_encode_dynamic_overflowing (returns early: GPT-2 has no pad)"""
    tokenizer = pretrained()
    if not tokenizer.pad_token or tokenizer.pad_token_id < 0:
        return  # as upstream
    text = "HuggingFace is solving NLP one commit at a time"
    kwargs = dict(max_length=6, padding=True, return_tensors="pt", return_overflowing_tokens=True)
    out = tokenizer.encode_plus(text, truncation=True, **kwargs)
    assert all(len(out[k].shape) == 2 for k in out if "overflow_to_sample_mapping" not in k)
    for texts in ([text], [text, "Very tiny input"]):
        out = tokenizer.batch_encode_plus(texts, truncation="only_first", **kwargs)
        for key in (k for k in out if "overflow_to_sample_mapping" not in k):
            assert len(out[key].shape) == 2 and out[key].shape[-1] == 6


def test_compare_pretokenized_inputs(pretrained):
    """mirrors TokenizerTesterMixin.test_compare_pretokenized_inputs"""
    fast, slow = pretrained(), pretrained(fast=False)
    simple, pair = ["This", "is", "a", "sample", "input"], ["This", "is", "a", "sample", "pair"]
    assert fast.encode(simple, is_split_into_words=True, add_special_tokens=False) == slow.encode(
        simple, is_split_into_words=True, add_special_tokens=False
    )
    kwargs = dict(
        is_split_into_words=True,
        return_overflowing_tokens=False,
        return_special_tokens_mask=True,
        return_offsets_mapping=False,
    )

    def same(a, b):
        for key in b:
            assert a[key] == b[key], key

    same(fast.encode_plus(simple, **kwargs), slow.encode_plus(simple, **kwargs))
    batch = [simple] * 2 + [simple + pair]
    same(fast.batch_encode_plus(batch, **kwargs), slow.batch_encode_plus(batch, **kwargs))
    assert fast.encode(simple, pair, is_split_into_words=True) == slow.encode(
        simple, pair, is_split_into_words=True
    )
    same(fast.encode_plus(simple, pair, **kwargs), slow.encode_plus(simple, pair, **kwargs))
    batch = [simple, pair] * 2 + [simple + pair, pair]
    same(fast.batch_encode_plus(batch, **kwargs), slow.batch_encode_plus(batch, **kwargs))


def test_create_token_type_ids(pretrained):
    """mirrors TokenizerTesterMixin.test_create_token_type_ids"""
    fast, slow = pretrained(), pretrained(fast=False)
    assert fast.create_token_type_ids_from_sequences([1, 2, 3]) == slow.create_token_type_ids_from_sequences(
        [1, 2, 3]
    )
    assert fast.create_token_type_ids_from_sequences(
        [1, 2, 3], [1, 2, 3]
    ) == slow.create_token_type_ids_from_sequences([1, 2, 3], [1, 2, 3])


def test_build_inputs_with_special_tokens(pretrained):
    """mirrors TokenizerTesterMixin.test_build_inputs_with_special_tokens"""
    fast, slow = pretrained(), pretrained(fast=False)
    for text, pair in [
        ("", ""),
        ("", "This is a sample pair"),
        ("This is a sample input", ""),
        ("This is a sample input", "This is a sample pair"),
    ]:
        a, b = slow.encode(text, add_special_tokens=False), slow.encode(pair, add_special_tokens=False)
        assert fast.build_inputs_with_special_tokens(a) == slow.build_inputs_with_special_tokens(a)
        assert fast.build_inputs_with_special_tokens(a, b) == slow.build_inputs_with_special_tokens(a, b)


def test_save_pretrained(pretrained, tmp_path):
    """mirrors TokenizerTesterMixin.test_save_pretrained"""
    fast, slow = pretrained(), pretrained(fast=False)
    for name, legacy in (("default", None), ("legacy", True), ("json", False)):
        folder = tmp_path / name
        kwargs = {} if legacy is None else {"legacy_format": legacy}
        fast_files = tuple(str(f) for f in fast.save_pretrained(folder, **kwargs))
        slow_files = tuple(str(f) for f in slow.save_pretrained(folder))
        for f in fast_files + slow_files:
            if f.endswith(".json") and (folder / f).exists():
                json.loads(Path(f).read_text(encoding="utf-8"))  # well-formed JSON
        if legacy is None:
            assert any("tokenizer.json" in f for f in fast_files)
            assert tuple(f for f in fast_files if "tokenizer.json" not in f) == slow_files
        elif legacy:
            assert fast_files == slow_files
        else:
            assert any("tokenizer.json" in f for f in fast_files)
        reloaded_fast, reloaded_slow = fast.from_pretrained(folder), slow.from_pretrained(folder)
        for key in reloaded_slow.special_tokens_map:
            assert hasattr(reloaded_fast, key)


def test_embeded_special_tokens(pretrained):
    """mirrors TokenizerTesterMixin.test_embeded_special_tokens"""
    fast, slow = pretrained(), pretrained(fast=False)
    sentence = "A, <mask> AllenNLP sentence."
    r, p = (
        fast.encode_plus(sentence, add_special_tokens=True),
        slow.encode_plus(sentence, add_special_tokens=True),
    )
    for key in p:
        assert r[key] == p[key], key
    assert fast.convert_ids_to_tokens(r["input_ids"]) == slow.convert_ids_to_tokens(p["input_ids"])


def test_compare_add_special_tokens(pretrained):
    """mirrors TokenizerTesterMixin.test_compare_add_special_tokens"""
    tokenizer = pretrained()
    n = tokenizer.num_special_tokens_to_add(pair=False)
    for text in ("", " "):
        assert (
            len(tokenizer.tokenize(text, add_special_tokens=False))
            == len(tokenizer.tokenize(text, add_special_tokens=True)) - n
        )
        assert (
            len(tokenizer.encode(text, add_special_tokens=False))
            == len(tokenizer.encode(text, add_special_tokens=True)) - n
        )
        plain, special = tokenizer.encode_plus(text, add_special_tokens=False), tokenizer.encode_plus(text)
        for key in plain:
            assert len(plain[key]) == len(special[key]) - n
        plain = tokenizer.batch_encode_plus([text, text], add_special_tokens=False)
        special = tokenizer.batch_encode_plus([text, text], add_special_tokens=True)
        for key in plain:
            for a, b in zip(plain[key], special[key]):
                assert len(a) == len(b) - n


def test_compare_prepare_for_model(pretrained):
    """mirrors TokenizerTesterMixin.test_compare_prepare_for_model"""
    fast, slow = pretrained(), pretrained(fast=False)
    text = "Asserting that both tokenizers are equal"
    p = slow.prepare_for_model(slow.encode(text, add_special_tokens=False))
    r = fast.prepare_for_model(fast.encode(text, add_special_tokens=False))
    for key in p:
        assert p[key] == r[key], key


def test_special_tokens_initialization(backend, pretrained):
    """mirrors TokenizerTesterMixin.test_special_tokens_initialization"""
    added = [backend.AddedToken("<special>", lstrip=True)]
    fast = pretrained(additional_special_tokens=added)
    r_output = fast.encode("Hey this is a <special> token")
    special_id = fast.encode("<special>", add_special_tokens=False)[0]
    assert special_id in r_output
    from_slow = pretrained(additional_special_tokens=added, from_slow=True)
    slow = pretrained(fast=False, additional_special_tokens=added)
    p_output = slow.encode("Hey this is a <special> token")
    cr_output = from_slow.encode("Hey this is a <special> token")
    assert p_output == r_output and cr_output == r_output
    assert special_id in p_output and special_id in cr_output


def test_special_tokens_initialization_with_non_empty_additional_special_tokens(backend, toks, tmp_path):
    """mirrors TokenizerTesterMixin.test_special_tokens_initialization_with_non_empty_additional_special_tokens"""
    toks.slow().save_pretrained(tmp_path)
    path = tmp_path / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["additional_special_tokens"] = ["an_additional_special_token"]
    path.write_text(json.dumps(config), encoding="utf-8")

    tokenizer = backend.GPT2Tokenizer.from_pretrained(tmp_path)
    assert "an_additional_special_token" in tokenizer.additional_special_tokens
    assert "an_additional_special_token" in tokenizer.get_vocab()
    ids = tokenizer.convert_tokens_to_ids(["an_additional_special_token"])
    assert tokenizer.convert_ids_to_tokens(ids) == ["an_additional_special_token"]

    new = [backend.AddedToken("a_new_additional_special_token", lstrip=True)]
    tokenizer = backend.GPT2Tokenizer.from_pretrained(tmp_path, additional_special_tokens=new)
    assert "a_new_additional_special_token" in tokenizer.additional_special_tokens
    ids = tokenizer.convert_tokens_to_ids(["a_new_additional_special_token"])
    assert tokenizer.convert_ids_to_tokens(ids) == ["a_new_additional_special_token"]


def test_training_new_tokenizer(toks):
    """mirrors TokenizerTesterMixin.test_training_new_tokenizer"""
    tokenizer = toks.fast()
    new = tokenizer.train_new_from_iterator(TRAINING_CORPUS, 100)
    inputs = new(["This is the first sentence", "This sentence is different 🤗."])
    assert len(inputs["input_ids"]) == 2
    assert new.decode(inputs["input_ids"][0], skip_special_tokens=True) == "This is the first sentence"
    for pair in (False, True):
        assert tokenizer.num_special_tokens_to_add(pair) == new.num_special_tokens_to_add(pair)
    assert tokenizer.max_len_single_sentence == new.max_len_single_sentence
    assert tokenizer.max_len_sentences_pair == new.max_len_sentences_pair
    assert list(tokenizer.all_special_tokens_extended) == list(new.all_special_tokens_extended)
    assert tokenizer.special_tokens_map == new.special_tokens_map


def test_training_new_tokenizer_with_special_tokens_change(toks):
    """mirrors TokenizerTesterMixin.test_training_new_tokenizer_with_special_tokens_change (string special tokens)"""
    tokenizer = toks.fast()
    mapping = {}
    for attr in SPECIAL_ATTRS:
        value = getattr(tokenizer, attr)
        if value is not None:
            mapping[value] = f"{value}a"
    new = tokenizer.train_new_from_iterator(TRAINING_CORPUS, 100, special_tokens_map=mapping)
    for attr in SPECIAL_ATTRS:
        old = getattr(tokenizer, attr)
        if old is not None and old in mapping:
            assert getattr(new, attr) == mapping[old]
            assert getattr(new, attr + "_id") == new.get_vocab()[mapping[old]]
    inputs = new(["This is the first sentence", "This sentence is different 🤗."])
    assert new.decode(inputs["input_ids"][0], skip_special_tokens=True) == "This is the first sentence"


def test_convert_tokens_to_string_format(toks):
    """mirrors TokenizerTesterMixin.test_convert_tokens_to_string_format"""
    for tokenizer in toks.both(do_lower_case=True):
        assert isinstance(tokenizer.convert_tokens_to_string(["this", "is", "a", "test"]), str)


def test_save_slow_from_fast_and_reload_fast(backend, pretrained, tmp_path):
    """mirrors TokenizerTesterMixin.test_save_slow_from_fast_and_reload_fast"""
    fast = pretrained()
    fast.save_pretrained(tmp_path / "one", legacy_format=False)
    again = backend.GPT2TokenizerFast.from_pretrained(
        tmp_path / "one", tokenizer_file=str(tmp_path / "one" / "tokenizer.json"), add_prefix_space=True
    )
    again.save_pretrained(tmp_path / "one", legacy_format=True)  # the slow files
    slow = backend.GPT2Tokenizer.from_pretrained(tmp_path / "one")
    slow.save_pretrained(tmp_path / "two")
    backend.GPT2TokenizerFast.from_pretrained(tmp_path / "two")


def test_split_special_tokens(backend, pretrained):
    """mirrors TokenizerTesterMixin.test_split_special_tokens (slow tokenizer)"""
    tokenizer = pretrained(fast=False)
    special = "[SPECIAL_TOKEN]"
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                backend.AddedToken(special, rstrip=True, lstrip=True, normalized=True, special=True)
            ]
        }
    )
    assert len(tokenizer.encode(special, add_special_tokens=False)) == 1
    split = tokenizer.encode(special, add_special_tokens=False, split_special_tokens=True)
    if len(split) == 1:
        assert split[0] != tokenizer.convert_tokens_to_ids(special)
    else:
        assert len(split) > 1


def test_added_tokens_serialization(backend, gpt2_vocab_dir, tmp_path):
    """mirrors TokenizerTesterMixin.test_added_tokens_serialization"""
    new_eos = backend.AddedToken("[NEW_EOS]", rstrip=False, lstrip=True, normalized=False, special=True)

    def check(expected, cls, folder):
        tokenizer = cls.from_pretrained(folder)
        assert str(new_eos) not in tokenizer.additional_special_tokens
        assert new_eos in tokenizer.added_tokens_decoder.values()
        assert tokenizer.added_tokens_decoder[tokenizer.eos_token_id] == new_eos
        assert dict(tokenizer.added_tokens_decoder) == dict(expected)
        return tokenizer

    slow = backend.GPT2Tokenizer.from_pretrained(gpt2_vocab_dir, eos_token=new_eos)
    expected = slow.added_tokens_decoder
    assert slow.eos_token == "[NEW_EOS]" and new_eos in list(slow.added_tokens_decoder.values())
    slow.save_pretrained(tmp_path / "slow")
    check(expected, backend.GPT2Tokenizer, tmp_path / "slow")
    fast = check(expected, backend.GPT2TokenizerFast, tmp_path / "slow")
    fast.save_pretrained(tmp_path / "fast")
    check(expected, backend.GPT2TokenizerFast, tmp_path / "fast")

    fast = backend.GPT2TokenizerFast.from_pretrained(gpt2_vocab_dir, eos_token=new_eos)
    assert fast.eos_token == "[NEW_EOS]" and new_eos in list(fast.added_tokens_decoder.values())
    assert dict(fast.added_tokens_decoder) == dict(expected)
    fast.save_pretrained(tmp_path / "fast2")
    check(fast.added_tokens_decoder, backend.GPT2TokenizerFast, tmp_path / "fast2")
    check(fast.added_tokens_decoder, backend.GPT2Tokenizer, tmp_path / "fast2")


def test_special_token_addition(backend, gpt2_vocab_dir, tmp_path):
    """mirrors TokenizerTesterMixin.test_special_token_addition"""
    cls = backend.GPT2TokenizerFast
    first = cls.from_pretrained(gpt2_vocab_dir)
    first.add_special_tokens({"additional_special_tokens": ["<tok>"]})
    assert first.additional_special_tokens == ["<tok>"]
    first.save_pretrained(tmp_path)
    second = cls.from_pretrained(gpt2_vocab_dir)
    second.add_special_tokens({"additional_special_tokens": ["<tok>"]})
    assert second.additional_special_tokens == ["<tok>"]
    second.add_special_tokens({"additional_special_tokens": ["<tok>", "<other>"]})
    assert second.additional_special_tokens == ["<tok>", "<other>"]
    second.add_special_tokens({"additional_special_tokens": ["<other>", "<another>"]})
    assert second.additional_special_tokens == ["<other>", "<another>"]
    second.add_special_tokens(
        {"additional_special_tokens": ["<tok>"]}, replace_additional_special_tokens=False
    )
    assert second.additional_special_tokens == ["<other>", "<another>", "<tok>"]
