"""LoRA in peft's format: adapters trained by gpt2kit load in peft with the same logits and the other way
round, only the adapter trains and is saved, resume is exact, merging equals the unmerged adapter, and the
CLI (`train --lora`, `merge`) works end to end with clear errors.

The oracle is peft itself (peft.PeftModel over transformers' GPT2LMHeadModel) on tiny random checkpoints
built here with transformers, with large random weights (hf_oracle) so a wrongly wired update cannot hide.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt2kit import GPT2LMHeadModel, LoraConfig, load_adapter, merge_adapter, merge_and_unload
from gpt2kit.cli import main
from gpt2kit.model.lora import LoraLinear, adapter_state_dict
from gpt2kit.training.config import TrainingConfig
from gpt2kit.training.trainer import Trainer

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every folder here is local; never ask the Hub

VOCAB = 99  # hf_oracle.TINY's


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny random transformers GPT-2 LM checkpoint (2 layers, n_embd 32)."""
    from hf_oracle import hf_model

    folder = tmp_path_factory.mktemp("base")
    hf_model("GPT2LMHeadModel", seed=3).save_pretrained(folder)
    return folder


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int = 8, T: int = 12, seed: int = 0) -> None:
        self.x = torch.randint(0, VOCAB, (n, T), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


IDS = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(7))


def hf_lm(folder: Path):
    return transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()


def peft_logits(base: Path, adapter: Path) -> torch.Tensor:
    with torch.no_grad():
        return peft.PeftModel.from_pretrained(hf_lm(base), adapter).eval()(IDS).logits


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits


def train(base: Path, out: Path, lora: LoraConfig | dict, callbacks=(), **kw) -> GPT2LMHeadModel:
    model = GPT2LMHeadModel.from_pretrained(base)
    cfg = dict(
        output_dir=str(out), max_steps=4, batch_size=2, lr=1e-2, progress=False, plot=False, log_every=1
    )
    Trainer(model, Rows(), config=TrainingConfig(**{**cfg, **kw}, lora=lora), callbacks=callbacks).fit()
    return model


# --- (a) gpt2kit -> peft ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bias, targets",
    [("none", ["c_attn"]), ("all", ["c_attn", "c_proj", "c_fc"]), ("lora_only", "all-linear")],
)
def test_adapter_trained_by_gpt2kit_loads_in_peft_with_the_same_logits(base, tmp_path, bias, targets):
    out = tmp_path / "out"
    model = train(base, out, LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=targets, bias=bias))
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.json"} <= files
    assert not files & {"model.safetensors", "config.json"}  # the adapter alone, as peft saves it
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.1)
    assert config["fan_in_fan_out"] is True and config["bias"] == bias
    assert config["base_model_name_or_path"] == str(base) and config["inference_mode"] is True
    names = ["c_attn", "c_fc", "c_proj"] if targets == "all-linear" else targets
    assert sorted(config["target_modules"]) == sorted(names)  # all-linear is recorded as what it matched

    tensors = load_file(out / "adapter_model.safetensors")
    first = "base_model.model.transformer.h.0.attn.c_attn"
    assert tensors[f"{first}.lora_A.weight"].shape == (4, 32)  # (r, in)
    assert tensors[f"{first}.lora_B.weight"].shape == (96, 4)  # (out, r)
    assert tensors[f"{first}.lora_B.weight"].abs().sum() > 0  # trained away from its zero start
    biases = {k for k in tensors if k.endswith("bias")}
    if bias == "none":
        assert not biases
    elif bias == "lora_only":  # an adapted layer's bias is named as peft names it: under base_layer
        assert f"{first}.base_layer.bias" in biases and all(".base_layer." in k for k in biases)
    else:
        assert {f"{first}.base_layer.bias", "base_model.model.transformer.ln_f.bias"} <= biases

    torch.testing.assert_close(logits(model), peft_logits(base, out), atol=1e-5, rtol=1e-5)


# --- (b) peft -> gpt2kit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"]),
        # peft's own default fan_in_fan_out=False: peft warns and records True for Conv1D layers
        dict(r=2, lora_alpha=3, target_modules=["c_proj"], fan_in_fan_out=False, bias="all"),
        dict(
            r=4,
            lora_alpha=16,
            target_modules=r".*\.h\.1\.(attn|mlp)\.c_proj",
            use_rslora=True,
            rank_pattern={"attn.c_proj": 3},
            alpha_pattern={"mlp.c_proj": 5},
        ),
    ],  # fmt: skip
)
def test_adapter_made_by_peft_loads_into_gpt2kit_with_the_same_logits(base, tmp_path, options):
    torch.manual_seed(0)
    fan_in_fan_out = options.pop("fan_in_fan_out", True)
    config = peft.LoraConfig(
        task_type="CAUSAL_LM", init_lora_weights=False, fan_in_fan_out=fan_in_fan_out, **options
    )  # init_lora_weights=False: B is random too, so the update is not zero
    made = peft.get_peft_model(hf_lm(base), config)
    with torch.no_grad():  # trained biases differ from the base's
        for name, p in made.named_parameters():
            if p.requires_grad and name.endswith("bias"):
                p.add_(torch.randn_like(p))
    made.save_pretrained(tmp_path / "adapter")

    ours = GPT2LMHeadModel.from_pretrained(base)
    ours.load_adapter(tmp_path / "adapter")
    assert sum(isinstance(m, LoraLinear) for m in ours.modules()) == sum(
        type(m).__name__ == "Linear" and hasattr(m, "base_layer") for m in made.modules()
    )
    assert not any(p.requires_grad for p in ours.parameters())  # loaded for inference
    want = peft_logits(base, tmp_path / "adapter")
    assert (want - logits(hf_lm(base))).abs().max() > 1e-2  # the adapter really changes the output
    torch.testing.assert_close(logits(ours), want, atol=1e-5, rtol=1e-5)


def test_load_adapter_refuses_what_does_not_fit_and_leaves_the_model_alone(base, tmp_path):
    from hf_oracle import hf_model

    other = tmp_path / "wide"
    hf_model("GPT2LMHeadModel", n_embd=48).save_pretrained(other)
    adapter = tmp_path / "adapter"
    peft.get_peft_model(hf_lm(other), peft.LoraConfig(target_modules=["c_attn"], fan_in_fan_out=True)).save_pretrained(adapter)  # fmt: skip
    model = GPT2LMHeadModel.from_pretrained(base)
    before = logits(model)
    with pytest.raises(
        ValueError, match=r"does not fit this GPT2LMHeadModel: shapes differ: .*c_attn\.lora_A"
    ):
        load_adapter(model, adapter)
    assert not any(isinstance(m, LoraLinear) for m in model.modules()) and not hasattr(model, "peft_config")
    torch.testing.assert_close(logits(model), before, atol=0, rtol=0)

    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora=True, which gpt2kit's LoRA does not implement"):
        load_adapter(model, adapter)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(ValueError, match="adapter_model.bin, a pickle.*safetensors only"):
        load_adapter(model, adapter)
    with pytest.raises(ValueError, match="matches no layer"):
        model.add_adapter(LoraConfig(target_modules=r"lm_head\.c_attn"))
    with pytest.raises(ValueError, match="'wte' is not a GPT-2 projection"):
        LoraConfig(target_modules=["wte"])


# --- (c) only the adapter trains and is saved -------------------------------------------------------------


def test_only_the_adapter_gets_gradients_optimizer_state_and_checkpoint_files(base, tmp_path):
    model = GPT2LMHeadModel.from_pretrained(base)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_adapter(LoraConfig(r=2, target_modules=["c_attn", "c_proj"]))
    model(IDS, labels=IDS).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(adapter_state_dict(model)) and with_grad  # lora_A / lora_B of 6 layers
    assert all(".lora_A." in n or ".lora_B." in n for n in with_grad) and len(with_grad) == 12

    out = tmp_path / "out"
    trained = train(base, out, LoraConfig(r=2, target_modules=["c_attn", "c_proj"]), save_every=2)
    for key, value in frozen.items():  # the base weights did not move
        assert torch.equal(trained.state_dict()[key], value), key
    step = out / "checkpoints" / "step-00000004"
    assert not (step / "model.safetensors").exists()
    saved = load_file(step / "adapter_model.safetensors")
    assert set(saved) == {f"base_model.model.{k}" for k in adapter_state_dict(trained)}
    optimizer = torch.load(step / "optimizer.pt", weights_only=True)
    assert len(optimizer["state"]) == 12  # AdamW's moments for the 12 adapter tensors only
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == 12


# --- (d) exact resume ---------------------------------------------------------------------------------------


def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(base, tmp_path):
    config = LoraConfig(r=4, alpha=8, dropout=0.2, target_modules=["c_attn", "c_fc"], bias="lora_only")
    kw = dict(max_steps=6, warmup_steps=2, schedule="cosine")
    whole = train(base, tmp_path / "whole", config, **kw)

    def stop_at_3(trainer, event, info):
        if event == "step_end" and info["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(base, tmp_path / "cut", config, callbacks=[stop_at_3], **kw)
    seen = []
    resumed = train(base, tmp_path / "cut", config, callbacks=[lambda t, e, i: seen.append((e, i.get("step")))], **kw)  # fmt: skip
    assert ("resume", 3) in seen
    a, b = adapter_state_dict(whole), adapter_state_dict(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "whole/adapter_model.safetensors").read_bytes() == (
        tmp_path / "cut/adapter_model.safetensors"
    ).read_bytes()


def test_training_config_with_lora_round_trips_through_json(tmp_path):
    cfg = TrainingConfig(lora=LoraConfig(r=4, alpha=8, target_modules=["c_attn", "c_proj"], bias="all"))
    cfg.save(tmp_path / "c.json")
    back = TrainingConfig.from_dict(json.loads((tmp_path / "c.json").read_text()))
    assert back == cfg and isinstance(back.lora, LoraConfig)
    assert TrainingConfig(lora={"r": 2}).lora == LoraConfig(r=2)
    with pytest.raises(ValueError, match=r"unknown LoraConfig fields \['rank'\]"):
        TrainingConfig(lora={"rank": 2})
    with pytest.raises(TypeError, match="TrainingConfig.lora must be a gpt2kit.LoraConfig"):
        TrainingConfig(lora=8)


# --- (e) merging --------------------------------------------------------------------------------------------


def test_merge_gives_a_folder_transformers_loads_with_the_unmerged_logits(base, tmp_path):
    adapter = tmp_path / "adapter"
    model = train(base, adapter, LoraConfig(r=4, alpha=8, target_modules="all-linear", bias="all"))
    unmerged = logits(model)
    out = merge_adapter(None, adapter, tmp_path / "merged")  # the base: the adapter's base_model_name_or_path
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    torch.testing.assert_close(logits(hf_lm(out)), unmerged, atol=1e-4, rtol=1e-5)
    # in memory: the same fold, and the model is plain again
    merge_and_unload(model)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(logits(model), unmerged, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="is the base model folder"):
        merge_adapter(base, adapter, base)


# --- (f), (g) the CLI ---------------------------------------------------------------------------------------


@pytest.fixture()
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "train.txt"
    path.write_text(
        "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(12)) + "\n"
    )
    return path


@pytest.mark.parametrize(
    "spec, message",
    [
        ("rank=8", "--lora: unknown key 'rank'; the keys are r, alpha, dropout, targets, bias, rslora"),
        ("r=eight", "--lora r='eight' is not a whole number"),
        ("r=8,alpha=big", "--lora alpha='big' is not a number"),
        ("r=8,c_attn", "--lora: 'c_attn' is not key=value"),
        ("dropout=1.5", "LoraConfig.dropout=1.5 is invalid: it must be in [0, 1)"),
        ("targets=c_attn,attn", "'attn' is not a GPT-2 projection"),
        ("bias=some", "LoraConfig.bias='some' is unknown; choose one of ('none', 'all', 'lora_only')"),
        ("r=8,r=4", "--lora: r is given twice"),
    ],
)
def test_cli_lora_errors_name_the_bad_key_or_value(tmp_path, texts, capsys, spec, message):
    rc = main(["train", str(texts), "--model", "gpt2kit-demo", "--lora", spec, "-o", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_cli_lora_refuses_scratch_and_classification(tmp_path, texts, capsys):
    assert (
        main(["train", str(texts), "--init", "scratch", "--config", "tiny", "--lora", "-o", str(tmp_path)])
        == 2
    )
    assert "--lora adapts a pretrained model: pass --model DIR" in capsys.readouterr().err
    rc = main(
        ["train", str(texts), "--model", "gpt2kit-demo", "--task", "classify", "--lora", "-o", str(tmp_path)]
    )
    assert rc == 2 and "fine-tune a classifier without --lora" in capsys.readouterr().err


def test_cli_train_lora_then_merge_on_the_demo_model(tmp_path, texts, capsys):
    out, merged = tmp_path / "adapter", tmp_path / "merged"
    rc = main(["train", str(texts), "--model", "gpt2kit-demo", "--lora", "r=4,alpha=8,dropout=0.05,targets=c_attn,c_proj",
               "-o", str(out), "--max-steps", "2", "--batch-size", "2", "--block-size", "32", "--lr", "1e-2"])  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    assert "training a LoRA adapter of 0.04 M parameters" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["steps"] == 2
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "gpt2kit-demo" and config["target_modules"] == [
        "c_attn",
        "c_proj",
    ]
    assert not (out / "model.safetensors").exists() and (out / "tokenizer.json").is_file()
    assert json.loads((out / "training_config.json").read_text())["lora"]["r"] == 4

    assert main(["merge", "--adapter", str(out), "-o", str(merged), "--dtype", "float32"]) == 0
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= {
        p.name for p in merged.iterdir()
    }
    with_adapter = GPT2LMHeadModel.from_pretrained("gpt2kit-demo", dtype=torch.float32)
    with_adapter.load_adapter(out)
    ids = transformers.GPT2TokenizerFast.from_pretrained(merged)("the quick brown fox", return_tensors="pt")
    with torch.no_grad():
        want = with_adapter.eval()(**ids).logits
        got = transformers.GPT2LMHeadModel.from_pretrained(merged).eval()(**ids).logits
    assert (
        want - GPT2LMHeadModel.from_pretrained("gpt2kit-demo", dtype=torch.float32)(**ids).logits
    ).abs().max() > 1e-3
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the adapter folder itself loads as transformers loads one: its base model with the adapter on it
    with torch.no_grad():
        torch.testing.assert_close(GPT2LMHeadModel.from_pretrained(out)(**ids).logits, want, atol=0, rtol=0)
    assert main(["merge", "--adapter", str(tmp_path / "nothing"), "-o", str(merged)]) == 2
    assert "nothing" in capsys.readouterr().err


def test_peft_adapter_with_pickled_weights_only_is_refused(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "target_modules": ["c_attn"]})
    )
    save_file({"x": torch.zeros(1)}, folder / "unrelated.safetensors")
    with pytest.raises(FileNotFoundError, match="has adapter_config.json but no adapter_model.safetensors"):
        load_adapter(GPT2LMHeadModel.from_pretrained("gpt2kit-demo"), folder)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="is a IA3 adapter; gpt2kit loads LoRA adapters only"):
        load_adapter(GPT2LMHeadModel.from_pretrained("gpt2kit-demo"), folder)


@pytest.mark.slow
def test_compiled_lora_training_equals_eager(base, tmp_path):
    config = LoraConfig(r=4, alpha=8, target_modules=["c_attn", "c_proj"])
    no_dropout = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    runs = []
    for compile in (False, True):
        model = GPT2LMHeadModel.from_pretrained(base, **no_dropout)
        cfg = TrainingConfig(output_dir=str(tmp_path / str(compile)), max_steps=3, batch_size=4, lr=1e-2,
                             progress=False, plot=False, compile=compile, lora=config)  # fmt: skip
        Trainer(model, Rows(), config=cfg).fit()
        runs.append(adapter_state_dict(model))
    for key in runs[0]:
        torch.testing.assert_close(runs[1][key], runs[0][key], atol=1e-4, rtol=1e-4, msg=key)
