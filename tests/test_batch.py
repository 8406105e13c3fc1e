"""Streaming batch prediction (`cmdr-iad predict MODEL --input DIR`): one sample at a time, each
written as soon as it is done, bad samples recorded and skipped, reruns skip finished samples.

The model is an untrained tiny-preset model with random backbones (scoring needs no training:
the numbers are not meaningful, the plumbing is what is tested)."""

from __future__ import annotations

import json
import shutil

import pytest

from cmdr_iad import CMDRIAD, presets
from cmdr_iad.batch import CSV, JSONL
from cmdr_iad.cli import main


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "model"
    CMDRIAD(presets.tiny("rgb+xyz"), random_backbones=True, device="cpu").save(path)
    return path


@pytest.fixture
def folder(tmp_path, tmp_path_factory):
    from cmdr_iad.data.synthetic import generate_dataset

    root = generate_dataset(tmp_path / "synth", categories=("puck",), n_train=1, n_val=0,
                            n_test_good=3, n_test_defect=0, size=(48, 48), seed=3)
    return root / "puck" / "test" / "good"


def _lines(out):
    return [json.loads(x) for x in (out / JSONL).read_text().splitlines()]


def test_one_truncated_file_costs_only_its_sample(model, folder, tmp_path, capsys, monkeypatch):
    bad = folder / "xyz" / "001.tiff"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 2])
    out = tmp_path / "preds"
    rc = main(["predict", str(model), "--input", str(folder), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and "1 of 3 samples could not be scored" in err[0]
    assert str(bad) in err[0]
    recs = _lines(out)
    assert [(r["stem"], r["status"]) for r in recs] == [("000", "ok"), ("001", "error"), ("002", "ok")]
    for stem in ("000", "002"):
        assert (out / f"{stem}.json").is_file() and (out / f"{stem}_overlay.png").is_file()
        assert set(json.loads((out / f"{stem}.json").read_text())["files"]) <= {p.name for p in out.iterdir()}
    assert not list(out.glob("001*"))
    csv_rows = (out / CSV).read_text().splitlines()
    assert csv_rows[0].startswith("stem,status,score") and len(csv_rows) == 4

    # a rerun does no work for the finished samples: the model is not even loaded
    import cmdr_iad.cli._workflow as wf

    def no_model(*a, **k):
        raise AssertionError("the model was loaded although nothing could be scored")

    monkeypatch.setattr(wf, "load_detector", no_model)
    assert main(["predict", str(model), "--input", str(folder), "--out", str(out), "--quiet"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    monkeypatch.undo()

    # mended, only the mended sample is scored
    bad.write_bytes(good_bytes)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.startswith(("000", "002"))}
    assert main(["predict", str(model), "--input", str(folder), "--out", str(out), "--quiet"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.startswith(("000", "002"))} == before
    assert [(r["stem"], r["status"]) for r in _lines(out)][-1] == ("001", "ok")
    assert main(["predict", str(model), "--input", str(folder), "--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_folder_scores_equal_single_sample_predictions(model, folder, tmp_path, capsys):
    out, one = tmp_path / "batch", tmp_path / "one"
    assert main(["predict", str(model), "--input", str(folder), "--out", str(out), "--quiet"]) == 0
    assert main(["predict", str(model), "--rgb", str(folder / "rgb" / "002.png"), "--xyz",
                 str(folder / "xyz" / "002.tiff"), "--out", str(one), "--quiet"]) == 0
    a = json.loads((out / "002.json").read_text())
    b = json.loads((one / "002.json").read_text())
    assert a["score"] == b["score"] and a["branch"] == b["branch"] == "rgb+xyz"
    shutil.rmtree(one)
