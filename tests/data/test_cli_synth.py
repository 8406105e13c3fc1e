"""`cmdr-iad synth`: writes a readable dataset, deterministic, bad arguments exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmdr_iad.cli import main
from cmdr_iad.data.mvtec3d import MVTec3DDataset, list_categories

ARGS = ["--categories", "2", "--train", "1", "--val", "0", "--test-good", "1", "--test-defect", "1",
        "--size", "32", "48", "--seed", "3"]


def test_synth_writes_a_dataset(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "a"), *ARGS]) == 0
    assert "puck, ring" in capsys.readouterr().out
    assert main(["synth", str(tmp_path / "b"), *ARGS, "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert list_categories(tmp_path / "a") == ["puck", "ring"]
    ds_a = MVTec3DDataset(tmp_path / "a", "ring", "test")
    ds_b = MVTec3DDataset(tmp_path / "b", "ring", "test")
    assert len(ds_a) == 5 and ds_a[0].rgb.shape == (32, 48, 3)
    for sa, sb in zip(ds_a, ds_b, strict=True):  # same seed → same data
        np.testing.assert_array_equal(sa.xyz, sb.xyz)
        np.testing.assert_array_equal(sa.rgb, sb.rgb)


@pytest.mark.parametrize("bad", [["--categories", "0"], ["--train", "0"], ["--size", "8", "8"],
                                 ["--test-good", "-1"]])
def test_synth_bad_arguments_exit_2(tmp_path, capsys, bad):
    assert main(["synth", str(tmp_path / "x"), "--quiet", *bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cmdr-iad: error:") and len(err.strip().splitlines()) == 1


def test_synth_unknown_scene_exits_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's choices, through our one-line parser
        main(["synth", str(tmp_path / "x"), "--scene", "studio"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "studio" in err
    assert not (tmp_path / "x").exists()


def test_synth_station_scene(tmp_path):
    assert main(["synth", str(tmp_path / "s"), *ARGS, "--scene", "station", "--quiet"]) == 0
    assert json.loads((tmp_path / "s" / "synthetic.json").read_text())["scene"] == "station"
    assert main(["synth", str(tmp_path / "v"), *ARGS, "--quiet"]) == 0
    assert json.loads((tmp_path / "v" / "synthetic.json").read_text())["scene"] == "varied"


def test_synth_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["synth", str(f), "--quiet"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_synth_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["synth", "--help"])
    assert e.value.code == 0 and "--test-defect" in capsys.readouterr().out
