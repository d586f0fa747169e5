"""GGUF export (gpt2kit.export.gguf): llama.cpp's gpt2 names, layouts and metadata, read back with gguf's
own reader; f32 tensors equal the model's, f16 and q8_0 close. llama.cpp itself runs the file when
llama-cpp-python is installed (it is not a test dependency: building it takes too long)."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the GGUF export needs the [gguf] extra")

import gpt2kit  # noqa: E402
from gpt2kit.cli import main  # noqa: E402
from gpt2kit.export.gguf import export_gguf  # noqa: E402
from gpt2kit.tokenizer.bpe import bytes_to_unicode  # noqa: E402
from hf_oracle import hf_model  # noqa: E402

MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # llama.cpp's LlamaFileType: ALL_F32, MOSTLY_F16, MOSTLY_Q8_0


def write_tiny_tokenizer(folder) -> dict[str, int]:
    """A byte-level BPE vocabulary in GPT-2's format: the 256 byte symbols, three merges, <|endoftext|>."""
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    return vocab


def make_model(folder, **config):
    """A tiny checkpoint with its own tokenizer; one embedding row more than the vocabulary has tokens."""
    vocab = write_tiny_tokenizer(folder)
    hf_model("GPT2LMHeadModel", seed=11, vocab_size=len(vocab) + 1, **config).save_pretrained(folder)
    return vocab, gpt2kit.GPT2LMHeadModel.from_pretrained(folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf-model")
    vocab, model = make_model(folder)
    files = {dtype: export_gguf(folder, folder / f"tiny-{dtype}.gguf", dtype=dtype) for dtype in FILE_TYPES}
    return folder, vocab, model, files


def fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def expected_tensors(model) -> dict[str, np.ndarray]:
    """llama.cpp's names and layouts, written out here independently of the exporter: GPT-2's (in, out)
    projections transposed to (out, in), everything else as stored."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = {
        "token_embd.weight": sd["transformer.wte.weight"],
        "position_embd.weight": sd["transformer.wpe.weight"],
        "output_norm.weight": sd["transformer.ln_f.weight"],
        "output_norm.bias": sd["transformer.ln_f.bias"],
    }
    for i in range(model.config.n_layer):
        h = f"transformer.h.{i}."
        pairs = {
            "attn_norm": ("ln_1", False),
            "ffn_norm": ("ln_2", False),
            "attn_qkv": ("attn.c_attn", True),
            "attn_output": ("attn.c_proj", True),
            "ffn_up": ("mlp.c_fc", True),
            "ffn_down": ("mlp.c_proj", True),
        }
        for theirs, (ours, transposed) in pairs.items():
            w = sd[h + ours + ".weight"]
            out[f"blk.{i}.{theirs}.weight"] = w.T if transposed else w
            out[f"blk.{i}.{theirs}.bias"] = sd[h + ours + ".bias"]
    return out


def read_tensors(reader) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (ggml type, float32 values in numpy order), dequantizing as llama.cpp would."""
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape))  # ggml lists the fastest dimension first
        out[t.name] = (t.tensor_type.name, np.asarray(values, np.float32).reshape(shape))
    return out


@pytest.mark.parametrize("dtype", list(FILE_TYPES))
def test_metadata_and_tokenizer(checkpoint, dtype):
    _, vocab, model, files = checkpoint
    meta = fields(gguf.GGUFReader(files[dtype]))
    c = model.config
    assert meta["general.architecture"] == "gpt2"
    assert meta["general.file_type"] == FILE_TYPES[dtype]
    assert meta["gpt2.context_length"] == c.n_positions
    assert meta["gpt2.embedding_length"] == c.n_embd
    assert meta["gpt2.feed_forward_length"] == 4 * c.n_embd
    assert meta["gpt2.block_count"] == c.n_layer
    assert meta["gpt2.attention.head_count"] == c.n_head
    assert meta["gpt2.attention.layer_norm_epsilon"] == pytest.approx(c.layer_norm_epsilon)
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    eos = vocab["<|endoftext|>"]
    by_id = sorted(vocab, key=vocab.get)
    assert meta["tokenizer.ggml.tokens"] == [*by_id, f"[PAD{len(vocab)}]"]  # one token per embedding row
    types = meta["tokenizer.ggml.token_type"]
    assert types[eos] == gguf.TokenType.CONTROL and types[-1] == gguf.TokenType.UNUSED
    assert set(types[:eos]) == {gguf.TokenType.NORMAL}
    assert meta["tokenizer.ggml.merges"] == ["Ġ t", "h e", "Ġt he"]
    assert meta["tokenizer.ggml.bos_token_id"] == meta["tokenizer.ggml.eos_token_id"] == eos
    assert meta["tokenizer.ggml.add_bos_token"] is False


def test_f32_tensors_equal_the_model(checkpoint):
    _, _, model, files = checkpoint
    got = read_tensors(gguf.GGUFReader(files["f32"]))
    want = expected_tensors(model)
    assert set(got) == set(want)  # tied head: no output.weight, llama.cpp reuses token_embd
    for name, array in want.items():
        kind, values = got[name]
        assert kind == "F32", name
        np.testing.assert_array_equal(values, array, err_msg=name)


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_f16_and_q8_0_tensors_are_close(checkpoint, dtype):
    _, _, model, files = checkpoint
    got = read_tensors(gguf.GGUFReader(files[dtype]))
    for name, array in expected_tensors(model).items():
        kind, values = got[name]
        if array.ndim == 1 or name.startswith("position_embd"):
            assert kind == "F32", name  # as llama.cpp's converter keeps them
            np.testing.assert_array_equal(values, array, err_msg=name)
            continue
        assert kind == dtype.upper(), name
        # f16: 11 significant bits; q8_0: one scale per 32 values, 8 bits each.
        tol = 1e-3 * np.abs(array).max() if dtype == "f16" else np.abs(array).max() / 127
        np.testing.assert_allclose(values, array, atol=tol, rtol=0, err_msg=name)
    assert files[dtype].stat().st_size < 0.6 * files["f32"].stat().st_size


def test_untied_head_and_q8_0_fallback(tmp_path, caplog):
    """An untied LM head is written as output.weight; q8_0 rows must be multiples of 32 (n_embd 48 is not),
    so such weights fall back to f16 as in llama.cpp's converter."""
    _, model = make_model(tmp_path / "m", n_embd=48, tie_word_embeddings=False)
    assert model.lm_head.weight is not model.transformer.wte.weight
    with caplog.at_level(logging.WARNING, logger="gpt2kit.export.gguf"):
        path = export_gguf(tmp_path / "m", tmp_path / "m.gguf", dtype="q8_0")
    got = read_tensors(gguf.GGUFReader(path))
    kind, values = got["output.weight"]
    assert kind == "F16"
    np.testing.assert_allclose(values, model.lm_head.weight.detach().numpy(), atol=2e-3)
    assert got["blk.0.attn_qkv.weight"][0] == "F16"  # rows of 48
    assert got["blk.0.ffn_down.weight"][0] == "Q8_0"  # rows of 192
    assert "attn_qkv" in caplog.text


def test_cli(checkpoint, tmp_path, capsys):
    folder = checkpoint[0]
    out = tmp_path / "sub" / "model.gguf"
    assert main(["export", "gguf", "--model", str(folder), "-o", str(out), "--dtype", "q8_0"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert fields(gguf.GGUFReader(out))["general.file_type"] == 7
    assert [p.name for p in out.parent.iterdir()] == ["model.gguf"]  # no temporary file left


def test_errors(tmp_path, monkeypatch, capsys):
    bare = tmp_path / "bare"
    hf_model("GPT2LMHeadModel", n_layer=1).save_pretrained(bare)  # no tokenizer files
    with pytest.raises(FileNotFoundError, match="--tokenizer gpt2"):
        export_gguf(bare, tmp_path / "x.gguf")
    assert main(["export", "gguf", "--model", str(bare), "-o", str(tmp_path / "x.gguf")]) == 2
    assert "needs the tokenizer" in capsys.readouterr().err
    with pytest.raises(ValueError, match="vocab_size is 99"):
        export_gguf(bare, tmp_path / "x.gguf", tokenizer="gpt2")
    with pytest.raises(ValueError, match="dtype must be one of f32, f16, q8_0"):
        export_gguf(bare, tmp_path / "x.gguf", dtype="q4_0")
    with pytest.raises(ValueError, match="is a folder"):
        export_gguf(bare, tmp_path)
    relu = tmp_path / "relu"
    make_model(relu, activation_function="relu")
    with pytest.raises(ValueError, match="activation_function='relu'"):
        export_gguf(relu, tmp_path / "relu.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)
    assert main(["export", "gguf", "--model", str(relu), "-o", str(tmp_path / "y.gguf")]) == 2
    assert "pip install 'gpt2kit[gguf]'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.gguf"))


def test_llama_cpp_runs_the_file_greedily_like_generate(checkpoint):
    """llama.cpp's own GPT-2 graph on the f32 file picks the same greedy tokens as generate()."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (not a test dependency: it compiles llama.cpp)"
    )
    _, _, model, files = checkpoint
    prompt = [116, 257, 258, 10, 40, 41]
    new = 12
    want = model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, pad_token_id=0)
    llm = llama_cpp.Llama(
        model_path=str(files["f32"]), n_ctx=model.config.n_positions, n_threads=1, verbose=False
    )
    llm.eval(prompt)
    got = []
    for _ in range(new):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        got.append(token)
        llm.eval([token])
    assert got == want[0, len(prompt) :].tolist()
