import json

import pytest
import torch

from cmdr_iad.artifact import FORMAT_VERSION, load_artifact, save_artifact
from cmdr_iad.errors import ArtifactError


def test_round_trip(tmp_path):
    t = {"a.weight": torch.randn(3, 4), "b": torch.arange(5)}
    save_artifact(tmp_path / "m", t, {"threshold": 1.5}, kind="demo")
    got, meta = load_artifact(tmp_path / "m", kind="demo")
    assert torch.equal(got["a.weight"], t["a.weight"]) and torch.equal(got["b"], t["b"])
    assert meta["threshold"] == 1.5 and meta["format_version"] == FORMAT_VERSION
    # overwrite keeps a valid artefact and leaves no temp folders
    save_artifact(tmp_path / "m", t, {"threshold": 2.0}, kind="demo")
    assert load_artifact(tmp_path / "m")[1]["threshold"] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_truncated_and_wrong_kind_and_newer(tmp_path):
    save_artifact(tmp_path / "m", {"x": torch.ones(100)}, {}, kind="demo")
    with pytest.raises(ArtifactError, match="expected 'other'"):
        load_artifact(tmp_path / "m", kind="other")
    w = tmp_path / "m" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="newer"):
        load_artifact(tmp_path / "m")


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        save_artifact(tmp_path / "m", {"x": torch.ones(2)}, {"bad": object()}.__class__, kind="demo")
    assert list(tmp_path.iterdir()) == []
