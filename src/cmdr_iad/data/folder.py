"""Single samples from loose files (e.g. for `predict`), with size checks.

RGB: any image Pillow reads; xyz: an organised cloud (.tiff/.tif, .npy (H, W, 3), organised .pcd);
GT: a grey mask (> 127 = anomalous). All given files must have the same H × W.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DatasetError, UserInputError
from .image_io import read_mask, read_rgb
from .pointcloud_io import read_organized
from .sample import LABEL_DEFECT, LABEL_GOOD, LABEL_UNKNOWN, Sample


def load_sample(rgb_path: str | os.PathLike | None = None, xyz_path: str | os.PathLike | None = None,
                gt_path: str | os.PathLike | None = None, *, units: str = "m",
                require_points: bool = True, key: str | None = None) -> Sample:
    """Read the given files into a `Sample`.

    The label is unknown (-1) without a GT, else 1 if the GT marks any pixel and 0 otherwise.
    units: unit of the xyz file ("m" or "mm"); the sample is in metres.
    """
    if rgb_path is None and xyz_path is None:
        raise UserInputError("give an RGB image, a point cloud, or both")
    rgb_p = None if rgb_path is None else Path(rgb_path)
    xyz_p = None if xyz_path is None else Path(xyz_path)
    gt_p = None if gt_path is None else Path(gt_path)
    rgb = None if rgb_p is None else read_rgb(rgb_p)
    xyz = None if xyz_p is None else read_organized(xyz_p, units=units)
    if xyz is not None and require_points and not np.any(xyz != 0):
        raise DatasetError(f"{xyz_p}: no valid 3D point (every point is zero or NaN)")
    if rgb is not None and xyz is not None and rgb.shape[:2] != xyz.shape[:2]:
        raise DatasetError(f"{xyz_p}: xyz size {xyz.shape[0]}×{xyz.shape[1]} differs from the RGB "
                           f"size {rgb.shape[0]}×{rgb.shape[1]} of {rgb_p}")
    gt = None
    label = LABEL_UNKNOWN
    if gt_p is not None:
        gt = read_mask(gt_p)
        ref = rgb if rgb is not None else xyz
        assert ref is not None
        if gt.shape != ref.shape[:2]:
            raise DatasetError(f"{gt_p}: gt size {gt.shape[0]}×{gt.shape[1]} differs from the "
                               f"sample size {ref.shape[0]}×{ref.shape[1]}")
        label = LABEL_DEFECT if gt.any() else LABEL_GOOD
    name = key if key is not None else (rgb_p or xyz_p).stem  # type: ignore[union-attr]
    return Sample(rgb=rgb, xyz=xyz, gt=gt, label=label, defect_type="", rgb_path=rgb_p,
                  xyz_path=xyz_p, gt_path=gt_p, key=name)
