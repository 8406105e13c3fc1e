"""MVTec 3D-AD reader (also the documented folder format for custom data).

Layout::

    ROOT/<category>/train/good/{rgb,xyz}/NNN.{png,tiff}
    ROOT/<category>/validation/good/{rgb,xyz}/...
    ROOT/<category>/test/good/{rgb,xyz}/...                 (a gt/ folder here is ignored)
    ROOT/<category>/test/<defect_type>/{rgb,xyz,gt}/...     (gt: 8-bit PNG, > 127 = anomalous)

Files pair by stem (000.png ↔ 000.tiff ↔ 000.png). Order is deterministic: defect folders sorted
by name, files sorted by stem (the reference iterates `os.listdir`, whose order is the file
system's). The folder structure is checked when the dataset is built; file contents are read and
checked lazily, per item. Any problem raises `DatasetError` naming the file or folder.
xyz may also be .npy or organised .pcd (see `pointcloud_io.read_organized`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np

from ..errors import DatasetError, UserInputError
from .image_io import image_size, read_mask, read_rgb
from .pointcloud_io import UNITS, read_organized
from .sample import LABEL_DEFECT, LABEL_GOOD, Sample

SPLITS = ("train", "validation", "test")
RGB_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
XYZ_EXTS = (".tiff", ".tif", ".npy", ".pcd")
GT_EXTS = (".png",)
GOOD = "good"


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_categories(root: str | os.PathLike) -> list[str]:
    """Sorted category folders of `root` (folders that hold a train, validation or test split)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found")
    cats = [p.name for p in _visible_dirs(root) if any((p / s).is_dir() for s in SPLITS)]
    if not cats:
        raise DatasetError(f"{root}: no category folders found "
                           "(expected <root>/<category>/{train,validation,test}/...)")
    return cats


def _files_by_stem(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in exts:
            continue
        if p.stem in out:
            raise DatasetError(f"{p}: two files with stem {p.stem!r} in {folder} ({out[p.stem].name})")
        out[p.stem] = p
    return out


@dataclass(frozen=True)
class _Entry:
    key: str
    defect_type: str
    label: int
    rgb_path: Path | None
    xyz_path: Path | None
    gt_path: Path | None


def _pair(kinds: dict[str, dict[str, Path]], folder: Path) -> list[str]:
    """Check that every modality folder of `folder` holds the same stems; return them sorted."""
    names = list(kinds)
    ref = names[0]
    for other in names[1:]:
        a, b = kinds[ref], kinds[other]
        if len(a) != len(b):
            raise DatasetError(f"{folder}: {len(a)} {ref} file(s) but {len(b)} {other} file(s)")
        for stem in sorted(set(a) ^ set(b)):
            have, lack = (ref, other) if stem in a else (other, ref)
            raise DatasetError(f"{kinds[have][stem]}: no matching {lack} file with stem {stem!r} "
                               f"in {folder / lack}")
    return sorted(kinds[ref], key=lambda s: (len(s), s) if s.isdigit() else (1 << 30, s))


class MVTec3DDataset(Sequence[Sample]):
    """Samples of one category and split, read lazily; `ds[i]` → `Sample`.

    train / validation: good samples only, label 0, gt None.
    test: "good" → label 0 and an all-zero gt; other folders → label 1 with their gt masks.
    load_rgb / load_xyz: read only the modalities needed (their folders must exist).
    require_points: with xyz loaded, a cloud without any valid point is an error.
    units: unit of the xyz files ("m" or "mm"); clouds are returned in metres.
    """

    def __init__(self, root: str | os.PathLike, category: str, split: str = "train", *,
                 load_rgb: bool = True, load_xyz: bool = True, require_points: bool = True,
                 units: str = "m") -> None:
        if split not in SPLITS:
            raise UserInputError(f"split must be one of {SPLITS}, got {split!r}")
        if not (load_rgb or load_xyz):
            raise UserInputError("load at least one of rgb and xyz")
        if units not in UNITS:
            raise UserInputError(f"units must be one of {tuple(UNITS)}, got {units!r}")
        self.root = Path(root)
        self.category = category
        self.split = split
        self.load_rgb = load_rgb
        self.load_xyz = load_xyz
        self.require_points = require_points
        self.units = units
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root not found")
        cat_dir = self.root / category
        if not cat_dir.is_dir():
            try:
                known = ", ".join(list_categories(self.root))
            except DatasetError:
                known = "none"
            raise DatasetError(f"{cat_dir}: category folder not found (categories: {known})")
        split_dir = cat_dir / split
        if not split_dir.is_dir():
            raise DatasetError(f"{split_dir}: split folder not found")
        if split == "test":
            types = [p.name for p in _visible_dirs(split_dir)]
        else:
            if not (split_dir / GOOD).is_dir():
                raise DatasetError(f"{split_dir / GOOD}: folder not found")
            types = [GOOD]
        if not types:
            raise DatasetError(f"{split_dir}: empty split (no good/ or defect folders)")
        self._entries: list[_Entry] = []
        for dtype in types:
            self._entries += self._scan(split_dir / dtype, dtype)
        if not self._entries:
            raise DatasetError(f"{split_dir}: no samples")

    def _scan(self, folder: Path, defect_type: str) -> list[_Entry]:
        good = defect_type == GOOD
        need = {"rgb": self.load_rgb, "xyz": self.load_xyz, "gt": not good}
        exts = {"rgb": RGB_EXTS, "xyz": XYZ_EXTS, "gt": GT_EXTS}
        kinds: dict[str, dict[str, Path]] = {}
        for kind in ("rgb", "xyz", "gt"):
            sub = folder / kind
            if kind == "gt" and good:
                continue
            if not sub.is_dir():
                if need[kind]:
                    raise DatasetError(f"{sub}: folder not found")
                continue
            kinds[kind] = _files_by_stem(sub, exts[kind])
        if not kinds:
            raise DatasetError(f"{folder}: no rgb/ or xyz/ folder")
        stems = _pair(kinds, folder)
        if not stems:
            raise DatasetError(f"{folder}: no samples (empty rgb/xyz folders)")
        out = []
        for stem in stems:
            out.append(_Entry(
                key=f"{self.category}/{self.split}/{defect_type}/{stem}",
                defect_type=defect_type,
                label=LABEL_GOOD if good else LABEL_DEFECT,
                rgb_path=kinds.get("rgb", {}).get(stem),
                xyz_path=kinds.get("xyz", {}).get(stem),
                gt_path=kinds.get("gt", {}).get(stem),
            ))
        return out

    # -- Sequence protocol
    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, i: int) -> Sample: ...

    @overload
    def __getitem__(self, i: slice) -> list[Sample]: ...

    def __getitem__(self, i: int | slice) -> Sample | list[Sample]:
        if isinstance(i, slice):
            return [self._load(e) for e in self._entries[i]]
        return self._load(self._entries[i])

    def __repr__(self) -> str:
        return (f"MVTec3DDataset(root={str(self.root)!r}, category={self.category!r}, "
                f"split={self.split!r}, n={len(self)})")

    # -- metadata without reading files
    @property
    def keys(self) -> list[str]:
        return [e.key for e in self._entries]

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self._entries], dtype=np.int64)

    @property
    def defect_types(self) -> list[str]:
        return [e.defect_type for e in self._entries]

    def validate(self) -> None:
        """Read every sample once (raises the first `DatasetError`); see `data.validate.check_split`
        for the pre-flight check that also rejects a split of all-zero clouds."""
        for e in self._entries:
            self._load(e)

    # -- reading
    def _load(self, e: _Entry) -> Sample:
        rgb = read_rgb(e.rgb_path) if self.load_rgb and e.rgb_path is not None else None
        xyz = None
        if self.load_xyz and e.xyz_path is not None:
            xyz = read_organized(e.xyz_path, units=self.units)
            if rgb is not None and xyz.shape[:2] != rgb.shape[:2] and not _is_square_padded(xyz, rgb):
                raise DatasetError(f"{e.xyz_path}: xyz size {xyz.shape[0]}×{xyz.shape[1]} differs "
                                   f"from rgb size {rgb.shape[0]}×{rgb.shape[1]} ({e.rgb_path.name})")
            if self.require_points and not np.any(xyz != 0):
                raise DatasetError(f"{e.xyz_path}: no valid 3D point (every point is zero or NaN)")
        if rgb is not None:
            size = rgb.shape[:2]
        elif xyz is not None:
            size = xyz.shape[:2]
        else:  # pragma: no cover - at least one modality is loaded
            size = image_size(e.rgb_path)
        gt = None
        if self.split == "test":
            if e.gt_path is None:
                gt = np.zeros(size, dtype=bool)
            else:
                gt = read_mask(e.gt_path)
                padded_xyz_only = rgb is None and xyz is not None and _is_square_padded(xyz, gt)
                if gt.shape != tuple(size) and not padded_xyz_only:
                    raise DatasetError(f"{e.gt_path}: gt size {gt.shape[0]}×{gt.shape[1]} differs "
                                       f"from the sample size {size[0]}×{size[1]}")
        return Sample(rgb=rgb, xyz=xyz, gt=gt, label=e.label, defect_type=e.defect_type,
                      rgb_path=e.rgb_path, xyz_path=e.xyz_path, gt_path=e.gt_path, key=e.key)


def _is_square_padded(xyz: np.ndarray, rgb: np.ndarray) -> bool:
    """True when a non-square RGB of H×W comes with an xyz of S×S, S = max(H, W).

    That is what `cmdr-iad preprocess` (like the baselines' preprocessing) writes: the cloud is
    zero-padded to a square on disk while RGB and GT stay as they are; the loader pads RGB/GT to
    the same square, so the three stay aligned.
    """
    h, w = rgb.shape[:2]
    s = max(h, w)
    return h != w and xyz.shape[:2] == (s, s)
