"""`cmdr-iad predict`: score one sample or a folder of samples with a trained model.

Per sample (stem = the RGB file's stem, or the xyz file's without RGB) in OUT (files:
`cmdr_iad.outputs`):
`<stem>.json` (score, decision, threshold, branch, missing-modality notes), `<stem>_anomaly.tiff`
(or `.npy`: the anomaly map at the original resolution, float32), `<stem>_overlay.png`
(heatmap over the RGB image, or over a depth rendering), `<stem>.ply` (valid points coloured by
anomaly, with an `anomaly` property) when a point cloud is given, and with `--save-raw`
`<stem>_map.npy` (the smoothed fused map Ψ at grid resolution, before any normalisation).
One sample (--rgb/--xyz): its files are written only when it succeeded. A folder (--input):
samples are read, scored and written one at a time; OUT/predictions.jsonl gets one line per
sample (or its error) and OUT/predictions.csv the table; a bad sample is recorded and skipped
(exit 2 with one summary line at the end); a rerun skips the samples already done.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_device, add_precision, add_quiet, add_units, check_precision, resolve_device

RGB_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
XYZ_EXTS = (".tiff", ".tif", ".npy", ".pcd")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="anomaly maps, overlays, coloured point clouds and a decision per sample",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--rgb", default=None, metavar="RGB", help="RGB image (PNG/JPG)")
    p.add_argument("--xyz", default=None, metavar="XYZ", help="organised point cloud (TIFF/NPY/PCD)")
    p.add_argument("--gt", default=None, help="optional ground-truth mask (PNG), recorded in the JSON")
    p.add_argument("--input", default=None, metavar="FOLDER",
                   help="a folder of samples: rgb/ and xyz/ subfolders (MVTec layout) or files "
                        "paired by stem")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--save-raw", action="store_true", help="also write <stem>_map.npy (Ψ at grid size)")
    p.add_argument("--map-format", default="tiff", choices=("tiff", "npy"))
    p.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)  # samples stream one by one
    p.add_argument("--dino-weights", metavar="FILE", default=None)
    p.add_argument("--point-mae-weights", metavar="FILE", default=None)
    add_units(p)
    add_device(p)
    add_precision(p)
    add_quiet(p)
    p.set_defaults(func=run)


def _by_stem(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {f.stem: f for f in sorted(folder.iterdir())
            if f.is_file() and f.suffix.lower() in exts and not f.name.startswith(".")}


def collect_inputs(args) -> list[tuple[str, Path | None, Path | None, Path | None]]:
    """(stem, rgb, xyz, gt) per sample; paths are checked to exist (missing → exit 2)."""
    from ..errors import UserInputError
    from ._workflow import require_path

    if args.input is not None:
        if args.rgb or args.xyz:
            raise UserInputError("give either --input FOLDER or --rgb/--xyz, not both")
        folder = require_path(args.input, "input folder")
        if not folder.is_dir():
            raise UserInputError(f"--input must be a folder: {folder}")
        sub = (folder / "rgb").is_dir() or (folder / "xyz").is_dir()
        rgbs = _by_stem(folder / "rgb" if sub else folder, RGB_EXTS)
        xyzs = _by_stem(folder / "xyz" if sub else folder, XYZ_EXTS)
        gts = _by_stem(folder / "gt", (".png",)) if sub else {}
        stems = sorted(set(rgbs) | set(xyzs))
        if not stems:
            raise UserInputError(f"{folder} holds no samples (no {'/'.join(RGB_EXTS + XYZ_EXTS)} files)")
        return [(s, rgbs.get(s), xyzs.get(s), gts.get(s)) for s in stems]
    if args.rgb is None and args.xyz is None:
        raise UserInputError("give --rgb and/or --xyz (or --input FOLDER)")
    rgb = require_path(args.rgb, "RGB image")
    xyz = require_path(args.xyz, "point cloud")
    gt = require_path(args.gt, "ground-truth mask")
    stem = (rgb or xyz).stem  # type: ignore[union-attr]
    return [(stem, rgb, xyz, gt)]


def write_outputs(stage: Path, stem: str, res, sample, det, args, model_dir: Path) -> dict:
    """Write one prediction's files (`outputs.prediction_files`) into ``stage``; returns the record."""
    from ..outputs import prediction_files

    files, record = prediction_files(stem, res, sample, det, str(model_dir),
                                     map_format=args.map_format, save_raw=args.save_raw)
    for name, data in files.items():
        (stage / name).write_bytes(data)
    return record


def run(args) -> int:
    from ..artifact import read_metadata
    from ..data.folder import load_sample
    from ..errors import UserInputError
    from ._workflow import (
        RANDOM_NOTICE,
        load_detector,
        loud,
        require_weight_files,
        say,
        staged_outputs,
    )
    from .common import require_writable

    resolve_device(args.device)
    check_precision(args)
    require_weight_files(args)
    model_dir = Path(args.model_dir)
    read_metadata(model_dir)  # a missing or unreadable model folder fails before any file is read
    inputs = collect_inputs(args)
    stems = [s for s, *_ in inputs]
    if len(set(stems)) != len(stems):
        raise UserInputError("two inputs share a file stem; their outputs would collide")
    out = require_writable(args.out, "output folder")
    if args.input is not None:
        return _run_folder(args, inputs, out, model_dir)
    # the sample is read (and checked) before the model and its backbones are loaded
    samples = [load_sample(r, x, g, units=args.units, require_points=False, key=s)
               for s, r, x, g in inputs]
    det = load_detector(model_dir, args)
    with staged_outputs(out) as stage:
        records = [write_outputs(stage, stem, res, sample, det, args, model_dir)
                   for (stem, *_), sample, res in zip(inputs, samples, det.predict_many(samples),
                                                      strict=True)]
    for r in records:
        _say_record(args, r)
    say(args, f"wrote {len(records)} prediction(s) to {out}")
    if det.random_backbones:
        loud(RANDOM_NOTICE)
    return 0


def _say_record(args, r: dict) -> None:
    from ._workflow import say

    verdict = {None: "no threshold", True: "ANOMALOUS", False: "normal"}[r["is_anomalous"]]
    note = f"  [{'; '.join(r['notes'])}]" if r.get("notes") else ""
    say(args, f"{r.get('key', r.get('stem'))}: score {r['score']:.4f} → {verdict}{note}")


def _run_folder(args, inputs, out: Path, model_dir: Path) -> int:
    """`--input DIR`: stream the samples one by one (`batch.predict_folder`)."""
    import sys

    from ..batch import (
        CSV,
        JSONL,
        BatchReport,
        check_inputs,
        done_stems,
        predict_folder,
        record_failures,
    )
    from ._workflow import RANDOM_NOTICE, load_detector, say

    out.mkdir(parents=True, exist_ok=True)
    done = done_stems(out) & {s for s, *_ in inputs}
    if len(done) == len(inputs):
        say(args, f"all {len(inputs)} sample(s) are already in {out / JSONL}: nothing to do")
        return 0
    bad = check_inputs(inputs, args.units, skip=done)  # every file read before the model loads
    if len(bad) + len(done) == len(inputs):  # nothing left to score: the model is not loaded
        record_failures(out, bad)
        report = BatchReport(skipped=sorted(done), failed=list(bad.items()))
        print(f"cmdr-iad: error: {report.summary()}", file=sys.stderr)
        return 2
    det = load_detector(model_dir, args)
    report = predict_folder(det, inputs, out, model=str(model_dir), units=args.units,
                            map_format=args.map_format, save_raw=args.save_raw,
                            show_progress=not args.quiet, known_bad=bad)
    say(args, f"{len(report.scored)} scored, {len(report.skipped)} already done, "
              f"{len(report.failed)} failed → {out / JSONL}, {out / CSV}")
    if det.random_backbones:
        print(RANDOM_NOTICE)  # stdout: stderr is kept for the one-line failure summary
    line = report.summary()
    if line:
        print(f"cmdr-iad: error: {line}", file=sys.stderr)
        return 2
    return 0
