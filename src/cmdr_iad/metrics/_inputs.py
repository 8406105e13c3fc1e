"""Conversion and validation of metric inputs (numpy or torch; stacked or lists of maps).

Every public metric funnels its arguments through :func:`collect_pixels`, which returns the
pixels of all images flattened row-major and concatenated in image order, plus the per-image
shapes (needed for connected-component labelling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import EvaluationError

__all__ = ["Pixels", "collect_pixels", "label_components", "to_numpy", "to_vector"]

# 8-connectivity in the image plane (the official MVTec 3D-AD / paper code uses a 3x3 of ones).
_STRUCTURE_2D = np.ones((3, 3), dtype=bool)
# The same for a stack (N, H, W): no connectivity between images.
_STRUCTURE_STACK = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_STACK[1] = True


@dataclass(frozen=True)
class Pixels:
    """All pixels of an evaluation set.

    ``scores`` (P,) float32/float64 and ``anomalous`` (P,) bool hold every image flattened
    row-major, concatenated in image order; ``shapes`` are the per-image ``(H, W)``.
    """

    scores: np.ndarray
    anomalous: np.ndarray
    shapes: tuple[tuple[int, int], ...]


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of ``x`` (numpy array, torch tensor on any device, or nested sequence)."""
    if type(x).__module__.split(".")[0] == "torch":
        t = x.detach().cpu()
        if t.is_floating_point() and t.element_size() < 4:  # float16 / bfloat16
            t = t.double()
        return t.numpy()
    return np.asarray(x)


def _split_images(x: Any, what: str) -> list[np.ndarray] | np.ndarray:
    """Stacked ``(N, H, W)`` array (or ``(N, 1, H, W)``, or one ``(H, W)`` map) or a list of 2-D maps."""
    if isinstance(x, (list, tuple)):
        out = []
        for i, item in enumerate(x):
            a = to_numpy(item)
            if a.ndim == 3 and a.shape[0] == 1:
                a = a[0]
            if a.ndim != 2:
                raise EvaluationError(
                    f"{what} {i} must be a 2-D (H, W) map, got shape {tuple(a.shape)}"
                )
            out.append(a)
        return out
    a = to_numpy(x)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise EvaluationError(
            f"{what} must be a list of (H, W) maps or an (N, H, W) array, got shape {tuple(a.shape)}"
        )
    return a


def _check_numeric(a: np.ndarray, what: str) -> None:
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
        raise EvaluationError(f"{what} must hold real numbers, got dtype {a.dtype}")


def _score_dtype(dtypes: Sequence[np.dtype]) -> np.dtype:
    """float32 stays float32 (exact and half the memory); anything else is compared in float64."""
    if all(d == np.float32 for d in dtypes):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _first_bad_image(values: np.ndarray, shapes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """(image index, count) of the first image with non-finite values in flattened ``values``."""
    bad = (~np.isfinite(values)).astype(np.intp)
    sizes = [h * w for h, w in shapes]
    counts = np.add.reduceat(bad, np.cumsum([0] + sizes[:-1]))
    i = int(np.flatnonzero(counts)[0])
    return i, int(counts[i])


def collect_pixels(anomaly_maps: Any, gt_masks: Any) -> Pixels:
    """Validate maps against masks and flatten both (row-major, image order).

    Raises :class:`EvaluationError` for an empty set, differing image counts, a shape mismatch
    (naming the index and both shapes), non-numeric data, or NaN/inf scores or mask values.
    A mask pixel is anomalous iff it is non-zero.
    """
    maps = _split_images(anomaly_maps, "anomaly map")
    masks = _split_images(gt_masks, "ground-truth mask")
    if len(maps) == 0:
        raise EvaluationError("no anomaly maps given: the evaluation set is empty")
    if len(maps) != len(masks):
        raise EvaluationError(f"{len(maps)} anomaly maps but {len(masks)} ground-truth masks")
    map_shapes = [tuple(int(s) for s in m.shape) for m in maps]
    mask_shapes = [tuple(int(s) for s in m.shape) for m in masks]
    for i, (ms, gs) in enumerate(zip(map_shapes, mask_shapes, strict=True)):
        if ms != gs:
            raise EvaluationError(
                f"anomaly map {i} has shape {ms} but ground-truth mask {i} has shape {gs}"
            )
        if ms[0] * ms[1] == 0:
            raise EvaluationError(f"anomaly map {i} is empty (shape {ms})")

    if isinstance(maps, np.ndarray):
        _check_numeric(maps, "anomaly maps")
        scores = maps.reshape(-1).astype(_score_dtype([maps.dtype]), copy=False)
    else:
        for i, m in enumerate(maps):
            _check_numeric(m, f"anomaly map {i}")
        dtype = _score_dtype([m.dtype for m in maps])
        scores = np.concatenate([m.reshape(-1).astype(dtype, copy=False) for m in maps])
    if not np.isfinite(scores).all():
        i, k = _first_bad_image(scores, map_shapes)
        raise EvaluationError(f"anomaly map {i} contains {k} NaN/inf score(s)")

    if isinstance(masks, np.ndarray):
        _check_numeric(masks, "ground-truth masks")
        flat_masks = masks.reshape(-1)
    else:
        for i, m in enumerate(masks):
            _check_numeric(m, f"ground-truth mask {i}")
        flat_masks = np.concatenate([m.reshape(-1) for m in masks])
    if flat_masks.dtype == np.bool_:
        anomalous = flat_masks
    else:
        if np.issubdtype(flat_masks.dtype, np.floating) and not np.isfinite(flat_masks).all():
            i, k = _first_bad_image(flat_masks, mask_shapes)
            raise EvaluationError(f"ground-truth mask {i} contains {k} NaN/inf value(s)")
        anomalous = flat_masks != 0
    return Pixels(scores=scores, anomalous=anomalous, shapes=tuple(map_shapes))  # type: ignore[arg-type]


def label_components(pixels: Pixels) -> tuple[np.ndarray, int]:
    """8-connected components of the anomalous pixels, numbered over the whole set.

    Returns ``(labels, n)`` where ``labels`` (P,) is 0 for normal pixels and 1..n for the
    components, numbered image by image and, within an image, in raster order of each
    component's first pixel (the order of ``scipy.ndimage.label`` on each map).
    """
    shapes = pixels.shapes
    if len(set(shapes)) == 1:
        h, w = shapes[0]
        stack = pixels.anomalous.reshape(len(shapes), h, w)
        labels, n = ndimage.label(stack, structure=_STRUCTURE_STACK)
        return labels.reshape(-1), int(n)
    labels = np.zeros(pixels.anomalous.size, dtype=np.int64)
    offset = 0
    n_total = 0
    for h, w in shapes:
        size = h * w
        lab, n = ndimage.label(
            pixels.anomalous[offset : offset + size].reshape(h, w), _STRUCTURE_2D
        )
        lab = lab.reshape(-1)
        labels[offset : offset + size] = np.where(lab > 0, lab + n_total, 0)
        n_total += int(n)
        offset += size
    return labels, n_total


def to_vector(x: Any, what: str) -> np.ndarray:
    """A flat 1-D numpy array from a sequence, array or tensor of any shape."""
    a = to_numpy(x)
    _check_numeric(a, what)
    return a.reshape(-1)
