"""Teaching features in a real browser (Playwright driving Debian's chromium), one server for the
module: a lesson link with hide= and autorun=1, Copy link and reopen, Compare, Pause / Step /
Resume with the scrubber, a grid click selecting the image in the feature map (and a map click
showing it large), and the place in line with more visitors than compute slots.

Skips when chromium or playwright is missing. Runs are tiny (digits, IPC 1-2, a few steps).
"""
from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlparse

import pytest
from pages import WAIT, choose_instant_feature_view, open_page, text_has


@pytest.fixture(scope="module")
def url(app_url):
    return app_url


def test_a_lesson_link_hides_what_it_names_notes_bad_values_and_starts_the_run(browser, url, tmp_path):
    page = open_page(browser, url, "?dataset=digits&method=dm&ipc=1&steps=4&from=noise&lr_img=5"
                                   "&hide=dataset,seed,preset,params&autorun=1&colour=red&ipc_bad=2")
    text_has(page, "status", "Done: 4 steps")  # autorun pressed Distill; the link's steps were used
    for hidden in ("dataset", "seed", "preset", "params"):
        assert not page.locator(f"#{hidden}").is_visible(), hidden
    for shown in ("method", "ipc", "steps", "grid"):
        assert page.locator(f"#{shown}").is_visible(), shown
    assert page.locator("#init input[value=noise]").is_checked()
    note = page.inner_text("#url-note")
    assert "colour" in note and "its hyperparameters are" in note
    page.screenshot(path=str(tmp_path / "lesson-link.png"))


def test_copy_link_then_reopen_gives_the_same_settings(browser, url):
    page = open_page(browser, url)
    page.locator("#ipc input").fill("3")
    page.locator("#ipc input").blur()
    page.wait_for_timeout(300)  # the IPC change refreshes the hyperparameters; then set ours
    page.locator("#steps input").fill("7")
    page.locator("#seed input").fill("5")
    page.locator("#seed input").blur()
    page.locator("#init").get_by_label("noise").check()
    page.click("#link-box")
    page.locator("#link-hide").get_by_label("seed", exact=True).check()
    page.click("#copy-link")
    page.wait_for_function("() => (document.querySelector('#link textarea')?.value || '').includes('?')",
                           timeout=WAIT)
    link = page.locator("#link textarea").input_value()
    query = dict(parse_qsl(urlparse(link).query))
    assert query["ipc"] == "3" and query["steps"] == "7" and query["seed"] == "5" and query["from"] == "noise"
    assert query["hide"] == "seed" and page.url == link  # the address bar holds it too

    again = open_page(browser, link)
    again.wait_for_function("() => document.querySelector('#steps input')?.value === '7'", timeout=WAIT)
    assert again.locator("#ipc input").input_value() == "3"
    assert again.locator("#init input[value=noise]").is_checked()
    assert not again.locator("#seed").is_visible()
    assert again.inner_text("#url-note").strip() == ""


def test_compare_two_methods_shows_two_grids_and_one_loss_plot(browser, url):
    page = open_page(browser, url, "?ipc=1&steps=3&compare=random,dm&tab=compare")
    assert page.locator("#cmp-a input").input_value() == "random"
    page.locator("#cmp-eval input").uncheck()  # evaluation is measured in BENCHMARKS.md, not here
    page.click("#compare-btn")
    text_has(page, "cmp-status", "Both runs done")
    assert page.locator("#cmp-grid-a img").count() == 1 and page.locator("#cmp-grid-b img").count() == 1
    names = page.evaluate("() => document.querySelector('#cmp-loss .js-plotly-plot').data.map(t => t.name)")
    assert any(n.startswith("B · dm") for n in names)


def test_pause_step_and_resume_with_the_scrubber_working_while_paused(browser, url, tmp_path):
    page = open_page(browser, url, "?ipc=1&steps=12&from=noise&paused=1&autorun=1")
    text_has(page, "status", "Paused at step 0")
    first = page.get_attribute("#grid img", "src")
    for k in (1, 2):
        page.click("#step-btn")
        text_has(page, "status", f"Paused at step {k} ")
    assert page.get_attribute("#grid img", "src") != first  # a step redraws the grid
    assert re.search(r"step \*?\*?2", page.inner_text("#stats").replace("*", ""))
    page.wait_for_selector("#scrub", state="visible", timeout=WAIT)
    stepped = page.get_attribute("#grid img", "src")
    page.locator("#scrub input[type=range]").fill("0")  # scrub back while the run is held
    page.wait_for_function("s => document.querySelector('#grid img')?.src !== s", arg=stepped, timeout=WAIT)
    assert "Paused at step 2" in page.inner_text("#status")  # scrubbing did not move the run
    page.screenshot(path=str(tmp_path / "paused.png"))
    page.click("#resume-btn")
    text_has(page, "status", "Done: 12 steps")


def test_a_grid_click_selects_the_image_in_the_feature_map_and_a_map_click_shows_it(browser, url):
    page = open_page(browser, url)
    choose_instant_feature_view(page)  # chosen before there is a set: nothing trains
    page.locator("#ipc input").fill("2")
    page.locator("#steps input").fill("3")
    page.locator("#steps input").blur()
    page.click("#distill-btn")
    text_has(page, "status", "Done")
    # Where synthetic image #1 (class 0, second column) is drawn: the grid's own geometry, scaled
    # to the size the page shows it at.
    page.wait_for_function("() => document.querySelector('#grid img')?.naturalWidth > 0", timeout=WAIT)
    natural = page.evaluate("() => [document.querySelector('#grid img').naturalWidth, "
                            "document.querySelector('#grid img').naturalHeight]")
    scale = natural[1] // (10 * 9 + 1)  # ten classes of 8 px images with 1 px gaps
    cell_x = natural[0] - scale * (1 + 8 // 2)  # the middle of the last column (right padding 1)
    cell_y = scale * (1 + 8 // 2)  # the middle of the first row
    img = page.locator("#grid img")
    box = img.bounding_box()
    img.click(position={"x": cell_x * box["width"] / natural[0], "y": cell_y * box["height"] / natural[1]})
    text_has(page, "map-status", "image #1 selected")
    assert page.get_by_role("tab", name="Feature space").get_attribute("aria-selected") == "true"
    page.wait_for_function("() => (document.querySelector('#feature-map .js-plotly-plot')?.data || [])"
                           ".some(t => t.name === 'selected #1')", timeout=WAIT)
    names = page.evaluate("() => document.querySelector('#feature-map .js-plotly-plot').data.map(t => t.name)")
    assert "selected #1" in names and "path of #1" in names
    page.wait_for_selector("#nearest-pair img", timeout=WAIT)

    # A real mouse click on synthetic image #2 (class 1's first marker) shows it large.
    xy = page.evaluate("""() => {
        const plot = document.querySelector('#feature-map .js-plotly-plot');
        const t = plot._fullData.find(d => d.name === '1');  // decoded (numpy arrays arrive binary-encoded)
        const x = plot._fullLayout.xaxis, y = plot._fullLayout.yaxis, r = plot.getBoundingClientRect();
        return [r.left + x._offset + x.l2p(t.x[0]), r.top + y._offset + y.l2p(t.y[0])];
    }""")
    page.wait_for_timeout(800)  # the click hook attaches to a new figure within 0.7 s
    page.mouse.move(*xy)
    page.mouse.click(*xy)
    text_has(page, "map-status", "Synthetic image #2")


def test_a_waiting_visitor_sees_the_place_in_line_large(browser, url, tmp_path):
    from components import runtime

    pages = [open_page(browser, url, "?ipc=1&steps=3000") for _ in range(runtime.POOL + 1)]
    try:
        for page in pages[:-1]:  # every slot busy with a long run
            page.click("#distill-btn")
            text_has(page, "status", "Distilling|Warming")
        pages[-1].click("#distill-btn")
        pages[-1].wait_for_selector(".queue-banner", timeout=WAIT)
        banner = pages[-1].locator(".queue-banner")
        assert "ahead of yours" in banner.inner_text()
        assert banner.bounding_box()["height"] >= 30  # large, not clipped to a thin status line
        pages[-1].screenshot(path=str(tmp_path / "queue.png"))
    finally:
        for page in pages:
            page.click("#stop-btn")
        for page in pages[:-1]:
            text_has(page, "status", "Stopped")
