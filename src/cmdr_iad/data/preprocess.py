"""MVTec 3D-AD preprocessing: the protocol of the paper's baselines (M3DM / CFM), made safe.

Per organised cloud (H, W, 3), as in the baselines' `preprocessing.py`:
1. fit the table plane with RANSAC on the valid points of a `border`-pixel frame of the image
   (RANSAC inlier distance 0.004, like Open3D's `segment_plane` call there);
2. remove every point closer than `plane_distance` (0.005) to that plane;
3. keep the largest DBSCAN cluster (ε 0.006, min 30 points) of what is left;
4. set removed points to (0, 0, 0) and zero-pad the cloud to a square (S, S, 3), S = max(H, W),
   centred like the loader's RGB square pad: top = (S−H)//2, left = (S−W)//2 (see
   `transforms.square_pad_geometry`), so that pixel (i, j) of the padded RGB and the padded cloud
   still describe the same point.

Differences from the baselines, all deliberate:
- RANSAC is scikit-learn's `RANSACRegressor` around a total-least-squares plane (orthogonal
  point-to-plane residuals, 3-point samples, final refit on all inliers, fixed seed), not Open3D:
  a well-kept library we already depend on, deterministic, and no 300 MB dependency.
- DBSCAN is `data.dbscan.dbscan`, exact w.r.t. DBSCAN's definition but in O(N·k) memory instead of
  materialising ~3,500 neighbours per point (sklearn / Open3D need several GB on an 800×800 scan).
- The largest *cluster* is kept. The baselines take the largest label including DBSCAN's noise
  label, so a scan with more noise points than its largest cluster would keep the noise; with no
  cluster at all both keep every point.
- The pad goes to S = max(H, W) (`pad_multiple=1`); the baselines first round each side up to a
  multiple of 100 (`pad_multiple=100` reproduces that; identical for MVTec 3D-AD, whose sides are
  multiples of 100). RGB and GT files are copied unchanged, exactly as the baselines leave them: the
  loader pads them to the same square on the fly.
- A point is "missing" when all three coordinates are 0 (the baselines: when any one is 0).
- Output goes to a new root mirroring the source (never in place unless asked; hidden files are
  left out), file by file via a temporary file + rename, skipping finished files, so it can be re-run and resumed at will. Every
  written TIFF carries its parameters in the TIFF ImageDescription tag (`MARKER_KEY`), which also
  keeps an already preprocessed cloud from being processed twice.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import DatasetError, UserInputError
from ..fileio import TMP_PREFIX, atomic_output
from .dbscan import largest_cluster_mask

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


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the protocol; defaults are the baselines' values (metres)."""

    border: int = 10  # width in pixels of the image frame whose points define the table plane
    ransac_threshold: float = 0.004  # RANSAC inlier distance for the plane fit
    ransac_trials: int = 1000
    plane_distance: float = 0.005  # points closer than this to the plane are removed
    dbscan_eps: float = 0.006
    dbscan_min_samples: int = 30
    pad_multiple: int = 1  # 100 reproduces the baselines' round-up before squaring
    seed: int = 0  # RANSAC sampling seed (the result is deterministic)

    def to_dict(self) -> dict:
        return asdict(self)


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


# ----------------------------------------------------------------------------- array level

def _valid(xyz: np.ndarray) -> np.ndarray:
    return np.any(xyz != 0, axis=-1)


def border_points(xyz: np.ndarray, width: int) -> np.ndarray:
    """Valid points (M, 3) of the `width`-pixel frame around an organised cloud (H, W, 3)."""
    h, w = xyz.shape[:2]
    frame = np.zeros((h, w), dtype=bool)
    frame[:width], frame[-width:], frame[:, :width], frame[:, -width:] = True, True, True, True
    pts = xyz[frame]
    return pts[_valid(pts)]


def _plane_estimator():
    from sklearn.base import BaseEstimator, RegressorMixin

    class PlaneTLS(RegressorMixin, BaseEstimator):
        """Total-least-squares plane; `predict` is the signed point-to-plane distance."""

        def fit(self, X, y=None):  # noqa: N803 (sklearn API)
            c = X.mean(axis=0)
            _, _, vt = np.linalg.svd(X - c, full_matrices=False)
            self.normal_ = vt[-1]
            self.offset_ = -float(self.normal_ @ c)
            return self

        def predict(self, X):  # noqa: N803
            return X @ self.normal_ + self.offset_

        def score(self, X, y=None):  # noqa: N803 (higher is better: RANSAC's tie-break)
            return -float(np.mean(np.abs(self.predict(X))))

    return PlaneTLS()


def fit_plane(points: np.ndarray, threshold: float = 0.004, trials: int = 1000,
              seed: int = 0) -> tuple[np.ndarray, float]:
    """RANSAC plane through `points` (M, 3) → (unit normal (3,), offset d) with n·p + d = 0.

    scikit-learn `RANSACRegressor`: 3-point samples, orthogonal residual ≤ `threshold` = inlier,
    then a least-squares refit on the inliers of the best sample. The normal points towards the
    camera side (n·0 + d > 0), so "above the table" is n·p + d > 0 for a camera looking at it.
    """
    from sklearn.linear_model import RANSACRegressor

    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        raise DatasetError(f"only {len(pts)} valid point(s) on the image border: "
                           "cannot fit the table plane")
    ransac = RANSACRegressor(estimator=_plane_estimator(), min_samples=3,
                             residual_threshold=threshold, max_trials=trials,
                             loss="absolute_error", random_state=seed)
    try:
        ransac.fit(pts, np.zeros(len(pts)))
    except ValueError as e:
        raise DatasetError(f"RANSAC found no table plane on the image border ({e})") from None
    n, d = ransac.estimator_.normal_.astype(np.float64), float(ransac.estimator_.offset_)
    if d < 0:
        n, d = -n, -d
    return n, d


def remove_plane(xyz: np.ndarray, normal: np.ndarray, offset: float,
                 distance: float = 0.005) -> np.ndarray:
    """Copy of `xyz` (H, W, 3) with the points within `distance` of the plane set to 0."""
    out = np.array(xyz, dtype=np.float32, copy=True)
    valid = _valid(out)
    dist = np.abs(out.astype(np.float64) @ normal + offset)
    out[valid & (dist < distance)] = 0
    return out


def keep_largest_cluster(xyz: np.ndarray, eps: float = 0.006, min_samples: int = 30) -> np.ndarray:
    """Copy of `xyz` (H, W, 3) keeping only the largest DBSCAN cluster of its valid points."""
    out = np.array(xyz, dtype=np.float32, copy=True)
    idx = np.flatnonzero(_valid(out).ravel())
    if len(idx) == 0:
        return out
    keep = largest_cluster_mask(out.reshape(-1, 3)[idx], eps, min_samples)
    out.reshape(-1, 3)[idx[~keep]] = 0
    return out


def pad_to_square(xyz: np.ndarray, multiple: int = 1) -> np.ndarray:
    """Zero-pad (H, W, C) to (S, S, C), S = max side rounded up to `multiple`; centred like the
    RGB square pad (top = (S−H)//2, left = (S−W)//2, remainder bottom/right)."""
    h, w = xyz.shape[:2]
    m = max(int(multiple), 1)
    s = max(-(-h // m) * m, -(-w // m) * m)
    top, left = (s - h) // 2, (s - w) // 2
    pads = [(top, s - h - top), (left, s - w - left)] + [(0, 0)] * (xyz.ndim - 2)
    return np.pad(xyz, pads, mode="constant", constant_values=0)


def crop_to_source(xyz: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Undo `pad_to_square`: the (H, W) = `size` centre of a padded (S, S, C) array."""
    h, w = int(size[0]), int(size[1])
    s_h, s_w = xyz.shape[:2]
    if h > s_h or w > s_w:
        raise ValueError(f"cannot crop {xyz.shape[:2]} to a larger size {(h, w)}")
    top, left = (s_h - h) // 2, (s_w - w) // 2
    return xyz[top:top + h, left:left + w]


def preprocess_cloud(xyz: np.ndarray, config: PreprocessConfig | None = None) -> np.ndarray:
    """The whole protocol on one organised cloud (H, W, 3) → float32 (S, S, 3)."""
    cfg = config or PreprocessConfig()
    xyz = np.asarray(xyz)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise DatasetError(f"expected an organised cloud of shape (H, W, 3), got {xyz.shape}")
    if not _valid(xyz).any():
        raise DatasetError("the cloud has no valid point (all zeros)")
    normal, offset = fit_plane(border_points(xyz, cfg.border), cfg.ransac_threshold,
                               cfg.ransac_trials, cfg.seed)
    out = remove_plane(xyz, normal, offset, cfg.plane_distance)
    out = keep_largest_cluster(out, cfg.dbscan_eps, cfg.dbscan_min_samples)
    return pad_to_square(out, cfg.pad_multiple)


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
