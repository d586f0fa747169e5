"""Embedding throughput: gpt2kit's Embedder vs the hand-written transformers loop, on the 124M GPT-2 (random
weights), side by side in one process, interleaved.

Sides, all mean-pooling the last hidden state over each text's own tokens:
  a     the naive loop: transformers GPT2Model (SDPA), batches of 16 in input order, padded to the longest
  b     the same loop with the texts sorted by length (and the rows put back in input order)
  fp32  Embedder, float32
  bf16  Embedder, dtype="bfloat16"

Texts: --texts (default 300) with token lengths log-uniform in [4, 400]. For each repetition a short fp32
matmul probe (GFLOP/s) is taken first; each side's compute rate is its useful FLOPs (2 x non-embedding
parameters x real tokens + causal attention) per second, reported against the probes. Peak memory is
measured per side in a fresh subprocess (VmHWM, the process's own high-water RSS).

    python benchmarks/bench_embed.py [--texts 300] [--reps 3] [--sides a,b,fp32,bf16] [--skip-memory]
    python benchmarks/bench_embed.py --tune 1024,2048,4096   # Embedder throughput per batch_tokens

The machine is shared and noisy (MEASUREMENTS.md): the per-repetition ratios are the meaningful numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from bench_model import make_checkpoint  # noqa: E402

TOKENIZER_DIR = HERE / "out" / "gpt2-tokenizer"
SIDES = ("a", "b", "fp32", "bf16")


def make_texts(n: int, seed: int = 0, lo: int = 4, hi: int = 400) -> list[str]:
    """n texts of single-token words, their token counts drawn log-uniformly from [lo, hi]."""
    import random

    from gpt2kit import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained("gpt2")
    vocab = [t[1:] for t in tok.get_vocab() if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower()]
    rng = random.Random(seed)
    words = sorted(vocab)
    return [
        " ".join(rng.choice(words) for _ in range(round(math.exp(rng.uniform(math.log(lo), math.log(hi))))))
        for _ in range(n)
    ]


def hf_tokenizer():
    import transformers

    if not (TOKENIZER_DIR / "vocab.json").is_file():
        from gpt2kit import GPT2TokenizerFast

        GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(TOKENIZER_DIR)
    tok = transformers.GPT2TokenizerFast.from_pretrained(TOKENIZER_DIR)
    tok.pad_token = tok.eos_token
    return tok


def hf_model(ckpt):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.GPT2Model.from_pretrained(ckpt, attn_implementation="sdpa").eval()


def naive_loop(model, tok, texts: list[str], sort: bool, batch_size: int = 16):
    """What users write: batches of 16, padded to the batch's longest, masked mean of last_hidden_state."""
    import numpy as np
    import torch

    order = (
        sorted(range(len(texts)), key=lambda i: len(tok(texts[i])["input_ids"]))
        if sort
        else range(len(texts))
    )
    order = list(order)
    out = np.zeros((len(texts), model.config.n_embd), np.float32)
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True)
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            out[idx] = ((h * m).sum(1) / m.sum(1)).numpy()
    return out


def matmul_probe_gflops(seconds: float = 0.3) -> float:
    """The machine's fp32 matmul rate right now: the better of a square 1024^3 product and the model's
    own MLP shape (4096 tokens x 768 -> 3072), each run for `seconds`."""
    import torch

    rates = []
    for m, k, n in ((1024, 1024, 1024), (4096, 768, 3072)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(2):
            a @ b
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            count += 1
        rates.append(2 * m * k * n * count / (time.perf_counter() - t0) / 1e9)
    return max(rates)


def useful_flops(lengths: list[int], cfg) -> float:
    """2 x non-embedding parameters per token, plus causal attention (QK^T and AV over earlier tokens)."""
    C, L = cfg.n_embd, cfg.n_layer
    params = L * (12 * C * C + 13 * C) + 2 * C  # per block: c_attn 3C^2, c_proj C^2, MLP 8C^2; biases, norms
    attn = sum(L * 2 * 2 * C * n * (n + 1) / 2 for n in lengths)
    return 2 * params * sum(lengths) + attn


def build_sides(names, ckpt, batch_tokens):
    from gpt2kit import Embedder

    sides = {}
    if "a" in names or "b" in names:
        model, tok = hf_model(ckpt), hf_tokenizer()
        if "a" in names:
            sides["a"] = lambda texts: naive_loop(model, tok, texts, sort=False)
        if "b" in names:
            sides["b"] = lambda texts: naive_loop(model, tok, texts, sort=True)
    if "fp32" in names:
        fp32 = Embedder.from_pretrained(ckpt, batch_tokens=batch_tokens)
        sides["fp32"] = lambda texts: fp32.embed(texts, progress=False)
    if "bf16" in names:
        bf16 = Embedder.from_pretrained(ckpt, dtype="bfloat16", batch_tokens=batch_tokens)
        sides["bf16"] = lambda texts: bf16.embed(texts, progress=False)
    return sides


MEMORY_CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import bench_embed as B
def hwm():
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
texts = B.make_texts({n}, {seed})
side = B.build_sides([{side!r}], {ckpt!r}, {batch_tokens!r})[{side!r}]
side(texts[:8])
loaded = hwm()
side(texts)
print(json.dumps(dict(after_load_mb=loaded, peak_mb=hwm())))
"""


def measure_memory(side: str, ckpt, n: int, seed: int, batch_tokens) -> dict:
    code = MEMORY_CHILD.format(
        here=str(HERE), n=n, seed=seed, side=side, ckpt=str(ckpt), batch_tokens=batch_tokens
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def tune(ckpt, texts, values: list[int], reps: int) -> dict:
    from gpt2kit import Embedder

    result = {}
    for dtype in ("float32", "bfloat16"):
        embs = {v: Embedder.from_pretrained(ckpt, dtype=dtype, batch_tokens=v) for v in values}
        for e in embs.values():
            e.embed(texts[:20], progress=False)
        times = {v: [] for v in values}
        for r in range(reps):
            for v in values if r % 2 == 0 else reversed(values):
                t0 = time.perf_counter()
                embs[v].embed(texts, progress=False)
                times[v].append(time.perf_counter() - t0)
        tokens = embs[values[0]].last_stats.tokens
        result[dtype] = {v: round(tokens / statistics.median(t)) for v, t in times.items()}
        print(dtype, result[dtype], file=sys.stderr)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=300)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--batch-tokens", type=int, default=None, help="Embedder's (default: its own default)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--tune", help="comma-separated batch_tokens values: Embedder throughput for each")
    args = ap.parse_args()
    ckpt = make_checkpoint()

    import numpy as np
    import torch

    from gpt2kit import GPT2Config, GPT2TokenizerFast

    texts = make_texts(args.texts, args.seed)
    lengths = [len(x) for x in GPT2TokenizerFast.from_pretrained("gpt2")(texts)["input_ids"]]
    cfg = GPT2Config.from_pretrained(ckpt)
    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
        "texts": len(texts),
        "real_tokens": sum(lengths),
        "token_length_min_median_max": [min(lengths), statistics.median(lengths), max(lengths)],
        "padded_tokens_per_real_token_in_a": sum(
            len(lengths[s : s + 16]) * max(lengths[s : s + 16]) for s in range(0, len(lengths), 16)
        )
        / sum(lengths),
    }
    if args.tune:
        report["tune_tokens_per_s"] = tune(ckpt, texts, [int(v) for v in args.tune.split(",")], args.reps)
        print(json.dumps(report, indent=2))
        return

    names = [s for s in args.sides.split(",") if s]
    sides = build_sides(names, ckpt, args.batch_tokens)
    for run in sides.values():  # warm-up
        run(texts[:16])
    vectors = {}  # from the first repetition, for the accuracy figures
    times: dict[str, list[float]] = {name: [] for name in sides}
    probes = []
    for r in range(args.reps):
        probes.append(matmul_probe_gflops())
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            t0 = time.perf_counter()
            out = sides[name](texts)
            times[name].append(time.perf_counter() - t0)
            vectors.setdefault(name, out)
            print(f"rep {r} {name}: {times[name][-1]:.1f} s", file=sys.stderr)
    probes.append(matmul_probe_gflops())

    flops = useful_flops(lengths, cfg)
    peak = statistics.median(probes)
    report["matmul_probe_gflops"] = {"median": peak, "min": min(probes), "max": max(probes)}
    report["sides"] = {}
    for name, ts in times.items():
        t = statistics.median(ts)
        report["sides"][name] = {
            "seconds_median": t,
            "seconds_all": ts,
            "real_tokens_per_s": sum(lengths) / t,
            "texts_per_s": len(texts) / t,
            "useful_gflops": flops / t / 1e9,
            "percent_of_fp32_probe_median": 100 * flops / t / 1e9 / peak,
        }
    report["ratios_per_rep"] = {}
    for ours in ("fp32", "bf16"):
        for base in ("a", "b"):
            if ours in times and base in times:
                rs = [tb / to for tb, to in zip(times[base], times[ours])]
                report["ratios_per_rep"][f"{ours}/{base}"] = {"median": statistics.median(rs), "all": rs}
    if "fp32" in times:  # compute rate against the probe taken just before each repetition
        rs = [100 * flops / t / 1e9 / p for t, p in zip(times["fp32"], probes)]
        report["fp32_percent_of_probe_per_rep"] = rs

    if "a" in vectors and "fp32" in vectors:
        a, f = vectors["a"], vectors["fp32"]
        report["fp32_vs_a_max_abs_diff"] = float(np.abs(a - f).max())
        report["vector_scale_max_abs"] = float(np.abs(a).max())
    if "fp32" in vectors and "bf16" in vectors:
        f, b = vectors["fp32"], vectors["bf16"]
        cos = (f * b).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(b, axis=1)
        report["bf16_cosine_to_fp32"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    del sides, vectors

    if not args.skip_memory:
        report["peak_memory_mb"] = {
            name: measure_memory(name, ckpt, args.texts, args.seed, args.batch_tokens) for name in names
        }
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
