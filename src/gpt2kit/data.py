"""Reading and writing user files: atomic writes, so an interrupted job never leaves half a file.

Texts in (TextSource: .txt, .jsonl, .csv, .tsv, .parquet, standard input), vectors out (write_vectors:
.npy, .parquet, .jsonl), and PartStore, the finished chunks of a long job that a resumed run skips.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

# numpy and pyarrow are imported inside the functions that need them: the tokenizer imports this module
# for its atomic writes, and `gpt2kit tokenize` should not pay for either.


def file_mode(path: str | os.PathLike) -> int:
    """The mode a file written atomically over `path` gets: the old file's, else what open() would give.

    mkstemp and safetensors create files 0o600; a checkpoint or output folder must be as readable as any
    other file the user writes (0o644 under the usual umask 022), and a file the user restricted stays so.
    """
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Linux reports the umask without changing it; os.umask can only set it, which would race other
    # threads (the server, the trainer) creating files in between.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file next to `path` and move it over `path` only when the block succeeds.

    A crash or Ctrl-C inside the block leaves `path` as it was (absent or old), never half-written.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


# --- reading texts ---------------------------------------------------------------------------------------

INPUT_FORMATS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
OUTPUT_FORMATS = {".npy": "npy", ".parquet": "parquet", ".jsonl": "jsonl"}
STDIN = "-"

# Bytes that are not UTF-8 come through as lone surrogates (errors="surrogateescape"): found and repaired.
_SURROGATES = re.compile("[\udc80-\udcff]")
_NOTED_ROWS = 5  # how many row numbers a report names


def require_pyarrow():
    """pyarrow (and pyarrow.parquet), imported on first use: only parquet files need it."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ImportError(
            "reading or writing .parquet needs pyarrow: pip install pyarrow (or pip install 'gpt2kit[parquet]')"
        ) from None
    return pyarrow


def input_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The input's format: `format` if given, else from the extension; standard input is text lines."""
    formats = sorted(set(INPUT_FORMATS.values()))
    if format is not None:
        if format not in formats:
            raise ValueError(f"input format must be one of {', '.join(formats)}, got {format!r}")
        return format
    if str(path) == STDIN:
        return "txt"
    suffix = Path(path).suffix.lower()
    if suffix not in INPUT_FORMATS:
        raise ValueError(
            f"cannot tell the format of {path} from its extension {suffix or '(none)'}; use .txt (a text "
            f"per line), .jsonl, .csv, .tsv or .parquet, or name the format (--input-format)"
        )
    return INPUT_FORMATS[suffix]


def output_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(
            f"cannot write vectors to {path}: the output must end in .npy (an N x D array), .parquet "
            "(id, kept columns, vector) or .jsonl"
        )
    return OUTPUT_FORMATS[suffix]


@dataclass
class ReadReport:
    """What a TextSource met on its way: rows read, and the rows it had to repair or skip."""

    rows: int = 0
    empty: int = 0  # empty texts (kept as rows; they embed to zero vectors)
    undecodable: int = 0  # texts with bytes that are not UTF-8 (replaced by U+FFFD)
    skipped: int = 0  # blank lines of .jsonl / .csv, which are not records
    empty_rows: list[int] = field(default_factory=list)
    undecodable_rows: list[int] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        for count, rows, what in (
            (self.empty, self.empty_rows, "empty texts (zero vectors)"),
            (
                self.undecodable,
                self.undecodable_rows,
                "texts with bytes that are not UTF-8 (replaced by U+FFFD)",
            ),
        ):
            if count:
                more = ", ..." if count > len(rows) else ""
                parts.append(f"{count} {what}, rows {', '.join(map(str, rows))}{more}")
        if self.skipped:
            parts.append(f"{self.skipped} blank lines skipped")
        return "; ".join(parts)


class TextSource:
    """The texts of a file (or standard input) as rows (text, kept values), read lazily in input order.

    Formats: txt (a text per line; an empty line is an empty text), jsonl (`column` names the field),
    csv / tsv (with a header row; `column` names the column), parquet. `keep` names further fields or
    columns to carry along (for parquet / jsonl outputs). Bytes that are not UTF-8 are replaced (U+FFFD)
    and counted in `report`; rows are numbered from 0 in `report` and in ids.

    >>> src = TextSource("texts.jsonl", column="body", keep=["label"])  # doctest: +SKIP
    >>> [(text, kept) for text, kept in src][:1]  # doctest: +SKIP
    [('first text', ('pos',))]
    """

    def __init__(
        self,
        path: str | os.PathLike,
        format: str | None = None,
        column: str = "text",
        keep: Sequence[str] = (),
    ) -> None:
        self.path = str(path)
        self.format = input_format(path, format)
        self.column = column
        self.keep = tuple(keep)
        if self.path != STDIN:
            p = Path(path)
            if not p.exists():
                raise FileNotFoundError(f"input file not found: {p}")
            if p.is_dir():
                raise IsADirectoryError(f"the input {p} is a folder; pass a file (or - for standard input)")
        if self.format == "txt" and self.keep:
            raise ValueError(f"a .txt input has no columns to keep (asked for {', '.join(self.keep)})")
        if column in self.keep:
            raise ValueError(f"{column!r} is the text column; it cannot also be a kept column")
        self.report = ReadReport()
        self._consumed = False

    @property
    def name(self) -> str:
        return "standard input" if self.path == STDIN else self.path

    def describe(self) -> dict[str, Any]:
        """The input's identity for a resume manifest."""
        out: dict[str, Any] = dict(format=self.format, column=self.column, keep=list(self.keep))
        if self.path != STDIN:
            st = os.stat(self.path)
            out.update(path=str(Path(self.path).resolve()), size=st.st_size, mtime=st.st_mtime)
        return out

    def count(self) -> int | None:
        """The number of rows, by a fast pass over the file (None for standard input)."""
        if self.path == STDIN:
            return None
        if self.format == "parquet":
            return require_pyarrow().parquet.ParquetFile(self.path).metadata.num_rows
        if self.format == "txt":
            n, last = 0, b"\n"
            with open(self.path, "rb") as f:
                while block := f.read(1 << 20):
                    n += block.count(b"\n")
                    last = block[-1:]
            return n + (last != b"\n")
        return sum(1 for _ in TextSource(self.path, self.format, self.column, self.keep))

    def __iter__(self) -> Iterator[tuple[str, tuple]]:
        if self.path == STDIN:
            if self._consumed:
                raise ValueError("standard input can be read only once")
            self._consumed = True
        self.report = ReadReport()
        with self._open() as stream:
            rows = {"txt": self._txt, "jsonl": self._jsonl, "csv": self._csv, "tsv": self._csv}.get(
                self.format, self._parquet
            )(stream)
            # Close the row reader before its file: a caller that stops early (or raises) would otherwise
            # leave the reader to be finalised later, reading from a closed file.
            with contextlib.closing(rows):
                yield from self._counted(rows)

    def _counted(self, rows: Iterator[tuple[str, tuple]]) -> Iterator[tuple[str, tuple]]:
        for text, kept in rows:
            r = self.report
            if not text:
                r.empty += 1
                if len(r.empty_rows) < _NOTED_ROWS:
                    r.empty_rows.append(r.rows)
            r.rows += 1
            yield text, kept

    @contextlib.contextmanager
    def _open(self) -> Iterator[IO[bytes]]:
        if self.path == STDIN:
            yield sys.stdin.buffer
        else:
            with open(self.path, "rb") as f:
                yield f

    def _repair(self, text: str) -> str:
        """A text read with surrogateescape -> the same with each undecodable byte as U+FFFD, counted."""
        if _SURROGATES.search(text) is None:
            return text
        r = self.report
        r.undecodable += 1
        if len(r.undecodable_rows) < _NOTED_ROWS:
            r.undecodable_rows.append(r.rows)
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    def _lines(self, stream: IO[bytes]) -> Iterator[tuple[int, str]]:
        """(line number from 1, line without its line end), undecodable bytes escaped."""
        for n, raw in enumerate(stream, 1):
            yield n, raw.rstrip(b"\n").removesuffix(b"\r").decode("utf-8", "surrogateescape")

    def _txt(self, stream: IO[bytes]) -> Iterator[tuple[str, tuple]]:
        for _, line in self._lines(stream):
            yield self._repair(line), ()

    def _jsonl(self, stream: IO[bytes]) -> Iterator[tuple[str, tuple]]:
        for n, line in self._lines(stream):
            if not line.strip():
                self.report.skipped += 1
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{self.name} line {n} is not valid JSON ({e.msg}); a .jsonl file holds one JSON object a line"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(f"{self.name} line {n} is a JSON {type(record).__name__}, not an object")
            if self.column not in record:
                raise ValueError(
                    f"{self.name} line {n} has no field {self.column!r} (it has {', '.join(map(repr, record))}); "
                    "name the text field with --field"
                )
            yield self._text(record[self.column], f"line {n}"), tuple(record.get(k) for k in self.keep)

    def _text(self, value: Any, where: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ValueError(
                f"{self.name} {where}: the text {self.column!r} is a {type(value).__name__}, not a string"
            )
        return self._repair(value)

    def _csv(self, stream: IO[bytes]) -> Iterator[tuple[str, tuple]]:
        csv.field_size_limit(2**31 - 1)  # texts can be long; the default limit is 128 KiB a field
        f = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        try:
            reader = csv.reader(f, delimiter="\t" if self.format == "tsv" else ",")
            header = next(reader, None)
            if header is None:
                return
            missing = [c for c in (self.column, *self.keep) if c not in header]
            if missing:
                raise ValueError(
                    f"{self.name} has no column {missing[0]!r} (its header: {', '.join(map(repr, header))}); "
                    "name the text column with --column"
                )
            at = header.index(self.column)
            kept_at = [header.index(k) for k in self.keep]
            for row in reader:
                if not row:
                    self.report.skipped += 1
                    continue
                text = self._repair(row[at]) if at < len(row) else ""
                yield text, tuple(self._repair(row[i]) if i < len(row) else None for i in kept_at)
        finally:
            f.detach()  # the caller closes the underlying file

    def _parquet(self, stream: IO[bytes]) -> Iterator[tuple[str, tuple]]:
        pa = require_pyarrow()
        source = pa.BufferReader(stream.read()) if self.path == STDIN else self.path
        pf = pa.parquet.ParquetFile(source)
        names = pf.schema_arrow.names
        missing = [c for c in (self.column, *self.keep) if c not in names]
        if missing:
            raise ValueError(
                f"{self.name} has no column {missing[0]!r} (it has {', '.join(map(repr, names))}); "
                "name the text column with --column"
            )
        kind = pf.schema_arrow.field(self.column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ValueError(f"{self.name}: the column {self.column!r} holds {kind}, not strings")
        for batch in pf.iter_batches(batch_size=4096, columns=[self.column, *self.keep]):
            cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            for values in zip(*cols):
                yield values[0] or "", tuple(values[1:])


def chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


# --- writing vectors -------------------------------------------------------------------------------------


@dataclass
class VectorBlock:
    """Consecutive output rows: ids (n,), vectors (n, D) float32 (or n arrays (T_i, D) for per-token
    output), and kept columns {name: n values}."""

    ids: np.ndarray
    vectors: np.ndarray | list[np.ndarray]
    columns: dict[str, list[Any]] = field(default_factory=dict)


def write_vectors(
    path: str | os.PathLike, blocks: Iterable[VectorBlock] | np.ndarray, *, rows: int | None = None
) -> None:
    """Write vectors atomically as .npy (N x D), .parquet (id, kept columns, vector) or .jsonl.

    `blocks` is an (N, D) array or VectorBlocks in output order (streamed: a large output never needs
    to be in memory at once; .npy then needs `rows`, the total). A crash leaves no partial file.

    >>> write_vectors("features.parquet", np.zeros((2, 768), np.float32))  # doctest: +SKIP
    """
    import numpy as np

    fmt = output_format(path)
    if isinstance(blocks, np.ndarray):
        rows = len(blocks)
        blocks = [VectorBlock(np.arange(rows), np.asarray(blocks, np.float32))]
    {"npy": _write_npy, "jsonl": _write_jsonl, "parquet": _write_parquet}[fmt](Path(path), blocks, rows)


def _write_npy(path: Path, blocks: Iterable[VectorBlock], rows: int | None) -> None:
    import numpy as np

    blocks = iter(blocks)
    first = next(blocks, None)
    if first is not None and isinstance(first.vectors, list):
        raise ValueError(
            f"{path}: per-token vectors (pooling='none') do not fit one .npy array; write .parquet or .jsonl"
        )
    if rows is None:
        raise ValueError("writing .npy from blocks needs the total number of rows")
    dim = first.vectors.shape[1] if first is not None else 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
        at = 0
        for block in itertools.chain([first] if first is not None else [], blocks):
            out[at : at + len(block.ids)] = block.vectors
            at += len(block.ids)
        if at != rows:
            raise ValueError(f"expected {rows} rows for {path}, got {at}")
        out.flush()
        del out
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_vector(v: np.ndarray) -> str:
    # 9 significant digits read back as the same float32; repr would print 17 for the float64 it becomes.
    if v.ndim == 2:
        return "[" + ",".join(_json_vector(row) for row in v) + "]"
    return "[" + ",".join(f"{x:.9g}" for x in v.tolist()) + "]"


def _write_jsonl(path: Path, blocks: Iterable[VectorBlock], rows: int | None) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        for block in blocks:
            names = list(block.columns)
            for i, (row_id, vec) in enumerate(zip(block.ids.tolist(), block.vectors)):
                head = {"id": row_id, **{k: block.columns[k][i] for k in names}}
                f.write(
                    json.dumps(head, ensure_ascii=False)[:-1] + ', "vector": ' + _json_vector(vec) + "}\n"
                )


def _write_parquet(path: Path, blocks: Iterable[VectorBlock], rows: int | None) -> None:
    import numpy as np

    pa = require_pyarrow()
    blocks = list(blocks)  # the kept columns' types are inferred over all rows, so every row group agrees
    names = list(blocks[0].columns) if blocks else []
    types = {
        k: pa.array([v for b in blocks for v in b.columns[k]]).type if blocks else pa.string() for k in names
    }
    per_token = bool(blocks) and isinstance(blocks[0].vectors, list)
    dim = (
        (blocks[0].vectors[0].shape[-1] if per_token and blocks[0].vectors else 0)
        if per_token
        else (blocks[0].vectors.shape[1] if blocks else 0)
    )
    vec_type = pa.list_(pa.list_(pa.float32(), dim)) if per_token else pa.list_(pa.float32(), dim)
    schema = pa.schema([("id", pa.int64()), *((k, types[k]) for k in names), ("vector", vec_type)])
    with atomic_open(path, "wb") as f:
        writer = pa.parquet.ParquetWriter(f, schema)
        for b in blocks:
            if per_token:
                flat = np.concatenate(b.vectors) if b.vectors else np.zeros((0, dim), np.float32)
                tokens = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()), dim)
                offsets = np.concatenate([[0], np.cumsum([len(v) for v in b.vectors])]).astype(np.int32)
                vec = pa.ListArray.from_arrays(pa.array(offsets), tokens)
            else:
                vec = pa.FixedSizeListArray.from_arrays(pa.array(b.vectors.reshape(-1), pa.float32()), dim)
            arrays = [pa.array(b.ids, pa.int64()), *(pa.array(b.columns[k], types[k]) for k in names), vec]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
        writer.close()


def read_vectors(path: str | os.PathLike) -> np.ndarray:
    """An (N, D) float32 array from a .npy, .parquet or .jsonl file written by write_vectors."""
    import numpy as np

    fmt = output_format(path)
    if fmt == "npy":
        return np.load(path)
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            return np.array([json.loads(line)["vector"] for line in f], np.float32)
    table = require_pyarrow().parquet.read_table(path, columns=["vector"])
    return np.array(table.column("vector").to_pylist(), np.float32)


# --- resumable output ------------------------------------------------------------------------------------


def text_hash(texts: Iterable[str]) -> str:
    """A hash of a chunk's texts: a resumed run checks that its finished chunks saw the same input."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:32]


class PartStore:
    """The folder OUTPUT.parts/ of a long job: a manifest and one part file per finished chunk of rows.

    Each part is written atomically (part-K.npz, then part-K.json, which marks it finished), so a run killed
    at any moment leaves whole parts only. A resumed run checks the manifest (same settings) and each
    finished part's text hash (same input), skips those chunks, and at the end `assemble` writes OUTPUT
    atomically from the parts and removes the folder. Several processes (torchrun ranks) may write parts
    of disjoint chunks into the same folder.
    """

    MANIFEST = "manifest.json"

    def __init__(self, output: str | os.PathLike) -> None:
        self.output = Path(output)
        self.folder = self.output.with_name(self.output.name + ".parts")

    def start(self, manifest: dict[str, Any], resume: bool) -> None:
        """Create the folder, or (resume) check that it was made by the same job. One process calls this."""
        if self.folder.exists():
            if not resume:
                raise ValueError(
                    f"{self.folder} holds the finished chunks of an interrupted run; add --resume to go on from "
                    "there, or delete the folder to start over"
                )
            self._check_manifest(manifest)
            for stale in self.folder.glob(".*.tmp"):  # temporary files of a killed run
                stale.unlink(missing_ok=True)
            return
        if resume:
            logger.info("nothing to resume at %s; starting from the beginning", self.folder)
        self.folder.mkdir()
        atomic_write_text(self.folder / self.MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def _check_manifest(self, manifest: dict[str, Any]) -> None:
        path = self.folder / self.MANIFEST
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            raise ValueError(
                f"{self.folder} is not a resumable gpt2kit run (no readable {self.MANIFEST}); delete it to start over"
            ) from None
        for key in sorted(set(old) | set(manifest)):
            a, b = old.get(key), manifest.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                diffs = [
                    (f"{key}.{k}", a.get(k), b.get(k))
                    for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)
                ]
            else:
                diffs = [(key, a, b)] if a != b else []
            for name, was, now in diffs:
                if name in ("input.path", "input.size", "input.mtime"):
                    logger.warning(
                        "--resume: the input's %s changed (%s -> %s)", name.split(".")[1], was, now
                    )
                    continue
                raise ValueError(
                    f"--resume: the interrupted run used {name}={was!r}, this one {now!r}; run with the same "
                    f"settings, or delete {self.folder} to start over"
                )

    def _part(self, k: int, suffix: str) -> Path:
        return self.folder / f"part-{k:06d}{suffix}"

    def finished(self, k: int) -> dict[str, Any] | None:
        """The metadata of chunk k if its part is finished, else None."""
        meta = self._part(k, ".json")
        if not (meta.is_file() and self._part(k, ".npz").is_file()):
            return None
        return json.loads(meta.read_text(encoding="utf-8"))

    def write(self, k: int, block: VectorBlock, meta: dict[str, Any]) -> None:
        """Store chunk k's vectors; `meta` (JSON) is stored with them and marks the part finished."""
        import numpy as np

        if isinstance(block.vectors, list):
            lengths = [len(v) for v in block.vectors]
            dim = block.vectors[0].shape[1] if block.vectors else 0
            flat = np.concatenate(block.vectors) if block.vectors else np.zeros((0, dim), np.float32)
            arrays = dict(tokens=flat, offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        else:
            arrays = dict(vectors=np.asarray(block.vectors, np.float32))
        with atomic_open(self._part(k, ".npz"), "wb") as f:
            np.savez(f, ids=np.asarray(block.ids, np.int64), **arrays)
        meta = {**meta, "rows": len(block.ids), "columns": block.columns}
        atomic_write_text(self._part(k, ".json"), json.dumps(meta, ensure_ascii=False, default=str))

    def read(self, k: int) -> VectorBlock:
        import numpy as np

        meta = self.finished(k)
        if meta is None:
            raise FileNotFoundError(f"chunk {k} is not finished in {self.folder}")
        with np.load(self._part(k, ".npz")) as z:
            if "tokens" in z:
                tokens, offsets = z["tokens"], z["offsets"]
                vectors: Any = [tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            else:
                vectors = z["vectors"]
            return VectorBlock(z["ids"], vectors, meta["columns"])

    def assemble(self, n_chunks: int, rows: int) -> None:
        """Write OUTPUT from parts 0 .. n_chunks - 1 (all finished), atomically; then remove the folder."""
        missing = [k for k in range(n_chunks) if self.finished(k) is None]
        if missing:
            raise RuntimeError(f"cannot assemble {self.output}: chunks {missing[:10]} are not finished")
        write_vectors(self.output, (self.read(k) for k in range(n_chunks)), rows=rows)
        self.remove()

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
