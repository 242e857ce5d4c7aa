"""Time each lesson from opening its link to the moment it shows what it teaches, and screenshot
that moment (assets/screenshots/<lesson>.png). Launches the app in this process on a free port and
drives Debian's chromium with Playwright, as the browser tests do.

    python -m benchmarks.lessons [--lessons a b] [--out benchmarks/results/lessons.jsonl] [--shots DIR]
                                 [--warmup] [--fresh-cache] [--look DIR] [--no-shots] [--no-yardstick]

Each lesson's striking moment is a condition on the page (below). One JSON line per lesson: the
seconds, whether the moment came before the timeout, the machine's load average at the start, the
app's CPU seconds (server and UMAP worker) and a timeline of its status lines; a line at the start
(the app's start, its warm-ups with --warmup, a fixed yardstick) and one at the end (the yardstick
again), so that seconds taken on a busy machine can be read against its speed at the time.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

from .procs import free_port

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


# The status lines whose changes make a lesson's timeline (where its seconds go).
STATUSES = ("status", "cmp-status", "map-status", "eval-status", "labels-status")
WATCH_JS = """(cond) => { const out = {}; for (const id of %s) {
  const t = document.getElementById(id)?.innerText; if (t) out[id] = t.replace(/\\s+/g, ' ').slice(0, 110); }
  return [eval(cond)(), out]; }""" % json.dumps(STATUSES)


def _watch(page, condition: str, t0: float, timeout_s: float) -> tuple[bool, list]:
    """Poll the page until `condition` holds; meanwhile note each status line's changes of *kind*
    (its text with the numbers taken out), with the second it first appeared: the lesson's phases."""
    seen, timeline = set(), []
    while time.perf_counter() - t0 < timeout_s:
        try:
            done, texts = page.evaluate(WATCH_JS, condition)
        except Exception:  # noqa: BLE001 - a page mid-update; try again
            done, texts = False, {}
        now = round(time.perf_counter() - t0, 1)
        for sid, text in texts.items():
            kind = (sid, re.sub(r"[\d.,:]+", "#", text)[:60])
            if kind not in seen and len(timeline) < 60:
                seen.add(kind)
                timeline.append([now, sid, text])
        if done:
            return True, timeline
        time.sleep(0.25)
    return False, timeline


def server_cpu_seconds() -> float:
    """CPU seconds used so far by the app's side: this process (the server and its jobs; the
    browser is another process) and the UMAP worker process. On an idle machine, serial work on
    one thread takes about this much wall time, so a lesson's share is load-independent."""
    import resource

    from dd_core import embed

    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    pid = embed.WORKER.pid
    if pid:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def yardstick(steps: int = 100) -> float:
    """Seconds for a fixed piece of work on this process's one thread, taken beside the lessons so
    that their seconds can be read against the machine's speed at the time: `steps` DM steps on
    digits at IPC 10 (about 60 ms a step on an idle 2-core machine, PLATFORM.md)."""
    from dd_core import load_dataset, make_method
    from dd_core.distill import distill

    digits = load_dataset("digits")
    t = time.perf_counter()
    for _ in distill(digits, make_method("dm", dataset="digits", ipc=10), method_name="dm", ipc=10, steps=steps):
        pass
    return time.perf_counter() - t


def run_lesson(browser, url: str, name: str, query: str, shots: Path, timeout_s: float, look: Path | None = None) -> dict:
    condition, target = STRIKING[name]
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    load = os.getloadavg()[0]
    cpu0 = server_cpu_seconds()
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
    reached, timeline = _watch(page, condition, t0, timeout_s)
    seconds = time.perf_counter() - t0
    cpu = server_cpu_seconds() - cpu0
    page.wait_for_timeout(1200)  # let the last plot finish drawing
    page.locator(target).scroll_into_view_if_needed()
    shot = shots / f"{name}.png"
    page.screenshot(path=str(shot))
    _shrink(shot)
    if look is not None:  # the striking element alone, full size, and the Labels tab's table, to look at
        page.locator(target).screenshot(path=str(look / f"{name}-element.png"))
        if name == "labels-cost-bytes":
            page.locator("#labels-table").screenshot(path=str(look / f"{name}-table.png"))
    page.context.close()
    return {"lesson": name, "seconds": round(seconds, 1), "reached": reached, "load_average_1min": round(load, 2),
            "cores": os.cpu_count(), "server_cpu_s": round(cpu, 1), "timeline": timeline, "screenshot": str(shot.relative_to(ROOT)) if shot.is_relative_to(ROOT) else str(shot)}


def _shrink(path: Path, width: int = 1000) -> None:
    """Small PNGs for the repository: 1000 px wide, 256 colours (fewer muddle the class colours),
    chosen by octree (median cut spent them on the page's greys and merged a plot's trace colours)."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lessons", nargs="*", default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lessons.jsonl"))
    parser.add_argument("--shots", default=str(ROOT / "assets" / "screenshots"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a lesson's moment")
    parser.add_argument("--fresh-cache", action="store_true",
                        help="an empty cache folder, as on a newly built Space (teachers, numba's code: all made anew)")
    parser.add_argument("--warmup", action="store_true",
                        help="run the app's start-up warm-ups as `python app.py` does, and open the first lesson "
                             "once they have finished (their time is reported)")
    parser.add_argument("--no-shots", action="store_true", help="do not write screenshots")
    parser.add_argument("--no-yardstick", action="store_true", help="skip the fixed yardstick (a screenshot retake)")
    parser.add_argument("--look", default=None, help="a folder for full-size screenshots of each striking element "
                                                     "(and the Labels tab's table), to look at")
    args = parser.parse_args()

    if args.fresh_cache:
        import tempfile

        os.environ["DD_CACHE_DIR"] = tempfile.mkdtemp(prefix="distillery-cache-")
    t_start = time.perf_counter()
    import torch
    from playwright.sync_api import sync_playwright

    import app
    from components import lessons

    torch.set_num_threads(1)
    shots = Path(args.shots) if not args.no_shots else Path(tempfile_dir())
    shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    run = {"run": "start", "app_start_s": round(time.perf_counter() - t_start, 1), "fresh_cache": args.fresh_cache,
           "load_average_1min": round(os.getloadavg()[0], 2), "cores": os.cpu_count()}
    if args.warmup:
        cpu0 = server_cpu_seconds()
        run["warmup_s"] = round(_warm_up(), 1)
        run["warmup_server_cpu_s"] = round(server_cpu_seconds() - cpu0, 1)
    if not args.no_yardstick:
        run["yardstick_100_dm_steps_s"] = round(yardstick(), 2)
    _record(run, args.out)
    url = f"http://127.0.0.1:{port}/"
    chosen = [lesson for lesson in lessons.ordered() if args.lessons is None or lesson.name in args.lessons]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            for lesson in chosen:
                row = run_lesson(browser, url, lesson.name, lesson.query(), shots, args.timeout,
                                 Path(args.look) if args.look else None)
                row.update(fresh_cache=args.fresh_cache, warmed=args.warmup)
                _record(row, args.out)
            browser.close()
        end = {"run": "end", "load_average_1min": round(os.getloadavg()[0], 2)}
        if not args.no_yardstick:
            end["yardstick_100_dm_steps_s"] = round(yardstick(), 2)
        _record(end, args.out)
    finally:
        app.demo.close()


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="lesson-shots-")


def _record(row: dict, out: str) -> None:
    print(json.dumps(row), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")


def _warm_up() -> float:
    """The app's start-up warm-ups (components/warmup.py), run to the end; their seconds."""
    import threading

    from components import warmup

    t = time.perf_counter()
    threads = [threading.Thread(target=f) for f in (warmup.preload, warmup._umap, warmup.experts)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
