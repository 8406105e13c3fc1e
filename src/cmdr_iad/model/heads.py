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


def _few(keys: list[str], n: int = 4) -> str:
    return f"{keys[:n]}{'…' if len(keys) > n else ''}"


def state_dict_problems(module: nn.Module, state: Mapping[str, torch.Tensor],
                        ignore: tuple[str, ...] = ()) -> list[str]:
    """What keeps ``state`` from loading strictly into ``module``: missing keys, unexpected keys,
    shape mismatches (empty when it fits). Keys starting with a prefix in ``ignore`` are skipped."""
    own = module.state_dict()
    got = {k: v for k, v in state.items() if not k.startswith(ignore)} if ignore else dict(state)
    missing = sorted(set(own) - set(got))
    unexpected = sorted(set(got) - set(own))
    wrong = sorted(k for k in set(own) & set(got)
                   if tuple(own[k].shape) != tuple(getattr(got[k], "shape", ())))
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s) {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s) {_few(unexpected)}")
    if wrong:
        k = wrong[0]
        more = f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""
        parts.append(f"shape of {k} is {tuple(got[k].shape)}, the network needs {tuple(own[k].shape)}{more}")
    return parts


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], who: str = "module",
                ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` with every key and shape checked (dtype cast to the module's).

    Raises ``ValueError("<who>: missing …; unexpected …; shape of …")`` on any mismatch.
    """
    problems = state_dict_problems(module, state, ignore)
    if problems:
        raise ValueError(f"{who}: " + "; ".join(problems))
    own = module.state_dict()
    module.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)
