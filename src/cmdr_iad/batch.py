"""Streaming batch prediction over a folder: one sample at a time, each written as soon as done.

`predict_folder` reads, scores and writes one sample at a time (memory flat in the number of
samples). Each sample's files are written atomically (`outputs.prediction_files` through
`fileio`), its JSON last, then one line is appended to ``OUT/predictions.jsonl`` (stem, files,
score, decision, branch — or the error). A bad sample is recorded there and skipped; the others
are written. ``OUT/predictions.csv`` is rewritten (atomically) from the JSONL at the end. A rerun
skips the samples already done (a line with ``"status": "ok"`` whose JSON file exists).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CmdrIadError
from .fileio import write_bytes_atomic, write_text_atomic
from .progress import progress as progress_bar

__all__ = ["JSONL", "CSV", "BatchReport", "check_inputs", "stream", "predict_folder", "done_stems",
           "record_failures"]

JSONL = "predictions.jsonl"
CSV = "predictions.csv"
CSV_FIELDS = ("stem", "status", "score", "is_anomalous", "threshold", "branch", "missing_modality",
              "error")


@dataclass
class BatchReport:
    """What a run did: stems scored now, skipped (already done) and failed (stem, message)."""

    scored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.scored) + len(self.skipped) + len(self.failed)

    def summary(self) -> str | None:
        """The one stderr line when samples failed ("k of n samples could not be scored; first:
        FILE: problem"), else None."""
        if not self.failed:
            return None
        return (f"{len(self.failed)} of {self.total} samples could not be scored; first: "
                f"{self.failed[0][1]}")


def _records(out: Path) -> list[dict[str, Any]]:
    f = out / JSONL
    if not f.is_file():
        return []
    recs = []
    for line in f.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash: the sample is simply redone
            continue
    return recs


def done_stems(out: Path) -> set[str]:
    """Stems with an "ok" line in ``predictions.jsonl`` whose JSON file is on disk."""
    return {r["stem"] for r in _records(out)
            if r.get("status") == "ok" and (out / f"{r['stem']}.json").is_file()}


def _append(out: Path, rec: dict[str, Any]) -> None:
    with open(out / JSONL, "a") as f:
        f.write(json.dumps(rec, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_csv(out: Path) -> None:
    last: dict[str, dict[str, Any]] = {}
    for r in _records(out):
        last[r["stem"]] = r
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for stem in sorted(last):
        w.writerow({k: last[stem].get(k) for k in CSV_FIELDS})
    write_text_atomic(out / CSV, buf.getvalue())


def _message(e: Exception, rgb: Any, xyz: Any) -> str:
    where = str(xyz or rgb)
    return str(e) if where in str(e) else f"{where}: {e}"


def check_inputs(inputs: Sequence[tuple[str, Any, Any, Any]], units: str = "m",
                 skip: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """Read every sample once (no model needed): {stem: one-line problem} of the bad ones."""
    from .data.folder import load_sample

    bad: dict[str, str] = {}
    for stem, rgb, xyz, gt in inputs:
        if stem in skip:
            continue
        try:
            load_sample(rgb, xyz, gt, units=units, require_points=False, key=stem)
        except CmdrIadError as e:
            if e.exit_code != 2:
                raise
            bad[stem] = _message(e, rgb, xyz)
    return bad


def record_failures(out: str | os.PathLike, failures: dict[str, str]) -> None:
    """Append the failures to ``predictions.jsonl`` and rewrite ``predictions.csv``."""
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    for stem, msg in failures.items():
        _append(o, {"stem": stem, "status": "error", "error": msg})
    _write_csv(o)


def stream(items: Sequence[tuple[str, Any]], out: str | os.PathLike,
           process: Callable[[str, Any], dict[str, Any]], *, show_progress: bool = True,
           known_bad: dict[str, str] | None = None, where: Callable[[Any], str] = str) -> BatchReport:
    """Run ``process(stem, item)`` for each (stem, item) not yet done in ``out``, one at a time.

    ``process`` writes the sample's files atomically (its JSON last) and returns its JSONL record
    (``status`` "ok" is added); a user-input error (`CmdrIadError` with exit code 2) is recorded
    as the sample's error and the batch goes on; any other exception propagates (our bug).
    known_bad: {stem: problem} found beforehand (`check_inputs`), recorded without retrying;
    where(item): the file to name in an error message that does not name one.
    """
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    done = done_stems(o)
    known_bad = dict(known_bad or {})
    report = BatchReport()
    with progress_bar(len(items), "predict", enabled=show_progress) as bar:
        for stem, item in items:
            if stem in done:
                report.skipped.append(stem)
                bar.advance()
                continue
            if stem in known_bad:
                report.failed.append((stem, known_bad[stem]))
                _append(o, {"stem": stem, "status": "error", "error": known_bad[stem]})
                bar.advance()
                continue
            try:
                rec = process(stem, item)
            except CmdrIadError as e:  # bad input: recorded, the batch goes on
                if e.exit_code != 2:
                    raise
                msg = str(e) if where(item) in str(e) else f"{where(item)}: {e}"
                report.failed.append((stem, msg))
                _append(o, {"stem": stem, "status": "error", "error": msg})
            else:
                report.scored.append(stem)
                _append(o, {"stem": stem, "status": "ok", **rec})
            bar.advance(info=stem)
    _write_csv(o)
    return report


def predict_folder(det: Any, inputs: Sequence[tuple[str, Any, Any, Any]], out: str | os.PathLike, *,
                   model: str, units: str = "m", map_format: str = "tiff", save_raw: bool = False,
                   show_progress: bool = True, known_bad: dict[str, str] | None = None) -> BatchReport:
    """Score ``inputs`` — (stem, rgb path, xyz path, gt path) — one by one into ``out``
    (:func:`stream` with the detector's `predict` and `outputs.prediction_files`)."""
    from .data.folder import load_sample
    from .outputs import prediction_files

    o = Path(out)

    def one(stem: str, paths: tuple[Any, Any, Any]) -> dict[str, Any]:
        rgb, xyz, gt = paths
        sample = load_sample(rgb, xyz, gt, units=units, require_points=False, key=stem)
        files, record = prediction_files(stem, det.predict(sample), sample, det, model,
                                         map_format=map_format, save_raw=save_raw)
        json_name = f"{stem}.json"
        for name, data in files.items():
            if name != json_name:
                write_bytes_atomic(o / name, data)
        write_bytes_atomic(o / json_name, files[json_name])  # last: marks the sample done
        return {k: record[k] for k in ("files", "score", "is_anomalous", "threshold", "branch",
                                       "missing_modality")}

    return stream([(stem, (rgb, xyz, gt)) for stem, rgb, xyz, gt in inputs], o, one,
                  show_progress=show_progress, known_bad=known_bad,
                  where=lambda p: str(p[1] or p[0]))
