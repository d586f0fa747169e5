"""Where a training run's numbers go: `TrainingConfig(report_to=[...])` / `gpt2kit train --report-to`.

The names are transformers' Trainer's: "jsonl" (output_dir/metrics.jsonl, the default), "tensorboard"
(event files in output_dir/runs), "wandb", "mlflow"; "all" is jsonl plus every backend that is installed,
"none" is nothing. TensorBoard, W&B and MLflow are optional extras (`pip install 'gpt2kit[tensorboard]'`,
...), imported only when a run starts; a missing one is named with its extra before any training.

Each backend receives the records the Trainer logs, as scalars at their optimizer step: train/loss,
train/lr, train/grad_norm, train/tokens_per_s, train/epoch, and eval/loss, eval/perplexity, eval/accuracy
(eval/f1 ... for classification).

Resume. An exact resume replays the steps after the checkpoint, so every backend learns where the run picks
up: metrics.jsonl is rewritten with the history up to the checkpoint; TensorBoard's writer opens with
purge_step = step + 1, which hides what the interrupted run logged past the checkpoint; W&B and MLflow
continue the same run (its id is kept in output_dir/tracking.json with the last step logged per scalar)
and skip the points they already hold (the replay computes the same values). A fresh run (no checkpoint,
or resume=False) starts a fresh log in each: the JSONL emptied, old event files removed, new W&B / MLflow
runs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gpt2kit.data import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "Reporters",
    "check_installed",
    "normalize_report_to",
    "resolve",
    "run_params",
    "scalars",
]

BACKENDS = ("jsonl", "tensorboard", "wandb", "mlflow")
# backend -> (the module it imports, the extra that installs it)
_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}
_STATE_FILE = "tracking.json"


def normalize_report_to(value: str | Sequence[str] | None) -> list[str]:
    """`report_to` as a list of known names: a comma-separated string or a list; None is the default.

    >>> normalize_report_to("jsonl,tensorboard")
    ['jsonl', 'tensorboard']
    """
    if value is None:
        return ["jsonl"]
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(v).strip().lower() for v in items if str(v).strip()]
    known = (*BACKENDS, "all", "none")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"report_to {unknown} is unknown; choose from {', '.join(known)}")
    if not names:
        raise ValueError('report_to is empty; use "none" to report nowhere, or e.g. "jsonl,tensorboard"')
    if ("all" in names or "none" in names) and len(names) > 1:
        raise ValueError(f'report_to {names}: "all" and "none" stand alone')
    return list(dict.fromkeys(names))


def _installed(backend: str) -> bool:
    module, _ = _PACKAGES[backend]
    return importlib.util.find_spec(module) is not None


def resolve(report_to: Sequence[str]) -> list[str]:
    """The backends a run writes to: "all" is jsonl plus every installed backend, "none" is none."""
    names = normalize_report_to(report_to)
    if names == ["none"]:
        return []
    if names == ["all"]:
        return ["jsonl", *(b for b in _PACKAGES if _installed(b))]
    return names


def check_installed(backends: Iterable[str]) -> None:
    """Raises ImportError naming the extra for the first backend whose package is missing (no import)."""
    for backend in backends:
        if backend in _PACKAGES and not _installed(backend):
            module, extra = _PACKAGES[backend]
            raise ImportError(
                f"report_to {backend!r} needs the {module} package, which is not installed: "
                f"pip install 'gpt2kit[{extra}]'"
            )


def run_params(config: Any, model: Any) -> dict[str, Any]:
    """What a run records as its configuration: the TrainingConfig, and the model's config as the diff
    from GPT-2's defaults (n_layer, n_embd, dropout, ...)."""
    params: dict[str, Any] = {"training": config.to_dict()}
    model_config = getattr(model, "config", None)
    if hasattr(model_config, "to_diff_dict"):
        params["model"] = json.loads(json.dumps(model_config.to_diff_dict(), default=str))
    return params


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """A logged record's numbers under the backends' names: eval_X -> eval/X, others train/X.

    >>> scalars({"step": 3, "epoch": 0.5, "loss": 2.5, "grad_norm": None})
    {'train/epoch': 0.5, 'train/loss': 2.5}
    """
    is_eval = any(k.startswith("eval_") for k in record)
    out = {}
    for key, value in record.items():
        if key == "step" or (is_eval and key == "epoch"):  # an evaluation's epoch is its train record's
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"] = float(value)
    return out


# --- the backends --------------------------------------------------------------------------------------------


class _Reporter:
    """One backend. `start(step, history)`: step is None for a fresh run, else the checkpoint's step, with
    `history` the records logged up to it."""

    def __init__(self, out: Path, run_name: str, params: dict[str, Any]) -> None:
        self.out, self.run_name, self.params = out, run_name, params

    def start(self, step: int | None, history: Sequence[Mapping[str, Any]]) -> None:
        raise NotImplementedError

    def log(self, record: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self, failed: bool) -> None:
        pass


class _Jsonl(_Reporter):
    def start(self, step, history) -> None:
        self.file = self.out / "metrics.jsonl"
        # Lines logged after the checkpoint will be logged again by the replayed steps.
        atomic_write_text(self.file, "".join(json.dumps(dict(h)) + "\n" for h in history))

    def log(self, record) -> None:
        with open(self.file, "a") as f:
            f.write(json.dumps(dict(record)) + "\n")


class _TensorBoard(_Reporter):
    def start(self, step, history) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.out / "runs"
        old = sorted(log_dir.glob("events.out.tfevents.*")) if log_dir.is_dir() else []
        if step is None:
            for f in old:  # a fresh run starts a fresh log, as metrics.jsonl does
                f.unlink()
        # purge_step: TensorBoard hides the events at steps >= it that earlier files hold (the interrupted
        # run's steps past the checkpoint), so the replayed steps are shown once.
        purge = step + 1 if step is not None and old else None
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)
        if step is None:
            self.writer.add_text(
                "config", "```\n" + json.dumps(self.params, indent=1, default=str) + "\n```", 0
            )
        elif not old:  # tensorboard added on resume: the history up to the checkpoint first
            for record in history:
                self.log(record)
        self.writer.flush()

    def log(self, record) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, record["step"])
        self.writer.flush()  # a crash must not lose points that the resume will not replay

    def close(self, failed: bool) -> None:
        self.writer.close()


class _Tracked(_Reporter):
    """A backend with runs of its own (W&B, MLflow): the run id and the last step logged per scalar live in
    output_dir/tracking.json, so a resume continues the run without sending a point twice."""

    name = ""

    def start(self, step, history) -> None:
        state = self._read_state().get(self.name) if step is not None else None
        self.logged: dict[str, int] = dict(state.get("logged", {})) if state else {}
        self.run_id = self.open_run(state.get("run_id") if state else None)
        self._save_state()
        for record in history:  # nothing when the run continues; the history up to the checkpoint if new
            self.log(record)

    def log(self, record) -> None:
        step = int(record["step"])
        new = {k: v for k, v in scalars(record).items() if step > self.logged.get(k, -1)}
        if not new:
            return
        self.send(new, step)
        self.logged.update(dict.fromkeys(new, step))
        self._save_state()

    def open_run(self, run_id: str | None) -> str:
        """Continue `run_id` (or start a run when it is None or gone); returns the run's id."""
        raise NotImplementedError

    def send(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.out / _STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self) -> None:
        state = self._read_state()
        state[self.name] = {"run_id": self.run_id, "logged": self.logged}
        atomic_write_text(self.out / _STATE_FILE, json.dumps(state, indent=1) + "\n")


class _Wandb(_Tracked):
    """Weights & Biases. WANDB_PROJECT (default "gpt2kit"), WANDB_MODE=offline, WANDB_DIR (default:
    output_dir) are wandb's own settings. A run the user already started (wandb.init before fit) is used
    and left open."""

    name = "wandb"

    def open_run(self, run_id):
        import wandb

        self.owned = wandb.run is None
        if not self.owned:
            self.run = wandb.run
            return self.run.id
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "gpt2kit"),
            name=self.run_name,
            id=run_id,  # None: wandb makes one
            resume="allow",
            dir=os.environ.get("WANDB_DIR") or str(self.out),
            config=self.params,
        )
        return self.run.id

    def send(self, values, step) -> None:
        self.run.log(values, step=step)

    def close(self, failed: bool) -> None:
        if self.owned:
            self.run.finish(exit_code=1 if failed else 0)


class _Mlflow(_Tracked):
    """MLflow, through its client (no global active run). MLFLOW_TRACKING_URI (mlflow's default: a local
    store in the working folder) and MLFLOW_EXPERIMENT_NAME (default "gpt2kit") choose where."""

    name = "mlflow"

    def open_run(self, run_id):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        if run_id is not None:
            try:
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            except Exception as e:  # gone, or another tracking URI: start a new run
                logger.warning("mlflow run %s cannot be continued (%s); starting a new run", run_id, e)
                self.logged = {}
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "gpt2kit")
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        run = self.client.create_run(experiment_id, run_name=self.run_name)
        from mlflow.entities import Param

        # MLflow keeps parameters as strings of bounded length; the nested config becomes dotted keys.
        params = [Param(k, str(v)[:500]) for k, v in _flatten(self.params).items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 parameters a call
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        return run.info.run_id

    def send(self, values, step) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v if math.isfinite(v) else float("nan"), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_CLASSES = {"jsonl": _Jsonl, "tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _Mlflow}


class Reporters:
    """The backends of one run, driven by the Trainer (rank 0 only): `start` once (after any resume),
    `log` each record, `close` at the end, also when training fails or is interrupted.

    >>> r = Reporters(["jsonl"], "out", run_name="demo", params={})  # doctest: +SKIP
    >>> r.start(None, []); r.log({"step": 1, "loss": 3.2}); r.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        report_to: str | Sequence[str] | None,
        output_dir: str | os.PathLike,
        *,
        run_name: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.backends = resolve(normalize_report_to(report_to))
        check_installed(self.backends)  # before any training, so a missing extra costs nothing
        self.out = Path(output_dir)
        self.run_name = run_name or self.out.resolve().name or f"run-{uuid.uuid4().hex[:8]}"
        self.params = params or {}
        self._active: list[_Reporter] = []

    def start(self, step: int | None, history: Sequence[Mapping[str, Any]]) -> None:
        self.close()
        self._active = []
        for name in self.backends:
            reporter = _CLASSES[name](self.out, self.run_name, self.params)
            reporter.start(step, history)
            self._active.append(reporter)

    def log(self, record: Mapping[str, Any]) -> None:
        for reporter in self._active:
            reporter.log(record)

    def close(self, failed: bool = False) -> None:
        active, self._active = self._active, []
        for reporter in active:
            try:
                reporter.close(failed)
            except Exception as e:  # one backend failing to close must not hide the others
                logger.warning("closing the %s log failed: %s", type(reporter).__name__.strip("_"), e)
