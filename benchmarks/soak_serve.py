"""Memory soak for `gpt2kit serve`: N mixed requests from a few concurrent clients, the server's RSS sampled.

Starts `python -m gpt2kit serve` on 127.0.0.1 (a free port) with the bundled demo model (or --model), then
sends --requests requests (default 5000) from --clients concurrent clients, each picking at random
(seeded): completions greedy or sampled, of various prompt and output lengths, streamed or not, some with
n = 2 or logprobs; chat completions (a ChatML template is passed to the server unless --no-chat);
embeddings of 1-32 texts of various lengths; /tokenize; bad requests that get a 4xx; and streams the client
drops after a few chunks. Every --every requests it reads the server's VmRSS from /proc, and at the end
prints the table and the verdict: RSS after warm-up (at --warmup of the requests) against RSS at the end,
pass if it grew by at most --limit (10%).

    python benchmarks/soak_serve.py                        # 5000 requests on gpt2kit-demo
    python benchmarks/soak_serve.py --requests 600 --every 100
    MALLOC_ARENA_MAX=2 python benchmarks/soak_serve.py     # the server inherits the environment

Exit status 1 when memory grew past the limit or a request failed unexpectedly (a 5xx or a dropped
connection); tests/test_serve_soak.py runs a short soak through `soak()`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_WORDS = (
    "the a of river city grew quickly factories opened workers arrived countryside looking for work once upon "
    "time land far away lived king who had three daughters import numpy as np def main return value weather "
    "sea storm night light house keeper wrote letters every morning café naïve 東京 🙂"
)
WORDS = _WORDS.split()
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "fma", "f16c")


def header() -> str:
    """The date, CPU and ISA, as the other benchmarks print them."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    present = set(flags.group(1).split()) if flags else set()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{datetime.datetime.now().isoformat(timespec='seconds')}  CPU: {model.group(1).strip() if model else '?'}"
        f"  ISA: {' '.join(f for f in ISA_FLAGS if f in present) or '-'}  cores: {os.cpu_count()}\n"
        f"python {platform.python_version()}; load average {load}; "
        f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', '-')}"
    )


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def pick(rng: random.Random, model: str, chat: bool) -> tuple[str, str, dict, str]:
    """One request: (kind, path, body, how: plain | stream | drop)."""
    r = rng.random()
    if r < 0.35:  # completions: greedy or sampled, short to long, sometimes n=2 / logprobs / echo
        body = dict(model=model, prompt=text(rng, 1, 60), max_tokens=rng.choice([1, 4, 16, 32, 64, 120]))
        if rng.random() < 0.5:
            body.update(
                temperature=rng.choice([0.7, 1.0]), top_p=rng.choice([1.0, 0.9]), seed=rng.randrange(1000)
            )
            if rng.random() < 0.2:
                body["n"] = 2
        else:
            body["temperature"] = 0
        if rng.random() < 0.15:
            body["logprobs"] = rng.choice([0, 2])
        if rng.random() < 0.1:
            body.update(repetition_penalty=1.2, frequency_penalty=0.5, stop=["\n", "the city"])
        how = "stream" if rng.random() < 0.4 else "plain"
        if how == "stream" and rng.random() < 0.25:
            how = "drop"
        return "completion", "/v1/completions", body, how
    if r < 0.47 and chat:
        messages = [
            {"role": "system", "content": text(rng, 1, 8)},
            {"role": "user", "content": text(rng, 1, 30)},
        ]
        body = dict(model=model, messages=messages, max_tokens=rng.choice([8, 32, 64]), temperature=0.8,
                    stop=["<|im_end|>"])  # fmt: skip
        how = "stream" if rng.random() < 0.5 else "plain"
        return "chat", "/v1/chat/completions", body, how
    if r < 0.77:  # embeddings: 1-32 texts of 1-150 words
        n = rng.choice([1, 1, 2, 4, 8, 16, 32])
        body = dict(model=model, input=[text(rng, 1, rng.choice([5, 20, 150])) for _ in range(n)])
        if rng.random() < 0.5:
            body["encoding_format"] = "base64"
        return "embedding", "/v1/embeddings", body, "plain"
    if r < 0.87:
        return "tokenize", "/tokenize", dict(model=model, prompt=text(rng, 1, 100)), "plain"
    bad = rng.choice([
        dict(model=model, prompt="x", temperature=-1),
        dict(model=model, prompt="x", max_tokens=10_000),
        dict(model="no-such-model", prompt="x"),
        dict(model=model, prompt=""),
        dict(model=model, prompt="x", top_p=2),
    ])  # fmt: skip
    return "bad", "/v1/completions", bad, "plain"


async def one(http, url: str, kind: str, path: str, body: dict, how: str) -> tuple[str, int | str]:
    try:
        if how == "plain":
            r = await http.post(url + path, json=body)
            return kind, r.status_code
        body = dict(body, stream=True)
        async with http.stream("POST", url + path, json=body) as r:
            chunks = 0
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    chunks += 1
                    if how == "drop" and chunks >= 3:
                        return "dropped", r.status_code  # leaving the block closes the connection mid-stream
            return kind, r.status_code
    except Exception as e:  # a dropped connection is a finding, not a crash of the soak
        return kind, type(e).__name__


async def drive(url: str, model: str, args, pid: int) -> tuple[list[tuple[int, float]], dict]:
    import httpx

    samples: list[tuple[int, float]] = [(0, rss_mib(pid))]
    counts: dict[str, dict] = {}
    done = 0
    budget = iter(range(args.requests))
    limits = httpx.Limits(max_connections=args.clients * 2, max_keepalive_connections=args.clients)

    async with httpx.AsyncClient(timeout=120, limits=limits) as http:

        async def client(i: int) -> None:
            nonlocal done
            rng = random.Random(args.seed * 1000 + i)
            for _ in budget:
                kind, path, body, how = pick(rng, model, not args.no_chat)
                kind, status = await one(http, url, kind, path, body, how)
                counts.setdefault(kind, {}).setdefault(status, 0)
                counts[kind][status] += 1
                done += 1
                if done % args.every == 0:
                    samples.append((done, rss_mib(pid)))
                    if args.verbose:
                        print(f"  {done:6d} requests  RSS {samples[-1][1]:7.1f} MiB", flush=True)
                if status == 429:
                    await asyncio.sleep(1.0)

        await asyncio.gather(*(client(i) for i in range(args.clients)))
    if samples[-1][0] != done:
        samples.append((done, rss_mib(pid)))
    return samples, counts


def verdict(samples: list[tuple[int, float]], requests: int, warmup: float, limit: float) -> dict:
    """RSS after warm-up (the first sample at or past warmup * requests) against the last sample."""
    after = [s for s in samples if s[0] >= warmup * requests]
    warm = after[0] if after else samples[-1]
    end = samples[-1]
    growth = (end[1] - warm[1]) / warm[1]
    return dict(warm_at=warm[0], warm_mib=warm[1], end_at=end[0], end_mib=end[1], growth=growth,
                peak_mib=max(s[1] for s in samples), passed=growth <= limit)  # fmt: skip


def soak(args, env: dict | None = None) -> dict:
    """Start the server, run the soak, stop it; returns samples, counts, verdict and seconds."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "gpt2kit", "serve", "--model", args.model, "--port", str(port),
           "--log-level", "warning", "--max-batch", str(args.max_batch)]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_chat:
            template = Path(tmp) / "chatml.jinja"
            template.write_text(CHATML)
            cmd += ["--chat-template", str(template)]
        server_env = dict(os.environ if env is None else env)
        server_env.pop("GPT2KIT_API_KEY", None)
        server = subprocess.Popen(cmd, env=server_env)
        try:
            deadline = time.time() + 180
            while True:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.3)
            model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
            t0 = time.perf_counter()
            samples, counts = asyncio.run(drive(url, model, args, server.pid))
            seconds = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(30)
    result = verdict(samples, args.requests, args.warmup, args.limit)
    unexpected = {
        kind: {s: c for s, c in statuses.items() if not (isinstance(s, int) and s < 500)}
        for kind, statuses in counts.items()
    }
    unexpected = {k: v for k, v in unexpected.items() if v}
    return dict(samples=samples, counts=counts, seconds=seconds, unexpected=unexpected, **result)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gpt2kit-demo", help="a model folder or name (default: gpt2kit-demo)")
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default: 4)")
    p.add_argument("--every", type=int, default=250, help="sample RSS every this many requests")
    p.add_argument("--warmup", type=float, default=0.1, help="share of requests counted as warm-up (0.1)")
    p.add_argument("--limit", type=float, default=0.10, help="allowed RSS growth after warm-up (0.10)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--threads", type=int, help="the server's torch threads")
    p.add_argument("--no-chat", action="store_true", help="no chat template, no chat requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="print each RSS sample as it is taken")
    return p


def main() -> None:
    args = parser().parse_args()
    print(header(), flush=True)
    r = soak(args)
    print(f"model {args.model}, {args.requests} requests from {args.clients} clients in {r['seconds']:.0f} s "
          f"({args.requests / r['seconds']:.1f} req/s)")  # fmt: skip
    print("| requests | RSS MiB |\n|---:|---:|")
    for n, mib in r["samples"]:
        print(f"| {n} | {mib:.1f} |")
    print(
        "statuses: "
        + json.dumps({k: {str(s): c for s, c in v.items()} for k, v in sorted(r["counts"].items())})
    )
    print(
        f"RSS after warm-up ({r['warm_at']} requests) {r['warm_mib']:.1f} MiB, at the end ({r['end_at']}) "
        f"{r['end_mib']:.1f} MiB, peak {r['peak_mib']:.1f} MiB: growth {r['growth']:+.1%} "
        f"(limit {args.limit:.0%}) -> {'PASS' if r['passed'] else 'FAIL'}"
    )
    if r["unexpected"]:
        print(f"unexpected statuses: {r['unexpected']}")
    if not r["passed"] or r["unexpected"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
