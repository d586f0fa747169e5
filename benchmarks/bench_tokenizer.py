"""Tokenizer throughput, side by side in one process: gpt2kit vs raw tiktoken vs transformers 4.57.

Batch-encodes >= 5 MB of mixed text (this Python's standard-library sources, the English prose of
pydoc_data/topics.py, and generated multilingual/emoji/whitespace text from tests/tokenizer_corpus.py),
one text per line as a data pipeline feeds it, and reports MB/s (UTF-8 bytes per second) and ratios:

- fast: GPT2TokenizerFast `tok(lines)` vs raw tiktoken (a Python loop of `encode_ordinary(line)`, its
  fastest per-text call; the same loop with the cyclic GC paused, as gpt2kit runs a batch; and
  `encode_ordinary_batch`, for reference) vs transformers' GPT2TokenizerFast;
- slow: GPT2Tokenizer `tok(lines)` vs transformers 4.57's pure-Python GPT2Tokenizer.

The sides run interleaved (A B C A B C ...) after a warm-up, and the median of the repetitions is reported
along with each repetition's ratio, since this machine's speed drifts (see /work/shared/MEASUREMENTS.md).
Ids are checked equal across all sides before timing.

    python benchmarks/bench_tokenizer.py            # full run (a few minutes)
    python benchmarks/bench_tokenizer.py --quick    # 1 MB, fast sides only, for iterating
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tokenizer_corpus import generated_text  # noqa: E402


def mixed_lines(n_bytes: int) -> list[str]:
    """~n_bytes of lines: 70% stdlib code, 15% English prose, 15% generated multilingual text."""
    root = Path(sysconfig.get_paths()["stdlib"])
    lines: list[str] = []
    size = 0
    prose = (root / "pydoc_data" / "topics.py").read_text(encoding="utf-8").splitlines(keepends=True)
    for line in prose:
        if size >= 0.15 * n_bytes:
            break
        lines.append(line)
        size += len(line.encode("utf-8"))
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "pydoc_data" in path.parts or size >= 0.85 * n_bytes:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for line in text.splitlines(keepends=True):
            lines.append(line)
            size += len(line.encode("utf-8"))
    rng = random.Random(0)
    while size < n_bytes:
        line = generated_text(rng).replace("<|endoftext|>", "") + "\n"
        lines.append(line)
        size += len(line.encode("utf-8"))
    random.Random(1).shuffle(lines)
    return lines


def load_sides(quick: bool) -> dict[str, tuple[str, object]]:
    import tiktoken
    from transformers import GPT2Tokenizer as HFSlow
    from transformers import GPT2TokenizerFast as HFFast

    from gpt2kit import GPT2Tokenizer, GPT2TokenizerFast
    from gpt2kit.hub import BUNDLED_VOCAB_DIR
    from gpt2kit.tokenizer.bpe import PATTERN
    from gpt2kit.tokenizer.fast import tiktoken_ranks
    from gpt2kit.tokenizer.files import load_bundled

    ours_fast = GPT2TokenizerFast.from_pretrained("gpt2")
    ranks, _ = tiktoken_ranks(load_bundled())
    enc = tiktoken.Encoding(
        "gpt2-raw", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )
    hf_fast = HFFast.from_pretrained(BUNDLED_VOCAB_DIR)
    sides = {
        "gpt2kit fast tok(lines)": ("fast", lambda lines: ours_fast(lines, verbose=False)["input_ids"]),
        "gpt2kit fast, ids only": (
            "fast",
            lambda lines: ours_fast(lines, return_attention_mask=False, verbose=False)["input_ids"],
        ),
        "tiktoken loop encode_ordinary": (
            "fast",
            lambda lines: [enc.encode_ordinary(line) for line in lines],
        ),
        "tiktoken loop, GC paused": (
            "fast",
            lambda lines: gc_paused(lambda: [enc.encode_ordinary(x) for x in lines]),
        ),
        "tiktoken encode_ordinary_batch": ("fast", lambda lines: enc.encode_ordinary_batch(lines)),
        "transformers fast tok(lines)": ("fast", lambda lines: hf_fast(lines)["input_ids"]),
    }
    if not quick:
        ours_slow = GPT2Tokenizer.from_pretrained("gpt2")
        hf_slow = HFSlow.from_pretrained(BUNDLED_VOCAB_DIR)
        sides["gpt2kit slow tok(lines)"] = (
            "slow",
            lambda lines: ours_slow(lines, verbose=False)["input_ids"],
        )
        sides["transformers slow tok(lines)"] = ("slow", lambda lines: hf_slow(lines)["input_ids"])
    return sides


def gc_paused(fn):
    """fn() with the cyclic GC off, as gpt2kit's tokenizers run a batch: the like-for-like tiktoken loop."""
    gc.disable()
    try:
        return fn()
    finally:
        gc.enable()


def speed_probe() -> float:
    """A short fixed amount of pure-Python work, in seconds: how fast the machine is at this moment."""
    t0 = time.perf_counter()
    x = 0
    for i in range(300_000):
        x += i * i % 7
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=5.0, help="megabytes of text (default 5)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of the fast sides (default 5)")
    parser.add_argument(
        "--slow-reps", type=int, default=3, help="timed repetitions of the slow sides (default 3)"
    )
    parser.add_argument("--quick", action="store_true", help="1 MB, 3 reps, fast sides only")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.reps = 1.0, 3

    import tiktoken
    import transformers

    lines = mixed_lines(int(args.mb * 1e6))
    mb = sum(len(line.encode("utf-8")) for line in lines) / 1e6
    print(f"# {len(lines):,} lines, {mb:.2f} MB; python {platform.python_version()}, tiktoken {tiktoken.__version__}, "
          f"transformers {transformers.__version__}, {platform.processor() or platform.machine()}")  # fmt: skip
    sides = load_sides(args.quick)

    references: dict[str, list] = {}
    for name, (group, fn) in sides.items():  # warm-up (fills caches) and the ids check
        ids = fn(lines)
        # Within a group only: the slow and fast tokenizers of transformers itself split letters newer than
        # the Rust regex engines' Unicode tables differently (see test_tokenizer_parity.py).
        reference = references.setdefault(group, ids)
        if ids != reference:
            bad = next(i for i in range(len(lines)) if ids[i] != reference[i])
            raise SystemExit(f"{name} disagrees on line {bad}: {lines[bad]!r}")
    print("# all sides of each group give identical ids")

    times: dict[str, list[float]] = {name: [] for name in sides}
    probes = []
    for rep in range(max(args.reps, args.slow_reps)):
        probes.append(speed_probe())
        for name, (group, fn) in sides.items():
            if rep >= (args.reps if group == "fast" else args.slow_reps):
                continue
            t0 = time.perf_counter()
            fn(lines)
            times[name].append(time.perf_counter() - t0)

    print(f"# machine probe per repetition (s, lower is faster): {', '.join(f'{p:.3f}' for p in probes)}")
    print(f"{'side':34s} {'MB/s median':>11s}  {'min-max':>13s}")
    rate = {}
    for name, ts in times.items():
        speeds = [mb / t for t in ts]
        rate[name] = statistics.median(speeds)
        print(f"{name:34s} {rate[name]:11.2f}  {min(speeds):6.2f}-{max(speeds):<6.2f}")

    def ratio(a: str, b: str) -> None:
        if a in times and b in times:
            per_rep = [tb / ta for ta, tb in zip(times[a], times[b])]
            print(f"{a} / {b}: {statistics.median(per_rep):.2f}x (per repetition: "
                  f"{', '.join(f'{r:.2f}' for r in per_rep)})")  # fmt: skip

    print()
    ratio("gpt2kit fast tok(lines)", "tiktoken loop encode_ordinary")
    ratio("gpt2kit fast, ids only", "tiktoken loop encode_ordinary")
    ratio("gpt2kit fast tok(lines)", "tiktoken loop, GC paused")
    ratio("gpt2kit fast tok(lines)", "tiktoken encode_ordinary_batch")
    ratio("gpt2kit fast tok(lines)", "transformers fast tok(lines)")
    ratio("gpt2kit slow tok(lines)", "transformers slow tok(lines)")


if __name__ == "__main__":
    main()
