"""Synthetic MVTec 3D-AD-like data: procedural objects on a table, scanned by a virtual sensor.

Each sample is a perspective "scan": every pixel's ray hits the (slightly tilted) table plane or
an object described by a height field over the table. The organised cloud is in metres (camera
frame, z = depth); missing points are zeros, as in a real scan (steep walls, the projector's
shadow beside the object, specular drop-outs, an invalid border). The RGB image shades the
object's textured albedo with a random light (Lambert + ambient) and casts a shadow on the table.

Variation between samples: pose (shift, in-plane rotation), scale, table tilt and distance,
light direction / intensity / tint, texture phase and colour, sensor noise.

Defects (pixel-accurate GT = the pixels the defect changes, on the object):
- "stain": colour only (RGB changes, xyz identical to the defect-free scan);
- "bump", "dent": geometry only (xyz changes, RGB identical: shading uses the intact surface);
- "crack": both (a dark groove).
Everything is deterministic by seed; a sample depends only on (seed, category, split, index).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import UserInputError
from ..fileio import atomic_output
from .image_io import write_mask, write_rgb
from .pointcloud_io import write_organized_tiff

SHAPES = ("puck", "ring", "tile", "dome")
DEFECT_TYPES = {"stain": "rgb", "bump": "xyz", "dent": "xyz", "crack": "rgb+xyz"}
_SPLIT_CODE = {"train": 0, "validation": 1, "test": 2}

_FOV_M = 0.12  # field of view across min(H, W) at the table, metres
_Z0_M = 0.40  # camera-to-table distance, metres
_R0_M = 0.032  # nominal object radius, metres
_NOISE_M = 1e-4  # depth noise (std), metres
# scene "station": one inspection station for every part: its light (azimuth, elevation ± jitter)
# and its table texture (drawn once from _STATION_SEED) are fixed
SCENES = ("varied", "station")
_STATION_AZ, _STATION_AZ_JITTER = np.deg2rad(35), np.deg2rad(10)
_STATION_EL, _STATION_EL_JITTER = np.deg2rad(55), np.deg2rad(5)
_STATION_SEED = 11

# per shape: base albedo (RGB in [0, 1]), nominal height (m)
_STYLE = {
    "puck": ((0.70, 0.48, 0.26), 0.012),
    "ring": ((0.78, 0.55, 0.25), 0.018),
    "tile": ((0.42, 0.52, 0.66), 0.010),
    "dome": ((0.45, 0.66, 0.32), 0.020),
}


def category_names(n: int) -> list[str]:
    """The first n category names: puck, ring, tile, dome, puck2, ring2, …"""
    return [SHAPES[i % len(SHAPES)] + ("" if i < len(SHAPES) else str(i // len(SHAPES) + 1))
            for i in range(n)]


def _parse_category(name: str) -> tuple[str, int]:
    for s in SHAPES:
        if name == s:
            return s, 1
        if name.startswith(s) and name[len(s):].isdigit() and int(name[len(s):]) >= 2:
            return s, int(name[len(s):])
    raise ValueError(f"unknown synthetic category {name!r}; use {', '.join(SHAPES)} "
                     "optionally followed by a number >= 2 (e.g. puck2)")


@dataclass
class SynthSample:
    rgb: np.ndarray  # uint8 (H, W, 3)
    xyz: np.ndarray  # float32 (H, W, 3), zeros = no point
    gt: np.ndarray  # bool (H, W)


# ----------------------------------------------------------------------------- building blocks

def _value_noise(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, cells: int,
                 extent: float) -> np.ndarray:
    """Smooth noise in [0, 1]: a random (cells+1)² lattice, bilinear, over [-extent, extent]²."""
    lat = rng.random((cells + 1, cells + 1)).astype(np.float32)
    fu = np.clip((u + extent) / (2 * extent) * cells, 0, cells - 1e-4)
    fv = np.clip((v + extent) / (2 * extent) * cells, 0, cells - 1e-4)
    iu, iv = fu.astype(np.int64), fv.astype(np.int64)
    tu, tv = fu - iu, fv - iv
    tu, tv = tu * tu * (3 - 2 * tu), tv * tv * (3 - 2 * tv)  # smoothstep
    a = lat[iv, iu] * (1 - tu) + lat[iv, iu + 1] * tu
    b = lat[iv + 1, iu] * (1 - tu) + lat[iv + 1, iu + 1] * tu
    return a * (1 - tv) + b * tv


def _height(shape: str, lu: np.ndarray, lv: np.ndarray, hmax: float) -> np.ndarray:
    """Height (m) of the object over the table at local coordinates (units of object radius)."""
    rho = np.hypot(lu, lv)
    if shape == "puck":
        edge = np.sqrt(np.clip((1.0 - rho) / 0.06, 0.0, 1.0))
        groove = 0.07 * np.exp(-(((rho - 0.62) / 0.04) ** 2))
        return hmax * (1.0 + 0.12 * (1 - rho**2) - groove) * edge
    if shape == "ring":
        t = 1.0 - ((rho - 0.62) / 0.36) ** 2
        return hmax * np.sqrt(np.clip(t, 0.0, 1.0))
    if shape == "tile":
        d = np.minimum(0.95 - np.abs(lu), 0.62 - np.abs(lv))
        body = np.clip(d / 0.05, 0.0, 1.0) ** 0.6
        emboss = 0.15 * np.clip(1.0 - np.abs(lv + 0.3) / 0.06, 0.0, 1.0) * (np.abs(lu) < 0.6)
        return hmax * body * (1.0 + emboss)
    if shape == "dome":
        t = 1.0 - (lu / 1.0) ** 2 - (lv / 0.8) ** 2
        return hmax * np.sqrt(np.clip(t, 0.0, 1.0))
    raise ValueError(shape)


def _albedo(shape: str, rng: np.random.Generator, lu: np.ndarray, lv: np.ndarray,
            base: np.ndarray) -> np.ndarray:
    """Object texture (H, W, 3) in [0, 1], attached to the object frame."""
    n1 = _value_noise(rng, lu, lv, 6, 1.3)
    n2 = _value_noise(rng, lu, lv, 24, 1.3)
    if shape == "puck":  # speckled biscuit
        speck = (n2 > 0.82).astype(np.float32) * 0.35
        f = 0.85 + 0.25 * n1 - speck
    elif shape == "ring":  # browned top
        f = 0.75 + 0.35 * n1 + 0.1 * n2
    elif shape == "tile":  # stripes along the local axis
        ph = rng.uniform(0, 2 * np.pi)
        f = 0.85 + 0.12 * np.sin(lu * 9.0 + ph) + 0.1 * n1
    else:  # spotted
        ph = rng.uniform(0, 2 * np.pi, size=2)
        spots = (np.sin(lu * 11 + ph[0]) * np.sin(lv * 11 + ph[1]) > 0.55).astype(np.float32)
        f = 0.9 + 0.1 * n1 - 0.25 * spots
    return np.clip(base[None, None, :] * f[..., None], 0.0, 1.0)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift a 2D mask by (dy, dx) pixels, filling with False."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def _segment_distance(px: np.ndarray, py: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance of pixels (px, py) to a polyline of points (K, 2) (x, y)."""
    best = np.full(px.shape, np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        best = np.minimum(best, np.hypot(px - (x0 + t * dx), py - (y0 + t * dy)))
    return best


# ----------------------------------------------------------------------------- one sample

def synth_sample(category: str, *, seed: int | Sequence[int] = 0, size: tuple[int, int] = (128, 128),
                 defect: str | None = None, scene: str = "varied") -> SynthSample:
    """Render one scan. With the same `seed`, `defect=None` gives the intact version of the scan.

    scene: "varied" (default): a random light direction and table texture per scan;
    "station": one fixed station for all scans (light within ±10° azimuth and ±5° elevation of
    one direction, the same table), so that a part's appearance follows from its geometry
    except for its own texture. Both take the same random draws: the parts, poses, textures and
    defects are the same in both scenes.

    The defect's own random choices come from a separate stream, so that the defect-free and the
    defective renders share everything else.
    """
    shape, variant = _parse_category(category)
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; use one of {', '.join(SCENES)}")
    if defect is not None and defect not in DEFECT_TYPES:
        raise ValueError(f"unknown defect type {defect!r}; use one of {', '.join(DEFECT_TYPES)}")
    h_px, w_px = int(size[0]), int(size[1])
    if h_px < 16 or w_px < 16:
        raise ValueError(f"size must be at least 16×16, got {h_px}×{w_px}")
    seq = list(seed) if isinstance(seed, Sequence) else [int(seed)]
    rng = np.random.default_rng(np.random.SeedSequence(seq + [0]))
    style_rng = np.random.default_rng(np.random.SeedSequence([SHAPES.index(shape), variant, 7]))
    base_col, hmax = _STYLE[shape]
    base = np.array(base_col, dtype=np.float32)
    if variant > 1:  # a different colourway for numbered variants
        base = np.clip(base[style_rng.permutation(3)] * style_rng.uniform(0.8, 1.2, 3), 0.05, 0.95)
        hmax *= style_rng.uniform(0.8, 1.25)

    # --- camera and table
    m = min(h_px, w_px)
    z0 = _Z0_M + rng.uniform(-0.004, 0.004)
    f = m * z0 / _FOV_M
    cx = (w_px - 1) / 2 + rng.uniform(-1, 1)
    cy = (h_px - 1) / 2 + rng.uniform(-1, 1)
    vv, uu = np.mgrid[0:h_px, 0:w_px].astype(np.float32)
    rx, ry = (uu - cx) / f, (vv - cy) / f
    tilt = rng.uniform(-0.06, 0.06, 2)
    nrm = np.array([tilt[0], tilt[1], 1.0]) / np.sqrt(1.0 + tilt @ tilt)
    ndr = (nrm[0] * rx + nrm[1] * ry + nrm[2]).astype(np.float32)  # n · ray
    d_plane = z0 * nrm[2]
    X, Y = rx * (d_plane / ndr), ry * (d_plane / ndr)  # table intersection, ≈ plane coords

    # --- object pose and height field
    scale = rng.uniform(0.9, 1.1)
    theta = rng.uniform(0, 2 * np.pi)
    off = rng.uniform(-0.1, 0.1, 2) * _FOV_M
    c, s = np.cos(theta), np.sin(theta)
    r0 = _R0_M * scale
    lu = ((X - off[0]) * c + (Y - off[1]) * s) / r0
    lv = (-(X - off[0]) * s + (Y - off[1]) * c) / r0
    hgt = _height(shape, lu, lv, hmax * rng.uniform(0.92, 1.08)).astype(np.float32)
    obj = hgt > 2e-4

    # --- appearance of the intact scene
    pitch = _FOV_M / m  # metres per pixel (at the table)
    gy, gx = np.gradient(hgt, pitch)
    surf_n = np.stack([-gx, -gy, np.ones_like(hgt)], -1)
    surf_n /= np.linalg.norm(surf_n, axis=-1, keepdims=True)
    if scene == "station":
        az = _STATION_AZ + rng.uniform(-1, 1) * _STATION_AZ_JITTER
        el = _STATION_EL + rng.uniform(-1, 1) * _STATION_EL_JITTER
    else:
        az, el = rng.uniform(0, 2 * np.pi), rng.uniform(np.deg2rad(40), np.deg2rad(70))
    light = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
    ambient = rng.uniform(0.3, 0.45)
    gain = rng.uniform(0.85, 1.15)
    tint = 1.0 + rng.uniform(-0.04, 0.04, 3)
    shade = ambient + (1 - ambient) * np.clip(surf_n @ light, 0, 1) / np.sin(el)
    alb_obj = _albedo(shape, rng, lu, lv, base)
    table_col = np.array([0.55, 0.55, 0.57]) * rng.uniform(0.85, 1.1)
    tnoise = _value_noise(rng, uu / m, vv / m, 5, 1.0)
    if scene == "station":  # the same table under every part, drawn once per image size
        frng = np.random.default_rng(np.random.SeedSequence([_STATION_SEED, h_px, w_px]))
        table_col = np.array([0.55, 0.55, 0.57]) * frng.uniform(0.85, 1.1)
        tnoise = _value_noise(frng, uu / m, vv / m, 5, 1.0)
    alb_table = table_col[None, None, :] * (0.9 + 0.15 * tnoise[..., None])
    shadow_len = max(1, round(0.04 * m / np.tan(el)))
    cast = _shift(obj, int(round(-np.sin(az) * shadow_len)), int(round(-np.cos(az) * shadow_len)))
    table_shade = np.where(cast & ~obj, 0.6, 1.0)
    albedo = np.where(obj[..., None], alb_obj, alb_table).astype(np.float32)
    light_map = np.where(obj, shade, table_shade).astype(np.float32)

    # --- missing points of the intact scene (depend on nothing the defect changes)
    slope = np.hypot(gx, gy)
    missing = slope > 3.0
    proj = rng.uniform(0, 2 * np.pi)
    plen = max(1, round(0.03 * m))
    missing |= _shift(obj, int(round(np.sin(proj) * plen)), int(round(np.cos(proj) * plen))) & ~obj
    for _ in range(int(rng.integers(0, 4))):  # specular drop-outs
        py, px = rng.uniform(0, h_px), rng.uniform(0, w_px)
        rad = rng.uniform(0.008, 0.03) * m
        missing |= (vv - py) ** 2 + (uu - px) ** 2 < rad**2
    for side in range(4):  # invalid border strips
        if rng.random() < 0.5:
            k = int(rng.uniform(0.0, 0.06) * m)
            if k:
                sl = [(slice(0, k), slice(None)), (slice(h_px - k, None), slice(None)),
                      (slice(None), slice(0, k)), (slice(None), slice(w_px - k, None))][side]
                missing[sl] = True
    noise_z = rng.normal(0.0, _NOISE_M, (h_px, w_px)).astype(np.float32)
    noise_rgb = rng.normal(0.0, 0.012, (h_px, w_px, 3)).astype(np.float32)

    # --- defect
    gt = np.zeros((h_px, w_px), dtype=bool)
    dh = np.zeros_like(hgt)
    col_mul = np.ones((h_px, w_px, 3), dtype=np.float32)
    if defect is not None:
        drng = np.random.default_rng(np.random.SeedSequence(seq + [1, list(DEFECT_TYPES).index(defect)]))
        gt, dh, col_mul = _make_defect(defect, drng, obj, hgt, uu, vv, m)

    # --- compose
    depth = (d_plane - (hgt + dh)) / ndr + noise_z  # distance along the ray (z of the point)
    xyz = np.stack([rx * depth, ry * depth, depth], -1).astype(np.float32)
    xyz[missing] = 0.0
    rgb = albedo * col_mul * light_map[..., None] * (gain * tint)[None, None, :] + noise_rgb
    rgb8 = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    return SynthSample(rgb=rgb8, xyz=xyz, gt=gt)


def _make_defect(kind: str, rng: np.random.Generator, obj: np.ndarray, hgt: np.ndarray,
                 uu: np.ndarray, vv: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt, height change (m), colour multiplier) of one defect placed on the object."""
    inside = ndimage.distance_transform_edt(obj)
    radius = rng.uniform(0.06, 0.09) * m
    radius = float(min(radius, max(2.5, 0.8 * inside.max())))
    cand = np.argwhere((inside >= radius + 1) & (hgt > 0.004))
    if len(cand) == 0:
        cand = np.argwhere(inside >= 0.8 * inside.max())
    cy, cx = cand[rng.integers(len(cand))].astype(np.float32)
    r = np.hypot(uu - cx, vv - cy)
    dh = np.zeros_like(hgt)
    col = np.ones(hgt.shape + (3,), dtype=np.float32)
    if kind == "stain":
        ang = np.arctan2(vv - cy, uu - cx)
        k, ph = int(rng.integers(3, 6)), rng.uniform(0, 2 * np.pi)
        blob = r < radius * (1.0 + 0.18 * np.sin(k * ang + ph))
        mask = blob & obj
        tone = np.array([rng.uniform(0.25, 0.5), rng.uniform(0.2, 0.4), rng.uniform(0.3, 0.7)],
                        dtype=np.float32)
        col[mask] = tone
    elif kind in ("bump", "dent"):
        depth = rng.uniform(0.0025, 0.004)
        support = (r < radius) & obj
        prof = np.where(support, 1.0 - (r / radius) ** 4, 0.0).astype(np.float32)
        sign = 1.0 if kind == "bump" else -1.0
        cap = np.maximum(hgt - 5e-4, 0.0) if sign < 0 else np.inf  # a dent stays above the table
        dh = np.where(support, sign * np.minimum(depth * prof, cap), 0.0).astype(np.float32)
        mask = support & (dh != 0)
    else:  # crack: a random polyline groove, darkened
        n_seg = 6
        length = rng.uniform(2.0, 3.0) * radius
        ang = rng.uniform(0, 2 * np.pi)
        pts = [(cx, cy)]
        for _ in range(n_seg):
            ang += rng.normal(0, 0.5)
            x, y = pts[-1]
            pts.append((x + np.cos(ang) * length / n_seg, y + np.sin(ang) * length / n_seg))
        dist = _segment_distance(uu, vv, np.array(pts, dtype=np.float32))
        mask = (dist < max(1.0, 0.012 * m)) & obj
        depth = rng.uniform(0.0015, 0.003)
        dh = np.where(mask, -np.minimum(depth, np.maximum(hgt - 5e-4, 0.0)), 0.0).astype(np.float32)
        col[mask] = 0.35
    return mask, dh, col


# ----------------------------------------------------------------------------- dataset

def _clear_previous(out: Path) -> None:
    """Make `out` ready: new or empty, or a previous synthetic set (its categories are removed)."""
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    meta = out / "synthetic.json"
    if not meta.is_file():
        raise UserInputError(f"{out}: folder is not empty and holds no synthetic dataset "
                             "(synthetic.json); choose a new or empty folder")
    try:
        old = json.loads(meta.read_text())["categories"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserInputError(f"{meta}: unreadable ({e}); remove the folder first") from None
    for c in old:
        try:
            _parse_category(c)  # only our own category names, never a path
        except ValueError:
            continue
        shutil.rmtree(out / c, ignore_errors=True)
    meta.unlink()


def generate_dataset(out: str | os.PathLike, categories: Sequence[str] | int = ("puck", "ring"),
                     n_train: int = 8, n_val: int = 2, n_test_good: int = 3, n_test_defect: int = 1,
                     size: tuple[int, int] = (128, 128), seed: int = 0,
                     defect_types: Sequence[str] = tuple(DEFECT_TYPES),
                     on_sample: Callable[[int, int], None] | None = None,
                     scene: str = "varied") -> Path:
    """Write a dataset in the MVTec 3D-AD layout under `out` and return `out`.

    `<cat>/{train,validation}/good/{rgb,xyz}`, `<cat>/test/good/{rgb,xyz,gt}`,
    `<cat>/test/<defect>/{rgb,xyz,gt}` with `n_test_defect` samples per defect type; PNG rgb,
    float32 zlib TIFF xyz (metres), PNG gt 0/255, plus `synthetic.json` describing the set.
    `out` must be new, empty, or a previous synthetic set (which is replaced). Files are written
    atomically; the same arguments always give identical files.
    on_sample(done, total) is called after each sample (progress bars). scene: see
    :func:`synth_sample`.
    """
    cats = category_names(categories) if isinstance(categories, int) else list(categories)
    if not cats:
        raise ValueError("at least one category is needed")
    for c in cats:
        _parse_category(c)
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test_good", n_test_good),
                    ("n_test_defect", n_test_defect)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    if n_train < 1:
        raise ValueError("n_train must be >= 1")
    for d in defect_types:
        if d not in DEFECT_TYPES:
            raise ValueError(f"unknown defect type {d!r}; use one of {', '.join(DEFECT_TYPES)}")
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; use one of {', '.join(SCENES)}")
    out = Path(out)
    _clear_previous(out)
    plan: list[tuple[str, str, str, int]] = []  # category, split, type, index
    for c in cats:
        plan += [(c, "train", "good", i) for i in range(n_train)]
        plan += [(c, "validation", "good", i) for i in range(n_val)]
        plan += [(c, "test", "good", i) for i in range(n_test_good)]
        for d in defect_types:
            plan += [(c, "test", d, i) for i in range(n_test_defect)]
    for k, (c, split, dtype, i) in enumerate(plan):
        shape, variant = _parse_category(c)
        type_code = 0 if dtype == "good" else 1 + list(DEFECT_TYPES).index(dtype)
        sseed = [int(seed), SHAPES.index(shape), variant, _SPLIT_CODE[split], type_code, i]
        smp = synth_sample(c, seed=sseed, size=size, defect=None if dtype == "good" else dtype,
                           scene=scene)
        folder = out / c / split / dtype
        stem = f"{i:03d}"
        write_rgb(folder / "rgb" / f"{stem}.png", smp.rgb, compress_level=1)
        write_organized_tiff(folder / "xyz" / f"{stem}.tiff", smp.xyz, level=1)
        if split == "test":
            write_mask(folder / "gt" / f"{stem}.png", smp.gt)
        if on_sample is not None:
            on_sample(k + 1, len(plan))
    meta = {
        "generator": "cmdr_iad.data.synthetic", "seed": int(seed), "size": [int(size[0]), int(size[1])],
        "categories": cats, "n_train": n_train, "n_val": n_val, "n_test_good": n_test_good,
        "n_test_defect_per_type": n_test_defect,
        "defect_types": {d: DEFECT_TYPES[d] for d in defect_types}, "units": "m", "scene": scene,
    }
    with atomic_output(out / "synthetic.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return out


def cloud_with_valid_fraction(xyz: np.ndarray, fraction: float) -> np.ndarray:
    """A copy of the organised cloud ``xyz`` (H, W, 3) with exactly ``round(fraction·H·W)``
    valid points, the grid points nearest the centre (one compact object, like a preprocessed
    scan); every other point is zeroed (a zero coordinate marks a missing point). Missing points
    inside that disc are filled in on the cloud's plane (x, y fitted linearly to the pixel
    position, z the median depth), so any fraction can be reached.

    Raises `UserInputError` for a bad shape or fraction, or a cloud with fewer than 3 points."""
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise UserInputError(f"xyz must be (H, W, 3), got {xyz.shape}")
    if not 0.0 <= fraction <= 1.0:
        raise UserInputError(f"the valid fraction must be in [0, 1], got {fraction}")
    h, w, _ = xyz.shape
    valid = (xyz != 0).all(axis=2)
    if int(valid.sum()) < 3:
        raise UserInputError("the cloud has fewer than 3 valid points")
    yy, xx = np.mgrid[0:h, 0:w]
    dist = ((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2).ravel()
    keep = np.zeros(h * w, dtype=bool)
    keep[np.argsort(dist, kind="stable")[:int(round(fraction * h * w))]] = True
    keep = keep.reshape(h, w)
    out = np.where(keep[..., None], xyz, 0).astype(xyz.dtype)
    fill = keep & ~valid
    if fill.any():
        design = np.stack([xx[valid], yy[valid], np.ones(int(valid.sum()))], axis=1)
        coef = np.linalg.lstsq(design, xyz[valid][:, :2], rcond=None)[0]  # (3, 2)
        at = np.stack([xx[fill], yy[fill], np.ones(int(fill.sum()))], axis=1) @ coef
        out[fill, 0], out[fill, 1] = at[:, 0], at[:, 1]
        out[fill, 2] = np.median(xyz[valid][:, 2])
        out[fill] = np.where(out[fill] == 0, 1e-6, out[fill])  # a filled point is never "missing"
    return out
