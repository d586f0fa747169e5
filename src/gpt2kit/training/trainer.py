"""The training loop: `Trainer(model, train_data, eval_data, config).fit()`.

One optimizer step, top to bottom: each process takes `grad_accum` micro-batches of its data shard, runs
forward + backward under optional bf16 autocast (DDP syncs gradients on the last one), clips the global
gradient norm, steps AdamW and the learning-rate schedule. Around it: evaluation every N steps (loss,
perplexity, token accuracy; accuracy and F1 for classification), early stopping, checkpoints that resume
exactly, and logs (a progress bar, output_dir/loss.png, and the report_to backends: output_dir/metrics.jsonl,
TensorBoard, W&B, MLflow; training/reporting.py).

Exact resume: the data order of epoch e is a permutation seeded by (seed, e), so a step number alone says
which examples come next; a checkpoint stores the model, AdamW's state, the schedule position and every RNG
(taken at the start of the step, so a Ctrl-C mid-step saves a state that replays that step identically).
Nothing a resume reads runs pickled code: the RNG state is safetensors + JSON, and AdamW's state and the
schedule are read by torch's weights-only unpickler.

Distributed: under torchrun (RANK / WORLD_SIZE set) the model is wrapped in DDP (gloo on CPU, NCCL on
CUDA). Micro-batch k of the global order goes to rank k % world, so N processes with grad_accum A see the
same examples per step as one process with grad_accum N*A. Only rank 0 writes files.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import importlib
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from gpt2kit.data import atomic_write_text
from gpt2kit.training.config import TrainingConfig

logger = logging.getLogger(__name__)

Callback = Callable[["Trainer", str, dict], None]

_STATE_FILE = "trainer_state.json"
_RNG_FILE = "rng-{rank}.safetensors"
_LEGACY_RNG_FILE = "rng-{rank}.pt"  # a pickle, written by gpt2kit before the RNG state moved to safetensors


@dataclass
class TrainResult:
    """What fit() did, as plain data."""

    steps: int
    epochs: float
    train_loss: float | None  # mean loss of the last logged window
    eval_metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    best_metric: float | None = None
    stopped_early: bool = False
    output_dir: str = ""
    tokens_per_second: float | None = None


# --- processes -------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # we called init_process_group, so we destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self, barrier_timeout: float | None = None) -> None:
        """Destroy the process group this process created, once every rank is done with it (barrier_timeout:
        seconds to wait for them at most, then destroy anyway; gloo's monitored barrier, no barrier on
        other backends, whose exit needs none). Left to the
        interpreter's exit, or destroyed while the other rank still talked to it, gloo's threads could abort
        the process (SIGABRT, "terminate called without an active exception") after its work was saved: a
        torchrun test failed 1 run in 8-12 that way on the 2-core VM. (Why: a finished barrier's work is freed
        on gloo's worker thread and frees the collectives it waited for, whose tensors are Python objects;
        during the interpreter's shutdown that thread cannot take the GIL, and exits mid-destructor.)"""
        if self.owns_group and dist.is_initialized():
            if barrier_timeout is None:
                dist.barrier()
            elif dist.get_backend() == "gloo":
                try:
                    dist.monitored_barrier(timeout=datetime.timedelta(seconds=barrier_timeout))
                except RuntimeError as e:  # a rank still busy, or gone: destroy this one's group anyway
                    logger.warning("closing the process group without every rank: %s", str(e).splitlines()[0])
            dist.destroy_process_group()
            self.owns_group = False

    def mean(self, values: list[float]) -> list[float]:
        """Averages over processes (for logging)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            t = t.to(self.device)
            dist.all_reduce(t)
        return t


# Multi-process trainers, closed at the interpreter's exit (Trainer.close) unless their last call raised or the
# interpreter is exiting on an uncaught exception (sys.last_value is set before atexit runs).
_CLOSE_AT_EXIT: weakref.WeakSet[Trainer] = weakref.WeakSet()
_CREATED_GROUP = False  # whether _setup_dist created the default process group in this process


@atexit.register
def _close_trainers_at_exit() -> None:
    if getattr(sys, "last_value", None) is not None:
        return
    trainers = list(_CLOSE_AT_EXIT)
    for trainer in trainers:
        if trainer._returned and not trainer._closed:
            try:
                trainer.close(barrier_timeout=60.0)
            except Exception as e:  # (the next trainer is still closed)
                logger.warning("closing a trainer's process group at exit failed: %s", e)
    # A group gpt2kit created whose owner is gone (the trainer that made it was collected, and a later one
    # used it): nobody else destroys it.
    if _CREATED_GROUP and dist.is_initialized() and all(t._returned for t in trainers):
        try:
            _Dist(owns_group=True).close(barrier_timeout=60.0)
            gc.collect()
        except Exception as e:
            logger.warning("closing the process group at exit failed: %s", e)


def _setup_dist(device: str | torch.device | None) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine; use device 'cpu'")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    d = _Dist(rank=rank, world=world, local_rank=local_rank, device=device)
    if world > 1:
        # torch._dynamo imported for the first time after the group exists (DDP's first forward imports it)
        # kept a reference to the group: destroy_process_group at exit then left gloo's threads running into
        # the interpreter's shutdown (tests/test_trainer.py's DDP test saw them), the abort _Dist.close
        # prevents. Imported before the group, it keeps none.
        importlib.import_module("torch._dynamo")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        d.owns_group = True
        global _CREATED_GROUP
        _CREATED_GROUP = True
    return d


# --- the data order ----------------------------------------------------------------------------------------


def epoch_micro_batches(n: int, epoch: int, seed: int, micro: int, world: int, rank: int) -> list[list[int]]:
    """This rank's micro-batches (lists of example indices) for one epoch, in order.

    The epoch's order is a permutation seeded by (seed, epoch). With several processes it is padded by
    wrapping around to a multiple of micro * world, as DistributedSampler does, so every rank gets the
    same number of equal micro-batches and none waits forever in an all-reduce.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if world > 1 and len(order) % (micro * world):
        need = micro * world - len(order) % (micro * world)
        order += (order * (need // max(1, len(order)) + 1))[:need]
    chunks = [order[i : i + micro] for i in range(0, len(order), micro)]
    return chunks[rank::world]


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """The multiplier of the base lr for optimizer step `step` (0-based): transformers' linear warmup from
    0, then linear or cosine decay towards min_ratio at the last step, or constant."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(1.0, progress)
    decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay only on weights with >= 2 dims (matrices, embeddings), as nanoGPT does;
    biases and LayerNorm parameters are not decayed. Tied parameters appear once."""
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a tied tensor once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: torch.nn.Module, cfg: TrainingConfig, device: torch.device
) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    kwargs = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    # The fused kernel does the whole update in one pass; torch has it for CPU and CUDA since 2.4.
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        logger.info("fused AdamW unavailable on %s (%s); using the foreach implementation", device, e)
        return torch.optim.AdamW(groups, **kwargs)


# --- metrics -----------------------------------------------------------------------------------------------


class _Metrics:
    """Running sums for evaluation: token-weighted loss and accuracy for LM, a confusion matrix for
    classification. Sums (not means) so processes can all-reduce them."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.count = 0
        self.correct = 0
        self.confusion: torch.Tensor | None = None

    def add_lm(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits[:, :-1].float()
        target = labels[:, 1:]
        keep = target != -100
        if not keep.any():
            return
        lg, tg = logits[keep], target[keep]
        self.loss_sum += F.cross_entropy(lg, tg, reduction="sum").item()
        self.correct += (lg.argmax(-1) == tg).sum().item()
        self.count += int(keep.sum())

    def add_cls(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        pred = logits.argmax(-1)
        self.correct += (pred == labels).sum().item()
        self.count += labels.numel()
        k = logits.shape[-1]
        if self.confusion is None:
            self.confusion = torch.zeros(k, k, dtype=torch.float64)
        idx = (labels.cpu() * k + pred.cpu()).long()
        self.confusion += torch.bincount(idx, minlength=k * k).reshape(k, k).double()

    def result(self, d: _Dist) -> dict[str, float]:
        sums = d.sum(torch.tensor([self.loss_sum, self.count, self.correct], dtype=torch.float64))
        loss_sum, count, correct = sums.tolist()
        if count == 0:
            return {}
        loss = loss_sum / count
        out = {"eval_loss": loss, "eval_accuracy": correct / count}
        if self.confusion is None:
            out["eval_perplexity"] = math.exp(min(loss, 700.0))
            out["eval_tokens"] = int(count)
        else:
            cm = d.sum(self.confusion.clone())
            tp = cm.diag()
            precision = tp / cm.sum(0).clamp(min=1)
            recall = tp / cm.sum(1).clamp(min=1)
            f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
            out["eval_f1"] = (
                f1[1].item() if cm.shape[0] == 2 else f1.mean().item()
            )  # binary: the positive class
            out["eval_f1_macro"] = f1.mean().item()
            out["eval_examples"] = int(count)
        return out


def _higher_is_better(metric: str) -> bool:
    return metric not in ("loss", "perplexity")


# --- the Trainer -------------------------------------------------------------------------------------------


class Trainer:
    """Fine-tune or train a GPT-2 model, fit()-style.

    >>> trainer = Trainer(model, train_data, eval_data, TrainingConfig(output_dir="out", epochs=3))  # doctest: +SKIP
    >>> result = trainer.fit()        # out/ is a save_pretrained folder transformers loads  # doctest: +SKIP

    `train_data` / `eval_data`: map-style datasets whose items are dicts of tensors (input_ids, labels, ...);
    a dataset with a `collate(items)` method (padding) uses it, else items are stacked. The datasets of
    gpt2kit.training.data (LMBlocks, LMRows, ClassificationRows) fit. A classification model (logits of
    shape (B, num_labels)) is evaluated with accuracy and F1; a language model with loss, perplexity and
    next-token accuracy.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_data: Dataset,
        eval_data: Dataset | None = None,
        config: TrainingConfig | None = None,
        *,
        tokenizer: Any = None,
        device: str | torch.device | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = cfg = config or TrainingConfig()
        self.model = model
        self.train_data = train_data
        self.eval_data = eval_data
        self.tokenizer = tokenizer
        self.callbacks = list(callbacks)
        if len(train_data) == 0:
            raise ValueError("the training data is empty: nothing to train on")
        if eval_data is not None and len(eval_data) == 0:
            raise ValueError("the evaluation data is empty; pass eval_data=None to train without evaluation")
        wrong = {str(p.dtype) for p in model.parameters() if p.dtype != torch.float32}
        if wrong:
            raise ValueError(
                f"the model's weights are {', '.join(sorted(wrong))}; train with float32 weights "
                "(load with dtype=torch.float32) and precision='bf16' for bf16 autocast"
            )
        if cfg.lora is not None:  # only the adapter trains; save_pretrained then writes it alone
            from gpt2kit.model import lora

            if lora.task_type(model) != "CAUSAL_LM":
                raise ValueError(
                    f"TrainingConfig.lora adapts a language model (GPT2LMHeadModel); a {type(model).__name__}'s "
                    "head would stay untrained under LoRA. Fine-tune it without lora"
                )
            at = next(model.parameters()).device
            # The adapter's initial A follows from the seed, as the data order does.
            with torch.random.fork_rng(devices=[at] if at.type == "cuda" else []):
                torch.manual_seed(cfg.seed)
                lora.add_adapter(model, cfg.lora)
        self.dist = _setup_dist(device)
        if cfg.precision == "bf16" and self.dist.device.type == "cpu":
            from gpt2kit.model.kernels import warn_if_slow_bf16

            warn_if_slow_bf16("bf16 autocast")
        self.out = Path(cfg.output_dir)
        self.model.to(self.dist.device)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.optimizer = make_optimizer(model, cfg, self.dist.device)
        # DDP wraps the model for forward/backward; checkpoints and saves use the plain module.
        self.ddp: torch.nn.Module = model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(model, device_ids=ids)
        # What a training step calls: the (DDP-wrapped) model, compiled when asked. dynamic=False: a batch of
        # another shape (an epoch's last) gets its own static graph. By default dynamo would recompile the
        # model's code for any shape after that one as a dynamic-shape graph, whose kernels round differently:
        # a run and its resume in a new process (or after other compiled models in this one) would then
        # compute the same step with different graphs, and the resume would no longer be exact.
        self._step_model: Any = torch.compile(self.ddp, dynamic=False) if cfg.compile else self.ddp
        self._depth, self._returned, self._closed = 0, True, False
        self._vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
        d = self.dist
        self.micro_per_epoch = len(
            epoch_micro_batches(len(train_data), 0, cfg.seed, cfg.batch_size, d.world, 0)
        )
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        warmup = cfg.warmup_steps or int(cfg.warmup_ratio * self.total_steps)
        self.warmup = warmup
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, self.total_steps, warmup, cfg.schedule, cfg.min_lr_ratio),
        )
        self.step = 0  # optimizer steps done
        self.best_metric: float | None = None
        self.bad_evals = 0  # evaluations since the best one
        self.history: list[dict[str, Any]] = []
        self._step_rng: dict[str, Any] | None = None
        self._in_step = False
        self._last_saved_step = -1
        from gpt2kit.training.reporting import Reporters, run_params

        # Where the logs go (report_to); a missing backend package is named here, before any training.
        self.reports = Reporters(
            cfg.report_to, self.out, run_name=cfg.run_name, params=run_params(cfg, model)
        )
        if self.dist.world > 1:  # (last: a trainer whose construction raised is not closed at exit)
            _CLOSE_AT_EXIT.add(self)

    # --- public --------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _across_processes(self) -> Iterator[None]:
        """Brackets fit() and evaluate(): whether the last one returned (then closing at exit is safe) and a
        clear error after close()."""
        if self.dist.world > 1 and (self._closed or not dist.is_initialized()):
            raise RuntimeError(
                "this Trainer was closed or its process group destroyed (Trainer.close() or "
                "destroy_process_group()); make a new Trainer to train or evaluate across processes again"
            )
        self._depth += 1
        self._returned = False
        try:
            yield
        finally:
            self._depth -= 1
        self._returned = self._depth == 0  # not reached when the call raised

    def close(self, barrier_timeout: float | None = None) -> None:
        """Free what this trainer holds across processes: its DDP wrapper, and the process group if the
        trainer created it (after a barrier, so every rank calls this). gpt2kit calls it at the interpreter's
        exit for a multi-process trainer whose last fit()/evaluate() returned, with the barrier bounded to
        60 s (gloo; none on other backends): a group left to the interpreter's shutdown can abort the process
        (see _Dist.close), and a rank may still be busy with work of its own (rank 0 generating, say). After
        a call that raised it is not called, as the other ranks may be stuck in a collective."""
        self._closed = True
        if self.ddp is not self.model:
            self.ddp = self._step_model = self.model
        self.dist.close(barrier_timeout)
        # The DDP wrapper and its reducer hold the group: once they are freed, the group's destructor joins
        # gloo's threads, while Python is still fully alive.
        gc.collect()

    def fit(self) -> TrainResult:
        """Train until max_steps / epochs are done or early stopping says stop; save the final model."""
        with self._across_processes():
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg, d = self.config, self.dist
        torch.manual_seed(cfg.seed + d.rank)
        random.seed(cfg.seed + d.rank)
        np.random.seed((cfg.seed + d.rank) % 2**32)
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
        d.barrier()
        resumed = bool(cfg.resume and self._resume_latest())
        if d.main:  # a fresh run starts fresh logs; a resumed one is logged from the checkpoint's step on
            self.reports.start(self.step if resumed else None, self.history)
        self._emit("train_begin", {"total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch})
        bar = self._progress_bar()
        window_loss, window_steps, window_tokens, t_window = 0.0, 0, 0, time.perf_counter()
        all_tokens, t_start = 0, time.perf_counter()
        last_loss: float | None = None
        stopped_early = False
        eval_metrics: dict[str, float] = {}
        failed = True
        try:
            for micro_batches in self._steps():
                self._step_rng = _rng_state()
                self._in_step = True
                loss, tokens, grad_norm = self._train_step(micro_batches)
                self.step += 1
                self._in_step = False
                window_loss += loss
                window_steps += 1
                window_tokens += tokens
                all_tokens += tokens
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - t_window
                    mean_loss, tok = d.mean([window_loss / window_steps, float(window_tokens)])
                    last_loss = mean_loss
                    self._log(
                        {
                            "step": self.step,
                            "epoch": round(self.step / self.steps_per_epoch, 4),
                            "loss": mean_loss,
                            "lr": self.scheduler.get_last_lr()[0],
                            "grad_norm": grad_norm,
                            "tokens_per_s": tok * d.world / max(elapsed, 1e-9),
                        }
                    )
                    window_loss, window_steps, window_tokens, t_window = 0.0, 0, 0, time.perf_counter()
                end_of_epoch = self.step % self.steps_per_epoch == 0
                due = (cfg.eval_every and self.step % cfg.eval_every == 0) or (
                    cfg.eval_every is None and end_of_epoch
                )
                if self.eval_data is not None and (due or self.step == self.total_steps):
                    eval_metrics = self.evaluate()
                    self._log(
                        {
                            "step": self.step,
                            "epoch": round(self.step / self.steps_per_epoch, 4),
                            **eval_metrics,
                        }
                    )
                    if self._after_eval(eval_metrics):
                        stopped_early = True
                        logger.info("early stopping at step %d", self.step)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
                self._emit("step_end", {"step": self.step, "loss": loss})
                if stopped_early:
                    break
            failed = False
        except KeyboardInterrupt:
            # Never lose finished work: a checkpoint of the last completed step, then stop.
            if self.step > 0 and self.step != self._last_saved_step:
                self.save_checkpoint(rng=self._step_rng_after_interrupt())
            if bar is not None:
                bar.close()
            raise
        finally:
            # Also when a callback stops the run (a pruned trial of hyperparameter_search).
            if bar is not None:
                bar.close()
            if d.main:
                self.reports.close(failed=failed)
        self.save_final()
        self._emit("train_end", {"step": self.step})
        elapsed = time.perf_counter() - t_start
        return TrainResult(
            steps=self.step,
            epochs=self.step / self.steps_per_epoch,
            train_loss=last_loss,
            eval_metrics=eval_metrics,
            best_metric=self.best_metric,
            stopped_early=stopped_early,
            output_dir=str(self.out),
            tokens_per_second=(all_tokens * d.world / elapsed) if all_tokens else None,
        )

    def evaluate(self, data: Dataset | None = None) -> dict[str, float]:
        """Loss, perplexity and next-token accuracy (LM), or loss, accuracy and F1 (classification)."""
        if data is None and self.eval_data is None:  # (before any collective: no rank is left waiting)
            raise ValueError("no evaluation data: pass eval_data to Trainer or data to evaluate()")
        with self._across_processes():
            return self._evaluate(data)

    @torch.no_grad()
    def _evaluate(self, data: Dataset | None) -> dict[str, float]:
        data = data if data is not None else self.eval_data  # (evaluate() checked that one is there)
        cfg, d = self.config, self.dist
        was_training = self.model.training
        self.model.eval()
        size = cfg.eval_batch_size or cfg.batch_size
        # Each process evaluates a disjoint, unpadded share; the sums are all-reduced.
        indices = list(range(d.rank, len(data), d.world))
        batches = [indices[i : i + size] for i in range(0, len(indices), size)]
        if cfg.eval_max_batches:
            batches = batches[: cfg.eval_max_batches]
        m = _Metrics()
        for batch in self._loader(data, batches):
            labels = batch.pop("labels", None)
            with self._autocast():
                out = self.model(**batch)
            logits = out.logits if hasattr(out, "logits") else out[0]
            if logits.dim() == 2:
                m.add_cls(logits, labels)
            else:
                m.add_lm(logits, labels if labels is not None else batch["input_ids"])
        self.model.train(was_training)
        return m.result(d)

    def save_checkpoint(self, rng: dict[str, Any] | None = None) -> Path:
        """output_dir/checkpoints/step-N: model, optimizer, schedule, RNG and data position. Atomic."""
        d = self.dist
        final = self.out / "checkpoints" / f"step-{self.step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if d.main:
            shutil.rmtree(tmp, ignore_errors=True)
            with _removed_on_failure(tmp, final):
                tmp.mkdir(parents=True)
                self.model.save_pretrained(tmp)
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                state = {
                    "step": self.step,
                    "best_metric": self.best_metric,
                    "bad_evals": self.bad_evals,
                    "history": self.history,
                    "world_size": d.world,
                    "config": self.config.to_dict(),
                }
                atomic_write_text(tmp / _STATE_FILE, json.dumps(state, indent=1) + "\n")
        d.barrier()
        # Every rank's RNG: dropout streams differ per rank.
        with _removed_on_failure(tmp, final):
            _save_rng(rng or _rng_state(), tmp / _RNG_FILE.format(rank=d.rank))
        d.barrier()
        if d.main:
            with _removed_on_failure(tmp, final):
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)  # the checkpoint appears whole or not at all
            self._prune_checkpoints()
        d.barrier()
        self._last_saved_step = self.step
        self._emit("save", {"step": self.step, "path": str(final)})
        return final

    def save_final(self) -> None:
        """The trained model as a save_pretrained folder in output_dir (with the tokenizer, if given)."""
        if self.dist.main:
            # The writers put each file under a temporary name (.NAME.tmp) first; a failed save removes them.
            with _removed_on_failure(None, self.out, stray=self.out):
                self.model.save_pretrained(self.out)
                if self.tokenizer is not None:
                    self.tokenizer.save_pretrained(self.out)
                self.config.save(self.out / "training_config.json")
            self._plot()
        self.dist.barrier()

    def hyperparameter_search(
        self,
        hp_space: Callable[[Any], dict[str, Any]],
        n_trials: int = 20,
        direction: str = "minimize",
        backend: str = "optuna",
        compute_objective: Callable[[dict[str, float]], float] | None = None,
        **kwargs: Any,
    ):
        """Optuna search over TrainingConfig and model config fields, as transformers' method: each trial
        trains a copy of this Trainer's model in output_dir/trials/N (this model stays untouched), bad trials
        are pruned from their eval loss, and the best trial is copied to output_dir/best-trial. Returns a
        `BestRun`; training/tune.py says the rest.

        >>> best = trainer.hyperparameter_search(lambda t: {"lr": t.suggest_float("lr", 1e-5, 1e-3, log=True)},
        ...                                      n_trials=10)  # doctest: +SKIP
        """
        from gpt2kit.training.tune import hyperparameter_search

        return hyperparameter_search(
            self, hp_space, n_trials, direction, backend, compute_objective, **kwargs
        )

    # --- the step ------------------------------------------------------------------------------------------

    def _steps(self) -> Iterator[list[list[int]]]:
        """The micro-batches of each remaining optimizer step, starting after self.step."""
        cfg, d = self.config, self.dist
        step = self.step
        while step < self.total_steps:
            epoch, within = divmod(step, self.steps_per_epoch)
            chunks = epoch_micro_batches(
                len(self.train_data), epoch, cfg.seed, cfg.batch_size, d.world, d.rank
            )
            for s in range(within, self.steps_per_epoch):
                if step >= self.total_steps:
                    return
                yield chunks[s * cfg.grad_accum : (s + 1) * cfg.grad_accum]
                step += 1

    def _train_step(self, micro_batches: list[list[int]]) -> tuple[float, int, float | None]:
        cfg = self.config
        self.model.train()
        n = len(micro_batches)
        total_loss, tokens = 0.0, 0
        for i, batch in enumerate(self._loader(self.train_data, micro_batches)):
            tokens += (
                int(batch["attention_mask"].sum())
                if "attention_mask" in batch
                else batch["input_ids"].numel()
            )
            # DDP all-reduces gradients on the last micro-batch only.
            sync = i == n - 1 or self.dist.world == 1
            ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()
            if cfg.compile:
                self._check_batch(batch)
            with ctx:
                with self._autocast():
                    out = self._call_compiled(batch) if cfg.compile else self._step_model(**batch)
                loss = out.loss if hasattr(out, "loss") else out[0]
                if loss is None:
                    raise ValueError("the model returned no loss: the training batches need a 'labels' entry")
                (loss / n).backward()
            total_loss += loss.detach().float().item()
        grad_norm = None
        if cfg.max_grad_norm:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm).item()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss / n, tokens, grad_norm

    def _check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """The model's input checks, done here because the compiled model skips them (matmul.is_compiling)."""
        from gpt2kit.model.gpt2 import _check_ids
        from gpt2kit.model.heads import check_class_labels

        if self._vocab_size is not None:
            for name in ("input_ids", "token_type_ids"):
                if batch.get(name) is not None:
                    _check_ids(batch[name], self._vocab_size, name)
        labels, config = batch.get("labels"), getattr(self.model, "config", None)
        single_label = (
            config is not None
            and getattr(config, "num_labels", 1) > 1
            and getattr(config, "problem_type", None) in (None, "single_label_classification")
        )
        if single_label and labels is not None and labels.dim() == 1 and not labels.is_floating_point():
            check_class_labels(labels, config.num_labels)

    def _call_compiled(self, batch: dict[str, torch.Tensor]) -> Any:
        try:
            return self._step_model(**batch)
        except Exception as e:
            name = type(e).__name__
            if name == "TorchRuntimeError":
                # An error in the traced code (bad shapes in the batch, say), seen on fake tensors: the
                # eager model raises it again with its own, clearer message.
                self.ddp(**batch)
                raise
            if name in ("InductorError", "BackendCompilerFailed", "InvalidCxxCompiler"):
                # The compiler itself failed (no C++ compiler, an unsupported op): not the user's data.
                raise RuntimeError(
                    f"torch.compile could not compile the training step ({name}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); train without compile "
                    "(TrainingConfig(compile=False), or drop --compile)"
                ) from e
            raise

    def _loader(self, data: Dataset, batches: list[list[int]]) -> Iterator[dict[str, torch.Tensor]]:
        collate = getattr(data, "collate", None) or torch.utils.data.default_collate
        if self.config.num_workers > 0:
            it: Any = DataLoader(
                data, batch_sampler=batches, collate_fn=collate, num_workers=self.config.num_workers
            )
        else:
            it = (collate([data[i] for i in b]) for b in batches)
        device = self.dist.device
        for batch in it:
            yield {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _after_eval(self, metrics: dict[str, float]) -> bool:
        """Tracks the best evaluation; True when early stopping's patience has run out."""
        cfg = self.config
        key = "eval_" + cfg.metric_for_best.removeprefix("eval_")
        if key not in metrics:
            raise ValueError(
                f"metric_for_best={cfg.metric_for_best!r} is not among the evaluation metrics "
                f"{sorted(k.removeprefix('eval_') for k in metrics)}"
            )
        value = metrics[key]
        higher = _higher_is_better(key.removeprefix("eval_"))
        if self.best_metric is None or (value > self.best_metric if higher else value < self.best_metric):
            self.best_metric = value
            self.bad_evals = 0
            if cfg.save_best and self.dist.main:
                _save_atomic(self.model, self.tokenizer, self.out / "best")
        else:
            self.bad_evals += 1
        self._emit("eval", {"step": self.step, **metrics})
        return bool(cfg.early_stopping_patience and self.bad_evals >= cfg.early_stopping_patience)

    # --- resume --------------------------------------------------------------------------------------------

    def _resume_latest(self) -> bool:
        """Loads the newest checkpoint in output_dir/checkpoints; False when there is none.

        Every file is read (and checked) before anything is changed, so a bad checkpoint raises a ValueError
        naming the file and leaves the model as it was."""
        ckpts = sorted((self.out / "checkpoints").glob("step-[0-9]*[0-9]"))
        if not ckpts:
            return False
        path = ckpts[-1]
        state = _read_trainer_state(path)
        if state.get("world_size", 1) != self.dist.world:
            raise ValueError(
                f"checkpoint {path} was written by {state['world_size']} processes but this run has "
                f"{self.dist.world}; resume with the same number, or pass resume=False / --no-resume"
            )
        from gpt2kit.model import lora
        from gpt2kit.model.weights import find_weight_files, read_state_dict

        adapter = lora.has_adapter(self.model)  # its checkpoints hold the adapter alone
        try:
            if adapter:
                sd = lora.read_adapter(path)[1]
                lora.check_adapter_state(self.model, sd, str(path))
            else:
                sd = read_state_dict(find_weight_files(path))
        except (ValueError, FileNotFoundError) as e:
            # The reader's advice is for downloaded models; a checkpoint is remade by training.
            why = str(e).removesuffix(" — re-download or re-save it")
            raise ValueError(f"cannot resume: {why}. {_resume_fix(path)}") from None
        optimizer_state = _read_torch_state(
            path / "optimizer.pt", self.dist.device, ("state", "param_groups")
        )
        scheduler_state = _read_torch_state(path / "scheduler.pt", "cpu", ("last_epoch",))
        rng = _load_rng(path, self.dist.rank)
        # Setting the RNG is its last check (torch, random and NumPy each validate their own state); nothing
        # below draws from it, so it can come first.
        try:
            _set_rng_state(rng)
        except (RuntimeError, ValueError, TypeError) as e:
            raise ValueError(
                f"the RNG state in {path} is not valid ({e}); it is probably corrupt. {_resume_fix(path)}"
            ) from None

        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        # A tied LM head is saved once, as transformers does; an adapter checkpoint holds the adapter alone.
        missing = [] if adapter else [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {path} does not fit this model: missing {missing}, unexpected {unexpected}"
            )
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights()
        try:
            self.optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path / 'optimizer.pt'} does not fit this run's optimizer ({e}). {_resume_fix(path)}"
            ) from None
        self.scheduler.load_state_dict(scheduler_state)
        self.step = state["step"]
        self.best_metric = state["best_metric"]
        self.bad_evals = state["bad_evals"]
        self.history = [h for h in state["history"] if h.get("step", 0) <= self.step]
        self._last_saved_step = self.step
        # The logs are cut back to self.history by Reporters.start: the replayed steps log again.
        logger.info("resumed from %s (step %d of %d)", path, self.step, self.total_steps)
        self._emit("resume", {"step": self.step, "path": str(path)})
        return True

    def _step_rng_after_interrupt(self) -> dict[str, Any] | None:
        # Interrupted mid-step: the model and optimizer are still those of the last finished step, and the
        # RNG taken at this step's start replays it exactly. Between steps, the current RNG is right.
        return self._step_rng if self._in_step else None

    def _prune_checkpoints(self) -> None:
        ckpts = sorted((self.out / "checkpoints").glob("step-[0-9]*[0-9]"))
        for old in ckpts[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    # --- logs ----------------------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
        self.history.append(record)
        self._emit("log", record)
        if not self.dist.main:
            return
        self.reports.log(record)
        if "eval_loss" in record:
            self._plot()
        if self.config.progress:
            from tqdm import tqdm

            tqdm.write(
                " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            )

    def _plot(self) -> None:
        if self.config.plot:
            from gpt2kit.training.plot import plot_history

            plot_history(self.out / "loss.png", self.history)  # without matplotlib: one line, no picture

    def _progress_bar(self):
        """A bar on a terminal only: in a log (stderr a file or a pipe) the lines _log prints every log_every
        steps are the progress, not a bar's carriage-return redraws."""
        from gpt2kit.progress import on_terminal, progress_bar

        if not (self.config.progress and self.dist.main and on_terminal()):
            return None
        return progress_bar(total=self.total_steps, initial=self.step, desc="train", unit="step")

    def _emit(self, event: str, info: dict) -> None:
        for cb in self.callbacks:
            cb(self, event, info)


# --- helpers -----------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- reading and writing a checkpoint's state without pickles ----------------------------------------------


def _resume_fix(checkpoint: Path) -> str:
    return (
        f"Start over with --no-resume (TrainingConfig(resume=False)), or delete {checkpoint} to resume from "
        "the checkpoint before it"
    )


def _save_rng(state: dict[str, Any], file: Path) -> None:
    """Generator states are uint8 tensors (safetensors); Python's and NumPy's are ints and floats (JSON in
    the file's metadata). Nothing here is a pickle, so reading it back cannot run code."""
    from safetensors.torch import save_file

    from gpt2kit.data import file_mode

    mode = file_mode(file)  # before the write: safetensors creates 0o600 files
    tensors = {"torch": state["torch"]}
    tensors.update({f"cuda.{i}": s for i, s in enumerate(state.get("cuda", []))})
    version, internal, gauss_next = state["python"]
    kind, key, pos, has_gauss, cached_gaussian = state["numpy"]
    metadata = {
        "python": json.dumps([version, list(internal), gauss_next]),
        "numpy": json.dumps([kind, key.tolist(), pos, has_gauss, cached_gaussian]),
    }
    save_file(tensors, file, metadata=metadata)
    os.chmod(file, mode)


def _load_rng(checkpoint: Path, rank: int) -> dict[str, Any]:
    file = checkpoint / _RNG_FILE.format(rank=rank)
    if not file.is_file():
        return _load_legacy_rng(checkpoint, rank)
    from safetensors import safe_open

    try:
        with safe_open(file, "pt") as f:
            metadata = f.metadata() or {}
            names = f.keys()
            tensors = {name: f.get_tensor(name) for name in names}
        version, internal, gauss_next = json.loads(metadata["python"])
        kind, key, pos, has_gauss, cached_gaussian = json.loads(metadata["numpy"])
        cuda = sorted((int(name.removeprefix("cuda.")), t) for name, t in tensors.items() if name != "torch")
        state = {
            "torch": tensors["torch"],
            "python": (version, tuple(internal), gauss_next),
            "numpy": (kind, np.array(key, dtype=np.uint32), pos, has_gauss, cached_gaussian),
        }
    except Exception as e:  # safetensors, JSON and unpacking each raise their own types
        raise ValueError(
            f"{file} is not a readable RNG state ({type(e).__name__}: {e}); it is probably truncated or "
            f"corrupt. {_resume_fix(checkpoint)}"
        ) from None
    if cuda:
        state["cuda"] = [t for _, t in cuda]
    return state


def _load_legacy_rng(checkpoint: Path, rank: int) -> dict[str, Any]:
    """An rng-N.pt of an older gpt2kit, read with weights_only: NumPy's key array is the one object it
    needs beyond tensors and tuples, allowed here as a uint32 array and nothing else."""
    file = checkpoint / _LEGACY_RNG_FILE.format(rank=rank)
    if not file.is_file():
        raise ValueError(
            f"checkpoint {checkpoint} has no RNG state for process {rank} "
            f"({_RNG_FILE.format(rank=rank)}). {_resume_fix(checkpoint)}"
        )
    from gpt2kit.model.weights import holds_pickled_objects, load_error_reason

    rebuild = _numpy_reconstruct()
    # NumPy 2 moved numpy.core to numpy._core; a pickle names the function as its writer's NumPy did.
    numpy_array = [
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
        (rebuild, "numpy.core.multiarray._reconstruct"),
        (rebuild, "numpy._core.multiarray._reconstruct"),
    ]
    try:
        with torch.serialization.safe_globals(numpy_array):
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for bad zips, pickles, and unsafe globals
        why = (
            "holds Python objects besides that state, and gpt2kit never runs pickled code"
            if holds_pickled_objects(e)
            else f"could not be read ({type(e).__name__}: {load_error_reason(e)}); it is probably truncated "
            "or corrupt"
        )
        raise ValueError(
            f"{file} was written by an older gpt2kit with pickled RNG state; it {why}. "
            f"{_resume_fix(checkpoint)}"
        ) from None
    if not isinstance(state, dict) or not {"torch", "python", "numpy"} <= state.keys():
        raise ValueError(f"{file} does not hold an RNG state. {_resume_fix(checkpoint)}")
    return state


def _numpy_reconstruct() -> Callable:
    core = getattr(np, "_core", None) or np.core  # np.core warns under NumPy 2
    return core.multiarray._reconstruct


def _read_torch_state(file: Path, device: str | torch.device, keys: Sequence[str]) -> dict[str, Any]:
    """optimizer.pt / scheduler.pt: plain tensors, numbers and lists, so weights_only reads them whole."""
    from gpt2kit.model.weights import holds_pickled_objects, load_error_reason, load_weights_only

    checkpoint = file.parent
    if not file.is_file():
        raise ValueError(f"checkpoint {checkpoint} has no {file.name}. {_resume_fix(checkpoint)}")
    try:
        state = load_weights_only(file, device)
    except Exception as e:  # torch raises several types for bad zips, pickles, and unsafe globals
        if holds_pickled_objects(e):
            raise ValueError(
                f"{file} holds Python objects besides tensors, and gpt2kit never runs pickled code. "
                f"{_resume_fix(checkpoint)}"
            ) from None
        raise ValueError(
            f"{file} could not be read ({type(e).__name__}: {load_error_reason(e)}); it is probably "
            f"truncated or corrupt. {_resume_fix(checkpoint)}"
        ) from None
    if not isinstance(state, dict) or not set(keys) <= state.keys():
        raise ValueError(f"{file} does not hold a {file.stem} state. {_resume_fix(checkpoint)}")
    return state


def _read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    file = checkpoint / _STATE_FILE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not readable JSON ({e}). {_resume_fix(checkpoint)}") from None
    required = ("step", "best_metric", "bad_evals", "history")
    if not isinstance(state, dict) or not all(k in state for k in required):
        raise ValueError(f"{file} lacks the trainer state ({', '.join(required)}). {_resume_fix(checkpoint)}")
    return state


def _save_atomic(model, tokenizer, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with _removed_on_failure(tmp, path):
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)


@contextlib.contextmanager
def _removed_on_failure(tmp: Path | None, target: Path, stray: Path | None = None) -> Iterator[None]:
    """Remove the temporary folder `tmp` (and stray .*.tmp files in `stray`) if the block fails, so a full
    disk or a file size limit leaves no half-written checkpoint behind. torch and safetensors report a
    failed write as their own errors (torch's says only "basic_ios::clear"): those become an OSError that
    names `target`, with the errno when the message holds one."""
    try:
        yield
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if stray is not None:
            for f in stray.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    f.unlink()
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError" or _torch_write_failure(e):
            raise _write_error(e, target) from e
        raise


def _torch_write_failure(e: BaseException) -> bool:
    """torch.save's C++ writer failing (its messages name no errno); other RuntimeErrors are bugs."""
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("basic_ios", "inline_container", "failed writing", "file write failed")
    )


def _write_error(e: BaseException, target: Path) -> BaseException:
    """An OSError naming `target` for a failed write (the filename of an OSError is often a temporary
    file's, which the user never sees)."""
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
        found = re.search(r"os error (\d+)|code: (\d+)", str(e))
        code = int(found.group(1) or found.group(2)) if found else None
    if code is not None:
        return OSError(code, os.strerror(code), str(target))
    if isinstance(e, OSError):
        return e
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return OSError(
        f"could not write {target} ({first}); the disk may be full or the file size limit (ulimit -f) "
        "reached: free space, raise the limit or choose another -o"
    )


__all__ = ["Trainer", "TrainResult", "TrainingConfig", "epoch_micro_batches", "lr_factor", "param_groups"]
