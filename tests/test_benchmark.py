"""Benchmark machinery: FLOP counting (checked against hand-counted formulas), matmul throughput,
peak-memory measurement, threads, stage timing through the inference path's hook and the CLI
plumbing.

The full protocol (`benchmark.run` on a real detector) takes minutes on 2 cores and is exercised
by `benchmarks/bench_pipeline.py`, not here."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from cmdr_iad import benchmark, presets
from cmdr_iad.benchmark import BenchResult, count_flops, format_table
from cmdr_iad.cli import main


def mlp_flops(n: int, cin: int, cout: int) -> int:
    r = (cin + cout) // 2
    return 2 * n * (cin * r + 2 * r * r + r * cout)


def test_flops_of_the_paper_heads_match_hand_counts():
    f = count_flops(presets.paper("rgb+xyz"))
    n = 224 * 224
    assert f["map2Dto3D"] == mlp_flops(n, 768, 1152)  # ≈ 0.37 T FLOPs = 0.185 T MACs
    assert f["map3Dto2D"] == mlp_flops(n, 1152, 768)
    lr = n // 32
    token_linear = 2 * 1152 * n * lr + 2 * 1152 * lr * lr  # projection.0 and projection.4
    convs = sum(2 * ci * co * 4 * lr * 2**i
                for i, (ci, co) in enumerate([(1152, 768), (768, 512), (512, 256), (256, 128), (128, 1152)]))
    se = 2 * (1152 * 144 + 144 * 1152)
    assert f["Dec3D"] == token_linear + convs + se
    r = 384
    per_token = (768 * r + r * r + 3 * r * r + r * r + 2 * r * 2 * r + 9 * (r * 256 + 256 * 128 + 128 * r)
                 + r * 1536 + 1536 * 768)
    attention = 2 * 2 * (-(-n // 128)) * 128 * 128 * r  # QKᵀ and PV per window (padded tail included)
    assert f["Dec2D"] == 2 * n * per_token + attention
    assert f["total"] == sum(v for k, v in f.items() if k != "total")
    assert 1.7e12 < f["total"] < 2.1e12  # the "about 1.9 TFLOP per sample"


def test_flops_follow_the_modality():
    assert set(count_flops(presets.tiny("rgb"))) == {"vit", "Dec2D", "total"}
    assert set(count_flops(presets.tiny("xyz"))) == {"point_mae", "Dec3D", "total"}


def test_matmul_throughput_is_measured():
    assert benchmark.matmul_gflops("cpu", size=64, min_seconds=0.01, repeats=1) > 0


_PEAK_PROBE = """
import numpy as np
from cmdr_iad.benchmark import PeakMemory
mem = PeakMemory("cpu")
mem.reset()
before = mem.peak_mb()
a = np.ones(160 * 2**20 // 8)  # 160 MB, touched
peak = mem.peak_mb()
del a
assert peak - before > 120, (before, peak)
if mem.resettable:
    mem.reset()
    assert mem.peak_mb() < peak - 100
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux-only")
def test_peak_memory_sees_a_large_allocation():
    # a fresh process: the lifetime peak of the test process may already exceed any new allocation
    import subprocess

    out = subprocess.run([sys.executable, "-c", _PEAK_PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_threads():
    old = torch.get_num_threads()
    try:
        assert benchmark.configure_threads(1) == 1
        assert 1 <= benchmark.physical_cores() <= (os.cpu_count() or 1)
        with pytest.raises(ValueError):
            benchmark.configure_threads(0)
    finally:
        torch.set_num_threads(old)


def test_stage_times_come_from_the_timed_loop_and_add_up(monkeypatch):
    """`run(stages=True)` charges each stage of the one inference path through its timer hook,
    in the timed loop itself: the stages cover the measured total (within 5 %), and the path's
    extraction is entered once per sample (no second pipeline copy runs)."""
    from cmdr_iad.features.extractor import FeatureExtractor

    calls = {"rows": 0}
    real = FeatureExtractor.extract_rows

    def counting(self, *a, **k):
        calls["rows"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(FeatureExtractor, "extract_rows", counting)
    r = benchmark.run("tiny", "rgb+xyz", samples=3, sample_size=64, stages=True, threads=1)
    assert calls["rows"] == 1 + 3  # warm-up batch + the timed samples, nothing else
    assert {"transforms", "features", "heads", "fusion", "output"} <= set(r.stages)
    covered = sum(v for k, v in r.stages.items() if k != "unaccounted")
    assert 0.95 * r.seconds_per_sample <= covered <= r.seconds_per_sample * (1 + 1e-9)
    assert r.heads == "exact" and r.samples == 3


def _result(**kw) -> BenchResult:
    base = dict(preset="tiny", modality="rgb+xyz", device="cpu", batch_size=1, samples=2, threads=2,
                heads="exact", precision="fp32", compiled=False, seconds_per_sample=0.5, fps=2.0,
                peak_memory_mb=900.0, memory_kind="cpu_peak_rss", flops_per_sample=10**11,
                flops_by_part={"total": 10**11}, matmul_gflops=100.0, matmul_gflops_before=90.0,
                matmul_gflops_after=100.0, matmul_fraction=2.0, resident_mb_after_build=800.0,
                valid_fraction=0.3, sample_size=96, random_backbones=True)
    base.update(kw)
    return BenchResult(**base)


def test_cli_writes_json_and_table(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(**kw):
        calls.append(kw)
        return _result(heads=kw["heads"], seconds_per_sample=2.0 if kw["heads"] == "reference" else 0.5)

    monkeypatch.setattr(benchmark, "run", fake_run)
    out = tmp_path / "bench.json"
    rc = main(["benchmark", "--preset", "tiny", "--random-backbones", "--samples", "2", "--heads", "both",
               "--in-process", "--device", "cpu", "--json", str(out)])
    assert rc == 0
    assert [c["heads"] for c in calls] == ["reference", "exact"]
    assert calls[0]["samples"] == 2 and calls[0]["random_backbones"] is True
    data = json.loads(out.read_text())
    for key in ("seconds_per_sample", "fps", "peak_memory_mb", "flops_per_sample", "matmul_gflops",
                "matmul_fraction"):
        assert key in data[0] and key in data[1]
    text = capsys.readouterr().out
    assert "s/sample" in text and "4.00x" in text
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("args", [["--samples", "0"], ["--batch-size", "0"], ["--threads", "0"]])
def test_cli_bad_numbers_exit_2(args, capsys):
    assert main(["benchmark", "--random-backbones", "--in-process", *args]) == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_format_table_has_one_row_per_result():
    lines = format_table([_result(), _result(heads="reference")]).splitlines()
    assert len(lines) == 3 and "fraction" in lines[0] and "200 %" in lines[1]


def test_old_heads_spelling_fast_still_means_exact(monkeypatch):
    calls = []
    monkeypatch.setattr(benchmark, "run", lambda **kw: calls.append(kw) or _result(heads=kw["heads"]))
    assert main(["benchmark", "--preset", "tiny", "--random-backbones", "--in-process",
                 "--heads", "fast"]) == 0
    assert calls[0]["heads"] == "exact"
