"""Device selection shared by the library and the CLI."""

from __future__ import annotations

import torch

from .errors import UserInputError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" → CUDA when available, else CPU; asking for CUDA without it is a user error."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserInputError(f"unknown device {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("device cuda was requested but CUDA is not available")
    return dev
