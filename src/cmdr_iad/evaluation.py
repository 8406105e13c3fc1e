"""Evaluation of a detector on a labelled test set, and the tables written from it.

Metrics follow the reference (`inference.py`), each on its own normalisation of the smoothed
fused map Ψ (at grid resolution, against the GT resized to the grid):
- AUPRO@30/10/5/1 % on Ψ / mean(non-zero Ψ), paper protocol (99 thresholds) and, under
  `exact`, every distinct score a threshold (still on the grid);
- P-AUROC on Ψ / sqrt(mean(Ψ)) over all pixels of all images;
- I-AUROC on the image scores max(Ψ / sqrt(mean(non-zero Ψ))).
All values are fractions in [0, 1]; a metric that is undefined for the data (e.g. no defective
sample) is null, with the reason in `notes`. These top-level values are protocol
:data:`PAPER_PROTOCOL`.

`metrics["protocols"]` names every protocol and holds its values: :data:`PAPER_PROTOCOL` (the
above) and, unless switched off, :data:`OFFICIAL_PROTOCOL`, the official MVTec 3D-AD evaluation:
the maps brought to the ground truth's full resolution (bilinear, the square pad undone, as
`predict` writes them), every distinct score a threshold, AUPRO integrated to 0.3 / 0.1 / 0.05 /
0.01 and divided by the limit (`metrics.au_pro(num_thresholds=None)`), P-AUROC over the
full-resolution pixels; I-AUROC is resolution-free (the image scores).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import EvaluationError, UserInputError
from .memory import PeakMemory

LIMITS = (0.3, 0.1, 0.05, 0.01)
AUPRO_KEYS = ("aupro_30", "aupro_10", "aupro_5", "aupro_1")
METRIC_KEYS = ("i_auroc", "p_auroc", *AUPRO_KEYS)
MVTEC_CATEGORIES = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach",
                    "potato", "rope", "tire")
MODALITY_ROWS = (("rgb", "RGB"), ("xyz", "3D"), ("rgb+xyz", "RGB+3D"))
PAPER_PROTOCOL = "paper-grid-99thr"
"""The paper's code: maps and GT on the G×G grid (224² at the paper preset), AUPRO from 99
thresholds at fixed positions of the sorted normal scores."""
OFFICIAL_PROTOCOL = "mvtec3d-official"
"""The dataset's own evaluation: full GT resolution, exact thresholds."""
PROTOCOLS = {PAPER_PROTOCOL: "maps and GT on the feature grid, 99 thresholds (the paper's code)",
             OFFICIAL_PROTOCOL: "maps at the GT's full resolution, every distinct score a "
                                "threshold (the MVTec 3D-AD evaluation script)"}


@dataclass
class Evaluation:
    """Metrics of one model on one test set, plus what the report needs."""

    name: str
    category: str
    modality: str
    metrics: dict[str, Any]
    curve: tuple[np.ndarray, np.ndarray] | None = None
    examples: list[Any] = field(default_factory=list)  # a few (Result, Sample) pairs for pictures

    def row(self) -> dict[str, Any]:
        m = self.metrics
        return {"model": self.name, "category": self.category, "modality": self.modality,
                **{k: m.get(k) for k in METRIC_KEYS}, "fps": m.get("fps"),
                "peak_memory_mb": m.get("peak_memory_mb"), "n": m.get("n")}


def _safe(fn, notes: list[str], what: str):
    try:
        return fn()
    except EvaluationError as e:
        notes.append(f"{what}: {e}")
        return None


def compute_metrics(maps: np.ndarray, gts: np.ndarray, labels: np.ndarray, scores: np.ndarray
                    ) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """Metrics from Ψ maps (N, G, G), GT masks (N, G, G), labels (N,), image scores (N,)."""
    from .metrics import au_pro, image_auroc, pixel_auroc, pro_curve
    from .model.fusion import aupro_map, pixel_scores

    notes: list[str] = []
    psi = torch.from_numpy(np.asarray(maps, dtype=np.float32))
    pro_maps = aupro_map(psi).numpy()
    pix = pixel_scores(psi).numpy()
    out: dict[str, Any] = {k: None for k in METRIC_KEYS}
    out["i_auroc"] = _safe(lambda: float(image_auroc(labels, scores)), notes, "I-AUROC")
    out["p_auroc"] = _safe(lambda: float(pixel_auroc(pix, gts)), notes, "P-AUROC")
    paper = _safe(lambda: au_pro(pro_maps, gts, LIMITS, num_thresholds=99), notes, "AUPRO")
    exact = _safe(lambda: au_pro(pro_maps, gts, LIMITS, num_thresholds=None), notes, "AUPRO (exact)")
    for i, k in enumerate(AUPRO_KEYS):
        out[k] = None if paper is None else float(paper[i])
    out["exact"] = {k: (None if exact is None else float(exact[i])) for i, k in enumerate(AUPRO_KEYS)}
    curve = None
    if paper is not None:
        c = pro_curve(pro_maps, gts, num_thresholds=99)
        curve = (np.asarray(c.fprs), np.asarray(c.pros))
    out["notes"] = notes
    return out, curve


def full_resolution_maps(r: Any) -> tuple[np.ndarray, np.ndarray]:
    """A `Result` → (AUPRO map, P-AUROC map) at its original resolution, float32 (H, W).

    The normalisations of :func:`compute_metrics` applied to the upsampled Ψ: ``anomaly_map`` is
    Ψ↑ / sqrt(mean_nz Ψ), so Ψ↑ / mean_nz Ψ and Ψ↑ / sqrt(mean Ψ) are rescalings of it (bilinear
    resizing commutes with a per-image factor).
    """
    psi = np.asarray(r.map_grid, dtype=np.float64)
    nz = psi[psi != 0]
    if nz.size == 0:
        raise EvaluationError(f"{r.key}: the anomaly map is all zero")
    m_nz, m_all = float(nz.mean()), float(psi.mean())
    amap = np.asarray(r.anomaly_map, dtype=np.float64)
    return ((amap / np.sqrt(m_nz)).astype(np.float32),
            (amap * np.sqrt(m_nz / m_all)).astype(np.float32))


def official_metrics(pro_maps: Sequence[np.ndarray], pix_maps: Sequence[np.ndarray],
                     gts: Sequence[np.ndarray], labels: np.ndarray, scores: np.ndarray
                     ) -> dict[str, Any]:
    """:data:`OFFICIAL_PROTOCOL` metrics from full-resolution maps (lists of (H_i, W_i)) and GT."""
    from .metrics import au_pro, image_auroc, pixel_auroc

    notes: list[str] = []
    out: dict[str, Any] = {"protocol": OFFICIAL_PROTOCOL}
    out["i_auroc"] = _safe(lambda: float(image_auroc(labels, scores)), notes, "I-AUROC")
    out["p_auroc"] = _safe(lambda: float(pixel_auroc(list(pix_maps), list(gts))), notes, "P-AUROC")
    vals = _safe(lambda: au_pro(list(pro_maps), list(gts), LIMITS, num_thresholds=None), notes, "AUPRO")
    for i, k in enumerate(AUPRO_KEYS):
        out[k] = None if vals is None else float(vals[i])
    out["notes"] = notes
    return out


def _full_gt(sample: Any, shape: tuple[int, int]) -> np.ndarray:
    """The sample's GT mask at its original resolution (all False for a good sample)."""
    gt = getattr(sample, "gt", None)
    if gt is None:
        return np.zeros(shape, dtype=bool)
    g = np.asarray(gt)
    m = (g > 127) if g.dtype == np.uint8 else g.astype(bool)
    if m.shape != tuple(shape):
        raise EvaluationError(f"{getattr(sample, 'key', '?')}: GT mask {m.shape} and image "
                              f"{tuple(shape)} differ in size")
    return m


def evaluate_detector(det: Any, dataset: Sequence[Any], *, name: str = "", category: str = "",
                      batch_size: int | None = None, progress: bool = False,
                      keep_examples: int = 6, official: bool = True, cache: Any = None) -> Evaluation:
    """Run `det` over `dataset` (samples with labels and GT) and compute every metric.

    official: also compute the :data:`OFFICIAL_PROTOCOL` metrics (keeps one full-resolution map
    pair per sample in memory). cache: a feature cache the features come from (see
    `CMDRIAD.predict_many`)."""
    n = len(dataset)
    if n == 0:
        raise UserInputError("the test set is empty")
    maps, gts, labels, scores, branches, examples = [], [], [], [], [], []
    full_pro, full_pix, full_gt = [], [], []
    want = _example_indices(dataset, keep_examples)
    _ = det.extractor  # build the backbones outside the timed loop
    mem = PeakMemory(det.device)
    mem.reset()
    t0 = time.perf_counter()
    for i, r in enumerate(det.predict_many((dataset[j] for j in range(n)), batch_size=batch_size,
                                           progress=progress, total=n, cache=cache)):
        maps.append(r.map_grid)
        g = r.gt_grid if r.gt_grid is not None else np.zeros_like(r.map_grid, dtype=bool)
        gts.append(g)
        labels.append(r.label)
        scores.append(r.score)
        branches.append(r.branch)
        if official:
            a, b = full_resolution_maps(r)
            full_pro.append(a)
            full_pix.append(b)
            full_gt.append(_full_gt(dataset[i], a.shape))
        if i in want:
            examples.append((r, dataset[i]))
    elapsed = time.perf_counter() - t0
    metrics, curve = compute_metrics(np.stack(maps), np.stack(gts), np.asarray(labels),
                                     np.asarray(scores))
    peak, kind = mem.peak_mb(), mem.kind
    fallback = sum(b != det.modality for b in branches)
    metrics.update({
        "n": n, "n_defective": int(np.sum(np.asarray(labels) == 1)),
        "fps": n / elapsed if elapsed > 0 else None, "seconds": elapsed,
        "peak_memory_mb": peak, "peak_memory_kind": kind, "device": str(det.device),
        "precision": getattr(det, "precision", "fp32"), "protocol": PAPER_PROTOCOL,
        "branches_used": {b: branches.count(b) for b in sorted(set(branches))},
    })
    paper = {k: metrics[k] for k in METRIC_KEYS}
    metrics["protocols"] = {PAPER_PROTOCOL: {"protocol": PAPER_PROTOCOL, **paper,
                                             "exact_thresholds_on_grid": dict(metrics["exact"])}}
    if official:
        metrics["protocols"][OFFICIAL_PROTOCOL] = official_metrics(
            full_pro, full_pix, full_gt, np.asarray(labels), np.asarray(scores))
    metrics["protocol_descriptions"] = {k: v for k, v in PROTOCOLS.items()
                                        if k in metrics["protocols"]}
    if fallback:
        metrics["notes"].append(f"{fallback} sample(s) were scored with a single-modality branch "
                                "(missing or empty input)")
    return Evaluation(name or category, category, det.modality, metrics, curve, examples)


def _example_indices(dataset: Sequence[Any], k: int) -> set[int]:
    """Up to k indices: defective samples first (spread out), then good ones."""
    try:
        labels = np.asarray(dataset.labels)  # MVTec3DDataset
    except AttributeError:
        return set(range(min(k, len(dataset))))
    bad = np.flatnonzero(labels == 1)
    good = np.flatnonzero(labels != 1)
    pick = list(bad[np.linspace(0, len(bad) - 1, min(len(bad), k - k // 3)).astype(int)]) if len(bad) else []
    rest = k - len(pick)
    if len(good) and rest > 0:
        pick += list(good[np.linspace(0, len(good) - 1, min(len(good), rest)).astype(int)])
    return {int(i) for i in pick}


# --------------------------------------------------------------------------- tables


def pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}"


def summary(evals: Sequence[Evaluation]) -> dict[str, Any]:
    """Top-level metrics: the single model's, or the mean over the models of the most complete
    modality (RGB+3D if present, else the first modality evaluated)."""
    if len(evals) == 1:
        return {k: v for k, v in evals[0].metrics.items()}
    mods = [e.modality for e in evals]
    mod = "rgb+xyz" if "rgb+xyz" in mods else mods[0]
    sel = [e for e in evals if e.modality == mod]
    out: dict[str, Any] = {"mean_over": f"{len(sel)} {mod} model(s)"}
    for k in METRIC_KEYS:
        vals = [e.metrics.get(k) for e in sel]
        out[k] = None if any(v is None for v in vals) else float(np.mean(vals))
    out["exact"] = {}
    for k in AUPRO_KEYS:
        vals = [(e.metrics.get("exact") or {}).get(k) for e in sel]
        out["exact"][k] = None if any(v is None for v in vals) else float(np.mean(vals))
    out["protocols"] = {}
    for p in PROTOCOLS:
        vals = {k: [metric_value(e, k, p) for e in sel] for k in METRIC_KEYS}
        if all(v is None for vs in vals.values() for v in vs):
            continue
        out["protocols"][p] = {k: None if any(v is None for v in vs) else float(np.mean(vs))
                               for k, vs in vals.items()}
    fps = [e.metrics.get("fps") for e in sel if e.metrics.get("fps")]
    out["fps"] = float(np.mean(fps)) if fps else None
    out["peak_memory_mb"] = max(e.metrics.get("peak_memory_mb") or 0 for e in evals)
    return out


def markdown_table(evals: Sequence[Evaluation]) -> str:
    head = "| model | category | modality | I-AUROC | P-AUROC | AUPRO@30% | AUPRO@10% | AUPRO@5% | AUPRO@1% | FPS |"
    lines = [head, "|" + "---|" * 10]
    for e in evals:
        r = e.row()
        fps = "–" if r["fps"] is None else f"{r['fps']:.2f}"
        lines.append(f"| {r['model']} | {r['category']} | {r['modality']} | "
                     + " | ".join(pct(r[k]) for k in METRIC_KEYS) + f" | {fps} |")
    return "\n".join(lines) + "\n"


def csv_table(evals: Sequence[Evaluation]) -> str:
    buf = io.StringIO()
    fields = ["model", "category", "modality", *METRIC_KEYS, "fps", "peak_memory_mb", "n"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for e in evals:
        w.writerow(e.row())
    return buf.getvalue()


def metric_value(e: Evaluation, key: str, protocol: str) -> Any:
    """Value of ``key`` in ``protocol`` (the top-level value for the paper protocol of an
    evaluation written before `protocols` existed)."""
    prot = (e.metrics.get("protocols") or {}).get(protocol)
    if prot is not None:
        return prot.get(key)
    return e.metrics.get(key) if protocol == PAPER_PROTOCOL else None


PAPER_TABLE_METRICS = (("i_auroc", "I-AUROC (%) — cf. Table 1"),
                       ("aupro_30", "AUPRO@30% (%) — cf. Table 2"),
                       ("aupro_10", "AUPRO@10% (%)"),
                       ("aupro_5", "AUPRO@5% (%)"),
                       ("aupro_1", "AUPRO@1% (%) — cf. Table 3"),
                       ("p_auroc", "P-AUROC (%) — cf. Table 9"))


def paper_tables(evals: Sequence[Evaluation], protocol: str = PAPER_PROTOCOL) -> str:
    """Tables laid out like the paper's Tables 1–3 (and 9): one table per metric (I-AUROC,
    AUPRO at each limit, P-AUROC), rows RGB / 3D / RGB+3D, one column per category plus the
    mean; values in %, from ``protocol`` (named in every table title)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}")
    cats_present = {e.category for e in evals}
    cats = [c for c in MVTEC_CATEGORIES if c in cats_present] + sorted(cats_present - set(MVTEC_CATEGORIES))
    out = []
    for key, title in PAPER_TABLE_METRICS:
        lines = [f"### {title} — protocol {protocol}", "", "| Method | " + " | ".join(cats) + " | Mean |",
                 "|---|" + "---|" * (len(cats) + 1)]
        for mod, label in MODALITY_ROWS:
            by_cat = {e.category: metric_value(e, key, protocol) for e in evals if e.modality == mod}
            if not by_cat:
                continue
            vals = [by_cat.get(c) for c in cats]
            mean = None if any(v is None for v in vals) else float(np.mean(vals))
            lines.append(f"| CMDR-IAD ({label}) | " + " | ".join(pct(v) for v in vals) + f" | {pct(mean)} |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def all_paper_tables(evals: Sequence[Evaluation]) -> str:
    """:func:`paper_tables` for every protocol the evaluations carry (the paper's first)."""
    have = [p for p in PROTOCOLS if p == PAPER_PROTOCOL
            or any(p in (e.metrics.get("protocols") or {}) for e in evals)]
    return "\n".join(f"## Protocol {p}: {PROTOCOLS[p]}\n\n" + paper_tables(evals, p) for p in have)


def pro_curve_svg(evals: Sequence[Evaluation]) -> str | None:
    from .viz import line_plot_svg

    curves = [(f"{e.name} ({pct(e.metrics.get('aupro_30'))}%)", *e.curve) for e in evals
              if e.curve is not None]
    if not curves:
        return None
    return line_plot_svg(curves[:10], title="PRO curve (paper protocol)", xlabel="false-positive rate",
                         ylabel="per-region overlap", xlim=(0.0, 0.3), vlines=(0.01, 0.05, 0.1))


def write_reports(out_dir: str | Path, evals: Sequence[Evaluation], extra: dict[str, Any] | None = None
                  ) -> dict[str, Path]:
    """metrics.json, metrics.csv, metrics.md, paper_tables.md, pro_curve.svg into `out_dir`.

    Files are built in a temporary sibling folder and moved into place together, so a failure
    leaves no partial report.
    """
    from .fileio import write_bytes_atomic

    out = Path(out_dir)
    doc = summary(evals)
    doc["models"] = [{**e.row(), "metrics": e.metrics} for e in evals]
    if extra:
        doc.update(extra)
    files = {
        "metrics.json": json.dumps(doc, indent=2, sort_keys=True, default=float),
        "metrics.csv": csv_table(evals),
        "metrics.md": markdown_table(evals),
        "paper_tables.md": all_paper_tables(evals),
    }
    svg = pro_curve_svg(evals)
    if svg:
        files["pro_curve.svg"] = svg
    written = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        written[name] = write_bytes_atomic(out / name, text.encode())
    return written
