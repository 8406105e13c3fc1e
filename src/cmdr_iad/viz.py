"""Pictures of anomaly maps: colour maps, heatmap overlays, coloured point clouds, SVG curves.

Everything here is numpy + Pillow (+ plyfile for PLY); matplotlib is deliberately not needed:
the PRO curve is written as a small hand-made SVG, which every browser shows and the HTML
report embeds directly.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence

import numpy as np

# Anchor colours of a perceptually ordered "turbo-like" map: dark blue → cyan → green → yellow → red.
_ANCHORS = np.array([
    [48, 18, 59], [65, 69, 171], [70, 117, 237], [57, 162, 252], [27, 207, 212],
    [36, 236, 166], [97, 252, 108], [164, 252, 59], [209, 232, 52], [243, 198, 58],
    [254, 155, 45], [243, 99, 21], [217, 56, 6], [177, 25, 1], [122, 4, 3],
], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to uint8 RGB (..., 3); values outside are clipped."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    pos = v * (len(_ANCHORS) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(_ANCHORS) - 1)
    t = (pos - lo)[..., None]
    rgb = _ANCHORS[lo] * (1.0 - t) + _ANCHORS[hi] * t
    return np.round(rgb).astype(np.uint8)


def scale_map(amap: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Scale a map to [0, 1] between `lo` and `hi` (default: the map's own min and max)."""
    a = np.asarray(amap, dtype=np.float64)
    lo = float(np.min(a)) if lo is None else float(lo)
    hi = float(np.max(a)) if hi is None else float(hi)
    if not hi > lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


def heatmap(amap: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """(H, W) map → (H, W, 3) uint8 colour image."""
    return colormap(scale_map(amap, lo, hi))


def overlay(rgb: np.ndarray | None, amap: np.ndarray, lo: float | None = None,
            hi: float | None = None, alpha: float = 0.5) -> np.ndarray:
    """Blend the heatmap of `amap` (H, W) over `rgb` (H, W, 3) uint8; without rgb, the heatmap."""
    heat = heatmap(amap, lo, hi).astype(np.float64)
    if rgb is None:
        return heat.astype(np.uint8)
    base = np.asarray(rgb, dtype=np.float64)
    if base.shape[:2] != heat.shape[:2]:
        raise ValueError(f"overlay: image {base.shape[:2]} and map {heat.shape[:2]} differ in size")
    return np.round((1.0 - alpha) * base + alpha * heat).astype(np.uint8)


def depth_image(xyz: np.ndarray) -> np.ndarray:
    """A grey rendering of an organised cloud's z channel (H, W, 3) uint8; missing points black."""
    z = np.asarray(xyz[..., 2], dtype=np.float64)
    valid = np.any(xyz != 0, axis=-1)
    out = np.zeros(z.shape, dtype=np.float64)
    if valid.any():
        out[valid] = 0.2 + 0.8 * scale_map(z[valid])
    g = np.round(out * 255).astype(np.uint8)
    return np.stack([g, g, g], axis=-1)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an (H, W, 3) or (H, W) uint8 array as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W[, 3]) uint8 image to (h, w) (for thumbnails)."""
    from PIL import Image

    h, w = size
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.NEAREST))


def coloured_points(xyz: np.ndarray, amap: np.ndarray, lo: float | None = None,
                    hi: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Valid points of an organised cloud (H, W, 3) and their anomaly colours: (N, 3), (N, 3) uint8."""
    valid = np.any(xyz != 0, axis=-1)
    if amap.shape != valid.shape:
        raise ValueError(f"point colours: cloud {valid.shape} and map {amap.shape} differ in size")
    colours = heatmap(amap, lo, hi)
    return np.asarray(xyz[valid], dtype=np.float32), colours[valid]


def ply_bytes(points: np.ndarray, colours: np.ndarray, scores: np.ndarray | None = None) -> bytes:
    """Binary little-endian PLY with x, y, z (float32), red, green, blue (uint8) and an optional
    per-vertex `anomaly` (float32) property."""
    from plyfile import PlyData, PlyElement

    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if scores is not None:
        fields.append(("anomaly", "f4"))
    v = np.empty(len(points), dtype=fields)
    v["x"], v["y"], v["z"] = points[:, 0], points[:, 1], points[:, 2]
    v["red"], v["green"], v["blue"] = colours[:, 0], colours[:, 1], colours[:, 2]
    if scores is not None:
        v["anomaly"] = scores
    buf = io.BytesIO()
    PlyData([PlyElement.describe(v, "vertex")], byte_order="<").write(buf)
    return buf.getvalue()


def line_plot_svg(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], *, title: str,
                  xlabel: str, ylabel: str, xlim: tuple[float, float] = (0.0, 1.0),
                  ylim: tuple[float, float] = (0.0, 1.0), vlines: Sequence[float] = (),
                  width: int = 520, height: int = 380) -> str:
    """A self-contained SVG line chart of `curves` = [(label, x, y), ...]."""
    ml, mr, mt, mb = 60, 20, 34, 48
    pw, ph = width - ml - mr, height - mt - mb

    def sx(x: np.ndarray | float) -> np.ndarray | float:
        return ml + (np.asarray(x, dtype=np.float64) - xlim[0]) / (xlim[1] - xlim[0]) * pw

    def sy(y: np.ndarray | float) -> np.ndarray | float:
        return mt + ph - (np.asarray(y, dtype=np.float64) - ylim[0]) / (ylim[1] - ylim[0]) * ph

    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>']
    for i in range(6):
        fx = xlim[0] + (xlim[1] - xlim[0]) * i / 5
        fy = ylim[0] + (ylim[1] - ylim[0]) * i / 5
        out.append(f'<line x1="{sx(fx):.1f}" y1="{mt}" x2="{sx(fx):.1f}" y2="{mt + ph}" stroke="#ddd"/>')
        out.append(f'<line x1="{ml}" y1="{sy(fy):.1f}" x2="{ml + pw}" y2="{sy(fy):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{sx(fx):.1f}" y="{mt + ph + 16}" text-anchor="middle">{fx:g}</text>')
        out.append(f'<text x="{ml - 6}" y="{sy(fy) + 4:.1f}" text-anchor="end">{fy:g}</text>')
    for v in vlines:
        if xlim[0] < v < xlim[1]:
            out.append(f'<line x1="{sx(v):.1f}" y1="{mt}" x2="{sx(v):.1f}" y2="{mt + ph}" '
                       'stroke="#999" stroke-dasharray="4 3"/>')
    for k, (label, x, y) in enumerate(curves):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        keep = (x >= xlim[0]) & (x <= xlim[1])
        pts = " ".join(f"{a:.2f},{b:.2f}" for a, b in zip(sx(x[keep]), sy(np.clip(y[keep], *ylim)),
                                                          strict=True))
        colour = palette[k % len(palette)]
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{pts}"/>')
        ly = mt + 14 + 16 * k
        out.append(f'<line x1="{ml + pw - 150}" y1="{ly - 4}" x2="{ml + pw - 130}" y2="{ly - 4}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{ml + pw - 126}" y="{ly}">{html.escape(label)}</text>')
    out.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 10}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{mt + ph / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {mt + ph / 2:.1f})">{html.escape(ylabel)}</text>')
    out.append("</svg>")
    return "\n".join(out)
