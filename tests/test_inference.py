"""The one inference path: branch choice (missing vs ignored inputs), the stage-timer hook, and
the path's input checks. End-to-end equality with the reference path is in
tests/workflow/test_detector.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_iad import CMDRIAD, presets
from cmdr_iad.data.sample import Sample
from cmdr_iad.errors import UserInputError
from cmdr_iad.inference import StageTimer, choose_branch, cloud_has_points


@pytest.mark.parametrize("modality,has_rgb,has_xyz,empty,branch,missing", [
    ("rgb+xyz", True, True, False, "rgb+xyz", None),
    ("rgb+xyz", True, False, False, "rgb", "xyz"),
    ("rgb+xyz", True, True, True, "rgb", "xyz"),  # a cloud without a valid point is missing
    ("rgb+xyz", False, True, False, "xyz", "rgb"),
    ("rgb", True, True, False, "rgb", None),  # ignored, not missing
    ("rgb", True, False, False, "rgb", None),
    ("xyz", True, True, False, "xyz", None),  # ignored, not missing
    ("xyz", False, True, False, "xyz", None),
])
def test_branch_choice_reports_only_absent_inputs_as_missing(modality, has_rgb, has_xyz, empty,
                                                             branch, missing):
    c = choose_branch(modality, has_rgb, has_xyz, empty)
    assert (c.branch, c.missing_modality) == (branch, missing)
    ignored = (modality == "rgb" and has_xyz) or (modality == "xyz" and has_rgb)
    assert any("ignored" in n for n in c.notes) == ignored
    assert bool(c.notes) == (ignored or missing is not None)


@pytest.mark.parametrize("modality,has_rgb,has_xyz,empty", [
    ("rgb", False, True, False), ("xyz", True, False, False), ("xyz", False, True, True),
    ("rgb+xyz", False, True, True), ("rgb+xyz", False, False, False)])
def test_branch_choice_without_usable_input_is_a_user_error(modality, has_rgb, has_xyz, empty):
    with pytest.raises(UserInputError):
        choose_branch(modality, has_rgb, has_xyz, empty)


def test_cloud_has_points():
    xyz = torch.zeros(3, 3, 4, 4)
    xyz[1, :, 2, 2] = 1.0
    xyz[2, :2, 0, 0] = 1.0  # one coordinate 0: not a point
    assert cloud_has_points(xyz).tolist() == [False, True, False]


def test_stage_timer_accumulates_per_stage():
    t = StageTimer("cpu")
    for _ in range(2):
        with t("a"):
            pass
    with t("b"):
        sum(range(1000))
    assert set(t.seconds) == {"a", "b"} and t.total() == pytest.approx(sum(t.seconds.values()))
    assert all(v >= 0 for v in t.seconds.values())


@pytest.fixture(scope="module")
def rgb_model():
    """An untrained RGB-only tiny model (random backbones): scoring needs no training."""
    return CMDRIAD(presets.tiny("rgb"), random_backbones=True, device="cpu")


def _sample(with_xyz: bool) -> Sample:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    xyz = rng.uniform(0.1, 1.0, (40, 40, 3)).astype(np.float32) if with_xyz else None
    return Sample(rgb=rgb, xyz=xyz, key="s")


def test_rgb_only_model_given_a_cloud_reports_no_missing_modality(rgb_model):
    both = rgb_model.predict(_sample(True))
    assert both.branch == "rgb" and both.missing_modality is None
    assert both.to_json()["missing_modality"] is None
    assert any("ignored" in n for n in both.notes)
    alone = rgb_model.predict(_sample(False))
    assert alone.missing_modality is None and not alone.notes
    np.testing.assert_array_equal(both.map_grid, alone.map_grid)  # the cloud changed nothing


def test_path_hooks_see_every_stage_once_per_sample(rgb_model):
    seen: list[str] = []

    class Recorder:
        def __call__(self, name):
            seen.append(name)
            from contextlib import nullcontext

            return nullcontext()

    list(rgb_model.predict_many([_sample(False), _sample(False)], batch_size=2, timer=Recorder()))
    assert seen.count("transforms") == 2 and seen.count("features") == 2
    assert seen.count("heads") == 2 and seen.count("fusion") == 1 and seen.count("output") == 2


def test_path_refuses_an_unknown_head_path_and_missing_inputs(rgb_model):
    with pytest.raises(ValueError, match="heads must be one of"):
        rgb_model.path.score(torch.zeros(1, 3, 112, 112), branch="rgb", heads="dense")
    with pytest.raises(ValueError, match="needs its inputs"):
        rgb_model.path.score(None, None, branch="rgb")
    with pytest.raises(ValueError, match="no xyz branch"):
        rgb_model.path.extractor_for("xyz")
