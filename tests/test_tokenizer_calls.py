"""The 4.x call surface beyond `tok(texts)`, against transformers 4.57 call by call.

Text pairs, every truncation strategy, stride and overflow, encode_plus / batch_encode_plus / encode /
prepare_for_model, text_target, the legacy arguments and their warnings, tensors, unknown keyword arguments
and init_kwargs. Each test makes the same call on a gpt2kit tokenizer and on its transformers namesake
(GPT2Tokenizer on transformers.GPT2Tokenizer, GPT2TokenizerFast on transformers.GPT2TokenizerFast, both
loaded from the same vocabulary) and compares keys, key order and values exactly. Where transformers
raises, ours must raise a ValueError/TypeError; where ours deliberately differs, the test says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import warnings
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from gpt2kit import GPT2Tokenizer, GPT2TokenizerFast
from tokenizer_oracle import gpt2_folder, hf_tokenizer

EOT = "<|endoftext|>"
A = "The quick brown fox jumps over the lazy dog"  # 9 tokens
B = "a lazy dog sleeping all day"  # 6 tokens
C = "Hello world"  # 2 tokens
D = " and more words follow here"  # 5 tokens
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "then", "sleeps", "all",
         "day", "long", "🤗", "héllo", "日本"]  # fmt: skip
TRUNCATIONS = [True, "longest_first", "only_first", "only_second", "do_not_truncate", False]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return gpt2_folder(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(params=[GPT2Tokenizer, GPT2TokenizerFast], ids=["slow", "fast"])
def cls(request):
    return request.param


@pytest.fixture
def make(cls, folder):
    """make(**settings) -> (ours, theirs): fresh tokenizers (fresh once-only warnings) with the same settings."""

    def build(**settings):
        return cls.from_pretrained("gpt2", **settings), hf_tokenizer(folder, cls.is_fast, **settings)

    return build


class Raised:
    def __init__(self, error: BaseException):
        self.error = error

    def __repr__(self) -> str:
        return f"Raised({type(self.error).__name__}: {str(self.error)[:200]})"


def plain(value):
    """Tensors and arrays as lists, dicts as (key, value) lists, so that == also compares key order."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return ("tensor", value.tolist())
    if isinstance(value, Mapping):  # ours is a dict, transformers' a UserDict
        return [(k, plain(v)) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def outcome(method, *args, **kwargs):
    try:
        return plain(method(*args, **kwargs))
    except BaseException as e:  # tokenizers' Rust panics are BaseExceptions
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return Raised(e)


def assert_same(ours, theirs, method: str, *args, **kwargs):
    """ours.method(*args, **kwargs) returns what theirs.method(...) returns, or transformers raises and ours
    raises a ValueError/TypeError. Returns ours' result (plain)."""
    got = outcome(getattr(ours, method), *args, **kwargs)
    compare(got, outcome(getattr(theirs, method), *args, **kwargs), (method, args, kwargs))
    return got


def compare(got, want, what):
    if isinstance(want, Raised):
        assert isinstance(got, Raised) and isinstance(got.error, (ValueError, TypeError)), (what, got, want)
    else:
        assert not isinstance(got, Raised), (what, got, want)
        assert got == want, (what, got, want)


@contextlib.contextmanager
def captured():
    """What gpt2kit and transformers log (level, message) and what they warnings.warn (category, message)."""
    records: list[tuple[str, str]] = []

    class Handler(logging.Handler):
        def emit(self, record):
            records.append((record.levelname, record.getMessage()))

    handler = Handler(level=logging.WARNING)
    # tokenizer_oracle quiets the "transformers" logger; these children log the call surface's warnings.
    names = ["gpt2kit", "transformers.tokenization_utils_base", "transformers.tokenization_utils",
             "transformers.tokenization_utils_fast"]  # fmt: skip
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield records
        records += [(w.category.__name__, str(w.message)) for w in caught]
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)


def messages(records, containing):
    return [(kind, m) for kind, m in records if containing in m]


# --- pairs -------------------------------------------------------------------------------------------------

EVERYTHING = dict(return_token_type_ids=True, return_special_tokens_mask=True, return_length=True)
PAIR_CALLS = [
    ("__call__", (A, B), {}),
    ("__call__", (A, B), EVERYTHING),
    ("__call__", (), dict(text=A, text_pair=B, return_token_type_ids=True)),
    ("__call__", ([A, C], [B, D]), EVERYTHING),
    ("__call__", ((A, C), (B, D)), dict(return_token_type_ids=True)),
    ("batch_encode_plus", ([(A, B), (C, D)],), EVERYTHING),
    ("batch_encode_plus", ([(A, B), C, [D, A]],), dict(return_token_type_ids=True)),
    ("encode_plus", (A, B), EVERYTHING),
    ("encode", (A, B), {}),
    ("encode", (A, B), dict(add_special_tokens=False)),
    ("__call__", (A, ""), dict(return_token_type_ids=True)),  # an empty second text
    ("__call__", (["", C], ["", ""]), dict(return_token_type_ids=True)),
    ("__call__", (f"x{EOT}y", f"{EOT} z"), dict(return_special_tokens_mask=True)),  # added tokens in both
    ("__call__", (A, B), dict(add_special_tokens=False, return_special_tokens_mask=True)),
]


@pytest.mark.parametrize("settings", [{}, {"add_bos_token": True}, {"add_prefix_space": True}], ids=str)
def test_pairs_match_transformers(make, settings):
    ours, theirs = make(**settings)
    for method, args, kwargs in PAIR_CALLS:
        got = assert_same(ours, theirs, method, *args, **kwargs)
        assert not isinstance(got, Raised), (method, args, kwargs)
    # The second text really is encoded as the second segment (not ignored, not joined with a space).
    enc = ours(A, B, return_token_type_ids=True)
    n_a = len(ours.encode(A, add_special_tokens=False))
    assert enc["token_type_ids"].count(1) == len(ours.encode(B, add_special_tokens=False))
    assert enc["input_ids"][-1] == ours.encode(B)[-1] and enc["token_type_ids"][:n_a].count(1) == 0


def test_pair_offsets_match_transformers_fast(folder):
    texts, pairs = ["héllo 🤗 world", C], [B, "日本 x"]
    overflow = {"truncation": "only_second", "max_length": 12, "stride": 2, "return_overflowing_tokens": True}
    for settings in ({}, {"add_bos_token": True}, {"add_prefix_space": True}):
        ours = GPT2TokenizerFast.from_pretrained("gpt2", **settings)
        theirs = hf_tokenizer(folder, True, **settings)
        for kwargs in ({}, overflow):
            assert_same(ours, theirs, "__call__", texts, pairs, return_offsets_mapping=True, **kwargs)


# --- truncation, stride, overflow ---------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("bos", [False, True])
def test_pair_truncation_strategies_match_transformers(make, side, bos):
    ours, theirs = make(add_bos_token=bos)
    ours.truncation_side = theirs.truncation_side = side
    for truncation in TRUNCATIONS:
        # 4: too short for some strategies (slow logs an error, fast raises); 11: cuts one text or both.
        for max_length in (4, 11, 40):
            kwargs = dict(truncation=truncation, max_length=max_length, return_token_type_ids=True)
            for a, b in [(A, B), (B, A), (A, A), (C, A), (A, "")]:
                assert_same(ours, theirs, "__call__", a, b, **kwargs)
            assert_same(ours, theirs, "__call__", [A, C], [B, D], return_length=True, **kwargs)
    # The cut is real: longest_first keeps max_length tokens, taking from both texts.
    enc = ours(A, B, truncation=True, max_length=11, return_token_type_ids=True)
    assert len(enc["input_ids"]) == 11 and 0 < enc["token_type_ids"].count(1) < 6


def test_single_text_truncation_matches_transformers(make):
    ours, theirs = make(add_bos_token=True)
    for truncation in TRUNCATIONS:
        for side in ("right", "left"):
            ours.truncation_side = theirs.truncation_side = side
            kwargs = dict(truncation=truncation, max_length=5, return_special_tokens_mask=True)
            assert_same(ours, theirs, "__call__", A, **kwargs)
            assert_same(ours, theirs, "__call__", [A, C], **kwargs)


@pytest.mark.parametrize("side", ["right", "left"])
def test_stride_and_overflow_match_transformers(make, side):
    ours, theirs = make(pad_token=EOT)
    ours.truncation_side = theirs.truncation_side = side
    cases = [
        ((A,), dict(truncation=True, max_length=4, stride=1)),
        (
            (A,),
            dict(
                truncation=True, max_length=4, stride=2, return_length=True, return_special_tokens_mask=True
            ),
        ),
        (([A, C, B],), dict(truncation=True, max_length=3, stride=1, padding=True)),
        (([A, C, B],), dict(truncation=True, max_length=5, stride=0, padding="max_length")),
        ((A, B), dict(truncation="only_first", max_length=8, stride=1, return_token_type_ids=True)),
        ((A, B), dict(truncation="only_second", max_length=13, stride=2, return_token_type_ids=True)),
        (([A, C], [B, D]), dict(truncation="only_second", max_length=12, stride=1, padding=True)),
        (("a b",), dict(truncation=True, max_length=8, stride=1)),  # nothing to cut
    ]
    for args, kwargs in cases:
        got = assert_same(ours, theirs, "__call__", *args, return_overflowing_tokens=True, **kwargs)
        assert not isinstance(got, Raised), (args, kwargs)
    # Each tokenizer returns overflow its namesake's way.
    enc = ours(A, truncation=True, max_length=4, stride=1, return_overflowing_tokens=True)
    ids = ours.encode(A)
    if ours.is_fast:  # every window a row, overlapping by `stride`, traced back to its text
        assert enc["overflow_to_sample_mapping"] == [0, 0, 0] and "overflowing_tokens" not in enc
        assert enc["input_ids"] == (
            [ids[:4], ids[3:7], ids[6:]] if side == "right" else [ids[5:], ids[2:6], ids[:3]]
        )
    else:  # the kept tokens, and the cut ones (with `stride` kept ones next to them)
        assert enc["input_ids"] == (ids[:4] if side == "right" else ids[5:])
        assert enc["overflowing_tokens"] == (ids[3:] if side == "right" else ids[:6])
        assert enc["num_truncated_tokens"] == 5 and "overflow_to_sample_mapping" not in enc


def test_overflow_errors_match_transformers(make):
    ours, theirs = make()
    for kwargs in [
        dict(truncation="longest_first", max_length=6, return_overflowing_tokens=True),  # slow: ValueError
        dict(truncation="only_second", max_length=3),  # second text too short: fast raises, slow logs
        dict(
            truncation="only_first", max_length=8, stride=9, return_overflowing_tokens=True
        ),  # stride too big
    ]:
        assert_same(ours, theirs, "__call__", A, B, **kwargs)
    assert_same(ours, theirs, "__call__", A, truncation="only_second", max_length=3)  # no second text
    if not ours.is_fast:
        with pytest.raises(ValueError, match="only_first"):
            ours(A, B, truncation=True, max_length=6, return_overflowing_tokens=True)
    else:
        with pytest.raises(ValueError, match="second text"):
            ours(A, B, truncation="only_second", max_length=3)


def random_call(rng):
    """One random call: (method, args, kwargs) over texts, pairs, strategies, strides, masks and padding."""

    def text():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8)))

    kwargs = {"truncation": rng.choice([*TRUNCATIONS, None])}
    if rng.random() < 0.8:
        kwargs["max_length"] = rng.randint(1, 12)
    if rng.random() < 0.4:
        kwargs["stride"] = rng.randint(0, 3)
    for flag in (
        "return_overflowing_tokens",
        "return_token_type_ids",
        "return_special_tokens_mask",
        "return_length",
    ):
        if rng.random() < 0.35:
            kwargs[flag] = True
    if rng.random() < 0.15:
        kwargs["return_attention_mask"] = False
    if rng.random() < 0.4:
        kwargs["padding"] = rng.choice([True, "longest", "max_length"])
    if rng.random() < 0.15:
        kwargs["pad_to_multiple_of"] = 4
    if rng.random() < 0.15:
        kwargs["add_special_tokens"] = False
    size = rng.randint(1, 3)
    mode = rng.choice(["one", "pair", "batch", "pairs", "batch_encode_plus"])
    if mode == "batch_encode_plus":
        return "batch_encode_plus", ([rng.choice([text(), (text(), text())]) for _ in range(size)],), kwargs
    if mode == "one":
        args = (text(),)
    elif mode == "pair":
        args = (text(), text())
    elif mode == "batch":
        args = ([text() for _ in range(size)],)
    else:
        args = ([text() for _ in range(size)], [text() for _ in range(size)])
    return "__call__", args, kwargs


def test_random_calls_match_transformers(make):
    """Seeded random combinations of everything above, on both sides."""
    rng = random.Random(0)
    for bos in (False, True):
        ours, theirs = make(add_bos_token=bos, pad_token=EOT)
        for _ in range(300):
            ours.truncation_side = theirs.truncation_side = rng.choice(["right", "left"])
            ours.padding_side = theirs.padding_side = rng.choice(["right", "left"])
            method, args, kwargs = random_call(rng)
            with warnings.catch_warnings():  # the warnings themselves are checked further down
                warnings.simplefilter("ignore")
                assert_same(ours, theirs, method, *args, **kwargs)


# --- the other entry points -----------------------------------------------------------------------------


def test_encode_plus_and_batch_encode_plus_match_transformers(make):
    ours, theirs = make(pad_token=EOT)
    for kwargs in [
        {},
        dict(padding=True, return_tensors="pt"),
        dict(padding="max_length", max_length=12, truncation=True, return_tensors="np"),
        dict(truncation=True, max_length=3, return_attention_mask=False, return_length=True),
        dict(return_token_type_ids=True, return_special_tokens_mask=True),
    ]:
        assert_same(ours, theirs, "encode_plus", A, **kwargs)
        assert_same(ours, theirs, "batch_encode_plus", [A, C, ""], **kwargs)
        assert_same(ours, theirs, "encode", A, **kwargs)
    assert ours.batch_encode_plus([A, C])["input_ids"] == [ours.encode(A), ours.encode(C)]
    with pytest.raises(TypeError, match="batch_encode_plus"):
        ours.encode_plus([A, C])
    with pytest.raises(TypeError, match="encode_plus"):
        ours.batch_encode_plus(A)


def test_prepare_for_model_matches_transformers(make):
    ours, theirs = make(pad_token=EOT)
    ids, pair = ours.encode(A), ours.encode(B)
    cases = [
        {},
        dict(
            truncation="only_first",
            max_length=10,
            return_overflowing_tokens=True,
            stride=2,
            return_token_type_ids=True,
        ),
        dict(truncation="only_second", max_length=12, return_overflowing_tokens=True, return_length=True),
        dict(truncation=True, max_length=8, padding="max_length", return_length=True),
        dict(padding="max_length", max_length=20, return_tensors="pt", prepend_batch_axis=True),
        dict(return_tensors="np"),
        dict(add_special_tokens=False, max_length=5, truncation=True),
    ]
    if not ours.is_fast:  # transformers' fast prepare_for_model asserts on the special tokens mask
        cases.append(dict(return_special_tokens_mask=True, truncation="only_first", max_length=9))
    for kwargs in cases:
        assert_same(ours, theirs, "prepare_for_model", ids, **kwargs)
        assert_same(ours, theirs, "prepare_for_model", ids, pair, **kwargs)
    enc = ours.prepare_for_model(
        ids, pair, truncation="only_first", max_length=10, return_overflowing_tokens=True
    )
    assert enc["input_ids"] == ids[:4] + pair and enc["overflowing_tokens"] == ids[4:]


@pytest.mark.parametrize("bos", [False, True])
def test_special_token_methods_match_transformers(make, bos):
    ours, theirs = make(add_bos_token=bos)
    for name in ("build_inputs_with_special_tokens", "create_token_type_ids_from_sequences"):
        assert_same(ours, theirs, name, [1, 2])
        assert_same(ours, theirs, name, [1, 2], [3])
    for pair in (False, True):
        assert_same(ours, theirs, "num_special_tokens_to_add", pair)
    assert_same(ours, theirs, "get_special_tokens_mask", [50256, 2, 3], already_has_special_tokens=True)
    if (
        not ours.is_fast
    ):  # transformers' fast get_special_tokens_mask only takes already_has_special_tokens=True
        assert_same(ours, theirs, "get_special_tokens_mask", [1, 2], [3])


def test_text_target_matches_transformers(make):
    ours, theirs = make(pad_token=EOT)
    for kwargs in [
        dict(text=A, text_target=B),
        dict(text_target=B),
        dict(text=[A, C], text_pair=[B, D], text_target=[C, A], text_pair_target=[D, B]),
        dict(text=[A, C], text_target=[B, D], padding=True, return_tensors="pt"),
        dict(text=[A, C], text_target=[B, D], truncation=True, max_length=4),
    ]:
        got = assert_same(ours, theirs, "__call__", **kwargs)
        assert ("text" not in kwargs) == ("labels" not in dict(got)), kwargs
    assert ours(A, text_target=B)["labels"] == ours.encode(B)
    with pytest.raises(ValueError, match="text_target"):
        ours()


# --- legacy arguments and warnings --------------------------------------------------------------------------


def test_pad_to_max_length_pads_as_older_transformers_did(make):
    # The fine-tuning example: tokenizer.batch_encode_plus(texts, return_tensors="pt", pad_to_max_length=True).
    # transformers <= 4.4x padded to the longest text (or to max_length, truncating, when given one) with a
    # FutureWarning; 4.57 ignores the argument ("not recognized"), so the unequal rows cannot become a tensor.
    # Ours keeps the older behaviour; its output is compared to 4.57 called with the arguments it stands for.
    ours, theirs = make(pad_token=EOT)
    texts = [A, C, B]
    with captured() as records:
        got = ours.batch_encode_plus(texts, return_tensors="pt", pad_to_max_length=True)
    assert plain(got) == plain(theirs.batch_encode_plus(texts, return_tensors="pt", padding=True))
    assert got["input_ids"].shape == (3, 9)
    assert [kind for kind, _ in messages(records, "`pad_to_max_length` argument is deprecated")] == [
        "FutureWarning"
    ]
    with captured():
        got = ours(texts, max_length=6, pad_to_max_length=True)
    assert plain(got) == plain(theirs(texts, max_length=6, padding="max_length", truncation=True))
    got = ours.encode_plus(C, max_length=6, pad_to_max_length=True, verbose=False)
    assert plain(got) == plain(theirs.encode_plus(C, max_length=6, padding="max_length", truncation=True))
    with captured() as records:
        ours(texts, pad_to_max_length=True, verbose=False)
    assert not messages(records, "pad_to_max_length")
    if not ours.is_fast:  # what 4.57 itself does with it
        with captured() as records:
            assert theirs(C, pad_to_max_length=True)["input_ids"] == ours.encode(C)
        assert messages(records, "{'pad_to_max_length': True} not recognized")


def test_truncation_strategy_is_read_as_older_transformers_did(make):
    # truncation_strategy="only_first": older 4.x's spelling of truncation="only_first" (4.57 raises TypeError).
    ours, theirs = make()
    with captured() as records:
        got = ours(A, B, truncation_strategy="only_first", max_length=10)
    assert plain(got) == plain(theirs(A, B, truncation="only_first", max_length=10))
    assert len(got["input_ids"]) == 10
    assert [kind for kind, _ in messages(records, "`truncation_strategy` argument is deprecated")] == [
        "FutureWarning"
    ]


def test_truncation_and_max_length_warnings_match_transformers(make):
    ours, theirs = make(pad_token=EOT)
    long_text = "hello " * 1100

    def both(*args, **kwargs):
        """Check the call gives the same on both; return what each logged/warned."""
        with captured() as mine:
            got = outcome(ours, *args, **kwargs)
        with captured() as theirs_:
            want = outcome(theirs, *args, **kwargs)
        compare(got, want, (args, kwargs))
        return mine, theirs_

    # max_length without truncation: truncates longest_first, warns once (logger.warning in both).
    for records in both([A, C], max_length=3):
        assert [kind for kind, _ in messages(records, "Truncation was not explicitly activated")] == [
            "WARNING"
        ]
    mine, theirs_ = both(A, B, max_length=5)  # a second time: no second warning
    assert not messages(mine + theirs_, "Truncation was not explicitly activated")
    # truncation=True without max_length: the model's maximum (1024); with one: that length.
    mine, theirs_ = both([long_text, C], truncation=True)
    assert not messages(mine + theirs_, "longer than the specified maximum")
    assert len(ours(long_text, truncation=True)["input_ids"]) == 1024
    both([A, C], truncation=True, max_length=4)
    # no truncation: the "too long for the model" warning, once each.
    for records in both(long_text):
        assert [
            kind for kind, _ in messages(records, "longer than the specified maximum sequence length")
        ] == ["WARNING"]
    # padding=True ignores max_length: a warnings.warn UserWarning in both, each time.
    for records in both([A, C], padding=True, max_length=3):
        assert [kind for kind, _ in messages(records, "`max_length` is ignored when `padding`=`True`")] == [
            "UserWarning"
        ]
    # the slow tokenizer truncating a pair longest_first says overflow is not returned; the fast one doesn't.
    mine, theirs_ = both(A, B, truncation=True, max_length=6)
    found_mine, found_theirs = (
        bool(messages(r, "overflowing tokens are not returned")) for r in (mine, theirs_)
    )
    assert found_mine == found_theirs == (not ours.is_fast)
    # only_second with a second text too short: the slow one logs an error and keeps the texts whole.
    mine, theirs_ = both(A, B, truncation="only_second", max_length=3)
    if not ours.is_fast:
        assert [kind for kind, _ in messages(mine, "We need to remove")] == ["ERROR"]
        assert [kind for kind, _ in messages(theirs_, "We need to remove")] == ["ERROR"]


UNKNOWN_KEYWORD_CALLS = [
    ("__call__", (A,)),
    ("__call__", ([A, C],)),
    ("encode_plus", (A, B)),
    ("batch_encode_plus", ([A],)),
    ("encode", (A,)),
    ("prepare_for_model", ([1, 2],)),
    ("tokenize", (A,)),
]


@pytest.mark.parametrize("method, args", UNKNOWN_KEYWORD_CALLS, ids=[m for m, _ in UNKNOWN_KEYWORD_CALLS])
def test_unknown_call_keywords_warn_and_are_ignored(make, method, args):
    ours, theirs = make()
    with captured() as records:
        got = outcome(getattr(ours, method), *args, truncate=True)
    assert not isinstance(got, Raised), got
    assert got == outcome(getattr(ours, method), *args)  # ignored: the same as without it
    found = messages(records, "not recognized")
    assert len(found) == 1 and found[0][0] == "WARNING" and "{'truncate': True}" in found[0][1]
    assert "did you mean 'truncate' -> 'truncation'" in found[0][1]
    if not ours.is_fast and method != "prepare_for_model":
        # transformers' slow tokenizer says the same and goes on (its fast one raises TypeError instead;
        # its prepare_for_model ignores unknown keywords silently).
        with captured() as records:
            assert outcome(getattr(theirs, method), *args, truncate=True) == got
        assert messages(records, "Keyword arguments {'truncate': True} not recognized.")


def test_is_split_into_words_and_split_special_tokens_at_their_defaults(cls):
    tok = cls.from_pretrained("gpt2")
    assert tok(A, is_split_into_words=False, split_special_tokens=False) == tok(A)
    # (their other values: tests/test_tokenizer_words.py)


# --- tensors -----------------------------------------------------------------------------------------------

TENSOR_CALLS = [
    ("__call__", ([A, C], [B, D]), dict(padding=True, return_token_type_ids=True)),
    ("__call__", (A, B), {}),
    ("encode", (A, B), {}),
    ("batch_encode_plus", ([(A, B), C],), dict(padding="max_length", max_length=20)),
    ("__call__", ([A, C],), dict(truncation=True, max_length=4, padding=True, return_length=True)),
    (
        "__call__",
        (A,),
        dict(truncation=True, max_length=4, stride=1, padding=True, return_overflowing_tokens=True),
    ),
]


@pytest.mark.parametrize("kind", ["pt", "np"])
def test_return_tensors_pt_and_np_match_transformers(make, kind):
    ours, theirs = make(pad_token=EOT)
    for method, args, kwargs in TENSOR_CALLS:
        got = assert_same(ours, theirs, method, *args, return_tensors=kind, **kwargs)
        assert not isinstance(got, Raised), (method, args, kwargs)
    enc = ours([A, C], [B, D], padding=True, return_tensors=kind)
    tensor_type = torch.Tensor if kind == "pt" else np.ndarray
    assert isinstance(enc["input_ids"], tensor_type) and str(enc["input_ids"].dtype) in (
        "torch.int64",
        "int64",
    )


@pytest.mark.parametrize("kind", ["tf", "jax"])
def test_tf_and_jax_are_refused_naming_pt_and_np(cls, kind):
    tok = cls.from_pretrained("gpt2", pad_token=EOT)
    calls = [
        ("__call__", (A,)),
        ("__call__", (A, B)),
        ("encode_plus", (A,)),
        ("batch_encode_plus", ([A],)),
        ("encode", (A,)),
        ("prepare_for_model", ([1, 2],)),
        ("pad", ({"input_ids": [[1], [2, 3]]},)),
    ]
    for method, args in calls:
        with pytest.raises(ValueError, match=f"return_tensors='{kind}' is not supported") as info:
            getattr(tok, method)(*args, return_tensors=kind)
        assert "'pt'" in str(info.value) and "'np'" in str(info.value), method


# --- init_kwargs ---------------------------------------------------------------------------------------------


def test_unknown_init_kwargs_are_kept_saved_and_reloaded(make, folder, tmp_path):
    ours, theirs = make(do_lower_case=True, custom_setting={"a": [1, 2]})
    for tok in (ours, theirs):
        assert tok.init_kwargs["do_lower_case"] is True and tok.init_kwargs["custom_setting"] == {"a": [1, 2]}
        assert tok("Hello")["input_ids"] == [15496]  # kept, not acted on (transformers' GPT-2 ignores it too)
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())
    assert config["do_lower_case"] is True and config["custom_setting"] == {"a": [1, 2]}
    assert "name_or_path" not in config and config["tokenizer_class"] == "GPT2Tokenizer"
    again = type(ours).from_pretrained(tmp_path / "ours")
    assert again.init_kwargs["do_lower_case"] is True and again.init_kwargs["custom_setting"] == {"a": [1, 2]}
    for fast in (False, True):  # transformers reads them back the same way
        assert hf_tokenizer(tmp_path / "ours", fast).init_kwargs["do_lower_case"] is True
    # ... and a folder transformers wrote with such keys keeps them through us.
    theirs.save_pretrained(tmp_path / "theirs")
    type(ours).from_pretrained(tmp_path / "theirs").save_pretrained(tmp_path / "again")
    config = json.loads((tmp_path / "again" / "tokenizer_config.json").read_text())
    assert config["do_lower_case"] is True and config["custom_setting"] == {"a": [1, 2]}
    # The constructor keeps them too; a value JSON cannot hold is refused when saving, by name.
    direct = type(ours)(
        vocab_file=folder / "vocab.json", merges_file=folder / "merges.txt", do_lower_case=True
    )
    assert direct.init_kwargs["do_lower_case"] is True
    direct.init_kwargs["not_json"] = object()
    with pytest.raises(TypeError, match="init_kwargs\\['not_json'\\]"):
        direct.save_pretrained(tmp_path / "bad")


# --- sequence_ids, pairs as tuples, chat templates --------------------------------------------------------


@pytest.mark.parametrize(
    "settings, kwargs",
    [
        ({}, {}),
        ({"add_bos_token": True}, {}),
        ({"pad_token": "<|endoftext|>"}, {"padding": "max_length", "max_length": 24}),
        ({"pad_token": "<|endoftext|>", "padding_side": "left"}, {"padding": True}),
        ({}, {"truncation": "only_second", "max_length": 12, "stride": 2, "return_overflowing_tokens": True}),
    ],
)
def test_sequence_ids_like_transformers(folder, settings, kwargs):
    ours = GPT2TokenizerFast.from_pretrained("gpt2", **settings)
    theirs = hf_tokenizer(folder, True, **settings)
    for args in ((A,), (A, B), ([A, C], [B, C])):
        a, b = ours(*args, **kwargs), theirs(*args, **kwargs)
        rows = len(b["input_ids"]) if isinstance(b["input_ids"][0], list) else 1
        assert [a.sequence_ids(i) for i in range(rows)] == [b.sequence_ids(i) for i in range(rows)], args
    tensors = ours([A, C], [B, C], padding=True, return_tensors="pt") if ours.pad_token else None
    if tensors is not None:
        assert tensors.sequence_ids(1) == theirs([A, C], [B, C], padding=True).sequence_ids(1)


def test_sequence_ids_need_a_fast_tokenizer():
    with pytest.raises(ValueError, match="only available on what a fast tokenizer returns"):
        GPT2Tokenizer.from_pretrained("gpt2")(A).sequence_ids()


def test_batch_of_tuple_pairs_like_transformers(make):
    ours, theirs = make(pad_token="<|endoftext|>")
    pairs = [(A, B), (C, A)]
    for kwargs in ({}, {"padding": True, "return_token_type_ids": True}):
        assert plain(ours(pairs, **kwargs)) == plain(theirs(pairs, **kwargs))
        assert plain(ours(pairs, **kwargs)) == plain(ours.batch_encode_plus(pairs, **kwargs))


def test_init_kwargs_setters_and_lengths_like_transformers(make):
    ours, theirs = make(model_max_length=64, add_bos_token=True)
    assert ours.init_inputs == theirs.init_inputs == ()
    for name in ("unk_token", "bos_token", "eos_token"):
        assert str(ours.init_kwargs[name]) == str(theirs.init_kwargs[name]), name
    assert ours.init_kwargs["add_prefix_space"] is theirs.init_kwargs["add_prefix_space"] is False
    assert ours.max_len_single_sentence == theirs.max_len_single_sentence
    assert ours.max_len_sentences_pair == theirs.max_len_sentences_pair
    for tok in (ours, theirs):
        tok.additional_special_tokens_ids = [tok.eos_token_id]
    assert ours.additional_special_tokens == theirs.additional_special_tokens == ["<|endoftext|>"]
    for tok in (ours, theirs):
        tok.additional_special_tokens = None
    assert ours.additional_special_tokens is None and theirs.additional_special_tokens is None


TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}{{ extra | default('') }}"
)
CHAT = [{"role": "user", "content": " Hello "}, {"role": "assistant", "content": "Hi there"}]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"add_generation_prompt": True},
        {"continue_final_message": True},
        {"extra": "!", "tokenize": True},
        {"tokenize": True, "return_dict": True},
    ],
)
def test_apply_chat_template_like_transformers(make, kwargs):
    ours, theirs = make()
    kwargs = {"tokenize": False, **kwargs}
    for conversation in (CHAT, [CHAT, CHAT[:1]]):
        a = ours.apply_chat_template(conversation, chat_template=TEMPLATE, **kwargs)
        b = theirs.apply_chat_template(conversation, chat_template=TEMPLATE, **kwargs)
        assert plain(a) == plain(b)


def test_chat_templates_round_trip_through_transformers(cls, folder, tmp_path):
    ours = cls.from_pretrained("gpt2")
    ours.chat_template = {"default": TEMPLATE, "short": "{{ messages[0]['content'] }}"}
    ours.save_pretrained(tmp_path / "ours")
    theirs = hf_tokenizer(tmp_path / "ours", cls.is_fast)
    assert theirs.chat_template == ours.chat_template
    theirs.save_pretrained(tmp_path / "theirs")  # chat_template.jinja and additional_chat_templates/
    again = cls.from_pretrained(tmp_path / "theirs")
    assert again.chat_template == ours.chat_template
    assert again.apply_chat_template(CHAT, chat_template="short", tokenize=False) == " Hello "
    with pytest.raises(ValueError, match="tokenizer.chat_template is not set"):
        cls.from_pretrained("gpt2").apply_chat_template(CHAT)
