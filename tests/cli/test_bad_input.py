"""The bad-input contract of every verb (issue 11, item 5): exit status 2, exactly one non-empty
line on stderr naming the file, nothing new on disk, the inputs byte-identical, and no expensive
work (backbones, extraction, timing, generation) started before the check (`no_work`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cmdr_iad.data.pointcloud_io import read_organized, write_organized_tiff

# ----------------------------------------------------------------------------- corruptions
# Each takes a sample folder (…/<split>/<type>) and returns the path the error must name.


def truncated_png(folder: Path) -> Path:
    p = folder / "rgb" / "000.png"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p


def truncated_tiff(folder: Path) -> Path:
    p = folder / "xyz" / "000.tiff"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p


def two_channel_xyz(folder: Path) -> Path:
    p = folder / "xyz" / "000.tiff"
    tifffile.imwrite(p, read_organized(p)[..., :2], photometric="minisblack", planarconfig="contig")
    return p


def uint8_xyz(folder: Path) -> Path:
    p = folder / "xyz" / "000.tiff"
    tifffile.imwrite(p, np.full((48, 48, 3), 7, np.uint8), photometric="rgb")
    return p


def inf_xyz(folder: Path) -> Path:
    p = folder / "xyz" / "000.tiff"
    a = read_organized(p)
    a[10, 10, 2] = np.inf
    a[11, 12, 0] = -np.inf
    write_organized_tiff(p, a)
    return p


def size_mismatch(folder: Path) -> Path:
    p = folder / "xyz" / "000.tiff"
    write_organized_tiff(p, np.ones((40, 48, 3), np.float32))
    return p


def all_zero_clouds(folder: Path) -> Path:
    for p in sorted((folder / "xyz").glob("*.tiff")):
        write_organized_tiff(p, np.zeros((48, 48, 3), np.float32))
    return folder.parent  # the split folder is named


CORRUPTIONS: dict[str, Callable[[Path], Path]] = {
    "truncated_png": truncated_png,
    "truncated_tiff": truncated_tiff,
    "two_channel_xyz": two_channel_xyz,
    "uint8_xyz": uint8_xyz,
    "inf_xyz": inf_xyz,
    "size_mismatch": size_mismatch,
    "all_zero_clouds": all_zero_clouds,
}


# ----------------------------------------------------------------------------- train


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
@pytest.mark.parametrize("split", ["train/good", "validation/good"])
def test_train_rejects_a_bad_file_before_any_work(cli, bad_input, data, tmp_path, no_work, case, split):
    named = CORRUPTIONS[case](data / "puck" / split)
    out = tmp_path / "out"
    out.mkdir()
    bad_input(["train", data, "--category", "puck", "--preset", "tiny", "--out", out / "model",
                           "--random-backbones", "--cache-dir", out / "cache"],
                     names=named, watch=[data, out])


def test_train_rgb_only_ignores_the_clouds(cli, bad_input, data, tmp_path, no_work):
    """A bad xyz file does not matter to an RGB-only model: the check reaches the model build."""
    truncated_tiff(data / "puck" / "train" / "good")
    rc, out, err = cli("train", data, "--category", "puck", "--preset", "tiny", "--modality", "rgb",
                       "--out", tmp_path / "m", "--random-backbones")
    assert rc == 1 and "expensive work started" in err  # past validation: the no_work guard fired


@pytest.mark.parametrize("argv, names", [
    (["--device", "cuda:x"], "cuda:x"),
    (["--device", "tpu"], "tpu"),
    (["--variant", "nope"], "nope"),
    (["--units", "km"], "km"),
    (["--config", "{tmp}/missing.json"], "missing.json"),
])
def test_train_rejects_bad_options(cli, bad_input, data, tmp_path, no_work, argv, names):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    bad_input(["train", data, "--category", "puck", "--preset", "tiny", "--out",
                           tmp_path / "m", "--random-backbones", *argv], names=names, watch=[data, tmp_path])


def test_train_rejects_a_corrupt_config_file(cli, bad_input, data, tmp_path, no_work):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"preset": "tiny", "modality": "rgb+xyz", "train": {"epochs": 0}}')
    bad_input(["train", data, "--category", "puck", "--config", cfg, "--out", tmp_path / "m",
                           "--random-backbones"], names=cfg, watch=[data, tmp_path])
    cfg.write_text("{not json")
    bad_input(["train", data, "--category", "puck", "--config", cfg, "--out", tmp_path / "m",
                           "--random-backbones"], names=cfg, watch=[data, tmp_path])


def test_cuda_absent_is_one_line(cli, bad_input, data, tmp_path, no_work, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = bad_input(["train", data, "--category", "puck", "--preset", "tiny", "--out",
                                 tmp_path / "m", "--device", "cuda:1"], names="cuda:1", watch=[data, tmp_path])
    assert "CUDA is not available" in err


# ----------------------------------------------------------------------------- evaluate / predict


@pytest.mark.parametrize("case", sorted(set(CORRUPTIONS) - {"all_zero_clouds"}))
def test_evaluate_rejects_a_bad_test_file_before_loading_the_model(cli, bad_input, data, stub_model, tmp_path,
                                                                   no_work, case):
    named = CORRUPTIONS[case](data / "puck" / "test" / "good")
    bad_input(["evaluate", stub_model, data, "--out", tmp_path / "rep"],
                     names=named, watch=[data, stub_model, tmp_path])


@pytest.mark.parametrize("verb", ["evaluate", "predict", "serve"])
def test_fp16_off_cuda_is_one_line_before_the_model_loads(cli, bad_input, data, stub_model, tmp_path,
                                                          no_work, verb):
    folder = data / "puck" / "test" / "good"
    argv = {"evaluate": ["evaluate", stub_model, data, "--out", tmp_path / "rep"],
            "predict": ["predict", stub_model, "--rgb", folder / "rgb" / "000.png", "--out",
                        tmp_path / "pred"],
            "serve": ["serve", stub_model]}[verb]
    err = bad_input([*argv, "--device", "cpu", "--precision", "fp16"], names="fp16",
                    watch=[data, stub_model, tmp_path])
    assert "only offered on CUDA" in err


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_benchmark_rejects_a_valid_fraction_outside_0_1(cli, bad_input, tmp_path, no_work, value):
    bad_input(["benchmark", "--preset", "tiny", "--random-backbones", "--valid-fraction", value],
              names="--valid-fraction", watch=[tmp_path])


@pytest.mark.parametrize("case", sorted(set(CORRUPTIONS) - {"all_zero_clouds"}))
def test_predict_rejects_a_bad_file_before_loading_the_model(cli, bad_input, data, stub_model, tmp_path, no_work, case):
    folder = data / "puck" / "test" / "good"
    named = CORRUPTIONS[case](folder)
    bad_input(["predict", stub_model, "--rgb", folder / "rgb" / "000.png",
                           "--xyz", folder / "xyz" / "000.tiff", "--out", tmp_path / "pred"],
                     names=named, watch=[data, stub_model, tmp_path])
    # a folder whose every sample is bad: every file is read first, the model is never loaded,
    # the failures are recorded (predictions.jsonl / .csv) and nothing else is written
    one = tmp_path / "one"
    for sub in ("rgb", "xyz"):
        (one / sub).mkdir(parents=True)
        src = next((folder / sub).glob("000.*"))
        (one / sub / src.name).write_bytes(src.read_bytes())
    pred = tmp_path / "pred-folder"
    line = bad_input(["predict", stub_model, "--input", one, "--out", pred],
                     names=Path(str(named).replace(str(folder), str(one))), watch=[data, stub_model])
    assert "1 of 1 samples could not be scored" in line
    assert sorted(p.name for p in pred.iterdir()) == ["predictions.csv", "predictions.jsonl"]


def test_predict_and_evaluate_name_a_broken_model_folder(cli, bad_input, data, tmp_path, no_work):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{trunc")
    folder = data / "puck" / "test" / "good"
    bad_input(["predict", broken, "--rgb", folder / "rgb" / "000.png", "--out", tmp_path / "p"],
                     names=broken / "model.json", watch=[data, tmp_path])
    bad_input(["evaluate", broken, data, "--out", tmp_path / "r"],
                     names=broken / "model.json", watch=[data, tmp_path])


def test_evaluate_variant_needs_rgb_xyz_model(cli, bad_input, data, tmp_path, no_work, make_stub_model):
    model = make_stub_model(tmp_path / "rgb-model", modality="rgb")
    bad_input(["evaluate", model, data, "--out", tmp_path / "r", "--variant", "case1"],
                     names=model, watch=[data, tmp_path])


# ----------------------------------------------------------------------------- preprocess


def test_preprocess_one_truncated_tiff_is_one_line(cli, bad_input, data, tmp_path):
    named = truncated_tiff(data / "puck" / "train" / "good")
    err = bad_input(["preprocess", data, tmp_path / "pre", "--workers", "1", "--quiet"],
                    names=named, watch=[data])
    assert "1 file(s) could not be preprocessed" in err


# ----------------------------------------------------------------------------- unwritable outputs


def _blocked(tmp_path: Path) -> Path:
    """An output location below a regular file: unwritable for every user, root included."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    return blocker / "out"


def _verbs(data: Path, model: Path, tmp: Path, out: Path) -> dict[str, list]:
    folder = data / "puck" / "test" / "good"
    return {
        "train": ["train", data, "--category", "puck", "--preset", "tiny", "--out", out, "--random-backbones"],
        "train --cache-dir": ["train", data, "--category", "puck", "--preset", "tiny", "--out", tmp / "m",
                              "--cache-dir", out, "--random-backbones"],
        "evaluate": ["evaluate", model, data, "--out", out],
        "predict": ["predict", model, "--rgb", folder / "rgb" / "000.png", "--out", out],
        "predict --input": ["predict", model, "--input", folder, "--out", out],
        "serve --results-dir": ["serve", model, "--results-dir", out, "--port", "0"],
        "preprocess": ["preprocess", data, out],
        "preprocess --out": ["preprocess", data, "--out", out],
        "convert": ["convert", "eyecandies", tmp / "eyecandies", out],
        "synth": ["synth", out, "--quiet"],
        "synth --out": ["synth", "--out", out, "--quiet"],
        "import-official": ["import-official", tmp / "heads", "--category", "puck", "--out", out,
                            "--random-backbones"],
        "pointcloud build": ["pointcloud", "build", tmp / "scans", out],
        "pointcloud train": ["pointcloud", "train", tmp / "build", "--out", out, "--random-backbones"],
        "pointcloud evaluate": ["pointcloud", "evaluate", model, tmp / "build", "--out", out],
        "pointcloud predict": ["pointcloud", "predict", model, tmp / "scan.ply", "--out", out],
        "pointcloud predict --input": ["pointcloud", "predict", model, "--input", tmp / "scans", "--out", out],
        "pointcloud table8": ["pointcloud", "table8", tmp / "scans", out, "--random-backbones"],
        "benchmark --json": ["benchmark", "--preset", "tiny", "--random-backbones", "--samples", "1",
                             "--json", out],
        "weights --json": ["weights", "--json", out],
        "cache clean": ["cache", "clean", "--cache-dir", out, "--yes"],
        "grid": ["grid", data, "--out", out, "--preset", "tiny", "--random-backbones"],
        "grid --cache-dir": ["grid", data, "--out", tmp / "runs", "--cache-dir", out, "--preset", "tiny",
                             "--random-backbones"],
        "demo": ["demo", "--out", out, "--random-backbones"],
    }


VERBS_THAT_WRITE = sorted(_verbs(Path("d"), Path("m"), Path("t"), Path("o")))


@pytest.mark.parametrize("verb", VERBS_THAT_WRITE)
def test_unwritable_output_is_exit_2_before_any_work(cli, bad_input, data, stub_model, tmp_path, no_work, verb):
    work = tmp_path / "work"
    for sub in ("heads", "scans", "eyecandies"):
        (work / sub).mkdir(parents=True)
    out = _blocked(work)
    argv = _verbs(data, stub_model, work, out)[verb]
    bad_input(argv, names=out, watch=[data, stub_model, work])


@pytest.mark.parametrize("verb", ["evaluate", "predict", "synth", "weights --json", "benchmark --json"])
def test_output_that_is_the_wrong_kind_of_thing(cli, bad_input, data, stub_model, tmp_path, no_work, verb):
    work = tmp_path / "work"
    for sub in ("heads", "scans", "eyecandies"):
        (work / sub).mkdir(parents=True)
    if verb.endswith("--json"):  # a file is expected, a folder is there
        out = work / "taken"
        out.mkdir()
    else:  # a folder is expected, a file is there
        out = work / "taken"
        out.write_text("x")
    argv = _verbs(data, stub_model, work, out)[verb]
    bad_input(argv, names=out, watch=[data, stub_model, work])


def test_read_only_folder_when_permissions_apply(cli, bad_input, data, stub_model, tmp_path, no_work):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root: permission bits are not enforced; the blocker cases cover it
            out = _blocked(tmp_path)
        else:
            out = ro / "out"
        for verb in ("evaluate", "preprocess", "benchmark --json"):
            argv = _verbs(data, stub_model, tmp_path, out)[verb]
            bad_input(argv, names=out, watch=[data, stub_model, ro])
    finally:
        ro.chmod(0o700)


def test_catalogue_covers_every_verb_that_writes():
    """A new verb that writes must be added to the unwritable-output catalogue."""
    from cmdr_iad.cli import VERB_MODULES

    covered = {v.split()[0] for v in VERBS_THAT_WRITE}
    assert {m.replace("_", "-") for m in VERB_MODULES} == covered


@pytest.mark.parametrize("verb", ["train", "import-official"])
def test_model_out_that_is_a_foreign_folder(cli, bad_input, data, stub_model, tmp_path, no_work, verb):
    """Saving refuses to replace a non-empty folder that is not a model: said before the run."""
    work = tmp_path / "work"
    for sub in ("heads", "scans", "eyecandies"):
        (work / sub).mkdir(parents=True)
    foreign = work / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpeg")
    argv = _verbs(data, stub_model, work, foreign)[verb]
    bad_input(argv, names=foreign, watch=[data, work])


@pytest.mark.parametrize("verb", ["train", "evaluate", "predict", "import-official"])
def test_missing_explicit_weight_file(cli, bad_input, data, stub_model, tmp_path, no_work, verb):
    work = tmp_path / "work"
    for sub in ("heads", "scans", "eyecandies"):
        (work / sub).mkdir(parents=True)
    missing = work / "dino.safetensors"
    argv = _verbs(data, stub_model, work, work / "out")[verb]
    argv = [a for a in argv if a != "--random-backbones"]
    bad_input([*argv, "--dino-weights", missing], names=missing, watch=[data, work, stub_model])


@pytest.mark.parametrize("verb", ["pointcloud train", "pointcloud evaluate", "pointcloud predict",
                                  "pointcloud table8"])
def test_pointcloud_missing_point_mae_weights(cli, bad_input, data, stub_model, tmp_path, no_work, verb):
    work = tmp_path / "work"
    for sub in ("heads", "scans", "eyecandies"):
        (work / sub).mkdir(parents=True)
    missing = work / "pretrain.pth"
    argv = [a for a in _verbs(data, stub_model, work, work / "out")[verb] if a != "--random-backbones"]
    bad_input([*argv, "--point-mae-weights", missing], names=missing, watch=[data, work, stub_model])
