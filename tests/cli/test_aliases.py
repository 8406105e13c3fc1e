"""One name per concept (issue 11, item 4): the new spellings, and the old ones kept for one
release as hidden aliases that give the same parsed options plus a one-line note on stdout."""

from __future__ import annotations

import pytest

from cmdr_iad.cli import build_parser

# (old argv, new argv, dest, expected value)
ALIASES = [
    (["pointcloud", "train", "B", "--out", "M", "--feature-cache", "C"],
     ["pointcloud", "train", "B", "--out", "M", "--cache-dir", "C"], "cache_dir", "C"),
    (["pointcloud", "table8", "S", "W", "--feature-cache", "C"],
     ["pointcloud", "table8", "S", "W", "--cache-dir", "C"], "cache_dir", "C"),
    (["pointcloud", "train", "B", "--out", "M", "--bn", "running"],
     ["pointcloud", "train", "B", "--out", "M", "--point-mae-bn", "running"], "point_mae_bn", "running"),
    (["import-official", "H", "--category", "c", "--out", "M", "--epochs", "7"],
     ["import-official", "H", "--category", "c", "--out", "M", "--file-epochs", "7"], "file_epochs", 7),
    (["import-official", "H", "--category", "c", "--out", "M", "--batch-size", "3"],
     ["import-official", "H", "--category", "c", "--out", "M", "--file-batch-size", "3"],
     "file_batch_size", 3),
]


@pytest.mark.parametrize("old, new, dest, value", ALIASES, ids=[a[0][-2] for a in ALIASES])
def test_old_spelling_parses_like_the_new_one(old, new, dest, value):
    a_old, a_new = build_parser().parse_args(old), build_parser().parse_args(new)
    assert getattr(a_old, dest) == getattr(a_new, dest) == value
    assert len(a_old.deprecations) == 1 and old[-2] in a_old.deprecations[0]
    assert not getattr(a_new, "deprecations", None)


@pytest.mark.parametrize("old, new, dest, value", ALIASES, ids=[a[0][-2] for a in ALIASES])
def test_old_spelling_is_hidden_from_help(old, new, dest, value, capsys):
    verb = old[:2] if old[0] == "pointcloud" else old[:1]
    with pytest.raises(SystemExit):
        build_parser().parse_args([*verb, "--help"])
    text = capsys.readouterr().out
    assert new[-2] in text and f"{old[-2]} " not in text.replace(new[-2], "")


def test_defaults_without_the_option():
    a = build_parser().parse_args(["import-official", "H", "--category", "c", "--out", "M"])
    assert (a.file_epochs, a.file_batch_size) == (50, 1)
    b = build_parser().parse_args(["pointcloud", "train", "B", "--out", "M"])
    assert b.cache_dir is None and b.point_mae_bn is None


def test_alias_note_goes_to_stdout(cli, tmp_path):
    """The old spelling works end to end: the note is on stdout, stderr only has the error."""
    rc, out, err = cli("pointcloud", "train", tmp_path / "no-build", "--out", tmp_path / "m", "--bn",
                       "running", "--quiet")
    assert "--bn is deprecated" in out and "--point-mae-bn" in out
    assert rc == 2 and len(err.splitlines()) == 1 and "no-build" in err


@pytest.mark.parametrize("verb, dest", [
    (["preprocess", "SRC"], "dst"),
    (["synth"], "out"),
    (["convert", "eyecandies", "SRC"], "dst"),
    (["pointcloud", "build", "SRC"], "out_dir"),
    (["pointcloud", "table8", "SRC"], "work_dir"),
])
def test_positional_output_and_out_are_the_same(verb, dest):
    from cmdr_iad.cli.common import output_path

    a = build_parser().parse_args([*verb, "DST"])
    b = build_parser().parse_args([*verb, "--out", "DST"])
    assert str(output_path(a, dest, "X")) == str(output_path(b, dest, "X")) == "DST"


def test_two_different_outputs_are_refused(cli, tmp_path):
    rc, out, err = cli("synth", tmp_path / "a", "--out", tmp_path / "b", "--quiet")
    assert rc == 2 and len(err.splitlines()) == 1 and "two output locations" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("verb", [["train", "D", "--category", "c", "--out", "M"],
                                  ["evaluate", "M", "D", "--out", "R"],
                                  ["predict", "M", "--rgb", "x.png", "--out", "O"]])
def test_units_on_train_evaluate_predict(verb):
    assert build_parser().parse_args([*verb, "--units", "mm"]).units == "mm"
    assert build_parser().parse_args(verb).units == "m"


def test_device_accepts_cuda_index_everywhere():
    parser = build_parser()
    for verb in (["train", "D", "--category", "c", "--out", "M"], ["evaluate", "M", "D", "--out", "R"],
                 ["predict", "M", "--out", "O"], ["benchmark"], ["demo"],
                 ["import-official", "H", "--category", "c", "--out", "M"],
                 ["pointcloud", "train", "B", "--out", "M"]):
        assert parser.parse_args([*verb, "--device", "cuda:1"]).device == "cuda:1"


def test_train_variant_choices_are_the_fusion_variants(capsys):
    from cmdr_iad.cli.train import TRAIN_VARIANTS
    from cmdr_iad.model.fusion import VARIANTS

    assert tuple(TRAIN_VARIANTS) == tuple(VARIANTS)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "D", "--category", "c", "--out", "M", "--variant", "nope"])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_weights_json_without_file_still_prints(cli, tmp_path):
    import json

    rc, out, err = cli("weights", "--json")
    assert "weights" in json.loads(out)
    rc, out, err = cli("weights", "--json", "-")
    assert "weights" in json.loads(out)
    target = tmp_path / "w.json"
    rc, out, err = cli("weights", "--json", target)
    assert "weights" in json.loads(target.read_text()) and f"wrote {target}" in out
