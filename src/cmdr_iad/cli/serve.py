"""`cmdr-iad serve MODEL_DIR`: an inspection service with an operator page (needs the `[serve]`
extra: FastAPI + uvicorn).

Endpoints: GET /healthz, GET /readyz (200 once the model is loaded and warm), POST /v1/predict
(multipart: files `rgb` and/or `xyz`, form field `units`), GET /v1/results/{id} (+ /overlay.png,
/anomaly.tiff, /points.ply), GET /v1/model, GET /metrics (Prometheus), GET / (operator page).
One inference worker behind a bounded queue (503 + Retry-After when full); bad uploads are
400/413/415/422 with {"error": "..."}; SIGTERM finishes the requests in flight, then exits 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_device, add_precision, check_precision, resolve_device


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="inspection service (HTTP API + operator page)",
                              description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-queue", type=int, default=16, help="jobs waiting for the model (default 16)")
    p.add_argument("--max-upload-mb", type=float, default=256.0, help="largest request (default 256 MB)")
    p.add_argument("--results-dir", metavar="DIR", default=None,
                   help="also keep every result on disk here (written atomically)")
    p.add_argument("--keep-results", type=int, default=256, help="results kept in memory (default 256)")
    p.add_argument("--dino-weights", metavar="FILE", default=None)
    p.add_argument("--point-mae-weights", metavar="FILE", default=None)
    add_device(p)
    add_precision(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..artifact import read_metadata
    from ..errors import UserInputError
    from ._workflow import require_weight_files
    from .common import require_writable

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserInputError("cmdr-iad serve needs the [serve] extra: pip install 'cmdr-iad[serve]'") from None
    for name, v in (("--max-queue", args.max_queue), ("--keep-results", args.keep_results)):
        if v < 1:
            raise UserInputError(f"{name} must be >= 1, got {v}")
    if not args.max_upload_mb > 0:
        raise UserInputError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if not 0 <= args.port <= 65535:
        raise UserInputError(f"--port must be 0..65535, got {args.port}")
    resolve_device(args.device)
    check_precision(args)
    require_weight_files(args)
    model_dir = Path(args.model_dir)
    read_metadata(model_dir)  # a missing or unreadable model folder fails before the server starts
    results = None if args.results_dir is None else require_writable(args.results_dir, "results folder")

    from ..serve.app import ServeConfig, create_app

    app = create_app(ServeConfig(model_dir=model_dir, device=args.device, max_queue=args.max_queue,
                                 max_upload_mb=args.max_upload_mb, results_dir=results,
                                 keep_results=args.keep_results, dino_weights=args.dino_weights,
                                 point_mae_weights=args.point_mae_weights,
                                 precision=args.precision))
    print(f"cmdr-iad serve: {model_dir} on http://{args.host}:{args.port}/ (ready when /readyz is 200)",
          flush=True)
    import signal

    stopped: list[int] = []
    # uvicorn answers SIGTERM/SIGINT gracefully (stop taking requests, finish those in flight,
    # shut the worker down), then re-raises the signal to the handler that was there before it:
    # this one, so that a requested stop ends with exit status 0.
    previous = {s: signal.signal(s, lambda signum, frame: stopped.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                    timeout_graceful_shutdown=120)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if stopped:
        print(f"cmdr-iad serve: stopped by signal {stopped[0]}", flush=True)
    return 0
