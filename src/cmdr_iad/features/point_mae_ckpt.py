"""Point-MAE release checkpoint (`pretrain.pth`) → `PointMAE` weights.

Official mapping (`backbones_manifest.json`): take `ckpt['base_model']`, remove `module.`
anywhere in a key, strip the `MAE_encoder.` (or `base_model.`) prefix. Unlike the reference,
which loads with `strict=False` and silently keeps random weights for anything missing, we
ignore only the known pre-training parts (decoder, mask token, ...) and raise `WeightsError`
for missing encoder keys, unexpected keys and shape mismatches.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..errors import WeightsError
from ..fileio import atomic_output
from .point_mae import PointMAE

__all__ = [
    "IGNORED_PREFIXES",
    "load_point_mae_weights",
    "point_mae_state_dict",
    "write_release_checkpoint",
]

# Pre-training-only parts of the release file, dropped without a message (the reference does
# the same through strict=False). cls_token / cls_pos / reduce_dim are kept when the model has
# them (encoder_dims != trans_dim).
IGNORED_PREFIXES = ("MAE_decoder.", "mask_token", "decoder_pos_embed.", "increase_dim.",
                    "cls_token", "cls_pos", "reduce_dim.", "cls_head_finetune.", "loss_func.")
_STRIP = ("MAE_encoder.", "base_model.")


def _numpy_safe_globals() -> list:
    """numpy scalar/array reconstructors that training scripts leave in checkpoints (metrics,
    epoch counters). Allowing them keeps `weights_only=True` (no arbitrary code) while reading
    such files."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    names = [getattr(core.multiarray, "scalar", None), getattr(core.multiarray, "_reconstruct", None),
             np.dtype, np.ndarray]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        names += [getattr(dtypes, n, None) for n in
                  ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")]
    return [g for g in names if g is not None]


def _load(path: Path):
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:  # torch < 2.5
        return torch.load(path, map_location="cpu", weights_only=True)
    with safe(_numpy_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def _read(source: str | os.PathLike | Mapping) -> tuple[Mapping, str]:
    if isinstance(source, Mapping):
        return source, "<state dict>"
    path = Path(source)
    if not path.is_file():
        raise WeightsError(f"Point-MAE checkpoint not found: {path}")
    try:
        obj = _load(path)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError,
            ValueError, AttributeError, TypeError) as exc:
        raise WeightsError(f"cannot read Point-MAE checkpoint {path}: corrupt, truncated or not a "
                           f"torch file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
                           ) from exc
    if not isinstance(obj, Mapping):
        raise WeightsError(f"Point-MAE checkpoint {path} holds a {type(obj).__name__}, "
                           "expected a dict with a 'base_model' state dict")
    return obj, str(path)


def point_mae_state_dict(source: str | os.PathLike | Mapping) -> dict[str, Tensor]:
    """Read a release checkpoint (path or loaded dict) → encoder state dict with official
    PointTransformer keys (decoder and other pre-training keys still included)."""
    obj, name = _read(source)
    sd = obj.get("base_model", obj)
    if not isinstance(sd, Mapping):
        raise WeightsError(f"{name}: 'base_model' is a {type(sd).__name__}, expected a state dict")
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise WeightsError(f"{name}: entry {key!r} is not a named tensor")
        k = key.replace("module.", "")
        for prefix in _STRIP:
            if k.startswith(prefix):
                k = k[len(prefix):]
                break
        out[k] = value
    return out


def load_point_mae_weights(model: PointMAE, source: str | os.PathLike | Mapping) -> PointMAE:
    """Load a Point-MAE release checkpoint into `model` with strict key and shape checks.

    source: path of `pretrain.pth` (read with `weights_only=True`) or an already loaded dict
    (release format `{'base_model': ...}` or a bare state dict). Missing encoder keys, unknown
    keys or shape mismatches raise `WeightsError` listing them. Returns `model`.
    """
    name = "<state dict>" if isinstance(source, Mapping) else str(source)
    sd = point_mae_state_dict(source)
    from ..model.heads import load_strict

    target = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in target or not k.startswith(IGNORED_PREFIXES)}
    try:
        load_strict(model, sd, f"Point-MAE checkpoint {name} does not fit PointMAE(num_group="
                               f"{model.num_group}, group_size={model.group_size})",
                    optional=("num_batches_tracked",))
    except ValueError as e:
        raise WeightsError(str(e)) from e
    return model


def write_release_checkpoint(state_dict: Mapping[str, Tensor], path: str | os.PathLike,
                             *, with_decoder: bool = True) -> Path:
    """Write `state_dict` (PointTransformer keys) in the Point-MAE release layout
    `{'base_model': {'module.MAE_encoder.<key>': ...}, 'epoch': ...}`, atomically.

    with_decoder adds small stand-ins for the pre-training keys a real file carries
    (`module.MAE_decoder.*`, `module.mask_token`, ...), which the loader must ignore.
    Meant for tests and for converting recipe or fine-tuned weights.
    """
    path = Path(path)
    base = {f"module.MAE_encoder.{k}": torch.as_tensor(v).clone() for k, v in state_dict.items()}
    if with_decoder:
        base.update({
            "module.mask_token": torch.zeros(1, 1, 384),
            "module.decoder_pos_embed.0.weight": torch.zeros(128, 3),
            "module.MAE_decoder.blocks.0.norm1.weight": torch.ones(384),
            "module.increase_dim.0.weight": torch.zeros(96, 384, 1),
        })
    with atomic_output(path) as tmp:
        torch.save({"base_model": base, "epoch": 300}, tmp)
    return path
