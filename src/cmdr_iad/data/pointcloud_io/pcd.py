"""PCD (PCL) point clouds: ascii, binary and binary_compressed (LZF) reading, ascii/binary writing.

PCD has no maintained pure-Python reader, so its simple format is parsed here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ...fileio import atomic_output

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
