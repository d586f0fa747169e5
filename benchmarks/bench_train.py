"""Training throughput and peak memory: gpt2kit's Trainer vs a plain torch loop over transformers 4.57.

Both sides start from the same checkpoint (the random 124M one of bench_model.py by default) and train on
the same batches (random token blocks of --seq, --batch per step, in the Trainer's data order):

    transformers   the loop a user would write: transformers.GPT2LMHeadModel (default attention
                   implementation, train mode, default dropout), torch.optim.AdamW(model.parameters(),
                   lr=5e-5) (torch's default implementation, not fused; weight_decay=0.01 by default), and
                   per step: loss = model(input_ids=x, labels=x).loss; loss.backward();
                   clip_grad_norm_(1.0); opt.step(); opt.zero_grad(); under torch.autocast("cpu", bf16)
                   for bf16.
    gpt2kit        gpt2kit.GPT2LMHeadModel through our Trainer: TrainingConfig(batch_size, lr=5e-5,
                   weight_decay=0.01 (so the update does the same arithmetic), schedule="constant",
                   max_grad_norm=1.0, precision=...), i.e. fused AdamW and the Trainer's own step.

Throughput (one process, both sides loaded at once, per precision): after --warmup steps per side (excluded),
--steps timed steps, alternating A B B A ... so drifts of this shared machine's speed hit both sides alike.
Our side is timed as fit() runs a step: the micro-batches come from Trainer._steps() and the step is
Trainer._train_step() (data collation, forward, backward, clipping, optimizer and schedule step) --
what fit() does per step, minus the end-of-run save_pretrained, which is not training. The ratio is the
median of the per-pair ratios ours/transformers of tokens/s.

Peak memory: each side and precision in a fresh subprocess, which trains --warmup + 1 steps (the second step
holds weights, gradients, AdamW state and activations at once: the steady-state peak). Ours runs the real
fit() there, with a step_end callback that reads the peak before fit() saves the final model (the save is
excluded). The peak is VmHWM of /proc/self/status: the process's RSS high-water mark since its exec, import
and model load included, nothing subtracted. getrusage(RUSAGE_SELF).ru_maxrss is not used: Linux carries it
across exec from the process that spawned the child, so a child of this (large) process would report this
process's peak. Each child also reports tokens/s of its step(s) after the warm-up (one side alone: a
cross-check of the interleaved figure, noisier).

Sanity, before timing: on the first batch, the eval-mode (no dropout) losses of both freshly loaded models
must agree within 1e-3 (under bf16 autocast: --bf16-tol, 1e-3 by default; the two implementations round
differently), and in fp32 their logits too (max |diff| <= 1e-3: random weights score about ln(vocab) whatever
the model, so the loss alone proves little). Both sides' first training-step losses (with dropout, so they
differ slightly) are printed, and at the end the script asserts both sides trained on the same batches.

    python benchmarks/bench_train.py [--config 124m|small] [--steps 3] [--warmup 1] [--precisions fp32,bf16]
                                     [--threads N] [--batch 4] [--seq 256] [--no-memory]

The 124M configuration takes minutes on a 2-core CPU; --config small (2 layers, n_embd 128) checks the
script in seconds. The load average (`uptime`) is printed at the start and the end. When other jobs hold
the cores, torch's 2 OpenMP threads wait on each other and step times swing 5-10x (seen on the dev VM with a
training job running; --threads 1 was stable there): compare only runs taken on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_model import make_checkpoint
from torch.utils.data import Dataset

HERE = Path(__file__).parent
SMALL_CKPT = HERE / "out" / "gpt2-small-random"
# A quick check of the script, not a benchmark: a small vocabulary too, as the 50257 x n_embd LM head and
# its cross-entropy would otherwise dominate a tiny model's step.
SMALL = dict(n_layer=2, n_embd=128, n_head=2, vocab_size=2048, n_positions=256)
# The +compile sides only with --compile: TrainingConfig(compile=True), and the plain loop over
# torch.compile(model), what a speed-minded transformers user runs.
SIDES = ("gpt2kit", "transformers", "gpt2kit+compile", "transformers+compile")


def sides_of(args) -> list[str]:
    return list(SIDES) if args.compile else list(SIDES[:2])


LR = 5e-5
WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default, which the plain loop gets
SEED = 42  # TrainingConfig's default seed: the data order both sides follow


def checkpoint(config: str) -> Path:
    if config == "124m":
        return make_checkpoint()
    if (SMALL_CKPT / "model.safetensors").is_file():
        return SMALL_CKPT
    import transformers

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL)).save_pretrained(SMALL_CKPT)
    return SMALL_CKPT


def vocab_size(ckpt: Path) -> int:
    return json.loads((ckpt / "config.json").read_text())["vocab_size"]


class RandomBlocks(Dataset):
    """n blocks of seq random token ids; items are what the Trainer expects (labels = input_ids)."""

    def __init__(self, n: int, seq: int, vocab: int) -> None:
        self.ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def order_of_batches(data: Dataset, batch: int, total: int) -> list[list[int]]:
    """The Trainer's micro-batches (grad_accum 1, one process) for `total` steps, so the plain loop sees
    exactly the examples our side sees, step by step."""
    from gpt2kit.training.trainer import epoch_micro_batches

    out: list[list[int]] = []
    epoch = 0
    while len(out) < total:
        out += epoch_micro_batches(len(data), epoch, SEED, batch, 1, 0)
        epoch += 1
    return out[:total]


def training_config(args, precision: str, total: int, output_dir: str, compile: bool = False):
    from gpt2kit.training import TrainingConfig

    return TrainingConfig(
        output_dir=output_dir,
        batch_size=args.batch,
        max_steps=total,
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        schedule="constant",
        max_grad_norm=1.0,
        precision=precision,
        seed=SEED,
        progress=False,
        plot=False,
        save_best=False,
        resume=False,
        log_every=10**9,
        compile=compile,
    )


# --- the two sides -------------------------------------------------------------------------------------------


class Ours:
    """gpt2kit through the Trainer, stepped the way fit() steps it."""

    def __init__(
        self,
        ckpt: Path,
        data: Dataset,
        args,
        precision: str,
        total: int,
        output_dir: str,
        compile: bool = False,
    ) -> None:
        import gpt2kit
        from gpt2kit.training import Trainer

        self.model = gpt2kit.GPT2LMHeadModel.from_pretrained(ckpt, dtype=torch.float32)
        config = training_config(args, precision, total, output_dir, compile)
        self.trainer = Trainer(self.model, data, None, config)
        self.batches = self.trainer._steps()
        self.seen: list[list[int]] = []  # the examples of each step, to check both sides saw the same

    def step(self) -> tuple[float, int]:
        micro_batches = next(self.batches)
        self.seen += micro_batches
        loss, tokens, _ = self.trainer._train_step(micro_batches)
        self.trainer.step += 1
        return loss, tokens


class Plain:
    """transformers' GPT2LMHeadModel in the plain loop a user would write."""

    def __init__(
        self, ckpt: Path, data: Dataset, args, precision: str, total: int, compile: bool = False
    ) -> None:
        import transformers

        self.model = transformers.GPT2LMHeadModel.from_pretrained(ckpt)
        self.model.train()
        # the first (warm-up) step pays the compilation; eval_forward and checks use the model itself
        self.forward = torch.compile(self.model) if compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR)
        self.data = data
        self.batches = iter(order_of_batches(data, args.batch, total))
        self.precision = precision
        self.seen: list[list[int]] = []

    @property
    def attn_implementation(self) -> str:
        return self.model.config._attn_implementation

    def step(self) -> tuple[float, int]:
        idx = next(self.batches)
        self.seen.append(idx)
        x = torch.stack([self.data[i]["input_ids"] for i in idx])
        with autocast(self.precision):
            loss = self.forward(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()
        return loss.item(), x.numel()


@torch.no_grad()
def eval_forward(model: torch.nn.Module, x: torch.Tensor, precision: str) -> tuple[float, torch.Tensor]:
    """Loss and logits in eval mode (no dropout), under the precision's autocast."""
    model.eval()
    with autocast(precision):
        out = model(input_ids=x, labels=x)
    model.train()
    return out.loss.item(), out.logits.float()


def check_weights(model: torch.nn.Module, name: str) -> None:
    wrong = {str(p.dtype) for p in model.parameters() if p.dtype != torch.float32}
    assert not wrong, f"{name} loaded {wrong} weights; both sides must train fp32 weights"


# --- throughput: one process, interleaved --------------------------------------------------------------------


def bench_precision(args, ckpt: Path, precision: str) -> dict:
    total = args.warmup + args.steps
    data = RandomBlocks(args.batch * total, args.seq, vocab_size(ckpt))
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:  # the Trainer's output_dir (unused)
        sides = {
            "gpt2kit": Ours(ckpt, data, args, precision, total, tmp),
            "transformers": Plain(ckpt, data, args, precision, total),
        }
        if args.compile:  # the first (warm-up) step pays the compilation
            sides["gpt2kit+compile"] = Ours(ckpt, data, args, precision, total, tmp, compile=True)
            sides["transformers+compile"] = Plain(ckpt, data, args, precision, total, compile=True)
        for name, side in sides.items():
            check_weights(side.model, name)
        first = torch.stack([data[i]["input_ids"] for i in order_of_batches(data, args.batch, 1)[0]])
        evals = {
            name: eval_forward(sides[name].model, first, precision) for name in ("gpt2kit", "transformers")
        }
        eval_losses = {name: loss for name, (loss, _) in evals.items()}
        diff = abs(eval_losses["gpt2kit"] - eval_losses["transformers"])
        # Random weights give near-uniform predictions, so the loss alone is a weak check (any GPT-2 scores
        # about ln(vocab)); the logits are compared too.
        logit_diff = (evals["gpt2kit"][1] - evals["transformers"][1]).abs().max().item()
        del evals
        tol = 1e-3 if precision == "fp32" else args.bf16_tol
        print(
            f"[{precision}] eval-mode loss on the first batch: gpt2kit {eval_losses['gpt2kit']:.6f}, "
            f"transformers {eval_losses['transformers']:.6f}, |diff| {diff:.2e} (tolerance {tol:g}); "
            f"max |logit diff| {logit_diff:.2e}",
            flush=True,
        )
        assert diff <= tol, f"{precision}: the two models disagree on the same weights: |diff| {diff:.2e}"
        if precision == "fp32":
            assert logit_diff <= 1e-3, f"fp32 logits differ on the same weights: {logit_diff:.2e}"

        names = sides_of(args)
        train_losses: dict[str, list[float]] = {n: [] for n in names}
        for w in range(args.warmup):
            for name in names if w % 2 == 0 else names[::-1]:
                train_losses[name].append(sides[name].step()[0])
        print(
            f"[{precision}] first training-step loss (dropout on, same batch): "
            + ", ".join(f"{n} {train_losses[n][0]:.6f}" for n in names),
            flush=True,
        )
        times: dict[str, list[float]] = {n: [] for n in names}
        tokens: dict[str, int] = {}
        for i in range(args.steps):
            for name in names if i % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                loss, tokens[name] = sides[name].step()
                times[name].append(time.perf_counter() - t0)
                train_losses[name].append(loss)
        for name in names:
            assert sides[name].seen == sides["transformers"].seen, f"{name} trained on other batches"
        attn = sides["transformers"].attn_implementation
        del sides

    def ratios_of(name: str, over: str = "transformers") -> list[float]:
        return [t_hf / t_ours for t_ours, t_hf in zip(times[name], times[over])]

    ratios = ratios_of("gpt2kit")
    result: dict = {
        "precision": precision,
        "transformers_attn_implementation": attn,
        "eval_loss": eval_losses,
        "eval_max_logit_diff": logit_diff,
        "train_losses": {n: [round(v, 6) for v in ls] for n, ls in train_losses.items()},
        "ratio_ours_over_transformers": statistics.median(ratios),
        "ratio_reps": [round(r, 3) for r in ratios],
        "sides": {},
    }
    if args.compile:
        compiled = ratios_of("gpt2kit+compile")
        result["ratio_compiled_over_transformers"] = statistics.median(compiled)
        result["ratio_compiled_reps"] = [round(r, 3) for r in compiled]
        # the target: gpt2kit (as it runs by default, and compiled) against transformers under compile
        for name in ("gpt2kit", "gpt2kit+compile"):
            vs = ratios_of(name, "transformers+compile")
            result[f"ratio_{name}_over_transformers+compile"] = statistics.median(vs)
            result[f"ratio_{name}_over_transformers+compile_reps"] = [round(r, 3) for r in vs]
    for name in names:
        t = statistics.median(times[name])
        result["sides"][name] = {
            "tok_s": tokens[name] / t,
            "ms_per_step": 1000 * t,
            "ms_per_step_reps": [round(1000 * v, 1) for v in times[name]],
        }
    return result


# --- peak memory: one fresh process per side and precision ---------------------------------------------------


def child(args) -> None:
    """Runs in a fresh process: one side, one precision, warm-up + 1 step; prints a JSON line."""
    ckpt = checkpoint(args.config)
    total = args.warmup + 1
    data = RandomBlocks(args.batch * total, args.seq, vocab_size(ckpt))
    stamps: list[float] = []
    out: dict = {"side": args.child, "precision": args.precisions}
    if args.child.startswith("gpt2kit"):
        import gpt2kit
        from gpt2kit.training import Trainer

        model = gpt2kit.GPT2LMHeadModel.from_pretrained(ckpt, dtype=torch.float32)
        out["rss_after_load_mb"] = current_rss_mb()

        def on_event(trainer, event: str, info: dict) -> None:
            if event == "train_begin":
                stamps.append(time.perf_counter())
            elif event == "step_end":
                stamps.append(time.perf_counter())
                if info["step"] == total:  # the last step; fit() saves the final model after this
                    out["peak_rss_mb"] = peak_rss_mb()

        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            cfg = training_config(args, args.precisions, total, tmp, args.child == "gpt2kit+compile")
            Trainer(model, data, None, cfg, callbacks=[on_event]).fit()
    else:
        side = Plain(ckpt, data, args, args.precisions, total, compile=args.child == "transformers+compile")
        out["rss_after_load_mb"] = current_rss_mb()
        stamps.append(time.perf_counter())
        for _ in range(total):
            side.step()
            stamps.append(time.perf_counter())
        out["peak_rss_mb"] = peak_rss_mb()
    step_s = stamps[-1] - stamps[args.warmup]  # the step(s) after the warm-up
    out["alone_tok_s"] = args.batch * args.seq * (total - args.warmup) / step_s
    print(json.dumps(out), flush=True)


def bench_memory(args, precision: str) -> dict[str, dict]:
    result = {}
    for name in sides_of(args):
        cmd = [sys.executable, __file__, "--child", name, "--precisions", precision, "--config", args.config]
        cmd += ["--warmup", str(args.warmup), "--batch", str(args.batch), "--seq", str(args.seq)]
        cmd += ["--threads", str(torch.get_num_threads())]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {name}/{precision} failed:\n{proc.stderr[-4000:]}")
        result[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- report --------------------------------------------------------------------------------------------------


def table(report: dict) -> str:
    lines = [
        f"{report['date']}, config {report['config']}, batch {report['batch']} x {report['seq']}, "
        f"torch {report['torch']}, transformers {report['transformers']}, {report['threads']} threads, "
        f"{report['steps']} timed steps after {report['warmup']} warm-up",
        f"start: {report['uptime_start']}",
        f"end:   {report['uptime_end']}",
        "",
        "| side | precision | tokens/s | ms/step (reps) | peak RSS MB | RSS after load MB | alone tok/s "
        "| ours/transformers tok/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        for name in [n for n in SIDES if n in r["sides"]]:
            s = r["sides"][name]
            mem = r.get("memory", {}).get(name, {})
            ratio = ""
            if name == "gpt2kit":
                ratio = f"{r['ratio_ours_over_transformers']:.2f}x ({', '.join(map(str, r['ratio_reps']))})"
            elif name == "gpt2kit+compile":
                reps = ", ".join(map(str, r["ratio_compiled_reps"]))
                ratio = f"{r['ratio_compiled_over_transformers']:.2f}x ({reps})"
            if name.startswith("gpt2kit") and f"ratio_{name}_over_transformers+compile" in r:
                reps = ", ".join(map(str, r[f"ratio_{name}_over_transformers+compile_reps"]))
                ratio += f"; {r[f'ratio_{name}_over_transformers+compile']:.2f}x over transformers+compile ({reps})"

            def fmt(key, spec, mem=mem):
                return format(mem[key], spec) if key in mem else "-"

            reps = ", ".join(f"{v:.0f}" for v in s["ms_per_step_reps"])
            lines.append(
                f"| {name} | {r['precision']} | {s['tok_s']:.0f} | {s['ms_per_step']:.0f} ({reps}) | "
                f"{fmt('peak_rss_mb', '.0f')} | {fmt('rss_after_load_mb', '.0f')} | "
                f"{fmt('alone_tok_s', '.0f')} | {ratio} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=("124m", "small"), default="124m")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side and precision")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per side first (at least 1)")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--bf16-tol", type=float, default=1e-3, help="eval-loss agreement under bf16 autocast")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="add gpt2kit+compile (TrainingConfig(compile=True)) and transformers+compile (torch.compile(model))",
    )
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    precisions = args.precisions.split(",")
    if unknown := set(precisions) - {"fp32", "bf16"}:
        ap.error(f"unknown precisions {sorted(unknown)}")
    import transformers

    ckpt = checkpoint(args.config)
    report: dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": args.config,
        "checkpoint": str(ckpt),
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "uptime_start": uptime(),
        "results": [],
    }
    print(report["uptime_start"], flush=True)
    for precision in precisions:
        row = bench_precision(args, ckpt, precision)
        if not args.no_memory:
            row["memory"] = bench_memory(args, precision)
        report["results"].append(row)
        print(json.dumps(row), flush=True)
    report["uptime_end"] = uptime()
    print(report["uptime_end"], flush=True)
    print(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
