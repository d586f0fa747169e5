"""The call surface shared by GPT2Tokenizer and GPT2TokenizerFast: transformers 4.x's API around an engine.

An engine turns ordinary text into ids (bpe.BytePairEncoder in Python, fast.TiktokenEngine natively).
Everything around it lives here, written once for both: cutting special and added tokens (`<|endoftext|>`)
out of the text (or not: split_special_tokens), add_prefix_space, text pairs, pre-tokenized words
(is_split_into_words), BOS, padding, attention masks, offsets, tensors, decoding, special-token bookkeeping,
from_pretrained / save_pretrained and train_new_from_iterator. What a call's keyword arguments mean (defaults,
legacy spellings, warnings) is options.py; where truncation cuts a text or a pair is truncation.py; what a call
returns is batch_encoding.py, and where its tokens came from (word_ids, offsets...) alignment.py, worked out
here on the first question; the BPE trainer is bpe_trainer.py.

Where transformers' own slow and fast GPT-2 tokenizers behave differently, each of ours follows its
namesake: the class attributes and comments marked "slow/fast difference" below say where, and each
class's `_assemble` (slow.py, fast.py) truncates, adds special tokens and returns overflow its namesake's way.
"""

from __future__ import annotations

import bisect
import codecs
import functools
import gc
import inspect
import itertools
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from gpt2kit.tokenizer import alignment, bpe, bpe_trainer, chat, files, options, truncation
from gpt2kit.tokenizer.batch_encoding import BatchEncoding
from gpt2kit.tokenizer.bpe import bytes_to_unicode
from gpt2kit.tokenizer.files import SPECIAL_TOKEN_NAMES, AddedToken, Vocabulary
from gpt2kit.tokenizer.options import CallOptions

logger = logging.getLogger(__name__)

Span = tuple[int, int]  # (start, end) characters of a token in its text
# One text to encode, tokenized: (ids, second text's ids or None, offsets or None, second text's offsets or None).
Sample = tuple[list[int], list[int] | None, list[Span] | None, list[Span] | None]


class _NeedsPrefixSpace(ValueError, AssertionError):
    """Pre-tokenized input to GPT2TokenizerFast without add_prefix_space: a ValueError, and the AssertionError
    transformers raises there (its check is an assert)."""


class _NotAList(TypeError, AssertionError):
    """A single token where add_special_tokens wants a list: a TypeError, and the AssertionError transformers
    raises there (its check is an assert), so code written against either catches it."""


# The key under which a fast tokenizer's _assemble hands over each row's alignment.RowPlan.
ROW_PLANS = "_row_plans"


@functools.lru_cache(maxsize=8)
def vocab_tables(vocab: Vocabulary) -> tuple[dict[int, str], dict[int, bytes]]:
    """id -> token string and id -> bytes for one vocabulary, built once and shared."""
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    id_to_token = {i: t for t, i in vocab.encoder.items()}
    id_to_bytes = {}
    for i, token in id_to_token.items():
        try:
            id_to_bytes[i] = bytes(byte_decoder[c] for c in token)
        except KeyError:  # not spelled in byte characters: the token's own UTF-8, as `tokenizers` decodes it
            id_to_bytes[i] = token.encode("utf-8")
    return id_to_token, id_to_bytes


def _gc_paused(method: Any) -> Any:
    """Run `method` with the cyclic garbage collector paused.

    Encoding a batch builds a few lists per text, all of them kept; the collector passes that those
    allocations trigger find nothing to free and cost up to a third of the time on short lines.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():
            return method(*args, **kwargs)
        gc.disable()
        try:
            return method(*args, **kwargs)
        finally:
            gc.enable()

    return wrapper


def _utf8_len(ch: str) -> int:
    o = ord(ch)
    return 1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4


class _SpecialToken:
    """Descriptor for `bos_token`, `pad_token`, ...: a str or None, settable, checked against the vocabulary."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, tok: TokenizerBase | None, owner: type | None = None) -> Any:
        if tok is None:
            return self
        return tok._special[self.name]

    def __set__(self, tok: TokenizerBase, value: str | AddedToken | None) -> None:
        if value is None:
            tok._special[self.name] = None
            return
        content = AddedToken.coerce(value, special=True).content
        if content not in tok._added_ids and content not in tok._vocab.encoder:
            raise ValueError(
                f"{content!r} is not in the vocabulary, so it cannot be the {self.name}: use an existing token "
                f"(e.g. tok.{self.name} = tok.eos_token) or add it with "
                f"tok.add_special_tokens({{{self.name!r}: {content!r}}}) and resize the model's embeddings"
            )
        tok._special[self.name] = content


class _SpecialTokenId:
    """Descriptor for `bos_token_id`, `pad_token_id`, ...: the id of the matching special token, settable."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.token_name = name[: -len("_id")]

    def __get__(self, tok: TokenizerBase | None, owner: type | None = None) -> Any:
        if tok is None:
            return self
        token = tok._special[self.token_name]
        return None if token is None else tok.convert_tokens_to_ids(token)

    def __set__(self, tok: TokenizerBase, value: int | None) -> None:
        setattr(tok, self.token_name, None if value is None else tok.convert_ids_to_tokens(value))


class TokenizerBase:
    """transformers' tokenizer API over a byte-level BPE engine; see GPT2Tokenizer and GPT2TokenizerFast."""

    model_input_names = ["input_ids", "attention_mask"]
    is_fast = False
    # slow/fast difference 1: where add_prefix_space puts its space. transformers' slow tokenizer prepends
    # one to the whole text ("" -> [220]); the fast one (tokenizers' ByteLevel) to every stretch of text
    # between added tokens that does not already start with a space ("" -> []).
    _prefix_space_per_segment = False
    # slow/fast difference 2: transformers' slow decode() writes added (non-special) tokens separated by
    # spaces ("a foo_bar b" -> "a  foo_bar  b"), as its spaces_between_special_tokens=True default says.
    _spaces_between_added_tokens = True
    # slow/fast difference 3: return_length. Slow: unpadded lengths for a batch, an int for one text;
    # fast: lengths after padding, always a list.
    _length_after_padding = False
    # slow/fast difference 4: which characters lstrip/rstrip added tokens swallow. Slow: str.strip();
    # fast: Unicode White_Space, which excludes the separators U+001C..U+001F that str.strip() removes.
    _strip_chars: str | None = None
    # slow/fast difference 7: split_special_tokens=True encodes special tokens as text. transformers' slow
    # tokenizer then matches no added token at all; the fast one (tokenizers' encode_special_tokens) still
    # matches the added tokens that are not special.
    _split_special_keeps_added = False

    bos_token = _SpecialToken()
    eos_token = _SpecialToken()
    unk_token = _SpecialToken()
    sep_token = _SpecialToken()
    pad_token = _SpecialToken()
    cls_token = _SpecialToken()
    mask_token = _SpecialToken()
    bos_token_id = _SpecialTokenId()
    eos_token_id = _SpecialTokenId()
    unk_token_id = _SpecialTokenId()
    sep_token_id = _SpecialTokenId()
    pad_token_id = _SpecialTokenId()
    cls_token_id = _SpecialTokenId()
    mask_token_id = _SpecialTokenId()

    # --- construction -------------------------------------------------------------------------------------

    def _setup(self, vocab: Vocabulary, **settings: Any) -> None:
        # As in transformers, every keyword the tokenizer was made with is kept in init_kwargs, the ones it
        # has no use for (do_lower_case=True...) included: save_pretrained writes those back to
        # tokenizer_config.json, so a folder keeps what other tools put there.
        self.init_kwargs: dict[str, Any] = {k: v for k, v in settings.items() if k != "added_tokens_decoder"}
        self.init_inputs: tuple = ()  # transformers' positional constructor arguments; ours are all keywords
        self._configure(vocab, **settings)

    def _configure(
        self,
        vocab: Vocabulary,
        *,
        errors: str = "replace",
        unk_token: Any = "<|endoftext|>",
        bos_token: Any = "<|endoftext|>",
        eos_token: Any = "<|endoftext|>",
        pad_token: Any = None,
        sep_token: Any = None,
        cls_token: Any = None,
        mask_token: Any = None,
        additional_special_tokens: Sequence[Any] | None = None,
        add_prefix_space: bool = False,
        add_bos_token: bool = False,
        model_max_length: int = files.VERY_LARGE_INTEGER,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        added_tokens_decoder: dict[int, Any] | None = None,
        name_or_path: str = "",
        chat_template: str | dict[str, str] | list | None = None,
        split_special_tokens: bool = False,
        **unknown: Any,
    ) -> None:
        if unknown:
            logger.info(
                "%s: keeping unused keyword argument(s) %s in init_kwargs", type(self).__name__, unknown
            )
        self._vocab = vocab
        self._id_to_token, self._id_to_bytes = vocab_tables(vocab)
        self._max_vocab_id = max(vocab.encoder.values(), default=-1)
        self._added: dict[int, AddedToken] = {}  # id -> token: transformers' added_tokens_decoder
        self._added_ids: dict[str, int] = {}  # content -> id
        self._added_re: re.Pattern | None = None
        self._added_re_kept: re.Pattern | None = None  # the tokens split_special_tokens=True still matches
        self._added_re_stale = True
        # transformers' name for the record of warnings already given once; `tok.deprecation_warnings = {}`
        # re-arms them, as in transformers.
        self.deprecation_warnings: dict[str, bool] = {}
        self._special: dict[str, str | None] = dict.fromkeys(SPECIAL_TOKEN_NAMES)
        self._additional_special: list[str] = []
        self._additional_unset = False  # `tok.additional_special_tokens = None` was the last word

        try:
            codecs.lookup_error(errors)
        except (LookupError, TypeError):
            raise ValueError(
                f"errors={errors!r} is not a codec error handler; use 'replace', 'strict' or 'ignore'"
            ) from None
        self.errors = errors
        self.add_prefix_space = bool(add_prefix_space)
        self.add_bos_token = bool(add_bos_token)
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        # The default of every call's split_special_tokens: encode special tokens in the text as plain text.
        self.split_special_tokens = bool(split_special_tokens)
        self.name_or_path = str(name_or_path)
        self.chat_template = chat.from_config(chat_template)

        # As transformers does: tokens the files list come first, then every special token is registered as
        # an added token (so that it is cut out of text), taking a new id if the vocabulary lacks it.
        for idx, token in sorted((added_tokens_decoder or {}).items()):
            token = AddedToken.coerce(token, special=False)
            self._added[int(idx)] = token
            self._added_ids[token.content] = int(idx)
        specials = dict(
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            sep_token=sep_token,
            cls_token=cls_token,
            mask_token=mask_token,
        )
        for name, value in specials.items():
            if value is not None:
                token = AddedToken.coerce(value, special=True, normalized=True)
                self._register(token, replace=False)
                self._special[name] = token.content
        for value in additional_special_tokens or []:
            token = AddedToken.coerce(value, special=True, normalized=False)
            self._register(token, replace=False)
            if token.content not in self._additional_special:
                self._additional_special.append(token.content)

    def _make_engine(self) -> Any:
        raise NotImplementedError

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        local_files_only: bool = False,
        revision: str | None = None,
        **kwargs: Any,
    ) -> TokenizerBase:
        """Load from a GPT-2 name (bundled vocabulary, offline), a folder, or the Hugging Face cache.

        Keyword arguments override what the folder's files say (add_prefix_space=True, pad_token=...).

        >>> from gpt2kit import GPT2TokenizerFast
        >>> GPT2TokenizerFast.from_pretrained("gpt2")("Hello world")["input_ids"]
        [15496, 995]
        """
        for ignored in ("token", "use_auth_token", "trust_remote_code", "force_download", "resume_download",
                        "proxies", "use_fast", "_from_auto", "cache_dir"):  # fmt: skip
            if ignored in kwargs:
                logger.debug("from_pretrained: ignoring %s=%r", ignored, kwargs.pop(ignored))
        folder, defaults = files.resolve(
            pretrained_model_name_or_path, local_files_only=local_files_only, revision=revision
        )
        source = files.read_folder(folder)
        settings = {**defaults, **source.settings, **kwargs}
        settings.setdefault("name_or_path", str(pretrained_model_name_or_path))
        added = {**source.added_tokens, **(settings.pop("added_tokens_decoder", None) or {})}
        tok = cls.__new__(cls)
        tok._setup(source.vocab, added_tokens_decoder=added, **settings)
        # As transformers: init_kwargs holds every constructor argument, defaults and file paths included.
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name in _FILE_KEYS:
                path = folder / _FILE_KEYS[name]
                tok.init_kwargs.setdefault(name, str(path) if path.is_file() else None)
            elif param.default is not inspect.Parameter.empty:
                tok.init_kwargs.setdefault(name, param.default)
        tok._engine = tok._make_engine()
        return tok

    def save_pretrained(
        self, save_directory: str | os.PathLike, legacy_format: bool | None = None, **kwargs: Any
    ) -> tuple[str, ...]:
        """Write the tokenizer's files, a folder transformers loads; returns their paths.

        The files are transformers 4.57's: tokenizer_config.json and special_tokens_map.json always, then
        GPT2Tokenizer writes vocab.json + merges.txt (and added_tokens.json for tokens beyond vocab.json), and
        GPT2TokenizerFast those and tokenizer.json; with legacy_format=True only the former, with
        legacy_format=False only tokenizer.json (fast only, as in transformers).

        >>> import tempfile
        >>> from gpt2kit import GPT2Tokenizer, GPT2TokenizerFast
        >>> [p.rsplit("/", 1)[1] for p in GPT2Tokenizer.from_pretrained("gpt2").save_pretrained(tempfile.mkdtemp())]
        ['tokenizer_config.json', 'special_tokens_map.json', 'vocab.json', 'merges.txt']
        >>> fast = GPT2TokenizerFast.from_pretrained("gpt2")
        >>> [p.rsplit("/", 1)[1] for p in fast.save_pretrained(tempfile.mkdtemp(), legacy_format=False)]
        ['tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.json']
        """
        for ignored in ("push_to_hub", "safe_serialization"):
            kwargs.pop(ignored, None)
        if kwargs:
            raise TypeError(
                f"save_pretrained got unexpected keyword argument(s) {', '.join(map(repr, kwargs))}"
            )
        if legacy_format is False and not self.is_fast:
            raise ValueError(
                f"legacy_format=False (tokenizer.json alone) needs a fast tokenizer, as in transformers: {type(self).__name__} "
                "writes vocab.json and merges.txt; leave legacy_format unset, or save with GPT2TokenizerFast"
            )
        config: dict[str, Any] = {
            **self._unused_settings(),
            "add_bos_token": self.add_bos_token,
            "add_prefix_space": self.add_prefix_space,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "errors": self.errors,
            "extra_special_tokens": {},
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "tokenizer_class": "GPT2Tokenizer",  # transformers maps it to GPT2TokenizerFast by itself
            **{
                name: value
                for name, value in self._special.items()
                if value is not None or name == "pad_token"
            },
        }
        special_map: dict[str, Any] = {}
        for name, value in self._special.items():
            if value is not None:
                special_map[name] = self._special_token_dict(value)
        if self.chat_template is not None:  # the config's form, which transformers 4.57 still reads
            config["chat_template"] = chat.to_config(self.chat_template)
        if self._additional_special:
            config["additional_special_tokens"] = list(self._additional_special)
            special_map["additional_special_tokens"] = [
                self._special_token_dict(t) for t in self._additional_special
            ]
        if self.split_special_tokens or "split_special_tokens" in self.init_kwargs:
            config["split_special_tokens"] = self.split_special_tokens
        tokenizer_json = None
        if self.is_fast and legacy_format is not True:
            bos = self.bos_token if self.add_bos_token else None
            tokenizer_json = files.tokenizer_json(
                self._vocab,
                self._added,
                add_prefix_space=self.add_prefix_space,
                bos_token=bos,
                bos_id=None if bos is None else self.bos_token_id,
            )
        return files.write_folder(
            save_directory,
            self._vocab,
            self._added,
            config,
            special_map,
            tokenizer_json,
            vocab_files=legacy_format is not False,
        )

    def _unused_settings(self) -> dict[str, Any]:
        """The init_kwargs this tokenizer has no use for, as tokenizer_config.json entries."""
        out = {}
        for key, value in self.init_kwargs.items():
            if key in _CONFIGURE_KEYS or key in files.BOOKKEEPING_KEYS:  # the file keys among them
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"init_kwargs[{key!r}] = {value!r:.80} cannot be written to tokenizer_config.json (it is not "
                    f"JSON); delete it (del tokenizer.init_kwargs[{key!r}]) or make it a str/number/list/dict"
                ) from None
            out[key] = value
        return out

    def _special_token_dict(self, content: str) -> dict[str, Any]:
        token = self._added.get(self._added_ids.get(content, -1)) or AddedToken(content, special=True)
        d = token.to_dict()
        del d["special"]
        return d

    # --- training a new vocabulary ---------------------------------------------------------------------------

    def train_new_from_iterator(
        self,
        text_iterator: Iterable[str | list[str]],
        vocab_size: int,
        length: int | None = None,
        new_special_tokens: Sequence[str | AddedToken] | None = None,
        special_tokens_map: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> TokenizerBase:
        """A tokenizer of this class and settings with a byte-level BPE vocabulary learned from `text_iterator`
        (texts, or lists of texts), as transformers' train_new_from_iterator learns it (bpe_trainer.py).

        The new vocabulary holds this tokenizer's special tokens first (renamed by `special_tokens_map`, old
        name -> new), then `new_special_tokens`, then the 256 byte tokens, then the merges, `vocab_size` tokens
        in all at most. Added tokens that are not special are not carried over. Keyword arguments go to the
        trainer: min_frequency, limit_alphabet, initial_alphabet (characters), max_token_length, show_progress.
        (transformers leaves additional_special_tokens under their old names; they are renamed here too.)

        >>> from gpt2kit import GPT2TokenizerFast
        >>> old = GPT2TokenizerFast.from_pretrained("gpt2")
        >>> new = old.train_new_from_iterator(["low lower lowest"] * 10, vocab_size=262, show_progress=False)
        >>> len(new), new.tokenize(" lowest"), new.eos_token_id
        (262, ['Ġlowe', 'st'], 0)
        """
        for name in ("continuing_subword_prefix", "end_of_word_suffix"):
            if kwargs.get(name):
                raise ValueError(
                    f"{name} is not supported: GPT-2's byte-level BPE marks no subwords; leave it unset"
                )
        trainer_keys = {
            "min_frequency",
            "limit_alphabet",
            "initial_alphabet",
            "max_token_length",
            "show_progress",
        }
        unknown = sorted(kwargs.keys() - trainer_keys - {"continuing_subword_prefix", "end_of_word_suffix"})
        if unknown:
            raise TypeError(
                f"train_new_from_iterator got unexpected keyword argument(s) {', '.join(unknown)}; the trainer takes "
                f"{', '.join(sorted(trainer_keys))}"
            )
        options_ = {k: v for k, v in kwargs.items() if k in trainer_keys}
        mapping = dict(special_tokens_map or {})

        def renamed(content: str) -> str:
            return mapping.get(content, content)

        specials = [
            replace(t, content=renamed(t.content)) for _, t in sorted(self._added.items()) if t.special
        ]
        specials += [AddedToken.coerce(t, special=True) for t in new_special_tokens or []]
        words = bpe_trainer.count_words(bpe_trainer.iterate_texts(text_iterator), self.add_prefix_space)
        alphabet = [*bytes_to_unicode().values(), *options_.pop("initial_alphabet", [])]
        encoder, merges = bpe_trainer.train_bpe(
            words, vocab_size, [t.content for t in specials], initial_alphabet=alphabet, **options_
        )
        added: dict[int, AddedToken] = {}
        for token in specials:
            added.setdefault(encoder[token.content], token)

        settings = {k: v for k, v in self.init_kwargs.items() if k not in _FILE_KEYS}
        for name, content in self._special.items():
            settings[name] = None if content is None else renamed(content)
        extra = [renamed(t) for t in self._additional_special]
        extra += [AddedToken.coerce(t, special=True).content for t in new_special_tokens or []]
        if extra:
            settings["additional_special_tokens"] = list(dict.fromkeys(extra))
        tok = type(self).__new__(type(self))
        tok._setup(Vocabulary(encoder, merges), added_tokens_decoder=added, **settings)
        tok._engine = tok._make_engine()
        return tok

    # --- settings with checks -----------------------------------------------------------------------------

    @property
    def padding_side(self) -> str:
        return self._padding_side

    @padding_side.setter
    def padding_side(self, value: str) -> None:
        if value not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {value!r}")
        self._padding_side = value

    @property
    def truncation_side(self) -> str:
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, value: str) -> None:
        if value not in ("right", "left"):
            raise ValueError(f"truncation_side must be 'right' or 'left', got {value!r}")
        self._truncation_side = value

    @property
    def model_max_length(self) -> int:
        return self._model_max_length

    @model_max_length.setter
    def model_max_length(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model_max_length must be a positive int, got {value!r}")
        self._model_max_length = value

    # --- vocabulary and special tokens --------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (vocab.json), without added tokens; len(tok) counts those too."""
        return len(self._vocab.encoder)

    def __len__(self) -> int:
        return len(self._vocab.encoder) + sum(1 for t in self._added_ids if t not in self._vocab.encoder)

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id, added tokens included."""
        return {**self._vocab.encoder, **self._added_ids}

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return dict(sorted(self._added.items()))

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return dict(self._added_ids)

    @property
    def additional_special_tokens(self) -> list[str] | None:
        if self._additional_unset and not self._additional_special:
            return None
        return list(self._additional_special)

    @additional_special_tokens.setter
    def additional_special_tokens(self, tokens: Sequence[str | AddedToken] | None) -> None:
        if tokens is None:  # as transformers: unset, and read back as None until set again
            self._additional_special = []
            self._additional_unset = True
            return
        self.add_special_tokens({"additional_special_tokens": list(tokens)})

    @property
    def additional_special_tokens_ids(self) -> list[int]:
        return [self._added_ids[t] for t in self._additional_special]

    @additional_special_tokens_ids.setter
    def additional_special_tokens_ids(self, ids: Sequence[int] | None) -> None:
        self.additional_special_tokens = None if ids is None else [self.convert_ids_to_tokens(i) for i in ids]

    @property
    def max_len_single_sentence(self) -> int:
        """The longest text that fits model_max_length once the special tokens are added."""
        return self.model_max_length - self.num_special_tokens_to_add(pair=False)

    @property
    def max_len_sentences_pair(self) -> int:
        """The longest pair of texts (together) that fits model_max_length with the special tokens."""
        return self.model_max_length - self.num_special_tokens_to_add(pair=True)

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self._special.items() if v is not None}
        if self._additional_special:
            out["additional_special_tokens"] = list(self._additional_special)
        return out

    @property
    def all_special_tokens(self) -> list[str]:
        tokens = [v for v in self._special.values() if v is not None] + self._additional_special
        return list(dict.fromkeys(tokens))

    @property
    def all_special_tokens_extended(self) -> list[AddedToken]:
        """all_special_tokens as AddedToken objects, with their lstrip/rstrip/normalized flags."""
        return [
            self._added.get(self._added_ids.get(t, -1)) or AddedToken(t, special=True)
            for t in self.all_special_tokens
        ]

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def _register(self, token: AddedToken, replace: bool) -> bool:
        """Make `token` an added token (cut out of text before BPE); True if it took a new id.

        A token that is already added keeps its id, and its flags too unless `replace` (transformers
        replaces them when given an AddedToken, not when given a str).
        """
        idx = self._added_ids.get(token.content)
        if idx is not None:
            if replace:
                self._added[idx] = token
                self._added_re_stale = True
            return False
        idx = self._vocab.encoder.get(token.content)
        is_new = idx is None
        if is_new:
            idx = max(self._max_vocab_id, max(self._added, default=-1)) + 1
        self._added[idx] = token
        self._added_ids[token.content] = idx
        self._added_re_stale = True
        return is_new

    def add_tokens(
        self, new_tokens: str | AddedToken | Sequence[str | AddedToken], special_tokens: bool = False
    ) -> int:
        """Add tokens that are matched whole in text; returns how many new ids were made (resize the model).

        >>> from gpt2kit import GPT2TokenizerFast
        >>> tok = GPT2TokenizerFast.from_pretrained("gpt2")
        >>> tok.add_tokens(["<tool>"]), tok("a<tool>b").input_ids
        (1, [64, 50257, 65])
        """
        if isinstance(new_tokens, (str, AddedToken)) or hasattr(new_tokens, "content"):
            new_tokens = [new_tokens]
        added = 0
        for value in new_tokens:
            if value == "" or getattr(value, "content", None) == "":
                continue
            token = AddedToken.coerce(value, special=special_tokens)
            if token.single_word:
                raise ValueError(
                    f"single_word=True ({token.content!r}) is not supported; match the token anywhere"
                )
            added += self._register(token, replace=not isinstance(value, str))
            if token.special and token.content not in self.all_special_tokens:
                self._additional_special.append(token.content)  # as transformers' slow tokenizer records it
        return added

    def add_special_tokens(
        self, special_tokens_dict: dict[str, Any], replace_additional_special_tokens: bool = True
    ) -> int:
        """Set special tokens ({"pad_token": "<pad>"}), adding the ones the vocabulary lacks; returns how many.

        >>> from gpt2kit import GPT2TokenizerFast
        >>> tok = GPT2TokenizerFast.from_pretrained("gpt2")
        >>> tok.add_special_tokens({"pad_token": "<pad>"}), tok.pad_token_id
        (1, 50257)
        """
        if not isinstance(special_tokens_dict, dict):
            raise TypeError(
                f"add_special_tokens takes a dict such as {{'pad_token': '<pad>'}}, got {special_tokens_dict!r}"
            )
        added = 0
        for key, value in special_tokens_dict.items():
            if key == "additional_special_tokens":
                if isinstance(value, (str, AddedToken)):
                    raise _NotAList(
                        f"additional_special_tokens must be a list of tokens, not a single token: pass [{value!r}]"
                    )
                tokens = [AddedToken.coerce(v, special=True, normalized=False) for v in value]
                added += sum(self._register(t, replace=not isinstance(v, str)) for t, v in zip(tokens, value))
                contents = [t.content for t in tokens]
                kept = [] if replace_additional_special_tokens else self._additional_special
                self._additional_special = list(dict.fromkeys(kept + contents))
                self._additional_unset = False
            elif key in SPECIAL_TOKEN_NAMES:
                if value is None:
                    self._special[key] = None
                    continue
                token = AddedToken.coerce(value, special=True, normalized=False)
                added += self._register(token, replace=not isinstance(value, str))
                self._special[key] = token.content
            else:
                raise ValueError(
                    f"{key!r} is not a special token name; use one of {', '.join(SPECIAL_TOKEN_NAMES)}, "
                    "additional_special_tokens"
                )
        return added

    # The four methods below are transformers' slow GPT2Tokenizer's; GPT2TokenizerFast overrides the ones
    # where transformers' fast tokenizer differs (see fast.py).

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many special tokens encoding adds to one text (or a pair): the BOS of add_bos_token."""
        return len(self.build_inputs_with_special_tokens([], [] if pair else None))

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """Ids with the special tokens added: BOS before each text when add_bos_token, else the ids as they are."""
        bos = [self.bos_token_id] if self.add_bos_token else []
        return bos + token_ids_0 if token_ids_1 is None else bos + token_ids_0 + bos + token_ids_1

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 for each special token build_inputs_with_special_tokens adds, 0 for the text's own tokens; with
        already_has_special_tokens, 1 for every special token id in token_ids_0."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError(
                    "with already_has_special_tokens=True, pass one sequence (the built one), not token_ids_1"
                )
            special = set(self.all_special_ids)
            return [1 if i in special else 0 for i in token_ids_0]
        second = [] if token_ids_1 is None else token_ids_1
        if not self.add_bos_token:
            return [0] * (len(token_ids_0) + len(second))
        mask = [1] + [0] * len(token_ids_0)
        return mask if token_ids_1 is None else mask + [1] + [0] * len(second)

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """0 for the first text, 1 for the second, as transformers builds them: it counts a CLS and a SEP
        token when those are set, and not the BOS of add_bos_token (so with BOS the list comes out shorter
        than the ids, in transformers too)."""
        cls_len = int(self.cls_token_id is not None)
        sep_len = int(self.sep_token_id is not None)
        first = [0] * (cls_len + len(token_ids_0) + sep_len)
        return first if token_ids_1 is None else first + [1] * (len(token_ids_1) + sep_len)

    # --- text -> ids --------------------------------------------------------------------------------------

    def _added_pattern(self, split_special: bool = False) -> re.Pattern | None:
        """One regex for the added tokens to cut out of text, longest first, so the leftmost-longest token wins
        (as in both of transformers' tokenizers). With split_special, the ones split_special_tokens leaves."""
        if self._added_re_stale:
            contents = sorted(self._added_ids, key=len, reverse=True)
            kept = [t for t in contents if not self._added[self._added_ids[t]].special]
            self._added_re = re.compile("|".join(map(re.escape, contents))) if contents else None
            self._added_re_kept = re.compile("|".join(map(re.escape, kept))) if kept else None
            self._added_re_stale = False
        if not split_special:
            return self._added_re
        return self._added_re_kept if self._split_special_keeps_added else None

    def _split(self, text: str, pattern: re.Pattern | None) -> list[tuple[int | None, int, int]]:
        """Cut text into (None, start, end) stretches of ordinary text and (id, start, end) added tokens, the
        ones `pattern` matches (see _added_pattern).

        An added token with lstrip/rstrip takes the whitespace next to it into its own span.
        """
        parts: list[tuple[int | None, int, int]] = []
        pos = 0
        while pattern is not None:
            m = pattern.search(text, pos)
            if m is None:
                break
            idx = self._added_ids[m.group()]
            token = self._added[idx]
            start, end = m.span()
            if token.lstrip:
                start = pos + len(text[pos:start].rstrip(self._strip_chars))
            if token.rstrip:
                end = len(text) - len(text[end:].lstrip(self._strip_chars))
            if start > pos:
                parts.append((None, pos, start))
            parts.append((idx, start, end))
            pos = end
        if pos < len(text) or not parts:
            parts.append((None, pos, len(text)))
        return parts

    def _encode_texts(
        self,
        texts: list[str],
        add_prefix_space: bool,
        with_offsets: bool = False,
        split_special: bool = False,
    ) -> tuple[list[list[int]], list[list[tuple[int, int]]] | None]:
        """Ids (no BOS) of every text, and their character offsets when asked."""
        joined = "\n".join(texts)
        if not joined.isascii():
            _check_utf8(texts, joined)
        pattern = self._added_pattern(split_special)
        if not with_offsets and (pattern is None or pattern.search(joined) is None):
            # The common case: no added token anywhere, one engine call for the whole batch.
            if add_prefix_space:
                texts = [
                    " " + t if not self._prefix_space_per_segment or (t and t[0] != " ") else t for t in texts
                ]
            return self._engine.encode_ordinary_batch(texts), None

        # General case: plan each text as ordinary stretches and added tokens, encode all stretches in one
        # engine call, then stitch.
        plans = self._plan_texts(texts, add_prefix_space, pattern)
        encoded = self._encode_plans(plans)
        all_ids, all_offsets = [], []
        for text, shift, plan in plans:
            ids: list[int] = []
            offsets: list[tuple[int, int]] = []
            n = len(text) - shift
            for idx, piece, start, prefixed in plan:
                if idx is not None:
                    ids.append(idx)
                    if with_offsets:
                        offsets.append((max(start - shift, 0), min(start - shift + len(piece), n)))
                    continue
                piece_ids = next(encoded)
                ids += piece_ids
                if with_offsets:
                    offsets += self._piece_offsets(piece, start - shift, piece_ids, prefixed, n)
            all_ids.append(ids)
            all_offsets.append(offsets)
        return all_ids, (all_offsets if with_offsets else None)

    def _plan_texts(
        self, texts: list[str], add_prefix_space: bool, pattern: re.Pattern | None
    ) -> list[tuple[str, int, list[tuple[int | None, str, int, bool]]]]:
        """Each text as (text, shift, plan): the plan lists (added token id or None, piece, start, prefixed),
        the text's ordinary stretches and added tokens in order. The slow tokenizer's prefix space goes in front
        of the whole text (shift 1: positions in the plan count it), the fast one's in front of each stretch
        that does not start with a space (`prefixed`)."""
        per_segment = add_prefix_space and self._prefix_space_per_segment
        plans = []
        for text in texts:
            shift = 0
            if add_prefix_space and not per_segment:
                text, shift = " " + text, 1
            plan = []
            for idx, start, end in self._split(text, pattern):
                piece = text[start:end]
                if idx is None and piece == "":
                    continue
                prefixed = idx is None and per_segment and piece[0] != " "
                plan.append((idx, " " + piece if prefixed else piece, start, prefixed))
            plans.append((text, shift, plan))
        return plans

    def _encode_plans(self, plans: list) -> Iterator[list[int]]:
        """The ids of every ordinary stretch of the plans, in order, from one engine call."""
        pieces = [piece for _, _, plan in plans for idx, piece, _, _ in plan if idx is None]
        return iter(self._engine.encode_ordinary_batch(pieces))

    def _align_texts(
        self, texts: list[str], add_prefix_space: bool, split_special: bool
    ) -> list[alignment.Aligned]:
        """Every text tokenized with each token's characters, word and token string (see alignment.py): each
        piece the pre-tokenizer regex cuts from an ordinary stretch is a word, and so is each added token."""
        if texts:
            _check_utf8(texts, "\n".join(texts))
        plans = self._plan_texts(texts, add_prefix_space, self._added_pattern(split_special))
        encoded = self._encode_plans(plans)
        out = []
        for text, shift, plan in plans:
            aligned = alignment.Aligned([], [], [], [])
            n = len(text) - shift
            word = 0
            for idx, piece, start, prefixed in plan:
                if idx is not None:
                    span = (max(start - shift, 0), min(start - shift + len(piece), n))
                    aligned.ids.append(idx)
                    aligned.offsets.append(span)
                    aligned.words.append(word)
                    # the text it matched, whitespace it strips included, as `tokenizers` names it
                    aligned.tokens.append(text[start : start + len(piece)])
                    word += 1
                    continue
                piece_ids = next(encoded)
                aligned.ids += piece_ids
                aligned.offsets += self._piece_offsets(piece, start - shift, piece_ids, prefixed, n)
                words, n_words = self._piece_words(piece, piece_ids)
                aligned.words += [word + w for w in words]
                word += n_words
                aligned.tokens += [self._id_to_token.get(i, "") for i in piece_ids]
            out.append(aligned)
        return out

    def _word_pattern(self, text: str) -> Any:
        """The pre-tokenizer regex that cuts `text` into the pieces the engine encodes (GPT2TokenizerFast's
        tiktoken differs from Python's `regex` on the newest Unicode letters)."""
        return bpe.PATTERN_RE

    def _piece_words(self, piece: str, ids: list[int]) -> tuple[list[int], int]:
        """Which regex piece of an ordinary stretch each of its tokens belongs to, and how many pieces there are.

        A token belongs to the piece holding its first byte.
        """
        pieces = self._word_pattern(piece).findall(piece)
        sizes = map(len, pieces) if piece.isascii() else (len(p.encode("utf-8")) for p in pieces)
        ends = list(itertools.accumulate(sizes))
        last = len(ends) - 1
        words = [min(bisect.bisect_right(ends, b), last) for b in self._token_starts(ids)[:-1]]
        return words, len(ends)

    def _token_starts(self, ids: list[int]) -> list[int]:
        """The byte each token starts at in the bytes of its stretch, and (last) the end of the stretch."""
        id_to_bytes = self._id_to_bytes
        return list(itertools.accumulate((len(id_to_bytes.get(i, b"?")) for i in ids), initial=0))

    def _piece_offsets(
        self, piece: str, start: int, ids: list[int], prefixed: bool, n: int
    ) -> list[tuple[int, int]]:
        """Character span of each token of a stretch of text: the characters whose UTF-8 bytes it holds.

        A token that holds part of a character (an emoji split over three tokens) spans the whole
        character, and an inserted prefix space belongs to the character after it, as in `tokenizers`.
        """
        starts = self._token_starts(ids)
        chars = piece[1:] if prefixed else piece
        p = int(prefixed)
        size = p + len(chars)
        out = []
        if chars.isascii():  # one byte per character: byte b is character b - p (the prefix space: the first)
            for b, e in zip(starts, starts[1:]):
                first = start + max(min(b, size - 1) - p, 0)
                last = start + max(min(e, size) - 1 - p, 0)
                out.append((max(first, 0), min(max(last, 0) + 1, n)))
            return out
        owner: list[int] = [
            start
        ] * p  # owner[b] = index in the original text of the character byte b belongs to
        for i, ch in enumerate(chars):
            owner += [max(start + i, 0)] * _utf8_len(ch)
        size = len(owner)
        for b, e in zip(starts, starts[1:]):
            out.append((owner[min(b, size - 1)], min(owner[min(e, size) - 1] + 1, n)))
        return out

    def _check_text(self, text: Any, what: str = "text") -> tuple[list[str], bool]:
        if isinstance(text, str):
            return [text], False
        if isinstance(text, (list, tuple)):
            if all(isinstance(t, str) for t in text):
                return list(text), True
            bad = next(t for t in text if not isinstance(t, str))
            hint = (
                " (for pre-tokenized input, lists of words, pass is_split_into_words=True)"
                if isinstance(bad, (list, tuple))
                else ""
            )
            raise TypeError(
                f"{what} must be a str or a list of str, got a list holding {type(bad).__name__}{hint}"
            )
        raise TypeError(f"{what} must be a str or a list of str, got {type(text).__name__}: {text!r:.80}")

    def _warn_once(self, key: str, message: str, verbose: bool = True) -> None:
        if verbose and not self.deprecation_warnings.get(key, False):
            self.deprecation_warnings[key] = True
            logger.warning(message)

    # --- the call surface: text (or a pair of texts) -> BatchEncoding ---------------------------------------

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        text_pair: str | Sequence[str] | None = None,
        text_target: str | Sequence[str] | None = None,
        text_pair_target: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        add_prefix_space: bool | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Tokenize one text or a batch, or pairs of texts: input_ids and attention_mask, padded/truncated/as
        tensors if asked. `text_target` is encoded the same way and returned as `labels`.

        >>> from gpt2kit import GPT2TokenizerFast
        >>> tok = GPT2TokenizerFast.from_pretrained("gpt2")
        >>> tok.pad_token = tok.eos_token
        >>> tok(["Hello world", "Hi"], padding=True)["attention_mask"]
        [[1, 1], [1, 0]]
        >>> tok("Hello", "world", return_token_type_ids=True)["token_type_ids"]
        [0, 1]
        """
        if text is None and text_target is None:
            raise ValueError("You need to specify either `text` or `text_target` (the text to tokenize).")
        o = options.resolve(
            self,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            stride=stride,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_tensors=return_tensors,
            return_token_type_ids=return_token_type_ids,
            return_attention_mask=return_attention_mask,
            return_overflowing_tokens=return_overflowing_tokens,
            return_special_tokens_mask=return_special_tokens_mask,
            return_offsets_mapping=return_offsets_mapping,
            return_length=return_length,
            verbose=verbose,
            add_prefix_space=add_prefix_space,
            **kwargs,
        )
        encodings = None if text is None else self._call_one(text, text_pair, o)
        if text_target is None:
            return encodings
        targets = self._call_one(text_target, text_pair_target, o)
        if encodings is None:
            return targets
        encodings["labels"] = targets["input_ids"]
        return encodings

    def encode_plus(self, text: str, text_pair: str | None = None, **kwargs: Any) -> BatchEncoding:
        """One text (or one pair): `tok(text, text_pair, ...)` under its older name; takes __call__'s keywords.

        >>> from gpt2kit import GPT2Tokenizer
        >>> GPT2Tokenizer.from_pretrained("gpt2").encode_plus("Hello", " world")["input_ids"]
        [15496, 995]
        """
        o = options.resolve(self, **kwargs)  # first, as transformers checks the options before the text
        if o.is_split_into_words:
            if isinstance(text, (list, tuple)) and text and isinstance(text[0], (list, tuple)):
                raise TypeError(
                    "encode_plus takes one list of words (and an optional text_pair list); for a batch of them use "
                    "batch_encode_plus or call the tokenizer on the batch"
                )
            return self._call_one(text, text_pair, o)
        if not isinstance(text, str):
            raise TypeError(
                f"encode_plus takes one str (and an optional text_pair str), got {type(text).__name__}; "
                "for a batch use batch_encode_plus or call the tokenizer on a list"
            )
        return self._call_one(text, text_pair, o)

    def batch_encode_plus(
        self, batch_text_or_text_pairs: Sequence[str | tuple[str, str]], **kwargs: Any
    ) -> BatchEncoding:
        """A batch of texts and/or (text, text_pair) pairs: `tok(texts)` under its older name.

        >>> from gpt2kit import GPT2TokenizerFast
        >>> GPT2TokenizerFast.from_pretrained("gpt2").batch_encode_plus([("Hello", " world"), "Hi"])["input_ids"]
        [[15496, 995], [17250]]
        """
        batch = batch_text_or_text_pairs
        if isinstance(batch, str) or not isinstance(batch, (list, tuple)):
            raise TypeError(
                f"batch_encode_plus takes a list of texts or (text, text_pair) tuples, got {type(batch).__name__}; "
                "for one text use encode_plus"
            )
        return self._encode_pairs(batch, options.resolve(self, **kwargs))

    def _encode_pairs(self, batch: Sequence[Any], o: CallOptions) -> BatchEncoding:
        """A batch whose items are texts or (text, text_pair) pairs."""
        firsts: list[Any] = []
        seconds: list[Any] = []
        if o.is_split_into_words:
            self._check_words_allowed(o)
        for n, item in enumerate(batch):
            if o.is_split_into_words:
                first, second = self._unpack_words(item, n)
            else:
                first, second = (item, None) if isinstance(item, str) else _unpack_pair(item, n)
            firsts.append(first)
            seconds.append(second)
        return self._encode_items(firsts, seconds if any(s is not None for s in seconds) else None, True, o)

    # --- pre-tokenized input (is_split_into_words=True) ------------------------------------------------------

    def _check_words_allowed(self, o: CallOptions) -> None:
        # slow/fast difference 8: transformers' slow tokenizer puts a space before every word whatever
        # add_prefix_space says; the fast one (tokenizers' ByteLevel) only does with add_prefix_space=True, and
        # GPT2TokenizerFast refuses words without it.
        if self.is_fast and not o.add_prefix_space:
            raise _NeedsPrefixSpace(
                f"You need to instantiate {type(self).__name__} with add_prefix_space=True to use it with "
                "pretokenized inputs (is_split_into_words=True): GPT-2 encodes each word as if a space came before "
                "it. Load it with from_pretrained(..., add_prefix_space=True), or pass add_prefix_space=True to the call"
            )

    def _check_words(self, words: Any, what: str) -> list[str]:
        """One pre-tokenized text: a list (or tuple) of words."""
        if isinstance(words, (list, tuple)) and all(isinstance(w, str) for w in words):
            return list(words)
        raise TypeError(
            f"with is_split_into_words=True, {what} must be a list of words (str), or a batch of such lists; got "
            f"{type(words).__name__}: {words!r:.80}"
            + (" (split the text into words first: text.split())" if isinstance(words, str) else "")
        )

    def _unpack_words(self, item: Any, n: int) -> tuple[list[str], list[str] | None]:
        """An item of a batch of pre-tokenized texts: a list of words, or a pair (words, pair_words)."""
        if isinstance(item, (list, tuple)) and item and isinstance(item[0], (list, tuple)):
            if len(item) != 2:
                raise TypeError(
                    f"item {n} of the batch holds {len(item)} lists of words; a pair is (words, pair_words)"
                )
            return self._check_words(item[0], f"item {n}"), self._check_words(item[1], f"item {n}'s pair")
        return self._check_words(item, f"item {n}"), None

    def _call_words(self, text: Any, text_pair: Any, o: CallOptions) -> BatchEncoding:
        """Pre-tokenized input: a list of words (and a text_pair list), or a batch of such lists."""
        self._check_words_allowed(o)
        if isinstance(text, str):
            if self.is_fast:
                self._check_words(text, "text")
            # transformers' slow tokenizer encodes a str as usual, is_split_into_words or not
            return self._call_one(text, text_pair, replace(o, is_split_into_words=False))
        batched = isinstance(text, (list, tuple)) and len(text) > 0 and isinstance(text[0], (list, tuple))
        if not batched:
            firsts = [self._check_words(text, "text")]
            pairs = None if text_pair is None else [self._check_words(text_pair, "text_pair")]
            return self._encode_items(firsts, pairs, False, o)
        firsts = [self._check_words(words, "text") for words in text]
        pairs = None
        if text_pair is not None:
            if not isinstance(text_pair, (list, tuple)) or len(text_pair) != len(text):
                raise ValueError(
                    f"batch length of `text`: {len(text)} does not match batch length of `text_pair` "
                    f"({len(text_pair) if isinstance(text_pair, (list, tuple)) else type(text_pair).__name__})"
                )
            pairs = [self._check_words(words, "text_pair") for words in text_pair]
        return self._encode_items(firsts, pairs, True, o)

    def _encode_word_lists(
        self, lists: list[list[str]], with_offsets: bool, split_special: bool
    ) -> tuple[list[list[int]], list[list[Span]] | None]:
        """Ids (and offsets, each word's from 0) of pre-tokenized texts: every word encoded on its own, with
        the prefix space each class puts before a word, then joined."""
        flat = [word for words in lists for word in words]
        ids, offsets = self._encode_texts(flat, True, with_offsets, split_special)
        out_ids: list[list[int]] = []
        out_offsets: list[list[Span]] = []
        start = 0
        for words in lists:
            stop = start + len(words)
            out_ids.append([i for row in ids[start:stop] for i in row])
            if offsets is not None:
                out_offsets.append([span for row in offsets[start:stop] for span in row])
            start = stop
        return out_ids, (out_offsets if offsets is not None else None)

    def _align_word_lists(self, lists: list[list[str]], split_special: bool) -> list[alignment.Aligned]:
        """_align_texts for pre-tokenized texts: the words are the given ones."""
        aligned = iter(self._align_texts([w for words in lists for w in words], True, split_special))
        out = []
        for words in lists:
            row = alignment.Aligned([], [], [], [])
            for w, a in zip(range(len(words)), aligned):
                row.ids += a.ids
                row.offsets += a.offsets
                row.words += [w] * len(a.ids)
                row.tokens += a.tokens
            out.append(row)
        return out

    def _call_one(self, text: Any, text_pair: Any, o: CallOptions) -> BatchEncoding:
        if o.is_split_into_words:
            return self._call_words(text, text_pair, o)
        if (
            text_pair is None
            and isinstance(text, (list, tuple))
            and any(isinstance(item, tuple) for item in text)
        ):
            # As transformers: a batch of (text, text_pair) tuples is a batch of pairs. (A list of lists stays
            # an error: it is more often pre-tokenized words, which need is_split_into_words=True.)
            return self._encode_pairs(text, o)
        texts, batched = self._check_text(text)
        if text_pair is None:
            pairs = None
        elif batched:
            if isinstance(text_pair, str):
                raise TypeError(
                    "when tokenizing batches of text, `text_pair` must be a list or tuple with the same length as "
                    f"`text` ({len(texts)}), got one str"
                )
            pairs, _ = self._check_text(text_pair, "text_pair")
            if len(pairs) != len(texts):
                raise ValueError(
                    f"batch length of `text`: {len(texts)} does not match batch length of `text_pair`: {len(pairs)}."
                )
        elif not isinstance(text_pair, str):
            raise TypeError(
                f"text_pair must be a str when text is one str, got {type(text_pair).__name__}; pass lists to both "
                "for a batch of pairs"
            )
        else:
            # slow/fast difference 5: transformers' fast tokenizer takes an empty text_pair for no pair at all.
            pairs = None if text_pair == "" and self.is_fast else [text_pair]
        return self._encode_items(texts, pairs, batched, o)

    @_gc_paused
    def _encode_items(
        self, firsts: list[Any], seconds: list[Any] | None, batched: bool, o: CallOptions
    ) -> BatchEncoding:
        """Encode texts (and second texts, None where a text has none) and assemble, pad and finish them.
        With is_split_into_words, each text is a list of words."""
        n = len(firsts)
        texts = firsts if seconds is None else firsts + [s for s in seconds if s is not None]
        # One engine call for every text, both sides of the pairs included.
        if o.is_split_into_words:
            ids, offsets = self._encode_word_lists(texts, o.return_offsets_mapping, o.split_special_tokens)
        else:
            ids, offsets = self._encode_texts(
                texts, o.add_prefix_space, o.return_offsets_mapping, o.split_special_tokens
            )
        pair_ids: list[list[int] | None] = [None] * n
        pair_offsets: list[list[Span] | None] = [None] * n
        if seconds is not None:
            j = n
            for i, second in enumerate(seconds):
                if second is not None:
                    pair_ids[i] = ids[j]
                    pair_offsets[i] = offsets[j] if offsets is not None else None
                    j += 1
        samples = list(
            zip(ids[:n], pair_ids, offsets[:n] if offsets is not None else [None] * n, pair_offsets)
        )
        out, main_rows = self._assemble(samples, o)
        # slow/fast difference 6: the slow tokenizer pads one text through pad(), which skips an empty one.
        return self._finish_rows(
            out, main_rows, batched, o, pad_empty=self.is_fast, source=(firsts, seconds, samples)
        )

    def _assemble(self, samples: list[Sample], o: CallOptions) -> tuple[dict[str, list], list[int]]:
        """Truncate each (ids, pair_ids, offsets, pair_offsets) sample and add special tokens: the unpadded
        output columns, and the indices of the rows that are samples (not overflow rows)."""
        raise NotImplementedError

    def _prepare(
        self,
        ids: list[int],
        pair_ids: list[int] | None,
        o: CallOptions,
        notes: set[tuple[str, str]],
        offsets: list[Span] | None = None,
        pair_offsets: list[Span] | None = None,
    ) -> dict[str, Any]:
        """One sample as transformers' prepare_for_model builds it, before padding: truncate (overflowing tokens
        kept apart), add special tokens, make the masks. Messages to log go into `notes`."""
        pair = pair_ids is not None
        if o.return_token_type_ids and not o.add_special_tokens:
            raise ValueError(
                "Asking to return token_type_ids while setting add_special_tokens to False results in an undefined "
                "behavior. Please set add_special_tokens to True or set return_token_type_ids to None."
            )
        if o.return_overflowing_tokens and o.truncation == "longest_first" and pair:
            raise ValueError(
                "Not possible to return overflowing tokens for pair of sequences with the `longest_first`. Please "
                "select another truncation strategy than `longest_first`, for instance `only_second` or `only_first`."
            )
        overflow: list[int] = []
        if o.max_length is not None and (o.truncation is not None or o.return_overflowing_tokens):
            n_special = self.num_special_tokens_to_add(pair) if o.add_special_tokens else 0
            total = len(ids) + (len(pair_ids) if pair else 0) + n_special
        if o.truncation is not None and o.max_length and total > o.max_length:
            cut = truncation.slow_cut(
                len(ids), len(pair_ids) if pair else None, total - o.max_length, o.truncation, o.stride,
                self.truncation_side == "left",
            )  # fmt: skip
            if cut.message is not None:
                notes.add(cut.message)
            if cut.overflow is not None:
                which, (start, stop) = cut.overflow
                overflow = (ids if which == 0 else pair_ids)[start:stop]
            ids = ids[cut.first[0] : cut.first[1]]
            offsets = None if offsets is None else offsets[cut.first[0] : cut.first[1]]
            if pair:
                pair_ids = pair_ids[cut.second[0] : cut.second[1]]
                pair_offsets = None if pair_offsets is None else pair_offsets[cut.second[0] : cut.second[1]]
        out: dict[str, Any] = {}
        if o.return_overflowing_tokens:
            if o.max_length is None:
                raise ValueError(
                    "return_overflowing_tokens=True needs a length to truncate to: pass truncation=True with "
                    "max_length=... (or a tokenizer with model_max_length set)"
                )
            out["overflowing_tokens"] = overflow
            out["num_truncated_tokens"] = total - o.max_length
        if o.add_special_tokens:
            sequence = self.build_inputs_with_special_tokens(ids, pair_ids)
        else:
            sequence = ids + pair_ids if pair else ids
        special = None
        if o.return_special_tokens_mask or offsets is not None:
            special = (
                self.get_special_tokens_mask(ids, pair_ids) if o.add_special_tokens else [0] * len(sequence)
            )
        out["input_ids"] = sequence
        if o.return_token_type_ids:
            out["token_type_ids"] = self.create_token_type_ids_from_sequences(ids, pair_ids)
        if o.return_special_tokens_mask:
            out["special_tokens_mask"] = special
        if offsets is not None:
            # Special tokens span no text: (0, 0), where the special tokens mask has its 1s.
            spans = iter(offsets + (pair_offsets or []))
            out["offset_mapping"] = [(0, 0) if s else next(spans) for s in special]
        if o.return_attention_mask:
            out["attention_mask"] = [1] * len(sequence)
        return out

    def _log_notes(self, notes: set[tuple[str, str]], verbose: bool) -> None:
        """Log what truncation had to say, once per call however many samples said it (transformers: per sample)."""
        if verbose:
            for level, message in sorted(notes):
                logger.log(logging.ERROR if level == "error" else logging.WARNING, message)

    def _finish_rows(
        self,
        out: dict[str, list],
        main_rows: list[int],
        batched: bool,
        o: CallOptions,
        pad_empty: bool = True,
        source: tuple[list[Any], list[Any] | None, list[Sample]] | None = None,
    ) -> BatchEncoding:
        """Warn about over-long rows, pad, add lengths, make tensors; `main_rows` are the rows that are samples.

        transformers' pad() leaves one empty text unpadded: pad_empty=False does the same. A fast tokenizer's
        rows come with their plans (ROW_PLANS); with `source` (the texts and samples they came from), the
        BatchEncoding can then work out its alignment when asked.
        """
        plans = out.pop(ROW_PLANS, None)
        rows = out["input_ids"]
        if o.max_length is None and rows and max(map(len, rows)) > self.model_max_length:
            self._warn_once(
                "sequence-too-long",
                f"Token indices sequence length is longer than the specified maximum sequence length for this "
                f"model ({max(map(len, rows))} > {self.model_max_length}). Running this sequence through the model "
                "will result in indexing errors",
                o.verbose,
            )
        unpadded_lengths = [len(x) for x in rows]
        if o.padding != "do_not_pad" and (batched or pad_empty or rows[0]):
            longest = max((len(rows[i]) for i in main_rows), default=0)
            target = longest if o.padding == "longest" else o.max_length
            self._pad_in_place(out, target, o.pad_to_multiple_of, o.padding_side or self.padding_side)
        if o.return_length:
            if self._length_after_padding:
                out["length"] = [len(x) for x in out["input_ids"]]
            else:
                out["length"] = unpadded_lengths if batched else len(out["input_ids"][0])
                if batched and "attention_mask" in out:  # the slow one makes the mask when padding the batch
                    out["attention_mask"] = out.pop("attention_mask")
        if "overflow_to_sample_mapping" in out:  # last, and the batch axis stays, as in transformers' fast
            out["overflow_to_sample_mapping"] = out.pop("overflow_to_sample_mapping")
            batched = True
        encoding = self._finish(out, batched, o.return_tensors)
        if plans is not None and source is not None:
            # Only what the alignment needs later, kept cheaply: it is worked out on the first question.
            encoding._n_sequences = (2 if plans[0][3] is not None else 1) if plans else None
            # BOS and padding as they are now: the rows were made with these
            special = (
                self._special["bos_token"],
                self._special["pad_token"],
                o.padding_side or self.padding_side,
            )
            encoding._build_encodings = functools.partial(
                self._build_encodings, source, plans, batched, special, o
            )
        return encoding

    def _build_encodings(
        self,
        source: tuple[list[Any], list[Any] | None, list[Sample]],
        plans: list[alignment.RowPlan],
        batched: bool,
        special: tuple[str | None, str | None, str],
        o: CallOptions,
        input_ids: Any,
    ) -> list[alignment.Encoding]:
        """The Encoding of each row of a call: its texts tokenized again, now with words, offsets and token
        strings (alignment.py), cut as the rows were and padded to the length of their `input_ids`."""
        if hasattr(input_ids, "shape"):  # a tensor or array: every row has its full (padded) length
            lengths = [input_ids.shape[-1]] * len(plans)
        else:
            lengths = [len(row) for row in input_ids] if batched else [len(input_ids)]
        bos, pad, side = special
        specials = alignment.Specials(
            bos_id=None if bos is None else self.convert_tokens_to_ids(bos),
            bos_token=bos,
            pad_id=None if pad is None else self.convert_tokens_to_ids(pad),
            pad_token=pad,
            padding_side=side,
        )
        firsts, seconds, samples = source
        texts = firsts if seconds is None else firsts + [s for s in seconds if s is not None]
        if o.is_split_into_words:
            aligned = self._align_word_lists(texts, o.split_special_tokens)
        else:
            aligned = self._align_texts(texts, o.add_prefix_space, o.split_special_tokens)
        n = len(firsts)
        second_of: list[alignment.Aligned | None] = [None] * n
        rest = iter(aligned[n:])
        for i, (ids, pair_ids, _, _) in enumerate(samples):
            if pair_ids is not None:
                second_of[i] = next(rest)
            if aligned[i].ids != ids or (pair_ids is not None and second_of[i].ids != pair_ids):
                raise ValueError(
                    "this tokenizer no longer encodes the texts as it did when it made this BatchEncoding (tokens "
                    "added or settings changed since?), so the alignment cannot be worked out; call it again"
                )
        return alignment.build_rows(plans, aligned[:n], second_of, lengths, specials)

    def _pad_in_place(self, out: dict[str, Any], target: int, multiple: int | None, side: str) -> None:
        """Pad each row of the padded columns to `target` (rounded up to `multiple`), by as much as its
        input_ids row is short (as transformers pads: a shorter token_type_ids row stays shorter)."""
        if multiple and target % multiple:
            target = (target // multiple + 1) * multiple
        fill = {"input_ids": self.pad_token_id, "token_type_ids": 0, "attention_mask": 0,
                "special_tokens_mask": 1, "offset_mapping": (0, 0)}  # fmt: skip
        columns = [(out[key], value) for key, value in fill.items() if key in out]
        for i, row in enumerate(out["input_ids"]):
            missing = target - len(row)
            if missing <= 0:
                continue
            for rows, value in columns:
                pad = [value] * missing
                rows[i] = rows[i] + pad if side == "right" else pad + rows[i]

    def _finish(self, out: dict[str, Any], batched: bool, return_tensors: str | None) -> BatchEncoding:
        if return_tensors is not None:
            # A single text still gets a batch axis, as transformers gives it.
            if isinstance(out.get("length"), int):
                out["length"] = [out["length"]]
            return BatchEncoding({k: _to_tensor(v, k, return_tensors) for k, v in out.items()})
        if not batched:
            out = {k: (v if k == "length" else v[0]) for k, v in out.items()}
        return BatchEncoding(out)

    def prepare_for_model(
        self, ids: Sequence[int], pair_ids: Sequence[int] | None = None, **kwargs: Any
    ) -> BatchEncoding:
        """Truncate, add special tokens to and pad ids you encoded yourself, as transformers' prepare_for_model
        does (overflowing_tokens and num_truncated_tokens included); takes __call__'s keywords.

        >>> from gpt2kit import GPT2Tokenizer
        >>> tok = GPT2Tokenizer.from_pretrained("gpt2")
        >>> enc = tok.prepare_for_model([1, 2, 3], [4, 5], truncation="only_first", max_length=4,
        ...                             return_overflowing_tokens=True)
        >>> enc["input_ids"], enc["overflowing_tokens"]
        ([1, 2, 4, 5], [3])
        """
        prepend_batch_axis = bool(kwargs.pop("prepend_batch_axis", False))
        if kwargs.get("return_offsets_mapping"):
            raise ValueError(
                "prepare_for_model takes ids, which have no character offsets; call the tokenizer on the text "
                "with return_offsets_mapping=True instead"
            )
        o = options.resolve(self, **kwargs)
        notes: set[tuple[str, str]] = set()
        sample = self._prepare(_as_ids(ids), None if pair_ids is None else _as_ids(pair_ids), o, notes)
        self._log_notes(notes, o.verbose)
        out = {k: [v] for k, v in sample.items()}
        encoding = self._finish_rows(out, [0], False, replace(o, return_tensors=None), pad_empty=False)
        if o.return_length:  # after padding, of the one sample (transformers' prepare_for_model)
            encoding["length"] = len(encoding["input_ids"])
        if o.return_tensors is None:
            return encoding
        if prepend_batch_axis:
            return BatchEncoding({k: _to_tensor([v], k, o.return_tensors) for k, v in encoding.items()})
        return BatchEncoding({k: _to_tensor(v, k, o.return_tensors) for k, v in encoding.items()})

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> list[int] | Any:
        """Ids of one text or pair (a tensor of shape (1, T) with return_tensors="pt").

        >>> from gpt2kit import GPT2Tokenizer
        >>> GPT2Tokenizer.from_pretrained("gpt2").encode(" Hello world")
        [18435, 995]
        """
        if not isinstance(text, str) and not kwargs.get("is_split_into_words"):
            # the options first, as transformers checks them before the text (padding without a pad token)
            options.resolve(self, padding=padding, truncation=truncation, max_length=max_length, **kwargs)
            raise TypeError(
                f"encode takes one str, got {type(text).__name__}; call the tokenizer on a list for a batch "
                "(or pass is_split_into_words=True for a list of words)"
            )
        kwargs.setdefault("return_attention_mask", False)  # only input_ids are returned: skip the mask
        return self.encode_plus(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            stride=stride,
            padding_side=padding_side,
            return_tensors=return_tensors,
            **kwargs,
        )["input_ids"]

    def tokenize(self, text: str, **kwargs: Any) -> list[str]:
        """The token strings of a text, in the vocabulary's spelling ("Ġworld" for " world"); no BOS.

        >>> from gpt2kit import GPT2Tokenizer
        >>> GPT2Tokenizer.from_pretrained("gpt2").tokenize("Hello world")
        ['Hello', 'Ġworld']
        """
        prefix = kwargs.pop("add_prefix_space", None)
        words = bool(kwargs.pop("is_split_into_words", False))
        split_special = kwargs.pop("split_special_tokens", None)
        split_special = self.split_special_tokens if split_special is None else bool(split_special)
        kwargs.pop("add_special_tokens", None)  # tokenize never adds BOS, in transformers either
        if kwargs:
            options.warn_unknown(self, kwargs)
        if words and self.is_fast:
            # transformers' fast tokenizer takes a list of words here, and names the tokens of its encoding
            o = options.resolve(
                self,
                add_special_tokens=False,
                is_split_into_words=True,
                add_prefix_space=prefix,
                split_special_tokens=split_special,
            )
            return self._call_one(text, None, o).tokens()
        if not isinstance(text, str):
            raise TypeError(f"tokenize takes one str, got {type(text).__name__}")
        # the slow one puts a space before the text when told it is a word, as add_prefix_space does
        prefix = self.add_prefix_space if prefix is None else bool(prefix)
        pattern = self._added_pattern(split_special)
        if self.is_fast and pattern is not None and pattern.search(text):
            # transformers' fast tokenizer names a matched added token by the text it took (" <tool>" for an
            # lstrip token after a space)
            return self._align_texts([text], prefix, split_special)[0].tokens
        ids, _ = self._encode_texts([text], prefix or words, split_special=split_special)
        return self.convert_ids_to_tokens(ids[0])

    def iter_encode(self, chunks: Iterable[str]) -> Iterator[list[int]]:
        """Encode one long text handed over in pieces (a file read block by block) with the ids of the whole.

        Pieces are joined and cut again only where GPT-2's pre-tokenizer always cuts: between a
        non-whitespace ASCII character and a space or newline, so no token can straddle the cut and no
        whitespace run changes its split. BOS and the prefix space go in front of the first piece only.

        >>> from gpt2kit import GPT2TokenizerFast
        >>> tok = GPT2TokenizerFast.from_pretrained("gpt2")
        >>> [i for ids in tok.iter_encode(["Hello wo", "rld"]) for i in ids]
        [15496, 995]
        """
        if any(t.lstrip or t.rstrip or any(c.isspace() for c in t.content) for t in self._added.values()):
            # Added tokens that eat or hold whitespace could straddle a cut: encode the whole text at once.
            yield self.encode("".join(chunks), verbose=False)
            return
        buffer, first = "", True
        for chunk in chunks:
            buffer += chunk
            cut = _last_safe_cut(buffer)
            if cut > 0:
                yield self._encode_part(buffer[:cut], first)
                buffer, first = buffer[cut:], False
        if buffer or first:
            yield self._encode_part(buffer, first)

    def _encode_part(self, text: str, first: bool) -> list[int]:
        return self.encode(
            text, add_special_tokens=first, add_prefix_space=self.add_prefix_space and first, verbose=False
        )

    # --- ids -> text --------------------------------------------------------------------------------------

    def decode(
        self,
        token_ids: int | Sequence[int] | Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> str:
        """The text of a sequence of ids (list, numpy array or torch tensor); bytes that are not valid UTF-8
        (half an emoji) come out as U+FFFD under errors="replace".

        >>> from gpt2kit import GPT2TokenizerFast
        >>> GPT2TokenizerFast.from_pretrained("gpt2").decode([15496, 995, 50256], skip_special_tokens=True)
        'Hello world'
        """
        spaces = kwargs.pop("spaces_between_special_tokens", self._spaces_between_added_tokens)
        if kwargs:
            raise TypeError(f"decode() got unexpected keyword argument(s) {', '.join(map(repr, kwargs))}")
        ids = _as_ids(token_ids)
        if skip_special_tokens:
            special = set(self.all_special_ids) | {i for i, t in self._added.items() if t.special}
            ids = [i for i in ids if i not in special]
        # Added tokens beyond the vocabulary decode to their text. The slow tokenizer also cuts the byte
        # stream at non-special added tokens and joins the parts with spaces (transformers' quirk).
        legacy: set[int] = set()
        if spaces and self._added:
            legacy_tokens = set(self._added_ids) - set(self.all_special_tokens)
            legacy_tokens |= {t for t in self._additional_special if self._added_ids[t] >= self.vocab_size}
            legacy = {self._added_ids[t] for t in legacy_tokens}
        id_to_bytes = self._id_to_bytes
        if not legacy and (ids and min(ids) >= 0):
            try:  # the common case, in one C-level pass
                text = b"".join([id_to_bytes[i] for i in ids]).decode("utf-8", self.errors)
            except KeyError:  # ids beyond the vocabulary: added tokens, or bad ids
                pass
            else:
                return self._clean(text, clean_up_tokenization_spaces)
        parts: list[str] = []
        buffer: list[bytes] = []
        for i in ids:
            if i in legacy:
                if buffer:
                    part = b"".join(buffer).decode("utf-8", self.errors)
                    if part:
                        parts.append(part)
                    buffer = []
                parts.append(self._added[i].content)
                continue
            b = id_to_bytes.get(i)
            if b is None:
                token = self._added.get(i)
                if token is None:
                    raise ValueError(self._bad_id_message(i))
                b = token.content.encode("utf-8")
            buffer.append(b)
        if buffer:
            parts.append(b"".join(buffer).decode("utf-8", self.errors))
        return self._clean((" " if spaces else "").join(parts), clean_up_tokenization_spaces)

    def _clean(self, text: str, clean_up_tokenization_spaces: bool | None) -> str:
        clean = (
            self.clean_up_tokenization_spaces
            if clean_up_tokenization_spaces is None
            else clean_up_tokenization_spaces
        )
        return clean_up_tokenization(text) if clean else text

    def batch_decode(
        self,
        sequences: Sequence[Sequence[int]] | Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """decode() for each sequence of a batch (a list of lists, or a 2-D array/tensor).

        >>> from gpt2kit import GPT2TokenizerFast
        >>> GPT2TokenizerFast.from_pretrained("gpt2").batch_decode([[15496], [995, 50256]], skip_special_tokens=True)
        ['Hello', ' world']
        """
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        if isinstance(sequences, (str, int)):
            raise TypeError(f"batch_decode takes a batch of id sequences, got {type(sequences).__name__}")
        return [
            self.decode(s, skip_special_tokens, clean_up_tokenization_spaces, **kwargs) for s in sequences
        ]

    def _bad_id_message(self, i: Any) -> str:
        hint = " (-100 is the loss's ignore index: drop it before decoding)" if i == -100 else ""
        return f"token id {i!r} is not in the vocabulary (ids run from 0 to {len(self) - 1}){hint}"

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        """Token strings of ids, in the vocabulary's spelling: 995 -> "Ġworld"."""
        if isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0):
            i = int(ids)
            token = self._added[i].content if i in self._added else self._id_to_token.get(i)
            if token is None:
                raise ValueError(self._bad_id_message(i))
            return token
        ids = _as_ids(ids)
        if skip_special_tokens:
            special = set(self.all_special_ids)
            ids = [i for i in ids if i not in special]
        return [self.convert_ids_to_tokens(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str] | None) -> int | list[int] | None:
        """Ids of token strings; a string not in the vocabulary gives unk_token's id, as in transformers."""
        if tokens is None:
            return None
        if isinstance(tokens, str):
            idx = self._added_ids.get(tokens)
            if idx is None:
                idx = self._vocab.encoder.get(tokens)
            if idx is None:
                unk = self._special["unk_token"]
                idx = None if unk is None or unk == tokens else self.convert_tokens_to_ids(unk)
            return idx
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Join token strings back into text: ["Hello", "Ġworld"] -> "Hello world"."""
        ids = self.convert_tokens_to_ids(list(tokens))
        return self.decode([i for i in ids if i is not None], spaces_between_special_tokens=False)

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        return clean_up_tokenization(text)

    # --- padding a batch made elsewhere -------------------------------------------------------------------

    def pad(
        self,
        encoded_inputs: Any,
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Pad already-encoded inputs (a list of dicts, or a dict of lists), as a data collator does.

        >>> from gpt2kit import GPT2TokenizerFast
        >>> tok = GPT2TokenizerFast.from_pretrained("gpt2", pad_token="<|endoftext|>")
        >>> tok.pad([{"input_ids": [1, 2]}, {"input_ids": [3]}])["input_ids"]
        [[1, 2], [3, 50256]]
        """
        if self.is_fast:  # as transformers' fast tokenizers advise, once
            self._warn_once(
                "Asking-to-pad-a-fast-tokenizer",
                f"You're using a {type(self).__name__} tokenizer. Please note that with a fast tokenizer, using the "
                "`__call__` method is faster than using a method to encode the text followed by a call to the `pad` "
                "method to get a padded encoding.",
            )
        if (
            isinstance(encoded_inputs, (list, tuple))
            and encoded_inputs
            and isinstance(encoded_inputs[0], dict)
        ):
            encoded_inputs = {k: [example[k] for example in encoded_inputs] for k in encoded_inputs[0]}
        if not isinstance(encoded_inputs, dict) or "input_ids" not in encoded_inputs:
            raise ValueError("pad takes a dict with input_ids (or a list of such dicts), as tok(...) returns")
        out = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in encoded_inputs.items()}
        if not out["input_ids"]:  # nothing to pad (transformers returns it as it is)
            if return_attention_mask is not False:
                out["attention_mask"] = []
            return self._finish(out, True, options.check_return_tensors(return_tensors))
        batched = not isinstance(out["input_ids"][0], int)
        if not batched:
            out = {k: [v] for k, v in out.items()}
        out = {k: [list(row) if isinstance(row, (list, tuple)) else row for row in v] for k, v in out.items()}
        if return_attention_mask is not False and "attention_mask" not in out:
            out["attention_mask"] = [[1] * len(x) for x in out["input_ids"]]
        strategy, _, max_length = options.resolve_strategies(
            self, padding, False, max_length, pad_to_multiple_of, verbose
        )
        side = options.check_padding_side(padding_side) or self.padding_side
        return_tensors = options.check_return_tensors(return_tensors)
        if strategy != "do_not_pad":
            target = max(map(len, out["input_ids"]), default=0) if strategy == "longest" else max_length
            self._pad_in_place(out, target, pad_to_multiple_of, side)
        if return_attention_mask is False:
            out.pop("attention_mask", None)
        return self._finish(out, batched, return_tensors)

    # --- chat templates (chat.py renders them) --------------------------------------------------------------

    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        """The template apply_chat_template renders: `chat_template` itself or the name of one of this
        tokenizer's templates, else the tokenizer's own (as transformers picks it)."""
        return chat.pick(self.chat_template, chat_template, tools)

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]] | list[list[dict[str, Any]]],
        tools: list[dict] | None = None,
        documents: list[dict[str, str]] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = True,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_dict: bool = False,
        return_assistant_tokens_mask: bool = False,
        tokenizer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Render a conversation (or a batch of them) with a Jinja chat template, as transformers does: the
        text (tokenize=False), its ids without added special tokens, or the whole encoding (return_dict=True).
        Keyword arguments and the special tokens are visible in the template. Needs jinja2.

        >>> from gpt2kit import GPT2TokenizerFast
        >>> tok = GPT2TokenizerFast.from_pretrained("gpt2")
        >>> template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\\n{% endfor %}"
        >>> tok.apply_chat_template([{"role": "user", "content": "Hi"}], chat_template=template, tokenize=False)
        'user: Hi\\n'
        """
        if return_assistant_tokens_mask:
            raise ValueError(
                "return_assistant_tokens_mask=True ({% generation %} blocks) is not supported by gpt2kit; "
                "leave it False"
            )
        template = self.get_chat_template(chat_template, tools)
        batched = (
            isinstance(conversation, (list, tuple))
            and bool(conversation)
            and (isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages"))
        )
        conversations = list(conversation) if batched else [conversation]
        for document in documents or []:
            if not isinstance(document, dict):
                raise TypeError("documents must be a list of dicts with 'title' and 'text' keys")
        if tools is not None and not all(isinstance(t, dict) for t in tools):
            raise TypeError("tools must be JSON schemas (dicts) in gpt2kit; describe each function as a dict")
        variables = {**self.special_tokens_map, **kwargs}  # as transformers: kwargs win over special tokens
        rendered = chat.render(
            template,
            conversations,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tools=tools,
            documents=documents,
            **variables,
        )
        text = rendered if batched else rendered[0]
        if not tokenize:
            return text
        out = self(
            text,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            add_special_tokens=False,
            return_tensors=return_tensors,
            **(tokenizer_kwargs or {}),
        )
        return out if return_dict else out["input_ids"]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"model_max_length={self.model_max_length}, is_fast={self.is_fast}, padding_side={self.padding_side!r}, "
            f"truncation_side={self.truncation_side!r}, special_tokens={self.special_tokens_map}, "
            f"add_prefix_space={self.add_prefix_space}, add_bos_token={self.add_bos_token}, "
            f"added_tokens={len(self._added)})"
        )


# Constructor arguments that name the vocabulary's files: in init_kwargs, never in tokenizer_config.json.
_FILE_KEYS = {
    "vocab_file": files.VOCAB_FILE,
    "merges_file": files.MERGES_FILE,
    "tokenizer_file": files.TOKENIZER_FILE,
}
# The keywords _configure uses; any other init_kwargs entry is kept only to be saved.
_CONFIGURE_KEYS = frozenset(inspect.signature(TokenizerBase._configure).parameters) - {
    "self",
    "vocab",
    "unknown",
}


def clean_up_tokenization(text: str) -> str:
    """transformers' clean-up of spaces before punctuation and in English contractions ("do n't")."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):  # fmt: skip
        text = text.replace(before, after)
    return text


def _check_utf8(texts: list[str], joined: str) -> None:
    """Lone surrogates ("\\ud83d" from broken JSON) have no UTF-8 bytes, so no tokens: say where they are."""
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        for n, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                where = f"text {n}" if len(texts) > 1 else "the text"
                raise ValueError(
                    f"{where} holds the lone surrogate {text[e.start]!r} at position {e.start}, which is not valid "
                    "Unicode and has no UTF-8 bytes to tokenize; repair it first, e.g. "
                    "text.encode('utf-16', 'surrogatepass').decode('utf-16', 'replace')"
                ) from None


def _unpack_pair(item: Any, n: int) -> tuple[str, str | None]:
    """A (text, text_pair) item of batch_encode_plus's batch; text_pair may be None."""
    if (
        isinstance(item, (list, tuple))
        and len(item) == 2
        and isinstance(item[0], str)
        and (item[1] is None or isinstance(item[1], str))
    ):
        return item[0], item[1]
    raise TypeError(
        f"a batch takes texts or (text, text_pair) tuples of two str; item {n} is {item!r:.80}"
        " (for pre-tokenized input, lists of words, pass is_split_into_words=True)"
    )


def _as_ids(token_ids: Any) -> list[int]:
    """A flat list of Python ints from an int, a list/tuple, a numpy array or a torch tensor."""
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.tolist()
    if isinstance(token_ids, int):
        return [token_ids]
    if not isinstance(token_ids, (list, tuple)):
        raise TypeError(f"token ids must be an int or a sequence of ints, got {type(token_ids).__name__}")
    if token_ids and not all(type(i) is int for i in token_ids):
        bad = next(i for i in token_ids if type(i) is not int)
        if isinstance(bad, (list, tuple)):
            raise TypeError("decode takes one sequence of ids; use batch_decode for a batch")
        if isinstance(bad, int):  # numpy ints, bools
            return [int(i) for i in token_ids]
        raise TypeError(f"token ids must be ints, got {type(bad).__name__}: {bad!r}")
    return list(token_ids)


def _to_tensor(values: Any, key: str, kind: str) -> Any:
    rows = values if isinstance(values, list) else [values]
    if rows and isinstance(rows[0], list) and len({len(r) for r in rows}) > 1:
        if key == "overflowing_tokens":
            raise ValueError(
                "Unable to create tensor returning overflowing tokens of different lengths (rows of lengths "
                f"{sorted({len(r) for r in rows})}); drop return_tensors, or use GPT2TokenizerFast, which returns "
                "overflow as rows of input_ids"
            )
        raise ValueError(
            "Unable to create tensor, you should probably activate truncation and/or padding with "
            f"'padding=True' 'truncation=True' to have batched tensors with the same length ({key} has rows of "
            f"lengths {sorted({len(r) for r in rows})})."
        )
    if kind == "np":
        import numpy as np

        return np.asarray(values, dtype=np.int64)
    import torch  # only here: tokenizing must not pay for importing torch

    return torch.tensor(values, dtype=torch.long)


def _last_safe_cut(text: str) -> int:
    """The last index where the text can be cut without changing its tokens (see iter_encode); 0 if none.

    The cut goes between an ASCII letter/digit/punctuation character and a following " " or "\\n": the
    pre-tokenizer always ends a piece there, and the piece before ends in a non-space character, so the
    whitespace rule (`\\s+(?!\\S)`) decides the same way with or without what follows.
    """
    for sep in ("\n", " "):
        i = text.rfind(sep)
        while i > 0:
            before = text[i - 1]
            if before.isascii() and not before.isspace() and before.isprintable():
                return i
            i = text.rfind(sep, 0, i)
    return 0
