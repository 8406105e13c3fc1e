"""paper_tables.md / .csv over the finished cells of a grid (the layout of the paper's Tables
1–3, per protocol), plus the ablation tables when variants were evaluated."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from ..evaluation import (
    METRIC_KEYS,
    MVTEC_CATEGORIES,
    PAPER_PROTOCOL,
    PAPER_TABLE_METRICS,
    PROTOCOLS,
    Evaluation,
    all_paper_tables,
    metric_value,
    pct,
)

__all__ = ["evaluations", "tables_markdown", "tables_csv"]


def evaluations(records: Sequence[dict[str, Any]]) -> list[Evaluation]:
    """One `Evaluation` per done cell (metrics only)."""
    return [Evaluation(r["key"], r["category"], r["modality"], r["metrics"], None)
            for r in records if r.get("status") == "done"]


def _categories(records: Sequence[dict[str, Any]]) -> list[str]:
    have = {r["category"] for r in records}
    return [c for c in MVTEC_CATEGORIES if c in have] + sorted(have - set(MVTEC_CATEGORIES))


def _ablation(records: Sequence[dict[str, Any]], variants: Sequence[str]) -> str:
    done = [r for r in records if r.get("status") == "done" and r["modality"] == "rgb+xyz"]
    if not variants or not done:
        return ""
    cats = _categories(done)
    out = ["## Ablation: fusion variants (RGB+3D)", ""]
    for key, title in PAPER_TABLE_METRICS:
        lines = [f"### {title} — protocol {PAPER_PROTOCOL}", "",
                 "| Variant | " + " | ".join(cats) + " | Mean |", "|---|" + "---|" * (len(cats) + 1)]
        for v in variants:
            vals = [next((((r.get("variants") or {}).get(v) or {}).get(key)
                          for r in done if r["category"] == c), None) for c in cats]
            mean = None if any(x is None for x in vals) else sum(vals) / len(vals)
            lines.append(f"| {v} | " + " | ".join(pct(x) for x in vals) + f" | {pct(mean)} |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def tables_markdown(records: Sequence[dict[str, Any]], variants: Sequence[str] = ()) -> str:
    text = "# CMDR-IAD grid: paper tables\n\n" + all_paper_tables(evaluations(records))
    abl = _ablation(records, variants)
    return text + ("\n" + abl if abl else "")


def tables_csv(records: Sequence[dict[str, Any]], variants: Sequence[str] = ()) -> str:
    """Long format: protocol, metric, modality, category, variant, value (fraction)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["protocol", "metric", "modality", "category", "variant", "value"])
    for ev in evaluations(records):
        for p in PROTOCOLS:
            for k in METRIC_KEYS:
                v = metric_value(ev, k, p)
                if v is not None:
                    w.writerow([p, k, ev.modality, ev.category, "model", v])
    for r in records:
        if r.get("status") == "done" and r["modality"] == "rgb+xyz":
            for var, m in (r.get("variants") or {}).items():
                if var in variants:
                    for k in METRIC_KEYS:
                        if m.get(k) is not None:
                            w.writerow([PAPER_PROTOCOL, k, r["modality"], r["category"], var, m[k]])
    return buf.getvalue()
