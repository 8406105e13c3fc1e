"""Datasets, readers, transforms, preprocessing and the synthetic generator.

Lazy re-exports keep `import cmdr_iad.data` cheap (no torch import until needed).
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "Sample": ".sample",
    "TransformedSample": ".sample",
    "collate": ".sample",
    "MVTec3DDataset": ".mvtec3d",
    "list_categories": ".mvtec3d",
    "transform_sample": ".transforms",
    "to_original": ".transforms",
    "read_points": ".pointcloud_io",
    "read_organized": ".pointcloud_io",
    "load_sample": ".folder",
    "generate_dataset": ".synthetic",
})
