"""The Labels & storage tab in a real browser (Playwright + Debian's chromium): upload a set, measure
two label stores quickly, see the chart and the table. Slow (it trains the digits teacher once)."""
from __future__ import annotations

import pytest
from pages import open_page

pytestmark = pytest.mark.slow
WAIT = 180_000  # ms: the first run trains the digits teacher on a shared CPU


def test_upload_measure_and_see_the_trade_off(app_url, browser, tmp_path):
    from dd_core.data import load_dataset
    from dd_core.synthetic import init_synthetic

    path = tmp_path / "tiny.safetensors"
    init_synthetic(load_dataset("digits"), 1, seed=0).save(path)
    page = open_page(browser, app_url, height=1200)
    page.get_by_role("tab", name="Labels & storage").click()
    page.get_by_label("an uploaded file").check()
    page.locator("#labels-upload input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#labels-upload a, #labels-upload .file-name", timeout=WAIT)
    for label in ("soft:dtype=int8", "dynamic", "dynamic-pruned:keep=0.02", "distance", "teacher"):
        page.locator("#labels-stores").get_by_label(label, exact=True).uncheck()
    box = page.locator("#labels-epochs input")
    box.fill("2")
    box.blur()
    page.click("#labels-btn")
    page.wait_for_function("() => (document.querySelector('#labels-status')?.innerText || '').includes('Done')",
                           timeout=WAIT)
    page.screenshot(path=str(tmp_path / "labels.png"), full_page=True)
    table = page.locator("#labels-table").inner_text()
    assert "soft:topk=1" in table and "Protocol" in table and "2 epochs" in table
    assert page.locator("#labels-plot .plot-container").count() == 1
