"""The loss PNG: drawn by matplotlib when it is installed, skipped with one line naming the extra when not."""

from __future__ import annotations

import logging
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2kit.training import plot as plot_mod
from gpt2kit.training.plot import plot_curves, plot_history

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture()
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import matplotlib...` raise ImportError, as if it were not installed.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(plot_mod, "_skip_logged", False)


def test_matplotlib_draws_the_curves(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "loss.png"
    train = [(s, 3.0 * math.exp(-s / 400) + 2.0) for s in range(0, 2000, 10)]
    series = {"train loss": train + [(2000, math.nan), (2010, None)], "eval loss": [(1000, 2.5)]}
    plot_curves(path, series, width=640, height=400)
    assert png_size(path.read_bytes()) == (640, 400)
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]  # written atomically: no temporary left

    from matplotlib.image import imread

    img = imread(path)  # (H, W, RGBA) floats: far from blank, so the curves are there
    assert img.shape[:2] == (400, 640)
    assert (img[..., :3] < 0.9).any(axis=2).mean() > 0.01


@pytest.mark.parametrize("series", [{}, {"train loss": []}, {"train loss": [(1, math.nan)]}])
def test_no_data_still_writes_a_plot(tmp_path: Path, series: dict) -> None:
    pytest.importorskip("matplotlib")
    plot_curves(tmp_path / "x.png", series, width=320, height=200)
    assert png_size((tmp_path / "x.png").read_bytes()) == (320, 200)


def test_plot_history_uses_train_and_eval_losses(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    history = [{"step": 1, "loss": 3.0, "lr": 0.1}, {"step": 2, "loss": 2.5}, {"step": 2, "eval_loss": 2.7}]
    assert plot_history(tmp_path / "loss.png", history) is True
    assert (tmp_path / "loss.png").read_bytes().startswith(PNG_SIGNATURE)


def test_without_matplotlib_one_line_says_how_to_get_it(tmp_path: Path, no_matplotlib, caplog) -> None:
    with pytest.raises(ImportError, match=r"gpt2kit\[plot\]"):
        plot_curves(tmp_path / "x.png", {"a": [(0, 1.0)]})
    caplog.set_level(logging.WARNING, logger="gpt2kit.training.plot")
    history = [{"step": 1, "loss": 3.0}, {"step": 1, "eval_loss": 3.1}]
    for _ in range(3):  # the Trainer draws after every evaluation: still one line
        assert plot_history(tmp_path / "loss.png", history) is False
    lines = [r.getMessage() for r in caplog.records if r.name == "gpt2kit.training.plot"]
    assert len(lines) == 1 and "matplotlib" in lines[0] and "pip install 'gpt2kit[plot]'" in lines[0]
    assert not (tmp_path / "loss.png").exists()


def test_a_training_run_without_matplotlib_skips_the_picture(tmp_path: Path, no_matplotlib, caplog) -> None:
    import torch

    from gpt2kit import GPT2Config, GPT2LMHeadModel
    from gpt2kit.training import Trainer, TrainingConfig

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_layer=1, n_embd=16, n_head=2))
    rows = [{"input_ids": torch.arange(8) % 32, "labels": torch.arange(8) % 32} for _ in range(4)]
    cfg = TrainingConfig(
        output_dir=str(tmp_path / "out"), max_steps=2, batch_size=2, progress=False, eval_every=1
    )
    caplog.set_level(logging.WARNING, logger="gpt2kit.training.plot")
    Trainer(model, rows, rows, cfg).fit()
    assert (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "out" / "loss.png").exists()
    assert len([r for r in caplog.records if r.name == "gpt2kit.training.plot"]) == 1


def test_too_small_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too small"):
        plot_curves(tmp_path / "x.png", {}, width=50, height=50)


def test_importing_the_module_imports_neither_torch_nor_matplotlib() -> None:
    code = (
        "import sys; import gpt2kit.training.plot; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
