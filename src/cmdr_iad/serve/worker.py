"""The single inference worker: one thread runs the model (it is not re-entrant) on jobs taken
from a bounded queue. Every accepted job's future is resolved exactly once — with the result,
or with the exception the job raised — and the worker keeps running after a failed job."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["QueueFull", "InferenceWorker"]


class QueueFull(Exception):
    """The bounded queue is full: the caller answers 503 with Retry-After."""


class InferenceWorker:
    """``submit(fn)`` → a `Future` of ``fn()`` run on the worker thread, or `QueueFull`."""

    def __init__(self, max_queue: int = 16) -> None:
        self._q: queue.Queue[tuple[Callable[[], Any], Future] | None] = queue.Queue(max(1, int(max_queue)))
        self._thread = threading.Thread(target=self._run, name="cmdr-iad-inference", daemon=True)
        self._accepting = True
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the one running)."""
        return self._q.qsize()

    def submit(self, fn: Callable[[], Any]) -> Future:
        if not self._accepting:
            raise QueueFull("the service is shutting down")
        fut: Future = Future()
        try:
            self._q.put_nowait((fn, fut))
        except queue.Full:
            raise QueueFull("the inference queue is full") from None
        return fut

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # the job's failure is the caller's answer, not ours
                fut.set_exception(e)

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop taking jobs, finish the queued ones, then stop the thread."""
        self._accepting = False
        self._q.put(None)
        self._thread.join(timeout)
