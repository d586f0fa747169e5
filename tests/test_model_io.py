"""Checkpoint folders both ways (transformers <-> gpt2kit), weight formats, init, and clear errors."""

from __future__ import annotations

import json
import logging
import math
import zipfile

import pytest
import torch
from torch.testing import assert_close

import gpt2kit
from gpt2kit import GPT2Config, GPT2LMHeadModel, GPT2Model
from hf_oracle import TINY, hf_model, load_hf

TOL = dict(atol=1e-5, rtol=1e-5)


def x_ids(B=2, T=8, seed=0):
    return torch.randint(0, TINY["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def hf_lm(tmp_path_factory):
    model = hf_model("GPT2LMHeadModel")
    folder = tmp_path_factory.mktemp("hf_lm")
    model.save_pretrained(folder)
    return model, folder


def test_our_save_loads_in_transformers(hf_lm, tmp_path):
    hf, folder = hf_lm
    ours = GPT2LMHeadModel.from_pretrained(folder)
    ours.save_pretrained(tmp_path / "ours")
    saved = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert saved == ["config.json", "generation_config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["model_type"] == "gpt2"
    back = load_hf("GPT2LMHeadModel", tmp_path / "ours")
    x = x_ids()
    with torch.no_grad():
        assert_close(back(x).logits, hf(x).logits, **TOL)
        assert_close(ours(x).logits, hf(x).logits, **TOL)


def test_saved_files_get_the_umask_mode_like_any_new_file(tmp_path):
    """mkstemp and safetensors create 0o600 files; a saved folder must be readable like any other file."""
    import os

    old = os.umask(0o022)
    try:
        model = GPT2LMHeadModel(GPT2Config(**TINY))
        model.save_pretrained(tmp_path / "m", max_shard_size="20KB")
        gpt2kit.GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "m").iterdir()}
    assert len(modes) > 4 and set(modes.values()) == {"0o644"}, modes
    (tmp_path / "m" / "config.json").chmod(0o600)  # the user restricted it: a re-save keeps that
    model.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    assert (tmp_path / "m" / "config.json").stat().st_mode & 0o777 == 0o600


def test_bin_and_sharded_checkpoints(tmp_path):
    hf = hf_model("GPT2LMHeadModel", seed=3)
    x = x_ids()
    with torch.no_grad():
        want = hf(x).logits
    hf.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "pytorch_model.bin").is_file()
    hf.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    hf.save_pretrained(tmp_path / "bin_shards", max_shard_size="20KB", safe_serialization=False)
    assert (tmp_path / "bin_shards" / "pytorch_model.bin.index.json").is_file()
    for name in ("bin", "shards", "bin_shards"):
        with torch.no_grad():
            assert_close(GPT2LMHeadModel.from_pretrained(tmp_path / name)(x).logits, want, **TOL)

    # our own sharded save, read back by transformers and by us
    ours = GPT2LMHeadModel.from_pretrained(tmp_path / "bin")
    ours.save_pretrained(tmp_path / "ours_shards", max_shard_size="20KB")
    index = json.loads((tmp_path / "ours_shards" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    with torch.no_grad():
        assert_close(load_hf("GPT2LMHeadModel", tmp_path / "ours_shards")(x).logits, want, **TOL)
        assert_close(GPT2LMHeadModel.from_pretrained(tmp_path / "ours_shards")(x).logits, want, **TOL)
    # re-saving unsharded removes the stale shards and index
    ours.save_pretrained(tmp_path / "ours_shards")
    files = sorted(p.name for p in (tmp_path / "ours_shards").iterdir())
    assert files == ["config.json", "generation_config.json", "model.safetensors"]


def test_base_checkpoint_into_head_and_back(tmp_path):
    base = hf_model("GPT2Model", seed=4)
    base.save_pretrained(tmp_path / "base")  # keys without the "transformer." prefix
    lm = GPT2LMHeadModel.from_pretrained(tmp_path / "base")
    assert lm.lm_head.weight is lm.transformer.wte.weight
    x = x_ids()
    with torch.no_grad():
        h = base(x).last_hidden_state
        assert_close(lm(x).logits, h @ base.wte.weight.T, **TOL)
    lm.save_pretrained(tmp_path / "head")  # keys with the prefix
    ours_base = GPT2Model.from_pretrained(tmp_path / "head")
    hf_base = load_hf("GPT2Model", tmp_path / "head")
    with torch.no_grad():
        assert_close(ours_base(x).last_hidden_state, h, **TOL)
        assert_close(hf_base(x).last_hidden_state, h, **TOL)


def test_new_head_is_initialised_and_reported(tmp_path, caplog):
    hf_model("GPT2Model", seed=5).save_pretrained(tmp_path / "base")
    with caplog.at_level(logging.WARNING, logger="gpt2kit"):
        clf = gpt2kit.GPT2ForSequenceClassification.from_pretrained(
            tmp_path / "base", num_labels=3, pad_token_id=0
        )
    assert "score.weight" in caplog.text and "newly initialized" in caplog.text
    assert clf.score.weight.device.type == "cpu" and torch.isfinite(clf.score.weight).all()
    assert clf.score.weight.std() > 0
    assert clf.config.num_labels == 3
    with torch.no_grad():
        assert clf(x_ids()).logits.shape == (2, 3)


def test_hf_cache_layout(hf_lm, tmp_path, monkeypatch):
    hf, folder = hf_lm
    repo = tmp_path / "hub" / "models--someone--tiny-gpt2"
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (snap / "onnx").mkdir()  # extra files in a downloaded folder are left alone
    (snap / "onnx" / "model.onnx").write_bytes(b"not read")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = gpt2kit.AutoModelForCausalLM.from_pretrained("someone/tiny-gpt2")
    with torch.no_grad():
        assert_close(model(x_ids()).logits, hf(x_ids()).logits, **TOL)


def test_dtype_options(hf_lm, tmp_path):
    _, folder = hf_lm
    assert GPT2LMHeadModel.from_pretrained(folder).dtype == torch.float32
    assert GPT2LMHeadModel.from_pretrained(folder, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert GPT2LMHeadModel.from_pretrained(folder, torch_dtype="bfloat16").dtype == torch.bfloat16
    half = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float16)
    half.save_pretrained(tmp_path / "half")
    assert GPT2LMHeadModel.from_pretrained(tmp_path / "half", dtype="auto").dtype == torch.float16
    assert json.loads((tmp_path / "half" / "config.json").read_text())["torch_dtype"] == "float16"
    with pytest.raises(ValueError, match="unknown dtype"):
        GPT2LMHeadModel.from_pretrained(folder, dtype="float8")


def test_random_init_matches_gpt2_scheme():
    cfg = GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=1000, n_positions=128)
    torch.manual_seed(0)
    m = GPT2LMHeadModel(cfg)
    std = cfg.initializer_range
    assert abs(m.transformer.h[0].attn.c_attn.weight.std().item() - std) < 0.002
    assert abs(m.transformer.h[0].mlp.c_proj.weight.std().item() - std / math.sqrt(2 * cfg.n_layer)) < 0.001
    assert m.transformer.h[0].attn.c_attn.bias.abs().max() == 0
    assert torch.equal(m.transformer.ln_f.weight, torch.ones(256))
    assert m.lm_head.weight is m.transformer.wte.weight

    import transformers

    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg.to_dict()))
    assert m.num_parameters() == hf.num_parameters()
    assert m.num_parameters(exclude_embeddings=True) == hf.num_parameters(exclude_embeddings=True)


def test_resize_token_embeddings_keeps_tying():
    m = GPT2LMHeadModel(GPT2Config(**TINY))
    old = m.transformer.wte.weight.detach().clone()
    m.resize_token_embeddings(105)
    assert m.config.vocab_size == 105 and m.transformer.wte.weight.shape == (105, 32)
    assert m.lm_head.weight is m.transformer.wte.weight
    assert torch.equal(m.transformer.wte.weight[:99], old)
    with torch.no_grad():
        assert m(torch.tensor([[104, 3]])).logits.shape == (1, 2, 105)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(**TINY, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train()
    x = x_ids()
    m(x, labels=x).loss.backward()
    want = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.gradient_checkpointing_enable()
    assert m.is_gradient_checkpointing
    m(x, labels=x).loss.backward()
    for g, w in zip((p.grad for p in m.parameters()), want):
        assert_close(g, w, **TOL)


# --- errors ------------------------------------------------------------------------------------------------


def test_missing_folder_and_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-dir") as e:
        GPT2LMHeadModel.from_pretrained(tmp_path / "no-such-dir")
    assert "config.json" in str(e.value)
    (tmp_path / "empty").mkdir()
    GPT2Config(**TINY).save_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        GPT2LMHeadModel.from_pretrained(tmp_path / "empty")


def test_truncated_and_corrupt_weights(hf_lm, tmp_path):
    _, folder = hf_lm
    bad = tmp_path / "truncated"
    bad.mkdir()
    (bad / "config.json").write_bytes((folder / "config.json").read_bytes())
    data = (folder / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        GPT2LMHeadModel.from_pretrained(bad)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        GPT2LMHeadModel.from_pretrained(bad)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bin_with_pickled_code_is_refused(hf_lm, tmp_path, capsys):
    _, folder = hf_lm
    bad = tmp_path / "evil"
    bad.mkdir()
    (bad / "config.json").write_bytes((folder / "config.json").read_bytes())
    torch.save({"transformer.wte.weight": torch.zeros(99, 32), "x": _Evil()}, bad / "pytorch_model.bin")
    with pytest.raises(ValueError, match="never runs pickled code"):
        GPT2LMHeadModel.from_pretrained(bad)
    assert "this must never run" not in capsys.readouterr().out


def _legacy_bin(hf, folder):
    """A folder as torch < 1.6 (and old transformers) wrote it: pytorch_model.bin in the non-zip format."""
    folder.mkdir()
    hf.config.save_pretrained(folder)
    torch.save(hf.state_dict(), folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(folder / "pytorch_model.bin")
    return folder


def test_legacy_non_zip_bin_loads_like_transformers(tmp_path):
    hf = hf_model("GPT2LMHeadModel", seed=5, vocab_size=100, n_head=2)
    folder = _legacy_bin(hf, tmp_path / "legacy")
    x = x_ids()
    with torch.no_grad():
        want = hf(x).logits
        assert_close(load_hf("GPT2LMHeadModel", folder)(x).logits, want, **TOL)  # the oracle reads it too
        assert_close(GPT2LMHeadModel.from_pretrained(folder)(x).logits, want, **TOL)
    info = gpt2kit.model.weights.inspect_checkpoint(folder)
    assert info["num_parameters"] == sum(p.numel() for p in hf.parameters())


def test_truncated_legacy_bin_is_reported_as_corrupt(tmp_path):
    folder = _legacy_bin(hf_model("GPT2LMHeadModel"), tmp_path / "legacy")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        GPT2LMHeadModel.from_pretrained(folder)


class _Boom:
    """Unpickling this creates `marker`: the stand-in for any code an attacker would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_bin_with_a_payload_is_refused_in_either_format(hf_lm, tmp_path, legacy):
    _, folder = hf_lm
    bad = tmp_path / "evil"
    bad.mkdir()
    (bad / "config.json").write_bytes((folder / "config.json").read_bytes())
    marker = tmp_path / "marker"
    state = {"transformer.wte.weight": torch.zeros(99, 32), "x": _Boom(marker)}
    torch.save(state, bad / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    # The payload is armed (a plain torch.load runs it), so its absence below proves something.
    torch.load(bad / "pytorch_model.bin", weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match="never runs pickled code"):
        GPT2LMHeadModel.from_pretrained(bad)
    assert not marker.exists()


def test_config_that_does_not_match_the_weights(hf_lm, tmp_path):
    _, folder = hf_lm
    bad = tmp_path / "mismatch"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_embd"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"c_attn\.weight: checkpoint \(32, 96\), model \(64, 192\)"):
        GPT2LMHeadModel.from_pretrained(bad)


def test_not_gpt2(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama' model; gpt2kit implements GPT-2 only"):
        gpt2kit.AutoModel.from_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="not GPT-2"):
        GPT2LMHeadModel.from_pretrained(tmp_path / "llama")


def test_bad_forward_inputs():
    m = GPT2LMHeadModel(GPT2Config(**TINY)).eval()
    with pytest.raises(ValueError, match=r"sequence length 65 exceeds the model's n_positions=64"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token id 99, outside the vocabulary \[0, 99\)"):
        m(torch.tensor([[1, 99]]))
    with pytest.raises(ValueError, match="token id -1"):
        m(torch.tensor([[1, -1]]))
    with pytest.raises(TypeError, match="integer token ids"):
        m(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="not both"):
        m(torch.tensor([[1]]), inputs_embeds=torch.zeros(1, 1, 32))
    with pytest.raises(ValueError, match=r"attention_mask covers 3 positions"):
        m(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 3))
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        m(torch.tensor([[1]]), output_hidden_state=True)
    with pytest.raises(ValueError, match="add_cross_attention=True"):
        m(torch.tensor([[1]]), encoder_hidden_states=torch.zeros(1, 2, 32))
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        GPT2LMHeadModel.from_pretrained("anything", torch_dtpye="float16")
    clf = gpt2kit.GPT2ForSequenceClassification(GPT2Config(**TINY)).eval()
    with pytest.raises(ValueError, match="pad_token_id"):
        clf(torch.tensor([[1, 2], [3, 4]]))


def test_cli_info(hf_lm, capsys, tmp_path):
    from gpt2kit.cli import main

    hf, folder = hf_lm
    assert main(["info", "--model", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "2 layers x 32 wide, 4 heads" in out and "model.safetensors" in out
    assert main(["info", "--model", str(folder), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_parameters"] == GPT2LMHeadModel.from_pretrained(folder).num_parameters()
    assert summary["num_parameters"] == hf.num_parameters()
    assert summary["dtypes"] == {"float32": len(hf.state_dict()) - 1}  # lm_head is not saved: tied
    assert main(["info", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err


# --- transformers' loading keywords, 4D masks, resizing ---------------------------------------------------


def test_loading_info_and_mismatched_sizes_like_transformers(hf_lm, tmp_path):
    import transformers

    _, folder = hf_lm
    with pytest.raises(RuntimeError):
        transformers.GPT2Model.from_pretrained(folder, vocab_size=50)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes=True"):
        GPT2Model.from_pretrained(folder, vocab_size=50)
    kwargs = dict(vocab_size=50, ignore_mismatched_sizes=True, output_loading_info=True)
    theirs, their_info = transformers.GPT2LMHeadModel.from_pretrained(folder, **kwargs)
    ours, info = GPT2LMHeadModel.from_pretrained(folder, **kwargs)
    assert set(info) == set(their_info)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert info["mismatched_keys"] == their_info["mismatched_keys"] == ["transformer.wte.weight"]
    assert (
        ours.get_input_embeddings().weight.shape == (50, 32)
        and ours.lm_head.weight is ours.transformer.wte.weight
    )
    assert_close(ours.transformer.h[0].attn.c_attn.weight, theirs.transformer.h[0].attn.c_attn.weight)


def test_from_state_dict_without_a_folder(hf_lm):
    _, folder = hf_lm
    source = GPT2LMHeadModel.from_pretrained(folder)
    copy = GPT2LMHeadModel.from_pretrained(None, config=source.config, state_dict=source.state_dict())
    x = x_ids()
    with torch.no_grad():
        assert_close(copy(x).logits, source(x).logits, **TOL)
    assert copy.transformer.wte.weight.data_ptr() != source.transformer.wte.weight.data_ptr()
    with pytest.raises(ValueError, match="needs both config= and state_dict="):
        GPT2LMHeadModel.from_pretrained(None, state_dict=source.state_dict())


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_4d_attention_mask_like_transformers(hf_lm, attn_implementation):
    """A caller-built (B, 1, T, S) mask: two continuations sharing a prefix, in one row."""
    hf, folder = hf_lm
    ours = GPT2LMHeadModel.from_pretrained(folder, attn_implementation=attn_implementation)
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    allowed = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]]
    ).bool()[None, None]
    mask = (~allowed).float() * torch.finfo(torch.float32).min  # additive, as transformers takes it
    positions = torch.tensor([[0, 1, 2, 2, 3]])
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, position_ids=positions).logits
        assert_close(ours(ids, attention_mask=mask, position_ids=positions).logits, want, **TOL)
    with pytest.raises(ValueError, match=r"a 4D attention_mask must have shape \(1, 1, 5, 5\)"):
        ours(ids, attention_mask=mask[..., :4])
    with pytest.raises(TypeError, match="a 4D attention_mask must be a float mask"):
        ours(ids, attention_mask=allowed)


def test_resize_token_embeddings_like_transformers(hf_lm):
    import transformers

    _, folder = hf_lm
    for tie in (True, False):
        ours = GPT2LMHeadModel.from_pretrained(folder, tie_word_embeddings=tie)
        theirs = transformers.GPT2LMHeadModel.from_pretrained(folder, tie_word_embeddings=tie)
        if not tie:  # the tied checkpoint holds no head of its own: both drew one; give them the same
            with torch.no_grad():
                ours.lm_head.weight.copy_(theirs.lm_head.weight)
        for model in (ours, theirs):
            model.resize_token_embeddings(99 + 13, pad_to_multiple_of=8)
        assert ours.config.vocab_size == theirs.config.vocab_size == 112
        for a, b in ((ours.transformer.wte, theirs.transformer.wte), (ours.lm_head, theirs.lm_head)):
            assert_close(a.weight[:99], b.weight[:99])
            # new rows: the old rows' mean, up to a draw with 1e-9 x their covariance
            assert_close(a.weight[99:], b.weight[99:], atol=1e-3, rtol=0)
        assert (ours.lm_head.weight is ours.transformer.wte.weight) == tie
        for bad in (1.3, "8"):
            with pytest.raises(ValueError, match="pad_to_multiple_of must be an integer"):
                ours.resize_token_embeddings(120, pad_to_multiple_of=bad)
        assert ours.resize_token_embeddings() is ours.get_input_embeddings()


def test_config_n_embd_check_and_gradient_checkpointing_key_like_transformers():
    import transformers

    config = GPT2Config(n_embd=30, n_head=4, n_layer=1, vocab_size=10)
    assert transformers.GPT2Config(n_embd=30, n_head=4).n_embd == config.n_embd == 30
    with pytest.raises(ValueError):
        transformers.GPT2Model(transformers.GPT2Config(n_embd=30, n_head=4, n_layer=1, vocab_size=10))
    with pytest.raises(
        ValueError, match=r"n_embd \(30\) must be divisible by n_head \(4\) to build GPT2Model"
    ):
        GPT2Model(config)
    config = GPT2Config(n_layer=1, vocab_size=10, n_embd=32, n_head=4)
    config.gradient_checkpointing = True  # a key of old config.json files
    model = GPT2LMHeadModel(config)
    assert model.is_gradient_checkpointing and "gradient_checkpointing" not in model.config.to_dict()
    assert GPT2LMHeadModel.can_generate() and not GPT2Model.can_generate()
    assert GPT2LMHeadModel._tied_weights_keys == transformers.GPT2LMHeadModel._tied_weights_keys
