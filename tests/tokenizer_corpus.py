"""A deterministic, varied text corpus for tokenizer parity tests and benchmarks.

Half real text (this Python's standard-library sources: code, docstrings, comments), half generated to hit
every case where byte-level BPE implementations can disagree: scripts of all kinds, emoji sequences,
combining marks, control characters, unassigned and private-use code points, runs of spaces / newlines /
tabs / exotic whitespace, contractions, long repetitions, and `<|endoftext|>` in and around words.
The same Python gives the same corpus on every run (seeded generator, sorted file list).
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

EOT = "<|endoftext|>"

# (start, end) code point ranges to draw "words" from.
SCRIPTS = {
    "latin": (0x41, 0x7A),
    "latin1": (0xC0, 0xFF),
    "latin_ext": (0x100, 0x24F),
    "greek": (0x391, 0x3C9),
    "cyrillic": (0x410, 0x44F),
    "hebrew": (0x5D0, 0x5EA),
    "arabic": (0x621, 0x64A),
    "devanagari": (0x905, 0x939),
    "thai": (0xE01, 0xE2E),
    "georgian": (0x10D0, 0x10FA),
    "hangul": (0xAC00, 0xD7A3),
    "hiragana": (0x3041, 0x3096),
    "katakana": (0x30A1, 0x30FA),
    "cjk": (0x4E00, 0x9FFF),
    "cjk_ext_b": (0x20000, 0x2A6DF),
    "math_alnum": (0x1D400, 0x1D7FF),
    "symbols": (0x2190, 0x23FF),
    "box": (0x2500, 0x257F),
    "emoji": (0x1F300, 0x1FAFF),
    "digits_fullwidth": (0xFF10, 0xFF19),
    "private_use": (0xE000, 0xF8FF),
    "unassigned_planes": (0x30000, 0x3134F),
    "garay": (0x10D40, 0x10D8F),  # Unicode 16
    "cjk_ext_j": (0x323B0, 0x3347F),  # Unicode 17: letters to Python's regex, unassigned to Rust's engines
}
COMBINING = [chr(c) for c in range(0x300, 0x370)] + ["\u20d7", "\u0e31", "\u093f", "\u3099"]
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\xa0", "\u2028", "\u2029", "\u3000", "\u200b",
              "\u2009", "\x85", "\u1680", "\u202f", "\ufeff"]  # fmt: skip
CONTROLS = [chr(c) for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)]]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "’s", "’re", "n't", "''", "'"]
EMOJI_SEQUENCES = [
    "👨‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "🇫🇷", "🇯🇵", "❤️", "🧑🏿‍🚀", "🫠", "🤗", "😀😃😄", "#️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
]  # fmt: skip
WORDS = ["the", "of", "and", "tokenizer", "GPT", "Hello", "world", "naïve", "café", "Zürich", "東京", "москва",
         "1234567890", "3.14159", "1,000,000", "0x1F", "foo_bar", "__init__", "https://example.com/a?b=c&d=e",
         "e-mail", "C++", "...", "!!!", "?!", "—", "–", "«quote»", "“quote”", "(paren)", "[1]", "{x}"]  # fmt: skip


def stdlib_texts(max_bytes: int) -> list[str]:
    """Whole source files of the standard library, in sorted order, up to max_bytes of UTF-8."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    return texts


def _word(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:
        return rng.choice(WORDS)
    if kind < 0.75:
        lo, hi = SCRIPTS[rng.choice(list(SCRIPTS))]
        return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8)))
    if kind < 0.82:
        base = rng.choice("aeiouxyzAEIOU")
        return base + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 6)))
    if kind < 0.88:
        return rng.choice(EMOJI_SEQUENCES)
    if kind < 0.93:
        return rng.choice(WORDS) + rng.choice(CONTRACTIONS)
    if kind < 0.97:
        return "".join(rng.choice(CONTROLS) for _ in range(rng.randint(1, 3)))
    return EOT


def _separator(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.7:
        return " "
    if kind < 0.8:
        return ""
    if kind < 0.95:
        return rng.choice(WHITESPACE)
    return "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(2, 12)))


def generated_text(rng: random.Random) -> str:
    """One synthetic 'line' or paragraph mixing every troublesome case."""
    parts = []
    for _ in range(rng.randint(1, 40)):
        parts.append(_word(rng))
        parts.append(_separator(rng))
    return "".join(parts)


def repetitions(rng: random.Random) -> list[str]:
    """Long repetitive strings: one huge pre-token, huge whitespace runs, repeated emoji."""
    units = ["a", "ab", "=-", "🤗", "!", "0", "\n", " ", "\t", " \n", "ha", "東", "'s", EOT, "\u0301"]
    out = []
    for unit in units:
        n = rng.choice([50, 300, 2000])
        out.append(unit * n)
        out.append("x " + unit * n + " y")
    return out


def eot_cases() -> list[str]:
    """`<|endoftext|>` in every position and near-miss spelling."""
    return [
        EOT, EOT * 3, f"a{EOT}b", f" {EOT} ", f"{EOT}\n", f"\n{EOT}", f"text{EOT}text {EOT} text",
        f"{EOT}{EOT}x", "<|endoftext", "<|endoftext|", "endoftext|>", "<|EndOfText|>", f"<{EOT}>",
        f"x  {EOT}  y", f"\t{EOT}\t", f"'s{EOT}'s", f"🤗{EOT}🤗",
    ]  # fmt: skip


def build_corpus(n_bytes: int = 4_000_000, seed: int = 0) -> list[str]:
    """About n_bytes of UTF-8 text as a list of texts: half stdlib lines and files, half generated."""
    rng = random.Random(seed)
    texts: list[str] = eot_cases() + repetitions(rng)
    half = n_bytes // 2
    for source in stdlib_texts(half):
        # Mostly lines (with their newline), sometimes the whole file as one text.
        if rng.random() < 0.1:
            texts.append(source)
        else:
            texts += source.splitlines(keepends=True)
    size = sum(len(t.encode("utf-8")) for t in texts)
    while size < n_bytes:
        text = generated_text(rng)
        texts.append(text)
        size += len(text.encode("utf-8"))
    rng.shuffle(texts)
    return texts
