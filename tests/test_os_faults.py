"""Operating-system faults as the CLI meets them (issue 16): a read-only output folder, a file where a folder
belongs, a full disk, `ulimit -f`, `--device cuda` without CUDA. Each is one line on stderr naming the path
and the fix, exit status 2, no traceback, and no temporary files left behind."""

from __future__ import annotations

import builtins
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt2kit import GPT2TokenizerFast
from gpt2kit.cli import main
from hf_oracle import hf_model

SMALL = "n_layer=1,n_embd=32,n_head=2,n_positions=64"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture()
def texts(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "train.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(12)))
    return path


@pytest.fixture(scope="module")
def embed_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("os_faults") / "tiny"
    hf_model("GPT2Model", seed=7, vocab_size=50257, n_positions=32).save_pretrained(folder)
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(folder)
    return folder


def train(texts: Path, out: Path, *more: str) -> int:
    return main(["train", str(texts), "--init", "scratch", "--config", SMALL, "-o", str(out),
                 "--max-steps", "2", "--batch-size", "2", "--block-size", "32", *more])  # fmt: skip


def one_line(capsys, *wanted: str) -> str:
    """The error line (stderr may also hold progress bars from before the fault)."""
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in wanted:
        assert w in lines[0], err
    return lines[0]


def no_tmp(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")], list(folder.rglob("*"))


def read_only(monkeypatch, folder: Path) -> None:
    """Make `folder` read-only: chmod for a normal user; as root (who ignores modes), a read-only file
    system's EROFS from every Python-level create or write-open under it."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)  # the test restores 0o755 so that pytest can remove it
        return
    root = str(folder)

    def under(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(root)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def fake_open(file, mode="r", *args, **kwargs):
        if under(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if under(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def test_train_into_a_read_only_folder(tmp_path, texts, monkeypatch, capsys):
    ro = tmp_path / "ro"
    read_only(monkeypatch, ro)
    try:
        assert train(texts, ro / "out") == 2
        assert train(texts, ro) == 2
    finally:
        ro.chmod(0o755)
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 2 and all(f"cannot write to {ro}" in e and "choose another -o" in e for e in err), err


def test_embed_into_a_read_only_folder(tmp_path, embed_model, monkeypatch, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a text\nanother one\n")
    ro = tmp_path / "ro"
    read_only(monkeypatch, ro)
    try:
        rc = main(
            ["embed", "--model", str(embed_model), "--no-progress", str(src), "-o", str(ro / "out.npy")]
        )
    finally:
        ro.chmod(0o755)
    assert rc == 2
    one_line(capsys, f"cannot write to {ro}", "choose another -o")
    assert not list(ro.iterdir())


def test_train_output_is_a_file(tmp_path, texts, capsys):
    out = tmp_path / "model.bin"
    out.write_text("not a folder")
    assert train(texts, out) == 2
    one_line(capsys, f"-o {out} is a file", "choose a folder path for -o")
    assert out.read_text() == "not a folder"


def _full_disk_safetensors(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"\0" * 4096)  # half a file, as a real full disk leaves
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))


def _full_disk_torch_save(obj, f, *args, **kwargs):
    Path(f).write_bytes(b"\0" * 4096)
    # what torch 2.x's zip writer said on a full disk (issue 16)
    raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\nbasic_ios::clear")


@pytest.mark.parametrize(
    "target, fake, message",
    [
        ("safetensors.torch.save_file", _full_disk_safetensors, "the disk is full while writing"),
        ("torch.save", _full_disk_torch_save, "the disk may be full"),
    ],
)
def test_train_disk_full_while_saving(tmp_path, texts, monkeypatch, capsys, target, fake, message):
    out = tmp_path / "out"
    monkeypatch.setattr(target, fake)
    assert train(texts, out, "--save-every", "1") == 2
    one_line(capsys, message, str(out), "-o")
    no_tmp(out)


def test_train_past_the_file_size_limit(tmp_path, texts):
    out = tmp_path / "out"
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); "
        "from gpt2kit.cli import main; raise SystemExit(main(sys.argv[1:]))"
    )
    argv = ["train", str(texts), "--init", "scratch", "--config", SMALL, "-o", str(out), "--max-steps", "1",
            "--batch-size", "2", "--block-size", "32"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "file size limit" in lines[0] and str(out) in lines[0], r.stderr
    no_tmp(out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(tmp_path, texts, embed_model, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a text\n")
    runs = [
        ["train", str(texts), "--init", "scratch", "--config", SMALL, "-o", str(tmp_path / "o"), "--device", "cuda"],
        ["embed", "--model", str(embed_model), str(src), "-o", str(tmp_path / "o.npy"), "--device", "cuda"],
        ["eval", str(src), "--model", str(embed_model), "--device", "cuda:0"],
    ]  # fmt: skip
    for argv in runs:
        assert main(argv) == 2
        one_line(capsys, "CUDA is not available", "--device cpu")
