"""`cmdr-iad evaluate`: metrics, tables, PRO curve and an HTML report for one or many models."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_device, add_precision, add_quiet, add_units, check_precision, resolve_device


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="I-AUROC, P-AUROC, AUPRO@30/10/5/1 %%, FPS and memory on the test split",
        description="Evaluate one model folder, or every model folder below MODEL_DIR (e.g. one "
                    "per category and modality), on DATA_ROOT/<category>/test. Writes "
                    "metrics.json / .csv / .md, paper_tables.md (laid out like the paper's Tables "
                    "1-3), pro_curve.svg and report.html into REPORT_DIR.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("data_root", metavar="DATA_ROOT")
    p.add_argument("--out", required=True, metavar="REPORT_DIR")
    p.add_argument("--category", default=None,
                   help="category to evaluate on (default: the one each model was trained on)")
    p.add_argument("--split", default="test", choices=("test", "validation"))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--variant", default=None,
                   help="score with another fusion variant (ablations, paper Eq. 1-6 / Table 6: "
                        "case1..case6, reconstruction_only, mapping_only); default: the model's")
    p.add_argument("--examples", type=int, default=6, help="example heatmaps per model in the HTML report")
    p.add_argument("--dino-weights", metavar="FILE", default=None,
                   help="DINO weights (default: the file the model was trained with)")
    p.add_argument("--point-mae-weights", metavar="FILE", default=None,
                   help="Point-MAE weights (default: the file the model was trained with)")
    add_units(p)
    add_device(p)
    add_precision(p)
    add_quiet(p)
    p.set_defaults(func=run)


def plan_models(model_paths, data_root: Path, args) -> list:
    """(model path, category, dataset) per model, from model.json alone (no weights loaded); the
    option checks and the pre-flight read of every test file happen here."""
    from ..artifact import read_metadata
    from ..data.mvtec3d import MVTec3DDataset
    from ..data.validate import check_split
    from ..errors import UserInputError

    plans = []
    for mp in model_paths:
        meta = read_metadata(mp)
        modality = meta.get("modality", "rgb+xyz")
        if args.variant:
            from ..model.fusion import VARIANTS

            if args.variant not in VARIANTS or args.variant in ("rgb_only", "xyz_only"):
                raise UserInputError(f"unknown --variant {args.variant!r}; choose one of "
                                     f"{', '.join(v for v in VARIANTS if not v.endswith('_only'))}")
            if modality != "rgb+xyz":
                raise UserInputError(f"{mp}: --variant needs an rgb+xyz model, this one is {modality}")
        cat = args.category or (meta.get("info") or {}).get("category")
        if not cat:
            raise UserInputError(f"{mp}: the model does not record its category; pass --category")
        ds = MVTec3DDataset(data_root, cat, args.split, load_rgb=modality in ("rgb+xyz", "rgb"),
                            load_xyz=modality in ("rgb+xyz", "xyz"), require_points=False,
                            units=args.units)
        check_split(ds, need_points=False)
        plans.append((mp, cat, ds))
    return plans


def evaluate_models(plans, args) -> list:
    from ..evaluation import evaluate_detector
    from ._workflow import load_detector, say

    evals = []
    for mp, cat, ds in plans:
        det = load_detector(mp, args)
        if args.variant:
            det.config = det.config.replace(score={"variant": args.variant})
        name = mp.name if len(plans) == 1 else str(mp.relative_to(Path(args.model_dir)))
        ev = evaluate_detector(det, ds, name=name, category=cat, batch_size=args.batch_size,
                               progress=not args.quiet, keep_examples=args.examples)
        ev.metrics["random_backbones"] = det.random_backbones
        ev.metrics["heatmap_range"] = det.heatmap_range(det.modality)
        evals.append(ev)
        m = ev.metrics
        fmt = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
        say(args, f"{name} [{cat}, {det.modality}]: I-AUROC {fmt(m['i_auroc'])}  P-AUROC "
                  f"{fmt(m['p_auroc'])}  AUPRO@30 {fmt(m['aupro_30'])}  AUPRO@1 {fmt(m['aupro_1'])}  "
                  f"({m['fps']:.2f} FPS, {m['n']} samples)")
    return evals


def write_all(out: Path, evals, title: str, notices=(), train_logs=()) -> None:
    from ..evaluation import all_paper_tables, write_reports
    from ..report import build_html, write_html

    write_reports(out, evals, {"random_backbones": any(e.metrics.get("random_backbones") for e in evals)})
    examples = [(r, s, tuple(e.metrics.get("heatmap_range") or (None, None)))
                for e in evals for r, s in e.examples]
    write_html(out / "report.html", build_html(title, evals, examples=examples, notices=notices,
                                               paper_tables_md=all_paper_tables(evals),
                                               train_logs=train_logs))


def train_logs_of(models: list[Path], names: list[str]) -> list[tuple[str, list]]:
    """(name, rows) of every model folder that has a `train_log.csv` (older models have none)."""
    from ..detector import TRAIN_LOG
    from ..training import read_train_log

    return [(n, read_train_log(m / TRAIN_LOG)) for m, n in zip(models, names, strict=True)
            if (m / TRAIN_LOG).is_file()]


def run(args) -> int:
    from ._workflow import (
        RANDOM_NOTICE,
        find_models,
        loud,
        require_path,
        require_weight_files,
        say,
        staged_outputs,
    )
    from .common import require_writable

    resolve_device(args.device)
    check_precision(args)
    require_weight_files(args)
    models = find_models(Path(args.model_dir))
    root = require_path(args.data_root, "dataset root")
    out = require_writable(args.out, "report folder")
    plans = plan_models(models, root, args)
    evals = evaluate_models(plans, args)
    notices = [RANDOM_NOTICE] if any(e.metrics.get("random_backbones") for e in evals) else []
    logs = train_logs_of([mp for mp, _, _ in plans], [e.name for e in evals])
    with staged_outputs(out) as stage:
        write_all(stage, evals, "CMDR-IAD evaluation", notices, logs)
    summary = json.loads((out / "metrics.json").read_text())
    say(args, f"wrote {out / 'metrics.json'}, paper_tables.md, report.html "
              f"(I-AUROC {summary.get('i_auroc')})")
    if notices:
        loud(RANDOM_NOTICE)
    return 0
