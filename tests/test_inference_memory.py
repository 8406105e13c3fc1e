"""Memory of the one inference path, measured so that it cannot flake (issue: a regression of
the compact feature path must fail on any machine; absolute peak-RSS figures live in
benchmarks/ and docs/performance.md).

- Largest tensor: every tensor an aten op creates during one paper-size prediction is recorded
  (a `TorchDispatchMode`; views of existing storage excluded). The compact path's largest
  allocation is the packed F3D itself (1152 × |pooling support| floats); the dense feature maps
  (F2D 768 × 224², F3D 1152 × 224²) must never appear. Tensor sizes are a function of the input
  and the code only, so the check is deterministic.
- Batch flatness: while a batch is scored, each sample's features are released before the next
  sample's extraction (weak references), so memory per sample does not grow with the batch.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cmdr_iad import CMDRIAD, presets
from cmdr_iad.benchmark import benchmark_samples
from cmdr_iad.features.extractor import FeatureExtractor


class LargestAllocation(TorchDispatchMode):
    """Records the largest storage (bytes) newly created by an aten op."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.what = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                  if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                n = t.untyped_storage().nbytes()
                if n > self.largest:
                    self.largest, self.what = n, f"{func} {tuple(t.shape)}"
        return out


def _record_rows(monkeypatch) -> list:
    """Wrap `extract_rows`: keep a weak reference to each sample's features; at each call, the
    previous samples' features must already be gone."""
    refs: list = []
    real = FeatureExtractor.extract_rows

    def wrapped(self, *a, **k):
        gc.collect()
        alive = [i for i, r in enumerate(refs) if r() is not None]
        assert not alive, f"features of sample(s) {alive} are still alive at the next extraction"
        rows = real(self, *a, **k)
        refs.append(weakref.ref(rows.f3d if rows.f3d is not None else rows.f2d))
        return rows

    monkeypatch.setattr(FeatureExtractor, "extract_rows", wrapped)
    return refs


def test_batch_scores_one_sample_features_at_a_time(monkeypatch):
    det = CMDRIAD(presets.tiny("rgb+xyz"), random_backbones=True, device="cpu")
    data = benchmark_samples(3, size=64)
    refs = _record_rows(monkeypatch)
    out = list(det.predict_many(data, batch_size=3))
    assert len(out) == 3 and len(refs) == 3


def test_the_dense_path_would_fail_the_batch_check(monkeypatch):
    """The check above can fail: holding every sample's features (as a dense batch extraction
    does) is caught."""
    det = CMDRIAD(presets.tiny("rgb+xyz"), random_backbones=True, device="cpu")
    data = benchmark_samples(2, size=64)
    _record_rows(monkeypatch)
    kept = []
    real = FeatureExtractor.extract_rows

    def hoarding(self, *a, **k):
        rows = real(self, *a, **k)  # the recording wrapper
        kept.append(rows)
        return rows

    monkeypatch.setattr(FeatureExtractor, "extract_rows", hoarding)
    with pytest.raises(AssertionError, match="still alive"):
        list(det.predict_many(data, batch_size=2))


@pytest.mark.slow  # one paper-size sample with the paper preset's encoders: ~40 s on 2 cores
def test_paper_size_prediction_never_allocates_a_dense_feature_map(monkeypatch):
    cfg = presets.paper("rgb+xyz")
    det = CMDRIAD(cfg, random_backbones=True, device="cpu")
    _ = det.extractor
    packed = []
    real = FeatureExtractor.extract_rows

    def keep_size(self, *a, **k):
        rows = real(self, *a, **k)
        packed.append(rows.f3d.columns()[0].untyped_storage().nbytes())
        return rows

    monkeypatch.setattr(FeatureExtractor, "extract_rows", keep_size)
    data = benchmark_samples(1, size=800)
    with LargestAllocation() as rec:
        res = list(det.predict_many(data, batch_size=1))
    assert len(res) == 1 and len(packed) == 1
    g = cfg.features.grid_size
    dense_f2d, dense_f3d = cfg.heads.dim2d * g * g * 4, cfg.heads.dim3d * g * g * 4
    assert packed[0] < min(dense_f2d, dense_f3d)  # sparse enough a sample for the check to bite
    assert rec.largest <= packed[0], (rec.largest, rec.what, packed[0])
