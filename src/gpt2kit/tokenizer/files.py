"""Tokenizer files on disk: find them, read them into plain data, write them so that transformers loads them.

A GPT-2 tokenizer folder holds the vocabulary as vocab.json + merges.txt (the original format) and/or
tokenizer.json (the `tokenizers` library's single file), and its settings in tokenizer_config.json, with
older folders adding special_tokens_map.json and added_tokens.json. Which file wins follows transformers
4.57: explicit keyword arguments, then tokenizer_config.json (which, when it lists `added_tokens_decoder`,
is complete on its own), then the legacy special_tokens_map.json and added_tokens.json.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2kit import hub
from gpt2kit.data import atomic_write_text

logger = logging.getLogger(__name__)

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
ALL_FILES = (VOCAB_FILE, MERGES_FILE, TOKENIZER_FILE, CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, ADDED_TOKENS_FILE)

# transformers' sentinel for "no limit" (int(1e30)), kept so that saved configs compare equal.
VERY_LARGE_INTEGER = int(1e30)
# What the hub's tokenizer_config.json says for every released GPT-2 checkpoint.
GPT2_DEFAULTS: dict[str, Any] = {"model_max_length": 1024}

SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# tokenizer_config.json keys a tokenizer's constructor uses.
CONFIG_KEYS = frozenset(
    [
        *SPECIAL_TOKEN_NAMES,
        "additional_special_tokens",
        "errors",
        "add_prefix_space",
        "add_bos_token",
        "model_max_length",
        "padding_side",
        "truncation_side",
        "clean_up_tokenization_spaces",
    ]
)
# tokenizer_config.json keys that describe the files, not the tokenizer: never passed to a constructor (and
# never written back from init_kwargs). Every other unknown key is kept in init_kwargs, as transformers does.
BOOKKEEPING_KEYS = frozenset(
    ["tokenizer_class", "added_tokens_decoder", "name_or_path", "special_tokens_map_file", "tokenizer_file",
     "vocab_file", "merges_file", "init_inputs", "max_len", "cache_dir"]
)  # fmt: skip
# Tokenizer classes whose files this package reads correctly: GPT-2's own, and a bare tokenizer.json, whose
# structure read_tokenizer_json checks.
KNOWN_CLASSES = (None, "GPT2Tokenizer", "GPT2TokenizerFast", "PreTrainedTokenizerFast")


@dataclass
class AddedToken:
    """A token matched in the text before BPE runs, as transformers' AddedToken: `<|endoftext|>`, a pad token.

    `lstrip`/`rstrip` make the token swallow the whitespace on that side; `special` tokens are the ones
    `skip_special_tokens=True` drops when decoding. `normalized` and `single_word` are kept for the files.

    >>> AddedToken("<pad>", special=True)
    AddedToken('<pad>', special=True)
    """

    content: str
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = True
    special: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.content, str) or not self.content:
            raise ValueError(f"an added token must be a non-empty str, got {self.content!r}")

    def __str__(self) -> str:
        return self.content

    def __repr__(self) -> str:
        flags = "".join(
            f", {name}={getattr(self, name)!r}"
            for name, default in (("lstrip", False), ("rstrip", False), ("special", False))
            if getattr(self, name) != default
        )
        return f"AddedToken({self.content!r}{flags})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "lstrip": self.lstrip,
            "normalized": self.normalized,
            "rstrip": self.rstrip,
            "single_word": self.single_word,
            "special": self.special,
        }

    @classmethod
    def coerce(cls, value: Any, *, special: bool, normalized: bool | None = None) -> AddedToken:
        """A str, a dict from a config file, or an AddedToken (ours or transformers') as our AddedToken."""
        if isinstance(value, str):
            return cls(value, special=special, normalized=not special if normalized is None else normalized)
        if isinstance(value, dict):
            known = {"content", "single_word", "lstrip", "rstrip", "normalized", "special"}
            fields_ = {k: v for k, v in value.items() if k in known}
            fields_.setdefault("special", special)
            return cls(**fields_)
        if hasattr(value, "content"):  # ours, or transformers.AddedToken (duck-typed: no import)
            return cls(
                value.content,
                single_word=getattr(value, "single_word", False),
                lstrip=getattr(value, "lstrip", False),
                rstrip=getattr(value, "rstrip", False),
                normalized=getattr(value, "normalized", not special),
                special=getattr(value, "special", special) or special,
            )
        raise TypeError(f"a token must be a str or an AddedToken, got {type(value).__name__}: {value!r}")


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """vocab.json and merges.txt as data. Shared between tokenizers loaded from the same files: never mutate."""

    encoder: dict[str, int]
    merges: list[tuple[str, str]]


@dataclass
class TokenizerSource:
    """Everything a tokenizer folder says, ready to be passed to a tokenizer's constructor."""

    vocab: Vocabulary
    settings: dict[str, Any] = field(default_factory=dict)  # constructor keyword arguments
    added_tokens: dict[int, AddedToken] = field(default_factory=dict)


# --- reading --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-download or re-save the tokenizer") from None


def read_vocab_json(path: str | os.PathLike) -> dict[str, int]:
    vocab = _read_json(Path(path))
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ValueError(f"{path} must be a JSON object mapping token strings to integer ids")
    return vocab


def parse_merges(lines: list[str], source: str) -> list[tuple[str, str]]:
    """merges.txt lines -> pairs. The `#version` header and blank lines are skipped, as `tokenizers` does.

    (transformers' slow reader instead drops the first and last line unconditionally, which loses a merge
    when a file has no header or no final newline; well-formed files read the same either way.)
    """
    merges = []
    for n, line in enumerate(lines, 1):
        if (n == 1 and line.startswith("#version")) or not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source} line {n}: a merge is two tokens separated by a space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def read_merges_txt(path: str | os.PathLike) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        return parse_merges(f.read().split("\n"), str(path))


def _stat_key(*paths: str | os.PathLike) -> tuple:
    key = []
    for p in paths:
        st = os.stat(p)
        key += [os.path.realpath(p), st.st_mtime_ns, st.st_size]
    return tuple(key)


@functools.lru_cache(maxsize=8)
def _load_vocabulary_cached(vocab_file: str, merges_file: str, _key: tuple) -> Vocabulary:
    return Vocabulary(read_vocab_json(vocab_file), read_merges_txt(merges_file))


def load_vocabulary(vocab_file: str | os.PathLike, merges_file: str | os.PathLike) -> Vocabulary:
    """Read vocab.json + merges.txt, once per file version (tokenizers from the same files share it)."""
    for path, what in ((vocab_file, "vocab_file"), (merges_file, "merges_file")):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{what} {str(path)!r} does not exist; pass the path of a GPT-2 {what[:-5]} file"
            )
    return _load_vocabulary_cached(str(vocab_file), str(merges_file), _stat_key(vocab_file, merges_file))


def load_bundled() -> Vocabulary:
    """GPT-2's own vocabulary, shipped inside the package (see tokenizer/gpt2/SOURCE.md)."""
    return load_vocabulary(hub.BUNDLED_VOCAB_DIR / VOCAB_FILE, hub.BUNDLED_VOCAB_DIR / MERGES_FILE)


def read_tokenizer_json(path: str | os.PathLike) -> TokenizerSource:
    """A `tokenizers` tokenizer.json -> vocabulary, added tokens and settings; only GPT-2-style files pass.

    GPT-2-style means a BPE model behind the plain ByteLevel pre-tokenizer (GPT-2's regex) with no
    normalizer: other byte-level BPE tokenizers (Llama 3, Qwen...) split text with other regexes, and
    reading them as GPT-2 would silently give wrong ids.
    """
    data = _read_json(Path(path))
    model = data.get("model") or {}

    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: {what}; gpt2kit reads GPT-2-style byte-level BPE tokenizers only")

    if model.get("type", "BPE") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise bad(f"the model is {model.get('type')!r}, not a BPE with a vocab")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise bad(f"model.{key} is {model[key]!r}")
    if model.get("byte_fallback") or model.get("dropout") or model.get("ignore_merges"):
        raise bad("the BPE model uses byte_fallback, dropout or ignore_merges")
    if data.get("normalizer") is not None:
        raise bad(f"it has a normalizer ({data['normalizer'].get('type')})")
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise bad(f"the pre-tokenizer is {pre.get('type')!r}, not GPT-2's ByteLevel with its regex")

    raw_merges = model.get("merges") or []
    # Older files write a merge as "a b", newer ones as ["a", "b"].
    if raw_merges and isinstance(raw_merges[0], str):
        merges = parse_merges(raw_merges, str(path))
    else:
        merges = [(a, b) for a, b in raw_merges]
    vocab = Vocabulary(dict(model["vocab"]), merges)

    added = {}
    for entry in data.get("added_tokens") or []:
        entry = dict(entry)
        added[int(entry.pop("id"))] = AddedToken.coerce(entry, special=bool(entry.get("special")))

    settings: dict[str, Any] = {"add_prefix_space": bool(pre.get("add_prefix_space", False))}
    post = data.get("post_processor") or {}
    if post.get("type") == "TemplateProcessing":
        first = (post.get("single") or [{}])[0]
        if "SpecialToken" in first:  # "<bos> $A": the converter's spelling of add_bos_token=True
            settings["add_bos_token"] = True
    return TokenizerSource(vocab, settings, added)


def _token_setting(value: Any) -> Any:
    """A special token as config files spell it (str, or a dict with "content") -> str or AddedToken."""
    if isinstance(value, dict):
        return AddedToken.coerce(value, special=True)
    return value


def read_folder(folder: Path) -> TokenizerSource:
    """Read a tokenizer folder: vocab.json + merges.txt (or tokenizer.json), then its settings files."""
    files = {name: folder / name for name in ALL_FILES if (folder / name).is_file()}
    if VOCAB_FILE in files and MERGES_FILE in files:
        source = TokenizerSource(load_vocabulary(files[VOCAB_FILE], files[MERGES_FILE]))
        from_json = None
    elif TOKENIZER_FILE in files:
        source = from_json = read_tokenizer_json(files[TOKENIZER_FILE])
    else:
        raise FileNotFoundError(
            f"{folder} holds no GPT-2 tokenizer: expected {VOCAB_FILE} and {MERGES_FILE}, or {TOKENIZER_FILE} "
            f"(found: {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'})"
        )

    config = _read_json(files[CONFIG_FILE]) if CONFIG_FILE in files else {}
    if not isinstance(config, dict):
        raise ValueError(f"{files[CONFIG_FILE]} must hold a JSON object")
    tokenizer_class = config.get("tokenizer_class")
    if tokenizer_class not in KNOWN_CLASSES:
        raise ValueError(
            f"{folder} holds a {tokenizer_class} (tokenizer_config.json), not a GPT-2 tokenizer; "
            "gpt2kit only reads GPT2Tokenizer / GPT2TokenizerFast folders"
        )
    settings = {k: v for k, v in config.items() if k not in CONFIG_KEYS and k not in BOOKKEEPING_KEYS}
    settings.update(source.settings)
    settings.update({k: _token_setting(v) for k, v in config.items() if k in CONFIG_KEYS})
    from gpt2kit.tokenizer import chat

    templates = chat.read_folder(
        folder
    )  # transformers 4.57 writes them to files, older versions to the config
    if templates is not None:
        settings["chat_template"] = templates
    if "model_max_length" not in config and "max_len" in config:  # transformers < 3 spelling
        settings["model_max_length"] = config["max_len"]

    added = dict(source.added_tokens)
    if "added_tokens_decoder" in config:
        for idx, token in config["added_tokens_decoder"].items():
            added[int(idx)] = AddedToken.coerce(token, special=bool(token.get("special")))
    else:
        # Legacy folders: special_tokens_map.json overrides the config, added_tokens.json lists new tokens,
        # and a tokenizer.json next to vocab.json contributes its added tokens (as transformers reads them).
        if SPECIAL_TOKENS_MAP_FILE in files:
            special_map = _read_json(files[SPECIAL_TOKENS_MAP_FILE])
            settings.update({k: _token_setting(v) for k, v in special_map.items() if k in CONFIG_KEYS})
        if ADDED_TOKENS_FILE in files:
            specials = {str(settings.get(name)) for name in SPECIAL_TOKEN_NAMES if settings.get(name)}
            specials |= {str(t) for t in settings.get("additional_special_tokens") or []}
            for content, idx in _read_json(files[ADDED_TOKENS_FILE]).items():
                added[int(idx)] = AddedToken.coerce(content, special=content in specials)
        if from_json is None and TOKENIZER_FILE in files:
            added.update(read_tokenizer_json(files[TOKENIZER_FILE]).added_tokens)
    return TokenizerSource(source.vocab, settings, added)


def resolve(
    name_or_path: str | os.PathLike, *, local_files_only: bool = False, revision: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """The folder to read a tokenizer from, and defaults for what its files leave unsaid.

    Order: an existing folder; a GPT-2 name (the vocabulary bundled in this package, no network); a
    snapshot in the local Hugging Face cache; a download of the tokenizer files only (when online and
    huggingface_hub is installed, unless local_files_only).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"from_pretrained takes a name or a folder path, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path, {}
    name = str(name_or_path)
    if name in hub.GPT2_NAMES:
        return hub.BUNDLED_VOCAB_DIR, dict(GPT2_DEFAULTS)
    folder = hub.find_model_dir(name, local_files_only=local_files_only, revision=revision, required=False)
    if folder is not None and _has_vocabulary(folder):
        return folder, {}
    if not local_files_only and not path.exists() and not hub.looks_like_path(name):
        folder = hub.download(name, revision, allow_patterns=list(ALL_FILES))
        if folder is not None and _has_vocabulary(folder):
            return folder, {}
    raise FileNotFoundError(
        hub.not_found_message(name, [VOCAB_FILE, MERGES_FILE]) + f" (or {TOKENIZER_FILE})"
    )


def _has_vocabulary(folder: Path) -> bool:
    return ((folder / VOCAB_FILE).is_file() and (folder / MERGES_FILE).is_file()) or (
        folder / TOKENIZER_FILE
    ).is_file()


# --- writing --------------------------------------------------------------------------------------------


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def tokenizer_json(
    vocab: Vocabulary,
    added: dict[int, AddedToken],
    *,
    add_prefix_space: bool,
    bos_token: str | None,
    bos_id: int | None,
) -> dict[str, Any]:
    """The `tokenizers` tokenizer.json that transformers' GPT2TokenizerFast builds from the same settings."""
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": True,
        "use_regex": True,
    }
    if bos_token is not None:  # add_bos_token: what transformers' GPT2Converter writes
        bos = {"SpecialToken": {"id": bos_token, "type_id": 0}}
        post: dict[str, Any] = {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_token: {"id": bos_token, "ids": [bos_id], "tokens": [bos_token]}},
        }
    else:
        post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, **added[i].to_dict()} for i in sorted(added)],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab.encoder,
            "merges": [f"{a} {b}" for a, b in vocab.merges],
        },
    }


def write_folder(
    folder: str | os.PathLike,
    vocab: Vocabulary,
    added: dict[int, AddedToken],
    config: dict[str, Any],
    special_tokens_map: dict[str, Any],
    tokenizer_json_data: dict[str, Any] | None,
    vocab_files: bool = True,
) -> tuple[str, ...]:
    """Write the tokenizer files (each one atomically); returns their paths in transformers' order.

    The config files always; vocab.json, merges.txt and added_tokens.json (tokens beyond vocab.json, if any)
    with `vocab_files`; tokenizer.json when its data is given.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save_pretrained needs a folder, but {folder} is a file; pass a folder path")
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {
        CONFIG_FILE: _dump(
            {**config, "added_tokens_decoder": {str(i): added[i].to_dict() for i in sorted(added)}}
        ),
        SPECIAL_TOKENS_MAP_FILE: _dump(special_tokens_map),
    }
    if vocab_files:
        outputs[VOCAB_FILE] = _dump(vocab.encoder)
        outputs[MERGES_FILE] = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in vocab.merges)
        beyond = {t.content: i for i, t in added.items() if t.content not in vocab.encoder}
        if beyond:
            outputs[ADDED_TOKENS_FILE] = _dump(beyond)
    if tokenizer_json_data is not None:
        outputs[TOKENIZER_FILE] = json.dumps(tokenizer_json_data, ensure_ascii=False, indent=2) + "\n"
    paths = []
    for name, text in outputs.items():
        atomic_write_text(folder / name, text)
        paths.append(str(folder / name))
    return tuple(paths)
