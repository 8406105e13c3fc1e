"""Fixtures of the service tests: a tiny-preset model with random backbones (untrained heads,
thresholds calibrated on generated samples so that decisions exist), generated sample files, and
a real `cmdr-iad serve` process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def serve_data(tmp_path_factory) -> Path:
    from cmdr_iad.data.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("serve-data"), categories=("puck",), n_train=1,
                            n_val=2, n_test_good=2, n_test_defect=1, size=(48, 48), seed=5)


@pytest.fixture(scope="session")
def serve_model(serve_data, tmp_path_factory) -> Path:
    from cmdr_iad import CMDRIAD, presets
    from cmdr_iad.data.mvtec3d import MVTec3DDataset

    det = CMDRIAD(presets.tiny("rgb+xyz"), random_backbones=True, device="cpu")
    det.calibrate(MVTec3DDataset(serve_data, "puck", "validation", require_points=False))
    path = tmp_path_factory.mktemp("serve-model") / "model"
    det.save(path)
    return path


@pytest.fixture(scope="session")
def sample_files(serve_data) -> dict[str, Path]:
    d = serve_data / "puck" / "test"
    defect = next(p for p in d.iterdir() if p.name != "good")
    return {"rgb": d / "good" / "rgb" / "000.png", "xyz": d / "good" / "xyz" / "000.tiff",
            "rgb_bad": defect / "rgb" / "000.png", "xyz_bad": defect / "xyz" / "000.tiff"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`cmdr-iad serve` in a subprocess on 127.0.0.1; waits until /readyz is 200."""

    def __init__(self, model: Path, *extra: str, timeout: float = 240.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-c", "import sys; from cmdr_iad.cli import main; sys.exit(main())",
               "serve", str(model), "--port", str(self.port), "--device", "cpu", *extra]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("server did not become ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(serve_model):
    s = Server(serve_model, "--max-queue", "2")
    yield s
    s.stop()
