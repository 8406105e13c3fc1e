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


def markdown_tables_html(md: str) -> str:
    """Pipe tables and `#` headings of a Markdown text (as `evaluation.paper_tables` writes) → HTML.

    Header row = the first row of each table; the `|---|` separator line is dropped; other
    non-empty lines become paragraphs. Every cell is HTML-escaped.
    """
    out: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if rows:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                           for r in rows[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
            rows.clear()

    for line in md.splitlines():
        t = line.strip()
        if t.startswith("|"):
            cells = [c.strip() for c in t.strip("|").split("|")]
            if not all(set(c) <= set("-: ") and c for c in cells):
                rows.append(cells)
            continue
        flush()
        if t.startswith("#"):
            level = min(6, len(t) - len(t.lstrip("#")))
            out.append(f"<h{level}>{html.escape(t.lstrip('#').strip())}</h{level}>")
        elif t:
            out.append(f"<p>{html.escape(t)}</p>")
    flush()
    return "\n".join(out)


_CURVES = (("map3d", "map2Dto3D"), ("map2d", "map3Dto2D"), ("rec2d", "Dec2D"), ("rec3d", "Dec3D"))


def train_log_html(name: str, rows: Sequence[dict[str, Any]]) -> str:
    """Training curves of one model from its `train_log.csv` rows (`training.read_train_log`):
    per-epoch training loss and held-out normal loss of every head (SVG), plus epoch times and
    skipped samples as a table. Empty string when there are no rows."""
    if not rows:
        return ""
    epochs = np.asarray([float(r["epoch"]) for r in rows])
    curves = []
    for short, head in _CURVES:
        for kind, label in (("loss", "train"), ("heldout", "held-out")):
            pts = [(e, r.get(f"{kind}_{short}")) for e, r in zip(epochs, rows, strict=True)]
            pts = [(e, y) for e, y in pts if y is not None]  # epoch 0 has held-out values only
            if pts:
                xs, ys = zip(*pts, strict=True)
                curves.append((f"{head} {label}", np.asarray(xs), np.asarray(ys, dtype=np.float64)))
    parts = [f"<h3>{html.escape(name)}</h3>"]
    if curves:
        ymax = max(float(np.nanmax(c[2])) for c in curves)
        hi = ymax * 1.05 if np.isfinite(ymax) and ymax > 0 else 1.0
        lo_x, hi_x = float(epochs.min()), float(epochs.max())
        if hi_x <= lo_x:
            lo_x, hi_x = lo_x - 0.5, hi_x + 0.5
        parts.append(viz.line_plot_svg(curves, title="loss per epoch (1 − cos)", xlabel="epoch",
                                       ylabel="loss", xlim=(lo_x, hi_x), ylim=(0.0, hi)))
    total = sum(float(r.get("seconds") or 0.0) for r in rows)
    skipped = int(rows[-1].get("skipped_samples") or 0)
    trained = [r for r in rows if float(r["epoch"]) > 0]
    per = total / len(trained) if trained else 0.0
    parts.append(f"<p>{len(trained)} epochs, {total:.1f} s in all ({per:.2f} s per epoch); "
                 f"{skipped} training sample(s) without a valid 3D point skipped.</p>")
    return "".join(parts)


def build_html(title: str, evals: Sequence[Evaluation], *, examples: Sequence[tuple[Any, Any, tuple]] = (),
               notices: Sequence[str] = (), paper_tables_md: str = "", extra_html: str = "",
               train_logs: Sequence[tuple[str, Sequence[dict[str, Any]]]] = ()) -> str:
    """The report as a string. `examples`: (Result, Sample, (lo, hi) heatmap range) triples;
    `train_logs`: (model name, `train_log.csv` rows) pairs, plotted as training curves."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for n in notices:
        out.append(f'<p class="notice">⚠ {html.escape(n)}</p>')
    out.append("<h2>Metrics</h2>" + _metric_table(evals))
    out.append("<p>Fractions shown in %. AUPRO in the paper's 99-threshold protocol; I-AUROC on "
               "image scores max(Ψ/√mean≠0 Ψ); P-AUROC on Ψ/√mean Ψ (as the reference code).</p>")
    if paper_tables_md:
        out.append("<h2>Paper-style tables</h2>" + markdown_tables_html(paper_tables_md))
    curves = "".join(train_log_html(n, rows) for n, rows in train_logs)
    if curves:
        out.append("<h2>Training curves</h2>" + curves)
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
