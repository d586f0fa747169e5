"""`gpt2kit train` / `gpt2kit eval` as a user runs them: from scratch, fine-tuning, classification,
resume, torchrun, and clear errors. Plus the proof that a tiny model can overfit a paragraph."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt2kit import GPT2TokenizerFast
from gpt2kit.cli import main

SMALL = "n_layer=1,n_embd=32,n_head=2,n_positions=64"

PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
    "All that glitters is not gold, and not all those who wander are lost."
)


@pytest.fixture()
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "train.txt"
    path.write_text("\n".join(f"line {i}: {PARAGRAPH}" for i in range(12)) + "\n")
    return path


def run(*argv: str) -> int:
    return main(list(argv))


def test_train_from_scratch_writes_a_folder_transformers_loads(tmp_path, texts, capsys):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "out"
    rc = run("train", str(texts), "--init", "scratch", "--config", SMALL, "--output", str(out),
             "--max-steps", "3", "--batch-size", "2", "--block-size", "32", "--lr", "1e-3",
             "--eval-split", "0.2", "--log-every", "1")  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and "eval_loss" in summary and "eval_perplexity" in summary
    hf = transformers.GPT2LMHeadModel.from_pretrained(out)
    assert hf.config.n_layer == 1 and hf.config.n_embd == 32
    assert transformers.GPT2TokenizerFast.from_pretrained(out)("hi")["input_ids"] == [5303]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_compile_flag_compiles_the_step(tmp_path, texts, capsys):
    out = tmp_path / "out"
    rc = run("train", str(texts), "--init", "scratch", "--config", SMALL, "--output", str(out),
             "--max-steps", "2", "--batch-size", "2", "--block-size", "32", "--compile")  # fmt: skip
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    assert json.loads((out / "training_config.json").read_text())["compile"] is True


def test_fine_tune_then_resume_skips_finished_work(tmp_path, texts, capsys):
    base = tmp_path / "base"
    assert run("train", str(texts), "--config", SMALL, "--output", str(base), "--max-steps", "1",
               "--block-size", "32") == 0  # fmt: skip
    out = tmp_path / "ft"
    args = ["train", str(texts), "--model", str(base), "--output", str(out), "--max-steps", "4",
            "--save-every", "2", "--block-size", "32", "--batch-size", "2"]  # fmt: skip
    assert run(*args) == 0
    first = (out / "model.safetensors").read_bytes()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    capsys.readouterr()
    assert run(*args) == 0  # resumes at step 4 of 4: nothing left to do, same weights
    assert (out / "model.safetensors").read_bytes() == first
    assert run(*args, "--no-resume") == 0  # starts over: same seed, same result
    assert (out / "model.safetensors").read_bytes() == first


def test_classify_csv_saves_label_names(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "sentiment"])
        for i in range(16):
            w.writerow(
                [f"great movie number {i}, loved it", "pos"]
                if i % 2
                else [f"awful film {i}, hated it", "neg"]
            )
    out = tmp_path / "cls"
    rc = run("train", str(path), "--task", "classify", "--text-column", "review", "--label-column", "sentiment",
             "--config", SMALL, "--output", str(out), "--max-steps", "40", "--batch-size", "8", "--lr", "3e-3",
             "--eval", str(path), "--eval-every", "40", "--metric", "accuracy")  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["eval_accuracy"] == 1.0 and "eval_f1" in summary
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(out)
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    assert hf.config.pad_token_id == 50256


def test_eval_prints_tokens_loss_and_perplexity(tmp_path, texts, capsys):
    model = tmp_path / "m"
    assert run("train", str(texts), "--config", SMALL, "--output", str(model), "--max-steps", "1",
               "--block-size", "32") == 0  # fmt: skip
    capsys.readouterr()
    assert run("eval", str(texts), "--model", str(model), "--stride", "16", "--json") == 0
    r = json.loads(capsys.readouterr().out)
    from gpt2kit import GPT2LMHeadModel
    from gpt2kit.training.evaluate import perplexity_of_file

    direct = perplexity_of_file(GPT2LMHeadModel.from_pretrained(model), GPT2TokenizerFast.from_pretrained(model),
                                texts, stride=16)  # fmt: skip
    assert r["tokens"] == direct.tokens and r["perplexity"] == pytest.approx(direct.perplexity, rel=1e-6)
    assert r["perplexity"] == pytest.approx(torch.tensor(r["loss"]).exp().item(), rel=1e-5)
    # A .txt file is scored as written, and the output says so (rows of a .jsonl are joined by blank lines).
    assert r["rows"] is None and r["scored"] == f"scored {texts} as one text of {direct.text_tokens} tokens"
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a b"}\n{"text": "c d"}\n')
    assert run("eval", str(rows), "--model", str(model), "--stride", "16") == 0
    assert f"scored 2 rows of {rows} joined by blank lines" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-steps", "1"], "--model DIR"),
        (["--init", "scratch", "--config", "n_layer"], "key=value"),
        (["--init", "scratch", "--config", "gpt5"], "preset"),
        (["--config", SMALL, "--block-size", "100"], "n_positions"),
        (["--config", SMALL, "--eval-split", "1.5"], "eval-split"),
        (["--config", SMALL, "--lr", "0"], "lr"),
    ],
)
def test_bad_arguments_give_one_line(tmp_path, texts, capsys, argv, message):
    assert run("train", str(texts), "--output", str(tmp_path / "o"), *argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_missing_data_file_is_one_line(tmp_path, capsys):
    assert run("train", str(tmp_path / "nope.txt"), "--config", SMALL) == 2
    assert "nope.txt" in capsys.readouterr().err


def test_tiny_model_overfits_a_paragraph(tmp_path):
    from gpt2kit import GPT2Config, GPT2LMHeadModel
    from gpt2kit.training.config import TrainingConfig
    from gpt2kit.training.data import LMBlocks, tokenize_file
    from gpt2kit.training.trainer import Trainer

    path = tmp_path / "p.txt"
    path.write_text(PARAGRAPH + "\n")
    tok = GPT2TokenizerFast.from_pretrained("gpt2")
    blocks = LMBlocks(tokenize_file(path, tok), 16, eos_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, resid_pdrop=0.0,
                                       embd_pdrop=0.0, attn_pdrop=0.0))  # fmt: skip
    cfg = TrainingConfig(output_dir=str(tmp_path / "o"), max_steps=150, batch_size=len(blocks), lr=3e-3, eval_every=150,
                         progress=False, plot=False)  # fmt: skip
    result = Trainer(model, blocks, blocks, cfg).fit()
    assert result.eval_metrics["eval_loss"] < 0.1
    assert result.eval_metrics["eval_accuracy"] == 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes(tmp_path, texts):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "gpt2kit", "train", str(texts), "--config", SMALL,
           "--output", str(out), "--max-steps", "2", "--block-size", "32", "--batch-size", "2"]  # fmt: skip
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"steps": 2') == 1  # one writer: rank 0 prints the summary
    assert (out / "model.safetensors").exists()
