"""BatchEncoding: what a tokenizer call returns, a dict of input_ids, attention_mask, ... with transformers'
methods around it, among them the alignment methods of fast tokenizers (alignment.py does the work).
"""

from __future__ import annotations

import warnings
from typing import Any

from gpt2kit.tokenizer import alignment


class BatchEncoding(dict):
    """What `tok(...)` returns: a dict of input_ids, attention_mask, ... that also reads as attributes.

    From GPT2TokenizerFast it also knows where each token came from, as transformers' fast tokenizers do:
    `tokens()`, `word_ids()`, `sequence_ids()`, `token_to_chars()`, `char_to_token()`, `word_to_tokens()`...
    and `enc[i]`, the `Encoding` of row i (see alignment.py). Those take the row first when the encoding holds
    a batch (`enc.token_to_chars(row, token)`), and raise on what GPT2Tokenizer returns, as in transformers.

    >>> from gpt2kit import GPT2TokenizerFast
    >>> enc = GPT2TokenizerFast.from_pretrained("gpt2")(["Hello world"])
    >>> enc.input_ids, enc["attention_mask"], enc.word_ids(0)
    ([[15496, 995]], [[1, 1]], [0, 1])
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no key {name!r} (it has {', '.join(self)})") from None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        encodings = self.encodings
        if encodings is not None:  # as transformers: enc[0] is row 0's Encoding
            return encodings[key]
        if isinstance(key, slice):
            return {k: v[key] for k, v in self.items()}
        raise KeyError(
            f"BatchEncoding takes a key name (str), a slice of rows, or (from GPT2TokenizerFast) a row index; got {key!r}"
        )

    def __getstate__(self) -> dict[str, Any]:
        # The alignment is worked out before pickling (and deep copies), so they do not carry the tokenizer.
        return {"_encodings": self.encodings, "_n_sequences": self.__dict__.get("_n_sequences")}

    def __copy__(self) -> BatchEncoding:
        # A shallow copy shares the alignment still to be worked out (torch's default_collate copies one).
        new = type(self)(self)
        new.__dict__.update(self.__dict__)
        return new

    @property
    def data(self) -> dict[str, Any]:
        return dict(self)

    # --- alignment (fast tokenizers only) -------------------------------------------------------------------

    @property
    def encodings(self) -> list[alignment.Encoding] | None:
        """One `Encoding` per row (from GPT2TokenizerFast), or None (from GPT2Tokenizer)."""
        state = self.__dict__
        if "_encodings" not in state:
            build = state.get("_build_encodings")
            state["_encodings"] = None if build is None else build(dict.get(self, "input_ids"))
            state.pop("_build_encodings", None)
        return state["_encodings"]

    @property
    def is_fast(self) -> bool:
        """Whether a fast tokenizer made this (and so whether the alignment methods work)."""
        state = self.__dict__
        return state.get("_encodings") is not None or "_build_encodings" in state

    @property
    def n_sequences(self) -> int | None:
        """How many texts each row holds (2 for pairs, else 1), from a fast tokenizer; else None."""
        return self.__dict__.get("_n_sequences")

    def _rows(self, method: str) -> list[alignment.Encoding]:
        encodings = self.encodings
        if encodings is None:
            raise ValueError(
                f"{method}() is only available on what a fast tokenizer returns (GPT2TokenizerFast), as in "
                "transformers; call GPT2TokenizerFast instead (token_type_ids, return_token_type_ids=True, and "
                "offset_mapping, return_offsets_mapping=True, work with GPT2Tokenizer too)"
            )
        return encodings

    def _row(self, method: str, batch_or_index: int, index: int | None) -> tuple[alignment.Encoding, int]:
        """(row, index) from transformers' two calling forms: (index) for row 0, or (row, index)."""
        rows = self._rows(method)
        return (rows[0], batch_or_index) if index is None else (rows[batch_or_index], index)

    def tokens(self, batch_index: int = 0) -> list[str]:
        """The token strings of row `batch_index` ("Ġworld"; an added token as it was matched in the text)."""
        return self._rows("tokens")[batch_index].tokens

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Per token of row `batch_index`: the index of its word in its text; None for BOS and padding."""
        return self._rows("word_ids")[batch_index].word_ids

    def words(self, batch_index: int = 0) -> list[int | None]:
        """word_ids() under its deprecated name (with transformers' FutureWarning)."""
        rows = self._rows("words")
        warnings.warn(
            "`BatchEncoding.words()` property is deprecated and should be replaced with the identical, but more "
            "self-explanatory `BatchEncoding.word_ids()` property.",
            FutureWarning,
            stacklevel=2,
        )
        return rows[batch_index].word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """Per token of row `batch_index`: 0 for the first text, 1 for the second (text_pair), None for special
        and padding tokens.

        >>> from gpt2kit import GPT2TokenizerFast
        >>> GPT2TokenizerFast.from_pretrained("gpt2")("Hello", " world").sequence_ids()
        [0, 1]
        """
        return self._rows("sequence_ids")[batch_index].sequence_ids

    def token_to_sequence(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        """Which text (0, or 1 for text_pair) a token came from; None for BOS and padding."""
        row, token = self._row("token_to_sequence", batch_or_token_index, token_index)
        return row.token_to_sequence(token)

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        """The index of the word (in its own text) a token came from; None for BOS and padding."""
        row, token = self._row("token_to_word", batch_or_token_index, token_index)
        return row.token_to_word(token)

    def token_to_chars(
        self, batch_or_token_index: int, token_index: int | None = None
    ) -> alignment.CharSpan | None:
        """The characters of its text a token came from, as CharSpan(start, end); None for BOS and padding."""
        row, token = self._row("token_to_chars", batch_or_token_index, token_index)
        span = row.token_to_chars(token)
        return None if span is None else alignment.CharSpan(*span)

    def word_to_tokens(
        self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0
    ) -> alignment.TokenSpan | None:
        """The tokens a word of text `sequence_index` became, as TokenSpan(start, end); None if it has none."""
        row, word = self._row("word_to_tokens", batch_or_word_index, word_index)
        span = row.word_to_tokens(word, sequence_index)
        return None if span is None else alignment.TokenSpan(*span)

    def word_to_chars(
        self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0
    ) -> alignment.CharSpan | None:
        """The characters of a word of text `sequence_index`, as CharSpan(start, end); None if the word has no
        tokens (transformers raises a TypeError there)."""
        row, word = self._row("word_to_chars", batch_or_word_index, word_index)
        span = row.word_to_chars(word, sequence_index)
        return None if span is None else alignment.CharSpan(*span)

    def char_to_token(
        self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0
    ) -> int | None:
        """The index of the token holding a character of text `sequence_index`; None if no token does."""
        row, char = self._row("char_to_token", batch_or_char_index, char_index)
        return row.char_to_token(char, sequence_index)

    def char_to_word(
        self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0
    ) -> int | None:
        """The index of the word holding a character of text `sequence_index`; None if no word does."""
        row, char = self._row("char_to_word", batch_or_char_index, char_index)
        return row.char_to_word(char, sequence_index)

    def to(self, device: Any) -> BatchEncoding:
        """Move every torch tensor to `device` (for return_tensors="pt"); returns self, as transformers does."""
        for key, value in self.items():
            if hasattr(value, "to") and hasattr(value, "device"):
                self[key] = value.to(device)
        return self
