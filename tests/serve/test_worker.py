"""The single inference worker: bounded queue, every accepted job answered exactly once, a failed
job does not stop the worker, close() finishes the queued jobs."""

from __future__ import annotations

import threading

import pytest

from cmdr_iad.serve.worker import InferenceWorker, QueueFull


def test_bounded_queue_and_exactly_once_answers():
    gate = threading.Event()
    w = InferenceWorker(max_queue=2)
    calls = []

    def job(i):
        def run():
            if i == 0:
                gate.wait(10)
            calls.append(i)
            if i == 1:
                raise ValueError("job 1 fails")
            return i
        return run

    futures = [w.submit(job(0))]
    while w.depth:  # job 0 is taken by the thread
        pass
    futures += [w.submit(job(1)), w.submit(job(2))]
    with pytest.raises(QueueFull):
        w.submit(job(3))
    gate.set()
    assert futures[0].result(10) == 0 and futures[2].result(10) == 2
    with pytest.raises(ValueError, match="job 1"):
        futures[1].result(10)
    assert sorted(calls) == [0, 1, 2]
    late = w.submit(job(4))
    w.close()
    assert late.result(1) == 4 and calls.count(4) == 1
    with pytest.raises(QueueFull):
        w.submit(job(5))
