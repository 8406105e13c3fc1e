import pytest

from cmdr_iad.cli import main


def test_help_lists_usage(capsys):
    assert main([]) == 0
    assert "cmdr-iad" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "cmdr-iad" in capsys.readouterr().out


VERBS = ["demo", "synth", "preprocess", "convert", "train", "evaluate", "predict", "import-official",
         "pointcloud", "benchmark", "weights", "pointcloud build", "pointcloud train",
         "pointcloud evaluate", "pointcloud predict", "pointcloud table8", "convert eyecandies"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([*verb.split(), "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_unknown_verb_is_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
