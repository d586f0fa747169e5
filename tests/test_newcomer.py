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
def test_readme_examples_run_on_sample_files(in_root, tmp_path, argv, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 0
    out, err = capsys.readouterr()
    if "--model" in argv:  # a line while the model loads
        assert "loading gpt2kit-demo ... done in" in err
    # stderr is not a terminal here: no progress bar's carriage returns, plain lines instead
    assert "\r" not in err
    if argv[0] == "train":  # the metrics line every --log-every steps (and at the last step) is the progress
        assert "step=2 " in out


@pytest.mark.parametrize("command", ["tokenize", "generate", "embed", "train", "tune", "eval", "serve"])
def test_help_shows_defaults(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "(default:" in capsys.readouterr().out


# --- the loading line on every command that loads a model -------------------------------------------------


def test_merge_and_exports_say_what_they_load(in_root, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("gguf")
    adapter = tmp_path / "adapter"
    argv = ["train", "--model", "gpt2kit-demo", "examples/data/train.txt", "-o", str(adapter), "--lora",
            "--max-steps", "1", "--block-size", "32", "--batch-size", "2", "--report-to", "none"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    merged = tmp_path / "merged"
    assert main(["merge", "--model", "gpt2kit-demo", "--adapter", str(adapter), "-o", str(merged)]) == 0
    assert f"merging {adapter} into gpt2kit-demo ... done in" in capsys.readouterr().err
    assert main(["export", "gguf", "--model", str(merged), "-o", str(tmp_path / "m.gguf")]) == 0
    assert f"loading {merged} ... done in" in capsys.readouterr().err
    assert main(["export", "onnx", "--model", str(merged), "--out", str(tmp_path / "onnx")]) == 0
    assert f"loading {merged} ... done in" in capsys.readouterr().err


def test_a_failed_load_ends_its_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["generate", "--model", str(tmp_path), "hi"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"loading {tmp_path} ... failed" and err[1].startswith("gpt2kit generate: error:")


def test_a_log_record_during_a_load_gets_its_own_line(capsys):
    import logging
    import sys

    from gpt2kit.progress import announce_loads, loading

    handler = logging.StreamHandler(sys.stderr)  # capsys's
    logging.getLogger().addHandler(handler)
    try:
        with announce_loads(), loading("m"):
            logging.getLogger("gpt2kit.test").warning("some weights are new")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["loading m ... ", "some weights are new"] and lines[2].startswith(
        "loading m ... done in"
    )


def test_the_library_loads_quietly(capsys):
    from gpt2kit.export.common import load_lm

    load_lm("gpt2kit-demo", "test")
    assert "loading" not in capsys.readouterr().err


# --- serve's startup line ----------------------------------------------------------------------------------


@pytest.mark.parametrize("template", [None, "chat.jinja"])
def test_serve_logs_what_it_serves(tmp_path, monkeypatch, capsys, template):
    pytest.importorskip("starlette")
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)  # everything up to listening
    # Nor uvicorn's logging.config.dictConfig: it closes every handler made so far, and absl's (imported with
    # keras by tests/test_keras.py) then closes the stream it was made with, pytest's own capture of stderr
    # (not the capsys stream current here), which ended the whole run ("lost sys.stderr").
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)
    argv = ["serve", "--model", "gpt2kit-demo", "--port", "8123", "--threads", "1", "--max-queue", "5"]
    if template:
        (tmp_path / template).write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
        argv += ["--chat-template", str(tmp_path / template)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "loading gpt2kit-demo ... done in" in err
    line = next(x for x in err.splitlines() if x.startswith("gpt2kit serve:"))
    for part in ("gpt2kit-demo (", "float32", "weights ", "cpu", "1 threads", "http://127.0.0.1:8123",
                 "max batch 8", "max queue 5", f"chat template: {tmp_path / template if template else 'none'}"):  # fmt: skip
        assert part in line, line


# --- --device on every command that runs the model ----------------------------------------------------------

MODEL_COMMANDS = {
    "generate": ["--model", "gpt2kit-demo", "hi"],
    "eval": ["--model", "gpt2kit-demo", "examples/data/val.txt"],
    "embed": ["--model", "gpt2kit-demo", "examples/data/texts.txt", "-o", "v.npy"],
    "train": ["--model", "gpt2kit-demo", "examples/data/train.txt"],
    "tune": ["--model", "gpt2kit-demo", "examples/data/train.txt", "--space", "lr=1e-4:1e-3"],
    "serve": ["--model", "gpt2kit-demo"],
}


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, subsub in _subparsers(sub):
                    yield f"{name} {inner}", subsub


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_device_flag_on_every_model_command(command, capsys):
    import torch

    from gpt2kit.cli import build_parser

    parser = dict(_subparsers(build_parser()))[command]
    assert any("--device" in a.option_strings for a in parser._actions)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main([command, *MODEL_COMMANDS[command], "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert f"gpt2kit {command}: error: --device cuda: CUDA is not available" in err and "loading" not in err


# --- every option says what it does --------------------------------------------------------------------------


def test_every_option_has_help_text():
    import argparse

    from gpt2kit.cli import build_parser

    missing = [
        f"gpt2kit {name} {action.option_strings[0]}"
        for name, parser in [("", build_parser()), *_subparsers(build_parser())]
        for action in parser._actions
        if action.option_strings and action.help is not argparse.SUPPRESS and not (action.help or "").strip()
    ]
    assert not missing, missing


# --- errors name the command line's options, not the Python API's arguments ---------------------------------


@pytest.mark.parametrize(
    "argv, flags, api_names",
    [
        (["generate", "--model", "gpt2kit-demo", "hi", "--max-new-tokens", "0"], ["--max-new-tokens"],
         ["max_new_tokens"]),
        (["generate", "--model", "gpt2kit-demo", "hi", "--max-new-tokens", "300"],
         ["--max-new-tokens", "--truncate-prompt"], ["max_new_tokens", "truncate_prompt"]),
        (["generate", "--model", "gpt2kit-demo", "hi", "--do-sample", "--temperature", "0"],
         ["--do-sample off"], ["do_sample"]),
        (["generate", "--model", "gpt2kit-demo", "hi", "--num-beams", "2", "--num-return-sequences", "3"],
         ["--num-return-sequences 3", "--num-beams 2"], ["num_beams", "num_return_sequences"]),
        (["generate", "--model", "gpt2kit-demo", "hi", "--prompt-lookup", "0"], ["--prompt-lookup"],
         ["prompt_lookup_num_tokens"]),
        (["train", "--model", "gpt2kit-demo", "examples/data/train.txt", "-o", "out", "--batch-size", "0"],
         ["--batch-size 0"], ["TrainingConfig", "batch_size"]),
        (["train", "--model", "gpt2kit-demo", "examples/data/train.txt", "-o", "out", "--early-stopping", "0"],
         ["--early-stopping 0"], ["early_stopping_patience"]),
        (["embed", "--model", "gpt2kit-demo", "examples/data/texts.txt", "-o", "v.npy", "--chunk-rows", "0"],
         ["--chunk-rows"], ["chunk_rows"]),
        (["eval", "--model", "gpt2kit-demo", "examples/data/val.txt", "--max-length", "1"], ["--max-length"],
         ["max_length"]),
    ],
    ids=["max-new-tokens", "too-long", "do-sample", "beams", "prompt-lookup", "train-batch", "early-stopping",
         "chunk-rows", "eval-max-length"],
)  # fmt: skip
def test_errors_name_the_flags(in_root, capsys, argv, flags, api_names):
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"gpt2kit {argv[0]}: error: ")
    for flag in flags:
        assert flag in err, err
    for name in api_names:
        assert name not in err, err


def test_wording_leaves_words_paths_and_cli_messages_alone():
    from gpt2kit.cli import build_parser, cli_wording

    parser = dict(_subparsers(build_parser()))
    gen, train = [parser["generate"]], [parser["train"]]
    keep = [
        "temperature must be > 0, got 0.0",  # a word, not an identifier: could be prose
        "cannot read /data/max_new_tokens.txt (no permission)",
        "the model's n_positions=256 is too small",  # not an option of this command
        "--stride 512 is longer than the window; max_length is 256",  # already in the command line's words
    ]
    for message in keep:
        assert cli_wording(message, gen, "generate") == message
    assert cli_wording("set do_sample=True and top_k=5", gen, "generate") == "set --do-sample and --top-k 5"
    assert cli_wording("long_text='chunk' needs a stride", [parser["embed"]], "embed") == (
        "--long-text chunk needs a stride"
    )
    assert cli_wording("progress=False", [parser["embed"]], "embed") == "--no-progress"
    assert cli_wording("TrainingConfig.lr=0 is invalid", train, "train") == "--lr 0 is invalid"
    # tune --space speaks TrainingConfig's names
    message = "--space names batch_size twice"
    assert cli_wording(message, [parser["tune"]], "tune") == message


# --- progress that suits the output ---------------------------------------------------------------------------


@pytest.fixture()
def every_update(monkeypatch):
    """A plain progress line at every update, instead of every 30 s."""
    from gpt2kit import progress

    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)


def test_embed_progress_counts_tokens_of_one_long_text(tmp_path, capsys, every_update):
    src = tmp_path / "one.txt"
    src.write_text(" ".join(["the word"] * 600) + "\n")  # one text, 1,200 tokens: five 256-token windows
    argv = ["embed", "--model", "gpt2kit-demo", str(src), "-o", str(tmp_path / "v.npy"), "--long-text", "chunk",
            "--batch-tokens", "256"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [x for x in err.splitlines() if x.startswith("embed: ")]
    assert len(lines) >= 3, err
    # the long text's first windows move the count while the text itself is not done yet
    assert lines[0].startswith("embed: 256/") and lines[0].endswith("0/1 texts"), lines[0]
    assert "(100%)" in lines[-1] and lines[-1].endswith("1/1 texts"), lines[-1]


def test_eval_and_tokenizing_print_lines_off_a_terminal(in_root, capsys, every_update):
    assert main(["eval", "--model", "gpt2kit-demo", "examples/data/val.txt", "--stride", "64"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [x for x in err.splitlines() if x.startswith("eval: ")]
    assert lines and "windows" in lines[-1] and "(100%)" in lines[-1], err


def test_no_progress_lines_for_short_jobs(in_root, capsys):
    """Within LINE_SECONDS a job prints no progress line at all (a log stays short)."""
    assert main(["eval", "--model", "gpt2kit-demo", "examples/data/val.txt"]) == 0
    assert "eval: " not in capsys.readouterr().err


def test_training_draws_a_bar_only_on_a_terminal(in_root, tmp_path, capsys, monkeypatch):
    import sys

    argv = ["train", "--model", "gpt2kit-demo", "examples/data/train.txt", "-o", str(tmp_path / "a"),
            "--max-steps", "2", "--block-size", "32", "--batch-size", "2", "--log-every", "1",
            "--report-to", "none"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err and "train:" not in err
    assert "step=1 " in out and "step=2 " in out
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: tqdm's bar
    argv[argv.index("-o") + 1] = str(tmp_path / "b")
    assert main(argv) == 0
    assert "\r" in capsys.readouterr().err


# --- the README shows the demo model at its best --------------------------------------------------------------


def _readme_demo_runs():
    """(command, the output the README shows under it) for each `gpt2kit generate --model gpt2kit-demo`."""
    import shlex

    lines = (ROOT / "README.md").read_text().splitlines()
    return [
        (shlex.split(line)[1:], lines[i + 1].removeprefix("# "))
        for i, line in enumerate(lines)
        if line.startswith("gpt2kit generate --model gpt2kit-demo") and lines[i + 1].startswith("# ")
    ]


def test_readme_demo_generations_are_sensible_and_reproduce(capsys):
    runs = _readme_demo_runs()
    assert len(runs) >= 3
    for argv, shown in runs:
        assert main(argv) == 0
        out = capsys.readouterr().out.strip()
        words = out.split()
        trigrams = list(zip(words, words[1:], words[2:]))
        assert len(set(trigrams)) == len(trigrams), f"a loop: {out}"  # no repeated three-word run
        if "--do-sample" not in argv:  # greedy and beam search: the same tokens on any CPU
            assert out == shown, argv
        else:
            assert out.startswith(argv[3])


# --- the README's examples run as written (a newcomer's pass over README.md) -----------------------------------


def test_onnx_export_of_the_bundled_model_stays_out_of_the_package(tmp_path):
    """`gpt2kit export onnx --model gpt2kit-demo` wrote ~480 MB into the installed package (MODEL/onnx)."""
    from gpt2kit import hub
    from gpt2kit.export.onnx import default_out

    assert default_out(hub.BUNDLED_MODELS["gpt2kit-demo"]) == Path("gpt2kit-demo-onnx")
    assert default_out(tmp_path) == tmp_path / "onnx"  # any other folder: the Hub's layout


def test_readme_python_runs_on_the_demo_model():
    """The README's Python blocks name only files that ship and fit the demo model's 256 positions."""
    import re

    readme = (ROOT / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```python\n(.*?)```", readme, re.S))
    for path in re.findall(r'"(examples/[^"]+)"', blocks):
        assert (ROOT / path).is_file(), path
    assert all(int(n) <= 256 for n in re.findall(r"block_size=(\d+)", blocks))
    # gpt2kit.keras chooses Keras's torch backend only when it is imported before keras
    assert blocks.index("from gpt2kit.keras import") < blocks.index("import keras")
