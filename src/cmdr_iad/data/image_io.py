"""RGB images and ground-truth masks: read with validation, write atomically (PNG).

Reading follows the reference loader: RGB through Pillow `convert("RGB")`, masks through
`convert("L")` and the threshold value/255 > 0.5 (i.e. value >= 128).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DatasetError
from ..fileio import atomic_output


def _open(path: Path, mode: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file")
    try:
        with Image.open(path) as im:
            return np.array(im.convert(mode))  # convert() forces a full decode
    except Exception as e:  # Pillow raises OSError / SyntaxError / ValueError on bad files
        raise DatasetError(f"{path}: unreadable or truncated image ({type(e).__name__}: {e})") from None


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H, W, 3)."""
    return _open(Path(path), "RGB")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """bool (H, W): grey value > 127 (the reference's value/255 > 0.5)."""
    return _open(Path(path), "L") > 127


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) from the image header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:
        raise DatasetError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    return int(h), int(w)


def write_rgb(path: str | os.PathLike, rgb: np.ndarray, *, compress_level: int = 6) -> Path:
    """Write uint8 (H, W, 3) as PNG (atomic); compress_level 0 (fast) … 9 (small)."""
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 (H, W, 3), got {a.dtype} {a.shape}")
    path = Path(path)
    with atomic_output(path) as tmp:
        Image.fromarray(np.ascontiguousarray(a)).save(tmp, format="PNG", compress_level=compress_level)
    return path


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a (H, W) mask as 8-bit grey PNG with values 0/255 (atomic)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {m.shape}")
    path = Path(path)
    with atomic_output(path) as tmp:
        Image.fromarray(m.astype(bool).astype(np.uint8) * 255).save(tmp, format="PNG")
    return path
