"""Pretrained-weight resolution, download with SHA-256 verification, and weight identities.

Resolution order for each backbone (DINO ViT-B/8, Point-MAE):

1. an explicit path given by the user (`--dino-weights`, `--point-mae-weights`);
2. the weights folders: `$CMDR_IAD_HOME` (when set), then `~/.cache/cmdr-iad`
   (`$XDG_CACHE_HOME/cmdr-iad` when that is set);
3. a download from the official URL into the first weights folder, verified against the
   official SHA-256 (temp file, then rename: a failed or corrupt download never becomes the
   cached file). Disabled by `CMDR_IAD_OFFLINE=1` or `allow_download=False`;
4. otherwise a `WeightsError` naming the file, the URL and the folder to put it in.

Every feature output records a `WeightIdentity` (file name + SHA-256, or "random" + seed), so
results trained on one set of weights are never silently mixed with another.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import fileio
from ..errors import WeightsError

__all__ = [
    "DINO",
    "POINT_MAE",
    "SPECS",
    "OFFLINE_ENV",
    "HOME_ENV",
    "WeightSpec",
    "WeightIdentity",
    "ResolvedWeights",
    "weights_dirs",
    "download_dir",
    "file_sha256",
    "find_weights",
    "resolve_weights",
    "download_weights",
    "random_identity",
    "module_identity",
    "seeded_init_",
    "materialize_empty",
    "read_state_dict",
]

OFFLINE_ENV = "CMDR_IAD_OFFLINE"
HOME_ENV = "CMDR_IAD_HOME"

Fetcher = Callable[[str, Path], None]
"""`fetch(url, dest)` writes the resource at `url` into the file `dest` (raises OSError on failure)."""


@dataclass(frozen=True)
class WeightSpec:
    """An official weight file: where it comes from and what its bytes hash to."""

    kind: str  # "dino" | "point_mae"
    title: str
    filename: str  # name inside a weights folder
    url: str
    sha256: str
    source: str  # human-readable origin
    alternates: tuple[str, ...] = ()  # other accepted names in a weights folder (checksum unknown)


DINO = WeightSpec(
    kind="dino",
    title="DINO ViT-B/8 (timm vit_base_patch8_224.dino)",
    filename="vit_base_patch8_224.dino.safetensors",
    url="https://huggingface.co/timm/vit_base_patch8_224.dino/resolve/main/model.safetensors",
    sha256="01be14b99784a4c0970a5703214513588daf27014e908ac7ea08967b7bd80f5f",
    source="Hugging Face hub repo timm/vit_base_patch8_224.dino, file model.safetensors",
    alternates=("dino_vitbase8_pretrain.pth",),
)

POINT_MAE = WeightSpec(
    kind="point_mae",
    title="Point-MAE pre-trained encoder (ShapeNet)",
    filename="point_mae_pretrain.pth",
    url="https://github.com/Pang-Yatian/Point-MAE/releases/download/main/pretrain.pth",
    sha256="27ded932bb0a2625d5a8eb006df199b2578598c774aee6d86b985300b6a5fd20",
    source="GitHub release Pang-Yatian/Point-MAE 'main', file pretrain.pth",
)

SPECS: dict[str, WeightSpec] = {DINO.kind: DINO, POINT_MAE.kind: POINT_MAE}


@dataclass(frozen=True)
class WeightIdentity:
    """What a backbone's weights are: a file (name + SHA-256) or random init (+ seed).

    `official` is True when the SHA-256 equals the official release, False when it differs
    (custom weights) and None when unknown (random or in-memory weights).
    """

    kind: str
    file: str | None = None
    sha256: str | None = None
    random: bool = False
    seed: int | None = None
    official: bool | None = None

    def key_part(self) -> dict[str, Any]:
        """The fields that define the weights' values (location-independent)."""
        if self.random:
            return {"kind": self.kind, "random": True, "seed": self.seed}
        return {"kind": self.kind, "sha256": self.sha256}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.random:
            return f"{self.kind}: RANDOM weights (seed {self.seed})"
        tag = {True: "official", False: "custom", None: "unverified"}[self.official]
        return f"{self.kind}: {self.file} sha256 {str(self.sha256)[:12]}… ({tag})"


@dataclass(frozen=True)
class ResolvedWeights:
    """A weight file found on disk (or downloaded) and its identity."""

    path: Path
    origin: str  # "explicit" | "env" | "cache" | "download"
    identity: WeightIdentity


def random_identity(kind: str, seed: int) -> WeightIdentity:
    """Identity of randomly initialised weights (only on explicit request)."""
    return WeightIdentity(kind=kind, random=True, seed=int(seed))


def module_identity(kind: str, state_dict: Mapping[str, Any], name: str = "in-memory") -> WeightIdentity:
    """Identity of in-memory weights: SHA-256 over the sorted keys, shapes, dtypes and bytes."""
    import torch

    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k]
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            h.update(f"{k}|{tuple(t.shape)}|{t.dtype}\n".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy())
    return WeightIdentity(kind=kind, file=name, sha256=h.hexdigest(), official=None)


def materialize_empty(module: Any) -> Any:
    """Give every parameter and buffer of a meta-device ``module`` uninitialised CPU storage, in
    place; returns ``module``. (``Module.to_empty`` does the same through the meta-tensor
    machinery, which imports sympy: ~40 MB of resident memory at inference.)"""
    import torch
    from torch import nn

    for m in module.modules():
        for k, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[k] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                                requires_grad=p.requires_grad)
        for k, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[k] = torch.empty(b.shape, dtype=b.dtype)
    return module


def seeded_init_(module: Any, seed: int) -> Any:
    """Fill every parameter and buffer of `module` with seeded "recipe-like" random values.

    Fast (one normal draw per tensor, no per-layer init schemes) and reproducible on any
    machine (CPU generator): weights ~ N(0,1)/sqrt(fan_in), biases ~ 0.02·N(0,1), normalisation
    weights ~ 1 + 0.1·N(0,1), BatchNorm running_mean ~ 0.1·N(0,1), running_var ~ 1 + 0.1·|N|.
    Used for `random_backbones=True` (testing only). Returns `module`.
    """
    import math

    import torch

    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                t.zero_()
                continue
            n = torch.randn(t.shape, generator=gen, dtype=torch.float32)
            if name.endswith("running_var"):
                v = 1.0 + 0.1 * n.abs()
            elif name.endswith("running_mean"):
                v = 0.1 * n
            elif t.ndim == 1 and name.endswith("weight"):
                v = 1.0 + 0.1 * n
            elif name.endswith("bias") or t.ndim <= 1:
                v = 0.02 * n
            else:
                v = n / math.sqrt(math.prod(t.shape[1:]))
            t.copy_(v.to(t.dtype))
    return module


# --------------------------------------------------------------------------- folders


def _default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "cmdr-iad"


def weights_dirs() -> list[tuple[str, Path]]:
    """The weights folders searched, in order, as (origin, folder)."""
    out: list[tuple[str, Path]] = []
    home = os.environ.get(HOME_ENV)
    if home:
        out.append(("env", Path(home).expanduser()))
    out.append(("cache", _default_cache_dir()))
    return out


def download_dir() -> Path:
    """Where downloads go and where a user should put missing files."""
    return weights_dirs()[0][1]


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


# --------------------------------------------------------------------------- hashing


def file_sha256(path: str | os.PathLike, *, use_stamp: bool = True) -> str:
    """SHA-256 of a weights file, remembered in a ``<file>.sha256`` stamp (size + mtime) so a
    large file is hashed once (`cmdr_iad.fileio.file_sha256`)."""
    return fileio.file_sha256(path, use_stamp=use_stamp)


def _identity_for_file(spec: WeightSpec, path: Path, *, stamp: bool = True) -> WeightIdentity:
    digest = file_sha256(path, use_stamp=stamp)
    return WeightIdentity(kind=spec.kind, file=path.name, sha256=digest,
                          official=digest == spec.sha256)


# --------------------------------------------------------------------------- resolution


def missing_message(spec: WeightSpec, reason: str = "") -> str:
    folder = download_dir()
    why = f" ({reason})" if reason else ""
    return (f"{spec.title} weights not found{why}. Download {spec.url} and save it as "
            f"{folder / spec.filename} (SHA-256 {spec.sha256}), or pass the file explicitly "
            f"(--{spec.kind.replace('_', '-')}-weights FILE), or set {HOME_ENV} to the folder "
            "that holds it. Use --random-backbones only for testing.")


def find_weights(spec: WeightSpec, explicit: str | os.PathLike | None = None) -> ResolvedWeights | None:
    """Look for the weights without downloading; None when they are not on disk.

    An explicit path that does not exist is an error. A file with the official name in a
    weights folder must match the official SHA-256 (else it is corrupt: error).
    """
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise WeightsError(f"{spec.title} weights file not found: {p}")
        # no sidecar next to a user's own file
        return ResolvedWeights(p, "explicit", _identity_for_file(spec, p, stamp=False))
    for origin, folder in weights_dirs():
        p = folder / spec.filename
        if p.is_file():
            ident = _identity_for_file(spec, p)
            if not ident.official:
                raise WeightsError(
                    f"{p} does not match the official SHA-256 of {spec.title} "
                    f"(expected {spec.sha256}, got {ident.sha256}); the file is corrupt or "
                    f"incomplete. Delete it and download {spec.url} again.")
            return ResolvedWeights(p, origin, ident)
        for alt in spec.alternates:
            q = folder / alt
            if q.is_file():
                return ResolvedWeights(q, origin, _identity_for_file(spec, q))
    return None


def resolve_weights(
    spec: WeightSpec,
    explicit: str | os.PathLike | None = None,
    *,
    allow_download: bool | None = None,
    fetcher: Fetcher | None = None,
) -> ResolvedWeights:
    """Explicit path → weights folders → verified download → `WeightsError`.

    `allow_download=None` means "unless `CMDR_IAD_OFFLINE` is set". `fetcher` replaces the
    HTTP download (tests inject a local one; they never touch the network).
    """
    found = find_weights(spec, explicit)
    if found is not None:
        return found
    if allow_download is None:
        allow_download = not offline()
    if not allow_download:
        raise WeightsError(missing_message(spec, f"offline: {OFFLINE_ENV} is set"
                                           if offline() else "downloads disabled"))
    return download_weights(spec, fetcher=fetcher)


def _urllib_fetch(url: str, dest: Path) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "cmdr-iad"})
    with urllib.request.urlopen(req, timeout=60) as r, open(dest, "wb") as f:
        while True:
            block = r.read(1 << 20)
            if not block:
                break
            f.write(block)


def download_weights(spec: WeightSpec, *, dest_dir: Path | None = None,
                     fetcher: Fetcher | None = None) -> ResolvedWeights:
    """Download `spec.url` into `dest_dir` (default: `download_dir()`), verify, then rename."""
    folder = Path(dest_dir) if dest_dir is not None else download_dir()
    target = folder / spec.filename
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the weights folder {folder}: {e}") from e
    with fileio.atomic_output(target) as tmp:  # the verified file appears whole, or not at all
        try:
            (fetcher or _urllib_fetch)(spec.url, tmp)
        except OSError as e:  # URLError, HTTPError, timeouts, disk full ...
            raise WeightsError(missing_message(spec, f"download failed: {e}")) from e
        digest = file_sha256(tmp, use_stamp=False)
        if digest != spec.sha256:
            raise WeightsError(
                f"downloaded {spec.url} but its SHA-256 is {digest}, expected {spec.sha256}; "
                f"the file was discarded. Retry, or download it by hand into {target}.")
    ident = WeightIdentity(kind=spec.kind, file=target.name, sha256=spec.sha256, official=True)
    try:  # remember the verified digest so the next run does not hash the file again
        st = target.stat()
        fileio.write_text_atomic(target.with_name(target.name + ".sha256"),
                                 f"{spec.sha256} {st.st_size} {st.st_mtime_ns}\n")
    except OSError:
        pass
    return ResolvedWeights(target, "download", ident)


# --------------------------------------------------------------------------- reading


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a weights file: `.safetensors` or a torch pickle (`.pth`/`.bin`/`.pt`).

    Torch files are opened with `weights_only=True` (no arbitrary code). The result is the
    raw top-level mapping; callers unwrap `teacher` / `base_model` / `state_dict` themselves.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{p} is not a readable safetensors file ({e}); "
                               "it may be truncated or corrupt") from e
    import argparse
    import pickle

    import torch

    try:
        # DINO / Point-MAE training checkpoints also store their argparse options: harmless
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        detail = detail[0] if detail else text.splitlines()[0]
        if "Unsupported global" in text:
            raise WeightsError(
                f"{p} holds objects other than tensors and cannot be loaded safely ({detail}); "
                "save just its state dict with torch.save") from e
        raise WeightsError(f"{p} is not a readable torch weights file ({detail}); "
                           "it may be truncated or corrupt") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise WeightsError(f"{p} is not a readable torch weights file ({e}); "
                           "it may be truncated or corrupt") from e
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{p} does not hold a state dict (found {type(obj).__name__})")
    return dict(obj)
