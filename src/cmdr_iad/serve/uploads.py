"""Uploaded files → a validated `Sample`, or an `UploadError` carrying the HTTP status.

Files are written to a private temporary folder under their own (sanitised) suffix and read with
the same readers as `cmdr-iad predict` (`data.folder.load_sample`), so an upload is checked
exactly like a file on disk: truncated images, wrong shapes or dtypes, NaN/inf coordinates,
rgb/xyz size mismatches.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CmdrIadError

__all__ = ["UploadError", "RGB_SUFFIXES", "XYZ_SUFFIXES", "read_upload_sample"]

RGB_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
XYZ_SUFFIXES = (".tiff", ".tif", ".npy", ".pcd")
_MAGIC = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"BM": ".bmp", b"II*\x00": ".tiff",
          b"MM\x00*": ".tiff", b"\x93NUMPY": ".npy"}


class UploadError(Exception):
    """A bad request: ``status`` (400, 413, 415, 422) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _suffix(field: str, filename: str | None, data: bytes, allowed: tuple[str, ...]) -> str:
    """The file type of an upload: its name's suffix, else its magic bytes (415 when unknown)."""
    suf = Path(filename or "").suffix.lower()
    if suf in allowed:
        return suf
    for magic, s in _MAGIC.items():
        if data.startswith(magic) and s in allowed:
            return s
    if data[:16].lstrip().upper().startswith((b"# .PCD", b"VERSION")) and ".pcd" in allowed:
        return ".pcd"
    raise UploadError(415, f"{field}: {filename or 'upload'} is not a supported file "
                           f"(expected {', '.join(allowed)})")


def read_upload_sample(rgb: tuple[str | None, bytes] | None, xyz: tuple[str | None, bytes] | None,
                       units: str = "m", key: str = "upload") -> Any:
    """(filename, bytes) of the rgb and/or xyz fields → `Sample` (paths point at nothing kept).

    Raises `UploadError`: 400 no file at all or empty files, 415 unsupported types, 422 files
    that do not read (truncated, wrong shape/dtype, NaN/inf, size mismatch) or bad units.
    """
    from ..data.folder import load_sample

    if rgb is None and xyz is None:
        raise UploadError(400, "no file: send an 'rgb' image and/or an 'xyz' point cloud")
    if units not in ("m", "mm"):
        raise UploadError(422, f"units must be 'm' or 'mm', got {units!r}")
    tmp = Path(tempfile.mkdtemp(prefix="cmdr-iad-upload-"))
    try:
        paths: dict[str, Path | None] = {"rgb": None, "xyz": None}
        for field, item, allowed in (("rgb", rgb, RGB_SUFFIXES), ("xyz", xyz, XYZ_SUFFIXES)):
            if item is None:
                continue
            name, data = item
            if not data:
                raise UploadError(400, f"{field}: {name or 'upload'} is empty")
            p = tmp / f"{field}{_suffix(field, name, data, allowed)}"
            p.write_bytes(data)
            paths[field] = p
        try:
            s = load_sample(paths["rgb"], paths["xyz"], units=units, require_points=False, key=key)
        except CmdrIadError as e:
            msg = str(e)
            for field in ("rgb", "xyz"):  # name the uploaded file, not our temporary copy
                p, item = paths[field], rgb if field == "rgb" else xyz
                if p is not None:
                    msg = msg.replace(str(p), f"{field} ({item[0] or 'upload'})")
            raise UploadError(422, msg.replace("\n", " ")) from e
        s.rgb_path = None if rgb is None else Path(rgb[0] or "rgb")
        s.xyz_path = None if xyz is None else Path(xyz[0] or "xyz")
        return s
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
