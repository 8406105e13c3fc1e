"""Progress display: the one helper for progress bars on long loops (rich, to stderr).

``progress(total, desc, enabled=...)`` is a context manager yielding a :class:`Bar` with
``advance(n=1, **fields)``, ``update(total=, completed=, description=)`` and free-form
``fields`` shown after the bar (e.g. the training losses). Disabled bars cost nothing and
print nothing, so library code can always use one and let the caller decide (``--quiet``).
Bars are transient=False: the finished line stays, with its elapsed time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["Bar", "progress", "track"]

T = TypeVar("T")


class Bar:
    """One progress bar (or a no-op when disabled)."""

    def __init__(self, prog: Any, task: Any) -> None:
        self._prog, self._task = prog, task

    @property
    def enabled(self) -> bool:
        return self._prog is not None

    def advance(self, n: float = 1, **fields: Any) -> None:
        """Advance by ``n`` steps; ``fields`` (e.g. ``info="loss 0.12"``) replace the shown text."""
        if self._prog is not None:
            self._prog.update(self._task, advance=n, **_fields(fields))

    def update(self, *, total: float | None = None, completed: float | None = None,
               description: str | None = None, **fields: Any) -> None:
        if self._prog is not None:
            kw: dict[str, Any] = _fields(fields)
            if total is not None:
                kw["total"] = total
            if completed is not None:
                kw["completed"] = completed
            if description is not None:
                kw["description"] = description
            self._prog.update(self._task, **kw)


def _fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {"info": str(fields["info"])} if "info" in fields else {}


@contextmanager
def progress(total: float | None, desc: str, *, enabled: bool = True, eta: bool = True
             ) -> Iterator[Bar]:
    """A progress bar for ``total`` steps (None: unknown) labelled ``desc``."""
    if not enabled:
        yield Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols: list[Any] = [TextColumn("[bold]{task.description}[/]"), BarColumn(),
                       MofNCompleteColumn(), TimeElapsedColumn()]
    if eta:
        cols.append(TimeRemainingColumn())
    cols.append(TextColumn("{task.fields[info]}"))
    with Progress(*cols, console=Console(stderr=True), transient=False) as prog:
        task = prog.add_task(desc, total=total, info="")
        yield Bar(prog, task)


def track(items: Iterable[T], desc: str, *, total: int | None = None, enabled: bool = True
          ) -> Iterator[T]:
    """Iterate ``items`` with a bar (``total`` defaults to ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(total, desc, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.advance()
