"""Eyecandies reader and converter to the MVTec 3D-AD layout.

Eyecandies (Bonfiglioli et al., ACCV 2022) as downloaded, one folder per category::

    ROOT/<Category>/{train,val,test_public,test_private}/data/<id>_<item>.<ext>

with, per sample `<id>` (e.g. `000`, or `00` in the test splits): `image_0.png` … `image_5.png`
(six lightings), `depth.png` (16-bit, normalised), `info_depth.yaml` (`normalization: {min, max}`),
`normals.png`, `pose.txt` (4×4 camera-to-world) and, in test_public, `mask.png` (anomalous pixels
non-zero). The `data/` level is optional here (a split folder holding the files directly works).

Depth and points, as the dataset's own tools (`eyecandies.stages.depth`) define them:
- metric depth d = png / 65535 · (max − min) + min;
- one pinhole camera for every image: focal length 711.11 px, principal point (W/2, H/2), pixel
  (u, v) = (column, row) without a half-pixel shift:  x = (u − W/2)·d/f,  y = (v − H/2)·d/f,  z = d;
- "world" frame: p_world = pose · p_camera (pose.txt is camera-to-world). The default "camera"
  frame (z = depth, like MVTec 3D-AD's scans) skips the pose, so that `cmdr-iad preprocess` can
  then remove the conveyor plane as for MVTec 3D-AD. Pixels with d ≤ 0 are missing points.
Peers differ here: M3DM / CFM invert (K·pose) instead of applying pose·K⁻¹, cut the background
with hand-set thresholds, permute the axes and scale by 0.1; `scale` reproduces the last part.

Conversion (`convert_eyecandies`): `image_<light>` (4 by default, as M3DM/CFM) → rgb,
depth → xyz TIFF, train → train/good, val → validation/good, test_public → test/good when its mask
is empty and test/bad otherwise (gt = the mask, also written, all zero, for good samples).
test_private has no masks and is skipped. Output names are the ids zero-padded to 3 digits.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError, UserInputError

__all__ = [
    "FOCAL_LENGTH",
    "SPLITS",
    "EyecandiesItem",
    "ConvertReport",
    "list_categories",
    "list_items",
    "read_metric_depth",
    "read_pose",
    "read_mask_any",
    "depth_to_xyz",
    "load_item",
    "convert_eyecandies",
]

FOCAL_LENGTH = 711.11  # px, the same camera for every Eyecandies image
# Eyecandies split → MVTec split (test_public is divided into good / bad by its masks).
SPLITS = {"train": "train", "val": "validation", "test_public": "test"}
_ID_RE = re.compile(r"^(?P<id>.+?)_depth\.png$")


@dataclass(frozen=True)
class EyecandiesItem:
    """One sample: its category, Eyecandies split, id and the folder holding its files."""

    category: str
    split: str
    sample_id: str
    folder: Path

    def path(self, item: str, ext: str) -> Path:
        """File of one item, e.g. `path("image_4", ".png")` → `<folder>/<id>_image_4.png`."""
        return self.folder / f"{self.sample_id}_{item}{ext}"

    @property
    def out_stem(self) -> str:
        """Output file stem: the id zero-padded to 3 digits (`00` → `000`)."""
        return f"{int(self.sample_id):03d}" if self.sample_id.isdigit() else self.sample_id


def _split_dir(category_dir: Path, split: str) -> Path | None:
    d = category_dir / split
    if not d.is_dir():
        return None
    return d / "data" if (d / "data").is_dir() else d


def _is_category(d: Path) -> bool:
    return any(_split_dir(d, s) is not None for s in (*SPLITS, "test_private"))


def list_categories(root: str | Path) -> list[Path]:
    """Category folders under `root`, sorted; `root` itself when it is one category."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: Eyecandies root not found")
    if _is_category(root):
        return [root]
    cats = sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and _is_category(p))
    if not cats:
        raise DatasetError(f"{root}: no Eyecandies category found "
                           "(expected <root>/<Category>/{train,val,test_public}/data/<id>_depth.png)")
    return cats


def _id_key(sample_id: str) -> tuple:
    return (0, int(sample_id), sample_id) if sample_id.isdigit() else (1, 0, sample_id)


def list_items(category_dir: str | Path, split: str) -> list[EyecandiesItem]:
    """Samples of one split (sorted by id), found through their `<id>_depth.png` files."""
    category_dir = Path(category_dir)
    folder = _split_dir(category_dir, split)
    if folder is None:
        return []
    ids = [m.group("id") for p in folder.iterdir() if (m := _ID_RE.match(p.name))]
    return [EyecandiesItem(category_dir.name, split, i, folder) for i in sorted(ids, key=_id_key)]


# ----------------------------------------------------------------------------- readers

def _read_png(path: Path, what: str) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise DatasetError(f"{path}: {what} file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im)
    except Exception as e:
        raise DatasetError(f"{path}: unreadable or truncated {what} PNG ({type(e).__name__}: {e})") from None


def read_metric_depth(depth_png: Path, info_yaml: Path) -> np.ndarray:
    """Metric depth float32 (H, W): png / 65535 · (max − min) + min, from `info_depth.yaml`."""
    import yaml

    if not info_yaml.is_file():
        raise DatasetError(f"{info_yaml}: depth info file not found")
    try:
        info = yaml.safe_load(info_yaml.read_text())
        lo, hi = float(info["normalization"]["min"]), float(info["normalization"]["max"])
    except Exception as e:
        raise DatasetError(f"{info_yaml}: expected 'normalization: {{min: .., max: ..}}' "
                           f"({type(e).__name__}: {e})") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and hi >= lo):
        raise DatasetError(f"{info_yaml}: invalid depth range min={lo}, max={hi}")
    raw = _read_png(depth_png, "depth")
    if raw.ndim != 2 or raw.dtype not in (np.uint16, np.int32, np.uint32):
        raise DatasetError(f"{depth_png}: expected a 16-bit single-channel depth PNG, got "
                           f"{raw.dtype} {raw.shape}")
    if raw.max(initial=0) > 65535 or raw.min(initial=0) < 0:
        raise DatasetError(f"{depth_png}: depth values outside 0..65535")
    return (raw.astype(np.float32) / np.float32(65535.0) * np.float32(hi - lo)
            + np.float32(lo)).astype(np.float32)


def read_pose(path: Path) -> np.ndarray:
    """4×4 camera-to-world matrix (float64) from `pose.txt`."""
    if not path.is_file():
        raise DatasetError(f"{path}: pose file not found")
    try:
        pose = np.loadtxt(path, dtype=np.float64)
    except Exception as e:
        raise DatasetError(f"{path}: unreadable pose ({type(e).__name__}: {e})") from None
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise DatasetError(f"{path}: expected a finite 4×4 matrix, got shape {pose.shape}")
    return pose


def read_mask_any(path: Path) -> np.ndarray:
    """Grey mask uint8 (H, W) as stored (any channel count folded to grey; non-zero = anomalous)."""
    m = _read_png(path, "mask")
    if m.ndim == 3:
        m = m.max(axis=2)
    if m.ndim != 2:
        raise DatasetError(f"{path}: expected a 2-D mask, got shape {m.shape}")
    if m.dtype != np.uint8:
        m = (m > 0).astype(np.uint8) * 255
    return m


def depth_to_xyz(depth: np.ndarray, focal: float = FOCAL_LENGTH,
                 pose: np.ndarray | None = None) -> np.ndarray:
    """Organised cloud float32 (H, W, 3) from metric depth (H, W); depth ≤ 0 → (0, 0, 0).

    Camera frame x = (u − W/2)·d/f, y = (v − H/2)·d/f, z = d; with `pose` (4×4 camera-to-world)
    the points are moved to the world frame.
    """
    d = np.asarray(depth, dtype=np.float64)
    h, w = d.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([(u - w / 2.0) * d / focal, (v - h / 2.0) * d / focal, d], axis=-1)
    if pose is not None:
        pts = pts @ pose[:3, :3].T + pose[:3, 3]
    out = pts.astype(np.float32)
    out[~(d > 0)] = 0
    return out


def load_item(item: EyecandiesItem, *, light: int = 4, frame: str = "camera",
              scale: float = 1.0, focal: float = FOCAL_LENGTH):
    """Read one sample → `Sample` (rgb uint8, xyz float32 in the chosen frame × scale, gt bool).

    gt and label come from `mask.png` (required in test_public): label 1 iff any pixel is non-zero.
    Without a mask (train / val) the sample is good (label 0, gt None).
    """
    from .image_io import read_rgb
    from .sample import LABEL_DEFECT, LABEL_GOOD, Sample

    if frame not in ("camera", "world"):
        raise UserInputError(f"frame must be 'camera' or 'world', got {frame!r}")
    rgb_path = item.path(f"image_{light}", ".png")
    rgb = read_rgb(rgb_path)
    depth = read_metric_depth(item.path("depth", ".png"), item.path("info_depth", ".yaml"))
    pose = read_pose(item.path("pose", ".txt")) if frame == "world" else None
    xyz = depth_to_xyz(depth, focal, pose)
    if scale != 1.0:
        xyz = (xyz * np.float32(scale)).astype(np.float32)
    if xyz.shape[:2] != rgb.shape[:2]:
        raise DatasetError(f"{item.path('depth', '.png')}: depth size {xyz.shape[:2]} differs "
                           f"from {rgb_path.name} size {rgb.shape[:2]}")
    mask_path = item.path("mask", ".png")
    gt, label, dtype = None, LABEL_GOOD, "good"
    if item.split == "test_public" and not mask_path.is_file():
        raise DatasetError(f"{mask_path}: mask file not found (test_public samples need one)")
    if item.split.startswith("test") and mask_path.is_file():
        m = read_mask_any(mask_path)
        if m.shape != rgb.shape[:2]:
            raise DatasetError(f"{mask_path}: mask size {m.shape} differs from image size "
                               f"{rgb.shape[:2]}")
        gt = m > 0
        if gt.any():
            label, dtype = LABEL_DEFECT, "bad"
    return Sample(rgb=rgb, xyz=xyz, gt=gt, label=label, defect_type=dtype, rgb_path=rgb_path,
                  xyz_path=item.path("depth", ".png"), gt_path=mask_path if gt is not None else None,
                  key=f"{item.category}/{item.split}/{item.sample_id}")


# ----------------------------------------------------------------------------- converter

@dataclass
class ConvertReport:
    """What `convert_eyecandies` did (sample keys `<Category>/<split>/<id>`)."""

    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, one-line reason)

    @property
    def ok(self) -> bool:
        return not self.failed


def _outputs(dst: Path, item: EyecandiesItem, defect: str) -> dict[str, Path]:
    base = dst / item.category / SPLITS[item.split] / defect
    out = {"rgb": base / "rgb" / f"{item.out_stem}.png",
           "xyz": base / "xyz" / f"{item.out_stem}.tiff"}
    if item.split == "test_public":
        out["gt"] = base / "gt" / f"{item.out_stem}.png"
    return out


def _done(dst: Path, item: EyecandiesItem) -> bool:
    """All outputs of a sample exist (under good/ or bad/; each file is written atomically)."""
    defects = ("good", "bad") if item.split == "test_public" else ("good",)
    return any(all(p.is_file() for p in _outputs(dst, item, d).values()) for d in defects)


def _convert_one(item: EyecandiesItem, dst: Path, *, light: int, frame: str, scale: float,
                 focal: float) -> None:
    from ..fileio import atomic_output
    from .image_io import write_mask
    from .pointcloud_io import write_organized_tiff

    smp = load_item(item, light=light, frame=frame, scale=scale, focal=focal)
    out = _outputs(dst, item, smp.defect_type)
    # gt first and xyz last: `_done` needs all three, so a partial sample is redone next time.
    if "gt" in out:
        mask = smp.gt if smp.gt is not None else np.zeros(smp.rgb.shape[:2], dtype=bool)
        write_mask(out["gt"], mask)
    with atomic_output(out["rgb"]) as tmp:
        shutil.copyfile(smp.rgb_path, tmp)  # the original PNG, byte for byte
    write_organized_tiff(out["xyz"], smp.xyz)


def convert_eyecandies(src: str | Path, dst: str | Path, *, categories: Iterable[str] | None = None,
                       light: int = 4, frame: str = "camera", scale: float = 1.0,
                       focal: float = FOCAL_LENGTH, progress: bool = True,
                       on_item: Callable[[int, int], None] | None = None) -> ConvertReport:
    """Convert an Eyecandies root (or one category folder) to the MVTec 3D-AD layout in `dst`.

    Samples whose outputs already exist are skipped (rerun to resume); bad samples are collected
    in the report by file name and the others are still converted.
    """
    src, dst = Path(src), Path(dst)
    if not 0 <= light <= 5:
        raise UserInputError(f"light must be 0..5 (image_0 … image_5), got {light}")
    if frame not in ("camera", "world"):
        raise UserInputError(f"frame must be 'camera' or 'world', got {frame!r}")
    if not (np.isfinite(scale) and scale > 0):
        raise UserInputError(f"scale must be > 0, got {scale}")
    cats = list_categories(src)
    if categories is not None:
        wanted = {c.lower().replace(" ", "") for c in categories}
        cats = [c for c in cats if c.name.lower().replace(" ", "") in wanted]
        if not cats:
            raise DatasetError(f"{src}: none of the categories {sorted(wanted)} found")
    rs, rd = src.resolve(), dst.resolve()
    if rs == rd or rs in rd.parents or rd in rs.parents:
        raise UserInputError(f"SRC ({src}) and DST ({dst}) must be separate folders")
    items = [it for c in cats for s in SPLITS for it in list_items(c, s)]
    if not items:
        raise DatasetError(f"{src}: no Eyecandies samples found (no <id>_depth.png files)")

    from ..progress import progress as progress_bar

    report = ConvertReport()
    with progress_bar(len(items), "convert", enabled=progress) as bar:
        for k, item in enumerate(items):
            key = f"{item.category}/{item.split}/{item.sample_id}"
            if _done(dst, item):
                report.skipped.append(key)
            else:
                try:
                    _convert_one(item, dst, light=light, frame=frame, scale=scale, focal=focal)
                    report.converted.append(key)
                except DatasetError as e:
                    report.failed.append((key, str(e)))
            bar.advance()
            if on_item is not None:
                on_item(k + 1, len(items))
    return report
