"""The README's Python API works as written: its snippet runs on generated data.

The snippet is read from README.md (section "Python API") and run with three substitutions,
each of which must apply (so a README edit that drops one fails here): the tiny preset instead of
the paper preset, random backbones (no pretrained weights offline), and the generated category
"puck" instead of "bagel". The names of the "usable on their own" line are imported as well.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

SUBSTITUTIONS = [
    ('CMDRIAD(presets.paper("rgb+xyz"))',
     'CMDRIAD(presets.tiny("rgb+xyz").replace(train={"epochs": 1}), random_backbones=True, device="cpu")'),
    ('"bagel"', '"puck"'),
]


def readme_snippet() -> str:
    text = README.read_text()
    section = text.split("## Python API", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README: no python block in the Python API section"
    return m.group(1)


def test_readme_python_api_snippet_runs(synth_root, tmp_path, monkeypatch):
    code = readme_snippet()
    for old, new in SUBSTITUTIONS:
        assert old in code, f"README snippet no longer contains {old!r}"
        code = code.replace(old, new)
    shutil.copytree(synth_root, tmp_path / "mvtec3d")
    good = tmp_path / "mvtec3d" / "puck" / "test" / "good"
    shutil.copy(good / "rgb" / "000.png", tmp_path / "s.png")
    shutil.copy(good / "xyz" / "000.tiff", tmp_path / "s.tiff")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)  # noqa: S102 - our own README
    res, metrics, det = ns["res"], ns["metrics"], ns["det"]
    assert res.anomaly_map.shape == (64, 64) and res.is_anomalous in (True, False)
    assert 0.0 <= metrics["i_auroc"] <= 1.0 and 0.0 <= metrics["p_auroc"] <= 1.0
    assert (tmp_path / "runs" / "bagel" / "model.json").is_file()  # det.save in the snippet
    assert det.thresholds  # the loaded model carries its calibrated thresholds


def test_readme_pieces_import():
    section = README.read_text().split("## Python API", 1)[1].split("##", 1)[0]
    line = section[section.index("The pieces are usable on their own"):]
    for mod, names in re.findall(r"`cmdr_iad\.(\w+)` \(([^)]*)\)", line):
        module = __import__(f"cmdr_iad.{mod}", fromlist=["_"])
        for name in re.findall(r"`([\w.]+)`", names):
            obj = module
            for part in name.split("."):
                obj = getattr(obj, part)
            assert obj is not None, f"cmdr_iad.{mod}.{name}"
    from cmdr_iad.features import FeatureCache, FeatureExtractor  # noqa: F401
    from cmdr_iad.model import CrossModalMLP, Decoder2D, Decoder3D  # noqa: F401

