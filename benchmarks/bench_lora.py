"""Full fine-tuning vs LoRA with gpt2kit's Trainer on the 124M GPT-2 configuration (random weights).

Both sides start from the same checkpoint (the random 124M one of bench_model.py) and train on the same
blocks in the same order (the Trainer's data order, seed 42): --seq-token blocks of this repository's own
documentation (README, CHANGELOG, docs/*.md) tokenized with GPT-2's vocabulary, a text a model can learn
from, unlike random ids. The parent tokenizes once and hands both sides the same ids (a .npy file): the docs
may change while the sides run. Each side runs in a fresh subprocess, one after the other:

    full   TrainingConfig(lr=--full-lr): every weight trained, fused AdamW over all 124M parameters
    lora   TrainingConfig(lr=--lora-lr, lora=LoraConfig(r=8, alpha=16, target_modules=["c_attn"])):
           peft's default target for GPT-2; the base weights frozen

Both: --batch blocks per step, constant schedule, no warmup, weight decay 0, clipping at 1.0, fp32, the
model's default dropout (0.1). Each side gets the learning rate usual for it (full fine-tuning 5e-5,
transformers' default; LoRA 5e-4, since its update starts at zero and is scaled by alpha / r); the loss
figures therefore compare the two recipes as users run them, not one learning rate.

Reported per side:
- trainable parameters (requires_grad, counted after the Trainer added the adapter);
- training state: bytes of the gradients and AdamW's state after the last step (exact, from the tensors:
  what LoRA saves by construction; the frozen weights are the same on both sides);
- peak RSS: VmHWM of /proc/self/status read at the end of the last step (before fit() saves the model),
  the process's own high-water mark since exec (imports, model load, activations and optimizer state
  included, nothing subtracted). tracemalloc is not used: it does not see torch's allocator;
- tokens/s over the steps after --warmup (a side alone on the machine, so noisy: see RESULTS.md);
- training loss of the first and last step, the mean of the last 5, and the evaluation loss on held-out
  blocks after the last step (the same blocks for both sides).

    python benchmarks/bench_lora.py [--steps 20] [--warmup 2] [--batch 2] [--seq 128] [--threads N]

The 124M configuration takes a few minutes on a 2-core CPU (most of it the full side's steps).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
SIDES = ("full", "lora")
N_EVAL = 8  # held-out blocks


def blocks(seq: int):
    """This repository's docs as GPT-2 token blocks: an (n, seq) int64 array."""
    import numpy as np

    from gpt2kit import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained("gpt2")
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    ids: list[int] = []
    for f in files:
        ids += tok.encode(f.read_text(encoding="utf-8")) + [tok.eos_token_id]
    n = len(ids) // seq
    return np.asarray(ids[: n * seq], dtype=np.int64).reshape(n, seq)


class Rows:
    def __init__(self, rows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def child(args) -> None:
    """One side in this fresh process; prints one JSON line."""
    import numpy as np
    import torch
    from bench_model import make_checkpoint

    from gpt2kit import GPT2LMHeadModel, LoraConfig
    from gpt2kit.training import Trainer, TrainingConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = torch.from_numpy(np.load(args.blocks, allow_pickle=False))
    train_rows, eval_rows = rows[:-N_EVAL], rows[-N_EVAL:]
    model = GPT2LMHeadModel.from_pretrained(make_checkpoint(), dtype=torch.float32)
    lora = LoraConfig(r=8, alpha=16, target_modules=["c_attn"]) if args.child == "lora" else None
    stamps: list[float] = []
    losses: list[float] = []
    out: dict = {"side": args.child, "lr": args.lora_lr if lora else args.full_lr}

    def on_event(trainer, event: str, info: dict) -> None:
        if event == "train_begin":
            stamps.append(time.perf_counter())
        elif event == "step_end":
            stamps.append(time.perf_counter())
            losses.append(info["loss"])
            if (
                info["step"] == args.steps
            ):  # the last step: weights, gradients' peak, optimizer state all live
                out["peak_rss_mb"] = peak_rss_mb()
                moments = [
                    t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t)
                ]
                out["optimizer_state_mb"] = sum(t.numel() * t.element_size() for t in moments) / 2**20
                # zero_grad has freed them by now; during a step they take the trained parameters' size
                trained = [p for p in trainer.model.parameters() if p.requires_grad]
                out["gradient_mb"] = sum(p.numel() * p.element_size() for p in trained) / 2**20

    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        cfg = TrainingConfig(
            output_dir=tmp, max_steps=args.steps, batch_size=args.batch, lr=out["lr"], schedule="constant",
            weight_decay=0.0, max_grad_norm=1.0, progress=False, plot=False, log_every=args.steps,
            save_best=False, seed=42, lora=lora,
        )  # fmt: skip
        trainer = Trainer(model, Rows(train_rows), None, cfg, callbacks=[on_event])
        out["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        out["total_params"] = model.num_parameters()
        trainer.fit()
        out["eval_loss"] = trainer.evaluate(Rows(eval_rows))["eval_loss"]
    timed = stamps[args.warmup + 1 :] if len(stamps) > args.warmup + 1 else stamps[1:]
    out["tokens_per_s"] = args.batch * args.seq * (len(timed) - 1) / (timed[-1] - timed[0])
    out["step_s"] = (timed[-1] - timed[0]) / (len(timed) - 1)
    out["loss_first"], out["loss_last"] = losses[0], losses[-1]
    out["loss_last5_mean"] = sum(losses[-5:]) / len(losses[-5:])
    out["train_blocks"], out["eval_blocks"] = len(train_rows), len(eval_rows)
    print(json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2, help="steps left out of tokens/s")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--full-lr", type=float, default=5e-5)
    p.add_argument("--lora-lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--blocks", help=argparse.SUPPRESS)  # the parent's token blocks (.npy)
    args = p.parse_args()
    if args.steps <= args.warmup + 1:
        p.error("--steps must exceed --warmup + 1 (tokens/s is timed after the warm-up)")
    if args.child:
        child(args)
        return
    import torch

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "steps": args.steps, "warmup": args.warmup, "batch": args.batch, "seq": args.seq,
        "uptime_start": uptime(), "sides": {},
    }  # fmt: skip
    import numpy as np

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        ids = Path(tmp) / "blocks.npy"
        np.save(ids, blocks(args.seq), allow_pickle=False)
        for side in SIDES:
            cmd = [sys.executable, __file__, "--child", side, "--blocks", str(ids)]
            for name in ("steps", "warmup", "batch", "seq", "full_lr", "lora_lr", "threads"):
                cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
            if proc.returncode != 0:
                raise SystemExit(f"side {side} failed:\n{proc.stderr[-4000:]}")
            report["sides"][side] = json.loads(proc.stdout.strip().splitlines()[-1])
    report["uptime_end"] = uptime()
    report["wall_s"] = time.perf_counter() - t0
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def table(r: dict) -> str:
    full, lora = r["sides"]["full"], r["sides"]["lora"]
    lines = [
        f"{r['date']}, random 124M GPT-2, {r['steps']} steps of {r['batch']} x {r['seq']} tokens "
        f"({full['train_blocks']} training blocks, {full['eval_blocks']} held out), torch {r['torch']}, "
        f"{r['threads']} threads, tokens/s after {r['warmup']} warm-up steps; wall {r['wall_s']:.0f} s",
        f"start: {r['uptime_start']}",
        f"end:   {r['uptime_end']}",
        "",
        "| side | lr | trainable params | grads + AdamW state MB | peak RSS MB | tokens/s | s/step "
        "| loss step 1 | loss last step | mean last 5 | eval loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in (("full fine-tuning", full), ("LoRA r=8 on c_attn", lora)):
        lines.append(
            f"| {name} | {s['lr']:g} | {s['trainable_params']:,} ({s['trainable_params'] / s['total_params']:.2%}) "
            f"| {s['gradient_mb'] + s['optimizer_state_mb']:.1f} | {s['peak_rss_mb']:.0f} | {s['tokens_per_s']:.0f} "
            f"| {s['step_s']:.2f} | {s['loss_first']:.3f} | {s['loss_last']:.3f} | {s['loss_last5_mean']:.3f} "
            f"| {s['eval_loss']:.3f} |"
        )
    lines.append(
        f"\nLoRA / full: tokens/s {lora['tokens_per_s'] / full['tokens_per_s']:.2f}x, peak RSS "
        f"{lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}x, trainable params "
        f"{lora['trainable_params'] / full['trainable_params']:.4f}x"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
