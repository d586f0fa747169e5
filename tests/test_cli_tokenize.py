"""`gpt2kit tokenize`: text / file / stdin -> ids, --tokens, --count, --decode, --lines, errors, progress."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from gpt2kit import GPT2TokenizerFast, cli

TEXT = "Hello world<|endoftext|> naïve 🤗\n\n  def f(x):\n\treturn x  \n"


@pytest.fixture(scope="module")
def tok():
    return GPT2TokenizerFast.from_pretrained("gpt2")


def run(capsys, *argv, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    code = cli.main(["tokenize", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_to_ids_tokens_count(capsys):
    assert run(capsys, "Hello world") == (0, "15496 995\n", "")
    assert run(capsys, "--tokens", " Hello world<|endoftext|>")[1] == "ĠHello Ġworld <|endoftext|>\n"
    assert run(capsys, "--count", "Hello world")[1] == "2\n"
    assert run(capsys, "--decode", "15496 995 50256")[1] == "Hello world<|endoftext|>"
    assert run(capsys, "--slow", "Hello world")[1] == "15496 995\n"


def test_file_round_trip(capsys, tmp_path, tok):
    src = tmp_path / "in.txt"
    src.write_text(TEXT, encoding="utf-8", newline="")
    code, out, _ = run(capsys, "--file", str(src))
    assert code == 0 and [int(i) for i in out.split()] == tok.encode(TEXT)
    ids = tmp_path / "ids.txt"
    ids.write_text(out)
    assert run(capsys, "--decode", "-f", str(ids))[1] == TEXT


def test_stdin(capsys, monkeypatch, tok):
    code, out, _ = run(capsys, stdin=TEXT.encode(), monkeypatch=monkeypatch)
    assert code == 0 and [int(i) for i in out.split()] == tok.encode(TEXT)
    assert (
        run(capsys, "--count", "-f", "-", stdin=TEXT.encode(), monkeypatch=monkeypatch)[1]
        == f"{len(out.split())}\n"
    )


def test_lines(capsys, monkeypatch, tok):
    lines = ["a b", "", "  c  d", "héllo 🤗"]
    code, out, _ = run(capsys, "--lines", stdin="\r\n".join(lines).encode(), monkeypatch=monkeypatch)
    assert code == 0 and out.split("\n")[:-1] == [" ".join(map(str, tok.encode(line))) for line in lines]
    counts = run(capsys, "--lines", "--count", stdin="\n".join(lines).encode(), monkeypatch=monkeypatch)[1]
    assert counts == "".join(f"{len(tok.encode(line))}\n" for line in lines)
    back = run(capsys, "--lines", "--decode", stdin=out.encode(), monkeypatch=monkeypatch)[1]
    assert back == "".join(line + "\n" for line in lines)


def test_tokenizer_folder(capsys, tmp_path):
    GPT2TokenizerFast.from_pretrained("gpt2", add_bos_token=True).save_pretrained(tmp_path)
    assert run(capsys, "--tokenizer", str(tmp_path), "Hello world")[1] == "50256 15496 995\n"


def test_large_file_streams_with_progress(capsys, tmp_path, monkeypatch, tok):
    text = "".join(f"line {i}: naïve text with  spaces\tand tabs 🤗\n\n" for i in range(3000))
    src = tmp_path / "big.txt"
    src.write_text(text, encoding="utf-8")
    monkeypatch.setattr(cli, "_BLOCK_BYTES", 4096)  # many blocks, cut mid-character too
    monkeypatch.setattr(cli, "_PROGRESS_MIN_BYTES", 1000)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # tqdm draws only on a terminal
    code, out, err = run(capsys, "-f", str(src))
    assert code == 0 and [int(i) for i in out.split()] == tok.encode(text)
    assert "B/s" in err and "100%" in err


def test_errors_exit_2_with_one_line(capsys, tmp_path, monkeypatch):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    cases = [
        (["-f", str(tmp_path / "missing.txt")], "missing.txt"),
        (["-f", str(bad)], "latin1.txt is not UTF-8 text"),
        (["text", "-f", str(bad)], "not both"),
        (["--decode", "1 2 x3"], "--decode reads token ids (integers), got 'x3'"),
        (["--decode", "99999"], "token id 99999 is not in the vocabulary"),
        (["--tokenizer", str(tmp_path), "x"], "holds no GPT-2 tokenizer"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2 and message in err and err.startswith("gpt2kit tokenize: error:"), (argv, err)
    with pytest.raises(SystemExit):
        cli.main(["tokenize", "--count", "--decode", "1"])  # argparse: mutually exclusive


def test_python_m_gpt2kit_tokenize_without_torch():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gpt2kit", "tokenize", "--count", "Hello world"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == "2\n"
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "gpt2kit.tokenizer.fast" in imported and "torch" not in imported
