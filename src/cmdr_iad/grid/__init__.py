"""The category × modality grid as one resumable job (`cmdr-iad grid`).

- :mod:`.cells` — what a cell is, its folder and its fingerprint;
- :mod:`.run` — one cell trained and evaluated in-process (the unit every executor runs);
- :mod:`.executors` — local (sequential or worker processes) and Ray;
- :mod:`.job` — the job: validation, resume, grid.json, the tables;
- :mod:`.tables` — paper_tables.md / .csv over the finished cells.
"""

from __future__ import annotations

from .cells import Cell, GridSpec
from .job import EXECUTORS, run_grid

__all__ = ["Cell", "GridSpec", "EXECUTORS", "run_grid"]
