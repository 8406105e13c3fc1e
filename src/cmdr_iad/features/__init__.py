"""Frozen encoders (DINO ViT-B/8, Point-MAE), geometry, pixel-aligned feature extraction, weights,
the feature cache and the cache-backed sample store (lazy re-exports: no torch import until used)."""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "FeatureExtractor": ".extractor",
    "Features": ".extractor",
    "SampleRows": ".extractor",
    "FeatureCache": ".cache",
    "CachedFeatures": ".cache",
    "CompactCache": ".cache",
    "CachedSampleStore": ".store",
    "cache_features": ".store",
    "resolve_weights": ".weights",
})
