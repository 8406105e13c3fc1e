"""Device selection shared by the library and the CLI: auto | cpu | cuda | cuda:N."""

from __future__ import annotations

import re

import torch

from .errors import UserInputError

DEVICE_SYNTAX = "auto, cpu, cuda or cuda:N"
_DEVICE_RE = re.compile(r"(auto|cpu|cuda(:\d+)?)")


def check_device_name(name: str) -> str:
    """Return `name` when it is auto, cpu, cuda or cuda:N (N a non-negative integer), else raise."""
    if not isinstance(name, str) or not _DEVICE_RE.fullmatch(name.strip()):
        raise UserInputError(f"unknown device {name!r}: use {DEVICE_SYNTAX}")
    return name.strip()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" → CUDA when available, else CPU. Asking for CUDA without it, or for a CUDA index
    that is not present, is a user error (exit status 2 in the CLI)."""
    if isinstance(device, torch.device):
        dev = device
    else:
        name = check_device_name(device)
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"device {dev} was requested but CUDA is not available")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UserInputError(f"device {dev} was requested but only {count} CUDA device(s) "
                                 f"are present (cuda:0 … cuda:{count - 1})")
    return dev
