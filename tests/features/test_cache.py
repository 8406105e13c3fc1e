"""On-disk feature cache: round trip, reuse, invalidation, atomicity, damaged entries."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cmdr_iad.errors import UserInputError
from cmdr_iad.features.cache import FeatureCache, hash_files
from cmdr_iad.features.extractor import Features

KEY = "e" * 64


def feats(b: int = 1, g: int = 6, seed: int = 0, with_2d: bool = True) -> Features:
    gen = torch.Generator().manual_seed(seed)
    f3d = torch.randn(b, 1152, g, g, generator=gen)
    f3d[:, :, 0, :] = 0
    return Features(torch.randn(b, 768, g, g, generator=gen) if with_2d else None, f3d,
                    f3d.sum(1) != 0, {"modality": "rgb+xyz", "weights": {"dino": None}})


def test_round_trip_float32_is_exact_and_memory_mapped(tmp_path):
    cache = FeatureCache(tmp_path)
    f = feats()
    entry = cache.put("s1", KEY, f)
    got = cache.get("s1", KEY)
    assert isinstance(got.f3d, np.memmap) and not got.f3d.flags.writeable
    assert got.f2d.shape == (768, 6, 6) and got.valid.dtype == bool
    assert np.array_equal(got.f3d, f.f3d[0].numpy()) and np.array_equal(got.f2d, f.f2d[0].numpy())
    back = got.to_features()
    assert back.f3d.shape == (1, 1152, 6, 6) and back.f3d.dtype == torch.float32
    assert torch.equal(back.valid, f.valid)
    assert entry.path == cache.entry_path("s1", KEY)
    ident = json.loads((cache.folder(KEY) / "identity.json").read_text())
    assert ident["modality"] == "rgb+xyz"
    assert cache.keys(KEY) == ["s1"]


def test_float16_storage_is_separate_and_close(tmp_path):
    f = feats(with_2d=False)
    FeatureCache(tmp_path).put("s1", KEY, f)
    half = FeatureCache(tmp_path, dtype="float16")
    assert half.get("s1", KEY) is None  # precisions never mix
    e = half.put("s1", KEY, f)
    assert e.f3d.dtype == np.float16 and e.f2d is None
    np.testing.assert_allclose(e.to_features().f3d.numpy(), f.f3d.numpy(), rtol=1e-3, atol=1e-3)
    assert os.path.getsize(e.path / "f3d.npy") < os.path.getsize(
        FeatureCache(tmp_path).entry_path("s1", KEY) / "f3d.npy")
    with pytest.raises(UserInputError, match="dtype"):
        FeatureCache(tmp_path, dtype="int8")


def test_get_or_compute_computes_once(tmp_path):
    cache = FeatureCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return feats(seed=len(calls))

    a = cache.get_or_compute("s", KEY, compute)
    b = FeatureCache(tmp_path).get_or_compute("s", KEY, compute)  # a later run
    assert len(calls) == 1 and np.array_equal(a.f3d, b.f3d)
    c = cache.get_or_compute("s", "f" * 64, compute)  # another extractor key → recomputed
    assert len(calls) == 2 and not np.array_equal(a.f3d, c.f3d)


def test_sample_key_depends_on_contents_only(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.tiff"
    a.write_bytes(b"rgb")
    b.write_bytes(b"xyz")
    k = hash_files([a, b])
    moved = tmp_path / "renamed.png"
    moved.write_bytes(b"rgb")
    assert hash_files([moved, b]) == k
    assert hash_files([b, a]) != k
    assert hash_files([a, None]) != hash_files([a]) != k
    assert hash_files([a, b], extra="pad") != k
    b.write_bytes(b"xyz2")
    assert hash_files([a, b]) != k
    with pytest.raises(UserInputError, match="cannot read"):
        hash_files([tmp_path / "missing.png"])


def test_truncated_entry_is_never_served(tmp_path):
    cache = FeatureCache(tmp_path)
    e = cache.put("s", KEY, feats())
    f3d = e.path / "f3d.npy"
    del e
    data = f3d.read_bytes()
    f3d.write_bytes(data[: len(data) - 100])
    assert cache.get("s", KEY) is None
    assert not cache.entry_path("s", KEY).exists()  # the damaged entry is removed
    cache.put("s", KEY, feats())
    assert cache.get("s", KEY) is not None


def test_incomplete_and_temporary_folders_are_ignored(tmp_path):
    cache = FeatureCache(tmp_path)
    folder = cache.folder(KEY)
    # a crash mid-write leaves only a temporary folder, never the final name
    (folder / ".tmp-s-abc").mkdir(parents=True)
    (folder / ".tmp-s-abc" / "f3d.npy").write_bytes(b"partial")
    assert cache.get("s", KEY) is None and cache.keys(KEY) == []
    # a final-named folder without meta.json (e.g. copied by hand) is not served either
    (folder / "s").mkdir()
    np.save(folder / "s" / "f3d.npy", np.zeros((2, 2), np.float32))
    assert cache.get("s", KEY) is None
    cache.put("s", KEY, feats())  # replaces the bad folder
    assert cache.get("s", KEY) is not None


def test_verify_detects_same_size_corruption(tmp_path):
    cache = FeatureCache(tmp_path)
    e = cache.put("s", KEY, feats())
    f = e.path / "f2d.npy"
    del e
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    assert cache.get("s", KEY) is not None  # size check alone cannot see it
    assert FeatureCache(tmp_path, verify=True).get("s", KEY) is None


def test_put_batch_and_bad_arguments(tmp_path):
    cache = FeatureCache(tmp_path)
    f = feats(b=2)
    with pytest.raises(UserInputError, match="batch of 2"):
        cache.put("s", KEY, f)
    entries = cache.put_batch(["s0", "s1"], KEY, f)
    assert np.array_equal(entries[1].f3d, f.f3d[1].numpy())
    with pytest.raises(UserInputError, match="3 sample keys for a batch of 2"):
        cache.put_batch(["a", "b", "c"], KEY, f)
    for bad in ("../x", "", "a/b"):
        with pytest.raises(UserInputError, match="sample key"):
            cache.get(bad, KEY)
    cache.clear(KEY)
    assert cache.keys(KEY) == []
