"""Loss curves as a PNG, with or without matplotlib.

The Trainer draws `loss.png` after each evaluation. matplotlib is not a dependency of gpt2kit, so when it
is missing the curves are rendered here with numpy alone and the PNG is encoded by hand (zlib + struct):
axes, grid lines at "nice" ticks, one 2-px polyline per series, and labels in a 3x5 bitmap font.
Nothing here imports torch: plotting must stay cheap enough to run on every evaluation.
"""

from __future__ import annotations

import io
import math
import os
import struct
import sys
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from gpt2kit.data import atomic_write_bytes

__all__ = ["plot_curves"]

Color = tuple[int, int, int]

# tab10, so a plot from either renderer uses the same color for the same series.
PALETTE: tuple[Color, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
_WHITE: Color = (255, 255, 255)
_GRID: Color = (228, 228, 228)
_AXES: Color = (60, 60, 60)
_TEXT: Color = (30, 30, 30)

_MIN_WIDTH, _MIN_HEIGHT = 160, 120


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

    Points whose x or y is NaN or infinite are left out, and the line breaks there (as in matplotlib);
    a series with no finite point is left out of the legend; with no finite point at all the plot is an
    empty frame saying "no data". A run of one point is drawn as a small square.
    """
    if width < _MIN_WIDTH or height < _MIN_HEIGHT:
        raise ValueError(f"plot size {width}x{height} is too small (at least {_MIN_WIDTH}x{_MIN_HEIGHT})")
    clean = {str(name): _as_points(points) for name, points in series.items()}
    png = _render_matplotlib(clean, title=title, xlabel=xlabel, width=width, height=height)
    if png is None:
        png = encode_png(_render_numpy(clean, title=title, xlabel=xlabel, width=width, height=height))
    atomic_write_bytes(path, png)


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


# --- matplotlib ----------------------------------------------------------------------------------------


def _render_matplotlib(
    series: dict[str, np.ndarray], *, title: str, xlabel: str, width: int, height: int
) -> bytes | None:
    """PNG bytes from matplotlib, or None where matplotlib cannot be imported."""
    try:
        # Figure + FigureCanvasAgg rather than pyplot and matplotlib.use("Agg"): pyplot keeps every figure
        # in a global registry and use() switches the backend for the whole process (a notebook, a GUI).
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    try:
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        drawn = 0
        for i, (name, pts) in enumerate(series.items()):
            finite = int(np.isfinite(pts[:, 1]).sum())
            if not finite:
                continue
            ax.plot(
                pts[:, 0],
                pts[:, 1],
                label=name,
                color=tuple(c / 255 for c in PALETTE[i % len(PALETTE)]),
                linewidth=1.5,
                marker="s" if finite == 1 else None,
                markersize=4,
            )
            drawn += 1
        if drawn:
            ax.legend(loc="best")
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(True, color=tuple(c / 255 for c in _GRID))
        ax.set_axisbelow(True)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()
    finally:
        fig.clear()  # no pyplot, so nothing to close: drop the artists now rather than at garbage collection


# --- PNG encoding --------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(img: np.ndarray) -> bytes:
    """An (h, w, 3) uint8 RGB image as PNG bytes: 8-bit truecolor, filter type 0 (none) on every row."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (h, w, 3) uint8 image, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1)
    ihdr = struct.pack(
        ">IIBBBBB", w, h, 8, 2, 0, 0, 0
    )  # depth 8, RGB, deflate, adaptive filters, no interlace
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


# --- the 3x5 font ---------------------------------------------------------------------------------------

# One glyph is five rows of three pixels; a row is one octal digit (4 = left pixel, 1 = right pixel).
# Letters have capital shapes (lowercase is not legible at 3x5) and text is matched case-insensitively.
_FONT: dict[str, str] = {
    **dict(
        zip(
            "0123456789",
            ["75557", "26227", "61247", "61216", "55711", "74616", "34757", "71122", "75757", "75716"],
        )
    ),
    **dict(
        zip(
            "abcdefghijklmnopqrstuvwxyz",
            [
                "25755",
                "65656",
                "34443",
                "65556",
                "74647",
                "74644",
                "34553",
                "55755",
                "72227",
                "11152",
                "55655",
                "44447",
                "57755",
                "65555",
                "25552",
                "65644",
                "25563",
                "65655",
                "34216",
                "72222",
                "55557",
                "55552",
                "55775",
                "55255",
                "55222",
                "71247",
            ],
        )
    ),
    " ": "00000",
    ".": "00002",
    ",": "00012",
    "-": "00700",
    "+": "02720",
    "=": "07070",
    ":": "02020",
    "_": "00007",
    "/": "11244",
    "(": "12221",
    ")": "42224",
    "%": "51245",
    "'": "22000",
    "?": "61202",
}
_GLYPH_W, _GLYPH_H = 3, 5


def _glyph(ch: str) -> np.ndarray:
    code = _FONT.get(ch.lower(), _FONT["?"])
    rows = np.array([int(c, 8) for c in code])
    return ((rows[:, None] >> np.arange(_GLYPH_W - 1, -1, -1)) & 1).astype(bool)


def _text_width(text: str, scale: int) -> int:
    return max(0, len(text) * (_GLYPH_W + 1) * scale - scale)


def _fit(text: str, max_width: int, scale: int) -> str:
    """`text` cut (with "..") so it fits `max_width` pixels."""
    if _text_width(text, scale) <= max_width:
        return text
    while text and _text_width(text + "..", scale) > max_width:
        text = text[:-1]
    return text + ".." if text else ""


# --- ticks ------------------------------------------------------------------------------------------------


def _limits(values: np.ndarray) -> tuple[float, float]:
    """The axis range: the data padded by 4% each side, or a made-up span where the data has none."""
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    pad = _span(lo, hi) * 0.04 if lo != hi else abs(lo) * 0.1 or 1.0
    big = sys.float_info.max
    return max(lo - pad, -big), min(hi + pad, big)


def _span(lo: float, hi: float) -> float:
    """hi - lo, as large as floats go: the plain difference overflows for data near the float limits."""
    span = hi - lo
    return span if math.isfinite(span) else sys.float_info.max


def _fraction(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Where `v` lies between `lo` (0) and `hi` (1), without overflowing where hi - lo would."""
    if math.isfinite(hi - lo):
        return (v - lo) / (hi - lo)
    return (v * 0.5 - lo * 0.5) / (hi * 0.5 - lo * 0.5)


def _nice_ticks(lo: float, hi: float, target: int) -> tuple[list[float], float]:
    """Tick values at 1, 2 or 5 times a power of ten, about `target` of them inside [lo, hi]; and the step."""
    raw = _span(lo, hi) / max(target, 1)
    if not (math.isfinite(raw) and raw > 1e-300):  # a (near-)subnormal span: nothing nicer than the ends
        return [lo, hi], _span(lo, hi)
    exp = math.floor(math.log10(raw))
    # The nice step nearest `raw` on a log scale: between about 0.6 and 1.6 times `target` ticks.
    step = min((m * 10.0**exp for m in (1, 2, 5, 10)), key=lambda c: abs(math.log(c / raw)))
    if not math.isfinite(step) or step <= 0:
        return [lo, hi], raw
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    ticks = [k * step for k in range(first, last + 1)] if last - first < 100 else [lo, hi]
    return ticks, step


def _format_ticks(ticks: list[float], step: float) -> list[str]:
    """Labels as short as the step allows: fixed-point for everyday magnitudes, else 1.5e-5 style."""
    biggest = max((abs(t) for t in ticks), default=0.0)
    exp = math.floor(math.log10(step)) if step > 0 and math.isfinite(step) else 0
    if biggest < 1e6 and step >= 1e-4:
        labels = [f"{t:.{max(0, -exp)}f}" for t in ticks]
    else:
        digits = min(6, max(0, math.floor(math.log10(biggest)) - exp)) if biggest > 0 else 0
        labels = []
        for t in ticks:
            if t == 0:
                labels.append("0")
                continue
            mantissa, _, power = f"{t:.{digits}e}".partition("e")
            labels.append(f"{mantissa}e{int(power)}")
    # "-0" and "-0.0" come from rounding a tiny negative tick: it is zero.
    return [lab[1:] if lab.startswith("-") and not lab.strip("-0.e") else lab for lab in labels]


# --- the numpy renderer -----------------------------------------------------------------------------------


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.img = np.full((height, width, 3), 255, dtype=np.uint8)
        self.h, self.w = height, width

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fill the pixels x0 <= x < x1, y0 <= y < y1 (clipped to the image)."""
        x0, x1 = max(x0, 0), min(x1, self.w)
        y0, y1 = max(y0, 0), min(y1, self.h)
        if x0 < x1 and y0 < y1:
            self.img[y0:y1, x0:x1] = color

    def frame(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """A 1-px outline whose outer corners are (x0, y0) and (x1 - 1, y1 - 1)."""
        self.rect(x0, y0, x1, y0 + 1, color)
        self.rect(x0, y1 - 1, x1, y1, color)
        self.rect(x0, y0, x0 + 1, y1, color)
        self.rect(x1 - 1, y0, x1, y1, color)

    def text(self, x: int, y: int, text: str, color: Color, scale: int = 2) -> None:
        """`text` with its top-left corner at (x, y)."""
        for i, ch in enumerate(text):
            if ch == " ":
                continue
            mask = np.kron(_glyph(ch), np.ones((scale, scale), dtype=bool)).astype(bool)
            gx = x + i * (_GLYPH_W + 1) * scale
            ys, xs = np.nonzero(mask)
            ys, xs = ys + y, xs + gx
            keep = (xs >= 0) & (xs < self.w) & (ys >= 0) & (ys < self.h)
            self.img[ys[keep], xs[keep]] = color

    def polyline(
        self, px: np.ndarray, py: np.ndarray, color: Color, clip: tuple[int, int, int, int], ink: np.ndarray
    ) -> None:
        """Connect consecutive integer points with a continuous 2-px line (a 2x2 pen dragged along samples
        at most one pixel apart), clipped to x0 <= x < x1, y0 <= y < y1; marks the pixels in `ink`."""
        x0, y0, x1, y1 = clip
        chunk = 4096  # segments at a time: a long noisy curve has ~plot-height samples per segment
        for start in range(0, max(len(px) - 1, 1), chunk):
            sx, sy = px[start : start + chunk + 1], py[start : start + chunk + 1]
            if len(sx) == 1:
                xs, ys = sx, sy
            else:
                dx, dy = np.diff(sx), np.diff(sy)
                n = np.maximum(np.abs(dx), np.abs(dy))
                seg = np.repeat(np.arange(len(n)), n)
                k = np.arange(seg.size) - np.repeat(np.cumsum(n) - n, n)
                t = k / np.maximum(n[seg], 1)
                xs = np.append(np.rint(sx[seg] + t * dx[seg]), sx[-1]).astype(np.int64)
                ys = np.append(np.rint(sy[seg] + t * dy[seg]), sy[-1]).astype(np.int64)
            for ox, oy in ((0, 0), (1, 0), (0, 1), (1, 1)):
                qx, qy = xs + ox, ys + oy
                keep = (qx >= x0) & (qx < x1) & (qy >= y0) & (qy < y1)
                self.img[qy[keep], qx[keep]] = color
                ink[qy[keep], qx[keep]] = True


def _render_numpy(
    series: dict[str, np.ndarray], *, title: str, xlabel: str, width: int, height: int
) -> np.ndarray:
    s = 2  # font scale: 3x5 glyphs drawn as 6x10
    line_h = _GLYPH_H * s
    cv = _Canvas(width, height)

    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    shown = {name: pts for name, pts in series.items() if np.isfinite(pts[:, 1]).any()}
    finite = np.concatenate([pts[np.isfinite(pts[:, 1])] for pts in shown.values()] or [np.empty((0, 2))])
    xlo, xhi = _limits(finite[:, 0])
    ylo, yhi = _limits(finite[:, 1])

    # Layout: title on top; x tick labels and the x label below; y tick labels set the left margin.
    top = 8 + line_h + 10
    bottom = height - (6 + line_h + 8 + line_h + 8)
    yticks, ystep = _nice_ticks(ylo, yhi, max(2, (bottom - top) // 60))
    ylabels = _format_ticks(yticks, ystep)
    if not shown:  # made-up limits: numbers on the axes would suggest data
        yticks, ylabels = [], []
    left = 10 + max((_text_width(lab, s) for lab in ylabels), default=0) + 8
    right = width - 20
    target = max(2, (right - left) // 100)
    while True:  # fewer x ticks until their labels do not touch
        xticks, xstep = _nice_ticks(xlo, xhi, target)
        xlabels = _format_ticks(xticks, xstep)
        room = (right - left) * min(xstep / _span(xlo, xhi), 1.0)
        if not shown:
            xticks, xlabels = [], []
            break
        if target <= 2 or max(_text_width(lab, s) for lab in xlabels) + 16 <= room:
            break
        target -= 1

    def to_px(v: np.ndarray, lo: float, hi: float, a: int, b: int) -> np.ndarray:
        return np.rint(a + _fraction(v, lo, hi) * (b - a))

    # Grid, then curves, then the axes box on top of both, then the legend above everything.
    for t in xticks:
        x = int(to_px(np.float64(t), xlo, xhi, left, right - 1))
        cv.rect(x, top + 1, x + 1, bottom - 1, _GRID)
    for t in yticks:
        y = int(to_px(np.float64(t), ylo, yhi, bottom - 1, top))
        cv.rect(left + 1, y, right - 1, y + 1, _GRID)

    ink = np.zeros((height, width), dtype=bool)
    clip = (left + 1, top + 1, right - 1, bottom - 1)
    for name, pts in shown.items():
        px = to_px(pts[:, 0], xlo, xhi, left, right - 2)  # -2: room for the 2-px pen at the right edge
        py = to_px(pts[:, 1], ylo, yhi, bottom - 2, top)
        ok = np.isfinite(py)
        # Runs of finite points: the line breaks at a NaN, as in matplotlib.
        edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2]):
            rx, ry = px[a:b].astype(np.int64), py[a:b].astype(np.int64)
            if b - a == 1:  # a lone point: a 6x6 square, or it would be a speck
                for dx in range(-2, 3, 2):
                    for dy in range(-2, 3, 2):
                        cv.polyline(rx + dx, ry + dy, colors[name], clip, ink)
            else:
                cv.polyline(rx, ry, colors[name], clip, ink)

    cv.frame(left, top, right, bottom, _AXES)
    for t, lab in zip(xticks, xlabels):
        x = int(to_px(np.float64(t), xlo, xhi, left, right - 1))
        cv.rect(x, bottom, x + 1, bottom + 4, _AXES)
        cv.text(x - _text_width(lab, s) // 2, bottom + 6, lab, _TEXT, s)
    for t, lab in zip(yticks, ylabels):
        y = int(to_px(np.float64(t), ylo, yhi, bottom - 1, top))
        cv.rect(left - 4, y, left, y + 1, _AXES)
        cv.text(left - 6 - _text_width(lab, s), y - line_h // 2, lab, _TEXT, s)

    xl = _fit(xlabel, width - 20, s)
    cv.text((left + right - _text_width(xl, s)) // 2, bottom + 6 + line_h + 8, xl, _TEXT, s)
    tl = _fit(title, width - 20, s)
    cv.text((width - _text_width(tl, s)) // 2, 8, tl, _TEXT, s)

    if not shown:
        note = "no data"
        cv.text((left + right - _text_width(note, s)) // 2, (top + bottom - line_h) // 2, note, _TEXT, s)
    else:
        _legend(cv, shown, colors, (left, top, right, bottom), ink, s)
    return cv.img


def _legend(
    cv: _Canvas,
    shown: dict[str, np.ndarray],
    colors: dict[str, Color],
    box: tuple[int, int, int, int],
    ink: np.ndarray,
    s: int,
) -> None:
    """A framed key in the corner of the plot that hides the fewest curve pixels (matplotlib's "best")."""
    left, top, right, bottom = box
    row_h, swatch, pad = _GLYPH_H * s + 6, 20, 6
    names = [_fit(n, right - left - 2 * pad - swatch - 6 - 16, s) for n in shown]
    w = pad + swatch + 6 + max(_text_width(n, s) for n in names) + pad
    h = pad + len(names) * row_h - 6 + pad
    inset = 8
    corners = [
        (right - inset - w, top + inset),
        (left + inset, top + inset),
        (right - inset - w, bottom - inset - h),
        (left + inset, bottom - inset - h),
    ]
    x, y = min(corners, key=lambda c: int(ink[max(c[1], 0) : c[1] + h, max(c[0], 0) : c[0] + w].sum()))
    cv.rect(x, y, x + w, y + h, _WHITE)
    cv.frame(x, y, x + w, y + h, _GRID)
    for i, (name, label) in enumerate(zip(shown, names)):
        ty = y + pad + i * row_h
        cv.rect(
            x + pad, ty + _GLYPH_H * s // 2 - 1, x + pad + swatch, ty + _GLYPH_H * s // 2 + 1, colors[name]
        )
        cv.text(x + pad + swatch + 6, ty, label, _TEXT, s)
