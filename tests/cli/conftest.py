"""Fixtures of the CLI tests: a small generated dataset, a stand-in model folder, an in-process
runner, tree snapshots, and a guard that fails a test when expensive work starts."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """MVTec-layout synthetic data: category "puck", 3 train, 1 validation, 1 good + 4 defective test, 48×48."""
    from cmdr_iad.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("cli-synth") / "data"
    generate_dataset(root, categories=("puck",), n_train=3, n_val=1, n_test_good=1,
                     n_test_defect=1, size=(48, 48), seed=0)
    return root


@pytest.fixture
def data(synth_data, tmp_path) -> Path:
    """A private copy of `synth_data` that a test may corrupt."""
    dst = tmp_path / "data"
    shutil.copytree(synth_data, dst)
    return dst


def write_stub_model(folder: Path, modality: str = "rgb+xyz", category: str = "puck") -> Path:
    """A model folder holding only model.json: enough for the checks that must happen before
    any weights are read (loading it for real fails)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": 1, "kind": "cmdr-iad", "modality": modality, "preset": "tiny",
            "info": {"category": category}}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def stub_model(tmp_path) -> Path:
    return write_stub_model(tmp_path / "model")


@pytest.fixture
def make_stub_model():
    return write_stub_model


@pytest.fixture
def cli(capsys):
    """Run `cmdr-iad ARGS...` in-process → (exit code, stdout, stderr); usage errors (argparse
    raises SystemExit) give their exit code too."""
    from cmdr_iad.cli import main

    def run(*argv) -> tuple[int, str, str]:
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def snapshot(root: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file (and '<dir>' for folders) below `root`."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def bad_input(cli):
    """`bad_input(argv, names=..., watch=[...])`: run the verb and check the contract (exit 2,
    one non-empty stderr line starting with "cmdr-iad" and containing `names`, every folder of
    `watch` unchanged); returns the stderr line."""

    def check(argv, *, names, watch: list[Path]) -> str:
        before = {w: snapshot(w) for w in watch}
        rc, out, err = cli(*argv)
        lines = err.splitlines()
        assert rc == 2, (rc, err)
        assert len(lines) == 1 and lines[0].strip(), err
        assert lines[0].startswith("cmdr-iad"), err
        assert str(names) in lines[0], (str(names), err)
        for w in watch:
            assert snapshot(w) == before[w], f"{w} changed"
        return lines[0]

    return check


EXPENSIVE = [  # (module, attribute): the work that must not start on bad input
    ("cmdr_iad.detector", "CMDRIAD"),
    ("cmdr_iad.grid.run", "run_cell"),
    ("cmdr_iad.benchmark", "run"),
    ("cmdr_iad.benchmark", "run_isolated"),
    ("cmdr_iad.data.synthetic", "generate_dataset"),
    ("cmdr_iad.data.preprocess", "preprocess_dataset"),
    ("cmdr_iad.data.eyecandies", "convert_eyecandies"),
    ("cmdr_iad.official", "import_official"),
    ("cmdr_iad.pointcloud.dataset", "build_dataset"),
    ("cmdr_iad.pointcloud.train", "train_scan_model"),
    ("cmdr_iad.pointcloud.evaluate", "evaluate_scan_model"),
    ("cmdr_iad.pointcloud.predict", "predict_scan"),
    ("cmdr_iad.pointcloud.table8", "run_table8"),
    ("cmdr_iad.serve.app", "create_app"),
]


@pytest.fixture(scope="session")
def all_imported() -> None:
    """Every cmdr_iad module imported (request it before monkeypatching library names)."""
    _import_everything()


@pytest.fixture
def no_work(monkeypatch, all_imported):
    """Replace every expensive entry point by one that raises: a verb that starts real work before
    its inputs are validated then exits 1 (internal error) instead of 2."""
    import importlib

    def forbidden(*args, **kwargs):
        raise AssertionError("expensive work started before the input was validated")

    for mod, attr in EXPENSIVE:
        monkeypatch.setattr(importlib.import_module(mod), attr, forbidden)


def _import_everything() -> None:
    """Import every cmdr_iad module before patching, so that no module imported for the first
    time during a patched test binds a stand-in with `from x import y` for the whole session."""
    import importlib
    import pkgutil

    import cmdr_iad

    for info in pkgutil.walk_packages(cmdr_iad.__path__, "cmdr_iad."):
        importlib.import_module(info.name)
