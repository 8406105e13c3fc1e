"""The operator page in a real browser: headless Chromium (Debian's `chromium`, driven by
playwright through `executable_path`) loads the page served by `cmdr-iad serve`, uploads a
generated sample and waits for the score and the decision, which must equal the API's answer.
A screenshot is kept as a test artefact (build/test-artifacts/operator-page.png)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CMDR_IAD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def test_operator_page_scores_an_upload_like_the_api(server, sample_files):
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium not found at {CHROMIUM}: .ci/run installs it (apt-get install chromium)")
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.goto(server.url + "/")
            page.wait_for_selector("#random-warning:not([hidden])", timeout=30000)
            assert "RANDOM BACKBONES" in page.inner_text("#random-warning")
            page.set_input_files("#rgb", str(sample_files["rgb_bad"]))
            page.set_input_files("#xyz", str(sample_files["xyz_bad"]))
            page.click("#inspect")
            page.wait_for_function("document.getElementById('decision').dataset.decision", timeout=120000)
            page.wait_for_function("document.getElementById('overlay').complete && "
                                   "document.getElementById('overlay').naturalWidth > 0", timeout=30000)
            page.wait_for_timeout(500)  # the point cloud view is drawn after its fetch
            page.screenshot(path=str(ARTIFACTS / "operator-page.png"), full_page=True)
            decision = page.get_attribute("#decision", "data-decision")
            score_text = page.inner_text("#score")
            history = page.inner_text("#history")
        finally:
            browser.close()
    with urllib.request.urlopen(server.url + "/v1/results?n=1") as r:
        last = json.loads(r.read())[0]
    want = "none" if last["is_anomalous"] is None else ("anomalous" if last["is_anomalous"] else "normal")
    assert decision == want
    assert float(score_text) == pytest.approx(last["score"], rel=1e-3)  # shown with 4 digits
    assert last["id"][:8] in history
    assert (ARTIFACTS / "operator-page.png").stat().st_size > 10000
