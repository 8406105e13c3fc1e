"""Executors: run cells and hand each finished record to ``on_done`` as it arrives.

- ``local``: one after another in this process, or ``workers`` spawned processes;
- ``ray``: one Ray task per cell declaring its CPUs and GPUs; ``ray.init()`` starts a local Ray
  unless ``address`` joins a cluster (where RUNS and the feature store must be on a filesystem
  every node sees).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from ..errors import UserInputError
from .cells import Cell, GridSpec
from .run import record_failure, run_cell

__all__ = ["run_local", "run_ray", "require_ray"]

OnDone = Callable[[dict[str, Any]], None]


def run_local(spec: GridSpec, cells: Sequence[Cell], on_done: OnDone, workers: int = 1) -> None:
    """Cells in this process (``workers`` ≤ 1) or in a pool of spawned worker processes."""
    if workers <= 1:
        for cell in cells:
            on_done(run_cell(spec, cell))
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(run_cell, spec, c): c for c in cells}
        for f in as_completed(futures):
            try:
                on_done(f.result())
            except Exception as e:  # the worker process died (e.g. killed): record, go on
                on_done(record_failure(futures[f], "", e, 0.0))


def require_ray() -> Any:
    """The `ray` module, or exit 2 with the install hint."""
    try:
        import ray
    except ImportError:
        raise UserInputError('--executor ray needs Ray: pip install "cmdr-iad[ray]"') from None
    return ray


def run_ray(spec: GridSpec, cells: Sequence[Cell], on_done: OnDone, *, address: str | None = None,
            cpus_per_cell: float = 1.0, gpus_per_cell: float = 0.0, num_cpus: int | None = None) -> None:
    """Each cell a Ray task declaring ``num_cpus`` = ``spec.threads`` (else ``cpus_per_cell``)
    and ``num_gpus=gpus_per_cell``."""
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
        if address:
            kw["address"] = address
        else:
            kw["num_cpus"] = num_cpus or os.cpu_count() or 1
        try:
            ray.init(**kw)
        except ConnectionError as e:
            raise UserInputError(f"cannot join the Ray cluster at {address}: {e}") from e
    try:
        task = ray.remote(num_cpus=spec.threads or cpus_per_cell, num_gpus=gpus_per_cell)(run_cell)
        pending = {task.remote(spec, c): c for c in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    on_done(ray.get(ref))
                except Exception as e:  # the task's worker died: record, go on
                    on_done(record_failure(cell, "", e, 0.0))
    finally:
        if started:
            ray.shutdown()
