"""ONNX export (gpt2kit.export.onnx): the Hub's onnx/ layout, run by ONNX Runtime and held to gpt2kit's logits
for prefill, cached steps, both branches of the merged decoder, and a greedy loop against generate()."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the ONNX export needs the [onnx] extra")
ort = pytest.importorskip("onnxruntime", reason="the ONNX export tests need the [onnx] extra")

import gpt2kit  # noqa: E402
from gpt2kit import GPT2Config, GPT2TokenizerFast  # noqa: E402
from gpt2kit.cli import main  # noqa: E402
from gpt2kit.export import onnx as export  # noqa: E402
from hf_oracle import TINY, hf_model  # noqa: E402

TOL = dict(atol=1e-4, rtol=1e-4)
N_LAYER, N_HEAD, HEAD_DIM = TINY["n_layer"], TINY["n_head"], TINY["n_embd"] // TINY["n_head"]
FILES = {
    "decoder_model.onnx",
    "decoder_with_past_model.onnx",
    "decoder_model_merged.onnx",
    "decoder_model_quantized.onnx",
    "decoder_with_past_model_quantized.onnx",
    "decoder_model_merged_quantized.onnx",
    "model.onnx",  # transformers.js's name for the decoder with past
    "model_quantized.onnx",
    "config.json",
    "generation_config.json",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random checkpoint written by transformers, exported once with --quantize int8 (into MODEL/onnx)."""
    folder = tmp_path_factory.mktemp("onnx-model")
    hf_model("GPT2LMHeadModel", seed=3).save_pretrained(folder)
    written = export.export_onnx(folder, quantize="int8")
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder)
    return folder / "onnx", written, model


def session(folder, name):
    return ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])


def pasts(presents) -> dict[str, np.ndarray]:
    return dict(zip(export.past_names(N_LAYER), presents))


def empty_pasts(batch, length=0) -> dict[str, np.ndarray]:
    return {n: np.zeros((batch, N_HEAD, length, HEAD_DIM), np.float32) for n in export.past_names(N_LAYER)}


def padded_prompt(B=2, T=7, seed=0):
    """Left padding in row 0, as a batch of prompts of different lengths is fed."""
    ids = torch.randint(0, TINY["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :3] = 0
    return ids, mask, positions(mask)


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)  # as transformers and Optimum make them from the mask


def feed(ids, mask, pos, **extra) -> dict[str, np.ndarray]:
    return {
        "input_ids": ids.numpy(),
        "attention_mask": mask.numpy(),
        "position_ids": pos.numpy(),
        **extra,
    }


def test_files_names_and_configs(exported):
    folder, written, model = exported
    assert {p.name for p in written} == FILES
    assert {p.name for p in folder.iterdir()} == FILES  # no temporary files left behind
    past, present = export.past_names(N_LAYER), export.present_names(N_LAYER)
    assert past[:2] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert present[-1] == f"present.{N_LAYER - 1}.value"
    base = ["input_ids", "attention_mask", "position_ids"]
    expected_inputs = {
        "decoder_model": base,
        "decoder_with_past_model": base + past,
        "decoder_model_merged": base + past + ["use_cache_branch"],
    }
    for stem, inputs in expected_inputs.items():
        for suffix in ("", "_quantized"):
            s = session(folder, f"{stem}{suffix}.onnx")
            assert [i.name for i in s.get_inputs()] == inputs
            assert [o.name for o in s.get_outputs()] == ["logits", *present]
            types = {i.name: i.type for i in s.get_inputs()}
            assert types["input_ids"] == types["attention_mask"] == "tensor(int64)"
            if "use_cache_branch" in types:
                assert types["use_cache_branch"] == "tensor(bool)"
                assert s.get_inputs()[-1].shape == [1]
    # The loaders read these beside the graphs.
    config = GPT2Config.from_pretrained(folder)
    assert (config.n_layer, config.n_embd, config.vocab_size) == (N_LAYER, TINY["n_embd"], TINY["vocab_size"])
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    assert json.loads((folder / "config.json").read_text())["model_type"] == "gpt2"
    # The merged file stores the weights once, not once per branch.
    merged = (folder / "decoder_model_merged.onnx").stat().st_size
    assert merged < 0.7 * sum(
        (folder / f).stat().st_size for f in ("decoder_model.onnx", "decoder_with_past_model.onnx")
    )


def test_prefill_matches_gpt2kit(exported):
    folder, _, model = exported
    s = session(folder, "decoder_model.onnx")
    # Unpadded: logits and every present (key, value) equal the model's.
    ids = torch.randint(0, TINY["vocab_size"], (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    logits, *presents = s.run(None, feed(ids, mask, positions(mask)))
    with torch.no_grad():
        out = model(ids, use_cache=True)
    torch.testing.assert_close(torch.from_numpy(logits), out.logits, **TOL)
    ref = [t for kv in out.past_key_values.to_legacy_cache() for t in kv]
    for got, want in zip(presents, ref, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), want, **TOL)
    # Left-padded: the real positions' logits (padding rows are garbage on both sides).
    ids, mask, pos = padded_prompt()
    logits, *_ = s.run(None, feed(ids, mask, pos))
    with torch.no_grad():
        want = model(ids, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    torch.testing.assert_close(torch.from_numpy(logits)[real], want[real], **TOL)


def test_cached_steps_match_gpt2kit(exported):
    folder, _, model = exported
    prefill, step = session(folder, "decoder_model.onnx"), session(folder, "decoder_with_past_model.onnx")
    ids, mask, pos = padded_prompt(seed=2)
    logits, *presents = prefill.run(None, feed(ids, mask, pos))
    with torch.no_grad():
        out = model(ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache = out.past_key_values
    g = torch.Generator().manual_seed(5)
    for t in range(4):
        new = 1 if t else 2  # a two-token step after a past too
        nxt = torch.randint(0, TINY["vocab_size"], (2, new), generator=g)
        mask = torch.cat([mask, torch.ones(2, new, dtype=torch.long)], dim=1)
        pos = pos[:, -1:] + torch.arange(1, new + 1)
        logits, *presents = step.run(None, feed(nxt, mask, pos, **pasts(presents)))
        with torch.no_grad():
            out = model(nxt, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        torch.testing.assert_close(torch.from_numpy(logits), out.logits, **TOL)
        assert presents[0].shape == (2, N_HEAD, mask.shape[1], HEAD_DIM)


def test_merged_runs_both_branches(exported):
    folder, _, _ = exported
    plain, with_past = session(folder, "decoder_model.onnx"), session(folder, "decoder_with_past_model.onnx")
    merged = session(folder, "decoder_model_merged.onnx")
    ids, mask, pos = padded_prompt(seed=4)
    want, *want_presents = plain.run(None, feed(ids, mask, pos))
    # use_cache_branch False: the pasts are ignored, whatever their length (transformers.js feeds 0, older
    # Optimum 1).
    for dummy in (0, 1):
        got, *got_presents = merged.run(
            None, feed(ids, mask, pos, use_cache_branch=np.array([False]), **empty_pasts(2, dummy))
        )
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_presents[-1], want_presents[-1])
    # use_cache_branch True: the with-past graph.
    nxt = torch.tensor([[5], [7]])
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    pos2 = pos[:, -1:] + 1
    step = feed(nxt, mask2, pos2, **pasts(want_presents))
    want_step, *_ = with_past.run(None, step)
    got_step, *_ = merged.run(None, {**step, "use_cache_branch": np.array([True])})
    np.testing.assert_array_equal(got_step, want_step)
    # The with-past graph alone is a prefill too when its past is empty (how the benchmark runs it).
    got, *_ = with_past.run(None, feed(ids, mask, pos, **empty_pasts(2)))
    np.testing.assert_allclose(got, want, atol=1e-5)


def greedy(merged, ids: torch.Tensor, mask: torch.Tensor, new: int) -> np.ndarray:
    """A greedy loop over the merged decoder, fed as Optimum and transformers.js feed it."""
    batch = ids.shape[0]
    pos = positions(mask)
    logits, *presents = merged.run(
        None, feed(ids, mask, pos, use_cache_branch=np.array([False]), **empty_pasts(batch))
    )
    out = []
    for _ in range(new):
        nxt = torch.from_numpy(logits[:, -1].argmax(-1))[:, None]
        out.append(nxt)
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.long)], dim=1)
        pos = pos[:, -1:] + 1
        logits, *presents = merged.run(
            None, feed(nxt, mask, pos, use_cache_branch=np.array([True]), **pasts(presents))
        )
    return torch.cat(out, dim=1).numpy()


def test_greedy_loop_equals_generate(exported):
    folder, _, model = exported
    ids, mask, _ = padded_prompt(B=3, T=6, seed=6)
    new = 24
    want = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0)
    got = greedy(session(folder, "decoder_model_merged.onnx"), ids, mask, new)
    np.testing.assert_array_equal(got, want[:, ids.shape[1] :].numpy())


def test_int8_runs_and_mostly_agrees(exported):
    """Dynamic int8 changes the numbers; the top-1 token of most positions stays (teacher forcing on one
    sequence, so a single flip does not cascade)."""
    folder, _, model = exported
    ids = torch.randint(0, TINY["vocab_size"], (4, 32), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = model(ids).logits.argmax(-1).numpy()
    for name in ("decoder_model_quantized.onnx", "decoder_model_merged_quantized.onnx"):
        extra = {"use_cache_branch": np.array([False]), **empty_pasts(4)} if "merged" in name else {}
        logits, *_ = session(folder, name).run(None, feed(ids, mask, positions(mask), **extra))
        agree = (logits.argmax(-1) == want).mean()
        assert agree >= 0.8, f"{name}: top-1 agreement {agree:.2f}"
    # The quantized decoders chain like the float ones.
    got = greedy(session(folder, "decoder_model_merged_quantized.onnx"), ids[:, :5], mask[:, :5], 4)
    assert got.shape == (4, 4)


def test_large_models_keep_weights_in_one_data_file(exported, tmp_path):
    """Above the protobuf limit the weights go to `<name>_data`, as the Hub names it; forced small here."""
    import onnx

    folder, _, _ = exported
    path = export.save_model(
        onnx.load(str(folder / "decoder_model.onnx")), tmp_path / "decoder_model.onnx", 0
    )
    assert {p.name for p in tmp_path.iterdir()} == {"decoder_model.onnx", "decoder_model.onnx_data"}
    assert path.stat().st_size < 50_000  # the graph only
    ids, mask, pos = padded_prompt()
    want = session(folder, "decoder_model.onnx").run(None, feed(ids, mask, pos))[0]
    np.testing.assert_array_equal(
        session(tmp_path, "decoder_model.onnx").run(None, feed(ids, mask, pos))[0], want
    )


def test_whole_export_with_external_data(tmp_path, monkeypatch):
    """The path a model over 2 GiB takes (every file's weights in `<name>_data`), forced on a tiny one: the
    exporter, the merge and the quantizer all read and write external data."""
    monkeypatch.setattr(export, "EXTERNAL_DATA_ABOVE", 0)
    folder = tmp_path / "model"
    hf_model("GPT2LMHeadModel", seed=3).save_pretrained(folder)
    written = export.export_onnx(folder, tmp_path / "out", quantize="int8")
    graphs = [p for p in written if p.suffix == ".onnx"]
    assert len(graphs) == 8 and all(p.with_name(p.name + "_data") in written for p in graphs)
    ids, mask, pos = padded_prompt()
    want = session(tmp_path / "out", "decoder_model.onnx").run(None, feed(ids, mask, pos))[0]
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(torch.from_numpy(want)[mask.bool()], ref[mask.bool()], **TOL)
    for name in ("decoder_model_merged.onnx", "decoder_model_merged_quantized.onnx"):
        got = session(tmp_path / "out", name).run(
            None, feed(ids, mask, pos, use_cache_branch=np.array([False]), **empty_pasts(2))
        )[0]
        if "quantized" not in name:
            np.testing.assert_array_equal(got, want)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files


def test_cli_with_tokenizer_files(tmp_path, capsys):
    """`gpt2kit export onnx` on a GPT-2-vocabulary model: the tokenizer files go beside the graphs."""
    folder = tmp_path / "model"
    hf_model("GPT2LMHeadModel", vocab_size=50257, n_layer=1).save_pretrained(folder)
    out = tmp_path / "exported"
    out.mkdir()
    (out / "decoder_model_merged_quantized.onnx").write_bytes(b"from an earlier export, of other weights")
    assert main(["export", "onnx", "--model", str(folder), "--out", str(out), "--tokenizer", "gpt2"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "config.json"} <= names
    assert "decoder_model_merged.onnx" in names and not any(
        "quantized" in n for n in names
    )  # stale one removed
    assert str(out / "decoder_model.onnx") in capsys.readouterr().out
    tok = GPT2TokenizerFast.from_pretrained(out)
    assert tok("Hello world")["input_ids"] == [15496, 995]


def test_cli_errors(tmp_path, capsys):
    folder = tmp_path / "model"
    hf_model("GPT2LMHeadModel", n_layer=1).save_pretrained(folder)  # 99 tokens: GPT-2's vocabulary is larger
    assert main(["export", "onnx", "--model", str(folder), "--tokenizer", "gpt2"]) == 2
    err = capsys.readouterr().err
    assert "50257 tokens" in err and "vocab_size is 99" in err
    assert main(["export", "onnx", "--model", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="quantize must be None or 'int8'"):
        export.export_onnx(folder, quantize="int4")
    cross = tmp_path / "cross"
    hf_model("GPT2LMHeadModel", n_layer=1, add_cross_attention=True).save_pretrained(cross)
    with pytest.raises(ValueError, match="cross-attention"):
        export.export_onnx(cross)


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "model"
    hf_model("GPT2LMHeadModel", n_layer=1).save_pretrained(folder)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'gpt2kit\[onnx\]'"):
        export.export_onnx(folder)
    assert main(["export", "onnx", "--model", str(folder)]) == 2
    assert "pip install 'gpt2kit[onnx]'" in capsys.readouterr().err
    assert not (folder / "onnx").exists()


def test_importing_gpt2kit_imports_no_export_dependency():
    code = (
        "import sys, gpt2kit, gpt2kit.cli, gpt2kit.export.onnx, gpt2kit.export.gguf\n"
        "gpt2kit.cli.build_parser()\n"
        "print([m for m in ('onnx', 'onnxruntime', 'gguf') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
