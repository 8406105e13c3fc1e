"""The FastAPI application of `cmdr-iad serve` (see the package docstring and the README).

Needs the ``[serve]`` extra (imported here, not by the package). `create_app(config)` returns the app; the model is loaded and warmed up in a background
thread at start-up, so `/healthz` answers at once and `/readyz` turns 200 when the model is ready.
Every prediction runs on the single inference worker through `CMDRIAD.predict` (the one inference
path); its files are rendered by `cmdr_iad.outputs`, exactly as `cmdr-iad predict` writes them.
"""

import asyncio
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CmdrIadError
from .results import ResultStore, Stored, valid_id
from .uploads import UploadError, read_upload_sample
from .worker import InferenceWorker, QueueFull

__all__ = ["ServeConfig", "create_app"]

FILES = {"overlay.png": ("_overlay.png", "image/png"),
         "anomaly.tiff": ("_anomaly.tiff", "image/tiff"),
         "points.ply": (".ply", "application/octet-stream")}
RANDOM_WARNING = ("RANDOM BACKBONES: this model's encoders are randomly initialised; its scores "
                  "mean nothing for inspection (testing only)")


@dataclass
class ServeConfig:
    model_dir: Path
    device: str = "auto"
    max_queue: int = 16
    max_upload_mb: float = 256.0
    results_dir: Path | None = None
    keep_results: int = 256
    dino_weights: str | None = None
    point_mae_weights: str | None = None
    precision: str = "fp32"  # of the encoders and heads (`precision.resolve_precision`)


@dataclass
class _State:
    cfg: ServeConfig
    det: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    load_error: str | None = None
    load_seconds: float | None = None
    worker: InferenceWorker | None = None
    store: ResultStore | None = None


def _metrics():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    reg = CollectorRegistry()
    return reg, {
        "requests": Counter("cmdr_iad_requests", "Prediction requests by outcome", ["outcome"],
                            registry=reg),
        "latency": Histogram("cmdr_iad_request_seconds", "Prediction latency (accepted requests)",
                             buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=reg),
        "queue": Gauge("cmdr_iad_queue_depth", "Jobs waiting for the inference worker", registry=reg),
        "load": Gauge("cmdr_iad_model_load_seconds", "Seconds to load and warm up the model",
                      registry=reg),
    }


def _warm_sample(det: Any) -> Any:
    """A small generated sample of the model's modality (warm-up only)."""
    from ..data.sample import Sample
    from ..data.synthetic import synth_sample

    s = synth_sample("puck", seed=(0, 0), size=(64, 64))
    return Sample(rgb=s.rgb if det.config.uses_rgb else None,
                  xyz=s.xyz if det.config.uses_xyz else None, key="warm-up")


def _load(state: _State, gauge: Any) -> None:
    from ..artifact import read_metadata
    from ..cli._workflow import load_detector

    t0 = time.perf_counter()
    try:
        cfg = state.cfg
        state.meta = read_metadata(cfg.model_dir)

        class _Args:  # what load_detector reads of the CLI namespace
            device = cfg.device
            dino_weights = cfg.dino_weights
            point_mae_weights = cfg.point_mae_weights
            precision = cfg.precision
            quiet = False

        det = load_detector(cfg.model_dir, _Args)
        det.predict(_warm_sample(det))  # builds the encoders, warms the allocator and kernels
        state.det = det
        state.load_seconds = time.perf_counter() - t0
        gauge.set(state.load_seconds)
        state.ready.set()
    except Exception as e:  # noqa: BLE001 - reported by /readyz and the log, the process stays up
        state.load_error = f"{type(e).__name__}: {e}".replace("\n", " ")


def _predict_job(state: _State, sample: Any, rid: str) -> dict[str, Any]:
    """Runs on the worker thread: score, render the files, store; returns the JSON answer."""
    from ..inference import StageTimer
    from ..outputs import prediction_files

    det = state.det
    timer = StageTimer(det.device)
    res = next(det.predict_many([sample], batch_size=1, timer=timer))
    t0 = time.perf_counter()
    files, record = prediction_files("result", res, sample, det, state.cfg.model_dir.name)
    timing = {k: round(1000 * v, 3) for k, v in timer.seconds.items()}
    timing["render"] = round(1000 * (time.perf_counter() - t0), 3)
    stored_files = {name: files[f"result{suffix}"] for name, (suffix, _) in FILES.items()
                    if f"result{suffix}" in files}
    answer = {
        "id": rid, "score": record["score"], "is_anomalous": record["is_anomalous"],
        "threshold": record["threshold"], "branch": record["branch"],
        "missing_modality": record["missing_modality"], "notes": record["notes"],
        "timing_ms": timing, "model": _model_info(state), "random_backbones": det.random_backbones,
        "precision": det.precision,
        "files": sorted(stored_files), "points": _points(sample, res, det),
    }
    state.store.put(rid, Stored(answer, stored_files))
    return answer


def _points(sample: Any, res: Any, det: Any, limit: int = 20000) -> dict[str, Any] | None:
    """Valid points (subsampled to ``limit``) with their anomaly colours, for the page's viewer."""
    import numpy as np

    from .. import viz

    if sample.xyz is None or not np.any(sample.xyz != 0):
        return None
    lo, hi = det.heatmap_range(res.branch)
    pts, cols = viz.coloured_points(sample.xyz, res.anomaly_map, lo, hi)
    step = max(1, int(np.ceil(len(pts) / limit)))
    return {"xyz": np.round(pts[::step], 5).tolist(), "rgb": cols[::step].tolist()}


def _model_info(state: _State) -> dict[str, Any]:
    det, meta = state.det, state.meta
    return {"name": state.cfg.model_dir.name, "weights_sha256": meta.get("weights_sha256"),
            "modality": det.modality if det else meta.get("modality"),
            "preset": meta.get("preset"),
            "backbone": (meta.get("backbone") or {}).get("identity")}


def create_app(cfg: ServeConfig, *, load_in_background: bool = True):
    """The FastAPI app serving the model of ``cfg.model_dir``."""
    state = _State(cfg)
    registry, m = _metrics()
    limit = int(cfg.max_upload_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.store = ResultStore(cfg.keep_results, cfg.results_dir)
        state.worker = InferenceWorker(cfg.max_queue)
        loader = threading.Thread(target=_load, args=(state, m["load"]), daemon=True)
        loader.start()
        if not load_in_background:
            loader.join()
        try:
            yield
        finally:
            state.worker.close()  # the queued jobs are answered first

    app = FastAPI(title="cmdr-iad", lifespan=lifespan)

    def error(status: int, msg: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(msg).split())}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_form(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "request"
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, exc.detail)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        m["requests"].labels("internal_error").inc()
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.middleware("http")
    async def _upload_limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if request.url.path == "/v1/predict" and size and size.isdigit() and int(size) > limit:
            m["requests"].labels("too_large").inc()
            return error(413, f"upload of {int(size) / 2**20:.1f} MB is over the limit of "
                              f"{cfg.max_upload_mb:g} MB (--max-upload-mb)")
        return await call_next(request)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if state.ready.is_set():
            return {"ready": True, "load_seconds": state.load_seconds}
        return error(503, f"model failed to load: {state.load_error}" if state.load_error
                     else "model is loading")

    @app.get("/v1/model")
    async def model():
        if not state.ready.is_set():
            return error(503, "model is loading")
        det = state.det
        out = {**_model_info(state), "config": det.config.to_dict(), "thresholds": det.thresholds,
               "calibration": det.calibration, "random_backbones": det.random_backbones,
               "device": str(det.device), "precision": det.precision,
               "load_seconds": state.load_seconds}
        if det.random_backbones:
            out["warning"] = RANDOM_WARNING
        return out

    async def _read(f: UploadFile | None) -> tuple[str | None, bytes] | None:
        if f is None:
            return None
        data = await f.read(limit + 1)
        if len(data) > limit:
            raise UploadError(413, f"{f.filename or 'upload'} is over the limit of "
                                   f"{cfg.max_upload_mb:g} MB (--max-upload-mb)")
        return f.filename, data

    @app.post("/v1/predict")
    async def predict(rgb: UploadFile | None = File(None), xyz: UploadFile | None = File(None),
                      units: str = Form("m")):
        t0 = time.perf_counter()
        if not state.ready.is_set():
            m["requests"].labels("not_ready").inc()
            return error(503, "model is loading", {"Retry-After": "5"})
        try:
            sample = read_upload_sample(await _read(rgb), await _read(xyz), units=units)
        except UploadError as e:
            m["requests"].labels("bad_request").inc()
            return error(e.status, str(e))
        rid = uuid.uuid4().hex
        try:
            fut = state.worker.submit(lambda: _predict_job(state, sample, rid))
        except QueueFull as e:
            m["requests"].labels("queue_full").inc()
            return error(503, str(e), {"Retry-After": "1"})
        m["queue"].set(state.worker.depth)
        try:
            answer = await asyncio.wrap_future(fut)
        except CmdrIadError as e:
            if e.exit_code != 2:
                raise
            m["requests"].labels("bad_request").inc()
            return error(422, str(e))
        finally:
            m["queue"].set(state.worker.depth)
        m["requests"].labels("ok").inc()
        m["latency"].observe(time.perf_counter() - t0)
        answer["timing_ms"]["total"] = round(1000 * (time.perf_counter() - t0), 3)
        return {k: v for k, v in answer.items() if k != "points"}

    def _get(rid: str) -> Stored:
        item = state.store.get(rid) if valid_id(rid) else None
        if item is None:
            raise StarletteHTTPException(404, f"no result with id {rid}")
        return item

    @app.get("/v1/results")
    async def recent(n: int = 20):
        return [{k: r.get(k) for k in ("id", "score", "is_anomalous", "threshold", "branch")}
                for r in state.store.recent(max(1, min(n, 200)))]

    @app.get("/v1/results/{rid}")
    async def result(rid: str):
        return {k: v for k, v in _get(rid).record.items() if k != "points"}

    @app.get("/v1/results/{rid}/points.json")
    async def points(rid: str):
        pts = _get(rid).record.get("points")
        if pts is None:
            raise StarletteHTTPException(404, f"result {rid} has no point cloud")
        return pts

    @app.get("/v1/results/{rid}/{name}")
    async def result_file(rid: str, name: str):
        if name not in FILES:
            raise StarletteHTTPException(404, f"no file {name}; files: {', '.join(FILES)}")
        item = _get(rid)
        if name not in item.files:
            raise StarletteHTTPException(404, f"result {rid} has no {name}")
        return Response(item.files[name], media_type=FILES[name][1])

    @app.get("/metrics")
    async def metrics():
        m["queue"].set(state.worker.depth if state.worker else 0)
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    static = resources.files("cmdr_iad.serve") / "static"

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse((static / "index.html").read_text())

    @app.get("/static/{name}")
    async def asset(name: str):
        types = {".js": "text/javascript", ".css": "text/css"}
        f = static / name
        if Path(name).suffix not in types or "/" in name or not f.is_file():
            raise StarletteHTTPException(404, f"no asset {name}")
        return Response(f.read_text(), media_type=types[Path(name).suffix])

    app.state.cmdr = state
    return app
