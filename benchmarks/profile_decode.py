"""Where a batch-1 decode step's time goes: the products (the weights' matmuls) against everything else.

A decode step of the 124M model multiplies one row by every weight (49 products) and does a little work
around them: LayerNorms, attention over the cache, GELU, residual adds, cache writes, the logits
processors and the argmax, and Python between them. This script generates 128 tokens greedily under
torch's profiler for each weight format and sums the self CPU time of the product ops against the whole
step; the rest is the decode overhead (the target: under 20% of a step on the fastest setting).

    python benchmarks/profile_decode.py [--formats float,packed,int8] [--new 128] [--batch 1] [--replay] [--loop]

--replay adds, per format, the recorded decode step alone (generation/traced.py's replay, one flat graph):
its op count and, under the profiler, the self time and calls per step of each op kind, replayed at the
middle cache length of the call; next to the unprofiled replay time and the products alone (the same
weights, one call each), so the step's non-product time is the difference of two unprofiled times.
--loop adds generate()'s time outside the step per token (the loop: processors, the choice, eos checks;
the prefill spread over the tokens), greedy and sampling, unprofiled.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

# Steady state: a long-running process's weights sit in huge pages (model/hugepages.py moves them once a model
# has decoded 1,024 steps); here at the first, untimed call, so that no timed call includes the copy.
os.environ.setdefault("GPT2KIT_HUGEPAGES", "1")
from bench_model import make_checkpoint

import gpt2kit
from gpt2kit.model import kernels, quant

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
ATTENTION = {
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_attention_math",
    "aten::_softmax",  # the matmul form of a decode step's attention (attention.decode_kernel)
}


def kind(key: str, shapes: list, batch_heads: int) -> str:
    """'products', 'attention' or 'other' for an op and its input shapes: a bmm over batch x heads
    matrices is the matmul form of the attention, any other bmm split-K's."""
    if key == "aten::bmm" and shapes and len(shapes[0]) == 3 and shapes[0][0] == batch_heads:
        return "attention"
    return "products" if key in PRODUCTS else ("attention" if key in ATTENTION else "other")


def load(fmt: str, ckpt, batch: int) -> torch.nn.Module:
    model = gpt2kit.GPT2LMHeadModel.from_pretrained(ckpt).eval()
    if fmt == "packed":
        gpt2kit.pack_weights(model, batch_size=batch)  # the layout for the rows each product has
    elif fmt == "int8":
        gpt2kit.quantize_int8(model)
        quant.few_rows_engines_when_due(model, 0, at_once=True)  # as a long-running process has it
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
        with torch.profiler.profile(record_shapes=True) as prof:
            model.generate(x, **kw)
    self_us, share = {}, {"products": 0.0, "attention": 0.0, "other": 0.0}
    for e in prof.key_averages(group_by_input_shape=True):
        self_us[e.key] = self_us.get(e.key, 0.0) + e.self_cpu_time_total
        share[kind(e.key, e.input_shapes, batch * model.config.n_head)] += e.self_cpu_time_total
    total = sum(self_us.values())
    products, attention = share["products"], share["attention"]
    top = sorted(((v, k) for k, v in self_us.items() if k not in PRODUCTS), reverse=True)[:8]
    return {
        "ms_per_step_unprofiled": 1e3 * wall / new,
        "products_share": products / total,
        "attention_share": attention / total,
        "other_share": 1 - (products + attention) / total,
        "top_other": [(k, round(100 * v / total, 1)) for v, k in top],
    }


def profile_replay(model, batch: int, new: int, reps: int = 50) -> dict:
    """The replayed step of the last generate() call of this shape (profile() made it), at the middle length."""
    import collections
    import statistics

    from gpt2kit.generation import traced
    from gpt2kit.model.cache import StaticCache

    key, recording = list(traced._recordings[model].items())[-1]
    length = 32 + new // 2
    cache = StaticCache.for_model(model.config, batch, 32 + new)
    for buf in (*cache.k, *cache.v):
        buf.normal_()  # what a filled cache holds: finite values (int8 layers refuse NaN activations)
    args = (
        torch.full((batch, 1), 5),
        torch.full((batch, 1), length - 1),
        cache.k,
        cache.v,
        torch.empty(length),
    )
    if key[-1]:  # the greedy step that also chooses (traced._PickStep): the ids min_new_tokens forbids
        args += (torch.tensor([50256]),)

    def step():
        with torch.jit.optimized_execution(False):
            return recording(*args)

    layers = [m for m in model.modules() if hasattr(m, "_packed")]
    rows = [torch.randn(batch, 1, m.in_features) for m in layers]

    def products():
        for m, x in zip(layers, rows):  # each on the weight its row bucket runs on
            torch.ops.quantized.linear_dynamic(x, m._for_rows(batch), m.reduce_range)

    def median_ms(fn, n=reps * 4):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    kinds = collections.Counter(
        n.kind() for n in recording.graph.nodes() if n.kind() not in ("prim::Constant", "prim::ListUnpack")
    )
    with torch.inference_mode():
        for _ in range(10):
            step()
        out = {"length": length, "graph_ops": sum(kinds.values()), "replay_ms": median_ms(step)}
        if layers:  # dynamic int8: the products alone, unprofiled
            out["products_only_ms"] = median_ms(products)
        with torch.profiler.profile() as prof:
            for _ in range(reps):
                step()
    per_kind = sorted(
        ((e.self_cpu_time_total / reps, e.count / reps, e.key) for e in prof.key_averages()), reverse=True
    )
    out["profiled_ms"] = sum(us for us, _, _ in per_kind) / 1e3
    out["per_op_kind"] = [(k, round(us, 1), round(c, 1)) for us, c, k in per_kind if us >= 1.0]
    return out


def loop_overhead(model, batch: int, new: int, sample: bool, reps: int = 4) -> dict:
    """generate()'s time outside the decode step: per step, what the loop does between two steps (logits
    processors, the choice, eos bookkeeping, Python), timed around the recorded step's calls, unprofiled."""
    import statistics

    from gpt2kit.generation import search

    x = torch.randint(0, 50000, (batch, 32), generator=torch.Generator().manual_seed(0))
    kw = dict(do_sample=sample, max_new_tokens=new, min_new_tokens=new, pad_token_id=50256)
    if sample:
        kw.update(top_k=50, top_p=0.95, temperature=0.8)
    inside: list[float] = []
    real = search._traced_step

    def timed(*a, **k):
        step = real(*a, **k)

        def run(*args, **kwargs):
            t0 = time.perf_counter()
            out = step(*args, **kwargs)
            inside.append(time.perf_counter() - t0)
            return out

        return run

    search._traced_step = timed
    try:
        rows = []
        with torch.inference_mode():
            for i in range(reps + 1):
                inside.clear()
                t0 = time.perf_counter()
                model.generate(x, **kw)
                wall = time.perf_counter() - t0
                if i:  # the first call pays for the recording
                    rows.append((wall / new, sum(inside) / len(inside), (wall - sum(inside)) / new))
    finally:
        search._traced_step = real
    total, step, outside = (1e3 * statistics.median(r[k] for r in rows) for k in range(3))
    return {"ms_per_token": total, "step_ms": step, "outside_step_ms_per_token": outside}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default="float,packed,int8")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--replay", action="store_true", help="also profile the recorded decode step alone")
    ap.add_argument(
        "--loop",
        action="store_true",
        help="also time generate() outside the decode step, greedy and sampling (top-k 50, top-p 0.95, T 0.8)",
    )
    args = ap.parse_args()
    ckpt = make_checkpoint()
    print(kernels.hardware().describe())
    results = {}
    for fmt in args.formats.split(","):
        model = load(fmt, ckpt, args.batch)
        r = results[fmt] = profile(model, args.batch, args.new)
        print(
            f"{fmt:>7}: {r['ms_per_step_unprofiled']:.2f} ms/step; products {100 * r['products_share']:.1f}%, "
            f"attention {100 * r['attention_share']:.1f}%, everything else {100 * r['other_share']:.1f}% "
            f"(largest: {', '.join(f'{k} {v}%' for k, v in r['top_other'][:5])})"
        )
        if args.replay:
            rp = r["replay"] = profile_replay(model, args.batch, args.new)
            only = rp.get("products_only_ms")
            print(
                f"         replayed step at length {rp['length']}: {rp['graph_ops']} ops, {rp['replay_ms']:.2f} ms"
                + (f" (the products alone {only:.2f} ms)" if only else "")
                + f"; profiled {rp['profiled_ms']:.2f} ms, self us and calls per step:"
            )
            for key, us, calls in rp["per_op_kind"][:16]:
                print(f"           {us:8.1f} us {calls:6.1f}x  {key}")
        if args.loop:
            for mode in ("greedy", "sample"):
                lp = r[f"loop_{mode}"] = loop_overhead(model, args.batch, args.new, mode == "sample")
                print(
                    f"         {mode}: {lp['ms_per_token']:.2f} ms a token, the step {lp['step_ms']:.2f} ms, "
                    f"outside it {1e3 * lp['outside_step_ms_per_token']:.0f} us a token (prefill included)"
                )
    print(json.dumps({"machine": kernels.hardware().describe(), "batch": args.batch, "results": results}))


if __name__ == "__main__":
    main()
