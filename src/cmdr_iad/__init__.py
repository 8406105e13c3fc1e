"""cmdr-iad: CMDR-IAD (Cross-Modal Mapping and Dual-Branch Reconstruction) for industrial
anomaly detection on RGB images and 3D point clouds (arXiv 2603.03939)."""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__", "CMDRIAD", "presets"]


def __getattr__(name: str):  # lazy: importing the package must stay cheap (no torch import)
    import importlib

    if name == "CMDRIAD":
        return importlib.import_module(".detector", __name__).CMDRIAD
    if name == "presets":
        return importlib.import_module(".presets", __name__)
    raise AttributeError(name)
