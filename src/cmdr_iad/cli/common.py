"""Options and helpers shared by the CLI verbs."""

from __future__ import annotations

import argparse


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="compute device (auto: CUDA when available)")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dino-weights", metavar="FILE", default=None,
                   help="DINO ViT-B/8 weights (timm .safetensors/.bin or dino_vitbase8_pretrain.pth)")
    p.add_argument("--point-mae-weights", metavar="FILE", default=None,
                   help="Point-MAE pretrain.pth")
    p.add_argument("--random-backbones", action="store_true",
                   help="use randomly initialised encoders (testing only; recorded in every output)")


def resolve_device(name: str):
    """'auto' → cuda when available, else cpu (see `cmdr_iad.device.resolve_device`)."""
    from ..device import resolve_device as _resolve

    return _resolve(name)
