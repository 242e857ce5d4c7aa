"""Where a server's resident memory goes when sessions come and go: runs rounds of visitor
lifecycles (distill, evaluate, feature map; several sessions at once in threads, as a server's
worker threads would) through the app's own handlers in this process, drops every session, and
after each round prints RSS beside what is still alive: sessions, jobs, runs, synthetic sets,
torch tensor bytes, and glibc's heap (in use vs free but kept), so growth can be told apart as
retained objects, caches or allocator fragmentation.

    nice -n 10 python -m benchmarks.rss_lifecycle --rounds 4 --sessions 6
    MALLOC_ARENA_MAX=2 nice -n 10 python -m benchmarks.rss_lifecycle --rounds 4 --sessions 6

One JSON line per round (round 0 is the warm-up: one lifecycle, so the dataset, teacher and
feature caches exist before memory is first counted) goes to stdout and to --out.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def heap_mb() -> dict:
    """glibc's view over all its arenas (malloc_info; mallinfo2 sees only the main arena): bytes
    it holds from the system, and of those the bytes free but kept (fragmentation, or not yet trimmed)."""
    import re
    import tempfile

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        with tempfile.NamedTemporaryFile(suffix=".xml") as f:
            fp = libc.fopen(f.name.encode(), b"w")
            libc.malloc_info(0, fp)
            libc.fclose(fp)
            xml = Path(f.name).read_text()
    except (OSError, AttributeError):
        return {}
    tail = xml[xml.rindex("</heap>"):]  # the totals over every arena follow the last heap
    free = sum(int(n) for n in re.findall(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"', tail))
    system = int(re.search(r'<system type="current" size="(\d+)"', tail).group(1))
    mmapped = int(re.search(r'<total type="mmap" count="\d+" size="(\d+)"', tail).group(1))
    mb = 2**20
    return {"heap_system_mb": round(system / mb, 1), "heap_free_kept_mb": round(free / mb, 1),
            "heap_in_use_mb": round((system - free) / mb, 1), "mmapped_mb": round(mmapped / mb, 1),
            "arenas": xml.count("<heap nr=")}


def alive() -> dict:
    """Counts of the app's per-visitor objects still reachable, and bytes of live CPU tensors."""
    import torch

    from components import jobs, sessions

    kinds = Counter()
    tensor_bytes = 0
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name in ("Session", "RunRecord", "SyntheticSet", "Job", "MapView", "Figure"):
            kinds[name] += 1
        elif isinstance(obj, torch.Tensor) and not obj.is_cuda:
            try:
                tensor_bytes += obj.untyped_storage().nbytes()
            except RuntimeError:
                pass
    from components import run_control, selection

    return {"sessions_registered": sessions.active_sessions(), **{f"live_{k}": v for k, v in sorted(kinds.items())},
            "run_gates": len(run_control._gates), "selections": len(selection._selected),
            "python_blocks": sys.getallocatedblocks(),
            "pool": jobs.POOL.snapshot(), "tensor_mb": round(tensor_bytes / 2**20, 1),
            "threads": threading.active_count()}


def lifecycle(name: str, steps: int, errors: list) -> None:
    """One visitor: distill, evaluate the set, draw the feature map (PCA), then leave."""
    from components import distill_run, evaluate_run, feature_view, sessions

    who = SimpleNamespace(session_hash=name)
    try:
        s = sessions.session_for(who)
        last = list(distill_run.run(s, distill_run.check_request("digits", "", "dm", 2, steps, hash(name) % 100)))[-1]
        if last.phase not in ("done", "stopped"):
            raise RuntimeError(f"distill ended {last.phase}: {last.text}")
        evaluate_run.evaluate_set(s, s.current(), stop=threading.Event(), protocol="fast", num_models=1, model="mlp")
        s.feature_view = feature_view.compute_view(s, "trained", "PCA")
    except Exception as err:  # noqa: BLE001 - counted and reported, the round goes on
        errors.append(f"{type(err).__name__}: {err}"[:200])
    finally:
        sessions.drop_session(who)


def settle() -> None:
    from components import sessions

    gc.collect()
    sessions.release_memory()
    time.sleep(1)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--sessions", type=int, default=6, help="visitors per round, at once")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--label", default="", help="a note for the JSON line (e.g. the malloc settings)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rss_lifecycle.jsonl"))
    args = p.parse_args(argv)
    if not (1 <= args.rounds <= 20 and 1 <= args.sessions <= 40):
        raise SystemExit("keep it bounded: 1-20 rounds of 1-40 sessions")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    t_import = rss_mb()
    import app  # noqa: F401 - builds the Blocks, as a server does

    rows = []
    base = {"benchmark": "rss_lifecycle", "label": args.label, "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
            "sessions_per_round": args.sessions, "steps": args.steps, "rss_before_import_mb": round(t_import, 1),
            "rss_after_import_mb": round(rss_mb(), 1)}
    for r in range(args.rounds + 1):
        errors: list = []
        n = 1 if r == 0 else args.sessions
        peak = [rss_mb()]
        threads = [threading.Thread(target=lifecycle, args=(f"rss-{r}-{i}", args.steps, errors)) for i in range(n)]
        t0 = time.time()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak.append(rss_mb())
            time.sleep(0.5)
        settle()
        row = {**base, "round": r, "seconds": round(time.time() - t0, 1), "rss_peak_mb": round(max(peak), 1),
               "rss_after_drop_mb": round(rss_mb(), 1), **heap_mb(), **alive(), "errors": errors[:3]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
