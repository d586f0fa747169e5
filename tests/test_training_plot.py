"""plot_curves: the built-in renderer (matplotlib blocked) writes a valid PNG that shows the curves."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from gpt2kit.training import plot as plot_mod
from gpt2kit.training.plot import PALETTE, plot_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png(data: bytes) -> np.ndarray:
    """An independent decoder for what a PNG writer may emit for 8-bit RGB: checks every chunk's CRC and
    undoes all five row filters, so the test does not just mirror the encoder."""
    assert data[:8] == PNG_SIGNATURE
    pos, idat, header, tags = 8, b"", None, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, f"bad CRC in {tag!r}"
        tags.append(tag)
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    assert tags[0] == b"IHDR" and tags[-1] == b"IEND" and b"IDAT" in tags
    assert header is not None
    w, h, depth, color_type, _, _, interlace = header
    assert (depth, color_type, interlace) == (8, 2, 0)
    raw, bpp, stride = zlib.decompress(idat), 3, w * 3
    assert len(raw) == h * (stride + 1)
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = [0] * stride
    for y in range(h):
        ftype, row = raw[y * (stride + 1)], list(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        assert ftype in (0, 1, 2, 3, 4)
        for i in range(stride if ftype else 0):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                row[i] = (row[i] + a) & 0xFF
            elif ftype == 2:
                row[i] = (row[i] + b) & 0xFF
            elif ftype == 3:
                row[i] = (row[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out[y] = row
        prev = row
    return out.reshape(h, w, 3)


def color_count(img: np.ndarray, color: tuple[int, int, int]) -> int:
    return int((img == np.array(color, dtype=np.uint8)).all(axis=2).sum())


@pytest.fixture(autouse=True)
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import matplotlib...` raise ImportError: the built-in renderer runs.
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def render(tmp_path: Path, series: dict, **kwargs) -> np.ndarray:
    path = tmp_path / "loss.png"
    plot_curves(path, series, **kwargs)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    return decode_png(data)


def test_two_series_drawn_in_their_colors_on_white(tmp_path: Path) -> None:
    train = [(s, 3.0 * math.exp(-s / 400) + 2.0) for s in range(0, 2000, 10)]
    ev = [(s, 3.0 * math.exp(-s / 400) + 2.2) for s in range(0, 2001, 250)]
    img = render(tmp_path, {"train loss": train, "eval loss": ev}, width=640, height=400)
    assert img.shape == (400, 640, 3)
    white = color_count(img, (255, 255, 255))
    assert white > 0.8 * 640 * 400
    # Far more pixels than the legend swatches (2 x 20 px each): the curves themselves are there.
    assert color_count(img, PALETTE[0]) > 800
    assert color_count(img, PALETTE[1]) > 800
    # A decreasing curve: its first pixels (leftmost columns) sit higher (smaller row) than its last.
    ys, xs = np.nonzero((img == np.array(PALETTE[0], dtype=np.uint8)).all(axis=2))
    left, right = xs < np.percentile(xs, 5), xs > np.percentile(xs, 95)
    assert ys[left].mean() < ys[right].mean()


def test_lines_are_continuous(tmp_path: Path) -> None:
    # A steep two-point line: every row between its ends holds some of its pixels (no gaps in the pen).
    img = render(tmp_path, {"a": [(0, 0.0), (1, 10.0)]}, width=300, height=300)
    mask = (img == np.array(PALETTE[0], dtype=np.uint8)).all(axis=2)
    rows = np.flatnonzero(mask.any(axis=1))
    assert rows.size > 180
    assert np.all(np.diff(rows) == 1)


def test_nan_inf_and_none_are_skipped(tmp_path: Path) -> None:
    pts = [(0, 4.0), (1, float("nan")), (2, 3.0), (3, float("inf")), (float("nan"), 1.0), (5, 2.0), (6, None)]
    img = render(tmp_path, {"train loss": pts, "eval loss": [(2, -math.inf)]})
    assert img.shape == (480, 800, 3)
    assert color_count(img, PALETTE[0]) > 0
    # A series with no finite point is left out, legend included.
    assert color_count(img, PALETTE[1]) == 0


def test_single_point_and_constant_series(tmp_path: Path) -> None:
    img = render(tmp_path, {"one": [(5, 2.5)], "flat": [(0, 1.0), (10, 1.0), (20, 1.0)]})
    assert color_count(img, PALETTE[0]) >= 36  # a 6x6 square, plus its legend swatch
    assert color_count(img, PALETTE[1]) > 300


@pytest.mark.parametrize("series", [{}, {"train loss": []}, {"train loss": [(1, math.nan)]}])
def test_no_data_still_writes_a_plot(tmp_path: Path, series: dict) -> None:
    img = render(tmp_path, series, width=320, height=200)
    assert img.shape == (200, 320, 3)
    assert color_count(img, (255, 255, 255)) > 0.9 * 320 * 200
    assert not any(color_count(img, c) for c in PALETTE)


@pytest.mark.parametrize(
    "pts",
    [
        [(0, 1e-7), (1, 3e-7), (2, 2e-7)],
        [(0, 1e9), (1e6, 1e-3), (2e6, 5e8)],
        [(0, -1e308), (1, 1e308)],
        [(0, 5e-324), (1, 0.0)],
        [(10**7, 0.5), (10**7 + 1, 0.25)],
    ],
)
def test_awkward_ranges(tmp_path: Path, pts: list) -> None:
    img = render(tmp_path, {"x": pts}, width=400, height=300)
    assert img.shape == (300, 400, 3)
    assert color_count(img, PALETTE[0]) > 40


def test_tick_labels_are_nice() -> None:
    ticks, step = plot_mod._nice_ticks(0.0, 10.0, 5)
    assert step == 2 and ticks == [0, 2, 4, 6, 8, 10]
    ticks, step = plot_mod._nice_ticks(1.93, 6.12, 5)
    assert plot_mod._format_ticks(ticks, step) == ["2", "3", "4", "5", "6"]
    ticks, step = plot_mod._nice_ticks(-0.013, 0.07, 4)
    assert plot_mod._format_ticks(ticks, step) == ["0.00", "0.02", "0.04", "0.06"]
    ticks, step = plot_mod._nice_ticks(0.9e-5, 3.1e-5, 3)
    assert plot_mod._format_ticks(ticks, step) == ["1e-5", "2e-5", "3e-5"]


def test_font_covers_what_labels_use() -> None:
    for ch in "0123456789.-+e abcdefghijklmnopqrstuvwxyz":
        assert ch in plot_mod._FONT
        assert plot_mod._glyph(ch).shape == (5, 3)
    assert plot_mod._glyph("Q").shape == (5, 3)  # capitals map onto the same shapes
    assert plot_mod._glyph("\u00e9").any()  # anything else draws as "?"


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "loss.png"
    path.write_bytes(b"old")
    plot_curves(path, {"a": [(0, 1.0), (1, 2.0)]})
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]  # no temporary left behind


def test_too_small_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_curves(tmp_path / "x.png", {}, width=50, height=50)


def test_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys; import gpt2kit.training.plot as p; "
        "p.plot_curves(sys.argv[1], {'a': [(0, 1.0), (1, 0.5)]}); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.png")], check=True)


def test_matplotlib_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "matplotlib")
    pytest.importorskip("matplotlib")
    path = tmp_path / "loss.png"
    plot_curves(path, {"train loss": [(0, 2.0), (1, math.nan), (2, 1.0)], "eval": [(1, 1.5)]})
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert struct.unpack(">II", data[16:24]) == (800, 480)  # IHDR width, height (matplotlib writes RGBA)
