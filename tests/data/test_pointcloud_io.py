"""Point-cloud readers and writers: round trips, files written by other tools, bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from cmdr_iad.data.pointcloud_io import (
    atomic_output,
    convert_units,
    lzf_decompress,
    read_organized,
    read_points,
    write_organized,
    write_pcd,
    write_ply,
    write_points,
)
from cmdr_iad.errors import DatasetError


@pytest.fixture
def organised():
    rng = np.random.default_rng(1)
    xyz = rng.normal(0, 0.1, (7, 9, 3)).astype(np.float32)
    xyz[0, :3] = 0.0  # missing points
    xyz[4, 4] = 0.0
    return xyz


@pytest.mark.parametrize("ext", [".tiff", ".npy", ".pcd"])
def test_organised_round_trip(tmp_path, organised, ext):
    p = write_organized(tmp_path / f"c{ext}", organised)
    back = read_organized(p)
    assert back.dtype == np.float32 and back.shape == organised.shape
    np.testing.assert_array_equal(back, organised)
    np.testing.assert_array_equal(read_points(p), organised.reshape(-1, 3))
    assert read_points(p, drop_missing=True).shape == (63 - 4, 3)


@pytest.mark.parametrize("ext", [".ply", ".pcd", ".npy", ".xyz"])
def test_points_round_trip(tmp_path, organised, ext):
    pts = organised.reshape(-1, 3)
    p = write_points(tmp_path / f"c{ext}", pts)
    np.testing.assert_array_equal(read_points(p), pts)  # order and zeros kept


def test_ply_colours_and_ascii(tmp_path, organised):
    pts = organised.reshape(-1, 3)
    cols = np.linspace(0, 1, pts.shape[0] * 3).reshape(-1, 3)
    p = write_ply(tmp_path / "c.ply", pts, cols, binary=False)
    ply = PlyData.read(str(p))
    assert ply.text and ply["vertex"]["red"].dtype == np.uint8
    assert ply["vertex"]["blue"][-1] == 255
    np.testing.assert_allclose(read_points(p), pts, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("fmt", [("ascii", True), ("<", False), (">", False)])
def test_ply_written_by_plyfile(tmp_path, fmt):
    """A PLY from another writer: doubles, extra properties, a face element, any byte order."""
    rng = np.random.default_rng(2)
    n = 50
    v = np.empty(n, dtype=[("nx", "f4"), ("x", "f8"), ("y", "f8"), ("z", "f8"), ("intensity", "u2")])
    pts = rng.normal(0, 1, (n, 3))
    v["x"], v["y"], v["z"] = pts.T
    v["nx"], v["intensity"] = 1.0, 7
    pts[5] = np.nan
    v["x"][5] = np.nan
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    byte_order, text = ("=", True) if fmt[0] == "ascii" else (fmt[0], False)
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(faces, "face")],
            text=text, byte_order=byte_order).write(str(tmp_path / "o.ply"))
    got = read_points(tmp_path / "o.ply")
    exp = pts.astype(np.float32)
    exp[5] = 0.0  # NaN = missing point
    np.testing.assert_allclose(got, exp, rtol=1e-6)
    assert got[5].tolist() == [0.0, 0.0, 0.0]


PCL_ASCII = b"""# .PCD v.7 - Point Cloud Data file format
VERSION .7
FIELDS x y z rgb normal_x _ label
SIZE 4 4 4 4 4 1 4
TYPE F F F F F U U
COUNT 1 1 1 1 1 3 1
WIDTH 3
HEIGHT 1
VIEWPOINT 0 0 0 1 0 0 0
POINTS 3
DATA ascii
0.93773 0.33763 0 4.2108e+06 0.5 0 0 0 1
0.90805 nan 0 4.2108e+06 0.5 0 0 0 2
-0.5 0.25 1.5e-3 4.2108e+06 0.5 0 0 0 3
"""


def test_pcd_ascii_written_like_pcl(tmp_path):
    p = tmp_path / "pcl.pcd"
    p.write_bytes(PCL_ASCII)
    got = read_points(p)
    exp = np.array([[0.93773, 0.33763, 0], [0, 0, 0], [-0.5, 0.25, 1.5e-3]], np.float32)
    np.testing.assert_array_equal(got, exp)
    with pytest.raises(DatasetError, match="unorganised"):
        read_organized(p)


def _pcd_header(fields, sizes, types, counts, w, h, data):
    return (f"VERSION 0.7\nFIELDS {' '.join(fields)}\nSIZE {' '.join(map(str, sizes))}\n"
            f"TYPE {' '.join(types)}\nCOUNT {' '.join(map(str, counts))}\nWIDTH {w}\nHEIGHT {h}\n"
            f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {w * h}\nDATA {data}\n").encode()


def _lzf_literals(b: bytes) -> bytes:
    """A valid LZF stream made of literal runs only."""
    out = bytearray()
    for i in range(0, len(b), 32):
        chunk = b[i:i + 32]
        out += bytes([len(chunk) - 1]) + chunk
    return bytes(out)


@pytest.fixture
def mixed_cloud():
    rng = np.random.default_rng(3)
    h, w = 4, 5
    rec = np.zeros(h * w, dtype=[("intensity", "<u2"), ("x", "<f4"), ("y", "<f4"), ("z", "<f8"),
                                 ("rgb", "<u4")])
    pts = rng.normal(0, 1, (h * w, 3))
    rec["x"], rec["y"], rec["z"] = pts.T
    rec["intensity"], rec["rgb"] = 9, 0xFF0000
    exp = np.stack([rec["x"], rec["y"], rec["z"].astype(np.float32)], 1)
    args = (["intensity", "x", "y", "z", "rgb"], [2, 4, 4, 8, 4], list("UFFFU"), [1] * 5, w, h)
    return rec, exp.reshape(h, w, 3), args


def test_pcd_binary_organised(tmp_path, mixed_cloud):
    rec, exp, args = mixed_cloud
    p = tmp_path / "b.pcd"
    p.write_bytes(_pcd_header(*args, "binary") + rec.tobytes())
    np.testing.assert_array_equal(read_organized(p), exp)
    np.testing.assert_array_equal(read_points(p), exp.reshape(-1, 3))


def test_pcd_binary_compressed(tmp_path, mixed_cloud):
    rec, exp, args = mixed_cloud
    soa = b"".join(rec[name].tobytes() for name in rec.dtype.names)  # field by field
    comp = _lzf_literals(soa)
    p = tmp_path / "c.pcd"
    p.write_bytes(_pcd_header(*args, "binary_compressed") + struct.pack("<II", len(comp), len(soa))
                  + comp)
    np.testing.assert_array_equal(read_organized(p), exp)


def test_lzf_back_references():
    # "abc" literal, then a 6-byte overlapping copy from 3 back, then a long (len 7+2+2) copy
    stream = b"\x02abc" + bytes([(4 << 5) | 0, 2]) + bytes([(7 << 5) | 0, 2, 8])
    assert lzf_decompress(stream, 9 + 11) == b"abc" * 6 + b"ab"
    with pytest.raises(ValueError):
        lzf_decompress(b"\x02abc" + bytes([(4 << 5), 9]), 9)


def test_text_points(tmp_path):
    p = tmp_path / "s.xyz"
    p.write_text("# scanner export\nx,y,z,intensity\n1,2,3,0.5\n4.5, 5, 6 ,1\n\nnan 1 1 0\n")
    np.testing.assert_array_equal(read_points(p), [[1, 2, 3], [4.5, 5, 6], [0, 0, 0]])
    np.testing.assert_allclose(read_points(p, units="mm")[1], [4.5e-3, 5e-3, 6e-3], rtol=1e-6)


def test_units():
    a = np.array([[1000.0, 0, 0], [0, 0, 0]], np.float32)
    np.testing.assert_array_equal(convert_units(a, "mm", "m"), [[1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(convert_units(a, "m", "mm")[0], [1e6, 0, 0])
    with pytest.raises(ValueError):
        convert_units(a, "cm")


def test_nan_is_missing_and_inf_is_an_error(tmp_path, organised):
    a = organised.copy()
    a[2, 3, 1] = np.nan
    p = tmp_path / "n.npy"
    np.save(p, a)
    got = read_organized(p)
    assert got[2, 3].tolist() == [0, 0, 0] and np.isfinite(got).all()
    a[1, 1, 2] = -np.inf
    for q in (tmp_path / "i.npy", tmp_path / "i.tiff"):
        write_organized(q, a) if q.suffix == ".tiff" else np.save(q, a)
        with pytest.raises(DatasetError, match=f"{q.name}.*inf"):
            read_organized(q)
    q = tmp_path / "i.xyz"
    q.write_text("1 2 3\n1 inf 2\n")
    with pytest.raises(DatasetError, match="i.xyz.*inf"):
        read_points(q)


def test_bad_files(tmp_path, organised):
    for name, body in [("a.obj", b"v 1 2 3\n"), ("e.ply", b""), ("e.pcd", b"")]:
        (tmp_path / name).write_bytes(body)
        with pytest.raises(DatasetError, match=name):
            read_points(tmp_path / name)
    with pytest.raises(DatasetError, match="missing.ply.*not found"):
        read_points(tmp_path / "missing.ply")
    with pytest.raises(DatasetError, match="c.ply.*organised point-cloud extension"):
        read_organized(tmp_path / "c.ply")
    # truncated binary files
    for name in ("t.ply", "t.pcd", "t.tiff", "t.npy"):
        p = write_points(tmp_path / name, organised.reshape(-1, 3)) if name != "t.tiff" else \
            write_organized(tmp_path / name, organised)
        raw = p.read_bytes()
        p.write_bytes(raw[: len(raw) - 60])
        with pytest.raises(DatasetError, match=name):
            read_points(p)
    # wrong shape / dtype of an organised cloud
    np.save(tmp_path / "s.npy", organised[..., :2])
    with pytest.raises(DatasetError, match=r"s.npy.*\(H, W, 3\)"):
        read_organized(tmp_path / "s.npy")
    np.save(tmp_path / "d.npy", organised.astype(np.int32))
    with pytest.raises(DatasetError, match="d.npy.*float32"):
        read_organized(tmp_path / "d.npy")
    (tmp_path / "h.pcd").write_bytes(b"VERSION 0.7\nFIELDS x y\nSIZE 4 4\n")
    with pytest.raises(DatasetError, match="h.pcd.*header"):
        read_points(tmp_path / "h.pcd")
    (tmp_path / "z.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\n"
                                     b"property float y\nproperty float z\nend_header\n")
    with pytest.raises(DatasetError, match="z.ply.*no points"):
        read_points(tmp_path / "z.ply")


def test_pcd_written_missing_as_nan(tmp_path, organised):
    p = write_pcd(tmp_path / "m.pcd", organised, binary=False)
    assert b"nan" in p.read_bytes()
    np.testing.assert_array_equal(read_organized(p), organised)


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.npy"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_open3d_files_if_installed(tmp_path, organised):
    o3d = pytest.importorskip("open3d")  # optional: only where Open3D is installed
    pts = organised.reshape(-1, 3).astype(np.float64)
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    for name, kw in [("o.ply", {}), ("o.pcd", {}), ("oc.pcd", {"compressed": True}),
                     ("oa.pcd", {"write_ascii": True})]:
        assert o3d.io.write_point_cloud(str(tmp_path / name), pc, **kw)
        np.testing.assert_allclose(read_points(tmp_path / name), pts, rtol=1e-6, atol=1e-7)
