"""End to end in a real browser: Playwright driving Debian's chromium against the launched app.

Screenshots are saved under each test's temporary folder. Skips when chromium or playwright is missing.
"""
from __future__ import annotations

import time

import pytest
from pages import WAIT, answered, choose_instant_feature_view, open_page, set_number, status_has


@pytest.fixture(scope="module")
def url(app_url):
    return app_url


def test_distill_watch_stop_then_feature_map(browser, url, tmp_path):
    page = open_page(browser, url)
    choose_instant_feature_view(page)  # no training needed in a test

    set_number(page, "ipc", 2)
    set_number(page, "steps", 3000)
    page.click("#distill-btn")
    page.wait_for_selector("#grid img", timeout=WAIT)
    first = page.get_attribute("#grid img", "src")
    page.wait_for_function("s => document.querySelector('#grid img')?.src !== s", arg=first, timeout=WAIT)
    page.screenshot(path=str(tmp_path / "distilling.png"), full_page=True)
    page.click("#stop-btn", timeout=WAIT)  # the grid redraws every step: on a loaded machine the button settles late
    status_has(page, "status", "Stopped at step")
    page.wait_for_selector("#dl_set", state="visible", timeout=WAIT)
    page.screenshot(path=str(tmp_path / "stopped.png"), full_page=True)

    page.get_by_role("tab", name="Feature space").click()
    status_has(page, "map-status", "Map drawn")
    page.wait_for_selector("#feature-map .js-plotly-plot", timeout=WAIT)
    page.wait_for_timeout(500)
    page.screenshot(path=str(tmp_path / "feature-map.png"), full_page=True)
    points = page.evaluate("() => document.querySelectorAll('#feature-map .scatterlayer .point').length")
    assert points >= 20  # the 20 synthetic images (plus path markers) drawn as SVG points
    assert (tmp_path / "feature-map.png").stat().st_size > 10_000
    assert "Traceback" not in page.content()


def test_bad_input_shows_a_message_and_the_app_keeps_working(browser, url, tmp_path):
    page = open_page(browser, url)
    set_number(page, "ipc", 0)
    page.click("#distill-btn")
    status_has(page, "status", "at least 1")
    set_number(page, "ipc", 1)
    set_number(page, "steps", 10**6)
    page.click("#distill-btn")
    status_has(page, "status", "Steps must be between")

    page.locator("#dataset input").fill("folder")
    page.locator("#dataset input").press("Enter")
    page.wait_for_selector("#folder textarea, #folder input", timeout=WAIT)
    page.locator("#folder textarea, #folder input").first.fill(str(tmp_path / "missing"))
    set_number(page, "steps", 2)
    page.click("#distill-btn")
    status_has(page, "status", "does not exist")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    page.locator("#folder textarea, #folder input").first.fill(str(tmp_path / "empty"))
    page.click("#distill-btn")
    status_has(page, "status", "has no images")

    page.get_by_role("tab", name="Evaluate").click()
    page.get_by_label("an uploaded file").check()
    bogus = tmp_path / "not-a-set.safetensors"
    bogus.write_bytes(b"definitely not a synthetic set")
    answered(page, lambda: page.set_input_files("#eval-upload input[type=file]", str(bogus)))  # the upload
    page.click("#eval-btn")
    status_has(page, "eval-status", "not a readable .safetensors")
    page.screenshot(path=str(tmp_path / "bad-upload.png"), full_page=True)

    page.get_by_role("tab", name="Distill").click()
    page.locator("#dataset input").fill("digits")
    answered(page, lambda: page.locator("#dataset input").press("Enter"))  # it resets steps; then set ours
    page.wait_for_selector("#folder", state="hidden", timeout=WAIT)
    set_number(page, "steps", 2)
    page.click("#distill-btn")
    status_has(page, "status", "Done")
    assert "Traceback" not in page.content()


def test_two_sessions_do_not_see_each_others_runs(browser, url, tmp_path):
    a, b = open_page(browser, url), open_page(browser, url)
    set_number(a, "ipc", 1)
    set_number(a, "steps", 3)
    a.click("#distill-btn")
    status_has(a, "status", "Done")
    assert b.locator("#grid img").count() == 0
    assert "Press Distill" in b.inner_text("#status")
    b.get_by_role("tab", name="Evaluate").click()
    b.click("#eval-btn")
    status_has(b, "eval-status", "no synthetic set yet")
    b.screenshot(path=str(tmp_path / "other-session.png"), full_page=True)

    # Closing a page ends its session: its runs, files and memory are dropped.
    from components.sessions import active_sessions

    before = active_sessions()
    a.context.close()
    deadline = time.monotonic() + 20
    while active_sessions() != before - 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert active_sessions() == before - 1


@pytest.mark.slow  # trains the digits experts on first use (seconds to a minute on a shared CPU)
def test_mtt_shows_the_matching_plot_stop_then_evaluate(browser, url, tmp_path):
    from components import warmup

    warmup.experts()  # what the app warms at start: the digits experts, trained here before the clock starts
    page = open_page(browser, url)
    page.locator("#method input").fill("mtt")
    answered(page, lambda: page.locator("#method input").press("Enter"))  # it resets steps; then set ours
    set_number(page, "ipc", 1)
    set_number(page, "steps", 3000)
    page.click("#distill-btn")
    page.wait_for_selector("#matching .js-plotly-plot", timeout=5 * WAIT)  # appears with the first steps
    page.wait_for_selector("#grid img", timeout=WAIT)
    first = page.get_attribute("#grid img", "src")
    page.wait_for_function("s => document.querySelector('#grid img')?.src !== s", arg=first, timeout=WAIT)
    traces = page.evaluate("() => document.querySelectorAll('#matching .scatterlayer .trace').length")
    assert traces >= 2  # the student's distance and the expert's own step
    page.screenshot(path=str(tmp_path / "mtt-matching.png"), full_page=True)
    page.click("#stop-btn", timeout=WAIT)  # the grid redraws every step: on a loaded machine the button settles late
    status_has(page, "status", "Stopped at step")
    page.get_by_role("tab", name="Evaluate").click()
    page.click("#eval-btn", timeout=5 * WAIT)  # a busy machine can hold the click's follow-up past 30 s
    page.wait_for_function("() => (document.querySelector('#eval-status')?.innerText || '').includes('Done')",
                           timeout=5 * WAIT)
    page.screenshot(path=str(tmp_path / "mtt-evaluated.png"), full_page=True)
    assert "Traceback" not in page.content()


@pytest.mark.slow  # trains a quick digits teacher on first use, then an evaluation with its baselines
def test_rded_shows_its_choice_then_evaluates_against_the_random_baseline(browser, url, tmp_path):
    # a link sets the method and its hyperparameters: the teacher that trains in seconds, 30 candidates
    page = open_page(browser, url + "?dataset=digits&method=rded&ipc=1&steps=20&teacher=convnet_bn_quick&candidates=30")
    page.wait_for_timeout(1000)  # the link's settings land in the controls
    page.click("#distill-btn")
    page.wait_for_selector("#selection img", timeout=10 * WAIT)  # candidates scored, kept ones framed
    page.screenshot(path=str(tmp_path / "rded-selecting.png"), full_page=True)
    status_has(page, "status", "Done")
    page.get_by_role("tab", name="Evaluate").click()
    page.click("#eval-btn")  # default protocol, one network, with the random baseline (same teacher's labels)
    page.wait_for_function("() => (document.querySelector('#eval-status')?.innerText || '').includes('Done')",
                           timeout=10 * WAIT)
    page.screenshot(path=str(tmp_path / "rded-evaluated.png"), full_page=True)
    results = page.inner_text("#eval-results")
    assert "random" in results.lower() and "teacher" in results.lower(), results
    assert "Traceback" not in page.content()
