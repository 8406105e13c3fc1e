"""Bounded store of inspection results: the newest ``capacity`` in memory (oldest evicted), and
every result also on disk under ``folder`` when one is given (written atomically, read back
after eviction or a restart)."""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import write_bytes_atomic

__all__ = ["Stored", "ResultStore", "valid_id"]

_ID = re.compile(r"^[0-9a-f]{32}$")


def valid_id(rid: str) -> bool:
    """Result ids are 32 lowercase hex digits (uuid4().hex): nothing else reaches the disk."""
    return bool(_ID.match(rid))


@dataclass
class Stored:
    """One inspection: its JSON record and its files (name → bytes)."""

    record: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


class ResultStore:
    def __init__(self, capacity: int = 256, folder: str | Path | None = None) -> None:
        self.capacity = max(1, int(capacity))
        self.folder = None if folder is None else Path(folder)
        self._mem: OrderedDict[str, Stored] = OrderedDict()
        self._lock = threading.Lock()
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def put(self, rid: str, item: Stored) -> None:
        if self.folder is not None:
            d = self.folder / rid
            d.mkdir(exist_ok=True)
            for name, data in item.files.items():
                write_bytes_atomic(d / name, data)
            write_bytes_atomic(d / "result.json", json.dumps(item.record, default=str).encode())
        with self._lock:
            self._mem[rid] = item
            self._mem.move_to_end(rid)
            while len(self._mem) > self.capacity:
                self._mem.popitem(last=False)

    def get(self, rid: str) -> Stored | None:
        if not valid_id(rid):
            return None
        with self._lock:
            if rid in self._mem:
                return self._mem[rid]
        if self.folder is not None and (self.folder / rid / "result.json").is_file():
            d = self.folder / rid
            files = {p.name: p.read_bytes() for p in d.iterdir() if p.name != "result.json"}
            return Stored(json.loads((d / "result.json").read_text()), files)
        return None

    def recent(self, n: int = 20) -> list[dict[str, Any]]:
        """The newest ``n`` records in memory, newest first."""
        with self._lock:
            items = list(self._mem.values())[-n:]
        return [s.record for s in reversed(items)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._mem)
