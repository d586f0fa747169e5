"""Where a batch-1 decode step's time goes: the products (the weights' matmuls) against everything else.

A decode step of the 124M model multiplies one row by every weight (49 products) and does a little work
around them: LayerNorms, attention over the cache, GELU, residual adds, cache writes, the logits
processors and the argmax, and Python between them. This script generates 128 tokens greedily under
torch's profiler for each weight format and sums the self CPU time of the product ops against the whole
step; the rest is the decode overhead (the target: under 20% of a step on the fastest setting).

    python benchmarks/profile_decode.py [--formats float,packed,int8] [--new 128] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_model import make_checkpoint

import gpt2kit
from gpt2kit.model import kernels

# The ops that multiply by a weight matrix, whichever kernel runs them.
PRODUCTS = {
    "aten::addmm",
    "aten::mm",
    "aten::linear",
    "mkldnn::_linear_pointwise",
    "quantized::linear_dynamic",
    "aten::_weight_int8pack_mm",
    # split-K (matmul.splitk_linear): one bmm over slices of K, then the sum of the partial products
    "aten::bmm",
    "aten::sum",
}
ATTENTION = {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"}


def load(fmt: str, ckpt) -> torch.nn.Module:
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(ckpt).eval()
    if fmt == "packed":
        gpt2kit.pack_weights(model, batch_size=1)
    elif fmt == "int8":
        gpt2kit.quantize_int8(model)
    return model


def profile(model, batch: int, new: int) -> dict:
    x = torch.randint(0, 50000, (batch, 32), generator=torch.Generator().manual_seed(0))
    kw = dict(do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=50256)
    with torch.inference_mode():
        for _ in range(
            2
        ):  # warm-up: kernel decisions, allocations, the recorded decode step (after 256 steps)
            model.generate(x, **kw)
        t0 = time.perf_counter()
        model.generate(x, **kw)
        wall = time.perf_counter() - t0
        with torch.profiler.profile() as prof:
            model.generate(x, **kw)
    self_us = {}
    for e in prof.key_averages():
        self_us[e.key] = self_us.get(e.key, 0.0) + e.self_cpu_time_total
    total = sum(self_us.values())
    products = sum(v for k, v in self_us.items() if k in PRODUCTS)
    attention = sum(v for k, v in self_us.items() if k in ATTENTION)
    top = sorted(((v, k) for k, v in self_us.items() if k not in PRODUCTS), reverse=True)[:8]
    return {
        "ms_per_step_unprofiled": 1e3 * wall / new,
        "products_share": products / total,
        "attention_share": attention / total,
        "other_share": 1 - (products + attention) / total,
        "top_other": [(k, round(100 * v / total, 1)) for v, k in top],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default="float,packed,int8")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    ckpt = make_checkpoint()
    print(kernels.hardware().describe())
    results = {}
    for fmt in args.formats.split(","):
        r = results[fmt] = profile(load(fmt, ckpt), args.batch, args.new)
        print(
            f"{fmt:>7}: {r['ms_per_step_unprofiled']:.2f} ms/step; products {100 * r['products_share']:.1f}%, "
            f"attention {100 * r['attention_share']:.1f}%, everything else {100 * r['other_share']:.1f}% "
            f"(largest: {', '.join(f'{k} {v}%' for k, v in r['top_other'][:5])})"
        )
    print(json.dumps({"machine": kernels.hardware().describe(), "batch": args.batch, "results": results}))


if __name__ == "__main__":
    main()
