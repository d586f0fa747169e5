"""Speculative greedy decoding on the bundled demo model: plain greedy vs prompt lookup vs assisted decoding.

Exactly --new new tokens (eos_token_id=None), batch 1, fp32, eager. Sides, interleaved in one process in an
order that rotates every repetition, after one warm-up each:

    greedy     generate() as is
    lookup     generate(prompt_lookup_num_tokens=N)          (N = --lookup, 10)
    assisted   generate(assistant_model=draft): the demo model's first --draft-layers blocks (embeddings
               and head shared in value, nothing trained) as the draft, num_assistant_tokens = --assist

Two prompts: "summarise" (a paragraph followed by a request to repeat it, the workload prompt lookup is
made for) and "self-repeat" (a dictionary-style prompt whose greedy continuation repeats itself). Each side
reports ms per new token (median over reps) and the acceptance rate (tokens accepted / tokens proposed);
every side is checked to return plain greedy's tokens.

    python benchmarks/bench_speculative.py [--reps 3] [--new 128] [--lookup 10] [--draft-layers 1] [--assist 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import statistics
import time
from pathlib import Path

import torch

# Steady state: a long-running process's weights sit in huge pages (model/hugepages.py moves them once a model
# has decoded 1,024 steps); here at the first, untimed call, so that no timed call includes the copy.
os.environ.setdefault("GPT2KIT_HUGEPAGES", "1")

import gpt2kit
from gpt2kit.generation.search import generate, plan_generation, speculative_decode

PROMPTS = {
    "summarise": (
        "The guitar is a stringed musical instrument that is usually fretted and typically has six strings. "
        "It is held flat against the player's body and played by strumming or plucking the strings with the "
        "dominant hand, while simultaneously pressing selected strings against frets with the fingers of the "
        "opposite hand.\n\nRepeat the text above.\n\nThe guitar is a stringed musical instrument that"
    ),
    "self-repeat": "guitar (noun): a",
}


def cpu_flags_line() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    m = re.search(r"^flags\s*:.*$", text, re.M)
    return m.group(0) if m else "flags: (no /proc/cpuinfo)"


def acceptance(model, ids, new, **kw) -> float | None:
    """accepted / proposed of one speculative run (None for plain greedy)."""
    if not kw:
        return None
    plan = plan_generation(model, ids, None, None, max_new_tokens=new, eos_token_id=None, **kw)
    state: dict = {}
    list(speculative_decode(model, plan, state=state))
    s = state["speculation"]
    return s["accepted"] / s["proposed"] if s["proposed"] else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--lookup", type=int, default=10)
    ap.add_argument("--draft-layers", type=int, default=1)
    ap.add_argument("--assist", type=int, default=5)
    args = ap.parse_args()

    print(cpu_flags_line())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    model = gpt2kit.GPT2LMHeadModel.from_pretrained("gpt2kit-demo").eval()
    tok = gpt2kit.AutoTokenizer.from_pretrained("gpt2kit-demo")
    draft = copy.deepcopy(model)
    draft.transformer.h = draft.transformer.h[: args.draft_layers]
    draft.config.n_layer = args.draft_layers
    draft.generation_config.num_assistant_tokens = args.assist
    print(
        f"target: demo model, {model.config.n_layer} layers, n_embd {model.config.n_embd}; draft: first "
        f"{args.draft_layers} layer(s), num_assistant_tokens={args.assist}"
    )
    sides = {
        "greedy": {},
        f"lookup N={args.lookup}": {"prompt_lookup_num_tokens": args.lookup},
        f"assisted {args.draft_layers}L": {"assistant_model": draft},
    }
    for pname, text in PROMPTS.items():
        ids = tok([text], return_tensors="pt")["input_ids"]
        kw = dict(max_new_tokens=args.new, eos_token_id=None, pad_token_id=50256)
        reference = generate(model, ids, **kw)
        assert reference.shape[1] == ids.shape[1] + args.new
        times: dict[str, list[float]] = {name: [] for name in sides}
        for name, extra in sides.items():  # warm-up, and the exactness check
            out = generate(model, ids, **kw, **extra)
            assert torch.equal(out, reference), f"{name} differs from greedy"
        names = list(sides)
        for rep in range(args.reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                t0 = time.perf_counter()
                generate(model, ids, **kw, **sides[name])
                times[name].append((time.perf_counter() - t0) * 1e3 / args.new)
        print(f"\nprompt {pname!r} ({ids.shape[1]} tokens), {args.new} new tokens, {args.reps} reps:")
        base = statistics.median(times["greedy"])
        for name, extra in sides.items():
            ms = statistics.median(times[name])
            acc = acceptance(model, ids, args.new, **extra)
            acc_s = f"acceptance {acc:6.1%}" if acc is not None else "acceptance     -"
            runs = " ".join(f"{t:.2f}" for t in times[name])
            print(f"  {name:<14} {ms:7.2f} ms/token  ({runs})  x{base / ms:4.2f} vs greedy  {acc_s}")


if __name__ == "__main__":
    main()
