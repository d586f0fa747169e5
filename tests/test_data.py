"""gpt2kit.data: reading texts from every input format, writing vectors to every output format, the parts
folder that makes long runs resumable, and atomic writes."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

from gpt2kit import data
from gpt2kit.data import PartStore, TextSource, VectorBlock, read_vectors, write_vectors

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402


def rows(src: TextSource) -> list[tuple[str, tuple]]:
    return list(src)


# --- reading ---------------------------------------------------------------------------------------------


def test_txt_lines_empty_lines_crlf_and_bad_bytes(tmp_path):
    p = tmp_path / "in.txt"
    p.write_bytes(b"first\r\n\nbad \xff\xfe bytes\n  spaced  \nlast without newline")
    src = TextSource(p)
    assert rows(src) == [
        ("first", ()),
        ("", ()),
        ("bad \ufffd\ufffd bytes", ()),
        ("  spaced  ", ()),
        ("last without newline", ()),
    ]
    r = src.report
    assert (r.rows, r.empty, r.undecodable) == (5, 1, 1)
    assert r.empty_rows == [1] and r.undecodable_rows == [2]
    assert "rows 1" in r.summary() and "rows 2" in r.summary()
    assert src.count() == 5
    p.write_bytes(b"a\nb\n")
    assert TextSource(p).count() == 2 == len(rows(TextSource(p)))
    p.write_bytes(b"")
    assert TextSource(p).count() == 0 == len(rows(TextSource(p)))


def test_jsonl(tmp_path):
    p = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"body": "one", "label": 1}),
        "",
        json.dumps({"body": None, "label": 2}),
        json.dumps({"body": "ünï", "other": True}),
    ]
    p.write_bytes(("\n".join(lines) + "\n").encode() + b'{"body": "raw \xff byte", "label": 4}\n')
    src = TextSource(p, column="body", keep=["label"])
    assert rows(src) == [("one", (1,)), ("", (2,)), ("ünï", (None,)), ("raw \ufffd byte", (4,))]
    assert (src.report.skipped, src.report.empty, src.report.undecodable) == (1, 1, 1)
    assert src.count() == 4

    p.write_text('{"body": "ok"}\n{"text": "no body"}\n')
    with pytest.raises(ValueError, match=r"line 2 has no field 'body' \(it has 'text'\).*--field"):
        rows(TextSource(p, column="body"))
    p.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        rows(TextSource(p))
    p.write_text('{"text": 42}\n')
    with pytest.raises(ValueError, match="line 1: the text 'text' is a int, not a string"):
        rows(TextSource(p))
    p.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="line 1 is a JSON list, not an object"):
        rows(TextSource(p))


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_and_tsv(tmp_path, fmt):
    sep = "," if fmt == "csv" else "\t"
    p = tmp_path / f"in.{fmt}"
    body = (
        f"id{sep}text{sep}label\n"
        f'1{sep}"a text, with a comma\nand a newline"{sep}pos\n'
        f"\n"
        f"2{sep}{sep}neg\n"
        f"3{sep}short row\n"
    )
    p.write_bytes(b"\xef\xbb\xbf" + body.encode() + f"4{sep}bad \xff{sep}x\n".encode("latin-1"))
    src = TextSource(p, keep=["label", "id"])
    assert rows(src) == [
        ("a text, with a comma\nand a newline", ("pos", "1")),
        ("", ("neg", "2")),
        ("short row", (None, "3")),
        ("bad \ufffd", ("x", "4")),
    ]
    assert (src.report.skipped, src.report.empty, src.report.undecodable) == (1, 1, 1)
    assert src.count() == 4
    with pytest.raises(
        ValueError, match=r"has no column 'body' \(its header: 'id', 'text', 'label'\).*--column"
    ):
        rows(TextSource(p, column="body"))
    assert rows(TextSource(p, column="label"))[0] == ("pos", ())


def test_csv_long_fields(tmp_path):
    p = tmp_path / "long.csv"
    long = "word " * 100_000  # 500 kB: over csv's default field limit
    p.write_text(f'text\n"{long}"\n')
    assert rows(TextSource(p)) == [(long, ())]


def test_parquet(tmp_path):
    p = tmp_path / "in.parquet"
    table = pa.table({"text": ["a", None, "ünï", ""], "label": [1, 2, 3, 4], "x": [0.5, 1.5, 2.5, 3.5]})
    pq.write_table(table, p, row_group_size=2)
    src = TextSource(p, keep=["label", "x"])
    assert rows(src) == [("a", (1, 0.5)), ("", (2, 1.5)), ("ünï", (3, 2.5)), ("", (4, 3.5))]
    assert src.report.empty == 2 and src.count() == 4
    with pytest.raises(ValueError, match="has no column 'body'"):
        rows(TextSource(p, column="body"))
    with pytest.raises(ValueError, match="the column 'label' holds int64, not strings"):
        rows(TextSource(p, column="label"))


def test_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\n\ntwo \xff\n")))
    src = TextSource("-")
    assert src.format == "txt" and src.name == "standard input" and src.count() is None
    assert rows(src) == [("one", ()), ("", ()), ("two \ufffd", ())]
    with pytest.raises(ValueError, match="only once"):
        rows(src)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"t": "x"}\n')))
    assert rows(TextSource("-", format="jsonl", column="t")) == [("x", ())]


def test_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="input file not found: .*missing.txt"):
        TextSource(tmp_path / "missing.txt")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        TextSource(tmp_path, format="txt")
    (tmp_path / "in.docx").write_text("x")
    with pytest.raises(ValueError, match=r"cannot tell the format .* \.docx.*--input-format"):
        TextSource(tmp_path / "in.docx")
    assert TextSource(tmp_path / "in.docx", format="txt").format == "txt"
    (tmp_path / "in.txt").write_text("x")
    with pytest.raises(ValueError, match="a .txt input has no columns to keep"):
        TextSource(tmp_path / "in.txt", keep=["label"])
    with pytest.raises(ValueError, match="must end in .npy"):
        data.output_format(tmp_path / "out.csv")


def test_chunks():
    assert list(data.chunks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(data.chunks([], 3)) == []


# --- writing ---------------------------------------------------------------------------------------------


def blocks(per_token=False):
    rng = np.random.default_rng(0)
    if per_token:
        vecs = [rng.standard_normal((n, 4)).astype(np.float32) for n in (3, 0, 2)]
        return [VectorBlock(np.arange(3), vecs, {"label": ["a", "b", None]})]
    return [
        VectorBlock(np.arange(0, 2), rng.standard_normal((2, 4)).astype(np.float32), {"label": ["a", None]}),
        VectorBlock(
            np.arange(2, 5), rng.standard_normal((3, 4)).astype(np.float32), {"label": ["c", "d", "e"]}
        ),
    ]


@pytest.mark.parametrize("fmt", ["npy", "parquet", "jsonl"])
def test_write_and_read_vectors(tmp_path, fmt):
    bs = blocks()
    want = np.concatenate([b.vectors for b in bs])
    out = tmp_path / f"out.{fmt}"
    write_vectors(out, iter(bs), rows=5)
    got = read_vectors(out)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)  # float32 survives every format exactly
    if fmt == "parquet":
        t = pq.read_table(out)
        assert t.column_names == ["id", "label", "vector"]
        assert t.column("id").to_pylist() == [0, 1, 2, 3, 4]
        assert t.column("label").to_pylist() == ["a", None, "c", "d", "e"]
        kind = t.schema.field("vector").type
        assert pa.types.is_fixed_size_list(kind) and kind.list_size == 4 and kind.value_type == pa.float32()
    if fmt == "jsonl":
        first = json.loads(out.read_text().splitlines()[0])
        assert list(first) == ["id", "label", "vector"] and first["id"] == 0
    assert list(tmp_path.iterdir()) == [out]  # no temporary files left
    write_vectors(tmp_path / f"plain.{fmt}", want)
    np.testing.assert_array_equal(read_vectors(tmp_path / f"plain.{fmt}"), want)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_per_token_vectors(tmp_path, fmt):
    (b,) = blocks(per_token=True)
    out = tmp_path / f"out.{fmt}"
    write_vectors(out, [b])
    if fmt == "parquet":
        got = pq.read_table(out).column("vector").to_pylist()
    else:
        got = [json.loads(line)["vector"] for line in out.read_text().splitlines()]
    for g, w in zip(got, b.vectors):
        np.testing.assert_array_equal(np.array(g, np.float32).reshape(-1, 4), w)
    with pytest.raises(ValueError, match="per-token vectors .* do not fit one .npy"):
        write_vectors(tmp_path / "out.npy", [b], rows=3)


def test_failed_write_leaves_nothing(tmp_path):
    def broken():
        yield blocks()[0]
        raise KeyboardInterrupt

    for fmt in ("npy", "parquet", "jsonl"):
        out = tmp_path / f"out.{fmt}"
        with pytest.raises(KeyboardInterrupt):
            write_vectors(out, broken(), rows=5)
        assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old.npy"
    np.save(old, np.ones((1, 4), np.float32))
    with pytest.raises(KeyboardInterrupt):
        write_vectors(old, broken(), rows=5)
    np.testing.assert_array_equal(np.load(old), np.ones((1, 4)))  # the old file is untouched


# --- resume ----------------------------------------------------------------------------------------------


MANIFEST = dict(version=1, input=dict(format="txt", path="/x/in.txt", size=10), options=dict(pooling="mean"))


def test_part_store_round_trip(tmp_path):
    out = tmp_path / "out.parquet"
    store = PartStore(out)
    store.start(MANIFEST, resume=False)
    assert store.folder == tmp_path / "out.parquet.parts" and store.folder.is_dir()
    bs = blocks()
    assert store.finished(0) is None
    for k, b in enumerate(bs):
        store.write(k, b, dict(hash=f"h{k}"))
    assert store.finished(1)["hash"] == "h1" and store.finished(1)["rows"] == 3
    back = store.read(1)
    np.testing.assert_array_equal(back.vectors, bs[1].vectors)
    assert back.columns == {"label": ["c", "d", "e"]}
    store.assemble(2, 5)
    assert not store.folder.exists()
    np.testing.assert_array_equal(read_vectors(out), np.concatenate([b.vectors for b in bs]))


def test_part_store_per_token(tmp_path):
    store = PartStore(tmp_path / "o.jsonl")
    store.start(MANIFEST, resume=False)
    (b,) = blocks(per_token=True)
    store.write(0, b, {})
    back = store.read(0)
    assert [v.shape for v in back.vectors] == [(3, 4), (0, 4), (2, 4)]


def test_part_store_resume_rules(tmp_path, caplog):
    store = PartStore(tmp_path / "out.npy")
    store.start(MANIFEST, resume=False)
    with pytest.raises(ValueError, match="interrupted run; add --resume.*or delete the folder"):
        PartStore(tmp_path / "out.npy").start(MANIFEST, resume=False)
    changed = {**MANIFEST, "options": dict(pooling="max")}
    with pytest.raises(ValueError, match="used options.pooling='mean', this one 'max'"):
        PartStore(tmp_path / "out.npy").start(changed, resume=True)
    moved = {**MANIFEST, "input": dict(format="txt", path="/y/in.txt", size=10)}
    (store.folder / ".part-000001.npz.abc.tmp").write_bytes(b"half")  # left by kill -9
    PartStore(tmp_path / "out.npy").start(moved, resume=True)  # a moved input only warns
    assert "input's path changed" in caplog.text
    assert not list(store.folder.glob(".*.tmp"))
    (store.folder / "manifest.json").unlink()
    with pytest.raises(ValueError, match="not a resumable gpt2kit run"):
        PartStore(tmp_path / "out.npy").start(MANIFEST, resume=True)


def test_text_hash():
    assert data.text_hash(["a", "b"]) == data.text_hash(["a", "b"])
    assert data.text_hash(["a", "b"]) != data.text_hash(["ab"])
    assert data.text_hash(["a", "b"]) != data.text_hash(["a", "c"])


def test_pyarrow_stays_optional(tmp_path, monkeypatch):
    """Without pyarrow every other format works, and parquet says how to install it."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    out = tmp_path / "o.npy"
    write_vectors(out, np.zeros((2, 3), np.float32))
    with pytest.raises(ImportError, match="pip install pyarrow"):
        write_vectors(tmp_path / "o.parquet", np.zeros((2, 3), np.float32))
    (tmp_path / "in.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match="gpt2kit\\[parquet\\]"):
        rows(TextSource(tmp_path / "in.parquet"))


def test_importing_data_stays_light():
    """The tokenizer imports gpt2kit.data for atomic writes: that must not drag in numpy or pyarrow."""
    import subprocess

    code = "import sys, gpt2kit.data; print('numpy' in sys.modules, 'pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
