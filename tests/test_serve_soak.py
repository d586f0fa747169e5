"""Server memory stays bounded: the slot cache shrinks when idle, heap pages go back to the OS, the kernel
caches are capped, and (slow) a short soak of mixed requests keeps RSS flat after warm-up."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from gpt2kit import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
from gpt2kit.serve import engine as engine_mod
from gpt2kit.serve.engine import Engine, GenerationRequest, SlotCache, bound_kernel_caches
from gpt2kit.serve.protocol import SamplingParams

ROOT = Path(__file__).resolve().parents[1]


def test_slot_cache_shrinks_to_its_starting_width():
    cache = SlotCache(2, slots=3, n_head=2, head_dim=4, max_length=512, dtype=torch.float32, device="cpu")
    assert cache.width == 64
    start = cache.nbytes
    keys = [torch.randn(2, 300, 4) for _ in range(2)]
    cache.load(1, keys, keys)
    assert cache.width >= 300 and cache.nbytes > 4 * start
    cache.shrink()
    assert cache.width == 64 and cache.nbytes == start
    assert not cache.lengths.any()
    assert all(not k.any() for k in cache.k)  # zeros, as ensure_width makes them


def test_bound_kernel_caches_keeps_a_users_setting(monkeypatch):
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    bound_kernel_caches(32)
    assert os.environ["LRU_CACHE_CAPACITY"] == "32"
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"


def test_release_heap_runs_where_glibc_is():
    assert engine_mod.release_heap() is (engine_mod._malloc_trim is not None)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=256, n_embd=32, n_layer=2, n_head=2))
    return model.eval(), GPT2TokenizerFast.from_pretrained("gpt2")


def _complete(engine: Engine, prompt: list[int], max_tokens: int) -> list[str]:
    done = threading.Event()
    texts: list[str] = []

    def emit(events) -> None:
        for ev in events:
            texts.append(ev.get("text", ""))
            if ev["type"] in ("finish", "error"):
                done.set()

    engine.submit([GenerationRequest(prompt, SamplingParams(max_tokens=max_tokens, temperature=0), emit)])
    assert done.wait(60)
    return texts


def test_engine_shrinks_its_cache_and_trims_when_idle(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(engine_mod, "IDLE_RELEASE_S", 0.05)
    trims = []
    monkeypatch.setattr(engine_mod, "release_heap", lambda: trims.append(time.monotonic()) or True)
    engine = Engine(model, tok, max_batch=2)
    engine.start()
    try:
        first = _complete(engine, list(range(150)), 20)
        deadline = time.monotonic() + 10
        while (engine.cache.width != 64 or not trims) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.cache.width == 64, "the slot cache did not shrink when the engine went idle"
        assert trims, "the heap was not trimmed when the engine went idle"
        n = len(trims)
        time.sleep(0.3)
        assert len(trims) == n, "an idle engine keeps trimming (it should wait for work)"
        # the cache grows again and the same greedy text comes back: shrinking changes no result
        assert _complete(engine, list(range(150)), 20) == first
    finally:
        engine.shutdown()


@pytest.mark.slow
def test_soak_keeps_rss_flat_after_warm_up():
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    spec = importlib.util.spec_from_file_location("soak_serve", ROOT / "benchmarks" / "soak_serve.py")
    soak_serve = importlib.util.module_from_spec(spec)
    sys.modules["soak_serve"] = soak_serve
    spec.loader.exec_module(soak_serve)
    args = soak_serve.parser().parse_args(["--requests", "600", "--every", "60", "--warmup", "0.2"])
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    }
    r = soak_serve.soak(args, env=env)
    assert not r["unexpected"], r["unexpected"]
    assert r["growth"] <= 0.10, f"RSS grew {r['growth']:.1%} after warm-up: {r['samples']}"
