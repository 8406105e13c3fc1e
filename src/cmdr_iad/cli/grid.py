"""`cmdr-iad grid`: every category × modality cell trained and evaluated as one resumable job."""

from __future__ import annotations

from .common import add_device, add_quiet, bars_enabled, resolve_device


def _list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def register(subparsers) -> None:
    from ..presets import PRESETS

    p = subparsers.add_parser(
        "grid", help="the category x modality grid (paper Tables 1-3) as one resumable job",
        description="Train and evaluate every (category, modality) cell of DATA_ROOT. Writes "
                    "RUNS/<modality>/<category>/model/ and report/, RUNS/grid.json (per cell: "
                    "status, metrics, seconds, device, error) and RUNS/paper_tables.md / .csv. "
                    "A rerun skips the cells already done with the same config and data; an "
                    "interrupted cell resumes from its last epoch checkpoint. Every cell reads "
                    "one shared feature store (RUNS/features or --cache-dir; on a Ray cluster it "
                    "must be on a filesystem every node sees). Exit 0 when every cell is done, "
                    "2 when a cell failed on bad input, 1 on an internal failure.")
    p.add_argument("data_root", metavar="DATA_ROOT", help="dataset root in the MVTec 3D-AD layout")
    p.add_argument("--out", required=True, metavar="RUNS", help="folder of the runs")
    p.add_argument("--categories", default="all", help="all (default) or a comma list")
    p.add_argument("--modalities", default="rgb+xyz,rgb,xyz", help="comma list (default all three)")
    p.add_argument("--preset", default="paper", choices=PRESETS)
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--variants", default="", help="fusion ablations evaluated on the rgb+xyz "
                   "models, comma list (e.g. full,case1,case2; paper Table 6)")
    p.add_argument("--random-backbones", action="store_true",
                   help="random encoders (tests and demos; the results say so)")
    p.add_argument("--dino-weights", metavar="FILE", default=None)
    p.add_argument("--point-mae-weights", metavar="FILE", default=None)
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="the shared feature store (default RUNS/features)")
    p.add_argument("--executor", default="local", choices=("local", "ray"))
    p.add_argument("--workers", type=int, default=1,
                   help="local: worker processes (default 1: one cell after another); ray: CPUs "
                        "of the local Ray it starts")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster instead of starting a local Ray")
    p.add_argument("--gpus-per-cell", type=float, default=0.0, help="GPUs each Ray task declares")
    p.add_argument("--threads-per-cell", type=int, default=None, metavar="N",
                   help="torch threads of every cell (and the CPUs each Ray task declares); the "
                        "same N gives bit-identical metrics on every executor (default: the "
                        "process default locally, 1 CPU per Ray task)")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import UserInputError
    from ..grid import GridSpec, run_grid
    from ..grid.job import find_categories
    from ._workflow import RANDOM_NOTICE, loud, require_path, require_weight_files, say
    from .common import require_writable

    resolve_device(args.device)
    require_weight_files(args)
    root = require_path(args.data_root, "dataset root")
    out = require_writable(args.out, "runs folder")
    if args.workers < 1:
        raise UserInputError(f"--workers must be >= 1, got {args.workers}")
    if args.gpus_per_cell < 0:
        raise UserInputError(f"--gpus-per-cell must be >= 0, got {args.gpus_per_cell}")
    if args.threads_per_cell is not None and args.threads_per_cell < 1:
        raise UserInputError(f"--threads-per-cell must be >= 1, got {args.threads_per_cell}")
    if args.cache_dir:
        require_writable(args.cache_dir, "feature cache folder")
    cats = find_categories(root) if args.categories == "all" else _list(args.categories)
    spec = GridSpec(data_root=str(root), out=str(Path(out)), categories=tuple(cats),
                    modalities=_list(args.modalities), preset=args.preset, epochs=args.epochs,
                    variants=_list(args.variants), random_backbones=args.random_backbones,
                    cache_dir=args.cache_dir, device=args.device, dino_weights=args.dino_weights,
                    point_mae_weights=args.point_mae_weights, threads=args.threads_per_cell)
    rc = run_grid(spec, executor=args.executor, workers=args.workers, ray_address=args.ray_address,
                  gpus_per_cell=args.gpus_per_cell, say=lambda m: say(args, m),
                  show_progress=bars_enabled(args))
    if args.random_backbones:
        loud(RANDOM_NOTICE)
    return rc
