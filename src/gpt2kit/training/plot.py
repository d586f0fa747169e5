"""The loss-curve PNG, drawn by matplotlib (the optional `plot` extra).

The Trainer redraws `output_dir/loss.png` after each evaluation. Without matplotlib the picture is skipped
with one logged line saying how to get it; the numbers are in metrics.jsonl either way. Nothing here imports
torch or matplotlib at import time: plotting must stay cheap enough to run on every evaluation.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gpt2kit.data import atomic_write_bytes

__all__ = ["plot_curves", "plot_history"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'gpt2kit[plot]' (or matplotlib)"
_MIN_WIDTH, _MIN_HEIGHT = 160, 120
_skip_logged = False  # the "no matplotlib" line is logged once per process, not once per evaluation


def plot_curves(
    path: str | os.PathLike,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str = "loss",
    xlabel: str = "step",
    width: int = 800,
    height: int = 480,
) -> None:
    """Draw each series of (x, y) points as a line and write the picture to `path` as a PNG, atomically.

    Points whose x or y is NaN, infinite or None are left out and the line breaks there; a series with no
    finite point is left out of the legend; a series of one point is drawn as a marker. Raises ImportError
    naming the extra when matplotlib is not installed.

    >>> plot_curves("loss.png", {"train loss": [(1, 3.2), (2, 2.9)]})  # doctest: +SKIP
    """
    if width < _MIN_WIDTH or height < _MIN_HEIGHT:
        raise ValueError(f"plot size {width}x{height} is too small (at least {_MIN_WIDTH}x{_MIN_HEIGHT})")
    try:
        # Figure + FigureCanvasAgg rather than pyplot and matplotlib.use("Agg"): pyplot keeps every figure
        # in a global registry and use() switches the backend for the whole process (a notebook, a GUI).
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"drawing loss curves needs matplotlib: {INSTALL_HINT}") from None
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = 0
    for name, points in series.items():
        pts = _as_points(points)
        finite = int(np.isfinite(pts[:, 1]).sum())
        if not finite:
            continue
        ax.plot(pts[:, 0], pts[:, 1], label=str(name), linewidth=1.5, marker="s" if finite == 1 else None)
        drawn += 1
    if drawn:
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def plot_history(path: str | os.PathLike, history: Sequence[Mapping[str, Any]]) -> bool:
    """The Trainer's loss.png from its logged records (train `loss` and `eval_loss` against `step`).

    Returns False, after logging one line with the install hint (once per process), when matplotlib is
    missing: a training run never fails for want of a picture.
    """
    global _skip_logged
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    ev = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    series = {"train loss": train, **({"eval loss": ev} if ev else {})}
    try:
        plot_curves(path, series, title="loss", xlabel="step")
    except ImportError:
        if not _skip_logged:
            logger.warning("loss.png skipped: matplotlib is not installed; %s", INSTALL_HINT)
            _skip_logged = True
        return False
    return True


def _as_points(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """(n, 2) float64, with non-finite coordinates (and None) as NaN in both columns of their row."""

    def num(v: object) -> float:
        try:
            return float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return math.nan

    arr = np.array([(num(x), num(y)) for x, y in points], dtype=np.float64).reshape(-1, 2)
    arr[~np.isfinite(arr).all(axis=1)] = np.nan
    return arr
