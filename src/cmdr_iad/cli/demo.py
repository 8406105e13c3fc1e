"""`cmdr-iad demo`: generate a small dataset, train, evaluate and write an HTML report.

Needs no arguments and no downloads: it uses the pretrained backbones when they are already on
disk (`cmdr-iad weights`), otherwise random backbones, announced loudly in the terminal and in
the report. Sized to finish in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import time

from .common import add_device, add_quiet


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="generate data, train, evaluate and write an HTML report (no arguments needed)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("--out", default="cmdr-iad-demo", metavar="DIR",
                   help="folder for the data, model and report (default: ./cmdr-iad-demo)")
    p.add_argument("--preset", default="tiny", choices=("tiny", "small"))
    p.add_argument("--modality", default="rgb+xyz", choices=("rgb+xyz", "rgb", "xyz"))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--category", default="puck", help="synthetic object (puck, ring, tile, dome)")
    p.add_argument("--n-train", type=int, default=12)
    p.add_argument("--size", type=int, default=128, help="image side of the generated samples")
    p.add_argument("--random-backbones", action="store_true",
                   help="use random backbones even when pretrained weights are present")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=run)


def _pretrained_available() -> tuple[bool, str | None, str | None]:
    from ..errors import WeightsError
    from ..features.weights import DINO, POINT_MAE, find_weights

    try:
        d, m = find_weights(DINO), find_weights(POINT_MAE)
    except WeightsError:
        return False, None, None
    if d is None or m is None:
        return False, None, None
    return True, str(d.path), str(m.path)


def run(args) -> int:
    from .. import presets
    from ..data.mvtec3d import MVTec3DDataset
    from ..data.preprocess import preprocess_dataset
    from ..data.synthetic import generate_dataset
    from ..detector import CMDRIAD
    from ..evaluation import evaluate_detector, paper_tables, write_reports
    from ..fileio import write_json_atomic
    from ..report import build_html, write_html
    from ._workflow import RANDOM_NOTICE, loud, say
    from .common import require_writable, resolve_device
    from .evaluate import train_logs_of

    t0 = time.perf_counter()
    device = resolve_device(args.device)
    out = require_writable(args.out, "demo folder")
    have, dino, pmae = _pretrained_available()
    random = args.random_backbones or not have
    if random:
        loud(RANDOM_NOTICE + ("" if args.random_backbones else
                              " (no pretrained weights found on this machine)"))
    raw, data = out / "raw", out / "data"
    say(args, f"[1/4] generating a synthetic dataset in {raw}, preprocessed into {data} (table "
              "plane removed, as for MVTec 3D-AD: heads trained on raw clouds learn the table)")
    generate_dataset(raw, categories=(args.category,), n_train=args.n_train, n_val=4,
                     n_test_good=6, n_test_defect=2, size=(args.size, args.size), seed=args.seed)
    preprocess_dataset(raw, data, workers=1, progress=False)
    cfg = presets.get(args.preset, args.modality).replace(train={"epochs": args.epochs, "seed": args.seed})
    kw = {"load_rgb": cfg.uses_rgb, "load_xyz": cfg.uses_xyz, "require_points": False}
    train = MVTec3DDataset(data, args.category, "train", **kw)
    val = MVTec3DDataset(data, args.category, "validation", **kw)
    test = MVTec3DDataset(data, args.category, "test", **kw)
    say(args, f"[2/4] training ({cfg.preset} preset, {cfg.modality}, {cfg.train.epochs} epochs, "
              f"{len(train)} samples)")
    det = CMDRIAD(cfg, dino_weights=dino, point_mae_weights=pmae, random_backbones=random,
                  device=device)
    det.fit(train, val, cache_dir=out / "feature-cache", progress=not args.quiet)
    det.info.update({"category": args.category, "data_root": str(data.resolve()), "demo": True})
    det.save(out / "model")
    say(args, f"[3/4] evaluating on {len(test)} test samples")
    ev = evaluate_detector(det, test, name=f"{args.category} ({cfg.modality})", category=args.category,
                           progress=not args.quiet, keep_examples=8)
    ev.metrics["random_backbones"] = random
    report_dir = out / "report"
    write_reports(report_dir, [ev], {"random_backbones": random})
    elapsed = time.perf_counter() - t0
    notices = [RANDOM_NOTICE] if random else []
    extra = (f"<h2>Run</h2><p>Generated data: <code>{data}</code>; model: <code>{out / 'model'}</code>; "
             f"total time {elapsed:.0f} s; backbones: {'random' if random else 'pretrained'}.</p>")
    rng = det.heatmap_range(det.modality)
    html_path = write_html(report_dir / "report.html", build_html(
        "CMDR-IAD demo", [ev], examples=[(r, s, rng) for r, s in ev.examples], notices=notices,
        paper_tables_md=paper_tables([ev]), extra_html=extra,
        train_logs=train_logs_of([out / "model"], ["demo model"])))
    m = ev.metrics
    fmt = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    say(args, f"[4/4] I-AUROC {fmt(m['i_auroc'])}  P-AUROC {fmt(m['p_auroc'])}  AUPRO@30 "
              f"{fmt(m['aupro_30'])}  AUPRO@1 {fmt(m['aupro_1'])}  ({elapsed:.0f} s)")
    print(f"report: {html_path.resolve()}")
    write_json_atomic(report_dir / "demo.json", {"seconds": elapsed, "random_backbones": random})
    if random:
        loud(RANDOM_NOTICE)
    return 0
