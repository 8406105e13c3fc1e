"""The four trainable heads under their official names, and strict state-dict loading.

Head names are the authors' checkpoint prefixes: ``map2Dto3D`` (F2D → F̂3D), ``map3Dto2D``
(F3D → F̂2D), ``Dec2D`` (2D reconstruction) and ``Dec3D`` (3D reconstruction). A modality trains
only the heads it can use: RGB+3D all four, RGB-only ``Dec2D``, 3D-only ``Dec3D``.

:func:`state_dict_problems` / :func:`load_strict` are the one strict key/shape checker, used for
the heads and for the frozen encoders' checkpoints (ViT, Point-MAE). Pure: no IO, raises
``ValueError`` (the caller names the file and turns it into its own error type).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .decoders import Decoder2D, Decoder3D
from .mapping import CrossModalMLP

__all__ = ["HEAD_NAMES", "HEADS_BY_MODALITY", "build_heads", "state_dict_problems", "load_strict"]

HEAD_NAMES = ("map2Dto3D", "map3Dto2D", "Dec2D", "Dec3D")
HEADS_BY_MODALITY: dict[str, tuple[str, ...]] = {
    "rgb+xyz": HEAD_NAMES,
    "rgb": ("Dec2D",),
    "xyz": ("Dec3D",),
}


def build_heads(modality: str, grid: int, dim2d: int = 768, dim3d: int = 1152, num_heads: int = 8,
                window_size: int = 128) -> nn.ModuleDict:
    """The heads of ``modality`` for a ``grid``×``grid`` feature map, official names and layout."""
    if modality not in HEADS_BY_MODALITY:
        raise ValueError(f"unknown modality {modality!r}; use one of {tuple(HEADS_BY_MODALITY)}")
    make = {
        "map2Dto3D": lambda: CrossModalMLP(dim2d, dim3d),
        "map3Dto2D": lambda: CrossModalMLP(dim3d, dim2d),
        "Dec2D": lambda: Decoder2D(dim2d, grid, num_heads, window_size),
        "Dec3D": lambda: Decoder3D(grid * grid, dim3d),
    }
    return nn.ModuleDict({name: make[name]() for name in HEADS_BY_MODALITY[modality]})


def _listing(items: list[str], limit: int = 12) -> str:
    return ", ".join(items[:limit]) + (f" … (+{len(items) - limit} more)" if len(items) > limit else "")


def state_dict_problems(module: nn.Module, state: Mapping[str, torch.Tensor],
                        optional: tuple[str, ...] = ()) -> list[str]:
    """What keeps ``state`` from loading strictly into ``module`` (empty when it fits):
    ``missing keys (n): …``, ``unexpected keys (n): …``, ``shape mismatches (n): k: file (…) vs
    model (…)``, ``dtype mismatches (n): …`` (floating point where the module has integers, or
    the reverse). Keys ending in a suffix of ``optional`` may be missing (the module's own value
    is kept, e.g. BatchNorm's ``num_batches_tracked``)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(optional)] if optional else \
        [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shared = [k for k in own if k in state]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in shared if tuple(state[k].shape) != tuple(own[k].shape)]
    dtypes = [f"{k}: file {state[k].dtype} vs model {own[k].dtype}" for k in shared
              if state[k].is_floating_point() != own[k].is_floating_point()]
    parts = []
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatches", shapes), ("dtype mismatches", dtypes)):
        if items:
            parts.append(f"{what} ({len(items)}): {_listing(items)}")
    return parts


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], who: str = "module",
                optional: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` with every key, shape and dtype kind checked (values cast
    to the module's dtypes). Raises ``ValueError("<who>: missing keys …; …")`` on any mismatch.
    """
    problems = state_dict_problems(module, state, optional)
    if problems:
        raise ValueError(f"{who}: " + "; ".join(problems))
    own = module.state_dict()
    module.load_state_dict({k: (state[k] if k in state else v).to(v.dtype) for k, v in own.items()},
                           strict=True)
