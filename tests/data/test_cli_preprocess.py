"""`cmdr-iad preprocess`: a new root mirroring the source, idempotent, resumable, bad files reported."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_preprocess import TABLE, make_scene  # same folder (pytest's rootdir-relative import)

from cmdr_iad.cli import main
from cmdr_iad.data import preprocess as pp
from cmdr_iad.errors import UserInputError

LAYOUT = [("train", "good", 0), ("train", "good", 1), ("train", "good", 2),
          ("test", "good", 0), ("test", "hole", 0), ("test", "hole", 1)]


def make_mvtec(root: Path, size: int = 96) -> Path:
    """A small MVTec 3D-AD-layout dataset of generated scans (category `toy`)."""
    for k, (split, dtype, i) in enumerate(LAYOUT):
        base = root / "toy" / split / dtype
        xyz, _, _ = make_scene(size, size, seed=10 + k, pitch=0.0006, radius=0.015)
        for sub in ("rgb", "xyz") + (("gt",) if split == "test" else ()):
            (base / sub).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(base / "xyz" / f"{i:03d}.tiff", xyz, photometric="rgb")
        rgb = np.random.default_rng(k).integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(base / "rgb" / f"{i:03d}.png")
        if split == "test":
            gt = np.zeros((size, size), np.uint8)
            if dtype != "good":
                gt[40:50, 40:50] = 255
            Image.fromarray(gt).save(base / "gt" / f"{i:03d}.png")
    (root / "license.txt").write_text("generated\n")
    return root


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime_ns)} of every file under root."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def n_xyz() -> int:
    return len(LAYOUT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One full CLI run with 2 worker processes: (src, dst, src state before)."""
    base = tmp_path_factory.mktemp("pp")
    src = make_mvtec(base / "src")
    before = tree_state(src)
    assert main(["preprocess", str(src), str(base / "dst"), "--workers", "2", "--quiet"]) == 0
    return src, base / "dst", before


def test_full_run_mirrors_and_leaves_source_unchanged(reference):
    src, dst, before = reference
    assert tree_state(src) == before  # source untouched (content and mtimes)
    rels = {k for k in before}
    out = {str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()}
    assert out == rels | {pp.MANIFEST_NAME}
    for rel in rels:
        if "/xyz/" in rel:
            a = tifffile.imread(dst / rel)
            assert a.shape == (96, 96, 3) and pp.read_marker(dst / rel) is not None
        else:  # rgb, gt and other files are copied byte for byte
            assert (dst / rel).read_bytes() == (src / rel).read_bytes()
    # The table is gone from every cloud, the object is kept.
    for k, (split, dtype, i) in enumerate(LAYOUT):
        _, labels, _ = make_scene(96, 96, seed=10 + k, pitch=0.0006, radius=0.015)
        out_xyz = tifffile.imread(dst / "toy" / split / dtype / "xyz" / f"{i:03d}.tiff")
        kept = np.any(out_xyz != 0, axis=-1)
        assert kept.sum() > 300 and not kept[labels == TABLE].any()
    assert json.loads((dst / pp.MANIFEST_NAME).read_text())["config"] == pp.PreprocessConfig().to_dict()


def test_second_run_changes_nothing(reference, capsys):
    src, dst, before = reference
    state = tree_state(dst)
    assert main(["preprocess", str(src), str(dst), "--workers", "1"]) == 0
    assert f"processed 0, copied 0, skipped {len(before)}" in capsys.readouterr().out
    assert tree_state(dst) == state


def test_interrupted_run_resumes(reference, tmp_path, monkeypatch):
    src, ref_dst, _ = reference
    dst = tmp_path / "dst"
    real_write = pp._write_xyz
    calls = {"n": 0}

    def flaky_write(path, xyz, record):  # the third cloud is interrupted in the middle of writing
        calls["n"] += 1
        if calls["n"] == 3:
            Path(path).write_bytes(b"partial")
            raise KeyboardInterrupt
        real_write(path, xyz, record)

    monkeypatch.setattr(pp, "_write_xyz", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        pp.preprocess_dataset(src, dst, workers=1, progress=False)
    monkeypatch.setattr(pp, "_write_xyz", real_write)
    done = [p for p in dst.rglob("*.tiff")]
    assert len(done) == 2  # whole files only: the interrupted one left nothing behind
    assert not [p for p in dst.rglob("*") if p.name.startswith(pp.TMP_PREFIX)]
    # A hard kill leaves a stray temporary file; the next run removes it and finishes the job.
    stray = dst / "toy" / "test" / "hole" / "xyz" / f"{pp.TMP_PREFIX}dead-000.tiff"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"garbage")
    mtimes = {p: p.stat().st_mtime_ns for p in done}
    rep = pp.preprocess_dataset(src, dst, workers=1, progress=False)
    assert rep.ok and len(rep.processed) == n_xyz() - 2
    assert sorted(p for p in rep.skipped if p.suffix == ".tiff") == sorted(p.relative_to(dst) for p in done)
    assert not stray.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    # The result is the same as an uninterrupted run, byte for byte.
    assert {k: v[0] for k, v in tree_state(dst).items()} == \
        {k: v[0] for k, v in tree_state(ref_dst).items()}


def test_bad_files_reported_after_good_ones(tmp_path, capsys):
    src = make_mvtec(tmp_path / "src", size=64)
    xyz_dir = src / "toy" / "train" / "good" / "xyz"
    (xyz_dir / "001.tiff").write_bytes(b"II*\x00not a tiff at all")  # unreadable
    tifffile.imwrite(xyz_dir / "002.tiff", np.ones((64, 64), np.float32))  # wrong shape
    tifffile.imwrite(src / "toy" / "test" / "good" / "xyz" / "000.tiff",
                     np.zeros((64, 64, 3), np.float32), photometric="rgb")  # no valid point
    dst = tmp_path / "dst"
    assert main(["preprocess", str(src), str(dst), "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    for name in ("train/good/xyz/001.tiff", "train/good/xyz/002.tiff", "test/good/xyz/000.tiff"):
        assert name in err
    assert "3 file(s) could not be preprocessed" in err
    assert (dst / "toy/train/good/xyz/000.tiff").is_file()
    assert (dst / "toy/test/hole/xyz/001.tiff").is_file()
    assert not (dst / "toy/train/good/xyz/001.tiff").exists()
    assert (dst / "toy/train/good/rgb/001.png").is_file()  # copies are done too


def test_in_place_only_when_asked(tmp_path, capsys):
    src = make_mvtec(tmp_path / "src", size=64)
    state = tree_state(src)
    assert main(["preprocess", str(src), str(src), "--quiet"]) == 2  # DST == SRC without the flag
    assert main(["preprocess", str(src), "--quiet"]) == 2  # no DST
    assert main(["preprocess", str(src), str(src / "out"), "--quiet"]) == 2  # DST inside SRC
    assert "--in-place" in capsys.readouterr().err
    assert tree_state(src) == state
    assert main(["preprocess", str(src), "--in-place", "--workers", "1", "--quiet"]) == 0
    after = tree_state(src)
    changed = {k for k in state if after[k] != state[k]}
    assert changed == {k for k in state if "/xyz/" in k}  # only the clouds were rewritten
    # Running again in place does not process the clouds a second time.
    rep = pp.preprocess_dataset(src, in_place=True, workers=1, progress=False)
    assert not rep.processed and len(rep.skipped) == n_xyz()
    assert {k: v for k, v in tree_state(src).items() if k != pp.MANIFEST_NAME} == \
        {k: v for k, v in after.items() if k != pp.MANIFEST_NAME}


def test_other_parameters_and_preprocessed_source(tmp_path, reference):
    _, ref_dst, before = reference
    with pytest.raises(UserInputError, match="other parameters"):
        pp.preprocess_dataset(reference[0], ref_dst, workers=1, progress=False,
                              config=pp.PreprocessConfig(dbscan_eps=0.01))
    # An already preprocessed root as source: its clouds are copied, not processed again.
    rep = pp.preprocess_dataset(ref_dst, tmp_path / "again", workers=1, progress=False)
    assert rep.ok and not rep.processed and len(rep.copied) == len(before)
    f = "toy/test/hole/xyz/000.tiff"
    assert (tmp_path / "again" / f).read_bytes() == (ref_dst / f).read_bytes()


def test_synthetic_dataset_preprocessed_and_readable(tmp_path):
    from cmdr_iad.data.mvtec3d import MVTec3DDataset
    from cmdr_iad.data.synthetic import generate_dataset

    src = generate_dataset(tmp_path / "syn", categories=("puck",), n_train=2, n_val=0,
                           n_test_good=1, n_test_defect=1, defect_types=("bump",), size=(112, 112))
    rep = pp.preprocess_dataset(src, tmp_path / "pp", workers=1, progress=False)
    assert rep.ok and len(rep.processed) == 4
    raw = MVTec3DDataset(src, "puck", "test")
    out = MVTec3DDataset(tmp_path / "pp", "puck", "test")
    assert out.keys == raw.keys
    for a, b in zip(raw, out, strict=True):
        va, vb = a.valid, b.valid
        assert vb.sum() < 0.5 * va.sum() and not (vb & ~va).any()  # table removed, nothing added
        np.testing.assert_array_equal(b.rgb, a.rgb)
        np.testing.assert_array_equal(b.gt, a.gt)
        if b.gt.any():  # the defect is on the object, which is kept
            assert vb[b.gt].mean() > 0.5
