"""Hyperparameter search with Optuna: `Trainer.hyperparameter_search(...)` and `gpt2kit tune`.

transformers' shape: `hp_space(trial)` returns a dict of the trial's settings, each trial trains a fresh copy
of the model, and the search returns a `BestRun(run_id, objective, hyperparameters, run_summary)`. A dict
may hold TrainingConfig fields (lr, warmup_ratio, warmup_steps, schedule, weight_decay, batch_size, ...) and
the model's config fields (n_layer, n_embd, n_head, resid_pdrop, ...; `dropout` sets the three dropouts).
A trial that changes the model's shape (layers, width, heads, ...) trains that model from scratch, seeded
alike for every trial; other fields keep the model's weights.

Pruning: each evaluation (every `eval_every` steps) reports the objective to the trial through the
Trainer's "eval" event, and Optuna's MedianPruner stops a trial that is worse than the median of earlier
trials at the same step. Files, under the Trainer's output_dir:

    trials/N/            each trial's run (a save_pretrained folder, metrics.jsonl, loss.png, ...)
    trials.csv, .json    the results table: state, objective, steps, seconds and settings of every trial
    optuna_history.png   the objective per trial and the best so far; optuna_intermediate.png: the eval
                         curves, where pruned trials stop (matplotlib, the `plot` extra)
    best-trial/          a copy of the best trial's folder (without its checkpoints); best_trial.json

Optuna is the optional `tune` extra, imported only here.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import gc
import io
import json
import logging
import math
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2kit.data import atomic_write_text

if TYPE_CHECKING:
    from gpt2kit.training.trainer import Trainer

logger = logging.getLogger(__name__)

__all__ = ["BestRun", "format_table", "hyperparameter_search", "parse_space"]

INSTALL_HINT = "pip install 'gpt2kit[tune]' (or optuna)"
# Model config fields whose change makes a new shape (or meaning) of weights: such a trial starts from scratch.
_SHAPE_FIELDS = ("n_layer", "n_embd", "n_head", "n_inner", "n_positions", "n_ctx", "vocab_size")
_DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")
# Settings a trial may not change: where it writes, and whether it resumes, are the search's to decide.
_FIXED = ("output_dir", "resume", "run_name", "extra")


@dataclass
class BestRun:
    """The best trial, as transformers' BestRun (`run_id` is the trial's number), plus where it is."""

    run_id: str
    objective: float
    hyperparameters: dict[str, Any]
    run_summary: list[dict[str, Any]] | None = None  # every trial's row of the results table
    output_dir: str = ""  # the copy of the best trial's folder


class _InvalidTrial(Exception):
    """A sampled combination the config or the model refuses (n_embd not divisible by n_head, say): the
    trial is recorded as failed and the search goes on."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError(f"hyperparameter search needs optuna: {INSTALL_HINT}") from None
    return optuna


def hyperparameter_search(
    trainer: Trainer,
    hp_space: Callable[[Any], Mapping[str, Any]],
    n_trials: int = 20,
    direction: str = "minimize",
    backend: str = "optuna",
    compute_objective: Callable[[dict[str, float]], float] | None = None,
    *,
    pruner: Any = "median",
    sampler: Any = None,
    timeout: float | None = None,
    study_name: str | None = None,
    storage: str | None = None,
) -> BestRun:
    """Run `n_trials` trainings with settings from `hp_space(trial)`; see the module's docstring.

    `compute_objective(metrics)` turns an evaluation's metrics (eval_loss, eval_perplexity, ...) into the
    number to minimize or maximize; by default the metric_for_best of the Trainer's config (eval_loss).
    `pruner`: "median" (Optuna's MedianPruner, once 2 trials have finished), None / "none", or any Optuna
    pruner; `sampler`: default TPE seeded with the config's seed. `storage` (an Optuna URL such as
    sqlite:///out/study.db) keeps the study, so a second call with the same study_name adds trials to it.

    >>> best = trainer.hyperparameter_search(
    ...     lambda t: {"lr": t.suggest_float("lr", 1e-5, 1e-3, log=True), "n_layer": t.suggest_int("n_layer", 2, 4)},
    ...     n_trials=8)  # doctest: +SKIP
    """
    if backend != "optuna":
        raise ValueError(f"backend={backend!r} is not supported; gpt2kit searches with backend='optuna'")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction={direction!r} is invalid; use 'minimize' or 'maximize'")
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials={n_trials!r} is invalid; it must be at least 1")
    if not callable(hp_space):
        raise TypeError(f"hp_space must be a function of an Optuna trial returning a dict, got {hp_space!r}")
    if trainer.eval_data is None:
        raise ValueError(
            "hyperparameter_search needs eval_data: the objective and the pruning read the evaluation metrics"
        )
    if trainer.dist.world > 1:
        raise ValueError("hyperparameter_search runs in one process; start it without torchrun")
    cfg = trainer.config
    if compute_objective is None:
        key = "eval_" + cfg.metric_for_best.removeprefix("eval_")
        higher = cfg.metric_for_best.removeprefix("eval_") not in ("loss", "perplexity")
        if higher != (direction == "maximize"):
            raise ValueError(
                f"the objective is {key}, which is better {'higher' if higher else 'lower'}; pass "
                f"direction={'maximize' if higher else 'minimize'!r}"
            )
        compute_objective = _metric(key)
    optuna = _optuna()

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = trainer.model
    model_fields = (set(base.config.to_dict()) | {"dropout"}) if hasattr(base, "config") else set()
    train_fields = {f.name for f in dataclasses.fields(cfg)} - set(_FIXED)
    run_name = cfg.run_name or out.resolve().name

    def objective(trial) -> float:
        params = dict(hp_space(trial))
        _check_names(params, train_fields, model_fields)
        trial.set_user_attr("hyperparameters", _jsonable(params))
        folder = out / "trials" / str(trial.number)
        shutil.rmtree(folder, ignore_errors=True)  # a trial of an earlier search under the same number
        train_kw = {k: v for k, v in params.items() if k in train_fields}
        model_kw = {k: v for k, v in params.items() if k not in train_fields}
        try:
            trial_cfg = dataclasses.replace(
                cfg,
                output_dir=str(folder),
                resume=False,
                run_name=f"{run_name}-trial-{trial.number}",
                **train_kw,
            )
            model = _trial_model(base, model_kw, cfg.seed, has_lora=getattr(cfg, "lora", None) is not None)
        except (ValueError, TypeError) as e:
            trial.set_user_attr("error", str(e))
            raise _InvalidTrial(f"trial {trial.number} {params}: {e}") from None

        def report(t, event: str, info: dict) -> None:
            if event != "eval":
                return
            step = info["step"]
            trial.report(compute_objective({k: v for k, v in info.items() if k != "step"}), step)
            trial.set_user_attr("steps", step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")

        import torch

        from gpt2kit.training.trainer import Trainer

        torch.manual_seed(cfg.seed)  # a LoRA adapter is initialised by the Trainer: alike in every trial
        run = Trainer(
            model,
            trainer.train_data,
            trainer.eval_data,
            trial_cfg,
            tokenizer=trainer.tokenizer,
            device=trainer.dist.device,
            callbacks=[*trainer.callbacks, report],
        )
        result = run.fit()
        trial.set_user_attr("steps", result.steps)
        trial.set_user_attr("eval_metrics", result.eval_metrics)
        value = float(compute_objective(result.eval_metrics))
        del run, model
        gc.collect()
        return value

    if pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2)
    elif pruner in (None, "none"):
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        direction=direction,
        pruner=pruner,
        sampler=sampler or optuna.samplers.TPESampler(seed=cfg.seed),
        study_name=study_name,
        storage=storage,
        load_if_exists=storage is not None,
    )
    try:
        study.optimize(
            objective, n_trials=n_trials, timeout=timeout, catch=(_InvalidTrial,), gc_after_trial=True
        )
    finally:  # also when a trial raised or Ctrl-C stopped the search: the table of what ran
        rows = [_row(t) for t in study.trials]
        _write_table(out, rows)
    _plot_study(study, out)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not done:
        counts = ", ".join(f"{n} {s.lower()}" for s, n in _count_states(rows).items())
        raise ValueError(f"no trial of the search completed ({counts}); see {out / 'trials.csv'}")
    best = study.best_trial
    best_dir = out / "best-trial"
    shutil.rmtree(best_dir, ignore_errors=True)
    shutil.copytree(out / "trials" / str(best.number), best_dir, ignore=shutil.ignore_patterns("checkpoints"))
    summary = {
        "trial": best.number,
        "objective": best.value,
        "hyperparameters": best.user_attrs.get("hyperparameters", best.params),
        "eval_metrics": best.user_attrs.get("eval_metrics", {}),
        "folder": str(best_dir),
    }
    atomic_write_text(out / "best_trial.json", json.dumps(summary, indent=1) + "\n")
    logger.info("best trial %d: objective %.6g with %s", best.number, best.value, summary["hyperparameters"])
    return BestRun(
        run_id=str(best.number),
        objective=float(best.value),
        hyperparameters=summary["hyperparameters"],
        run_summary=rows,
        output_dir=str(best_dir),
    )


def _metric(key: str) -> Callable[[dict[str, float]], float]:
    def objective(metrics: dict[str, float]) -> float:
        if key not in metrics:
            raise ValueError(f"the objective {key} is not among the evaluation metrics {sorted(metrics)}")
        return metrics[key]

    return objective


def _check_names(params: dict[str, Any], train_fields: set[str], model_fields: set[str]) -> None:
    unknown = sorted(k for k in params if k not in train_fields and k not in model_fields)
    if unknown:
        raise ValueError(
            f"hp_space returned {unknown}, which are neither TrainingConfig fields (lr, warmup_ratio, "
            "schedule, weight_decay, ...) nor model config fields (n_layer, n_embd, n_head, dropout, ...)"
            + (f"; {', '.join(_FIXED)} are set by the search" if set(unknown) & set(_FIXED) else "")
        )


def _trial_model(base, fields: dict[str, Any], seed: int, has_lora: bool):
    """A fresh model for one trial: `base` copied (its adapter dropped: the trial's Trainer adds a new
    one), or rebuilt with the trial's config fields, from scratch when they change the weights' shapes."""
    import torch

    model = copy.deepcopy(base)
    if has_lora:
        from gpt2kit.model import lora

        if lora.has_adapter(model):
            lora.unload(model, merge=False)
    if not fields:
        return model
    fields = dict(fields)
    if "dropout" in fields:
        p = fields.pop("dropout")
        fields.update(dict.fromkeys(_DROPOUTS, p))
    config = copy.deepcopy(model.config)
    config.update(fields)  # validated; unchanged on error
    scratch = [k for k in _SHAPE_FIELDS if k in fields and fields[k] != getattr(base.config, k, None)]
    torch.manual_seed(seed)  # from scratch: every trial of a shape starts from the same weights
    rebuilt = type(model)(config).to(next(model.parameters()).device)
    if not scratch:
        rebuilt.load_state_dict(model.state_dict())
    return rebuilt


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _row(trial) -> dict[str, Any]:
    """One trial as a row of the results table."""
    intermediate = trial.intermediate_values
    last = intermediate[max(intermediate)] if intermediate else None
    seconds = trial.duration.total_seconds() if trial.duration is not None else None
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        # optuna gives a pruned trial its last reported value; the table leaves that to last_eval
        "objective": trial.value if trial.state.name == "COMPLETE" else None,
        "last_eval": last,
        "steps": trial.user_attrs.get("steps"),
        "seconds": round(seconds, 2) if seconds is not None else None,
        **trial.user_attrs.get("hyperparameters", trial.params),
        **({"error": trial.user_attrs["error"]} if "error" in trial.user_attrs else {}),
    }


def _count_states(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return counts


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def _write_table(out: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(out / "trials.json", json.dumps(rows, indent=1, default=str) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "trials.csv", buf.getvalue())


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results table as aligned text, one trial a line (what `gpt2kit tune` prints).

    >>> print(format_table([{"trial": 0, "state": "complete", "objective": 3.21, "lr": 0.001}]))
    trial  state     objective  lr
    0      complete  3.21       0.001
    """
    columns = [c for c in _columns(rows) if c != "error"]

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else str(v)
        return str(v)

    table = [columns] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table)


def _plot_study(study, out: Path) -> None:
    """optuna_history.png and optuna_intermediate.png, when matplotlib is there (one line when it is not)."""
    try:
        # optuna draws with pyplot; without a display matplotlib picks its Agg backend by itself
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ov
    except ImportError:
        from gpt2kit.training.plot import INSTALL_HINT as PLOT_HINT

        logger.warning("optuna plots skipped: matplotlib is not installed; %s", PLOT_HINT)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        for name, draw in (("optuna_history.png", ov.plot_optimization_history),
                           ("optuna_intermediate.png", ov.plot_intermediate_values)):  # fmt: skip
            try:
                fig = draw(study).figure
            except Exception as e:  # a plot is a convenience: never the end of a finished search
                logger.warning("%s not drawn: %s", name, e)
                continue
            try:
                fig.tight_layout()
                fig.savefig(out / name, dpi=100)
            finally:
                plt.close(fig)


# --- the command line's search space ---------------------------------------------------------------------


def parse_space(spec: str) -> Callable[[Any], dict[str, Any]]:
    """`gpt2kit tune --space`: comma-separated `name=LOW:HIGH` (a float range, or an int range when both are
    whole numbers), `name=LOW:HIGH:log` (sampled on a log scale), `name=A|B|C` (a choice) or `name=VALUE`.

    >>> space = parse_space("lr=1e-5:1e-3:log,warmup_ratio=0:0.2,n_layer=2|4,schedule=linear|cosine")
    >>> sorted(space.names)
    ['lr', 'n_layer', 'schedule', 'warmup_ratio']
    """
    example = "e.g. --space lr=1e-5:1e-3:log,warmup_ratio=0:0.2,n_layer=2|4"
    dims: dict[str, tuple] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, eq, value = (x.strip() for x in part.partition("="))
        if not eq or not name or not value:
            raise ValueError(
                f"--space part {part!r} should be name=LOW:HIGH, name=A|B or name=VALUE; {example}"
            )
        if name in dims:
            raise ValueError(f"--space names {name} twice; give each name once")
        if "|" in value:
            dims[name] = ("choice", [_value(v.strip()) for v in value.split("|")])
        elif ":" in value:
            bounds = value.split(":")
            log = len(bounds) == 3 and bounds[2].strip().lower() == "log"
            if len(bounds) not in (2, 3) or (len(bounds) == 3 and not log):
                raise ValueError(f"--space {name}={value!r}: a range is LOW:HIGH or LOW:HIGH:log; {example}")
            lo, hi = (_value(b.strip()) for b in bounds[:2])
            if not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in (lo, hi)) or lo >= hi:
                raise ValueError(f"--space {name}={value!r}: the range needs two numbers, LOW < HIGH")
            if log and lo <= 0:
                raise ValueError(f"--space {name}={value!r}: a log range needs LOW > 0")
            kind = "int" if isinstance(lo, int) and isinstance(hi, int) else "float"
            dims[name] = (kind, lo, hi, log)
        else:
            dims[name] = ("fixed", _value(value))
    if not dims:
        raise ValueError(f"--space is empty; {example}")

    def space(trial) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, dim in dims.items():
            if dim[0] == "choice":
                params[name] = trial.suggest_categorical(name, dim[1])
            elif dim[0] == "int":
                params[name] = trial.suggest_int(name, dim[1], dim[2], log=dim[3])
            elif dim[0] == "float":
                params[name] = trial.suggest_float(name, float(dim[1]), float(dim[2]), log=dim[3])
            else:
                params[name] = dim[1]
        return params

    space.names = list(dims)  # type: ignore[attr-defined]
    return space


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
