"""Latency and throughput of `cmdr-iad serve` at 1, 2 and 8 concurrent clients (loopback only).

Builds a tiny-preset model with random backbones on generated data (or uses --model), starts
`cmdr-iad serve` on a free 127.0.0.1 port, and sends --requests requests per concurrency level
(503 answers are counted and retried after Retry-After). Prints p50 / p95 latency of the 200
answers and the throughput per level.

    python benchmarks/bench_serve.py --requests 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))


def run_level(url: str, body: dict, level: int, n: int, post) -> tuple[list[float], int, float]:
    """``n`` requests from ``level`` concurrent clients → (latencies of the 200s, 503 count, wall)."""
    lat: list[float] = []
    state = {"todo": n, "busy": 0}
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if state["todo"] == 0:
                    return
                state["todo"] -= 1
            while True:
                t0 = time.perf_counter()
                code, _ = post(url, body)
                if code == 200:
                    with lock:
                        lat.append(time.perf_counter() - t0)
                    break
                with lock:
                    state["busy"] += 1
                time.sleep(1.0)

    t = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(level)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return lat, state["busy"], time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    from test_server import post

    from cmdr_iad import CMDRIAD, presets
    from cmdr_iad.data.synthetic import generate_dataset
    from conftest import Server  # tests/serve/conftest.py: the subprocess server helper

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    ap.add_argument("--levels", default="1,2,8")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_dataset(Path(tmp) / "data", categories=("puck",), n_train=1, n_val=0,
                                n_test_good=1, n_test_defect=0, size=(128, 128), seed=0)
        model = a.model
        if model is None:
            model = Path(tmp) / "model"
            CMDRIAD(presets.tiny("rgb+xyz"), random_backbones=True, device="cpu").save(model)
        g = root / "puck" / "test" / "good"
        body = {"rgb": ("p.png", (g / "rgb" / "000.png").read_bytes()),
                "xyz": ("p.tiff", (g / "xyz" / "000.tiff").read_bytes())}
        srv = Server(model, "--max-queue", "16")
        try:
            print(f"model {model}, {a.requests} requests per level, server {srv.url}")
            for level in (int(x) for x in a.levels.split(",")):
                lat, busy, wall = run_level(srv.url, body, level, a.requests, post)
                q = statistics.quantiles(lat, n=20) if len(lat) > 1 else [lat[0]] * 19
                print(f"{level} client(s): p50 {1000 * statistics.median(lat):.0f} ms, "
                      f"p95 {1000 * q[18]:.0f} ms, {len(lat) / wall:.2f} requests/s, "
                      f"{busy} x 503")
        finally:
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
