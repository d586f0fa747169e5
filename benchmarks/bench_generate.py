"""generate(): gpt2kit vs transformers 4.57 on the 124M GPT-2 configuration (random weights), side by side.

Greedy (or --sample: top-k 50, top-p 0.95, temperature 0.8, the same seed on every side), a 32-token prompt,
exactly 128 new tokens (eos_token_id=None, so the length is fixed), batch 1 and 8.
Sides (all loaded at once, on the same weights, run in one process in an order that rotates every
repetition, after a warm-up that also pays any compilation):

    hf-fp32, hf-bf16         transformers' generate() in fp32 (its default) and bf16
    fp32, bf16               gpt2kit, eager decode step
    fp32+compile, ...        gpt2kit with generate(compile=True)        (--compile)
    fp32-packed, bf16-packed gpt2kit after pack_weights(model, 8)       (--packed)
    int8                     gpt2kit, quantize_int8() on the bf16 model (--int8)

Ratios are medians of per-repetition ratios (this machine's speed drifts). Each side's ms per decode step
is reported next to the memory-bandwidth bound: a step reads every weight it uses once, so ms/step >=
bytes read per step / bandwidth (--bandwidth-gbs, 19 GB/s measured on the dev VM; a 1 GiB sum probe is
printed too, and overstates what a GEMV achieves). Load averages are recorded at the start and the end.

    python benchmarks/bench_generate.py [--reps 2] [--new 128] [--compile] [--packed] [--int8] [--sample]
    python benchmarks/bench_generate.py --sides hf-fp32,bf16-packed,bf16-packed+compile   (any side names)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

import torch

# Steady state: a long-running process's weights sit in huge pages (model/hugepages.py moves them once a model
# has decoded 1,024 steps); here at the first, untimed call, so that no timed call includes the copy.
os.environ.setdefault("GPT2KIT_HUGEPAGES", "1")
from bench_model import CKPT, make_checkpoint


def read_bandwidth_gbs() -> float:
    """GB/s of a streaming read over 1 GiB (far beyond the L3 cache)."""
    x = torch.ones(256 * 2**20)  # 1 GiB of fp32
    x.sum()
    t0 = time.perf_counter()
    for _ in range(3):
        x.sum()
    return 3 * x.numel() * 4 / (time.perf_counter() - t0) / 1e9


def step_bytes(model) -> int:
    """Bytes of the weights one decode step reads: everything but the position table, and but the token
    table too when the LM head has its own (int8 or packed) copy of it; a step looks up B rows of those.
    Packed weights count their logical size (out x in), not oneDNN's padded blocks."""
    from gpt2kit.model.packed import PackedLinear
    from gpt2kit.model.quant import Int8Linear

    tr = model.transformer
    head = model.lm_head
    seen = {id(tr.wpe.weight)}
    if not (isinstance(head, torch.nn.Linear) and head.weight is tr.wte.weight):
        seen.add(id(tr.wte.weight))
    total = 0
    for m in model.modules():
        if isinstance(m, PackedLinear):
            total += m.in_features * m.out_features * m.packed_weight.element_size()
            tensors = [m.bias] if m.bias is not None else []
        else:
            # int8 weights are buffers; other buffers (transformers' causal-mask tables) are not weights
            quantized = isinstance(m, Int8Linear)
            tensors = [*m.parameters(recurse=False), *(m.buffers(recurse=False) if quantized else [])]
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def load_sides(names: list[str]) -> dict[str, tuple[object, dict]]:
    """side name -> (model, extra generate() keywords). Models are shared between a side and its +compile."""
    import transformers

    import gpt2kit
    from gpt2kit.model.packed import pack_weights
    from gpt2kit.model.quant import quantize_int8

    models: dict[str, object] = {}

    def model(base: str):
        if base not in models:
            if base.startswith("hf-"):
                dtype = torch.float32 if base == "hf-fp32" else torch.bfloat16
                models[base] = transformers.GPT2LMHeadModel.from_pretrained(CKPT, dtype=dtype).eval()
            elif base == "int8":
                models[base] = quantize_int8(
                    gpt2kit.GPT2LMHeadModel.from_pretrained(CKPT, dtype=torch.bfloat16)
                )
            else:
                dtype = torch.float32 if base.startswith("fp32") else torch.bfloat16
                models[base] = gpt2kit.GPT2LMHeadModel.from_pretrained(CKPT, dtype=dtype)
                if base.endswith("-packed"):
                    pack_weights(models[base], batch_size=8)
        return models[base]

    sides = {}
    for name in names:
        base, _, compiled = name.partition("+")
        sides[name] = (model(base), {"compile": True} if compiled else {})
    return sides


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--compile", action="store_true", help="add fp32+compile and bf16+compile sides")
    ap.add_argument("--packed", action="store_true", help="add fp32-packed and bf16-packed (pack_weights)")
    ap.add_argument(
        "--int8", action="store_true", help="add the int8 side (weight-only int8, bf16 activations)"
    )
    ap.add_argument(
        "--sample",
        action="store_true",
        help="sample (top_k=50, top_p=0.95, temperature=0.8) instead of greedy; every side draws under the "
        "same torch.manual_seed, so the tokens still compare",
    )
    ap.add_argument("--sides", default=None, help="comma-separated side names, overriding the flags above")
    ap.add_argument("--bandwidth-gbs", type=float, default=19.0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    make_checkpoint()

    names = ["hf-fp32", "hf-bf16", "fp32", "bf16"]
    if args.compile:
        names += ["fp32+compile", "bf16+compile"]
    if args.packed:
        names += ["fp32-packed", "bf16-packed"]
    if args.int8:
        names += ["int8"]
    if args.sides:
        names = args.sides.split(",")
    from gpt2kit.model import kernels

    report: dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": kernels.hardware().describe(),  # the CPU, its ISA flags, torch's capability, threads
        "sampling": bool(args.sample),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_start": load_average(),
        "read_probe_gbs": read_bandwidth_gbs(),
        "bandwidth_gbs": args.bandwidth_gbs,
        "results": [],
    }
    sides = load_sides(names)
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randint(0, 50257, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
        kw = dict(max_new_tokens=args.new, eos_token_id=None, do_sample=False, pad_token_id=0)
        if args.sample:
            kw.update(do_sample=True, top_k=50, top_p=0.95, temperature=0.8)

        def run(name, x=x, kw=kw, seed=0):
            model, extra = sides[name]
            torch.manual_seed(seed)  # the same draws on every side (sampling)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(x, attention_mask=torch.ones_like(x), **kw, **extra)
            assert out.shape[1] == x.shape[1] + kw["max_new_tokens"]
            return time.perf_counter() - t0, out

        warm, outs = {}, {}
        for name in names:  # warm-up: first-call costs (compilation included), and each side's tokens
            warm[name], outs[name] = run(name)
        times: dict[str, list[float]] = {name: [] for name in names}
        for i in range(args.reps):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(run(name, seed=i + 1)[0])
        ref = outs.get("hf-fp32")
        for name in names:
            model = sides[name][0]
            row = {
                "side": name,
                "batch": batch,
                "ms_per_step": 1000 * statistics.median(times[name]) / args.new,
                "ms_per_step_reps": [round(1000 * t / args.new, 2) for t in times[name]],
                "tok_s": batch * args.new / statistics.median(times[name]),
                "first_call_s": warm[name],
                "bound_ms_per_step": 1000 * step_bytes(model) / (args.bandwidth_gbs * 1e9),
            }
            for hf in ("hf-fp32", "hf-bf16"):
                if hf in times and name != hf:
                    ratios = [t_hf / t for t, t_hf in zip(times[name], times[hf])]
                    row[f"vs_{hf}"] = statistics.median(ratios)
                    row[f"vs_{hf}_reps"] = [round(r, 2) for r in ratios]
            same = "hf-bf16" if "bf16" in name and "hf-bf16" in outs else "hf-fp32"
            if same in outs and not name.startswith("hf-"):
                row[f"same_tokens_as_{same}"] = bool(torch.equal(outs[name], outs[same]))
            if name.endswith("+compile") and name.split("+")[0] in outs:
                row["same_tokens_as_eager"] = bool(torch.equal(outs[name], outs[name.split("+")[0]]))
            if name == "int8" and ref is not None:
                # Teacher-forced on transformers' fp32 continuation: how often int8 and fp32 pick the same
                # next token from the same context (free-running sequences diverge at the first difference).
                with torch.inference_mode():
                    fp32_top = sides["hf-fp32"][0](ref).logits[:, args.prompt - 1 : -1].argmax(-1)
                    int8_top = model(ref).logits[:, args.prompt - 1 : -1].argmax(-1)
                row["top1_agreement_vs_fp32"] = float((fp32_top == int8_top).float().mean())
            report["results"].append(row)
            print(json.dumps(row), flush=True)
    report["load_average_end"] = load_average()
    print(json.dumps(report, indent=2))
    print(table(report))


def table(report: dict) -> str:
    """The results as a markdown table."""
    lines = [
        f"{report['date']}, {report.get('machine', '')}, "
        f"{'sampling' if report.get('sampling') else 'greedy'}, torch {report['torch']}, {report['threads']} threads, load average "
        f"{report['load_average_start']} (start) / {report['load_average_end']} (end), bound at "
        f"{report['bandwidth_gbs']:g} GB/s (1 GiB read probe: {report['read_probe_gbs']:.1f} GB/s)",
        "",
        "| side | batch | ms/step | ms/token | tok/s | bound ms/step | vs hf same dtype | vs hf-fp32 | first call s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        same = "vs_hf-bf16" if ("bf16" in r["side"] or r["side"].startswith("int8")) else "vs_hf-fp32"
        if r["side"].startswith("hf-"):
            same = None

        def ratio(key, r=r):
            if key is None or key not in r:
                return ""
            return f"{r[key]:.2f}x ({', '.join(f'{v:.2f}' for v in r[key + '_reps'])})"

        lines.append(
            f"| {r['side']} | {r['batch']} | {r['ms_per_step']:.1f} | {r['ms_per_step'] / r['batch']:.2f} | "
            f"{r['tok_s']:.1f} | {r['bound_ms_per_step']:.1f} | {ratio(same)} | {ratio('vs_hf-fp32')} | "
            f"{r['first_call_s']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
