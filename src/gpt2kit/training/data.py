"""Training data: text files -> token ids, cached on disk -> datasets the Trainer batches.

    tokenize_file(path, tok)  ->  TokenizedCorpus   (ids: one memmap of all documents' tokens, offsets)
    LMBlocks(corpora, block_size, eos_id)             packed LM blocks: doc eos doc eos ... cut every block_size
    LMRows(corpora, max_length, eos_id, pad_id)       one LM example per document, padded per batch
    ClassificationRows(corpus, max_length, pad_id)    one (text, label) example per row

A row of the input is a document: a line of a .txt file, a record of .jsonl, a row of .csv/.tsv/.parquet.
Tokenizing is done once per (file, column, tokenizer, cleaning) and kept in a cache folder beside the input
(`.gpt2kit-cache/`, or $GPT2KIT_CACHE): the next run maps the ids from disk instead of tokenizing again.
The datasets hold only the cache paths and small indexes, so they pickle cheaply into DataLoader workers
and torchrun processes, which map the same files.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import socket
import tempfile
import unicodedata
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, default_collate

from gpt2kit.data import STDIN, TextSource, input_format

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the cache layout or the cleaning rules change: old caches then miss
CACHE_ENV = "GPT2KIT_CACHE"
CACHE_FOLDER = ".gpt2kit-cache"
PARALLEL_MIN_BYTES = 8 << 20  # below this, process start-up costs more than tokenizing in-process saves
_CHUNK_ROWS = 4096  # rows per tokenizer call / per task sent to a worker process
_CHUNK_CHARS = 1 << 20
_MANIFEST = "manifest.json"


# --- cleaning ----------------------------------------------------------------------------------------------

# Control characters (Unicode Cc) other than the whitespace ones, which whitespace normalization handles.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\u2028\u2029]")
_SPACES = re.compile(r"[^\S\n]+")  # runs of whitespace within a line (tab, NBSP, U+2000..U+200A, U+3000, ...)
_SPACE_AROUND_NEWLINES = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass
class CleanReport:
    """What clean_texts changed. whitespace_normalized and unicode_normalized count rows; control_chars_removed
    counts characters; the dropped counts are rows (rows_out = rows_in - empty_dropped - duplicates_dropped)."""

    rows_in: int = 0
    rows_out: int = 0
    whitespace_normalized: int = 0
    control_chars_removed: int = 0
    empty_dropped: int = 0
    duplicates_dropped: int = 0
    unicode_normalized: int = 0  # rows changed by NFC

    def summary(self) -> str:
        parts = [f"{self.rows_in} rows in, {self.rows_out} kept"]
        for count, what in (
            (self.empty_dropped, "empty dropped"),
            (self.duplicates_dropped, "duplicates dropped"),
            (self.whitespace_normalized, "with whitespace normalized"),
            (self.control_chars_removed, "control characters removed"),
            (self.unicode_normalized, "NFC-normalized"),
        ):
            if count:
                parts.append(f"{count} {what}")
        return "; ".join(parts)


class _Cleaner:
    """clean_texts one row at a time, so that a file streams through it; remembers rows seen for dedup."""

    def __init__(self) -> None:
        self.report = CleanReport()
        self._seen: set[bytes] = set()

    def __call__(self, text: str) -> str | None:
        """The cleaned text, or None when the row is dropped (empty, or a duplicate of an earlier row)."""
        r = self.report
        r.rows_in += 1
        # NFC: the same visible text typed on different systems (é as one code point or as e + U+0301) then
        # tokenizes to the same ids and deduplicates as one row. Not NFKC: that rewrites meaning-bearing
        # characters (superscripts, full-width forms, ligatures).
        if not text.isascii():
            nfc = unicodedata.normalize("NFC", text)
            if nfc != text:
                r.unicode_normalized += 1
                text = nfc
        text, n = _CONTROL.subn("", text)
        r.control_chars_removed += n
        spaced = _normalize_whitespace(text)
        if spaced != text:
            r.whitespace_normalized += 1
        if not spaced:
            r.empty_dropped += 1
            return None
        # A 16-byte digest per row instead of the row: dedup memory stays small for corpora of many GB.
        digest = hashlib.blake2b(spaced.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in self._seen:
            r.duplicates_dropped += 1
            return None
        self._seen.add(digest)
        r.rows_out += 1
        return spaced


def _normalize_whitespace(text: str) -> str:
    """One space between words, no spaces at line ends, at most one blank line in a row, no outer space.

    Line breaks survive (paragraphs carry meaning for a language model); indentation does not, which is
    why cleaning is for prose and off by default.
    """
    text = _LINE_BREAKS.sub("\n", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINES.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def clean_texts(texts: Iterable[str]) -> tuple[list[str], CleanReport]:
    """Normalize (NFC, whitespace), drop control characters, then drop empty and duplicate rows.

    Duplicates are exact matches after cleaning; the first occurrence is kept, order is preserved.

    >>> kept, report = clean_texts(["a  b", "a b", "", "c\\x00"])
    >>> kept, report.duplicates_dropped, report.empty_dropped, report.control_chars_removed
    (['a b', 'c'], 1, 1, 1)
    """
    cleaner = _Cleaner()
    kept = [t for t in map(cleaner, texts) if t is not None]
    return kept, cleaner.report


# --- the tokenized corpus ----------------------------------------------------------------------------------


@dataclass
class TokenizedCorpus:
    """One input file tokenized: every document's ids in one array, doc i = ids[offsets[i]:offsets[i + 1]].

    `ids` is a read-only np.memmap of the cache folder's ids.bin (uint16, or uint32 for vocabularies past
    65,536 ids). `labels` holds each document's raw label (classification) or is None. `rows` maps document
    i to its row in the file when cleaning dropped rows (None: document i is row i). Pickling carries the
    folder, not the arrays: the receiving process maps the same files.
    """

    ids: np.ndarray
    offsets: np.ndarray
    labels: list[str] | None
    manifest: dict[str, Any]
    clean_report: CleanReport | None = None
    folder: Path | None = None
    rows: np.ndarray | None = None

    @classmethod
    def open(cls, folder: str | os.PathLike) -> TokenizedCorpus:
        """Map a cache folder written by tokenize_file."""
        folder = Path(folder)
        manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
        ids, offsets, rows = _map_arrays(folder, manifest)
        labels = None
        if manifest.get("label_column") is not None:
            labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
        report = manifest.get("clean_report")
        return cls(ids, offsets, labels, manifest, CleanReport(**report) if report else None, folder, rows)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def name(self) -> str:
        return str(self.manifest.get("path", "<memory>"))

    def doc(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def source_row(self, i: int) -> int:
        """The row of the input file (from 0) that document i came from."""
        return int(self.rows[i]) if self.rows is not None else i

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.folder is not None:
            state.update(ids=None, offsets=None, rows=None)  # remapped from the folder on arrival
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.folder is not None:
            self.ids, self.offsets, self.rows = _map_arrays(self.folder, self.manifest)


def _map_arrays(folder: Path, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    dtype, n = np.dtype(manifest["dtype"]), int(manifest["tokens"])
    # np.memmap refuses an empty file; a corpus of empty documents has no ids at all.
    ids = np.memmap(folder / "ids.bin", dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
    offsets = np.load(folder / "offsets.npy", mmap_mode="r")
    rows = np.load(folder / "rows.npy", mmap_mode="r") if (folder / "rows.npy").exists() else None
    return ids, offsets, rows


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides a tokenizer's ids: vocabulary, merges, added tokens, settings.

    Probe texts are encoded as well, so a tokenizer whose merges this function cannot read (another
    library's) still changes the fingerprint when its behaviour changes.
    """
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    vocab = getattr(tokenizer, "_vocab", None)  # gpt2kit's tokenizers keep merges.txt as data
    merges = getattr(vocab, "merges", None) or getattr(tokenizer, "bpe_ranks", None)
    if merges is not None:
        h.update(json.dumps([list(m) for m in merges], ensure_ascii=False).encode())
    settings = {
        k: str(getattr(tokenizer, k, None))
        for k in ("add_prefix_space", "add_bos_token", "bos_token", "eos_token", "errors")
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    probe = ["Hello world", " héllo\tWORLD  2024!\n\n", "<|endoftext|> naïve 東京 🙂 x"]
    h.update(json.dumps(_encode(tokenizer, probe)).encode())
    return h.hexdigest()[:32]


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    # verbose=False: documents longer than the model's context are expected here (packing cuts them).
    return tokenizer(texts, verbose=False)["input_ids"]


def _ids_dtype(tokenizer: Any) -> np.dtype:
    n = max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))
    return np.dtype(np.uint16 if n <= 1 << 16 else np.uint32)


def corpus_from_texts(
    texts: Sequence[str], tokenizer: Any, labels: Sequence[Any] | None = None
) -> TokenizedCorpus:
    """Texts already in Python as an in-memory TokenizedCorpus (no cache folder): for notebooks and small
    jobs. `labels` (one per text) makes it usable for ClassificationRows."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string: wrap it as [text]")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"{len(labels)} labels for {len(texts)} texts: give one label per text")
    encoded = _encode(tokenizer, list(texts))
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.fromiter((t for e in encoded for t in e), dtype=_ids_dtype(tokenizer), count=int(offsets[-1]))
    manifest = {"path": "<memory>", "docs": len(texts), "tokens": int(offsets[-1])}
    return TokenizedCorpus(ids, offsets, None if labels is None else [str(x) for x in labels], manifest)


def texts_dataset(texts: Sequence[str], tokenizer: Any, block_size: int = 128) -> LMBlocks:
    """Packed LM blocks from a list of texts: `Trainer(model, texts_dataset(texts, tok), ...)`."""
    return LMBlocks(corpus_from_texts(texts, tokenizer), block_size, eos_id=tokenizer.eos_token_id)


def cache_root(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where tokenize_file keeps the cache of `path`: cache_dir, else $GPT2KIT_CACHE, else a
    `.gpt2kit-cache/` folder beside the input, or the user cache folder when the input's folder is read-only."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    beside = Path(path).resolve().parent
    if os.access(beside, os.W_OK):
        return beside / CACHE_FOLDER
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2kit" / "tokenized"
    logger.info("%s is read-only; caching its tokens in %s", beside, user)
    return user


def tokenize_file(
    path: str | os.PathLike,
    tokenizer: Any,
    *,
    column: str = "text",
    label_column: str | None = None,
    format: str | None = None,
    clean: bool = False,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    progress: bool = False,
) -> TokenizedCorpus:
    """Tokenize a .txt / .jsonl / .csv / .tsv / .parquet file once; later calls map the cached ids.

    column: the .jsonl field / table column holding the text; label_column: the label's (classification).
    clean: clean_texts() each row first (report in .clean_report). The cache is keyed by the file's path,
    size and mtime, the columns, the cleaning flag and the tokenizer's fingerprint: a change to any of them
    tokenizes again. It is written to a temporary folder and renamed into place, so a run killed midway
    leaves nothing that loads. num_proc: processes (default: all cores for inputs over 8 MB, else one).

    >>> corpus = tokenize_file("train.txt", GPT2TokenizerFast.from_pretrained("gpt2"))  # doctest: +SKIP
    >>> len(corpus), corpus.num_tokens, corpus.doc(0)[:3]  # doctest: +SKIP
    (1000, 52311, memmap([464, 2068, 7586], dtype=uint16))
    """
    if str(path) == STDIN:
        raise ValueError("tokenize_file reads files, not standard input: save the text to a file first")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training file not found: {path}; check the path")
    fmt = input_format(path, format)
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"num_proc must be at least 1, got {num_proc}")
    if label_column is not None and fmt == "txt":
        raise ValueError(
            f"{path} is a .txt file, which has no label column; give classification data as .csv, .tsv "
            f"or .jsonl with a {label_column!r} column (--label-column)"
        )
    if label_column is not None and label_column == column:
        raise ValueError(f"the label column and the text column are both {column!r}; name two different ones")
    _check_columns(path, fmt, column, label_column)

    st = path.stat()
    key_inputs: dict[str, Any] = dict(
        version=CACHE_VERSION,
        path=str(path.resolve()),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        format=fmt,
        column=column,
        label_column=label_column,
        clean=bool(clean),
        tokenizer=tokenizer_fingerprint(tokenizer),
    )
    key = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root(path, cache_dir)
    folder = root / f"{path.name}-{key}"
    corpus = _load_cached(folder, key_inputs)
    if corpus is not None:
        logger.info(
            "%s: %d documents, %d tokens (cached in %s)", path, len(corpus), corpus.num_tokens, folder
        )
        return corpus

    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root, path.name)
    tmp = Path(
        tempfile.mkdtemp(
            dir=root, prefix=f".{path.name}-{key}.{socket.gethostname()}.{os.getpid()}.", suffix=".tmp"
        )
    )
    try:
        source = TextSource(path, format=fmt, column=column, keep=[label_column] if label_column else [])
        manifest = _write_cache(tmp, source, tokenizer, key_inputs, clean, num_proc, progress)
        try:
            os.rename(tmp, folder)
        except OSError:
            # Another process finished the same cache first (rename cannot replace a non-empty folder).
            if _load_cached(folder, key_inputs) is None:
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale(root, path.name, key_inputs, keep=folder)
    corpus = TokenizedCorpus.open(folder)
    logger.info("%s: %d documents, %d tokens (cached in %s)", path, len(corpus), manifest["tokens"], folder)
    return corpus


def _check_columns(path: Path, fmt: str, column: str, label_column: str | None) -> None:
    """Fail before any work when the text or label column is missing, naming the columns that exist."""
    if fmt == "txt":
        return
    names: list[str] | None = None
    if fmt in ("csv", "tsv"):
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            names = next(csv.reader(f, delimiter="\t" if fmt == "tsv" else ","), None)
    elif fmt == "jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            line = next((ln for ln in f if ln.strip()), None)
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line) if line is not None else None
            names = (
                list(record) if isinstance(record, dict) else None
            )  # a bad first line: TextSource says why
    elif fmt == "parquet":
        from gpt2kit.data import require_pyarrow

        names = require_pyarrow().parquet.ParquetFile(path).schema_arrow.names
    if names is None:
        return
    what = "field" if fmt == "jsonl" else "column"
    for name, flag in ((column, "--field / --text-column"), (label_column, "--label-column")):
        if name is not None and name not in names:
            raise ValueError(
                f"{path} has no {what} {name!r} (it has {', '.join(map(repr, names))}); name the right one "
                f"with {flag}"
            )


def _label_text(value: Any, path: Path, row: int, label_column: str) -> str:
    if value is None or value == "":
        raise ValueError(
            f"{path} row {row} has no label in {label_column!r}; every row of classification data needs one "
            "(fix or remove the row)"
        )
    return value if isinstance(value, str) else json.dumps(value)  # 1 -> "1", true -> "true"


def _load_cached(folder: Path, key_inputs: dict[str, Any]) -> TokenizedCorpus | None:
    """The cached corpus if `folder` holds a complete cache made from the same inputs, else None."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if any(manifest.get(k) != v for k, v in key_inputs.items()):
        return None
    ids = folder / "ids.bin"
    expected = int(manifest["tokens"]) * np.dtype(manifest["dtype"]).itemsize
    if not ids.is_file() or ids.stat().st_size != expected:
        logger.warning("the token cache %s is damaged (ids.bin has the wrong size); tokenizing again", folder)
        return None
    return TokenizedCorpus.open(folder)


def _write_cache(
    tmp: Path,
    source: TextSource,
    tokenizer: Any,
    key_inputs: dict[str, Any],
    clean: bool,
    num_proc: int | None,
    progress: bool,
) -> dict[str, Any]:
    """Tokenize `source` into the folder `tmp`: ids.bin, offsets.npy, [labels.json, rows.npy], manifest."""
    from gpt2kit.progress import progress_bar

    path = Path(source.path)
    label_column = key_inputs["label_column"]
    dtype = _ids_dtype(tokenizer)
    if num_proc is None:
        num_proc = (os.cpu_count() or 1) if key_inputs["size"] >= PARALLEL_MIN_BYTES else 1
    cleaner = _Cleaner() if clean else None
    offsets = array("q", [0])
    rows = array("q")
    labels: list[str] | None = [] if label_column else None
    n_rows = 0

    def chunks() -> Iterator[list[str]]:
        nonlocal n_rows
        texts: list[str] = []
        chars = 0
        for row, (text, kept) in enumerate(source):
            n_rows += 1
            if labels is not None:
                label = _label_text(kept[0], path, row, label_column)
            if cleaner is not None and (text := cleaner(text)) is None:
                continue
            if labels is not None:
                labels.append(label)
            rows.append(row)
            texts.append(text)
            chars += len(text)
            if len(texts) >= _CHUNK_ROWS or chars >= _CHUNK_CHARS:
                yield texts
                texts, chars = [], 0
        if texts:
            yield texts

    encoded = (
        _encode_parallel(chunks(), tokenizer, num_proc)
        if num_proc > 1
        else map(lambda texts: _encode(tokenizer, texts), chunks())
    )
    total = 0
    limit = np.iinfo(dtype).max
    with (
        open(tmp / "ids.bin", "wb") as f,
        progress_bar(desc=f"tokenizing {path.name}", unit=" rows", show=progress) as bar,
    ):
        for batch in encoded:
            flat = np.fromiter(itertools.chain.from_iterable(batch), np.int64, sum(map(len, batch)))
            if flat.size and (flat.min() < 0 or flat.max() > limit):
                raise ValueError(f"the tokenizer produced id {int(flat.max())}, which does not fit {dtype}")
            f.write(flat.astype(dtype).tobytes())
            for ids in batch:
                total += len(ids)
                offsets.append(total)
            bar.update(len(batch))
        f.flush()
        os.fsync(f.fileno())

    if n_rows == 0:
        raise ValueError(f"{path} holds no texts; give a file with at least one row")
    docs = len(offsets) - 1
    if docs == 0:
        raise ValueError(
            f"nothing is left of {path} after cleaning ({cleaner.report.summary()}); check the file or drop --clean"
        )
    _save_npy(tmp / "offsets.npy", np.frombuffer(offsets, np.int64))
    if docs != n_rows:  # cleaning dropped rows: keep the way back to row numbers for error messages
        _save_npy(tmp / "rows.npy", np.frombuffer(rows, np.int64))
    if labels is not None:
        _write_synced(tmp / "labels.json", json.dumps(labels, ensure_ascii=False).encode())
    report = source.report
    manifest = {
        **key_inputs,
        "dtype": dtype.name,
        "rows": n_rows,
        "docs": docs,
        "tokens": total,
        "undecodable_rows": report.undecodable,
        "clean_report": asdict(cleaner.report) if cleaner is not None else None,
    }
    if report.undecodable:
        logger.warning("%s: %s", path, report.summary())
    # The manifest is written last: a folder without one is never taken for a cache.
    _write_synced(tmp / _MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def _save_npy(path: Path, array_: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array_)
        f.flush()
        os.fsync(f.fileno())


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


_worker_tokenizer: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(texts: list[str]) -> list[list[int]]:
    return _encode(_worker_tokenizer, texts)


def _encode_parallel(chunks: Iterator[list[str]], tokenizer: Any, num_proc: int) -> Iterator[list[list[int]]]:
    """_encode over chunks in `num_proc` processes, results in input order, a bounded number in flight
    (Pool.imap would read the whole input ahead into memory)."""
    with multiprocessing.get_context().Pool(
        num_proc, initializer=_init_worker, initargs=(tokenizer,)
    ) as pool:
        pending: deque = deque()
        for texts in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (texts,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _remove_abandoned(root: Path, name: str) -> None:
    """Delete temporary folders of runs on this machine that died before finishing (their process is gone)."""
    host = socket.gethostname()
    for tmp in root.glob(f".{glob.escape(name)}-*.tmp"):
        parts = tmp.name[len(name) + 2 :].split(".")  # key, host..., pid, random, "tmp"
        with contextlib.suppress(ValueError, IndexError):
            pid, tmp_host = int(parts[-3]), ".".join(parts[1:-3])
            if tmp_host == host and not _alive(pid):
                shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(root: Path, name: str, key_inputs: dict[str, Any], keep: Path) -> None:
    """Delete caches of earlier versions of the same file (same path, other size or mtime): they can never
    load again. Caches of the same file under other settings (columns, tokenizer) stay."""
    for other in root.glob(f"{glob.escape(name)}-*"):
        if other == keep or not other.is_dir():
            continue
        try:
            m = json.loads((other / _MANIFEST).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if m.get("path") == key_inputs["path"] and (m.get("size"), m.get("mtime_ns")) != (
            key_inputs["size"],
            key_inputs["mtime_ns"],
        ):
            logger.info("removing the stale token cache %s (its source file has changed)", other)
            shutil.rmtree(other, ignore_errors=True)


# --- datasets ----------------------------------------------------------------------------------------------


def _as_list(corpora: TokenizedCorpus | Sequence[TokenizedCorpus]) -> list[TokenizedCorpus]:
    corpora = [corpora] if isinstance(corpora, TokenizedCorpus) else list(corpora)
    if not corpora:
        raise ValueError("no corpora given; pass at least one TokenizedCorpus (from tokenize_file)")
    return corpora


def _check_length(name: str, value: int, least: int, why: str) -> None:
    if not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer of at least {least} ({why}), got {value!r}")


def _pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D rows to (B, T) with pad_id, and the attention mask (1 on real tokens)."""
    T = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = r
        mask[b, : len(r)] = 1
    return ids, mask


def _check_index(i: int, n: int) -> int:
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} is out of range for a dataset of {n} examples")
    return i


class _Docs:
    """The non-empty documents of several corpora as flat arrays (corpus, start in ids, length)."""

    def __init__(self, corpora: list[TokenizedCorpus]) -> None:
        which, starts, lengths = [], [], []
        for c, corpus in enumerate(corpora):
            off = np.asarray(corpus.offsets, dtype=np.int64)
            n = np.diff(off)
            keep = np.flatnonzero(n > 0)  # an empty row would put two eos in a row and teach nothing
            which.append(np.full(len(keep), c, np.int32))
            starts.append(off[:-1][keep])
            lengths.append(n[keep])
        self.corpus = np.concatenate(which)
        self.start = np.concatenate(starts)
        self.length = np.concatenate(lengths)


class LMBlocks(Dataset):
    """Packed language-modelling blocks: all documents as one stream `doc eos doc eos ... doc eos`, cut into
    consecutive blocks of block_size tokens. The last, partial block is kept, padded with eos whose labels
    are -100, so no token is dropped. Empty documents are skipped. labels = input_ids (the model shifts).

    >>> ds = LMBlocks(tokenize_file("train.txt", tok), block_size=512, eos_id=tok.eos_token_id)  # doctest: +SKIP
    >>> ds[0]["input_ids"].shape, ds.num_tokens  # doctest: +SKIP
    (torch.Size([512]), 52311)
    """

    def __init__(
        self, corpora: TokenizedCorpus | Sequence[TokenizedCorpus], block_size: int, eos_id: int
    ) -> None:
        _check_length("block_size", block_size, 2, "a token and the next one to predict")
        self.corpora = _as_list(corpora)
        self.block_size = block_size
        self.eos_id = int(eos_id)
        self._index()
        if self.num_tokens == 0:
            names = ", ".join(c.name for c in self.corpora)
            raise ValueError(f"no tokens to train on: every document of {names} is empty")

    def _index(self) -> None:
        self._docs = _Docs(self.corpora)
        # Where each document begins in the stream: each earlier document adds its tokens and one eos.
        self._stream = np.concatenate([[0], np.cumsum(self._docs.length + 1)])
        self.num_tokens = int(self._stream[-1])

    def __len__(self) -> int:
        return math.ceil(self.num_tokens / self.block_size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = _check_index(i, len(self))
        s = i * self.block_size
        e = min(s + self.block_size, self.num_tokens)
        out = np.full(self.block_size, self.eos_id, dtype=np.int64)  # eos already where separators go
        d = int(np.searchsorted(self._stream, s, side="right")) - 1
        docs, pos = self._docs, s
        while pos < e:
            j = pos - int(self._stream[d])  # position within document d's tokens + its eos
            take = min(int(docs.length[d]) - j, e - pos)
            if take > 0:
                a = int(docs.start[d]) + j
                out[pos - s : pos - s + take] = self.corpora[docs.corpus[d]].ids[a : a + take]
                pos += take
            if pos < e:
                pos += 1  # the eos after document d
            d += 1
        labels = out.copy()
        labels[e - s :] = -100  # padding of the last block
        return {"input_ids": torch.from_numpy(out), "labels": torch.from_numpy(labels)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_docs"], state["_stream"]  # rebuilt from the corpora: cheaper than pickling
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._index()


class LMRows(Dataset):
    """One language-modelling example per document: its ids then eos, without packing; `collate` pads a
    batch on the right (labels -100 on pads). A document of max_length tokens or more is cut to max_length
    and gets no eos (its real end is gone); such rows are counted in `truncated_rows`. Empty ones are skipped.
    """

    def __init__(
        self,
        corpora: TokenizedCorpus | Sequence[TokenizedCorpus],
        max_length: int,
        eos_id: int,
        pad_id: int,
    ) -> None:
        _check_length("max_length", max_length, 2, "a token and the next one to predict")
        self.corpora = _as_list(corpora)
        self.max_length = max_length
        self.eos_id = int(eos_id)
        self.pad_id = int(pad_id)
        self._docs = _Docs(self.corpora)
        if len(self._docs.length) == 0:
            names = ", ".join(c.name for c in self.corpora)
            raise ValueError(f"no rows to train on: every document of {names} is empty")
        self.truncated_rows = int((self._docs.length >= max_length).sum())
        if self.truncated_rows:
            logger.warning(
                "%d of %d rows are longer than max_length %d and were truncated; raise max_length or use "
                "packing (LMBlocks) to keep them whole",
                self.truncated_rows,
                len(self),
                max_length,
            )

    def __len__(self) -> int:
        return len(self._docs.length)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = _check_index(i, len(self))
        d = self._docs
        a, n = int(d.start[i]), int(d.length[i])
        ids = self.corpora[d.corpus[i]].ids
        if n >= self.max_length:
            row = np.asarray(ids[a : a + self.max_length], dtype=np.int64)
        else:
            row = np.empty(n + 1, dtype=np.int64)
            row[:n] = ids[a : a + n]
            row[n] = self.eos_id
        return {"input_ids": torch.from_numpy(row)}

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """(B, T) input_ids, attention_mask, labels: right-padded to the longest row, labels -100 on pads."""
        ids, mask = _pad([it["input_ids"] for it in items], self.pad_id)
        # By the mask, not by value: the pad id is usually eos, which is also a real target.
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _sorted_labels(labels: Iterable[str]) -> list[str]:
    """Unique labels, numerically sorted when all look like numbers ("2" before "10"), else as strings."""
    unique = sorted(set(labels))
    try:
        return sorted(unique, key=lambda s: (float(s), s))
    except ValueError:
        return unique


class ClassificationRows(Dataset):
    """One (text, label) example per row for sequence classification; `collate` pads on the right.

    label_names: the class names in id order; None takes the corpus's labels, sorted (numerically when
    they are all numbers). Evaluation data must be built with the training data's label_names, so that an
    id means the same class in both. Texts longer than max_length keep their first max_length tokens.
    """

    def __init__(
        self,
        corpus: TokenizedCorpus,
        max_length: int,
        pad_id: int,
        label_names: Sequence[str] | None = None,
    ) -> None:
        _check_length("max_length", max_length, 1, "the longest example, in tokens")
        if corpus.labels is None:
            raise ValueError(
                f"{corpus.name} was tokenized without labels; call tokenize_file(..., label_column='label') "
                "(--label-column) for classification data"
            )
        self.corpus = corpus
        self.max_length = max_length
        self.pad_id = int(pad_id)
        lengths = np.diff(np.asarray(corpus.offsets, dtype=np.int64))
        empty = np.flatnonzero(lengths == 0)
        if len(empty):
            raise ValueError(
                f"{corpus.name} row {corpus.source_row(int(empty[0]))} has an empty text, which cannot be "
                f"classified ({len(empty)} such rows); remove them or pass clean=True (--clean)"
            )
        self.label_names = list(label_names) if label_names is not None else _sorted_labels(corpus.labels)
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"label_names has duplicates: {self.label_names}")
        self.label2id = {name: i for i, name in enumerate(self.label_names)}
        targets = []
        for i, label in enumerate(corpus.labels):
            if label not in self.label2id:
                raise ValueError(
                    f"{corpus.name} row {corpus.source_row(i)} has the label {label!r}, which is not one of "
                    f"the training labels {self.label_names}; fix the row or train with data that has it"
                )
            targets.append(self.label2id[label])
        self.targets = np.asarray(targets, dtype=np.int64)
        self.truncated_rows = int((lengths > max_length).sum())
        if self.truncated_rows:
            logger.warning(
                "%d of %d rows of %s are longer than max_length %d; only their first %d tokens are used",
                self.truncated_rows,
                len(self),
                corpus.name,
                max_length,
                max_length,
            )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, len(self))
        ids = np.asarray(self.corpus.doc(i)[: self.max_length], dtype=np.int64)
        return {"input_ids": torch.from_numpy(ids), "labels": int(self.targets[i])}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """(B, T) input_ids and attention_mask, right-padded with pad_id; labels (B,)."""
        ids, mask = _pad([it["input_ids"] for it in items], self.pad_id)
        labels = torch.tensor([it["labels"] for it in items], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class DatasetSplit(Subset):
    """A Subset that keeps its dataset's `collate` (padding), so the Trainer batches it the same way."""

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        collate = getattr(self.dataset, "collate", None)
        return collate(items) if collate is not None else default_collate(items)


def split_eval(dataset: Dataset, fraction: float, seed: int) -> tuple[DatasetSplit, DatasetSplit]:
    """(train, eval): a random `fraction` of the examples held out for evaluation, the same for the same seed.

    >>> train, held_out = split_eval(LMBlocks(corpus, 512, eos), 0.05, seed=42)  # doctest: +SKIP
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the eval fraction must be between 0 and 1 (e.g. 0.05), got {fraction}")
    n = len(dataset)
    n_eval = max(1, round(n * fraction))
    if n_eval >= n:
        raise ValueError(
            f"cannot hold out {fraction} of {n} examples and keep any to train on; use a smaller fraction or "
            "give evaluation files"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    # Sorted: reads of a memmap go in file order, and the Trainer shuffles the training part itself.
    return DatasetSplit(dataset, sorted(perm[n_eval:])), DatasetSplit(dataset, sorted(perm[:n_eval]))


__all__ = [
    "CleanReport",
    "ClassificationRows",
    "DatasetSplit",
    "LMBlocks",
    "LMRows",
    "TokenizedCorpus",
    "clean_texts",
    "split_eval",
    "tokenize_file",
    "tokenizer_fingerprint",
]
