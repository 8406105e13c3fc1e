"""`cmdr-iad grid`: the whole category × modality grid as one resumable job, on the local and
the Ray executor, with failures kept to their own cells."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmdr_iad.cli import main
from cmdr_iad.evaluation import METRIC_KEYS

ARGS = ("--preset", "tiny", "--epochs", "1", "--random-backbones", "--threads-per-cell", "2",
        "--quiet")

CATS, MODS = ("puck", "ring"), ("rgb+xyz", "rgb", "xyz")


def _cells(runs: Path) -> dict[str, dict]:
    return {r["key"]: r for r in json.loads((runs / "grid.json").read_text())["cells"]}


def _values(rec: dict) -> dict:
    """The metrics that must not depend on the executor (no times, no memory)."""
    m = rec["metrics"]
    out = {k: m[k] for k in METRIC_KEYS}
    out.update({f"{p}/{k}": v.get(k) for p, v in m["protocols"].items() for k in METRIC_KEYS})
    return out


def test_local_grid_completes_every_cell_with_its_outputs(local_run):
    runs, _, rc, out = local_run
    assert rc == 0, out
    cells = _cells(runs)
    assert set(cells) == {f"{m}/{c}" for m in MODS for c in CATS}
    for key, rec in cells.items():
        assert rec["status"] == "done" and rec["error"] is None and rec["seconds"] > 0, rec
        assert rec["device"] == "cpu"
        assert (runs / key / "model" / "model.json").is_file()
        assert json.loads((runs / key / "report" / "metrics.json").read_text())["i_auroc"] == \
            rec["metrics"]["i_auroc"]
        assert not (runs / key / "checkpoint").exists()
    assert set(cells["rgb+xyz/puck"]["variants"]) == {"full", "case1"}


def test_paper_tables_have_the_paper_layout(local_run):
    runs = local_run[0]
    text = (runs / "paper_tables.md").read_text()
    for protocol in ("paper-grid-99thr", "mvtec3d-official"):
        for title in ("I-AUROC", "P-AUROC", "AUPRO@30%", "AUPRO@10%", "AUPRO@5%", "AUPRO@1%"):
            assert f"### {title} (%)" in text and f"— protocol {protocol}" in text
    lines = text.splitlines()
    i = lines.index("### I-AUROC (%) — cf. Table 1 — protocol paper-grid-99thr")
    assert lines[i + 2] == "| Method | puck | ring | Mean |"
    assert [x.split(" |")[0] for x in lines[i + 4:i + 7]] == [
        "| CMDR-IAD (RGB)", "| CMDR-IAD (3D)", "| CMDR-IAD (RGB+3D)"]
    assert "## Ablation: fusion variants (RGB+3D)" in text and "| case1 |" in text
    csv = (runs / "paper_tables.csv").read_text().splitlines()
    assert csv[0] == "protocol,metric,modality,category,variant,value" and len(csv) > 30


def test_rerun_does_no_work_and_says_so(local_run, grid_data, capsys):
    runs, cache, _, _ = local_run
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("model.json")}
    rc = main(["grid", str(grid_data), "--out", str(runs), "--cache-dir", str(cache),
               "--modalities", "rgb+xyz,rgb,xyz", "--variants", "full,case1", *ARGS[:-1]])
    out = capsys.readouterr().out
    assert rc == 0
    assert "6 cell(s) already done, skipped" in out
    assert "nothing to do" in out
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("model.json")} == stamps


def test_ray_executor_gives_the_same_metrics(local_run, grid_data, tmp_path):
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    runs, cache, _, _ = local_run
    rc = main(["grid", str(grid_data), "--out", str(tmp_path / "runs"), "--cache-dir", str(cache),
               "--modalities", "rgb+xyz,rgb,xyz", "--variants", "full,case1",
               "--executor", "ray", "--workers", "2", *ARGS])
    assert rc == 0
    ray_cells, local_cells = _cells(tmp_path / "runs"), _cells(runs)
    assert ray_cells.keys() == local_cells.keys()
    for key in local_cells:
        assert _values(ray_cells[key]) == _values(local_cells[key]), key  # same threads: equal
    assert json.loads((tmp_path / "runs" / "grid.json").read_text())["executor"] == "ray"


def test_killed_run_resumes_and_gives_the_same_results(local_run, grid_data, tmp_path):
    runs_local, cache, _, _ = local_run
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-c", "import sys; from cmdr_iad.cli import main; sys.exit(main())", "grid", str(grid_data), "--out", str(runs),
           "--cache-dir", str(cache), "--modalities", "xyz", *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            path = runs / "grid.json"
            if path.is_file() and any(r["status"] == "done" for r in _cells(runs).values()):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the grid finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = _cells(runs)
    assert len([r for r in first.values() if r["status"] == "done"]) == 1
    out = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "1 cell(s) already done" in out.stdout
    cells = _cells(runs)
    local = _cells(runs_local)
    for c in CATS:
        assert cells[f"xyz/{c}"]["status"] == "done"
        assert _values(cells[f"xyz/{c}"]) == _values(local[f"xyz/{c}"])
    from cmdr_iad.grid.tables import tables_markdown

    expected = tables_markdown([local[f"xyz/{c}"] for c in CATS])
    assert (runs / "paper_tables.md").read_text() == expected  # the same tables as uninterrupted


def test_a_corrupt_file_fails_only_its_own_cells(grid_data, local_run, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(grid_data, data)
    bad = sorted((data / "ring" / "test" / "bump" / "xyz").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:100])  # truncated TIFF
    rc = main(["grid", str(data), "--out", str(tmp_path / "runs"), "--cache-dir", str(local_run[1]),
               "--modalities", "xyz", *ARGS])
    assert rc == 2
    cells = _cells(tmp_path / "runs")
    assert cells["xyz/puck"]["status"] == "done"
    ring = cells["xyz/ring"]
    assert ring["status"] == "failed" and ring["error_kind"] == "bad_input"
    assert bad.name in ring["error"] and "\n" not in ring["error"]
    assert not (tmp_path / "runs" / "xyz" / "ring" / "model").exists()
    assert "| CMDR-IAD (3D) | " in (tmp_path / "runs" / "paper_tables.md").read_text()


def test_ray_executor_without_ray_exits_2_with_the_install_hint(grid_data, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    rc = main(["grid", str(grid_data), "--out", str(tmp_path / "runs"), "--executor", "ray", *ARGS])
    err = capsys.readouterr().err
    assert rc == 2 and 'pip install "cmdr-iad[ray]"' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "grid.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--categories", "puck,nope"], "nope: category not found"),
    (["--modalities", "rgb,depth"], "unknown modality 'depth'"),
    (["--variants", "case9"], "unknown variant 'case9'"),
    (["--variants", "case1", "--modalities", "xyz"], "need the rgb+xyz modality"),
    (["--workers", "0"], "--workers must be >= 1"),
])
def test_bad_options_exit_2_with_one_line_before_any_work(grid_data, tmp_path, capsys, extra, message):
    rc = main(["grid", str(grid_data), "--out", str(tmp_path / "runs"), *ARGS, *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs" / "grid.json").exists()


def test_rgb_and_rgbxyz_cells_of_a_category_extract_f2d_once(grid_data, tmp_path, encoder_calls):
    """Training, calibration and evaluation (variants included) of both cells read one shared
    store: the ViT runs once per sample of the category, Point-MAE once per sample too."""
    from cmdr_iad.data.mvtec3d import MVTec3DDataset

    n = sum(len(MVTec3DDataset(grid_data, "puck", s, require_points=False))
            for s in ("train", "validation", "test"))
    calls = encoder_calls
    rc = main(["grid", str(grid_data), "--out", str(tmp_path / "runs"), "--categories", "puck",
               "--modalities", "rgb+xyz,rgb", "--variants", "full,case6", *ARGS])
    assert rc == 0
    assert calls == {"vit": n, "point_mae": n}
