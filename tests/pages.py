"""What the browser tests do to a page, written once: open the app, type a number, wait for a text.

Imported by the `*_browser.py` modules (pytest puts this folder on the import path). The fixtures
that launch the app and chromium are in conftest.py.
"""
from __future__ import annotations

import re

WAIT = 120_000  # ms; generous: the machine may be shared, and a first run may train a network


def open_page(browser, url: str, query: str = "", height: int = 1000):
    """A fresh browser context (its own Gradio session) on the app, once the Distill button is there."""
    page = browser.new_context(viewport={"width": 1400, "height": height}).new_page()
    page.goto(url + query)
    page.wait_for_selector("#distill-btn", timeout=WAIT)
    return page


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.blur()


def answered(page, action) -> None:
    """Do `action` (a change the page sends to the server, such as picking a method) and wait until
    every call it made has been answered. A method or dataset change resets the steps when its
    answer arrives; on a loaded machine that can be seconds later, after a value the test typed."""
    def is_call(request):
        return request.method == "POST" and "/gradio_api/" in request.url

    pending = set()

    def track(request):
        if is_call(request):
            pending.add(request)

    def untrack(request):
        pending.discard(request)

    page.on("request", track)
    page.on("requestfinished", untrack)
    page.on("requestfailed", untrack)
    try:
        with page.expect_request(is_call, timeout=WAIT):
            action()
        for _ in range(WAIT // 50):
            if not pending:
                break
            page.wait_for_timeout(50)
        assert not pending, f"the page's calls {[r.url for r in pending]} were not answered in {WAIT // 1000} s"
        page.wait_for_timeout(100)  # the answer's values land in the controls
    finally:
        page.remove_listener("request", track)
        page.remove_listener("requestfinished", untrack)
        page.remove_listener("requestfailed", untrack)


def text_has(page, elem_id: str, pattern: str, *, literal: bool = False, timeout: int = WAIT) -> None:
    """Wait until the element's text matches `pattern` (a regular expression, or plain text with
    `literal`); on a timeout, fail with what the page's status lines said instead."""
    regex = re.escape(pattern) if literal else pattern
    try:
        page.wait_for_function("([id, p]) => new RegExp(p).test(document.querySelector('#' + id)?.innerText || '')",
                               arg=[elem_id, regex], timeout=timeout)
    except Exception:
        seen = page.evaluate("() => ['status', 'map-status', 'cmp-status', 'eval-status']"
                             ".map(i => document.querySelector('#' + i)?.innerText)")
        raise AssertionError(f"#{elem_id} never matched {pattern!r}; the page's status lines say {seen}") from None


def status_has(page, elem_id: str, text: str, *, timeout: int = WAIT) -> None:
    """Wait until the element's text contains `text` as written."""
    text_has(page, elem_id, text, literal=True, timeout=timeout)


def choose_instant_feature_view(page) -> None:
    """In the Feature space tab, before there is a set, pick the view that trains nothing (a random
    network, as DM sees the data, projected by PCA), then go back to the Distill tab."""
    page.get_by_role("tab", name="Feature space").click()
    status_has(page, "map-status", "No synthetic set")
    page.get_by_label("random, as DM sees it").check()
    page.get_by_label("PCA", exact=True).check()
    page.get_by_role("tab", name="Distill").click()
