"""Import of the authors' per-class head checkpoints into a cmdr-iad model.

The reference `train.py` saves four plain state dicts per category, in
`<checkpoint_savepath>/<class>/`:
`map2Dto3D_<class>_independent_<ep>ep_<bs>bs.pth`, `map3Dto2D_…`, `Dec2D_…`, `Dec3D_…`.
They are read with `torch.load(weights_only=True)`: tensors and plain containers only, never
arbitrary objects. The keys are the official ones, which our heads share, so they load strictly.
The result is a `CMDRIAD` with the paper preset (modality rgb+xyz).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UserInputError, WeightsError

OFFICIAL_HEADS = ("map2Dto3D", "map3Dto2D", "Dec2D", "Dec3D")


def official_filename(head: str, category: str, epochs: int = 50, batch_size: int = 1) -> str:
    return f"{head}_{category}_independent_{epochs}ep_{batch_size}bs.pth"


def find_official_checkpoints(heads_dir: str | os.PathLike, category: str, epochs: int = 50,
                              batch_size: int = 1) -> dict[str, Path]:
    """Locate the four files in `heads_dir` or `heads_dir/<category>/` (the authors' layout)."""
    root = Path(heads_dir)
    if not root.is_dir():
        raise UserInputError(f"checkpoint folder not found: {root}")
    found: dict[str, Path] = {}
    missing: list[str] = []
    for head in OFFICIAL_HEADS:
        name = official_filename(head, category, epochs, batch_size)
        for folder in (root, root / category):
            if (folder / name).is_file():
                found[head] = folder / name
                break
        else:
            missing.append(name)
    if missing:
        others = sorted(p.name for p in list(root.glob("*.pth")) + list((root / category).glob("*.pth")))
        hint = f"; .pth files present: {', '.join(others[:8])}" if others else ""
        raise UserInputError(
            f"official checkpoint(s) {', '.join(missing)} not found in {root} or {root / category} "
            f"(check --category, --epochs and --batch-size){hint}")
    return found


def read_official_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A state dict from an official `.pth`, loaded without unpickling arbitrary objects."""
    import torch

    p = Path(path)
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f": it references {found.group(1)}" if found else ""
        raise WeightsError(
            f"{p} would need unpickling of arbitrary Python objects{what}; cmdr-iad refuses to load "
            "it (re-save just the state dict with torch.save(model.state_dict(), ...))") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
        raise WeightsError(f"{p} is not a readable torch checkpoint "
                           f"({msg[0][:160] if msg else type(e).__name__})") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"{p} does not hold a state dict (found {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"{p}: entry {k!r} is not a tensor ({type(v).__name__})")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def import_official(heads_dir: str | os.PathLike, category: str, *, epochs: int = 50,
                    batch_size: int = 1, point_mae_bn: str = "sample", dino_weights=None,
                    point_mae_weights=None, random_backbones: bool = False, device: str = "cpu"):
    """Build a paper-preset `CMDRIAD` holding the official heads of `category` (not yet saved)."""
    from . import presets
    from .detector import CMDRIAD
    from .fileio import file_sha256

    files = find_official_checkpoints(heads_dir, category, epochs, batch_size)
    state = {head: read_official_checkpoint(p) for head, p in files.items()}
    cfg = presets.paper("rgb+xyz").replace(features={"point_mae_bn": point_mae_bn})
    det = CMDRIAD(cfg, dino_weights=dino_weights, point_mae_weights=point_mae_weights,
                  random_backbones=random_backbones, device=device)
    det.load_head_state_dicts(state, source=str(heads_dir))
    det.info["category"] = category
    det.info["source"] = {
        "kind": "official-checkpoints",
        "epochs": epochs,
        "batch_size": batch_size,
        "files": {head: {"file": p.name, "sha256": file_sha256(p)} for head, p in files.items()},
    }
    return det
