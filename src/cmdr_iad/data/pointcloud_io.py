"""Point-cloud files: organised (H, W, 3) and unorganised (N, 3) clouds, read and written.

Conventions (for every reader and writer here):
- arrays are float32; a missing point is (0, 0, 0);
- NaN in a file means "no point": any point with a NaN coordinate becomes (0, 0, 0);
- ±inf in a file is an error (`DatasetError` naming the file);
- units: readers take the unit of the file (`units="m"` or `"mm"`) and return metres;
- point order is kept; extra per-point attributes (colour, normals, intensity…) are ignored.

Organised: TIFF (MVTec 3D-AD, float32 H×W×3, via tifffile), NPY (H, W, 3), PCD with HEIGHT > 1.
Unorganised: PLY (ASCII / binary little and big endian, via plyfile), PCD (ascii, binary,
binary_compressed), XYZ / TXT / PTS / CSV text, NPY (N, C ≥ 3).
tifffile and plyfile are small, well-kept readers of these formats; PCD has no such maintained
pure-Python reader, so its simple format is parsed here.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..fileio import atomic_output

UNITS = {"m": 1.0, "mm": 1e-3}
ORGANIZED_EXTS = (".tiff", ".tif", ".npy", ".pcd")
POINTS_EXTS = (".ply", ".pcd", ".xyz", ".txt", ".pts", ".csv", ".npy", ".tiff", ".tif")


# ----------------------------------------------------------------------------- helpers

def unit_scale(src: str, dst: str = "m") -> float:
    """Factor converting coordinates in unit `src` to unit `dst` ("m" or "mm")."""
    for u in (src, dst):
        if u not in UNITS:
            raise ValueError(f"unknown unit {u!r}; use one of {tuple(UNITS)}")
    return UNITS[src] / UNITS[dst]


def convert_units(points: np.ndarray, src: str, dst: str = "m") -> np.ndarray:
    """Coordinates (..., 3) from unit `src` to `dst`; missing points (zeros) stay zeros."""
    return (np.asarray(points, dtype=np.float32) * np.float32(unit_scale(src, dst))).astype(np.float32)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file")


def finalize_points(arr: np.ndarray, path: str | os.PathLike, units: str = "m") -> np.ndarray:
    """Apply the conventions to (..., 3) coordinates read from `path`: float32, NaN → 0, ±inf → error."""
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DatasetError(f"{path}: coordinates have unsupported dtype {arr.dtype}")
    a = np.asarray(arr, dtype=np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        inf = np.isinf(a)
        if inf.any():
            first = np.argwhere(inf)[0][:-1].tolist()
            raise DatasetError(f"{path}: {int(inf.any(-1).sum())} point(s) with ±inf coordinates "
                               f"(first at index {first}); NaN means 'no point', inf is not allowed")
        nan = np.isnan(a).any(-1)
        if nan.any():
            a = a.copy()
            a[nan] = 0.0
    if units != "m":
        a = convert_units(a, units, "m")
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------- PCD

_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4",
              ("U", 8): "u8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8"}


def lzf_decompress(data: bytes, out_len: int) -> bytes:
    """Decompress an LZF block (the codec of PCD `binary_compressed`)."""
    out = bytearray(out_len)
    ip = op = 0
    n = len(data)
    while ip < n:
        ctrl = data[ip]
        ip += 1
        if ctrl < 32:  # literal run of ctrl + 1 bytes
            ln = ctrl + 1
            if ip + ln > n or op + ln > out_len:
                raise ValueError("corrupt LZF data (literal run past the end)")
            out[op:op + ln] = data[ip:ip + ln]
            ip += ln
            op += ln
        else:  # back reference
            ln = ctrl >> 5
            if ip >= n:
                raise ValueError("corrupt LZF data (truncated back reference)")
            if ln == 7:
                ln += data[ip]
                ip += 1
                if ip >= n:
                    raise ValueError("corrupt LZF data (truncated back reference)")
            ref = op - ((ctrl & 0x1F) << 8) - data[ip] - 1
            ip += 1
            ln += 2
            if ref < 0 or op + ln > out_len:
                raise ValueError("corrupt LZF data (bad back reference)")
            if ref + ln <= op:
                out[op:op + ln] = out[ref:ref + ln]
            else:  # overlapping copy repeats the pattern
                for k in range(ln):
                    out[op + k] = out[ref + k]
            op += ln
    if op != out_len:
        raise ValueError(f"corrupt LZF data ({op} bytes decoded, {out_len} expected)")
    return bytes(out)


def _read_pcd(path: Path) -> tuple[np.ndarray, int, int]:
    """(points (N, 3) float array, width, height) of a PCD file (any DATA kind, extra fields ignored)."""
    raw = path.read_bytes()
    header: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise DatasetError(f"{path}: truncated PCD header (no DATA line)")
        line = raw[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        header[key.upper()] = vals
        if key.upper() == "DATA":
            break
    try:
        fields = header.get("FIELDS") or header["COLUMNS"]
        sizes = [int(s) for s in header["SIZE"]]
        types = [t.upper() for t in header["TYPE"]]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
        width = int(header["WIDTH"][0])
        height = int(header.get("HEIGHT", ["1"])[0])
        npts = int(header.get("POINTS", [str(width * height)])[0])
        kind = header["DATA"][0].lower()
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetError(f"{path}: malformed PCD header ({e!r})") from None
    if not (len(fields) == len(sizes) == len(types) == len(counts)):
        raise DatasetError(f"{path}: PCD header FIELDS/SIZE/TYPE/COUNT lengths differ")
    for c in ("x", "y", "z"):
        if c not in fields:
            raise DatasetError(f"{path}: PCD file has no '{c}' field (fields: {' '.join(fields)})")
    if npts != width * height:
        raise DatasetError(f"{path}: PCD POINTS {npts} != WIDTH×HEIGHT {width}×{height}")
    if npts == 0:
        raise DatasetError(f"{path}: PCD file contains no points")
    try:
        dts = [np.dtype("<" + _PCD_TYPES[(t, s)]) for t, s in zip(types, sizes, strict=True)]
    except KeyError as e:
        raise DatasetError(f"{path}: unsupported PCD TYPE/SIZE {e.args[0]}") from None
    body = raw[pos:]
    idx = {name: fields.index(name) for name in ("x", "y", "z")}
    if kind == "ascii":
        total = sum(counts)
        try:
            vals = np.array(body.decode("ascii").split(), dtype=np.float64)
        except (UnicodeDecodeError, ValueError) as e:
            raise DatasetError(f"{path}: malformed PCD ascii data ({e})") from None
        if vals.size < npts * total:
            raise DatasetError(f"{path}: truncated PCD data ({vals.size} values, "
                               f"{npts * total} expected)")
        vals = vals[:npts * total].reshape(npts, total)
        offs = np.cumsum([0] + counts)
        pts = np.stack([vals[:, offs[idx[c]]] for c in "xyz"], axis=1)
        dt = np.result_type(*[dts[idx[c]] for c in "xyz"])
        if np.issubdtype(dt, np.integer):
            pts = pts.astype(dt)
    elif kind == "binary":
        rec = np.dtype([(f"f{i}", d, (c,)) for i, (d, c) in enumerate(zip(dts, counts, strict=True))])
        if len(body) < npts * rec.itemsize:
            raise DatasetError(f"{path}: truncated PCD binary data ({len(body)} bytes, "
                               f"{npts * rec.itemsize} expected)")
        arr = np.frombuffer(body, dtype=rec, count=npts)
        pts = np.stack([arr[f"f{idx[c]}"][:, 0] for c in "xyz"], axis=1)
    elif kind == "binary_compressed":
        if len(body) < 8:
            raise DatasetError(f"{path}: truncated PCD binary_compressed data")
        csize, usize = np.frombuffer(body[:8], dtype="<u4")
        if len(body) < 8 + int(csize):
            raise DatasetError(f"{path}: truncated PCD binary_compressed data ({len(body) - 8} bytes, "
                               f"{int(csize)} expected)")
        try:
            un = lzf_decompress(body[8:8 + int(csize)], int(usize))
        except ValueError as e:
            raise DatasetError(f"{path}: {e}") from None
        nbytes = [npts * d.itemsize * c for d, c in zip(dts, counts, strict=True)]
        if sum(nbytes) != len(un):
            raise DatasetError(f"{path}: PCD binary_compressed size mismatch")
        starts = np.cumsum([0] + nbytes)
        cols = []
        for c in "xyz":
            i = idx[c]
            col = np.frombuffer(un, dtype=dts[i], count=npts * counts[i], offset=int(starts[i]))
            cols.append(col.reshape(npts, counts[i])[:, 0])
        pts = np.stack(cols, axis=1)
    else:
        raise DatasetError(f"{path}: unsupported PCD DATA kind {kind!r}")
    return pts, width, height


def write_pcd(path: str | os.PathLike, points: np.ndarray, *, binary: bool = True,
              missing_as_nan: bool = True) -> Path:
    """Write (N, 3) or organised (H, W, 3) points as PCD v0.7 (fields x y z, float32).

    Missing points (zeros) are written as NaN by default, the PCL convention (`is_dense` false).
    """
    path = Path(path)
    a = np.asarray(points, dtype=np.float32)
    if a.ndim == 3 and a.shape[2] == 3:
        height, width = a.shape[:2]
    elif a.ndim == 2 and a.shape[1] == 3:
        height, width = 1, a.shape[0]
    else:
        raise ValueError(f"points must be (N, 3) or (H, W, 3), got {a.shape}")
    flat = a.reshape(-1, 3).copy()
    if missing_as_nan:
        flat[~np.any(flat != 0, axis=1)] = np.nan
    head = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\n"
            f"TYPE F F F\nCOUNT 1 1 1\nWIDTH {width}\nHEIGHT {height}\nVIEWPOINT 0 0 0 1 0 0 0\n"
            f"POINTS {width * height}\nDATA {'binary' if binary else 'ascii'}\n")
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(head.encode("ascii"))
        if binary:
            f.write(flat.astype("<f4").tobytes())
        else:
            np.savetxt(f, flat, fmt="%.9g")
    return path


# ----------------------------------------------------------------------------- PLY / text / NPY

def _read_ply(path: Path) -> np.ndarray:
    from plyfile import PlyData

    try:
        with open(path, "rb") as f:
            ply = PlyData.read(f)
        v = ply["vertex"]
        names = v.data.dtype.names or ()
        missing = [c for c in "xyz" if c not in names]
        if missing:
            raise DatasetError(f"{path}: PLY vertex element has no {'/'.join(missing)} property")
        return np.stack([np.asarray(v.data[c]) for c in "xyz"], axis=1)
    except DatasetError:
        raise
    except KeyError:
        raise DatasetError(f"{path}: PLY file has no 'vertex' element") from None
    except Exception as e:  # plyfile raises several types for truncated / malformed files
        raise DatasetError(f"{path}: unreadable or truncated PLY file ({type(e).__name__}: {e})") from None


def write_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None,
              *, binary: bool = True) -> Path:
    """Write (N, 3) points (or (H, W, 3), flattened row-major) as PLY with optional colours.

    colors: (N, 3) uint8, or floats in [0, 1]; stored as uchar red/green/blue.
    """
    from plyfile import PlyData, PlyElement

    a = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        c = np.asarray(colors)
        c = c.reshape(-1, 3)
        if c.shape[0] != a.shape[0]:
            raise ValueError(f"colors {c.shape} do not match points {a.shape}")
        if np.issubdtype(c.dtype, np.floating):
            c = np.clip(np.round(c * 255.0), 0, 255)
        c = c.astype(np.uint8)
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    rec = np.empty(a.shape[0], dtype=fields)
    rec["x"], rec["y"], rec["z"] = a[:, 0], a[:, 1], a[:, 2]
    if colors is not None:
        rec["red"], rec["green"], rec["blue"] = c[:, 0], c[:, 1], c[:, 2]
    el = PlyElement.describe(rec, "vertex")
    path = Path(path)
    with atomic_output(path) as tmp:
        PlyData([el], text=not binary, byte_order="<").write(str(tmp))
    return path


def _not_float(tok: str) -> bool:
    try:
        float(tok)
        return False
    except ValueError:
        return True


def _read_text(path: Path) -> np.ndarray:
    """x y z [extra…] per line; separators space/tab/comma/semicolon; '#' comments; one header line."""
    import io

    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a text point file") from None
    lines = re.sub(r"[,;]", " ", text).splitlines()
    for i, line in enumerate(lines):  # drop one non-numeric header line such as "x y z"
        body = line.split("#", 1)[0].split()
        if body:
            if any(_not_float(t) for t in body[:3]):
                lines[i] = ""
            break
    try:
        with warnings.catch_warnings():  # "input contained no data" is reported below
            warnings.simplefilter("ignore", UserWarning)
            a = np.loadtxt(io.StringIO("\n".join(lines)), comments="#", usecols=(0, 1, 2),
                           ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise DatasetError(f"{path}: malformed text point file ({e})") from None
    if a.shape[0] == 0:
        raise DatasetError(f"{path}: no points")
    return a


def write_xyz(path: str | os.PathLike, points: np.ndarray) -> Path:
    """Write (N, 3) points as text, one `x y z` line per point."""
    a = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        np.savetxt(f, a, fmt="%.9g")
    return path


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise DatasetError(f"{path}: unreadable or truncated NPY file ({type(e).__name__}: {e})") from None


def write_npy(path: str | os.PathLike, points: np.ndarray) -> Path:
    """Write points ((N, 3) or (H, W, 3)) as float32 NPY."""
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(points, dtype=np.float32))
    return path


# ----------------------------------------------------------------------------- TIFF

def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        a = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for truncated or corrupt files
        raise DatasetError(f"{path}: unreadable or truncated TIFF file ({type(e).__name__}: {e})") from None
    if a.size == 0:
        raise DatasetError(f"{path}: unreadable or truncated TIFF file (no image data)")
    return a


def write_organized_tiff(path: str | os.PathLike, xyz: np.ndarray, *, level: int = 6) -> Path:
    """Write an organised cloud (H, W, 3) as float32 TIFF with zlib compression (MVTec 3D-AD style).

    level: zlib level 1 (fast) … 9 (small); any level reads back identically.
    """
    import tifffile

    a = np.ascontiguousarray(np.asarray(xyz, dtype=np.float32))
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"xyz must be (H, W, 3), got {a.shape}")
    path = Path(path)
    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, a, compression="zlib", compressionargs={"level": int(level)},
                         photometric="rgb")
    return path


# ----------------------------------------------------------------------------- entry points

def _check_organized(a: np.ndarray, path: Path) -> None:
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise DatasetError(f"{path}: organised point cloud must have shape (H, W, 3), got {a.shape}")
    if a.dtype not in (np.float32, np.float64):
        raise DatasetError(f"{path}: organised point cloud must be float32 (or float64), got {a.dtype}")


def read_organized(path: str | os.PathLike, units: str = "m") -> np.ndarray:
    """Read an organised cloud → float32 (H, W, 3) in metres, zeros where there is no point.

    Formats: .tiff/.tif, .npy (H, W, 3), .pcd with HEIGHT > 1.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in ORGANIZED_EXTS:
        raise DatasetError(f"{path}: unknown organised point-cloud extension {ext!r} "
                           f"(supported: {', '.join(ORGANIZED_EXTS)})")
    _check_file(path)
    if ext in (".tiff", ".tif"):
        a = _read_tiff(path)
    elif ext == ".npy":
        a = _load_npy(path)
    else:
        pts, width, height = _read_pcd(path)
        if height <= 1:
            raise DatasetError(f"{path}: PCD cloud is unorganised (HEIGHT {height}); "
                               "use read_points for unorganised clouds")
        a = pts.reshape(height, width, 3)
        if np.issubdtype(a.dtype, np.integer):
            a = a.astype(np.float32)
    _check_organized(a, path)
    return finalize_points(a, path, units)


def read_points(path: str | os.PathLike, units: str = "m", *, drop_missing: bool = False) -> np.ndarray:
    """Read any supported cloud → float32 (N, 3) in metres, in file order.

    Organised files are flattened row-major. Missing points (zeros; NaN in the file) are kept as
    zeros unless `drop_missing`.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in POINTS_EXTS:
        raise DatasetError(f"{path}: unknown point-cloud extension {ext!r} "
                           f"(supported: {', '.join(POINTS_EXTS)})")
    _check_file(path)
    if ext == ".ply":
        a = _read_ply(path)
    elif ext == ".pcd":
        a = _read_pcd(path)[0]
    elif ext in (".xyz", ".txt", ".pts", ".csv"):
        a = _read_text(path)
    elif ext == ".npy":
        a = _load_npy(path)
        if a.ndim == 3 and a.shape[2] == 3:
            a = a.reshape(-1, 3)
        elif a.ndim == 2 and a.shape[1] >= 3:
            a = a[:, :3]
        else:
            raise DatasetError(f"{path}: NPY points must have shape (N, C>=3) or (H, W, 3), "
                               f"got {a.shape}")
    else:
        a = _read_tiff(path)
        _check_organized(a, path)
        a = a.reshape(-1, 3)
    if a.shape[0] == 0:
        raise DatasetError(f"{path}: contains no points")
    pts = finalize_points(a, path, units)
    if drop_missing:
        pts = pts[np.any(pts != 0, axis=1)]
    return pts


def write_points(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Write points by extension: .ply (colours allowed), .pcd, .npy, .xyz/.txt."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".ply":
        return write_ply(path, points, colors)
    if colors is not None:
        raise ValueError(f"{path}: colours can only be written to .ply")
    if ext == ".pcd":
        return write_pcd(path, points)
    if ext == ".npy":
        return write_npy(path, points)
    if ext in (".xyz", ".txt", ".pts"):
        return write_xyz(path, points)
    raise ValueError(f"{path}: unknown point-cloud extension {ext!r}")


def write_organized(path: str | os.PathLike, xyz: np.ndarray) -> Path:
    """Write an organised cloud (H, W, 3) by extension: .tiff/.tif (zlib), .npy, .pcd."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in (".tiff", ".tif"):
        return write_organized_tiff(path, xyz)
    a = np.asarray(xyz)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"xyz must be (H, W, 3), got {a.shape}")
    if ext == ".npy":
        return write_npy(path, a)
    if ext == ".pcd":
        return write_pcd(path, a)
    raise ValueError(f"{path}: unknown organised point-cloud extension {ext!r}")
