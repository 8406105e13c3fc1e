"""A real `cmdr-iad serve` process on 127.0.0.1: concurrent clients (every request answered
exactly once, 200 or 503, never lost, never a 500), a client that disconnects mid-upload, and
SIGTERM (requests in flight are answered, then exit 0). Loopback only; loops are bounded."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

from conftest import Server  # tests/serve/conftest.py


def post(url: str, parts: dict[str, tuple[str, bytes]], timeout: float = 120.0) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = b""
    for field, (name, data) in parts.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                 f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/v1/predict", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}") | {"_retry_after": e.headers.get("Retry-After")}


def parts(sample_files) -> dict[str, tuple[str, bytes]]:
    return {"rgb": ("p.png", sample_files["rgb"].read_bytes()),
            "xyz": ("p.tiff", sample_files["xyz"].read_bytes())}


def test_eight_concurrent_clients_every_request_answered_once(server, sample_files):
    body = parts(sample_files)
    answers: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def client():
        for _ in range(25):
            a = post(server.url, body)
            with lock:
                answers.append(a)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert len(answers) == 200
    codes = [c for c, _ in answers]
    assert set(codes) <= {200, 503}, codes
    ok = [a for c, a in answers if c == 200]
    assert ok and len({a["id"] for a in ok}) == len(ok)  # each accepted request answered once
    assert all(a["_retry_after"] for c, a in answers if c == 503)
    with urllib.request.urlopen(server.url + "/metrics") as r:
        metrics = r.read().decode()
    line = next(x for x in metrics.splitlines() if x.startswith('cmdr_iad_requests_total{outcome="ok"}'))
    assert float(line.split()[-1]) >= len(ok)
    assert 'outcome="internal_error"' not in metrics


def test_a_client_disconnecting_mid_upload_disturbs_nobody(server, sample_files):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                  b"boundary=zz\r\nContent-Length: 1000000\r\n\r\n--zz\r\nContent-Disposition: "
                  b"form-data; name=\"rgb\"; filename=\"p.png\"\r\n\r\n" + b"\x89PNG" + b"0" * 5000)
    time.sleep(0.5)
    code, answer = post(server.url, parts(sample_files))
    assert code == 200 and answer["branch"] == "rgb+xyz"


def test_sigterm_answers_requests_in_flight_then_exits_0(serve_model, sample_files):
    srv = Server(serve_model)
    got: list[tuple[int, dict]] = []
    t = threading.Thread(target=lambda: got.append(post(srv.url, parts(sample_files))))
    t.start()
    time.sleep(0.3)  # the request is in flight (uploading or being scored)
    rc = srv.stop()
    t.join(120)
    assert rc == 0
    assert got and got[0][0] == 200, got
