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
         "pointcloud evaluate", "pointcloud predict", "pointcloud table8", "convert eyecandies",
         "cache", "cache info", "cache clean"]


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


@pytest.mark.parametrize("argv", [["frobnicate"], ["train", "--nope"], ["synth", "x", "--size", "a", "b"],
                                  ["pointcloud", "build", "s", "o", "--detector", "svm"]])
def test_usage_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert len(err.splitlines()) == 1 and "error:" in err and "--help" in err, err


def test_no_deprecated_spelling_in_any_help(capsys):
    """Hidden aliases stay hidden: no verb's --help shows an old spelling."""
    for verb in VERBS:
        with pytest.raises(SystemExit):
            main([*verb.split(), "--help"])
        text = capsys.readouterr().out
        assert "--feature-cache" not in text and "--bn " not in text and "--bn\n" not in text, verb
