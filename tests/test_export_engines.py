"""The exports run in the engines they are for, against gpt2kit's own greedy generate():

* `gpt2kit export gguf` in llama.cpp (the prebuilt binaries of the npm package node-llama-cpp):
  f32 picks the same tokens; f16 and q8_0 are reported and held to a floor;
* `gpt2kit export onnx` in transformers.js (npm @huggingface/transformers, ONNX Runtime for node):
  fp32 (onnx/model.onnx) picks the same tokens; q8 (onnx/model_quantized.onnx) is reported and held to a floor.

The engines are node packages, not Python test dependencies: the tests skip, saying why, without node or
without the packages. They are looked for in GPT2KIT_NODE_MODULES (a node_modules folder), else in
.node/node_modules at the repository root (git-ignored); README.md (Export) says how to install them there.
Run with `-s` to see the agreement lines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "engines"
EOS = 50256
NEW = 16
# Prompts in GPT-2's vocabulary; the last starts at <|endoftext|>, as a document does.
PROMPTS = [
    [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13],
    [15496, 995],
    [EOS, 40, 716, 257],
]
# f16 / q8_0 / int8 weights move logits by about 1e-3 here: a near tie may flip and the continuation then
# differs. At least this share of all the new tokens must agree up to each prompt's first difference.
FLOOR = 0.5


def node_modules() -> Path:
    return Path(os.environ.get("GPT2KIT_NODE_MODULES") or ROOT / ".node" / "node_modules").resolve()


def require_engine(package: str) -> None:
    if shutil.which("node") is None:
        pytest.skip(f"node is not installed: {package} runs on node (see README.md, Export)")
    if not (node_modules() / package / "package.json").is_file():
        pytest.skip(
            f"the npm package {package} is not in {node_modules()} (set GPT2KIT_NODE_MODULES or install it "
            "into .node/, see README.md, Export)"
        )


def run_node(script: str, *args: object) -> dict:
    env = {**os.environ, "GPT2KIT_NODE_MODULES": str(node_modules())}
    proc = subprocess.run(
        ["node", str(SCRIPTS / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    if proc.returncode == 3:  # resolve.mjs: the package is missing
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def until_eos(tokens: list[int]) -> list[int]:
    """The new tokens up to and including the first end-of-text: generate() stops there, the engines may not."""
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


def agreement(got: list[list[int]], want: list[list[int]]) -> tuple[int, int]:
    """(tokens equal up to each prompt's first difference, tokens wanted), over all prompts."""
    same = total = 0
    for g, w in zip(got, want, strict=True):
        g, w = until_eos(g), until_eos(w)
        total += len(w)
        for a, b in zip(g, w):
            if a != b:
                break
            same += 1
    return same, total


def report(engine: str, variant: str, got, want) -> float:
    same, total = agreement(got, want)
    share = same / total
    print(f"\n{engine} {variant}: {same}/{total} greedy tokens agree with gpt2kit ({share:.0%})")
    return share


@pytest.fixture(scope="module")
def llama_cpp():
    """Skips (before any export is made) without node-llama-cpp."""
    require_engine("node-llama-cpp")


@pytest.fixture(scope="module")
def transformers_js():
    require_engine("@huggingface/transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random GPT-2 written by transformers, with GPT-2's real vocabulary size so that GPT-2's bundled
    tokenizer goes with it; weights wider than GPT-2's initialisation so that greedy picks vary."""
    transformers = pytest.importorskip("transformers")
    import gpt2kit

    folder = tmp_path_factory.mktemp("engines") / "tiny-gpt2"
    torch.manual_seed(5)
    config = transformers.GPT2Config(
        vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.1
    )
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(folder)
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(folder)
    want = []
    for prompt in PROMPTS:
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, pad_token_id=0)
        want.append(out[0, len(prompt) :].tolist())
    return folder, want


@pytest.fixture(scope="module")
def gguf_files(checkpoint):
    pytest.importorskip("gguf", reason="the GGUF export needs the [gguf] extra")
    from gpt2kit.export.gguf import export_gguf

    folder, _ = checkpoint
    return {
        dtype: export_gguf(folder, folder / f"tiny-{dtype}.gguf", dtype=dtype, tokenizer="gpt2")
        for dtype in ("f32", "f16", "q8_0")
    }


@pytest.fixture(scope="module")
def onnx_folder(checkpoint):
    pytest.importorskip("onnx", reason="the ONNX export needs the [onnx] extra")
    pytest.importorskip("onnxruntime", reason="the int8 ONNX export needs the [onnx] extra")
    from gpt2kit.cli import main

    folder, _ = checkpoint
    argv = ["export", "onnx", "--model", str(folder), "--quantize", "int8", "--tokenizer", "gpt2"]
    assert main(argv) == 0
    return folder


def test_llama_cpp_greedy_f32_equals_generate(llama_cpp, checkpoint, gguf_files):
    _, want = checkpoint
    got = run_node("llama_cpp_greedy.mjs", gguf_files["f32"], json.dumps(PROMPTS), NEW)
    report(f"llama.cpp (node-llama-cpp {got['version']})", "f32", got["tokens"], want)
    assert [until_eos(t) for t in got["tokens"]] == [until_eos(t) for t in want]


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_llama_cpp_greedy_f16_q8_0_agree(llama_cpp, checkpoint, gguf_files, dtype):
    _, want = checkpoint
    got = run_node("llama_cpp_greedy.mjs", gguf_files[dtype], json.dumps(PROMPTS), NEW)
    share = report(f"llama.cpp (node-llama-cpp {got['version']})", dtype, got["tokens"], want)
    assert [t[0] for t in got["tokens"]] == [t[0] for t in want]  # the first pick of every prompt
    assert share >= FLOOR


def test_transformers_js_greedy_fp32_equals_generate(transformers_js, checkpoint, onnx_folder):
    _, want = checkpoint
    got = run_node("transformers_js_greedy.mjs", onnx_folder, json.dumps(PROMPTS), NEW, "fp32")
    report(f"transformers.js {got['version']}", "fp32 (onnx/model.onnx)", got["tokens"], want)
    assert [until_eos(t) for t in got["tokens"]] == [until_eos(t) for t in want]


def test_transformers_js_greedy_q8_agrees(transformers_js, checkpoint, onnx_folder):
    _, want = checkpoint
    got = run_node("transformers_js_greedy.mjs", onnx_folder, json.dumps(PROMPTS), NEW, "q8")
    share = report(f"transformers.js {got['version']}", "q8 (onnx/model_quantized.onnx)", got["tokens"], want)
    assert [t[0] for t in got["tokens"]] == [t[0] for t in want]
    assert share >= FLOOR
