"""TrainingConfig: every knob of a training run, as plain data that round-trips through JSON."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpt2kit.model.lora import LoraConfig

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainingConfig:
    """What `Trainer.fit()` does. Defaults follow transformers' Trainer where it has an equivalent.

    Counting: a *micro-batch* is `batch_size` examples on one process; an optimizer *step* consumes
    `grad_accum` micro-batches on each of the `world_size` processes, so the global batch is
    batch_size x grad_accum x world_size examples. `max_steps`, `eval_every`, `save_every` and
    `log_every` count optimizer steps.
    """

    output_dir: str = "gpt2kit-out"
    epochs: float = 1.0  # ignored when max_steps is set
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.0  # applied only to weights with >= 2 dims (not biases, not LayerNorm)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0: a fraction of the total steps
    schedule: str = "linear"  # after warmup: linear or cosine decay to min_lr_ratio * lr, or constant
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0  # None or 0 disables clipping
    precision: str = "fp32"  # "bf16": bf16 autocast (weights and optimizer state stay fp32)
    gradient_checkpointing: bool = False
    # torch.compile the training forward and backward: the first step pays the compilation (~40 s for the
    # 124M model on 2 CPU cores), later steps fuse the elementwise work (on 124M, 1.3-1.4x eager's speed in
    # bf16; benchmarks/RESULTS.md). For fp32 on AMD CPUs eager is faster (3.3 s against 4.6-4.8 s a 124M
    # step in separate runs): compiled code uses torch's MKL products, not gpt2kit's oneDNN route
    # (model/matmul.py). Evaluation stays eager.
    compile: bool = False
    # Train a LoRA adapter instead of the whole model: a gpt2kit.LoraConfig (or its dict). Only the adapter is
    # trained, held in AdamW's state and written (checkpoints and output_dir: peft's adapter format).
    lora: LoraConfig | None = None
    eval_every: int | None = None  # None: at the end of each epoch (and at the end)
    eval_max_batches: int | None = None
    eval_batch_size: int | None = None  # default: batch_size
    early_stopping_patience: int | None = None  # stop after this many evaluations without improvement
    metric_for_best: str = "loss"  # "loss" (lower is better) or e.g. "accuracy", "f1" (higher is better)
    save_every: int | None = None  # checkpoint every N steps (and on Ctrl-C); None: only at the end
    keep_checkpoints: int = 2
    save_best: bool = True  # save the best evaluated model to output_dir/best
    log_every: int = 10
    seed: int = 42
    resume: bool = True  # continue from the newest checkpoint in output_dir/checkpoints, if any
    progress: bool = True  # a bar on a terminal, and a line of metrics every log_every steps
    plot: bool = True  # write output_dir/loss.png (needs matplotlib: the `plot` extra)
    # Where the logged numbers go, as transformers' report_to: "jsonl" (output_dir/metrics.jsonl),
    # "tensorboard", "wandb", "mlflow" (optional extras), "all" (jsonl + the installed ones) or "none"; a
    # list or a comma-separated string. training/reporting.py.
    report_to: list[str] = field(default_factory=lambda: ["jsonl"])
    run_name: str | None = None  # the W&B / MLflow run's name (default: output_dir's folder name)
    num_workers: int = 0  # DataLoader worker processes
    extra: dict[str, Any] = field(default_factory=dict)  # recorded with the run, unused by the Trainer

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives a list
        checks = [
            ("epochs", self.epochs > 0, "a positive number of passes over the data"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("grad_accum", self.grad_accum >= 1, "at least 1"),
            ("lr", self.lr > 0, "positive, e.g. 5e-5 for fine-tuning, 1e-3 from scratch"),
            ("weight_decay", self.weight_decay >= 0, "0 or more"),
            ("warmup_steps", self.warmup_steps >= 0, "0 or more"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, "at least 1"),
            ("log_every", self.log_every >= 1, "at least 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(
                    f"TrainingConfig.{name}={getattr(self, name)!r} is invalid: it must be {want}"
                )
        for name in ("max_steps", "eval_every", "save_every", "early_stopping_patience", "eval_max_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TrainingConfig.{name}={value!r} is invalid: use None (off) or at least 1")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"TrainingConfig.schedule={self.schedule!r} is unknown; choose one of {SCHEDULES}"
            )
        from gpt2kit.training.reporting import normalize_report_to

        self.report_to = normalize_report_to(self.report_to)
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"TrainingConfig.precision={self.precision!r} is unknown; choose one of {PRECISIONS}"
            )
        if self.lora is not None:
            from gpt2kit.model.lora import LoraConfig

            if isinstance(self.lora, dict):  # from JSON
                self.lora = LoraConfig.from_dict(self.lora)
            elif not isinstance(self.lora, LoraConfig):
                raise TypeError(
                    f"TrainingConfig.lora must be a gpt2kit.LoraConfig, its dict, or None; got "
                    f"{type(self.lora).__name__}"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainingConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        from gpt2kit.data import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
