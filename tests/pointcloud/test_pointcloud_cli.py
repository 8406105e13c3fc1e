"""`cmdr-iad pointcloud ...` end to end on generated scans, and its bad-input handling (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmdr_iad.cli import main
from cmdr_iad.data.pointcloud_io import read_points, write_npy, write_ply, write_xyz


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _bad_input(capsys, *argv: str, match: str) -> None:
    rc, _, err = _run(capsys, *argv)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmdr-iad: error:"), err
    assert match.lower() in lines[0].lower(), lines[0]


@pytest.fixture()
def scans(tmp_path, scan_factory):
    d = tmp_path / "scans"
    d.mkdir()
    write_ply(d / "a.ply", scan_factory(0))
    write_ply(d / "b.ply", scan_factory(1), binary=False)
    write_npy(d / "c.npy", scan_factory(2))
    return d


@pytest.mark.slow
def test_build_train_evaluate_predict(tmp_path, scans, scan_factory, capsys):
    build, model, report, pred = (tmp_path / n for n in ("build", "model", "report", "pred"))
    rc, out, err = _run(capsys, "pointcloud", "build", str(scans), str(build), "--chunk-size", "1024",
                        "--contamination", "0.003", "--quiet")
    assert rc == 0, err
    meta = json.loads((build / "build.json").read_text())
    c = meta["counts"]
    assert c["chunks"] == 12 and c["anomalous"] >= 1 and c["train"] + c["test"] == 12
    assert c["test_anomalous"] == c["anomalous"] and c["test_normal"] >= 1
    assert f"{c['train']} train / {c['test']} test = {c['test_normal']} normal + " in out
    assert [s["name"] for s in meta["sources"]] == ["a", "b", "c"]
    assert np.load(build / "train.npy").shape == (c["train"], 1024, 3)
    assert np.load(build / "test_gtmask.npy").shape == (c["test"], 1024)

    cache = tmp_path / "cache"
    rc, out, err = _run(capsys, "pointcloud", "train", str(build), "--out", str(model), "--preset", "tiny",
                        "--random-backbones", "--device", "cpu", "--feature-cache", str(cache), "--quiet")
    assert rc == 0, err
    mmeta = json.loads((model / "model.json").read_text())
    assert mmeta["kind"] == "cmdr-iad-pointcloud" and mmeta["random_backbones"] is True
    assert mmeta["config"]["chunk_size"] == 1024 and mmeta["config"]["preset"] == "tiny"
    assert np.isfinite(mmeta["threshold"]) and "mean + 3" in mmeta["threshold_rule"]
    assert len(mmeta["train"]["history"]) == 2
    assert sum(1 for p in cache.rglob("meta.json")) == c["train"]  # one cache entry per chunk

    rc, out, err = _run(capsys, "pointcloud", "evaluate", str(model), str(build), "--out", str(report),
                        "--device", "cpu", "--quiet")
    assert rc == 0, err
    m = json.loads((report / "metrics.json").read_text())
    for k in ("i_auroc", "p_auroc"):
        assert m[k] is not None and 0.0 <= m[k] <= 1.0, m["reasons"]
    assert m["fps"] > 0 and m["peak_memory_mb"] > 0 and m["n_test"] == c["test"]
    assert m["random_backbones"] is True
    assert np.load(report / "anomaly_maps.npy").shape == (c["test"], 32, 32)

    scan = scan_factory(7)
    write_xyz(tmp_path / "new.xyz", scan)
    rc, out, err = _run(capsys, "pointcloud", "predict", str(model), str(tmp_path / "new.xyz"), "--out",
                        str(pred), "--device", "cpu")
    assert rc == 0, err
    scores = np.load(pred / "new_scores.npy")
    assert scores.shape == (len(scan),) and scores.dtype == np.float32 and np.isfinite(scores).all()
    np.testing.assert_array_equal(read_points(pred / "new.ply"), scan)
    from plyfile import PlyData

    vert = PlyData.read(str(pred / "new.ply"))["vertex"]
    np.testing.assert_array_equal(np.asarray(vert["anomaly"]), scores)
    assert np.asarray(vert["red"]).dtype == np.uint8
    rec = json.loads((pred / "new.json").read_text())
    assert rec["points"] == len(scan) and rec["random_backbones"] is True
    assert rec["threshold"] == pytest.approx(mmeta["threshold"])
    n_regular = len(scan) // 1024
    assert len(rec["chunks"]) == n_regular + 1 and rec["chunks"][-1]["tail"]
    assert rec["chunks"][-1]["start"] == len(scan) - 1024
    assert rec["anomalous"] == any(ch["anomalous"] for ch in rec["chunks"])
    assert rec["scan_score"] == pytest.approx(max(ch["score"] for ch in rec["chunks"]))

    # bad scans given to predict: too short, NaN
    write_npy(tmp_path / "short.npy", scan[:500])
    _bad_input(capsys, "pointcloud", "predict", str(model), str(tmp_path / "short.npy"), "--out",
               str(pred), match="fewer than one chunk")
    nan = scan.copy()
    nan[10, 0] = np.nan
    write_npy(tmp_path / "nan.npy", nan)
    _bad_input(capsys, "pointcloud", "predict", str(model), str(tmp_path / "nan.npy"), "--out",
               str(pred), match="NaN")

    # a folder of scans, streamed: the bad one is recorded and skipped, the others written
    folder, streamed = tmp_path / "folder", tmp_path / "streamed"
    folder.mkdir()
    write_xyz(folder / "new.xyz", scan)
    write_npy(folder / "other.npy", scan_factory(8))
    write_npy(folder / "short.npy", scan[:500])
    rc, out, err = _run(capsys, "pointcloud", "predict", str(model), "--input", str(folder), "--out",
                        str(streamed), "--device", "cpu", "--quiet")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "1 of 3 samples" in err, err
    assert "short.npy" in err and "fewer than one chunk" in err
    lines = [json.loads(x) for x in (streamed / "predictions.jsonl").read_text().splitlines()]
    assert [(r["stem"], r["status"]) for r in lines] == [("new", "ok"), ("other", "ok"), ("short", "error")]
    np.testing.assert_array_equal(np.load(streamed / "new_scores.npy"), scores)  # same as one by one
    assert (streamed / "predictions.csv").read_text().count("\n") == 4
    mtime = (streamed / "new.json").stat().st_mtime_ns
    rc, out, err = _run(capsys, "pointcloud", "predict", str(model), "--input", str(folder), "--out",
                        str(streamed), "--device", "cpu", "--quiet")
    assert rc == 2 and (streamed / "new.json").stat().st_mtime_ns == mtime  # the done ones are skipped


def _one_scan_dir(tmp_path, name: str, writer) -> str:
    d = tmp_path / "bad"
    d.mkdir()
    writer(d / name)
    return str(d)


def test_build_rejects_a_scan_shorter_than_one_chunk(tmp_path, scan_factory, capsys):
    d = _one_scan_dir(tmp_path, "s.npy", lambda p: write_npy(p, scan_factory(0)[:1000]))
    _bad_input(capsys, "pointcloud", "build", d, str(tmp_path / "out"), "--chunk-size", "1024",
               match="fewer than one chunk")
    assert not (tmp_path / "out").exists()


def test_build_rejects_nan_and_inf_points(tmp_path, scan_factory, capsys):
    pts = scan_factory(0)
    pts[7, 2] = np.nan
    d = _one_scan_dir(tmp_path, "s.npy", lambda p: write_npy(p, pts))
    _bad_input(capsys, "pointcloud", "build", d, str(tmp_path / "out"), "--chunk-size", "1024", match="NaN")
    bad = tmp_path / "inf"
    bad.mkdir()
    (bad / "s.xyz").write_text("1 2 3\n4 inf 6\n" * 600)
    _bad_input(capsys, "pointcloud", "build", str(bad), str(tmp_path / "out"), "--chunk-size", "1024",
               match="inf")


def test_build_rejects_empty_and_truncated_ply(tmp_path, scan_factory, capsys):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "s.ply").write_bytes(b"")
    _bad_input(capsys, "pointcloud", "build", str(d), str(tmp_path / "out"), "--chunk-size", "1024",
               match="empty")
    t = tmp_path / "trunc"
    t.mkdir()
    write_ply(t / "s.ply", scan_factory(0))
    data = (t / "s.ply").read_bytes()
    (t / "s.ply").write_bytes(data[: len(data) // 2])
    _bad_input(capsys, "pointcloud", "build", str(t), str(tmp_path / "out"), "--chunk-size", "1024",
               match="truncated")


def test_unknown_extension(tmp_path, capsys):
    d = tmp_path / "obj"
    d.mkdir()
    (d / "s.obj").write_text("v 1 2 3\n")
    _bad_input(capsys, "pointcloud", "build", str(d), str(tmp_path / "out"), match=".obj")
    _bad_input(capsys, "pointcloud", "predict", str(tmp_path / "nomodel"), str(d / "s.obj"), "--out",
               str(tmp_path / "p"), match=".obj")


@pytest.mark.parametrize("value", ["0", "0.7", "-0.001"])
def test_contamination_outside_range(tmp_path, scans, value, capsys):
    _bad_input(capsys, "pointcloud", "build", str(scans), str(tmp_path / "out"), "--chunk-size", "1024",
               "--contamination", value, match="contamination")


def test_bad_chunk_size_and_missing_folders(tmp_path, scans, capsys):
    _bad_input(capsys, "pointcloud", "build", str(scans), str(tmp_path / "out"), "--chunk-size", "1000",
               match="chunk size")
    _bad_input(capsys, "pointcloud", "build", str(tmp_path / "nope"), str(tmp_path / "out"), match="not found")
    _bad_input(capsys, "pointcloud", "train", str(tmp_path / "nope"), "--out", str(tmp_path / "m"),
               match="build.json")
    _bad_input(capsys, "pointcloud", "evaluate", str(tmp_path / "nope"), str(scans), "--out",
               str(tmp_path / "r"), match="model")


def test_authors_layout_and_skip_short(tmp_path, scan_factory, capsys):
    root = tmp_path / "ACQ"
    for name, n in (("s1", 3000), ("s2", 800), ("s3", 3000)):
        (root / "point_cloud" / name).mkdir(parents=True)
        write_ply(root / "point_cloud" / name / "PointCloud_merged.ply", scan_factory(int(name[1]))[:n])
    out = tmp_path / "build"
    rc, stdout, err = _run(capsys, "pointcloud", "build", str(root), str(out), "--chunk-size", "1024",
                           "--skip-short", "--quiet")
    assert rc == 0, err
    meta = json.loads((out / "build.json").read_text())
    assert [s["name"] for s in meta["sources"]] == ["s1", "s3"]
    assert meta["skipped"][0]["name"] == "s2" and "skipped s2" in stdout
    assert meta["counts"]["chunks"] == 4 and meta["sources"][0]["dropped_tail"] == 3000 - 2048


def test_table8_grid_reports_failed_cells(tmp_path, scans, capsys):
    from cmdr_iad.pointcloud.table8 import table8_cells

    cells = table8_cells((4096, 9216))
    assert len(cells) == 9 and cells[-1] == ("hybrid", 9216, "low") and cells[0] == ("lof", 4096, "low")
    # every scan (4789 points) is shorter than a 5184- or 9216-point chunk: each cell fails fast
    rc, out, err = _run(capsys, "pointcloud", "table8", str(scans), str(tmp_path / "t8"), "--chunk-sizes",
                        "5184", "9216", "--preset", "tiny", "--random-backbones", "--quiet")
    assert rc == 1
    assert "Detector" in out and "Hybrid (LOF ∪ ISO)" in out and out.count("failed") >= 9
    rows = json.loads((tmp_path / "t8" / "table8.json").read_text())["rows"]
    assert len(rows) == 9 and all(r["error"] for r in rows)


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pointcloud", "build", "--help"])
    assert e.value.code == 0
    assert "--detector" in capsys.readouterr().out


def test_table8_layout():
    from cmdr_iad.pointcloud.table8 import format_table8, table8_cells

    rows = [{"detector": d, "chunk_size": s, "level": lv, "i_auroc": 0.926, "p_auroc": None, "error": None}
            for d, s, lv in table8_cells()]
    lines = format_table8(rows).splitlines()
    assert lines[0].split()[:5] == ["Detector", "Sample", "Size", "Level", "I-AUROC"]
    body = lines[2:]
    assert len(body) == 9
    assert body[0].split()[:5] == ["LOF", "4096", "low", "92.6", "n/a"]
    assert body[1].split()[:3] == ["high", "92.6", "n/a"]  # detector and size written once per group
    assert body[2].split()[:2] == ["9216", "low"]
    assert "92.6 / 92.5" in body[6]  # paper value of ISO 9216 low shown beside ours
    assert body[8].startswith("Hybrid (LOF ∪ ISO)")
