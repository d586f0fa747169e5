"""GPT2Tokenizer: the pure-Python tokenizer, bpe.BytePairEncoder behind the shared call surface of base.py."""

from __future__ import annotations

import functools
import os
from typing import Any

from gpt2kit.tokenizer import files
from gpt2kit.tokenizer.base import Sample, TokenizerBase
from gpt2kit.tokenizer.bpe import BytePairEncoder
from gpt2kit.tokenizer.files import AddedToken, Vocabulary
from gpt2kit.tokenizer.options import CallOptions


@functools.lru_cache(maxsize=8)
def python_engine(vocab: Vocabulary, unk_id: int | None) -> BytePairEncoder:
    """One engine (and so one memo) per vocabulary, shared by the tokenizers loaded from it."""
    return BytePairEncoder(vocab.encoder, vocab.merges, unk_id)


class GPT2Tokenizer(TokenizerBase):
    """GPT-2's tokenizer in pure Python (byte-level BPE), with transformers' GPT2Tokenizer API and ids.

    A word is encoded differently at the start of a text and after a space, as GPT-2 was trained:

    >>> tok = GPT2Tokenizer.from_pretrained("gpt2")
    >>> tok("Hello world")["input_ids"], tok(" Hello world")["input_ids"]
    ([15496, 995], [18435, 995])

    GPT2TokenizerFast gives the same ids several times faster; this class is the readable reference.
    """

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        merges_file: str | os.PathLike | None = None,
        errors: str = "replace",
        unk_token: str | AddedToken | None = "<|endoftext|>",
        bos_token: str | AddedToken | None = "<|endoftext|>",
        eos_token: str | AddedToken | None = "<|endoftext|>",
        pad_token: str | AddedToken | None = None,
        add_prefix_space: bool = False,
        add_bos_token: bool = False,
        *,
        tokenizer_file: str | os.PathLike | None = None,
        **kwargs: Any,
    ):
        vocab, settings = _vocabulary_from_files(vocab_file, merges_file, tokenizer_file)
        self._setup(
            vocab,
            **{
                **settings,
                "errors": errors,
                "unk_token": unk_token,
                "bos_token": bos_token,
                "eos_token": eos_token,
                "pad_token": pad_token,
                "add_prefix_space": add_prefix_space,
                "add_bos_token": add_bos_token,
                **kwargs,
            },
        )
        self._engine = self._make_engine()

    def _make_engine(self) -> BytePairEncoder:
        unk = self.unk_token
        return python_engine(self._vocab, None if unk is None else self.convert_tokens_to_ids(unk))

    def _assemble(self, samples: list[Sample], o: CallOptions) -> tuple[dict[str, list], list[int]]:
        """Each sample as transformers' slow tokenizer builds it: prepare_for_model one by one (overflow comes
        back as `overflowing_tokens` and `num_truncated_tokens` per sample), then the batch is padded."""
        notes: set[tuple[str, str]] = set()
        prepared = [
            self._prepare(ids, pair, o, notes, offsets, pair_offsets)
            for ids, pair, offsets, pair_offsets in samples
        ]
        self._log_notes(notes, o.verbose)
        if not prepared:
            return {"input_ids": [], **({"attention_mask": []} if o.return_attention_mask else {})}, []
        # Every sample has the same keys, in the same order.
        return {key: [sample[key] for sample in prepared] for key in prepared[0]}, list(range(len(prepared)))


def _vocabulary_from_files(
    vocab_file: str | os.PathLike | None,
    merges_file: str | os.PathLike | None,
    tokenizer_file: str | os.PathLike | None,
) -> tuple[Vocabulary, dict[str, Any]]:
    """The vocabulary a constructor was pointed at: vocab.json + merges.txt, else tokenizer.json."""
    if vocab_file is not None and merges_file is not None:
        return files.load_vocabulary(vocab_file, merges_file), {}
    if tokenizer_file is not None:
        source = files.read_tokenizer_json(tokenizer_file)
        return source.vocab, {**source.settings, "added_tokens_decoder": source.added_tokens}
    raise ValueError(
        "pass vocab_file and merges_file (or tokenizer_file), or load a folder or a name with "
        "from_pretrained('gpt2')"
    )
