r"""GPT-2's pre-tokenizer regex as the Rust engines apply it: tiktoken's, and `tokenizers`' behind transformers.

Both Rust engines match `\p{L}` and `\p{N}` with Unicode 16 tables today, while Python's `regex` module knows
Unicode 17, so a letter new in Unicode 17 (CJK Extension J, U+323B0...) is a letter to `regex` and just a
character to them, and text holding one is cut into different pieces. Ids never depend on this here (the fast
tokenizer's come from tiktoken itself, the slow one's from `regex`, as in transformers), but the pieces that
gpt2kit cuts with `regex` do: the words of GPT2TokenizerFast's alignment, and the words the BPE trainer
counts. For those, `rust_pattern(text)` is the regex with the characters tiktoken does not take for letters or
digits moved to the "other" class. Which characters those are is asked of tiktoken once per character.

>>> rust_pattern("\U000323b0's").findall("\U000323b0's x") == ["\U000323b0'", "s", " x"]
True
>>> PATTERN_RE.findall("\U000323b0's x") == ["\U000323b0", "'s", " x"]
True
"""

from __future__ import annotations

import functools

import regex
import tiktoken

from gpt2kit.tokenizer.bpe import PATTERN, PATTERN_RE

_LETTER_OR_DIGIT = regex.compile(r"[\p{L}\p{N}]")
_NOT_TO_RUST: dict[str, bool] = {}  # char -> `regex` takes it for a letter or digit and tiktoken does not


@functools.lru_cache(maxsize=1)
def _probe() -> tiktoken.Encoding:
    """tiktoken with GPT-2's regex, the 256 bytes and one merge, "'s": a letter or digit c makes the pieces
    " c" + "'s" (the second one token, 256), any other character the pieces " c'" + "s" (no 256)."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"'s"] = 256
    return tiktoken.Encoding(name="gpt2kit-probe", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens={})


def not_letters_to_rust(text: str) -> frozenset[str]:
    r"""The characters of `text` that Python's `regex` takes for letters or digits and tiktoken does not.

    >>> sorted(not_letters_to_rust("a\u00e9\U000323b0")) == ["\U000323b0"]
    True
    """
    chars = {c for c in text if not c.isascii()}
    new = [c for c in chars if c not in _NOT_TO_RUST]
    for c in new:
        _NOT_TO_RUST[c] = False
    probe = [c for c in new if _LETTER_OR_DIGIT.match(c)]
    if probe:
        ids = _probe().encode_ordinary("".join(f" {c}'s" for c in probe))
        pos = 0
        for c in probe:
            width = len(c.encode("utf-8"))  # " c" is 1 + width byte tokens
            known = pos + width + 1 < len(ids) and ids[pos + width + 1] == 256
            _NOT_TO_RUST[c] = not known
            pos += width + (2 if known else 3)
    return frozenset(c for c in chars if _NOT_TO_RUST[c])


@functools.lru_cache(maxsize=64)
def pattern_without(excluded: frozenset[str]) -> regex.Pattern:
    """GPT-2's pre-tokenizer regex with `excluded` moved from the letters and digits to the other characters."""
    if not excluded:
        return PATTERN_RE
    x = "".join(regex.escape(c) for c in sorted(excluded))
    letter, digit, other = rf"[\p{{L}}--[{x}]]", rf"[\p{{N}}--[{x}]]", rf"[[^\s\p{{L}}\p{{N}}][{x}]]"
    return regex.compile(
        rf"""'s|'t|'re|'ve|'m|'ll|'d| ?{letter}+| ?{digit}+| ?{other}+|\s+(?!\S)|\s+""", regex.V1
    )


def rust_pattern(text: str) -> regex.Pattern:
    """The regex that cuts `text` into the pieces tiktoken (and `tokenizers`) cut it into."""
    return PATTERN_RE if text.isascii() else pattern_without(not_letters_to_rust(text))
