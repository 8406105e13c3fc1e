"""Networks and pure tensor math of CMDR-IAD (no IO, nothing else of ours imported): mapping
MLPs, decoders, the heads and their valid-row evaluation, loss, distances, fusion (one function
per paper equation)."""

from __future__ import annotations

from . import fusion
from .decoders import Decoder2D, Decoder3D
from .heads import HEADS_BY_MODALITY, build_heads, load_strict
from .mapping import CrossModalMLP

__all__ = ["CrossModalMLP", "Decoder2D", "Decoder3D", "HEADS_BY_MODALITY", "build_heads",
           "load_strict", "fusion"]
