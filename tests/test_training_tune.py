"""Trainer.hyperparameter_search and `gpt2kit tune`: trials in their folders, model fields rebuild the model,
a bad trial is pruned from its eval loss, the results table, the Optuna plots and the best trial's copy."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from gpt2kit import GPT2Config, GPT2LMHeadModel
from gpt2kit.cli import main
from gpt2kit.training.config import TrainingConfig
from gpt2kit.training.trainer import Trainer
from gpt2kit.training.tune import format_table, parse_space

TINY = dict(vocab_size=32, n_positions=16, n_layer=1, n_embd=16, n_head=2)


class FixedTrial:
    """Stands in for an Optuna trial: each suggestion returns its low end (or first choice)."""

    def suggest_float(self, name, low, high, log=False):
        return ("float", low, high, log)

    def suggest_int(self, name, low, high, log=False):
        return ("int", low, high, log)

    def suggest_categorical(self, name, choices):
        return ("choice", choices)


def test_parse_space() -> None:
    space = parse_space(
        "lr=1e-5:1e-3:log,warmup_ratio=0:0.2,n_layer=2:6,n_head=2|4,schedule=linear|cosine,seed=3"
    )
    assert space(FixedTrial()) == {
        "lr": ("float", 1e-5, 1e-3, True),
        "warmup_ratio": ("float", 0, 0.2, False),
        "n_layer": ("int", 2, 6, False),
        "n_head": ("choice", [2, 4]),
        "schedule": ("choice", ["linear", "cosine"]),
        "seed": 3,
    }
    for bad, message in [
        ("lr", "name=LOW:HIGH"),
        ("lr=1e-3:1e-5", "LOW < HIGH"),
        ("lr=0:1e-3:log", "LOW > 0"),
        ("lr=1:2:3", "LOW:HIGH:log"),
        ("lr=1:2,lr=3:4", "twice"),
        ("", "empty"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_space(bad)


def test_format_table() -> None:
    rows = [
        {"trial": 0, "state": "complete", "objective": 3.21234, "lr": 0.001},
        {"trial": 1, "state": "pruned", "objective": None, "lr": 1e-06},
    ]
    assert format_table(rows).splitlines() == [
        "trial  state     objective  lr",
        "0      complete  3.212      0.001",
        "1      pruned    -          1e-06",
    ]


def pattern(n: int = 8, T: int = 12) -> list[dict[str, torch.Tensor]]:
    """Rows of a counting pattern: learnable in a few steps at a good lr, not at a bad one."""
    x = (torch.arange(T)[None, :] + torch.arange(n)[:, None]) % TINY["vocab_size"]
    return [{"input_ids": r, "labels": r} for r in x]


def make_trainer(out: Path, **kw) -> Trainer:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**TINY))
    base = dict(
        max_steps=6, batch_size=4, lr=1e-2, eval_every=2, log_every=2, progress=False, schedule="constant"
    )
    cfg = TrainingConfig(**{**base, **kw}, output_dir=str(out))
    data = pattern()
    return Trainer(model, data, data, cfg)


def test_search_prunes_a_bad_trial_and_keeps_the_best(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    out = tmp_path / "search"
    trainer = make_trainer(out)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    plans = [
        {"lr": 1e-2, "dropout": 0.0},  # the base model's weights, dropout off
        {"lr": 1e-2, "n_layer": 2, "warmup_ratio": 0.1},  # a new shape: from scratch
        {"lr": 1e-7},  # learns nothing: worse than the median at its first evaluation
        {"lr": 1e-2, "n_embd": 16, "n_head": 3},  # 16 is not divisible by 3: recorded as failed
    ]
    best = trainer.hyperparameter_search(lambda trial: plans[trial.number], n_trials=4)

    rows = best.run_summary
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned", "fail"]
    assert (
        rows[2]["steps"] == 2 and rows[2]["objective"] is None and rows[2]["last_eval"] > rows[0]["objective"]
    )
    assert "n_head" in rows[3]["error"] or "divisible" in rows[3]["error"]
    assert best.run_id in ("0", "1") and best.hyperparameters == plans[int(best.run_id)]
    assert best.objective == min(rows[0]["objective"], rows[1]["objective"])
    # each trial trained a model of its own settings, in its own folder
    assert json.loads((out / "trials/0/config.json").read_text()).get("resid_pdrop", 0.1) == 0.0
    assert json.loads((out / "trials/1/config.json").read_text())["n_layer"] == 2
    assert json.loads((out / "trials/1/training_config.json").read_text())["warmup_ratio"] == 0.1
    assert not (out / "trials/2/model.safetensors").exists()  # pruned before the end
    # the search's own model is untouched
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the results table, the plots, the best trial's copy
    with open(out / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["state"] for r in table] == ["complete", "complete", "pruned", "fail"]
    assert json.loads((out / "trials.json").read_text())[1]["n_layer"] == 2
    assert (out / "best-trial/model.safetensors").exists() and not (out / "best-trial/checkpoints").exists()
    assert json.loads((out / "best_trial.json").read_text())["trial"] == int(best.run_id)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "optuna_history.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "optuna_intermediate.png").read_bytes()[:4] == b"\x89PNG"


def test_search_errors_name_the_fix(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    trainer = make_trainer(tmp_path / "s", max_steps=2)
    with pytest.raises(ValueError, match=r"hp_space returned \['learning_rate'\]"):
        trainer.hyperparameter_search(lambda t: {"learning_rate": 1e-3}, n_trials=1)
    with pytest.raises(ValueError, match="output_dir, resume, run_name, extra are set by the search"):
        trainer.hyperparameter_search(lambda t: {"output_dir": "x"}, n_trials=1)
    with pytest.raises(ValueError, match="direction='maximize'"):
        make_trainer(tmp_path / "a", metric_for_best="accuracy").hyperparameter_search(
            lambda t: {}, n_trials=1
        )
    with pytest.raises(ValueError, match="backend='optuna'"):
        trainer.hyperparameter_search(lambda t: {}, n_trials=1, backend="ray")
    no_eval = Trainer(GPT2LMHeadModel(GPT2Config(**TINY)), pattern(), None, trainer.config)
    with pytest.raises(ValueError, match="needs eval_data"):
        no_eval.hyperparameter_search(lambda t: {}, n_trials=1)
    with pytest.raises(ValueError, match="no trial of the search completed"):
        trainer.hyperparameter_search(lambda t: {"n_head": 3}, n_trials=1)


def test_tune_command(tmp_path: Path, capsys) -> None:
    pytest.importorskip("optuna")
    text = tmp_path / "train.txt"
    text.write_text(
        "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(16)) + "\n"
    )
    out = tmp_path / "tune"
    rc = main(["tune", str(text), "--config", "n_layer=1,n_embd=16,n_head=2,n_positions=32", "-o", str(out),
               "--block-size", "16", "--batch-size", "4", "--max-steps", "2", "--eval-every", "1",
               "--eval-split", "0.25", "--space", "lr=1e-3:1e-2:log,n_layer=1|2,schedule=cosine",
               "--trials", "2"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    printed = printed[
        [i for i, line in enumerate(printed) if line.startswith("trial ")][-1] :
    ]  # after the logs
    assert printed[0].split()[:4] == ["trial", "state", "objective", "last_eval"]
    assert len(printed) == 4  # header, two trials, the JSON summary
    summary = json.loads(printed[-1])
    assert set(summary["hyperparameters"]) == {"lr", "n_layer", "schedule"}
    assert summary["output"] == str(out / "best-trial")
    for n in (0, 1):
        assert (out / f"trials/{n}/metrics.jsonl").exists()
    assert (out / "trials.csv").exists() and (out / "best-trial/config.json").exists()


def test_tune_command_errors(tmp_path: Path, capsys, monkeypatch) -> None:
    text = tmp_path / "t.txt"
    text.write_text("hello world, hello again\n" * 8)
    args = ["tune", str(text), "--config", "n_layer=1,n_embd=16,n_head=2,n_positions=32", "-o",
            str(tmp_path / "o"), "--block-size", "8"]  # fmt: skip

    def one_line(*extra: str) -> str:
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    assert "the range needs two numbers" in one_line("--space", "lr=1e-3:")
    if importlib.util.find_spec("optuna") is not None:
        assert "give --eval FILES or --eval-split" in one_line("--space", "lr=1e-4:1e-3")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a)
    )
    assert "pip install 'gpt2kit[tune]'" in one_line("--space", "lr=1e-4:1e-3")
