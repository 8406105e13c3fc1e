"""cmdr_iad.progress: one bar helper; a disabled bar prints nothing, an enabled one goes to stderr."""

from __future__ import annotations

from cmdr_iad.progress import progress, track


def test_disabled_bar_is_silent(capsys):
    with progress(3, "work", enabled=False) as bar:
        bar.advance(info="x")
        bar.update(total=5, completed=2, description="other")
        assert not bar.enabled
    assert list(track([1, 2], "t", enabled=False)) == [1, 2]
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_enabled_bar_writes_to_stderr_only(capsys):
    with progress(2, "work") as bar:
        assert bar.enabled
        bar.advance(info="loss 0.5")
        bar.advance()
    assert list(track(range(3), "count")) == [0, 1, 2]
    out, err = capsys.readouterr()
    assert out == "" and "work" in err and "count" in err
