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
