"""Training data: cleaning counts, the token cache (hit, atomic, stale), parallel tokenizing, packing, rows,
classification labels, the eval split, and the errors a user meets."""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket

import numpy as np
import pytest
import torch

from gpt2kit import GPT2TokenizerFast
from gpt2kit.training import data
from gpt2kit.training.data import (
    ClassificationRows,
    CleanReport,
    LMBlocks,
    LMRows,
    TokenizedCorpus,
    clean_texts,
    split_eval,
    tokenize_file,
)

EOS = 50256


@pytest.fixture(scope="module")
def tok():
    return GPT2TokenizerFast.from_pretrained("gpt2")


def corpus(docs: list[list[int]], labels: list[str] | None = None) -> TokenizedCorpus:
    """An in-memory corpus of the given documents (no cache folder)."""
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    ids = np.array([t for d in docs for t in d], dtype=np.uint16)
    return TokenizedCorpus(ids, offsets, labels, {"path": "mem"})


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# --- cleaning --------------------------------------------------------------------------------------------


def test_clean_texts_counts_each_change():
    texts = [
        "Hello   world ",  # whitespace
        "Hello world",  # duplicate of the first after cleaning
        "   ",  # empty after cleaning
        "",  # empty
        "tab\there\x00\x07",  # 2 control characters + a tab
        "cafe\u0301",  # NFD -> NFC "café"
        "café",  # then a duplicate
        "para one  \r\n\r\n\r\n\r\npara\u00a0two",  # CRLF, blank lines collapsed to one, NBSP
        "kept as is",
    ]
    kept, r = clean_texts(texts)
    assert kept == ["Hello world", "tab here", "café", "para one\n\npara two", "kept as is"]
    assert r == CleanReport(
        rows_in=9,
        rows_out=5,
        whitespace_normalized=4,  # rows 0, 2, 4, 7
        control_chars_removed=2,
        empty_dropped=2,
        duplicates_dropped=2,
        unicode_normalized=1,
    )
    assert r.summary().startswith("9 rows in, 5 kept; 2 empty dropped; 2 duplicates dropped")


# --- tokenize_file and its cache ---------------------------------------------------------------------------


def test_txt_rows_ids_offsets_and_manifest(tmp_path, tok):
    lines = ["Hello world", "", "A second, longer line of text.", "ünïcödé 🙂"]
    path = write(tmp_path / "a.txt", "\n".join(lines) + "\n")
    c = tokenize_file(path, tok)
    assert len(c) == 4 and c.labels is None and c.clean_report is None
    assert [c.doc(i).tolist() for i in range(4)] == tok(lines)["input_ids"]
    assert c.ids.dtype == np.uint16 and isinstance(c.ids, np.memmap)
    assert c.offsets.dtype == np.int64 and c.offsets[-1] == c.num_tokens == len(c.ids)
    m = c.manifest
    assert m["path"] == str(path.resolve()) and m["size"] == path.stat().st_size
    assert (m["format"], m["column"], m["clean"], m["docs"], m["tokens"]) == (
        "txt",
        "text",
        False,
        4,
        c.num_tokens,
    )
    assert c.folder.parent == tmp_path / ".gpt2kit-cache"


def test_second_run_loads_the_cache_without_tokenizing(tmp_path, tok, monkeypatch):
    path = write(tmp_path / "a.txt", "one\ntwo three\n")
    first = tokenize_file(path, tok, clean=True)
    stamp = (first.folder / "ids.bin").stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("tokenized again although the cache is valid")

    monkeypatch.setattr(data, "_write_cache", must_not_run)
    second = tokenize_file(path, tok, clean=True)
    assert second.folder == first.folder and (second.folder / "ids.bin").stat().st_mtime_ns == stamp
    assert second.ids.tolist() == first.ids.tolist()
    assert second.clean_report == first.clean_report  # the report survives the cache
    # Another setting is another cache entry, tokenized afresh.
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_file(path, tok, clean=False)


def test_cache_dir_and_env(tmp_path, tok, monkeypatch):
    path = write(tmp_path / "a.txt", "x\n")
    assert tokenize_file(path, tok, cache_dir=tmp_path / "c1").folder.parent == tmp_path / "c1"
    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "c2"))
    assert tokenize_file(path, tok).folder.parent == tmp_path / "c2"


def test_stale_cache_when_the_file_changes(tmp_path, tok):
    path = write(tmp_path / "a.txt", "first version\n")
    old = tokenize_file(path, tok)
    st = path.stat()
    write(path, "other version\n")  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    new = tokenize_file(path, tok)
    assert new.folder != old.folder
    assert new.doc(0).tolist() == tok("other version")["input_ids"]
    assert not old.folder.exists()  # the old version's cache can never load again: removed


def test_interrupted_run_leaves_nothing_that_loads(tmp_path, tok, monkeypatch):
    path = write(tmp_path / "a.txt", "".join(f"line {i}\n" for i in range(50)))
    monkeypatch.setattr(data, "_CHUNK_ROWS", 10)
    calls = 0
    real = data._encode

    def dies_midway(tokenizer, texts):
        nonlocal calls
        calls += 1
        if calls == 3:  # the fingerprint's probe, chunk 1, then Ctrl-C in chunk 2
            raise KeyboardInterrupt
        return real(tokenizer, texts)

    monkeypatch.setattr(data, "_encode", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        tokenize_file(path, tok)
    cache = tmp_path / ".gpt2kit-cache"
    assert list(cache.iterdir()) == []  # the temporary folder went with the error

    # kill -9 leaves its temporary folder behind: it is never loaded, and it is removed once its process
    # is gone. A half-written folder under the final name (no manifest) is not loaded either.
    monkeypatch.setattr(data, "_encode", real)
    good = tokenize_file(path, tok)
    dead = cache / f".a.txt-{good.folder.name[6:]}.{socket.gethostname()}.999999999.x1.tmp"
    alive = cache / f".a.txt-{good.folder.name[6:]}.{socket.gethostname()}.{os.getpid()}.x2.tmp"
    for leftover in (dead, alive):
        leftover.mkdir()
        (leftover / "ids.bin").write_bytes(b"\0\0")
    (good.folder / "manifest.json").unlink()
    again = tokenize_file(path, tok)
    assert again.folder == good.folder and (again.folder / "manifest.json").exists()
    assert again.ids.tolist() == tok([f"line {i}" for i in range(50)])["input_ids"][0] + [
        t for i in range(1, 50) for t in tok(f"line {i}")["input_ids"]
    ]
    assert not dead.exists() and alive.exists()


def test_damaged_cache_is_rebuilt(tmp_path, tok):
    path = write(tmp_path / "a.txt", "some text here\n")
    c = tokenize_file(path, tok)
    with open(c.folder / "ids.bin", "r+b") as f:
        f.truncate(2)
    assert tokenize_file(path, tok).ids.tolist() == tok("some text here")["input_ids"]


def test_parallel_tokenizing_gives_the_same_ids(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(data, "_CHUNK_ROWS", 7)  # many chunks, so order across processes matters
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "δέλτα", "🙂", "the", "of", "1999", "\t"]
    lines = [" ".join(rng.choice(words, rng.integers(0, 12))) for _ in range(200)]
    path = write(tmp_path / "a.txt", "\n".join(lines) + "\n")
    one = tokenize_file(path, tok, num_proc=1, cache_dir=tmp_path / "c1")
    two = tokenize_file(path, tok, num_proc=2, cache_dir=tmp_path / "c2")
    assert len(one) == len(two) == 200
    assert np.array_equal(one.offsets, two.offsets) and np.array_equal(one.ids, two.ids)
    assert one.ids.tolist() == [t for ids in tok(lines)["input_ids"] for t in ids]


def test_jsonl_field_and_csv_labels(tmp_path, tok):
    path = write(
        tmp_path / "a.jsonl",
        '{"body": "good film", "y": 1}\n\n{"body": "bad film", "y": 0}\n{"body": "good film", "y": 1}\n',
    )
    c = tokenize_file(path, tok, column="body", label_column="y", clean=True)
    assert c.labels == ["1", "0"]  # duplicate row dropped with its label; numbers become their text
    assert [c.doc(i).tolist() for i in range(2)] == tok(["good film", "bad film"])["input_ids"]
    assert c.clean_report.duplicates_dropped == 1

    path = write(tmp_path / "a.csv", 'text,label\n"a, b",pos\n,neg\nc,neg\n')
    c = tokenize_file(path, tok, label_column="label", clean=True)
    assert c.labels == ["pos", "neg"] and c.rows.tolist() == [0, 2]  # row 1 (empty text) dropped
    assert c.source_row(1) == 2


def test_input_errors(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        tokenize_file(tmp_path / "missing.txt", tok)
    csv_path = write(tmp_path / "a.csv", "body,label\nhi,1\n")
    with pytest.raises(ValueError, match=r"no column 'text' \(it has 'body', 'label'\).*--text-column"):
        tokenize_file(csv_path, tok)
    with pytest.raises(ValueError, match=r"no column 'y' \(it has 'body', 'label'\).*--label-column"):
        tokenize_file(csv_path, tok, column="body", label_column="y")
    jsonl = write(tmp_path / "a.jsonl", '{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"no field 'text' \(it has 'body'\)"):
        tokenize_file(jsonl, tok)
    with pytest.raises(ValueError, match="has no label column"):
        tokenize_file(write(tmp_path / "a.txt", "x\n"), tok, label_column="label")
    with pytest.raises(ValueError, match="row 1 has no label in 'label'"):
        tokenize_file(write(tmp_path / "b.csv", "text,label\na,x\nb,\n"), tok, label_column="label")
    with pytest.raises(ValueError, match="nothing is left of .* after cleaning"):
        tokenize_file(write(tmp_path / "blank.txt", "  \n\t\n\n"), tok, clean=True)
    with pytest.raises(ValueError, match="holds no texts"):
        tokenize_file(write(tmp_path / "empty.txt", ""), tok)
    with pytest.raises(ValueError, match="num_proc must be at least 1, got 0"):
        tokenize_file(tmp_path / "a.txt", tok, num_proc=0)
    assert not list((tmp_path / ".gpt2kit-cache").glob(".*.tmp"))  # failures leave no temporary folders


# --- datasets ----------------------------------------------------------------------------------------------


def test_lm_blocks_pack_docs_with_eos_and_pad_the_last_block():
    docs = [[1, 2, 3], [], [4, 5, 6, 7, 8], [9]]
    ds = LMBlocks(corpus(docs), block_size=4, eos_id=EOS)
    stream = [1, 2, 3, EOS, 4, 5, 6, 7, 8, EOS, 9, EOS]  # the empty document adds nothing
    assert ds.num_tokens == len(stream) == 12 and len(ds) == 3
    got = [ds[i]["input_ids"].tolist() for i in range(len(ds))]
    assert got == [stream[0:4], stream[4:8], stream[8:12]]
    assert all(torch.equal(ds[i]["labels"], ds[i]["input_ids"]) for i in range(3))

    ds = LMBlocks(corpus(docs), block_size=5, eos_id=EOS)  # 12 tokens -> 5 + 5 + 2 and 3 pads
    assert len(ds) == 3
    assert ds[2]["input_ids"].tolist() == [9, EOS, EOS, EOS, EOS]
    assert ds[2]["labels"].tolist() == [9, EOS, -100, -100, -100]
    assert ds[-1]["labels"].tolist() == ds[2]["labels"].tolist()
    with pytest.raises(IndexError):
        ds[3]


def test_lm_blocks_span_corpora_and_long_docs():
    a, b = corpus([[1, 2], [3]]), corpus([list(range(10, 30))])
    ds = LMBlocks([a, b], block_size=8, eos_id=0)
    stream = [1, 2, 0, 3, 0, *range(10, 30), 0]
    got = torch.cat([ds[i]["input_ids"] for i in range(len(ds))]).tolist()
    assert got[: len(stream)] == stream and ds.num_tokens == len(stream) == 26
    assert len(ds) == 4 and ds[3]["labels"].tolist() == [29, 0] + [-100] * 6  # 26 = 8 + 8 + 8 + 2


def test_datasets_pickle_without_their_tokens(tmp_path, tok):
    path = write(tmp_path / "a.txt", "".join(f"document number {i} of many\n" for i in range(300)))
    c = tokenize_file(path, tok)
    ds = LMBlocks(c, block_size=16, eos_id=EOS)
    blob = pickle.dumps(ds)
    assert len(blob) < c.num_tokens  # the folder travels, not the ids
    back = pickle.loads(blob)
    assert len(back) == len(ds)
    assert all(torch.equal(back[i]["input_ids"], ds[i]["input_ids"]) for i in range(len(ds)))
    rows = pickle.loads(pickle.dumps(LMRows(c, 8, EOS, EOS)))
    assert rows[5]["input_ids"].tolist() == c.doc(5).tolist() + [EOS]


def test_lm_rows_truncate_count_and_pad(caplog):
    docs = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [], [10, 11, 12, 13]]
    with caplog.at_level(logging.WARNING, logger="gpt2kit.training.data"):
        ds = LMRows(corpus(docs), max_length=4, eos_id=EOS, pad_id=EOS)
    assert len(ds) == 3 and ds.truncated_rows == 2  # 6 tokens, and 4 tokens with no room for eos
    assert sum("truncated" in r.message for r in caplog.records) == 1
    assert [ds[i]["input_ids"].tolist() for i in range(3)] == [[1, 2, 3, EOS], [4, 5, 6, 7], [10, 11, 12, 13]]
    batch = LMRows(corpus([[1], [2, 3, 4]]), 8, EOS, EOS)
    out = batch.collate([batch[0], batch[1]])
    assert out["input_ids"].tolist() == [[1, EOS, EOS, EOS], [2, 3, 4, EOS]]
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert out["labels"].tolist() == [[1, EOS, -100, -100], [2, 3, 4, EOS]]  # the real eos keeps its label


def test_classification_labels_ids_and_collate(caplog):
    labels = ["10", "2", "2", "1"]
    with caplog.at_level(logging.WARNING, logger="gpt2kit.training.data"):
        ds = ClassificationRows(
            corpus([[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]], labels), max_length=3, pad_id=0
        )
    assert ds.label_names == ["1", "2", "10"]  # numbers sorted as numbers
    assert ds.label2id == {"1": 0, "2": 1, "10": 2}
    assert ds.truncated_rows == 1 and any("longer than max_length 3" in r.message for r in caplog.records)
    assert ds[3]["labels"] == 0 and ds[3]["input_ids"].tolist() == [7, 8, 9]
    out = ds.collate([ds[1], ds[0]])
    assert out["input_ids"].tolist() == [[4, 0, 0], [1, 2, 3]]
    assert out["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert out["labels"].tolist() == [1, 2] and out["labels"].dtype == torch.long

    words = ClassificationRows(corpus([[1], [2]], ["pos", "neg"]), 4, 0)
    assert words.label_names == ["neg", "pos"]
    ev = ClassificationRows(corpus([[1], [2]], ["pos", "pos"]), 4, 0, label_names=words.label_names)
    assert [ev[i]["labels"] for i in range(2)] == [1, 1]
    with pytest.raises(
        ValueError, match=r"row 1 has the label 'meh', which is not one of .*\['neg', 'pos'\]"
    ):
        ClassificationRows(corpus([[1], [2]], ["pos", "meh"]), 4, 0, label_names=words.label_names)


def test_dataset_errors():
    with pytest.raises(ValueError, match="block_size must be an integer of at least 2.*got 1"):
        LMBlocks(corpus([[1, 2]]), 1, EOS)
    with pytest.raises(ValueError, match="every document of mem is empty"):
        LMBlocks(corpus([[], []]), 4, EOS)
    with pytest.raises(ValueError, match="max_length must be an integer of at least 2"):
        LMRows(corpus([[1]]), 1, EOS, EOS)
    with pytest.raises(ValueError, match="tokenized without labels.*label_column"):
        ClassificationRows(corpus([[1]]), 4, 0)
    with pytest.raises(ValueError, match="row 1 has an empty text"):
        ClassificationRows(corpus([[1], []], ["a", "b"]), 4, 0)


def test_split_eval_is_deterministic_disjoint_and_keeps_collate():
    ds = LMRows(corpus([[i, i + 1] for i in range(1, 101)]), 8, EOS, EOS)
    train, held = split_eval(ds, 0.1, seed=7)
    assert len(held) == 10 and len(train) == 90
    assert sorted(train.indices + held.indices) == list(range(100))
    again = split_eval(ds, 0.1, seed=7)
    assert again[1].indices == held.indices and split_eval(ds, 0.1, seed=8)[1].indices != held.indices
    batch = held.collate([held[0], held[1]])  # LMRows' padding survives the split
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    blocks = split_eval(LMBlocks(corpus([[1, 2, 3]] * 10), 4, EOS), 0.25, seed=0)[1]
    assert blocks.collate([blocks[0]])["input_ids"].shape == (1, 4)  # no collate of its own: stacked
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="between 0 and 1"):
            split_eval(ds, bad, 0)
    with pytest.raises(ValueError, match="keep any to train on"):
        split_eval(LMRows(corpus([[1, 2]]), 8, EOS, EOS), 0.5, 0)


@pytest.mark.slow
def test_dataloader_workers_spawned(tmp_path, tok):
    """Workers started by spawn (macOS, Windows, torchrun) get the dataset by pickle and map the cache."""
    path = write(tmp_path / "a.txt", "".join(f"row {i} of the file\n" for i in range(40)))
    ds = LMBlocks(tokenize_file(path, tok), block_size=8, eos_id=EOS)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="spawn")
    assert torch.equal(
        torch.cat([b["input_ids"] for b in loader]), torch.stack([ds[i]["input_ids"] for i in range(len(ds))])
    )


def test_manifest_is_json_with_the_documented_keys(tmp_path, tok):
    c = tokenize_file(write(tmp_path / "a.txt", "x\n"), tok)
    on_disk = json.loads((c.folder / "manifest.json").read_text())
    assert on_disk == c.manifest
    for key in ("version", "path", "size", "mtime_ns", "format", "column", "label_column", "clean", "tokenizer",
                "dtype", "rows", "docs", "tokens"):  # fmt: skip
        assert key in on_disk


def test_texts_in_python_become_a_corpus_and_packed_blocks(tok):
    texts = ["hello world", "", "a b c"]
    c = data.corpus_from_texts(texts, tok, labels=["x", "y", "x"])
    assert len(c) == 3 and c.doc(0).tolist() == tok("hello world")["input_ids"] and c.doc(1).tolist() == []
    assert c.labels == ["x", "y", "x"]
    ds = data.texts_dataset(texts, tok, block_size=4)
    eos = tok.eos_token_id
    stream = [*tok("hello world")["input_ids"], eos, *tok("a b c")["input_ids"], eos]
    got = torch.cat([ds[i]["input_ids"] for i in range(len(ds))]).tolist()
    assert got[: len(stream)] == stream
    assert len(pickle.loads(pickle.dumps(ds))) == len(ds)  # in-memory corpora pickle their arrays
    with pytest.raises(TypeError, match="list of strings"):
        data.corpus_from_texts("one string", tok)
    with pytest.raises(ValueError, match="one label per text"):
        data.corpus_from_texts(["a", "b"], tok, labels=["x"])


def test_training_names_are_exported_lazily():
    import subprocess
    import sys

    code = "import sys, gpt2kit.training; assert 'torch' not in sys.modules; print(gpt2kit.Trainer)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "gpt2kit.training.trainer.Trainer" in out.stdout
