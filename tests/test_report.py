"""`cmdr_iad.report`: paper-style tables as HTML tables, training curves from train_log rows."""

from __future__ import annotations

from cmdr_iad.report import build_html, markdown_tables_html, train_log_html

MD = """### I-AUROC (%) — cf. Table 1

| Method | puck | Mean |
|---|---|---|
| CMDR-IAD (3D) | 91.2 | 91.2 |
| <b>x</b> | – | – |
"""


def test_markdown_tables_become_html_tables():
    out = markdown_tables_html(MD)
    assert "<h3>I-AUROC (%) — cf. Table 1</h3>" in out
    assert "<th>Method</th><th>puck</th><th>Mean</th>" in out
    assert "<td>CMDR-IAD (3D)</td><td>91.2</td>" in out
    assert "|" not in out and "---" not in out
    assert "&lt;b&gt;x&lt;/b&gt;" in out  # cells are escaped


def _rows(n=3, heldout=True):
    return [{"epoch": float(e), "seconds": 0.5, "samples": 4.0, "skipped_samples": 1.0,
             "skipped_steps": 0.0, "loss_rec3d": 1.0 / e, "loss_map3d": None,
             "heldout_rec3d": (1.2 / e) if heldout else None} for e in range(1, n + 1)]


def test_train_log_section_plots_every_curve():
    out = train_log_html("model-a", _rows())
    assert out.startswith("<h3>model-a</h3>") and "<svg" in out
    assert "Dec3D train" in out and "Dec3D held-out" in out and "map2Dto3D" not in out
    assert "3 epochs" in out and "1 training sample(s)" in out
    assert train_log_html("x", []) == ""


def test_report_has_html_tables_and_curves():
    page = build_html("t", [], paper_tables_md=MD, train_logs=[("m", _rows(1, heldout=False))])
    assert "<h2>Paper-style tables</h2><h3>" in page and "<pre>" not in page
    assert "<h2>Training curves</h2>" in page and "Dec3D train" in page
    assert "<h2>Training curves</h2>" not in build_html("t", [], paper_tables_md=MD)
