"""Load test for `gpt2kit serve`, on loopback only: N concurrent clients mixing completions and embeddings.

Starts `python -m gpt2kit serve` in a subprocess on 127.0.0.1 (a free port), warms it up, then runs
--clients concurrent clients until --requests requests are done or --duration seconds pass, whichever is
first, and stops the server. Each client sends, at random (seeded), a completion (sampled, --max-tokens
tokens, some streamed) or an embedding request (--embed-batch texts). Reports requests/s, generated
tokens/s, p50/p99 latency per kind, errors (0 expected: back-pressure 429s are counted apart), and the
server's resident memory before and after the load and its peak.

    python benchmarks/bench_serve.py                       # a small random GPT-2 (4 x 256), built once
    python benchmarks/bench_serve.py --model DIR --clients 16 --requests 400

The default model is small so the run takes a minute or two on a 2-core machine; pass --model for a real one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
DEFAULT_DIR = HERE / "out" / "serve-bench-4x256"
PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away, there lived a",
    "import numpy as np\n\ndef main():\n",
    "In the beginning of the twentieth century, the city grew quickly as factories opened along the river and "
    "workers arrived from the countryside looking for",
    "Q: What is the capital of France?\nA:",
]
TEXTS = [
    "a short text",
    "a somewhat longer sentence about the weather and the sea",
    "GPT-2 hidden states as features for a classifier " * 4,
    "x",
]


def make_model(folder: Path) -> Path:
    """A random-weight GPT-2 of 4 layers x 256 (GPT-2's vocabulary), saved with the bundled tokenizer."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch

    from gpt2kit import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=512)).save_pretrained(folder)
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(folder)
    return folder


def rss_mb(pid: int) -> dict[str, float]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client_loop(http, url, model, rng, args, deadline, budget, results) -> None:
    while time.perf_counter() < deadline and budget["left"] > 0:
        budget["left"] -= 1
        kind = "completion" if rng.random() < args.completion_share else "embedding"
        t0 = time.perf_counter()
        tokens = 0
        try:
            if kind == "completion":
                body = dict(
                    model=model, prompt=rng.choice(PROMPTS), max_tokens=args.max_tokens, temperature=0.8
                )
                if rng.random() < 0.3:  # some clients stream
                    body.update(stream=True, stream_options={"include_usage": True})
                    async with http.stream("POST", url + "/v1/completions", json=body) as r:
                        status = r.status_code
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                usage = json.loads(line[6:]).get("usage")
                                tokens = usage["completion_tokens"] if usage else tokens
                else:
                    r = await http.post(url + "/v1/completions", json=body)
                    status = r.status_code
                    if status == 200:
                        tokens = r.json()["usage"]["completion_tokens"]
            else:
                texts = [rng.choice(TEXTS) for _ in range(args.embed_batch)]
                r = await http.post(url + "/v1/embeddings", json=dict(model=model, input=texts))
                status = r.status_code
                if status == 200:
                    assert len(r.json()["data"]) == len(texts)
        except Exception as e:  # a dropped connection is an error, not a crash of the benchmark
            status = f"{type(e).__name__}"
        results.append(dict(kind=kind, status=status, seconds=time.perf_counter() - t0, tokens=tokens))
        if status == 429:
            await asyncio.sleep(1.0)  # honour Retry-After


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def load(url: str, model: str, args) -> tuple[list[dict], float]:
    import httpx

    results: list[dict] = []
    budget = {"left": args.requests}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        deadline = t0 + args.duration
        await asyncio.gather(
            *(
                client_loop(http, url, model, random.Random(args.seed + i), args, deadline, budget, results)
                for i in range(args.clients)
            )
        )
        return results, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a model folder (default: a random 4 x 256 GPT-2, built once)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=240, help="stop after this many requests")
    p.add_argument("--duration", type=float, default=90.0, help="...or after this many seconds")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--embed-batch", type=int, default=4, help="texts per embedding request")
    p.add_argument("--completion-share", type=float, default=0.7)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--threads", type=int, help="server torch threads")
    p.add_argument("--weights", default="auto", help="the server's --weights (auto, float, packed, int8)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import httpx

    folder = Path(args.model) if args.model else make_model(DEFAULT_DIR)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "gpt2kit", "serve", "--model", str(folder), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--max-batch", str(args.max_batch)]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["--weights", args.weights]
    env = dict(os.environ)
    env.pop("GPT2KIT_API_KEY", None)
    server = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        # warm-up: one of each, so first-call costs are not in the figures
        httpx.post(url + "/v1/completions", json=dict(model=model, prompt="Hi", max_tokens=4), timeout=60)
        httpx.post(url + "/v1/embeddings", json=dict(model=model, input=["Hi"]), timeout=60)
        before = rss_mb(server.pid)
        results, seconds = asyncio.run(load(url, model, args))
        after = rss_mb(server.pid)
        health = httpx.get(url + "/health").json()
    finally:
        server.terminate()
        server.wait(30)

    ok = [r for r in results if r["status"] == 200]
    busy = [r for r in results if r["status"] == 429]
    errors = [r for r in results if r["status"] not in (200, 429)]
    tokens = sum(r["tokens"] for r in ok)
    print(f"model            {folder}")
    print(f"clients          {args.clients} concurrent, {len(results)} requests in {seconds:.1f} s "
          f"({args.completion_share:.0%} completions of {args.max_tokens} tokens, embeddings of {args.embed_batch} texts)")  # fmt: skip
    print(f"requests/s       {len(ok) / seconds:.2f}")
    print(f"tokens/s         {tokens / seconds:.1f} generated")
    for kind in ("completion", "embedding"):
        lat = [r["seconds"] for r in ok if r["kind"] == kind]
        print(f"{kind + 's':<16} {len(lat):4d} ok   p50 {pct(lat, 0.5) * 1000:7.0f} ms   p99 {pct(lat, 0.99) * 1000:7.0f} ms")  # fmt: skip
    print(
        f"errors           {len(errors)}"
        + (f"  {sorted({str(r['status']) for r in errors})}" if errors else "")
    )
    print(f"429 (busy)       {len(busy)}")
    print(f"server RSS       before {before['VmRSS']:.0f} MB, after {after['VmRSS']:.0f} MB, peak {after['VmHWM']:.0f} MB")  # fmt: skip
    print(f"engine           {health['steps']} decode steps, up to {health['max_rows']} rows per step")
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
