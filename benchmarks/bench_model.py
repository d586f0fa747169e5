"""gpt2kit vs transformers 4.57 on the 124M GPT-2 configuration (random weights), side by side.

1. import + from_pretrained: fresh subprocesses, alternating gpt2kit / transformers, wall time and peak RSS.
2. forward throughput, batch x seq tokens, fp32 and bf16: one process, both models on the same weights,
   interleaved A B A B after a warm-up; the ratio is taken per pair and its median reported.

    python benchmarks/bench_model.py [--reps 5] [--batch 8] [--seq 256]

The machine is noisy (see MEASUREMENTS.md): only the side-by-side ratios are meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
CKPT = HERE / "out" / "gpt2-124m-random"

LOAD_SNIPPET = {
    "gpt2kit": "import gpt2kit; from gpt2kit import GPT2LMHeadModel as M",
    "transformers": "import transformers; from transformers import GPT2LMHeadModel as M",
}
# Peak memory is VmHWM (this process's own high-water RSS): ru_maxrss would include the parent's, since
# Linux keeps it across exec. The first forward is timed too: weights that are only memory-mapped at
# load time are paged in there, so load + first forward is the fair "ready to use" figure.
CHILD = """
import time, json, sys
t0 = time.perf_counter()
{imp}
import torch
t1 = time.perf_counter()
m = M.from_pretrained(sys.argv[1])
t2 = time.perf_counter()
with torch.inference_mode():
    m(torch.arange(8)[None])
t3 = time.perf_counter()
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps(dict(import_s=t1 - t0, load_s=t2 - t1, first_forward_s=t3 - t2, total_s=t3 - t0,
                      peak_rss_mb=int(hwm) / 1024)))
"""


def make_checkpoint() -> Path:
    if (CKPT / "model.safetensors").is_file():
        return CKPT
    import torch
    import transformers

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(CKPT)
    return CKPT


def bench_load(reps: int) -> dict:
    rows: dict[str, list[dict]] = {"gpt2kit": [], "transformers": []}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for _ in range(reps):
        for name in ("gpt2kit", "transformers"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD.format(imp=LOAD_SNIPPET[name]), str(CKPT)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {}
    for name, rs in rows.items():
        result[name] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
    ratios = [a["total_s"] / b["total_s"] for a, b in zip(rows["gpt2kit"], rows["transformers"])]
    result["total_time_ratio_median"] = statistics.median(ratios)
    return result


def matmul_probe_gflops() -> float:
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - t0) / 1e9


def bench_forward(reps: int, batch: int, seq: int) -> dict:
    import torch
    import transformers

    import gpt2kit

    x = torch.randint(0, 50257, (batch, seq), generator=torch.Generator().manual_seed(0))
    result = {}
    for dtype in (torch.float32, torch.bfloat16):
        ours = gpt2kit.GPT2Model.from_pretrained(CKPT, dtype=dtype).eval()
        hf = transformers.GPT2Model.from_pretrained(
            CKPT, torch_dtype=dtype, attn_implementation="sdpa"
        ).eval()
        sides = {"gpt2kit": ours, "transformers": hf}

        def run(model):
            with torch.inference_mode():
                t0 = time.perf_counter()
                model(x)
                return time.perf_counter() - t0

        for m in sides.values():  # warm-up
            run(m)
            run(m)
        times: dict[str, list[float]] = {k: [] for k in sides}
        probes = []
        for i in range(reps):
            probes.append(matmul_probe_gflops())
            order = list(sides) if i % 2 == 0 else list(reversed(sides))
            for name in order:
                times[name].append(run(sides[name]))
        ratios = [b / a for a, b in zip(times["gpt2kit"], times["transformers"])]
        tok = batch * seq
        result[str(dtype).removeprefix("torch.")] = {
            "gpt2kit_tok_s": tok / statistics.median(times["gpt2kit"]),
            "transformers_tok_s": tok / statistics.median(times["transformers"]),
            "speedup_median": statistics.median(ratios),
            "speedup_min_max": [min(ratios), max(ratios)],
            "matmul_probe_gflops_median": statistics.median(probes),
        }
        del ours, hf
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-forward", action="store_true")
    args = ap.parse_args()
    make_checkpoint()
    import torch

    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "seq": args.seq,
    }
    if not args.skip_load:
        report["import_and_load"] = bench_load(args.reps)
    if not args.skip_forward:
        report["forward"] = bench_forward(args.reps, args.batch, args.seq)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
