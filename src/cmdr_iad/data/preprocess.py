"""MVTec 3D-AD preprocessing of a dataset folder: every cloud through `data.cloud_prep`
(table plane, largest cluster, square pad), made safe.

Output goes to a new root mirroring the source (never in place unless asked; hidden files are
left out), file by file via a temporary file + rename, skipping finished files, so it can be
re-run and resumed at will. Every written TIFF carries its parameters in the TIFF
ImageDescription tag (`MARKER_KEY`), which also keeps an already preprocessed cloud from being
processed twice; the output root holds a manifest (`MANIFEST_NAME`) that refuses a rerun with
other parameters. The array-level functions are re-exported here.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import DatasetError, UserInputError
from ..fileio import TMP_PREFIX, atomic_output
from .cloud_prep import (
    PreprocessConfig,
    border_points,
    crop_to_source,
    fit_plane,
    keep_largest_cluster,
    pad_to_square,
    preprocess_cloud,
    remove_plane,
)

__all__ = [
    "PreprocessConfig",
    "PreprocessReport",
    "border_points",
    "fit_plane",
    "remove_plane",
    "keep_largest_cluster",
    "pad_to_square",
    "crop_to_source",
    "preprocess_cloud",
    "preprocess_file",
    "preprocess_dataset",
    "read_marker",
    "MANIFEST_NAME",
    "MARKER_KEY",
    "TMP_PREFIX",
]

MANIFEST_NAME = ".cmdr-iad-preprocess.json"
MARKER_KEY = "cmdr_iad_preprocess"
XYZ_SUFFIXES = (".tiff", ".tif")


@dataclass
class PreprocessReport:
    """What `preprocess_dataset` did, as paths relative to the source root."""

    processed: list[Path] = field(default_factory=list)
    copied: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (path, one-line reason)
    internal_errors: int = 0  # failures that were not bad input (bugs, out of memory, ...)

    @property
    def ok(self) -> bool:
        return not self.failed


# ----------------------------------------------------------------------------- file level

def _read_xyz(path: Path) -> np.ndarray:
    """Organised cloud (H, W, 3) float32 from a TIFF (`pointcloud_io` conventions: NaN → missing
    point, ±inf / wrong shape / wrong dtype / unreadable file → `DatasetError` naming the file)."""
    from .pointcloud_io import read_organized

    return read_organized(path)


def read_marker(path: Path) -> dict | None:
    """The preprocessing record stored in a TIFF written here, or None (other or unreadable TIFF)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            desc = tif.pages[0].description
        rec = json.loads(desc)
    except Exception:
        return None
    return rec.get(MARKER_KEY) if isinstance(rec, dict) else None


def _atomic_write(dst: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename onto ``dst`` (`fileio.atomic_output`): all or nothing."""
    with atomic_output(dst) as tmp:
        write(tmp)


def _write_xyz(path: Path, xyz: np.ndarray, record: dict) -> None:
    import tifffile

    tifffile.imwrite(path, np.ascontiguousarray(xyz, dtype=np.float32), photometric="rgb",
                     compression="zlib", description=json.dumps({MARKER_KEY: record}),
                     metadata=None)


def preprocess_file(src: Path, dst: Path, config: PreprocessConfig | None = None) -> None:
    """Preprocess one xyz TIFF into `dst` (atomically; `dst` may equal `src`)."""
    cfg = config or PreprocessConfig()
    xyz = _read_xyz(Path(src))
    try:
        out = preprocess_cloud(xyz, cfg)
    except DatasetError as e:
        raise DatasetError(f"{src}: {e}") from None
    record = {"version": __version__, "config": cfg.to_dict(),
              "source_size": [int(xyz.shape[0]), int(xyz.shape[1])]}
    _atomic_write(Path(dst), lambda p: _write_xyz(p, out, record))


# ----------------------------------------------------------------------------- dataset level

@dataclass(frozen=True)
class _Task:
    kind: str  # "xyz" | "copy"
    rel: Path
    src: Path
    dst: Path


def _is_xyz(rel: Path) -> bool:
    return rel.suffix.lower() in XYZ_SUFFIXES and rel.parent.name == "xyz"


def _walk(root: Path) -> Iterable[Path]:
    """Relative paths of the dataset files under `root`, sorted; hidden files and folders
    (temporary files, .DS_Store, ...) are not part of a dataset."""
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield (d / name).relative_to(root)


def _remove_stray_temps(root: Path) -> None:
    if not root.is_dir():
        return
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.startswith(TMP_PREFIX):
                (Path(dirpath) / name).unlink(missing_ok=True)


def _check_manifest(root: Path, cfg: PreprocessConfig) -> None:
    """Refuse to mix parameters in one output root; record them on first use."""
    path = root / MANIFEST_NAME
    if path.is_file():
        try:
            old = json.loads(path.read_text())["config"]
        except Exception as e:
            raise DatasetError(f"{path}: unreadable preprocessing record ({e})") from None
        if old != cfg.to_dict():
            raise UserInputError(
                f"{root} was preprocessed with other parameters ({path}); "
                "write to a new destination folder")
        return
    text = json.dumps({"version": __version__, "config": cfg.to_dict()}, indent=2) + "\n"
    _atomic_write(path, lambda p: p.write_text(text))


def _plan(src: Path, dst: Path, in_place: bool) -> tuple[list[_Task], list[Path]]:
    """Tasks still to do, and the relative paths already finished."""
    todo: list[_Task] = []
    done: list[Path] = []
    for rel in _walk(src):
        s, d = src / rel, dst / rel
        if _is_xyz(rel):
            finished = read_marker(s) is not None if in_place else d.is_file()
            (done.append(rel) if finished else todo.append(_Task("xyz", rel, s, d)))
        elif not in_place:
            finished = d.is_file() and d.stat().st_size == s.stat().st_size
            (done.append(rel) if finished else todo.append(_Task("copy", rel, s, d)))
    return todo, done


def _run_task(task: _Task, cfg: PreprocessConfig) -> tuple[str, str | None, bool]:
    """Worker: returns (what was done, error message or None, error is bad input)."""
    try:
        if task.kind == "xyz" and read_marker(task.src) is None:
            preprocess_file(task.src, task.dst, cfg)
            return "processed", None, False
        # A non-xyz file, or a cloud that is already preprocessed: copy it as it is.
        _atomic_write(task.dst, lambda p: shutil.copy2(task.src, p))
        return "copied", None, False
    except DatasetError as e:
        return "failed", str(e), True
    except OSError as e:
        return "failed", f"{task.src}: {e.strerror or e}", True
    except Exception as e:  # a bug or resource problem: report it, keep the other files going
        return "failed", f"{task.src}: internal error {type(e).__name__}: {e}", False


def preprocess_dataset(src: str | Path, dst: str | Path | None = None, *, in_place: bool = False,
                       workers: int = 2, progress: bool = True,
                       config: PreprocessConfig | None = None) -> PreprocessReport:
    """Preprocess every `xyz/*.tiff` under `src` into `dst`, copying all other files.

    `dst` mirrors `src`; files already finished in `dst` are skipped, so the call is idempotent
    and resumes an interrupted run. In place only with `in_place=True` (then `dst` must be None or
    `src`). Bad files are collected in the report (the others are still done), never raised.
    """
    cfg = config or PreprocessConfig()
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"source folder not found: {src}")
    if in_place:
        if dst is not None and Path(dst).resolve() != src.resolve():
            raise UserInputError("--in-place writes into SRC; do not give a different DST")
        dst = src
    else:
        if dst is None:
            raise UserInputError("a destination folder is required (or in_place=True)")
        dst = Path(dst)
        rs, rd = src.resolve(), dst.resolve()
        if rs == rd:
            raise UserInputError(f"DST is SRC ({src}); pass --in-place to overwrite the source")
        if rs in rd.parents or rd in rs.parents:
            raise UserInputError(f"SRC ({src}) and DST ({dst}) must not contain each other")
    if workers < 1:
        raise UserInputError(f"workers must be >= 1, got {workers}")

    dst.mkdir(parents=True, exist_ok=True)
    _check_manifest(dst, cfg)
    _remove_stray_temps(dst)
    todo, done = _plan(src, dst, in_place)
    report = PreprocessReport(skipped=done)

    def record(task: _Task, outcome: tuple[str, str | None, bool]) -> None:
        what, err, bad_input = outcome
        if what == "processed":
            report.processed.append(task.rel)
        elif what == "copied":
            report.copied.append(task.rel)
        else:
            report.failed.append((task.rel, err or "failed"))
            report.internal_errors += 0 if bad_input else 1

    from ..progress import progress as progress_bar

    with progress_bar(len(todo), "preprocess", enabled=progress) as bar:
        if workers == 1 or len(todo) <= 1:
            for task in todo:
                record(task, _run_task(task, cfg))
                bar.advance()
        else:
            _run_pool(todo, cfg, workers, record, bar.advance)
    for key in ("processed", "copied", "skipped"):
        getattr(report, key).sort()
    report.failed.sort()
    return report


def _run_pool(todo: list[_Task], cfg: PreprocessConfig, workers: int,
              record: Callable[[_Task, tuple[str, str | None, bool]], None],
              advance: Callable[[], None]) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # Workers must not inherit a forked copy of the caller's threaded state (torch, OpenMP), so
    # they come from a fresh process: a fork server that imports the heavy modules once
    # (scikit-learn, scipy) where available, else "spawn".
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__, "sklearn.linear_model", "scipy.spatial",
                                    "scipy.sparse.csgraph"])
    else:  # pragma: no cover - Windows
        ctx = multiprocessing.get_context("spawn")
    # Big clouds first so that the pool does not end on one long task.
    order = sorted(todo, key=lambda t: (t.kind != "xyz", -_size(t.src)))
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        futures = {ex.submit(_run_task, t, cfg): t for t in order}
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                outcome = fut.result()
            except Exception as e:  # the worker died (killed, out of memory)
                outcome = ("failed", f"{task.src}: worker failed ({type(e).__name__}: {e})", False)
            record(task, outcome)
            advance()
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0
