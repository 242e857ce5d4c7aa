"""A classroom against one server: simulated students distill, stop, evaluate and draw the feature
map, through gradio_client and plain HTTP, with bad inputs mixed in. Bounded in students, requests
and time, and it only ever talks to 127.0.0.1.

    python -m benchmarks.soak --students 40 --minutes 10            # the full size (issue 16)
    python -m benchmarks.soak --students 8 --minutes 2 --cap 20     # what a shared 2-core box allows

It launches the app in a child process on a free port (its own temp and cache folders, so the
bytes it leaves are measurable), or drives `--url http://127.0.0.1:PORT/`. Every request is
classed as ok, a clear refusal (the app's own message: bad input, busy, limits) or a failure
(anything else: a generic error, a dropped stream, a timeout). It samples the server's memory
(with its children: the UMAP worker) every second, and prints one JSON line (appended to
--out) with requests served, p50 / p95 latency and wait-to-start, errors by kind, RSS at start,
peak and end (the server, and apart from it its UMAP worker; "start" is after one warm-up request
of each kind), and temp bytes at start and end.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from .procs import children, folder_bytes, free_port, loopback_only, rss_bytes, wait_up

ROOT = Path(__file__).resolve().parent.parent
# Phrases of the app's own messages: a request answered with one of them was refused clearly.
REFUSALS = ("whole number", "must be between", "at least 1", "Unknown method", "valid datasets", "turned off",
            "does not exist", "has no images", "one running and one waiting", "job running and one waiting", "not a readable", "limit", "Choose", "no synthetic set",
            "Stopped before it started", "characters)", "Number of networks", "Unknown protocol", "memory",
            "Queue is full", "choose one of", "time cap")
BAD_DISTILLS = [("digits", "dm", 2.5, 5, 0), ("digits", "dm", True, 5, 0), ("digits", "dm", "ten", 5, 0),
                ("digits", "dm", 1, 10**7, 0), ("digits", "nonsense", 1, 5, 0), ("x" * 20_000, "dm", 1, 5, 0),
                ("folder:/etc", "dm", 1, 5, 0), ("digits", "dm", 0, 5, 0), ("digits", "dm", 1, -3, 0)]


class Log:
    """Thread-safe record of every request: kind, outcome, seconds, wait-to-start, message."""

    def __init__(self):
        self.rows: list[dict] = []
        self.lock = threading.Lock()

    def add(self, kind: str, outcome: str, seconds: float, wait: float | None = None, message: str = "") -> None:
        with self.lock:
            self.rows.append(dict(kind=kind, outcome=outcome, seconds=round(seconds, 3),
                                  wait=None if wait is None else round(wait, 3), message=message[:160]))


def classify(err: BaseException) -> tuple[str, str]:
    text = str(err)
    if any(p in text for p in REFUSALS) and "Something went wrong" not in text:
        return "refused", text
    return "failed", f"{type(err).__name__}: {text}"


STREAM_ENDS: Counter = Counter()  # how gradio_client's message streams ended, and whether a job still waited on one


def watch_client_streams() -> None:
    """Record how each gradio_client message stream ends. A job whose stream ends before its result
    arrives is cancelled (CancelledError), so a failure names its cause: the server closed the stream
    while the client had registered another request on it, or the client's read timed out (no byte,
    not even gradio's 15-second heartbeat, for the client's timeout)."""
    from gradio_client import client as gc

    read = gc.Client.stream_messages

    def stream_messages(self, *args, **kwargs):
        how = "closed by the server"
        try:
            return read(self, *args, **kwargs)
        except BaseException as err:
            how = type(err).__name__
            raise
        finally:
            with self.pending_lock:
                waiting = len(self.pending_event_ids)
            end = f"{how}, {waiting} request(s) of this client still waiting on it"
            self.soak_stream_end = f"{time.strftime('%H:%M:%S')} {end}"
            with BUDGET_LOCK:
                STREAM_ENDS[end if waiting or how != "closed by the server" else how] += 1

    gc.Client.stream_messages = stream_messages


def probe_server(url: str, stop: threading.Event, seconds: list) -> None:
    """Time a request that gradio answers on its event loop alone (the queue's status) every 2 s:
    how long the server could not answer anything, the heartbeats of every stream included."""
    import httpx

    while not stop.wait(2):
        t0 = time.time()
        try:
            httpx.get(url + "gradio_api/queue/status", timeout=600)
        except Exception:  # noqa: BLE001 - counted as the time it took
            pass
        seconds.append(time.time() - t0)


def client_student(url: str, rng: random.Random, deadline: float, budget: list, log: Log) -> None:
    """A student with gradio_client: distill (sometimes stopping it), evaluate, the feature map, bad input."""
    from gradio_client import Client, handle_file

    client = None
    while client is None and time.time() < deadline:
        t0 = time.time()
        try:  # a slow server answers its API description slowly: a connection is a request too
            client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
        except Exception as err:  # noqa: BLE001
            log.add("connect", "failed", time.time() - t0, None, f"{type(err).__name__}: {err}")
            time.sleep(5)
    set_file = None
    while time.time() < deadline and take(budget):
        action = rng.choices(["distill", "stop", "evaluate", "map", "bad"], [4, 2, 2, 2, 2])[0]
        t0 = time.time()
        try:
            if action in ("distill", "stop"):
                steps = rng.choice([5, 20, 60]) if action == "distill" else 3000
                job = client.submit("digits", rng.choice(["dm", "dm", "random", "datadam"]), rng.choice([1, 2, 5]),
                                    steps, rng.randrange(100), api_name="/distill")
                started = None
                for progress, _ in job:
                    if started is None and progress.get("status") not in ("waiting",):
                        started = time.time() - t0
                    if action == "stop" and progress.get("step", 0) >= 2:
                        client.predict(api_name="/stop")
                        break
                    if time.time() > deadline + 30:
                        client.predict(api_name="/stop")
                        break
                progress, out = job.result(timeout=max(60, deadline - time.time() + 120))
                if out:
                    set_file = out
                log.add(action, "ok", time.time() - t0, started, progress.get("status", ""))
            elif action == "evaluate":
                if set_file is None:
                    answer = client.predict(handle_file(str(bogus_file())), api_name="/evaluate")
                    log.add(action, "failed", time.time() - t0, None, f"accepted a bogus file: {answer}")
                    continue
                result = client.predict(handle_file(set_file), "fast", 1, "mlp", api_name="/evaluate")
                log.add(action, "ok", time.time() - t0, None, f"{result['accuracy_mean']:.3f}")
            elif action == "map":
                view = client.predict("trained", rng.choice(["PCA", "PCA", "UMAP"] if UMAP else ["PCA"]),
                                      api_name="/feature_map")
                log.add(action, "ok", time.time() - t0, None, view["projection"])
            else:
                args = rng.choice(BAD_DISTILLS)
                client.predict(*args, api_name="/distill")
                log.add("bad", "failed", time.time() - t0, None, f"accepted bad input {str(args)[:60]}")
        except Exception as err:  # noqa: BLE001 - every answer is classified
            outcome, message = classify(err)
            if type(err).__name__ == "CancelledError":  # the job's stream ended without its result: how
                message += f"(stream: {getattr(client, 'soak_stream_end', 'no end recorded')})"
            log.add(action, outcome, time.time() - t0, None, message)
            time.sleep(rng.uniform(2, 5))  # a person reads the message before trying again


def http_student(url: str, rng: random.Random, deadline: float, budget: list, log: Log) -> None:
    """A student with plain HTTP (no session): distill, sometimes /stop, and bad numbers."""
    import httpx

    api = url + "gradio_api"
    while time.time() < deadline and take(budget):
        bad = rng.random() < 0.3
        data = list(rng.choice(BAD_DISTILLS)) if bad else ["digits", "dm", rng.choice([1, 2]), rng.choice([5, 30]),
                                                            rng.randrange(100)]
        t0 = time.time()
        try:
            answer = httpx.post(f"{api}/call/distill", json={"data": data}, timeout=60).json()
            if "event_id" not in answer:  # gradio refused the call itself (e.g. 503 "Queue is full"): its words
                raise RuntimeError(str(answer.get("detail", answer)))
            event = answer["event_id"]
            kind, last, started = None, None, None
            with httpx.stream("GET", f"{api}/call/distill/{event}", timeout=max(60, deadline - time.time() + 180)) as r:
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        kind = line.split(":", 1)[1].strip()
                    elif line.startswith("data:"):
                        last = line[5:].strip()
                        if started is None and kind == "generating" and '"waiting"' not in last:
                            started = time.time() - t0
                            if rng.random() < 0.3:
                                httpx.post(f"{api}/call/stop", json={"data": []}, timeout=30)
            if kind == "complete" and bad:
                # A bad folder is only opened once the job has its slot: a /stop from the same address (the
                # plain-HTTP students share one) can end it first, with the app's "Stopped before it started".
                outcome, message = classify(RuntimeError(last or ""))
                log.add("rest-bad", outcome if outcome == "refused" else "failed", time.time() - t0, None,
                        message if outcome == "refused" else f"accepted bad input {str(data)[:60]}: {last}")
            elif kind == "complete":
                log.add("rest-distill", "ok", time.time() - t0, started, "")
            else:
                outcome, message = classify(RuntimeError(last or "stream ended without a result"))
                log.add("rest-bad" if bad else "rest-distill", outcome, time.time() - t0, None, message)
                time.sleep(rng.uniform(2, 5))  # a script's retry delay
        except Exception as err:  # noqa: BLE001
            outcome, message = classify(err)
            log.add("rest-bad" if bad else "rest-distill", outcome, time.time() - t0, None, message)
            time.sleep(rng.uniform(2, 5))


def warm_up(url: str, log: Log, umap: bool) -> None:
    """One distillation, evaluation and map (UMAP), so the server's caches and worker exist before
    memory is first sampled; not counted among the students' requests."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, httpx_kwargs={"timeout": 600})
    _, set_file = client.predict("digits", "dm", 2, 5, 0, api_name="/distill")
    client.predict(handle_file(set_file), "fast", 1, "mlp", api_name="/evaluate")
    for attempt in range(3 if umap else 1):  # UMAP's first fit may outlast the cap while numba compiles
        t0 = time.time()
        try:
            client.predict("trained", "UMAP" if umap else "PCA", api_name="/feature_map")
            log.add("warm-map", "ok", time.time() - t0)
            return
        except Exception as err:  # noqa: BLE001 - noted on stderr; the soak goes on
            log.add("warm-map", "refused" if "time cap" in str(err) else "failed", time.time() - t0, None, str(err))
            print(f"warm-up map, attempt {attempt + 1}: {err}", file=sys.stderr)


def take(budget: list) -> bool:
    """One request from the shared budget (a list holding the count left)."""
    with BUDGET_LOCK:
        if budget[0] <= 0:
            return False
        budget[0] -= 1
        return True


BUDGET_LOCK = threading.Lock()
UMAP = True  # a third of the map requests ask for UMAP (--no-umap: PCA only)


def bogus_file() -> Path:
    path = Path(tempfile.gettempdir()) / "soak-bogus.safetensors"
    path.write_bytes(b"\x00" * 64)
    return path


def launch(port: int, folder: Path, cap: int) -> subprocess.Popen:
    env = dict(os.environ, GRADIO_TEMP_DIR=str(folder / "gradio"), TMPDIR=str(folder / "tmp"),
               DISTILLERY_MAX_SECONDS=str(cap), GRADIO_ANALYTICS_ENABLED="False", DISTILLERY_IDLE_MINUTES="1")
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    # As `python app.py` runs it: the start-up warm-ups (digits, baselines, experts, UMAP's compile
    # in its low-priority worker) in background threads while the page is served.
    code = (f"import app; from components import warmup; warmup.start(); "
            f"app.launch(server_name='127.0.0.1', server_port={port}, quiet=True)")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(folder / "server.log", "w"))


def summarize(log: Log, args, rss: list[int], temp: tuple[int, int], minutes: float) -> dict:
    rows = log.rows
    by = Counter((r["kind"], r["outcome"]) for r in rows)
    seconds = sorted(r["seconds"] for r in rows if r["outcome"] == "ok")
    waits = sorted(r["wait"] for r in rows if r["wait"] is not None)

    def pct(values, q):
        return round(values[min(len(values) - 1, int(q * len(values)))], 2) if values else None

    failures = Counter(r["message"][:80] for r in rows if r["outcome"] == "failed")
    return {"benchmark": "soak", "students": args.students, "http_share": args.http_share, "minutes": round(minutes, 2),
            "cap_seconds": args.cap, "requests": len(rows), "ok": sum(r["outcome"] == "ok" for r in rows),
            "refused": sum(r["outcome"] == "refused" for r in rows),
            "failed": sum(r["outcome"] == "failed" for r in rows),
            "by_kind": {f"{k}/{o}": n for (k, o), n in sorted(by.items())},
            "latency_p50_s": pct(seconds, 0.5), "latency_p95_s": pct(seconds, 0.95),
            "wait_to_start_p50_s": pct(waits, 0.5), "wait_to_start_p95_s": pct(waits, 0.95),
            "wait_to_start_max_s": waits[-1] if waits else None,
            "rss_start_mb": round(rss[0] / 2**20, 1) if rss else None,
            "rss_peak_mb": round(max(rss) / 2**20, 1) if rss else None,
            "rss_end_mb": round(rss[-1] / 2**20, 1) if rss else None,
            "temp_start_bytes": temp[0], "temp_end_bytes": temp[1], "failures": dict(failures.most_common(8)),
            "failure_messages": [r["message"] for r in rows if r["outcome"] == "failed"][:20],
            "client_stream_ends": dict(STREAM_ENDS),
            "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=int, default=40)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--max-requests", type=int, default=2000, help="stop after this many requests in all")
    p.add_argument("--http-share", type=float, default=0.25, help="fraction of students that use plain HTTP")
    p.add_argument("--cap", type=int, default=60, help="the server's DISTILLERY_MAX_SECONDS per run")
    p.add_argument("--url", default=None, help="drive a running app on 127.0.0.1 instead of launching one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-umap", dest="umap", action="store_false",
                   help="feature maps with PCA only (UMAP's first numba compile takes minutes on a loaded machine)")
    p.add_argument("--settle", type=float, default=120,
                   help="seconds to wait after the last request before measuring memory and temp bytes again "
                        "(the launched server drops sessions idle for 1 minute, sweeping every 30 s)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.jsonl"))
    p.add_argument("--commit", default=None,
                   help="the code version to record when running from an export without .git (git archive HEAD)")
    args = p.parse_args(argv)
    global UMAP
    UMAP = args.umap
    if not 1 <= args.students <= 200 or not 0 < args.minutes <= 60:
        raise SystemExit("keep it bounded: 1-200 students, at most 60 minutes")
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    server = None
    if args.url:
        url = loopback_only(args.url)
        pid = None
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        server = launch(port, folder, args.cap)
        pid = server.pid
        wait_up(url)
    rss: list[int] = []
    kids: list[int] = []
    temp_roots = [folder / "gradio", folder / "tmp"]
    temp_start = folder_bytes(*temp_roots)
    sampling = threading.Event()

    def sample():
        while not sampling.is_set() and pid is not None:
            rss.append(rss_bytes(pid))
            kids.append(sum(rss_bytes(k) for k in children(pid)))  # the UMAP worker
            time.sleep(1)

    log, budget, warm_log = Log(), [args.max_requests], Log()
    watch_client_streams()
    warm_up(url, warm_log, args.umap)  # one of each request first: memory at start means a warm server
    time.sleep(5)
    threading.Thread(target=sample, daemon=True).start()
    probes: list[float] = []
    threading.Thread(target=probe_server, args=(url, sampling, probes), daemon=True).start()
    t0 = time.time()
    deadline = t0 + 60 * args.minutes
    threads = []
    for i in range(args.students):
        rng = random.Random(args.seed * 1000 + i)
        target = http_student if i < round(args.http_share * args.students) else client_student
        threads.append(threading.Thread(target=target, args=(url, rng, deadline, budget, log), daemon=True))
    for i, t in enumerate(threads):
        t.start()
        time.sleep(min(2.0, 60 * args.minutes / max(1, 4 * args.students)))  # a class arriving, not a burst
    for t in threads:
        t.join(max(1.0, deadline - time.time() + 240))
    minutes = (time.time() - t0) / 60
    if server is not None:  # let the idle sweep and the export pruning do their work, then measure
        time.sleep(args.settle)
    sampling.set()
    temp_end = folder_bytes(*temp_roots)
    result = summarize(log, args, rss, (temp_start, temp_end), minutes)
    result["warm_up_map"] = warm_log.rows
    result.update(server_probe_max_s=round(max(probes), 2) if probes else None,
                  server_probe_over_15s=sum(p > 15 for p in probes))
    result["commit"] = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                     capture_output=True, text=True).stdout.strip()
    if kids:
        result.update(worker_rss_start_mb=round(kids[0] / 2**20, 1), worker_rss_peak_mb=round(max(kids) / 2**20, 1),
                      worker_rss_end_mb=round(kids[-1] / 2**20, 1))
    if server is not None:
        server.terminate()
        server.wait(30)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
