"""generate(): gpt2kit vs transformers 4.57 on the 124M GPT-2 configuration (random weights), side by side.

Greedy, a 32-token prompt, exactly 128 new tokens (eos_token_id=None, so the length is fixed), batch 1 and 8, fp32 and bf16.
Both sides run in one process on the same weights, interleaved A B A B after a warm-up; the speedup is
the median of per-pair ratios. Reported next to the memory-bandwidth bound: a batch-1 decode step must
read every weight once, so ms/token >= weight bytes / read bandwidth (measured here with a probe).

    python benchmarks/bench_generate.py [--reps 3] [--new 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from bench_model import CKPT, make_checkpoint


def read_bandwidth_gbs() -> float:
    """GB/s of a streaming read over 1 GB (far beyond the L3 cache)."""
    x = torch.ones(256 * 2**20)  # 1 GiB of fp32
    x.sum()
    t0 = time.perf_counter()
    for _ in range(3):
        x.sum()
    return 3 * x.numel() * 4 / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    make_checkpoint()
    import transformers

    import gpt2kit

    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "results": []}
    report["read_bandwidth_gbs"] = read_bandwidth_gbs()
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        ours = gpt2kit.GPT2LMHeadModel.from_pretrained(CKPT, dtype=dtype)
        hf = transformers.GPT2LMHeadModel.from_pretrained(CKPT, dtype=dtype).eval()
        weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.randint(0, 50257, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
            kw = dict(max_new_tokens=args.new, eos_token_id=None, do_sample=False, pad_token_id=0)

            def run(model, x=x, kw=kw):
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = model.generate(x, attention_mask=torch.ones_like(x), **kw)
                assert out.shape[1] == x.shape[1] + kw["max_new_tokens"]
                return time.perf_counter() - t0, out

            (_, a), (_, b) = run(ours), run(hf)  # warm-up, and the same tokens on both sides
            same = bool(torch.equal(a, b))
            times: dict[str, list[float]] = {"gpt2kit": [], "transformers": []}
            for i in range(args.reps):
                for name in ("gpt2kit", "transformers") if i % 2 == 0 else ("transformers", "gpt2kit"):
                    times[name].append(run(ours if name == "gpt2kit" else hf)[0])
            ratios = [t_hf / t_ours for t_ours, t_hf in zip(times["gpt2kit"], times["transformers"])]
            new_tokens = batch * args.new
            row = {
                "dtype": dtype_name,
                "batch": batch,
                "same_tokens": same,
                "gpt2kit_tok_s": new_tokens / statistics.median(times["gpt2kit"]),
                "transformers_tok_s": new_tokens / statistics.median(times["transformers"]),
                "speedup_median": statistics.median(ratios),
                "speedup_min_max": [min(ratios), max(ratios)],
                "gpt2kit_ms_per_step": 1000 * statistics.median(times["gpt2kit"]) / args.new,
                "bandwidth_bound_ms_per_step": 1000 * weight_bytes / (report["read_bandwidth_gbs"] * 1e9),
            }
            report["results"].append(row)
            print(json.dumps(row), flush=True)
        del ours, hf
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
