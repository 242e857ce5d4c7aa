"""How fast the app feels, measured in a real browser (Playwright + Debian's chromium):

1. start: `python app.py` until the server answers and until the page is usable (Distill button shown);
2. first grid: from the click on Distill (digits, DM, IPC 10) to the first synthetic grid on screen,
   right after the page loaded (cold) and once more (warm);
3. streaming cost: steps per second of the same run streamed to the browser, through the handler
   without a server, and headless (run_to_end), alternated `--repeats` times so that load from
   other programs hits all three alike.

    python -m benchmarks.app_latency [--steps 60] [--repeats 3]
    python -m benchmarks.app_latency --start-only --repeats 3   # start only, against bare imports
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .procs import free_port

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def launch(warmup: bool) -> tuple[subprocess.Popen, str, float]:
    """Start `python app.py`; return it, its URL and the seconds until it answered HTTP."""
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", DISTILLERY_WARMUP="1" if warmup else "0")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return proc, url, time.perf_counter() - t0
        except OSError:
            if proc.poll() is not None or time.perf_counter() - t0 > 120:
                raise RuntimeError("the app did not start") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)  # the app and its UMAP worker, which share its session
    proc.wait(timeout=30)


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.blur()


def click_to_grid(page) -> float:
    """Seconds from the click on Distill until a new grid image is on screen."""
    old = page.get_attribute("#grid img", "src") if page.locator("#grid img").count() else None
    t0 = time.perf_counter()
    page.click("#distill-btn")
    page.wait_for_function("old => { const i = document.querySelector('#grid img');"
                           " return i && i.complete && i.naturalWidth > 0 && i.src !== old; }",
                           arg=old, timeout=60_000, polling="raf")
    return time.perf_counter() - t0


def wait_done(page) -> float:
    """Wait for the run to end; its steps per second from the app's "Done: N steps in T s"."""
    page.wait_for_function("() => /Done: \\d+ steps/.test(document.querySelector('#status')?.innerText || '')",
                           timeout=600_000)
    steps, seconds = re.search(r"Done: (\d+) steps in ([\d.]+) s", page.inner_text("#status")).groups()
    return int(steps) / float(seconds)


def headless_rate(steps: int) -> float:
    from dd_core import load_dataset, make_method
    from dd_core.distill import run_to_end

    digits = load_dataset("digits")
    snap = run_to_end(digits, make_method("dm", dataset="digits", ipc=10), method_name="dm", ipc=10, steps=steps,
                      seed=0, snapshot_every=10**9)
    return snap.steps_per_second


def handler_rate(steps: int) -> tuple[float, float]:
    """The Distill tab's own generator, called as a function: our per-update work without a server.
    Returns its steps per second and the share of the run's time spent outside the engine (grids,
    plots, saving), which load on the machine affects much less than a rate does."""
    from components import distill_run, distill_tab
    from components.sessions import drop_session, session_for

    engine = distill_run.distill
    inside = [0.0]

    def timed(*a, **kw):  # the engine's generator, with the time spent inside it added up
        gen = engine(*a, **kw)
        while True:
            t0 = time.perf_counter()
            try:
                snap = next(gen)
            except StopIteration:
                return
            finally:
                inside[0] += time.perf_counter() - t0
            yield snap

    distill_run.distill = timed
    session = session_for(None)
    try:
        t0 = time.perf_counter()
        for _ in distill_tab.ui_updates(session, distill_run.check_request("digits", "", "dm", 10, steps, 0)):
            pass
        total = time.perf_counter() - t0
    finally:
        distill_run.distill = engine
    rate = session.run.history[-1]["step"] / session.run.elapsed
    drop_session(None)
    return rate, 1 - inside[0] / total


def bare_imports_s() -> float:
    """Seconds from starting a fresh Python to its having imported torch and gradio (its exit, which
    can take seconds more, is not counted): the floor under any start of the app."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "import torch, gradio; print('ok', flush=True)"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    proc.stdout.readline()
    seconds = time.perf_counter() - t0
    proc.wait()
    return seconds


def start_only(repeats: int) -> dict:
    """App start to a usable page, `repeats` times, each beside a bare-import baseline run just before it."""
    from playwright.sync_api import sync_playwright

    usable, http, bare = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
        for _ in range(repeats):
            bare.append(bare_imports_s())
            proc, url, seconds = launch(warmup=True)
            t0 = time.perf_counter()
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#distill-btn", timeout=60_000)
            usable.append(seconds + time.perf_counter() - t0)
            http.append(seconds)
            page.close()
            stop(proc)
        browser.close()
    med = statistics.median
    return {"start_http_s": http, "start_page_usable_s": usable, "bare_import_torch_gradio_s": bare,
            "median_usable_s": round(med(usable), 2), "median_bare_s": round(med(bare), 2),
            "usable_over_bare": round(med(usable) / med(bare), 2), "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--start-only", action="store_true",
                        help="only time app start to a usable page, against bare `import torch, gradio`")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.start_only:
        print(json.dumps(start_only(args.repeats), indent=1))
        return
    from playwright.sync_api import sync_playwright

    from components import runtime

    runtime.configure()  # the same torch threads as the app uses
    out: dict = {"cores": runtime.CORES, "torch_threads": runtime.THREADS, "steps": args.steps}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
        proc, url, out["start_http_s"] = launch(warmup=True)
        t0 = time.perf_counter()
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#distill-btn", timeout=60_000)
        out["start_page_usable_s"] = out["start_http_s"] + time.perf_counter() - t0
        set_number(page, "steps", 20)
        out["first_grid_cold_s"] = click_to_grid(page)
        wait_done(page)
        out["first_grid_warm_s"] = click_to_grid(page)
        wait_done(page)
        page.close()
        stop(proc)

        proc, url, _ = launch(warmup=False)  # no background warm-up competing with the timed runs
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#distill-btn", timeout=60_000)
        set_number(page, "steps", args.steps)
        browser_rates, handler_rates, headless_rates, outside = [], [], [], []
        headless_rate(3)  # first-use imports, outside the timing
        for _ in range(args.repeats):
            click_to_grid(page)
            browser_rates.append(wait_done(page))
            rate, share = handler_rate(args.steps)
            handler_rates.append(rate)
            outside.append(round(100 * share, 1))
            headless_rates.append(headless_rate(args.steps))
        stop(proc)
        browser.close()
    med = statistics.median
    out.update(browser_steps_per_s=browser_rates, handler_steps_per_s=handler_rates,
               headless_steps_per_s=headless_rates, handler_time_outside_engine_pct=outside,
               browser_slowdown_pct=round(100 * (1 - med(browser_rates) / med(headless_rates)), 1),
               handler_slowdown_pct=round(100 * (1 - med(handler_rates) / med(headless_rates)), 1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
