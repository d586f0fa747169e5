"""The bundled demo model: found by name, small enough to ship, and the README's quickstart runs on it offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2kit import hub

ROOT = Path(__file__).resolve().parents[1]
DEMO = hub.BUNDLED_MODELS["gpt2kit-demo"]


def test_demo_model_is_shipped_within_budget():
    weights = DEMO / "model.safetensors"
    assert weights.is_file(), "src/gpt2kit/models/gpt2kit-demo/model.safetensors is missing"
    assert weights.stat().st_size <= 30 * 10**6
    config = json.loads((DEMO / "config.json").read_text())
    assert config["vocab_size"] == 50257 and config["model_type"] == "gpt2"
    from gpt2kit import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained("gpt2kit-demo")
    tok = AutoTokenizer.from_pretrained("gpt2kit-demo")
    assert next(model.parameters()).dtype.is_floating_point and len(tok) == 50257


def test_demo_model_loads_in_transformers():
    transformers = pytest.importorskip("transformers")
    import torch

    from gpt2kit import GPT2LMHeadModel, GPT2TokenizerFast

    ours = GPT2LMHeadModel.from_pretrained("gpt2kit-demo", dtype=torch.float32).eval()
    theirs = transformers.GPT2LMHeadModel.from_pretrained(DEMO, torch_dtype=torch.float32).eval()
    ids = GPT2TokenizerFast.from_pretrained("gpt2")(["guitar (noun): a"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-4, rtol=1e-4)


def test_readme_quickstart_runs_every_job_offline(tmp_path):
    """...and leaves nothing behind: the fine-tuned model goes to a temporary folder removed at the end."""
    tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TMPDIR": str(tmp)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for line in ("tokens: [15496, 995]", "last_hidden_state: (1, 6, 224)", "greedy: 'guitar (noun):",
                 "stream:", "loss:", "embeddings: (2, 224) float32", "fine-tuned 3 steps",
                 "reloaded: 'kite (noun):"):  # fmt: skip
        assert line in out, f"{line!r} missing from:\n{out}"
    # torch's own cache folder (torchinductor_$USER, shared by every torch program) may appear; nothing else
    left = [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_")]
    assert left == [] and list(cwd.iterdir()) == [], (left, list(cwd.iterdir()))


def test_demo_model_was_trained_not_random():
    """A random GPT-2 scores ~ln(50257) = 10.8 nats per token; the shipped model must know dictionary English."""
    import torch

    from gpt2kit import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained("gpt2kit-demo", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained("gpt2kit-demo")
    lines = [
        "kettle (noun): a metal pot for boiling water, with a lid, a spout and a handle",
        "whisper (verb): speak softly, without using the vocal cords",
    ]
    losses = []
    for line in lines:
        ids = tok(line, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            losses.append(model(ids, labels=ids).loss.item())
    assert max(losses) < 6.0, f"the demo model scores {losses} nats/token on dictionary lines: untrained?"
