"""Folders laid out as Hub repositories are: the `gpt2` repository holds TensorFlow, Flax, rust-bert, TFLite and
ONNX copies beside the PyTorch weights. gpt2kit loads the PyTorch weights and ignores the rest; a folder with
only the other formats gets an error that says how to convert them. Downloads fetch only what is read."""

from __future__ import annotations

import shutil
import sys
import types

import pytest
import torch
from torch.testing import assert_close

from gpt2kit import GPT2LMHeadModel, GPT2TokenizerFast, hub
from gpt2kit.cli import main
from hf_oracle import TINY, hf_model

# The `gpt2` repository's files besides config.json, the weights and the tokenizer (names as the Hub has them).
OTHER_FILES = [
    "64-8bits.tflite",
    "64-fp16.tflite",
    "64.tflite",
    "flax_model.msgpack",
    "rust_model.ot",
    "tf_model.h5",
    "onnx/decoder_model.onnx",
    "onnx/decoder_with_past_model.onnx",
    "onnx/decoder_model_merged.onnx",
    "onnx/config.json",
    "onnx/generation_config.json",
    "README.md",
]


@pytest.fixture(scope="module")
def hf():
    return hf_model("GPT2LMHeadModel", seed=2)


def hub_like(hf, folder, *, safetensors=True, bin=True, others=OTHER_FILES):
    """The repository's layout: real PyTorch weights, and junk bytes under the other formats' names (gpt2kit
    must never open them)."""
    if bin:
        hf.save_pretrained(folder, safe_serialization=False)
    if safetensors:
        hf.save_pretrained(folder)
    elif not bin:
        hf.config.save_pretrained(folder)
    shutil.copy(hub.BUNDLED_VOCAB_DIR / "vocab.json", folder / "vocab.json")
    shutil.copy(hub.BUNDLED_VOCAB_DIR / "merges.txt", folder / "merges.txt")
    for name in others:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"\x89not a weight file\x00" * 8)
    return folder


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin-only"])
def test_the_pytorch_weights_load_and_the_rest_is_ignored(hf, tmp_path, safetensors):
    folder = hub_like(hf, tmp_path, safetensors=safetensors)
    assert (folder / "pytorch_model.bin").is_file() and (
        folder / "model.safetensors"
    ).is_file() == safetensors
    ours = GPT2LMHeadModel.from_pretrained(folder)
    x = torch.randint(0, TINY["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(ours(x).logits, hf(x).logits, atol=1e-5, rtol=1e-5)
    assert GPT2TokenizerFast.from_pretrained(folder)("Hello world")["input_ids"] == [15496, 995]


def test_info_lists_the_other_files(hf, tmp_path, capsys):
    folder = hub_like(hf, tmp_path)
    assert main(["info", "--model", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "tf_model.h5" in out and "onnx/" in out


@pytest.mark.parametrize(
    "files, expected",
    [
        (["tf_model.h5"], ["TensorFlow weights only (tf_model.h5)", "from_tf=True", ".save_pretrained(OUT)"]),
        (["flax_model.msgpack"], ["Flax weights only (flax_model.msgpack)", "from_flax=True"]),
        (["model.gguf"], ["GGUF (llama.cpp) weights only (model.gguf)", "gguf_file='model.gguf'"]),
        (
            ["onnx/decoder_model.onnx", "onnx/config.json"],
            ["ONNX weights only (onnx/decoder_model.onnx)", "does not convert back"],
        ),
        (["rust_model.ot"], ["rust-bert weights only (rust_model.ot)"]),
        (["64-8bits.tflite"], ["TensorFlow Lite weights only (64-8bits.tflite)"]),
        (OTHER_FILES, ["no PyTorch weights", "from_tf=True", "from_flax=True", "64-8bits.tflite"]),
    ],
    ids=["tf", "flax", "gguf", "onnx", "rust", "tflite", "all"],
)
def test_only_other_formats_say_how_to_convert(hf, tmp_path, capsys, files, expected):
    folder = hub_like(hf, tmp_path, safetensors=False, bin=False, others=files)
    with pytest.raises(FileNotFoundError) as e:
        GPT2LMHeadModel.from_pretrained(folder)
    message = str(e.value)
    for part in expected:
        assert part in message
    assert str(folder) in message and "model.safetensors" in message
    assert main(["info", "--model", str(folder)]) == 2  # the CLI prints the same sentence on one line
    assert expected[0] in capsys.readouterr().err


def test_a_download_fetches_only_what_gpt2kit_reads(tmp_path, monkeypatch):
    """configs, tokenizer and safetensors; the .bin files only when a repository has no safetensors."""
    calls = []
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(snapshot)

    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download)
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub.find_model_dir("org/bin-only", download_ok=True) == snapshot
    assert calls == [("org/bin-only", hub.MODEL_FILE_PATTERNS), ("org/bin-only", hub.BIN_FILE_PATTERNS)]
    (snapshot / "model.safetensors").write_bytes(b"")
    calls.clear()
    assert hub.find_model_dir("gpt2", download_ok=True) == snapshot
    assert calls == [("openai-community/gpt2", hub.MODEL_FILE_PATTERNS)]
    assert not any(
        p.endswith((".h5", ".msgpack", ".onnx", ".ot", ".tflite")) for p in hub.MODEL_FILE_PATTERNS
    )
