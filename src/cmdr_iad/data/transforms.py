"""Sample transforms: original-resolution arrays → network tensors, and maps back.

Two modes (`FeatureConfig.transforms`):

"reference" (paper preset) reproduces the authors' loader bit for bit:
- RGB: square-pad with edge replication (left/top = (S−W)//2, (S−H)//2, the remainder right/bottom)
  → Pillow bicubic resize to `rgb_size` → /255 → ImageNet normalisation, float32 (3, S, S);
- xyz: the UNPADDED cloud resized to (G, G) with torch's legacy nearest
  (`pc[:, i, j] = xyz[floor(i·H/G), floor(j·W/G)]`), i.e. stretched;
- GT: edge square-pad → Pillow NEAREST resize to G (centre-aligned) → /255 > 0.5.
For non-square inputs the xyz grid is then NOT aligned with RGB / GT (a known quirk of the reference).

"aligned" keeps RGB as above but square-pads the xyz with zeros (= missing points) and the GT with
zeros at the same offsets, then resizes both with centre-aligned nearest ("nearest-exact"), so that
RGB, xyz and GT describe the same pixels for any aspect ratio.

`to_original` brings a (G, G) map back to the (H, W) of the source image by undoing the square pad.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .sample import Sample, TransformedSample

if TYPE_CHECKING:
    from ..config import FeatureConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = ("reference", "aligned")


def square_pad_geometry(h: int, w: int) -> tuple[int, int, int]:
    """(S, top, left) of the square pad of an (h, w) image: S = max(h, w), top/left = floor half."""
    s = max(h, w)
    return s, (s - h) // 2, (s - w) // 2


def pad_square(a: np.ndarray, mode: str = "edge") -> np.ndarray:
    """Pad (H, W[, C]) to (S, S[, C]); mode "edge" (replicate) or "zeros"."""
    h, w = a.shape[:2]
    s, top, left = square_pad_geometry(h, w)
    pads = [(top, s - h - top), (left, s - w - left)] + [(0, 0)] * (a.ndim - 2)
    if mode == "edge":
        return np.pad(a, pads, mode="edge")
    if mode == "zeros":
        return np.pad(a, pads, mode="constant", constant_values=0)
    raise ValueError(f"unknown pad mode {mode!r}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"transforms mode must be one of {MODES}, got {mode!r}")


def rgb_to_tensor(rgb: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) → float32 (3, size, size): edge square-pad, Pillow bicubic, ImageNet norm.

    Pillow is called on purpose: its antialiased bicubic rounds to uint8, which is what the
    reference (torchvision `Resize` on a PIL image) feeds the network.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    img = Image.fromarray(np.ascontiguousarray(pad_square(rgb, "edge")))
    img = img.resize((size, size), Image.BICUBIC)
    t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    t = t.to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(-1, 1, 1)
    return t.sub(mean).div(std)


def xyz_to_tensor(xyz: np.ndarray, size: int, mode: str = "reference") -> torch.Tensor:
    """float32 (H, W, 3) → (3, size, size).

    reference: legacy nearest of the unpadded (stretched) cloud; aligned: zero square-pad then
    centre-aligned nearest.
    """
    _check_mode(mode)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f"xyz must be (H, W, 3), got {xyz.shape}")
    a = np.asarray(xyz, dtype=np.float32)
    if mode == "aligned":
        a = pad_square(a, "zeros")
        interp = "nearest-exact"
    else:
        interp = "nearest"
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).unsqueeze(0)
    return F.interpolate(t, size=(size, size), mode=interp)[0].contiguous()


def reference_depth(xyz: np.ndarray, size: int = 224) -> torch.Tensor:
    """The reference's `depth` tensor: z repeated on 3 channels, legacy nearest to (3, size, size)."""
    z = np.repeat(np.asarray(xyz, dtype=np.float32)[..., 2:3], 3, axis=2)
    return xyz_to_tensor(z, size, "reference")


def gt_to_tensor(gt: np.ndarray, size: int, mode: str = "reference") -> torch.Tensor:
    """bool/uint8 (H, W) mask → float32 (size, size) with values 0/1.

    reference: edge square-pad, Pillow NEAREST, /255 > 0.5; aligned: zero square-pad, then the
    same centre-aligned nearest as the aligned xyz (so the two grids coincide exactly).
    """
    _check_mode(mode)
    if gt.ndim != 2:
        raise ValueError(f"gt must be (H, W), got {gt.shape}")
    m = (gt > 127) if gt.dtype == np.uint8 else gt.astype(bool)
    u8 = m.astype(np.uint8) * 255
    if mode == "reference":
        img = Image.fromarray(np.ascontiguousarray(pad_square(u8, "edge")))
        img = img.resize((size, size), Image.NEAREST)
        v = torch.from_numpy(np.array(img, dtype=np.uint8)).to(torch.float32).div(255)
        return (v > 0.5).to(torch.float32)
    t = torch.from_numpy(pad_square(m, "zeros").astype(np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="nearest-exact")[0, 0].contiguous()


def transform_sample(sample: Sample, cfg: FeatureConfig) -> TransformedSample:
    """Apply the transforms of `cfg.transforms` at `cfg.rgb_size` (RGB) and `cfg.grid_size` (xyz, GT)."""
    mode = cfg.transforms
    _check_mode(mode)
    rgb = None if sample.rgb is None else rgb_to_tensor(sample.rgb, cfg.rgb_size)
    xyz = None if sample.xyz is None else xyz_to_tensor(sample.xyz, cfg.grid_size, mode)
    gt = None if sample.gt is None else gt_to_tensor(sample.gt, cfg.grid_size, mode)
    return TransformedSample(rgb=rgb, xyz=xyz, gt=gt, label=int(sample.label), key=sample.key,
                             orig_size=sample.size or (0, 0), defect_type=sample.defect_type)


def to_original(amap: np.ndarray | torch.Tensor, orig_size: tuple[int, int], mode: str = "reference",
                *, frame: str = "image", interpolation: str = "bilinear") -> np.ndarray | torch.Tensor:
    """Resize a (..., G, G) map to (..., H, W) of the source image, undoing the square pad.

    The grid of RGB and GT (both modes) and of xyz in "aligned" mode covers the padded square; the
    map is resized to S × S (S = max(H, W)) and the pad is cropped away. In "reference" mode the xyz
    grid is stretched instead: pass `frame="xyz"` to map a map that lives on that grid (e.g. the
    valid-point mask) with a plain resize. The reference evaluates maps against the padded GT, so
    the default `frame="image"` is the one to use for anomaly maps.
    interpolation: "bilinear" (align_corners=False) or "nearest" (centre-aligned).
    Returns the same type (numpy or torch) as the input, float32.
    """
    _check_mode(mode)
    if frame not in ("image", "xyz"):
        raise ValueError(f"frame must be 'image' or 'xyz', got {frame!r}")
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    is_np = isinstance(amap, np.ndarray)
    t = torch.from_numpy(np.asarray(amap, dtype=np.float32)) if is_np else amap.to(torch.float32)
    if t.ndim < 2:
        raise ValueError(f"map must be (..., G, G), got {tuple(t.shape)}")
    lead = t.shape[:-2]
    t4 = t.reshape(-1, 1, *t.shape[-2:])
    h, w = int(orig_size[0]), int(orig_size[1])
    kw = {"mode": "bilinear", "align_corners": False} if interpolation == "bilinear" else {
        "mode": "nearest-exact"}
    if frame == "xyz" and mode == "reference":
        out = F.interpolate(t4, size=(h, w), **kw)
    else:
        s, top, left = square_pad_geometry(h, w)
        out = F.interpolate(t4, size=(s, s), **kw)[..., top:top + h, left:left + w]
    out = out.reshape(*lead, h, w).contiguous()
    return out.numpy() if is_np else out
