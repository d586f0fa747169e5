"""Streaming (iterator, TextStreamer, TextIteratorStreamer), stop strings, and `gpt2kit generate`."""

from __future__ import annotations

import io
import json
import threading

import pytest
import torch

import gpt2kit
from gpt2kit.cli import main
from gpt2kit.generation.streaming import IncrementalDecoder, TextIteratorStreamer, TextStreamer, stream
from hf_oracle import hf_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random GPT-2 with the real GPT-2 vocabulary, saved with its tokenizer."""
    path = tmp_path_factory.mktemp("tinygen")
    hf_model("GPT2LMHeadModel", seed=11, vocab_size=50257, n_positions=128).save_pretrained(path)
    gpt2kit.GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm(folder):
    return gpt2kit.GPT2LMHeadModel.from_pretrained(folder), gpt2kit.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("text", ["Hi 😀 日本語 the end", "naïve café — ok", "🎉🎉🎉 x", "plain ascii text"])
def test_incremental_decoder_never_splits_a_character(text):
    tok = gpt2kit.GPT2TokenizerFast.from_pretrained("gpt2")
    dec = IncrementalDecoder(tok)
    pieces = [dec.add([i]) for i in tok.encode(text)] + [dec.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_incremental_decoder_holds_back_a_partial_stop_string():
    tok = gpt2kit.GPT2TokenizerFast.from_pretrained("gpt2")
    dec = IncrementalDecoder(tok, ["END here"])
    ids = tok.encode("one two END there END here three")
    pieces = [dec.add([i]) for i in ids] + [dec.flush()]
    assert "".join(pieces) == "one two END there "
    assert dec.stopped


def test_stream_equals_generate(lm):
    model, tok = lm
    prompt = "The quick brown fox"
    ids = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=12, pad_token_id=tok.eos_token_id)
    want = tok.decode(ids[0, len(tok.encode(prompt)) :], skip_special_tokens=True)
    got = list(stream(model, tok, prompt, max_new_tokens=12))
    assert len(got) > 1 and "".join(got) == want


def test_stop_strings_match_transformers(lm, folder):
    import transformers

    model, tok = lm
    prompt = "The quick brown fox"
    full = tok.decode(
        model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=20, pad_token_id=0)[0]
    )
    cont = full[len(prompt) :]
    stop = cont[len(cont) // 2 : len(cont) // 2 + 3]  # a string that the greedy continuation contains
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    x = tok(prompt, return_tensors="pt")
    a = hf.generate(**x, max_new_tokens=20, stop_strings=[stop], tokenizer=hf_tok, pad_token_id=0)
    b = model.generate(**x, max_new_tokens=20, stop_strings=[stop], tokenizer=tok, pad_token_id=0)
    assert torch.equal(a, b) and b.shape[1] < x["input_ids"].shape[1] + 20
    streamed = "".join(stream(model, tok, prompt, max_new_tokens=20, stop_strings=[stop]))
    assert streamed == cont[: cont.index(stop)]


@pytest.mark.parametrize("pad", [0, None])
def test_a_stop_string_without_eos_pads_nothing_as_transformers(lm, folder, pad):
    """transformers pads the rows that have finished only when an eos is set: a row a stop string ended
    goes on until every row has stopped (and without a pad token nothing needs one)."""
    import transformers

    model, tok = lm
    rows = [tok.encode(p) for p in ("The quick brown fox", "Once upon a time there was")]
    T = max(len(r) for r in rows)
    x = torch.tensor([[0] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    kw = dict(attention_mask=mask, max_new_tokens=16, eos_token_id=None, pad_token_id=pad)
    free = model.generate(x, **kw)
    text = tok.decode(free[0, T:])
    stop = text[len(text) // 3 : len(text) // 3 + 3]  # in row 0's continuation, early
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    want = hf.generate(x, stop_strings=[stop], tokenizer=hf_tok, **kw)
    got = model.generate(x, stop_strings=[stop], tokenizer=tok, **kw)
    assert torch.equal(got, want)
    assert stop not in tok.decode(got[1, T:]) and got.shape[1] == T + 16, "row 1 did not run to the end"


def test_text_streamers(lm):
    model, tok = lm
    x = tok("Once upon a time", return_tensors="pt")
    ids = model.generate(**x, max_new_tokens=10, pad_token_id=0)
    want = tok.decode(ids[0, x["input_ids"].shape[1] :])

    buf = io.StringIO()
    model.generate(
        **x, max_new_tokens=10, pad_token_id=0, streamer=TextStreamer(tok, skip_prompt=True, file=buf)
    )
    assert buf.getvalue() == want + "\n"

    streamer = TextIteratorStreamer(tok, skip_prompt=True, timeout=60)
    worker = threading.Thread(target=model.generate, kwargs=dict(**x, max_new_tokens=10, pad_token_id=0,
                                                                 streamer=streamer))  # fmt: skip
    worker.start()
    pieces = list(streamer)
    worker.join()
    assert "".join(pieces) == want and len(pieces) > 1
    with pytest.raises(ValueError, match="beam search"):
        model.generate(**x, max_new_tokens=3, num_beams=2, streamer=TextStreamer(tok))


def test_cli_generate_text_json_and_seed(lm, folder, capsys, tmp_path):
    model, tok = lm
    prompt = "Hello there"
    want = tok.decode(
        model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=6, pad_token_id=50256)[0]
    )
    assert main(["generate", "--model", str(folder), prompt, "--max-new-tokens", "6", "--no-stream"]) == 0
    assert capsys.readouterr().out == want + "\n"

    (tmp_path / "p.txt").write_text("a\nb c\n")
    assert main(["generate", "--model", str(folder), "--input", str(tmp_path / "p.txt"), "--max-new-tokens", "4",
                 "--json"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["a", "b c"]
    assert all(
        len(r["ids"]) == 4 == len(r["logprobs"]) and all(lp <= 0 for lp in r["logprobs"]) for r in rows
    )
    assert rows[1]["completion"] == tok.decode(rows[1]["ids"])

    sample = ["generate", "--model", str(folder), "x", "--do-sample", "--top-k", "0", "--max-new-tokens", "8",
              "--json"]  # fmt: skip
    outs = []
    for seed in ("1", "1", "2"):
        assert main([*sample, "--seed", seed]) == 0
        outs.append(json.loads(capsys.readouterr().out)["ids"])
    assert outs[0] == outs[1] != outs[2]


def test_cli_generate_input_file_and_errors(folder, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\n\nsecond prompt\n")
    assert main(["generate", "--model", str(folder), "--input", str(prompts), "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert main(["generate", "--model", str(folder), "first", "prompt", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == out[:1]  # unquoted words are one prompt
    assert len(out) == 2 and out[0].startswith("first prompt") and out[1].startswith("second prompt")

    assert main(["generate", "--model", str(tmp_path / "nope"), "hi"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    assert main(["generate", "--model", str(folder), "hi", "--do-sample", "--top-p", "2"]) == 2
    assert "--top-p must be" in capsys.readouterr().err  # the option, not generate()'s top_p
    assert main(["generate", "--model", str(folder), "hi", "--max-new-tokens", "500"]) == 2
    assert "n_positions=128" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [
        ["--do-sample", "--temperature", "inf"],
        ["--do-sample", "--temperature", "nan"],
        ["--num-beams", "2", "--length-penalty", "nan"],
        ["--length-penalty", "inf"],
        ["--do-sample", "--top-p", "nan"],
        ["--repetition-penalty", "inf"],
        ["--do-sample", "--min-p", "nan"],
        ["--do-sample", "--seed", str(2**64)],
        ["--do-sample", "--seed", "-1"],
    ],
)
def test_cli_generate_refuses_non_finite_numbers_naming_the_flag(folder, capsys, flags):
    """argparse's float() reads "inf" and "nan"; the command refuses them in one line naming the flag."""
    assert (
        main(["generate", "--model", str(folder), "hi", "--max-new-tokens", "2", "--no-stream", *flags]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"error: {flags[-2]} must be" in err and flags[-1] in err, err


def test_cli_generate_weight_formats(folder, capsys, monkeypatch):
    import gpt2kit.model.packed as packed
    from gpt2kit.model.packed import packing_available

    packed_calls = []
    real_pack = packed.pack_weights
    monkeypatch.setattr(packed, "pack_weights", lambda m, **kw: packed_calls.append(kw) or real_pack(m, **kw))

    base = [
        "generate",
        "--model",
        str(folder),
        "Hello there",
        "--max-new-tokens",
        "6",
        "--no-stream",
        "--json",
    ]
    assert main([*base, "--weights", "float"]) == 0
    exact = json.loads(capsys.readouterr().out)["ids"]
    assert packed_calls == []
    assert main(base) == 0  # auto: packed wherever oneDNN can pack, float elsewhere
    assert json.loads(capsys.readouterr().out)["ids"] == exact
    assert len(packed_calls) == (1 if packing_available() else 0)
    if packing_available():
        assert main([*base, "--weights", "packed"]) == 0
        assert json.loads(capsys.readouterr().out)["ids"] == exact  # packed kernels change only last bits
        assert len(packed_calls) == 2
    assert main([*base, "--weights", "int8"]) == 0
    assert len(json.loads(capsys.readouterr().out)["ids"]) == 6
    assert main([*base, "--weights", "packed", "--compile"]) == 2
    assert "--compile" in capsys.readouterr().err
    assert main([*base, "--weights", "packed", "--compile-mode", "max-autotune"]) == 2  # implies --compile
    assert "--compile" in capsys.readouterr().err


def test_cli_compile_mode_reaches_generate(folder, capsys, monkeypatch):
    """--compile-mode MODE is generate(compile=MODE); the CLI's list of modes (torch-free, for --help) is
    generation.search's."""
    from gpt2kit import cli
    from gpt2kit.generation import search

    assert cli._COMPILE_MODES == search.COMPILE_MODES
    seen = []
    real = search.compile_options
    monkeypatch.setattr(search, "compile_options", lambda c: seen.append(c) or real({"backend": "eager"}))
    base = ["generate", "--model", str(folder), "Hello", "--max-new-tokens", "3", "--no-stream"]
    assert main([*base, "--compile-mode", "max-autotune"]) == 0
    assert main([*base, "--compile"]) == 0
    assert seen == ["max-autotune", "default"]


def test_cli_generate_takes_a_device(folder, capsys):
    """generate had no --device (the other model commands do): cpu gives the default's text, and a CUDA
    device on a machine without one is one line naming --device cpu."""
    base = ["generate", "--model", str(folder), "Hello", "--max-new-tokens", "5", "--no-stream"]
    assert main(base) == 0
    want = capsys.readouterr().out
    assert main([*base, "--device", "cpu"]) == 0
    assert capsys.readouterr().out == want
    if not torch.cuda.is_available():
        assert main([*base, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "CUDA is not available" in err and "--device cpu" in err and "Traceback" not in err
