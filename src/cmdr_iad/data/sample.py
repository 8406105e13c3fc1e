"""One dataset item before and after the transforms, plus batching.

Conventions (shared by every reader):
- `rgb` uint8 (H, W, 3);
- `xyz` float32 (H, W, 3), an organised point cloud in metres; a point (0, 0, 0) means "no point";
- `gt` bool (H, W), True on anomalous pixels;
- `label` 0 good, 1 defective, -1 unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

LABEL_GOOD = 0
LABEL_DEFECT = 1
LABEL_UNKNOWN = -1


@dataclass
class Sample:
    """A raw sample at its original resolution; any of rgb / xyz / gt may be absent (None)."""

    rgb: np.ndarray | None = None
    xyz: np.ndarray | None = None
    gt: np.ndarray | None = None
    label: int = LABEL_UNKNOWN
    defect_type: str = ""
    rgb_path: Path | None = None
    xyz_path: Path | None = None
    gt_path: Path | None = None
    key: str = ""

    @property
    def size(self) -> tuple[int, int] | None:
        """(H, W) of the first present array, else None."""
        for a in (self.rgb, self.xyz, self.gt):
            if a is not None:
                return int(a.shape[0]), int(a.shape[1])
        return None

    @property
    def valid(self) -> np.ndarray | None:
        """(H, W) bool: pixels that carry a 3D point (not all-zero); None without xyz."""
        if self.xyz is None:
            return None
        return np.any(self.xyz != 0, axis=-1)


@dataclass
class TransformedSample:
    """Network-ready tensors: rgb (3, S, S) float32, xyz (3, G, G) float32, gt (G, G) float32 0/1.

    `orig_size` is the (H, W) of the source, needed to bring maps back to the original resolution.
    """

    rgb: torch.Tensor | None
    xyz: torch.Tensor | None
    gt: torch.Tensor | None
    label: int = LABEL_UNKNOWN
    key: str = ""
    orig_size: tuple[int, int] = (0, 0)
    defect_type: str = ""


@dataclass
class SampleBatch:
    """A stack of `TransformedSample`: rgb (B, 3, S, S), xyz (B, 3, G, G), gt (B, G, G), labels (B,)."""

    rgb: torch.Tensor | None
    xyz: torch.Tensor | None
    gt: torch.Tensor | None
    labels: torch.Tensor
    keys: list[str] = field(default_factory=list)
    orig_sizes: list[tuple[int, int]] = field(default_factory=list)
    defect_types: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> SampleBatch:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return SampleBatch(mv(self.rgb), mv(self.xyz), mv(self.gt), self.labels.to(device),
                           list(self.keys), list(self.orig_sizes), list(self.defect_types))


def _stack(items: Sequence[torch.Tensor | None], name: str) -> torch.Tensor | None:
    present = [t is not None for t in items]
    if not any(present):
        return None
    if not all(present):
        raise ValueError(f"cannot batch samples where only some have {name}")
    return torch.stack(list(items))  # type: ignore[arg-type]


def collate(samples: Sequence[TransformedSample]) -> SampleBatch:
    """Stack transformed samples (usable as a `torch.utils.data.DataLoader` collate_fn)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    return SampleBatch(
        rgb=_stack([s.rgb for s in samples], "rgb"),
        xyz=_stack([s.xyz for s in samples], "xyz"),
        gt=_stack([s.gt for s in samples], "gt"),
        labels=torch.tensor([s.label for s in samples], dtype=torch.int64),
        keys=[s.key for s in samples],
        orig_sizes=[s.orig_size for s in samples],
        defect_types=[s.defect_type for s in samples],
    )
