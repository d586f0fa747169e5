"""Issue 16, item 7 (newcomer): the README's command-line examples run on the shipped sample files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt2kit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"


def test_sample_files_ship_and_readme_uses_them():
    readme = (ROOT / "README.md").read_text()
    for name in ("texts.txt", "train.txt", "val.txt", "reviews.csv", "prompts.txt"):
        assert (DATA / name).stat().st_size > 0
        assert f"examples/data/{name}" in readme
    header = (DATA / "reviews.csv").read_text().splitlines()[0]
    assert header == "review,sentiment"


@pytest.fixture()
def in_root(monkeypatch, tmp_path_factory):
    """A copy of examples/ as the cwd: the README's paths are relative to the repository root, and
    training caches its tokens next to the text file, which must not land in the checkout."""
    import shutil

    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(DATA, root / "examples" / "data")
    monkeypatch.chdir(root)


def test_eval_defaults_fit_the_demo_model(in_root, capsys):
    assert main(["eval", "--model", "gpt2kit-demo", "examples/data/val.txt"]) == 0
    out, err = capsys.readouterr()
    assert "perplexity" in out
    assert "loading gpt2kit-demo ... done in" in err


def test_eval_stride_longer_than_window_is_a_message(in_root, capsys):
    assert main(["eval", "--model", "gpt2kit-demo", "examples/data/val.txt", "--stride", "512"]) == 2
    assert "--stride 512" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--model", "gpt2kit-demo", "--input", "examples/data/prompts.txt", "--json",
         "--num-beams", "2", "--max-new-tokens", "4"],
        ["embed", "--model", "gpt2kit-demo", "examples/data/texts.txt", "-o", "{tmp}/vectors.npy"],
        ["train", "--model", "gpt2kit-demo", "examples/data/train.txt", "--eval", "examples/data/val.txt",
         "-o", "{tmp}/out", "--max-steps", "2", "--block-size", "32", "--batch-size", "2"],
        ["train", "--init", "scratch", "--config", "tiny,n_layer=1", "examples/data/train.txt", "-o",
         "{tmp}/scratch", "--lr", "1e-3", "--max-steps", "2", "--block-size", "32", "--batch-size", "2"],
        ["train", "--model", "gpt2kit-demo", "--task", "classify", "examples/data/reviews.csv",
         "--text-column", "review", "--label-column", "sentiment", "-o", "{tmp}/cls", "--max-steps", "2",
         "--batch-size", "2", "--max-length", "32"],
    ],
    ids=["generate-input", "embed", "train-lm", "train-scratch", "train-classify"],
)  # fmt: skip
def test_readme_examples_run_on_sample_files(in_root, tmp_path, argv):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 0


@pytest.mark.parametrize("command", ["tokenize", "generate", "embed", "train", "tune", "eval", "serve"])
def test_help_shows_defaults(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "(default:" in capsys.readouterr().out
