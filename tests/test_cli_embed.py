"""`gpt2kit embed`: every input and output format, resume after Ctrl-C and kill -9, errors a user can fix,
and torchrun with two processes. The reference is the Embedder on the same texts (itself tested against
transformers in test_embeddings.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2kit import Embedder, GPT2TokenizerFast
from gpt2kit.cli import main
from gpt2kit.data import read_vectors
from hf_oracle import hf_model

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

TEXTS = [
    "The first text.",
    "",
    "A somewhat longer second text, with a comma and an ümlaut.",
    "three",
    "Four: the fourth text is about nothing in particular",
    "five five five five five five five five five five five five five five five five",
    "six",
]
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_embed") / "tiny"
    hf_model("GPT2Model", seed=7, vocab_size=50257, n_positions=32).save_pretrained(folder)
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(folder)
    return folder


def want(folder, texts, **options):
    return Embedder.from_pretrained(folder, **options).embed(texts)


def write_input(path: Path, texts, fmt: str, labels=None) -> Path:
    labels = labels or [f"label{i}" for i in range(len(texts))]
    if fmt == "txt":
        path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text(
            "".join(json.dumps({"body": t, "label": lab}) + "\n" for t, lab in zip(texts, labels))
        )
    elif fmt in ("csv", "tsv"):
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            w.writerow(["label", "body"])
            w.writerows(zip(labels, texts))
    else:
        pq.write_table(pa.table({"body": texts, "label": labels}), path)
    return path


def embed(folder, *args) -> int:
    return main(["embed", "--model", str(folder), "--no-progress", *map(str, args)])


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "tsv", "parquet"])
def test_every_input_format(folder, tmp_path, fmt, capsys):
    src = write_input(tmp_path / f"in.{fmt}", TEXTS, fmt)
    column = [] if fmt == "txt" else ["--column", "body"]
    assert embed(folder, src, "-o", tmp_path / "out.npy", *column) == 0
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want(folder, TEXTS), atol=1e-5, rtol=1e-5)
    err = capsys.readouterr().err
    assert f"wrote {len(TEXTS)} vectors" in err and "1 empty texts (zero vectors), rows 1" in err
    assert not list(tmp_path.glob("*.parts")) and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("fmt", ["npy", "parquet", "jsonl"])
def test_every_output_format_keeps_columns_and_order(folder, tmp_path, fmt):
    src = write_input(tmp_path / "in.jsonl", TEXTS, "jsonl")
    out = tmp_path / f"out.{fmt}"
    keep = [] if fmt == "npy" else ["--keep", "label"]
    # tiny chunks: the output is assembled from several parts, in input order
    assert embed(folder, src, "-o", out, "--field", "body", "--chunk-rows", "3", *keep) == 0
    np.testing.assert_allclose(read_vectors(out), want(folder, TEXTS), atol=1e-5, rtol=1e-5)
    if fmt == "parquet":
        t = pq.read_table(out)
        assert t.column_names == ["id", "label", "vector"]
        assert t.column("id").to_pylist() == list(range(len(TEXTS)))
        assert t.column("label").to_pylist() == [f"label{i}" for i in range(len(TEXTS))]
    if fmt == "jsonl":
        first = json.loads(out.read_text().splitlines()[3])
        assert first["id"] == 3 and first["label"] == "label3"


def test_options_reach_the_embedder(folder, tmp_path):
    src = write_input(tmp_path / "in.txt", TEXTS, "txt")
    args = ["--pooling", "max", "--layer=0,-1", "--normalize", "--batch-tokens", "16"]
    assert embed(folder, src, "-o", tmp_path / "out.npy", *args) == 0
    expect = want(folder, TEXTS, pooling="max", layer=[0, -1], normalize=True)
    assert expect.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expect, atol=1e-5, rtol=1e-5)
    assert embed(folder, src, "-o", tmp_path / "bf16.npy", "--dtype", "bfloat16") == 0
    bf16 = np.load(tmp_path / "bf16.npy")
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, want(folder, TEXTS))


def test_per_token_output(folder, tmp_path):
    src = write_input(tmp_path / "in.txt", TEXTS, "txt")
    assert embed(folder, src, "-o", tmp_path / "out.parquet", "--pooling", "none") == 0
    got = pq.read_table(tmp_path / "out.parquet").column("vector").to_pylist()
    for g, w in zip(got, want(folder, TEXTS, pooling="none")):
        np.testing.assert_allclose(np.array(g, np.float32).reshape(-1, 32), w, atol=1e-5, rtol=1e-5)


def test_long_texts_truncated_and_reported_or_chunked(folder, tmp_path, capsys, caplog):
    long = "one two three four five six seven eight nine ten " * 6  # 60 tokens > n_positions = 32
    src = write_input(tmp_path / "in.txt", ["short", long], "txt")
    assert embed(folder, src, "-o", tmp_path / "t.npy") == 0
    assert "1 truncated" in capsys.readouterr().err
    assert "1 texts were longer than max_length=32 tokens and were truncated" in caplog.text  # a warning
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), want(folder, ["short", long]), atol=1e-5)
    assert embed(folder, src, "-o", tmp_path / "c.npy", "--long-text", "chunk", "--stride", "8") == 0
    assert "1 split into windows" in capsys.readouterr().err
    chunked = want(folder, ["short", long], long_text="chunk", stride=8)
    np.testing.assert_allclose(np.load(tmp_path / "c.npy"), chunked, atol=1e-5)
    assert np.abs(chunked[1] - np.load(tmp_path / "t.npy")[1]).max() > 1e-3


def test_stdin_empty_lines_and_bad_bytes(folder, tmp_path, monkeypatch, capsys):
    import io

    raw = b"first\n\nbad \xff byte\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert embed(folder, "-", "-o", tmp_path / "out.npy") == 0
    err = capsys.readouterr().err
    assert "1 empty texts (zero vectors), rows 1" in err
    assert "1 texts with bytes that are not UTF-8 (replaced by U+FFFD), rows 2" in err
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(got, want(folder, ["first", "", "bad \ufffd byte"]), atol=1e-5)
    assert not got[1].any()


def test_empty_input(folder, tmp_path):
    (tmp_path / "in.txt").write_text("")
    assert embed(folder, tmp_path / "in.txt", "-o", tmp_path / "out.npy") == 0
    assert np.load(tmp_path / "out.npy").shape == (0, 32)


def test_errors_are_one_line(folder, tmp_path, capsys):
    src = write_input(tmp_path / "in.txt", TEXTS, "txt")
    cases = [
        ([tmp_path / "missing.txt", "-o", tmp_path / "o.npy"], "input file not found: "),
        ([src, "-o", tmp_path / "o.csv"], "must end in .npy"),
        ([src, "-o", tmp_path / "nodir" / "o.npy"], "does not exist; create it first"),
        ([src, "-o", tmp_path / "o.npy", "--pooling", "none"], "which .npy cannot hold"),
        ([src, "-o", tmp_path / "o.npy", "--keep", "label"], "a .txt input has no columns to keep"),
        (
            [write_input(tmp_path / "in.jsonl", TEXTS, "jsonl"), "-o", tmp_path / "o.npy", "--keep", "label"],
            "holds only the vectors",
        ),
        ([src, "-o", tmp_path / "o.npy", "--layer", "9"], "layer 9 is out of range"),
        ([write_input(tmp_path / "in.csv", TEXTS, "csv"), "-o", tmp_path / "o.npy"], "has no column 'text'"),
    ]
    for args, message in cases:
        assert embed(folder, *args) == 2, message
        err = capsys.readouterr().err
        err = "".join(line for line in err.splitlines(True) if not line.startswith("loading "))
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("o.*"))
    with pytest.raises(SystemExit):  # argparse's own errors
        embed(folder, src, "-o", tmp_path / "o.npy", "--layer", "last")


# --- resume ----------------------------------------------------------------------------------------------


def many_texts(n=40):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 20)))) for _ in range(n)]


def test_resume_after_ctrl_c(folder, tmp_path, monkeypatch, capsys, caplog):
    texts = many_texts()
    src = write_input(tmp_path / "in.jsonl", texts, "jsonl")
    out = tmp_path / "out.parquet"
    args = [src, "-o", out, "--field", "body", "--keep", "label", "--chunk-rows", "6"]  # 7 chunks
    real_run, calls, interrupt_at = Embedder.run, [], [4]

    def interrupted_run(self, *a, **k):
        calls.append(1)
        if len(calls) == interrupt_at[0]:
            raise KeyboardInterrupt
        return real_run(self, *a, **k)

    monkeypatch.setattr(Embedder, "run", interrupted_run)
    assert embed(folder, *args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert "run the same command with --resume" in caplog.text  # logged as a warning
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # no output, not even half of one
    parts = tmp_path / "out.parquet.parts"
    assert sorted(p.name for p in parts.glob("part-*.json")) == [f"part-00000{k}.json" for k in range(3)]

    assert embed(folder, *args) == 2  # without --resume: refuses to throw the finished chunks away
    assert "add --resume" in capsys.readouterr().err
    assert embed(folder, *args, "--resume", "--pooling", "max") == 2
    assert "pooling='mean', this one 'max'" in capsys.readouterr().err

    calls.clear()
    interrupt_at[0] = None
    assert embed(folder, *args, "--resume") == 0
    assert len(calls) == 4  # only the 4 unfinished chunks ran
    assert "3 chunks from the interrupted run" in capsys.readouterr().err
    assert not parts.exists()
    t = pq.read_table(out)
    monkeypatch.setattr(Embedder, "run", real_run)
    assert embed(folder, *args[:2], tmp_path / "straight.parquet", *args[3:]) == 0
    assert t.equals(pq.read_table(tmp_path / "straight.parquet"))
    np.testing.assert_allclose(read_vectors(out), want(folder, texts), atol=1e-5, rtol=1e-5)

    assert embed(folder, *args, "--resume") == 0  # complete already: nothing to do
    assert "already complete" in caplog.text


def test_resume_refuses_a_changed_input(folder, tmp_path, monkeypatch, capsys):
    texts = many_texts(12)
    src = write_input(tmp_path / "in.txt", texts, "txt")
    real_run, calls = Embedder.run, []

    def interrupted_run(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(self, *a, **k)

    monkeypatch.setattr(Embedder, "run", interrupted_run)
    assert embed(folder, src, "-o", tmp_path / "o.npy", "--chunk-rows", "4") == 130
    monkeypatch.setattr(Embedder, "run", real_run)
    write_input(src, ["changed"] + texts[1:], "txt")
    assert embed(folder, src, "-o", tmp_path / "o.npy", "--chunk-rows", "4", "--resume") == 2
    assert "rows 0..3 of" in capsys.readouterr().err and not (tmp_path / "o.npy").exists()


@pytest.fixture(scope="module")
def other_folder(tmp_path_factory):
    """Another model of the same shape (same D), other weights: its vectors could pass for the first's."""
    folder = tmp_path_factory.mktemp("cli_embed_other") / "tiny"
    hf_model("GPT2Model", seed=8, vocab_size=50257, n_positions=32).save_pretrained(folder)
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(folder)
    return folder


def test_resume_keeps_a_finished_output_only_if_this_run_made_it(folder, other_folder, tmp_path, capsys):
    a = write_input(tmp_path / "a.txt", TEXTS, "txt")
    b = write_input(tmp_path / "b.txt", ["other", "texts", "entirely"], "txt")
    out = tmp_path / "out.npy"
    fp = tmp_path / "out.npy.fingerprint.json"
    assert embed(folder, a, "-o", out) == 0
    first = np.load(out)
    capsys.readouterr()
    # another model, input or option: refused by name, the output left as it was
    refusals = [
        ([folder, b, "-o", out, "--resume"], "input.sha256="),
        ([other_folder, a, "-o", out, "--resume"], "model.weights="),
        ([folder, a, "-o", out, "--resume", "--pooling", "max"], "options.pooling='mean' there, 'max' now"),
        ([folder, a, "-o", out, "--resume", "--normalize"], "options.normalize=False there, True now"),
        ([folder, a, "-o", out, "--resume", "--layer", "1"], "options.layers=[2] there, [1] now"),
        ([folder, a, "-o", out, "--resume", "--dtype", "bfloat16"], "options.dtype='float32' there"),
        ([folder, a, "-o", out, "--resume", "--max-length", "8"], "options.max_length=32 there, 8 now"),
        # without --resume or --overwrite, an existing output is never replaced silently
        ([folder, b, "-o", out], "already exists; add --resume"),
        ([folder, a, "-o", out, "--resume", "--overwrite"], "choose one of them"),
    ]
    for (model, *args), message in refusals:
        assert embed(model, *args) == 2, message
        err = capsys.readouterr().err
        err = "".join(line for line in err.splitlines(True) if not line.startswith("loading "))
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
        assert "--overwrite" in err or "--resume" in err
        np.testing.assert_array_equal(np.load(out), first)

    # the same run: nothing to do, whatever only changes the speed
    assert embed(folder, a, "-o", out, "--resume", "--batch-tokens", "16", "--chunk-rows", "2") == 0
    assert "kept " in capsys.readouterr().err and np.array_equal(np.load(out), first)
    record = json.loads(fp.read_text())
    assert record["options"]["pooling"] == "mean" and record["input"]["size"] == a.stat().st_size
    assert record["rows"] == len(TEXTS) and record["output"] == "npy"

    # the same content at another path is the same input
    moved = tmp_path / "moved.txt"
    shutil.copy(a, moved)
    assert embed(folder, moved, "-o", out, "--resume") == 0

    # --overwrite embeds again; its fingerprint replaces the old one
    assert embed(other_folder, b, "-o", out, "--overwrite") == 0
    np.testing.assert_allclose(np.load(out), want(other_folder, ["other", "texts", "entirely"]), atol=1e-5)
    assert json.loads(fp.read_text())["rows"] == 3
    assert embed(other_folder, b, "-o", out, "--resume") == 0
    assert embed(folder, b, "-o", out, "--resume") == 2

    # an output without its fingerprint (written by an older gpt2kit, or by hand) cannot be vouched for
    fp.unlink()
    assert embed(other_folder, b, "-o", out, "--resume") == 2
    assert "out.npy.fingerprint.json (how it was made) does not" in capsys.readouterr().err


def test_resume_of_a_finished_output_from_stdin_is_refused(folder, tmp_path, monkeypatch, capsys):
    import io

    out = tmp_path / "out.npy"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\ntwo\n")))
    assert embed(folder, "-", "-o", out) == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"three\n")))
    assert embed(folder, "-", "-o", out, "--resume") == 2
    assert "standard input cannot be checked" in capsys.readouterr().err
    assert np.load(out).shape == (2, 32)


def test_overwrite_drops_an_interrupted_run(folder, tmp_path, monkeypatch, capsys):
    texts = many_texts(12)
    src = write_input(tmp_path / "in.txt", texts, "txt")
    real_run, calls = Embedder.run, []

    def interrupted_run(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(self, *a, **k)

    monkeypatch.setattr(Embedder, "run", interrupted_run)
    assert embed(folder, src, "-o", tmp_path / "o.npy", "--chunk-rows", "4") == 130
    monkeypatch.setattr(Embedder, "run", real_run)
    assert embed(folder, src, "-o", tmp_path / "o.npy", "--chunk-rows", "4") == 2
    assert "add --resume to go on from there, or --overwrite to start over" in capsys.readouterr().err
    assert embed(folder, src, "-o", tmp_path / "o.npy", "--pooling", "max", "--overwrite") == 0
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), want(folder, texts, pooling="max"), atol=1e-5)
    assert not (tmp_path / "o.npy.parts").exists()


def run_cli(*args, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen(
        [sys.executable, "-m", "gpt2kit", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_resume_after_kill_9(folder, tmp_path):
    import torch

    texts = many_texts(150)
    src = write_input(tmp_path / "in.txt", texts, "txt")
    out = tmp_path / "out.npy"
    # one thread: on a busy shared machine, two threads wait on each other for every tiny matmul
    opts = ["--chunk-rows", "1", "--threads", "1"]
    proc = run_cli("embed", "--model", folder, src, "-o", out, *opts)
    parts = tmp_path / "out.npy.parts"
    deadline = time.monotonic() + 60
    while len(list(parts.glob("part-*.json"))) < 5:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if out.exists():  # pragma: no cover - the machine was fast enough to finish in the gap
        pytest.skip("the run finished before it could be killed")
    finished = len(list(parts.glob("part-*.json")))
    assert 5 <= finished < 150
    threads = torch.get_num_threads()
    try:
        assert embed(folder, src, "-o", out, *opts, "--resume") == 0
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(np.load(out), want(folder, texts), atol=1e-5, rtol=1e-5)
    assert not parts.exists()


def test_torchrun_two_processes(folder, tmp_path):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    texts = many_texts(50)
    src = write_input(tmp_path / "in.jsonl", texts, "jsonl")
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "gpt2kit", "embed"]
    cmd += ["--model", str(folder), str(src), "-o", str(out), "--field", "body", "--keep", "label"]
    cmd += ["--chunk-rows", "7", "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("gpt2kit embed: wrote 50 vectors") == 1  # one writer, one report
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(50))
    assert [r["label"] for r in rows] == [f"label{i}" for i in range(50)]
    np.testing.assert_allclose(read_vectors(out), want(folder, texts), atol=1e-5, rtol=1e-5)
    assert not (tmp_path / "out.jsonl.parts").exists()
