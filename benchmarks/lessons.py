"""Time each lesson from opening its link to the moment it shows what it teaches, and screenshot
that moment (assets/screenshots/<lesson>.png). Launches the app in this process on a free port and
drives Debian's chromium with Playwright, as the browser tests do.

    python -m benchmarks.lessons [--lessons a b] [--out benchmarks/results/lessons.jsonl] [--shots DIR]

Each lesson's striking moment is a condition on the page (below). One JSON line per lesson: the
seconds, whether the moment came before the timeout, the machine's load average at the start.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DISTILLERY_WARMUP", "0")
ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
# A lesson is striking when this page condition holds (JavaScript returning true), then `scroll`
# is brought into view for the screenshot.
STRIKING = {
    "digits-from-noise": ("() => +((document.querySelector('#stats')?.innerText || '').match(/step (\\d+)/) || [0, 0])[1]"
                          " >= 200", "#grid"),
    "random-vs-dm": ("() => /✓ Done/.test(document.querySelector('#cmp-status')?.innerText || '')", "#cmp-acc"),
    "feature-map": ("() => /Map drawn/.test(document.querySelector('#map-status')?.innerText || '')", "#feature-map"),
    "ten-against-all": ("() => /Done/.test(document.querySelector('#eval-status')?.innerText || '')",
                        "#eval-results"),
    "labels-cost-bytes": ("() => /✓/.test(document.querySelector('#labels-status')?.innerText || '')", "#labels-plot"),
    "one-step-at-a-time": ("() => /Paused at step 3 /.test(document.querySelector('#status')?.innerText || '')",
                           "#grid"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_lesson(browser, url: str, name: str, query: str, shots: Path, timeout_s: float) -> dict:
    condition, target = STRIKING[name]
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    page.goto(f"{url}?{query}")
    page.wait_for_selector("#distill-btn", timeout=60_000)
    if name == "one-step-at-a-time":  # the teacher presses Step three times once it is paused
        page.wait_for_function("() => /Paused at step 0/.test(document.querySelector('#status')?.innerText || '')",
                               timeout=timeout_s * 1000)
        for k in (1, 2, 3):
            page.click("#step-btn")
            page.wait_for_function(f"() => /Paused at step {k} /.test(document.querySelector('#status')?.innerText"
                                   f" || '')", timeout=timeout_s * 1000)
    reached = True
    try:
        page.wait_for_function(condition, timeout=timeout_s * 1000, polling=250)
    except Exception:  # noqa: BLE001 - recorded as not reached
        reached = False
    seconds = time.perf_counter() - t0
    page.wait_for_timeout(1200)  # let the last plot finish drawing
    page.locator(target).scroll_into_view_if_needed()
    shot = shots / f"{name}.png"
    page.screenshot(path=str(shot))
    _shrink(shot)
    page.context.close()
    return {"lesson": name, "seconds": round(seconds, 1), "reached": reached, "load_average_1min": round(load, 2),
            "cores": os.cpu_count(), "screenshot": str(shot.relative_to(ROOT)) if shot.is_relative_to(ROOT) else str(shot)}


def _shrink(path: Path, width: int = 1000) -> None:
    """Small PNGs for the repository: 1000 px wide, 256 colours (fewer muddle the class colours)."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(colors=256).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lessons", nargs="*", default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lessons.jsonl"))
    parser.add_argument("--shots", default=str(ROOT / "assets" / "screenshots"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a lesson's moment")
    args = parser.parse_args()

    import torch
    from playwright.sync_api import sync_playwright

    import app
    from components import lessons

    torch.set_num_threads(1)
    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    chosen = [lesson for lesson in lessons.ordered() if args.lessons is None or lesson.name in args.lessons]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            for lesson in chosen:
                row = run_lesson(browser, url, lesson.name, lesson.query(), shots, args.timeout)
                print(json.dumps(row), flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
            browser.close()
    finally:
        app.demo.close()


if __name__ == "__main__":
    main()
