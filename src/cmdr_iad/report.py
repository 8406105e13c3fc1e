"""A single self-contained HTML report: metrics tables, PRO curve, heatmap examples.

Images are embedded as base64 PNG and the PRO curve as inline SVG, so the file can be mailed
or archived on its own.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import viz
from .evaluation import METRIC_KEYS, Evaluation, pro_curve_svg
from .fileio import write_text_atomic

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.notice{background:#fff3cd;border:2px solid #d39e00;padding:1em;font-weight:bold;font-size:1.1em}
.ex{display:inline-block;margin:6px;vertical-align:top;font-size:12px;text-align:center}
.ex img{width:180px;height:auto;image-rendering:pixelated;display:block;margin-bottom:2px}
code{background:#f3f3f3;padding:1px 4px}
"""


def _img(a: np.ndarray, alt: str) -> str:
    data = base64.b64encode(viz.png_bytes(a)).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _metric_table(evals: Sequence[Evaluation]) -> str:
    names = {"i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "aupro_30": "AUPRO@30%",
             "aupro_10": "AUPRO@10%", "aupro_5": "AUPRO@5%", "aupro_1": "AUPRO@1%"}
    rows = ["<tr><th>model</th><th>category</th><th>modality</th>"
            + "".join(f"<th>{names[k]}</th>" for k in METRIC_KEYS) + "<th>FPS</th><th>n</th></tr>"]
    for e in evals:
        m = e.metrics
        cells = "".join("<td>–</td>" if m.get(k) is None else f"<td>{100 * m[k]:.1f}</td>" for k in METRIC_KEYS)
        fps = "–" if not m.get("fps") else f"{m['fps']:.2f}"
        rows.append(f"<tr><td>{html.escape(e.name)}</td><td>{html.escape(e.category)}</td>"
                    f"<td>{e.modality}</td>{cells}<td>{fps}</td><td>{m.get('n')}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _example(res: Any, sample: Any, rng: tuple[float | None, float | None]) -> str:
    lo, hi = rng
    parts = []
    if sample is not None and sample.rgb is not None:
        parts.append(_img(sample.rgb, "RGB"))
    elif sample is not None and sample.xyz is not None:
        parts.append(_img(viz.depth_image(sample.xyz), "depth"))
    if sample is not None and sample.gt is not None:
        g = (np.asarray(sample.gt, dtype=bool) * 255).astype(np.uint8)
        parts.append(_img(np.stack([g, g, g], -1), "ground truth"))
    base = sample.rgb if sample is not None and sample.rgb is not None else (
        viz.depth_image(sample.xyz) if sample is not None and sample.xyz is not None else None)
    parts.append(_img(viz.overlay(base, res.anomaly_map, lo, hi), "anomaly overlay"))
    verdict = "–" if res.is_anomalous is None else ("ANOMALOUS" if res.is_anomalous else "normal")
    label = {0: "good", 1: "defective"}.get(res.label, "?")
    return (f'<div class="ex">{"".join(parts)}{html.escape(res.key)}<br>label: {label} · '
            f"score {res.score:.3f} → {verdict}</div>")


def build_html(title: str, evals: Sequence[Evaluation], *, examples: Sequence[tuple[Any, Any, tuple]] = (),
               notices: Sequence[str] = (), paper_tables_md: str = "", extra_html: str = "") -> str:
    """The report as a string. `examples`: (Result, Sample, (lo, hi) heatmap range) triples."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for n in notices:
        out.append(f'<p class="notice">⚠ {html.escape(n)}</p>')
    out.append("<h2>Metrics</h2>" + _metric_table(evals))
    out.append("<p>Fractions shown in %. AUPRO in the paper's 99-threshold protocol; I-AUROC on "
               "image scores max(Ψ/√mean≠0 Ψ); P-AUROC on Ψ/√mean Ψ (as the reference code).</p>")
    if paper_tables_md:
        out.append("<h2>Paper-style tables</h2><pre>" + html.escape(paper_tables_md) + "</pre>")
    svg = pro_curve_svg(evals)
    if svg:
        out.append("<h2>PRO curve</h2>" + svg)
    if examples:
        out.append("<h2>Examples</h2><p>Per sample: input, ground truth, anomaly map over the input "
                   "(colour scale from the typical normal level to the decision threshold).</p>")
        out.extend(_example(r, s, rng) for r, s, rng in examples)
    out.append(extra_html)
    out.append("</body></html>")
    return "\n".join(out)


def write_html(path: str | Path, text: str) -> Path:
    return write_text_atomic(path, text)
