"""Nothing a resume reads runs pickled code: every file of a checkpoint folder is replaced in turn by a
pickle whose unpickling would create a marker file, and resuming must refuse it with a message that names
the file and the fix, without the marker ever appearing. Older checkpoints (rng-N.pt) still resume exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gpt2kit.cli import main
from gpt2kit.training.trainer import Trainer, _load_rng
from test_trainer import Rows, assert_same_weights, cfg, lm

CKPT = "out/checkpoints/step-00000003"
# What a checkpoint folder holds. A new file here must be added to the planting below, so this list is
# checked: a resume must never read a file no test has planted a payload in.
CKPT_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "optimizer.pt",
    "rng-0.safetensors",
    "scheduler.pt",
    "trainer_state.json",
]


class Boom:
    """Unpickling this creates `marker`: the stand-in for any code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _train(folder: Path, callbacks=()) -> torch.nn.Module:
    model = lm(seed=1)  # dropout on: resume must restore the RNG too
    c = cfg(folder, max_steps=6, batch_size=2, lr=5e-3, warmup_steps=2, schedule="cosine")
    Trainer(model, Rows(6), config=c, callbacks=list(callbacks)).fit()
    return model


def _stop_at_3(trainer, event, info):
    if event == "step_end" and info["step"] == 3:
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A run cut after step 3 (its checkpoint is what the tests tamper with) and the uncut run's model."""
    root = tmp_path_factory.mktemp("runs")
    # Kernel choices (model/kernels.py) are timed on first use, mid-run, and rounding differs between the
    # candidates: a first run makes them, so the two runs compared below use the same kernels throughout.
    _train(root / "warm-up")
    whole = _train(root / "whole")
    with pytest.raises(KeyboardInterrupt):
        _train(root / "cut", callbacks=[_stop_at_3])
    return root / "cut", whole


@pytest.fixture()
def cut(runs, tmp_path) -> Path:
    """A fresh copy of the interrupted run, for one test to tamper with."""
    shutil.copytree(runs[0], tmp_path / "cut")
    return tmp_path / "cut"


def _plant(file: Path, marker: Path, legacy: bool = False) -> None:
    """Replace file by a pickle carrying Boom, and prove the payload is armed on a copy of it."""
    payload = {"state": {}, "param_groups": [], "last_epoch": 0, "torch": torch.zeros(3), "x": Boom(marker)}
    torch.save(payload, file, _use_new_zipfile_serialization=not legacy)
    copy = file.with_name("copy")
    shutil.copy(file, copy)
    torch.load(copy, weights_only=False)  # what the old resume did with rng-0.pt
    assert marker.exists(), "the planted payload does not fire: the test would prove nothing"
    marker.unlink()
    copy.unlink()


def test_a_checkpoint_holds_these_files_and_its_rng_state_is_safetensors(runs):
    from safetensors import safe_open

    names = sorted(p.name for p in (runs[0] / CKPT).iterdir())
    assert names == CKPT_FILES
    with safe_open(runs[0] / CKPT / "rng-0.safetensors", "pt") as f:
        assert list(f.keys()) == ["torch"] and sorted(f.metadata()) == ["numpy", "python"]


def test_normal_resume_is_exact(runs, cut):
    seen = []
    resumed = _train(cut, callbacks=[lambda t, e, i: seen.append((e, i.get("step")))])
    assert ("resume", 3) in seen
    assert_same_weights(runs[1], resumed)


@pytest.mark.parametrize(
    "name, legacy, message",
    [
        ("model.safetensors", False, "not a readable safetensors file"),
        ("optimizer.pt", False, "never runs pickled code"),
        ("optimizer.pt", True, "never runs pickled code"),
        ("scheduler.pt", False, "never runs pickled code"),
        ("scheduler.pt", True, "never runs pickled code"),
        ("rng-0.safetensors", False, "not a readable RNG state"),
        ("trainer_state.json", False, "not readable JSON"),
        # files an older gpt2kit or a hand-made checkpoint would have instead
        ("rng-0.pt", False, "older gpt2kit with pickled RNG state"),
        ("rng-0.pt", True, "older gpt2kit with pickled RNG state"),
        ("pytorch_model.bin", False, "never runs pickled code"),
        ("pytorch_model.bin", True, "never runs pickled code"),
    ],
)
def test_a_pickle_planted_in_any_file_a_resume_reads_never_runs(cut, tmp_path, name, legacy, message):
    ckpt = cut / CKPT
    # The fallbacks are read only when the preferred file is absent.
    instead_of = {"rng-0.pt": "rng-0.safetensors", "pytorch_model.bin": "model.safetensors"}
    if name in instead_of:
        (ckpt / instead_of[name]).unlink()
    marker = tmp_path / "marker"
    _plant(ckpt / name, marker, legacy)
    before = (cut / "out/metrics.jsonl").read_bytes()
    with pytest.raises(ValueError) as e:
        _train(cut)
    assert not marker.exists()
    text = str(e.value)
    assert message in text and name in text, text
    assert "--no-resume" in text and str(ckpt) in text, text  # the fix: start over, or drop this checkpoint
    assert (cut / "out/metrics.jsonl").read_bytes() == before  # refused before anything was changed


def test_files_a_resume_does_not_read_are_never_unpickled(cut, tmp_path):
    ckpt = cut / CKPT
    marker = tmp_path / "marker"
    for name in ("config.json", "generation_config.json"):
        _plant(ckpt / name, marker)
    _train(cut)  # the model is built by the caller; the checkpoint's config files are not read
    assert not marker.exists()


def test_a_truncated_optimizer_state_names_the_file_and_the_fix(cut):
    file = cut / CKPT / "optimizer.pt"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        _train(cut)
    assert str(file) in str(e.value) and "--no-resume" in str(e.value)


def test_a_checkpoint_without_rng_state_names_the_file(cut):
    (cut / CKPT / "rng-0.safetensors").unlink()
    with pytest.raises(ValueError, match="no RNG state for process 0 .rng-0.safetensors.") as e:
        _train(cut)
    assert "--no-resume" in str(e.value)


def test_an_older_checkpoint_with_rng_pt_still_resumes_exactly(runs, cut):
    """gpt2kit wrote torch.save(dict of tensors, tuples and a NumPy array) before: read with weights_only."""
    ckpt = cut / CKPT
    torch.save(_load_rng(ckpt, 0), ckpt / "rng-0.pt")
    (ckpt / "rng-0.safetensors").unlink()
    assert_same_weights(runs[1], _train(cut))


def test_cli_reports_a_corrupt_checkpoint_in_one_line_and_no_resume_starts_over(tmp_path, capsys):
    data = tmp_path / "train.txt"
    data.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(12)))
    args = ["train", str(data), "--init", "scratch", "--config", "n_layer=1,n_embd=32,n_head=2,n_positions=64",
            "--output", str(tmp_path / "out"), "--max-steps", "2", "--save-every", "2", "--block-size", "32",
            "--batch-size", "2"]  # fmt: skip
    assert main(args) == 0
    file = tmp_path / "out/checkpoints/step-00000002/optimizer.pt"
    file.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]  # after the "training N parameters" note
    assert line.startswith("gpt2kit train: error:") and str(file) in line and "--no-resume" in line, err
    assert main([*args, "--no-resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
