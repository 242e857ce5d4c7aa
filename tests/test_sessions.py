"""A public crowd's sessions: exports pruned, leftovers swept, idle sessions dropped (and kept while
in use), the feature map's UMAP fit and first training under their cap and stop, and the server's
malloc arenas (issue 16's defects). Inputs and their messages are in test_inputs.py."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from components import distill_run, exports, runtime, sessions

ROOT = Path(__file__).resolve().parents[1]


# -- 10 and 5. exports are pruned, leftovers swept, idle sessions dropped ------------------------

def test_a_session_keeps_only_its_last_few_exports(session):
    for seed in range(exports.KEEP_EXPORTS + 2):
        list(distill_run.run(session, distill_run.check_request("digits", "", "random", 1, 1, seed)))
    folders = sorted(session.folder.glob("export-*"))
    assert len(folders) == exports.KEEP_EXPORTS
    assert session.run.files["safetensors"].is_file()


def test_leftover_session_folders_of_dead_processes_are_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"{sessions.FOLDER_PREFIX}{dead.pid}-abc"
    left.mkdir()
    (left / "big.bin").write_bytes(b"\0" * 1000)
    mine = tmp_path / f"{sessions.FOLDER_PREFIX}{os.getpid()}-xyz"
    mine.mkdir()
    assert sessions.sweep_leftovers(tmp_path) == 1000
    assert not left.exists() and mine.exists()


def test_idle_sessions_are_dropped_but_not_while_a_job_runs(monkeypatch):
    from components import jobs

    monkeypatch.setattr(sessions, "IDLE_SECONDS", 0.2)
    idle = sessions.session_for(SimpleNamespace(session_hash="idle-one"))
    busy = sessions.session_for(SimpleNamespace(session_hash="busy-one"))
    job = jobs.admit(busy, "evaluate", "session:busy-one")
    try:
        time.sleep(0.3)
        sessions.sweep_idle()
        assert idle.closed and not idle.folder.exists()
        assert not busy.closed and busy.folder.exists()
    finally:
        jobs.release(job)
        sessions.drop_session(SimpleNamespace(session_hash="busy-one"))


def test_idle_time_counts_from_a_jobs_end_not_its_start(monkeypatch):
    """A caller whose job ran longer than the idle limit sends its next request a few seconds after
    the answer; the sweep in between must not drop its session (its set) as idle since the job began."""
    from components import jobs

    monkeypatch.setattr(sessions, "IDLE_SECONDS", 0.3)
    s = sessions.session_for(SimpleNamespace(session_hash="long-job"))
    job = jobs.admit(s, "distill", "session:long-job")
    try:
        time.sleep(0.4)  # the job outlives the idle limit
    finally:
        jobs.release(job)
    sessions.sweep_idle()
    assert not s.closed
    time.sleep(0.4)
    sessions.sweep_idle()
    assert s.closed  # and once really idle, it goes


def test_an_idle_sessions_tables_elsewhere_go_with_it(monkeypatch):
    """An API caller never closes a page (no demo.unload): the idle sweep must also drop what other
    modules keep per session (a run's Pause gate, the selected image), or each call leaves some behind."""
    from components import run_control, selection

    monkeypatch.setattr(sessions, "IDLE_SECONDS", 0.2)
    s = sessions.session_for(SimpleNamespace(session_hash="api-caller"))
    list(distill_run.run(s, distill_run.check_request("digits", "", "dm", 1, 2, 0)))
    selection.select(s, 3)
    run_control.start_paused_next(s.key, True)
    assert run_control.gate_of(s) is not None and selection.selected(s) == 3
    time.sleep(0.3)
    sessions.sweep_idle()
    assert s.closed and s.run is None
    assert s.key not in run_control._gates and s.key not in run_control._start_paused
    assert s.key not in selection._selected


def test_an_open_page_keeps_its_session(monkeypatch):
    monkeypatch.setattr(sessions, "IDLE_SECONDS", 0.3)
    request = SimpleNamespace(session_hash="reading")
    page = sessions.session_for(request)
    try:
        for _ in range(3):
            time.sleep(0.15)
            sessions.keep_alive(request)
            sessions.sweep_idle()
        assert not page.closed
    finally:
        sessions.drop_session(request)


# -- 11. the feature map's UMAP fit obeys its job's cap and stop ---------------------------------

# A stand-in UMAP worker that speaks the worker's protocol but takes 30 s over anything but a ping:
# a slow first fit (numba compiling on a loaded machine) without the minutes a real one takes.
# (The protocol is inlined: importing dd_core would cost the stand-in seconds on a busy machine.)
SLOW_WORKER = """
import pickle, struct, sys, time
inp, out = sys.stdin.buffer, sys.stdout.buffer
while len(header := inp.read(8)) == 8:
    cmd, key, payload = pickle.loads(inp.read(struct.unpack("<Q", header)[0]))
    if cmd != "ping":
        time.sleep(30)
    reply = pickle.dumps(("ok", "pong"))
    out.write(struct.pack("<Q", len(reply)) + reply)
    out.flush()
"""


@pytest.fixture
def slow_umap(monkeypatch):
    from dd_core import embed
    from dd_core.umap_worker import UmapWorker

    worker = UmapWorker(nice=0, argv=[sys.executable, "-c", SLOW_WORKER])
    monkeypatch.setattr(embed, "WORKER", worker)
    yield worker
    worker.close()


def _gone(pid: int, within: float = 5.0) -> bool:
    from dd_core.cache import pid_alive

    deadline = time.monotonic() + within
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not pid_alive(pid)


def test_a_stop_ends_a_umap_fit_by_ending_its_worker(slow_umap):
    import numpy as np

    from dd_core.umap_worker import Stopped

    slow_umap.call("ping")
    pid, stop = slow_umap.pid, threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(Stopped) as err:
        slow_umap.fit("key", np.zeros((10, 4), np.float32), stop=stop)
    assert time.monotonic() - t0 < 5 and err.value.pid == pid and _gone(pid)
    assert slow_umap.call("ping") == "pong" and slow_umap.pid != pid  # the next call starts a fresh worker


@pytest.fixture
def map_session():
    who = SimpleNamespace(session_hash="robustness-map")
    s = sessions.session_for(who)
    list(distill_run.run(s, distill_run.check_request("digits", "", "dm", 1, 2, 0)))
    yield who, s
    sessions.drop_session(who)


def test_the_time_cap_ends_a_umap_fit_and_keeps_the_last_good_map(slow_umap, map_session, monkeypatch):
    from components import feature_tab, feature_view

    who, s = map_session
    feature_view.compute_view(s, "random", "PCA", paths=False)  # the real map's features, cached: PCA is then instant
    monkeypatch.setattr(feature_tab, "LIMITS", runtime.Limits(max_steps=10, max_seconds=3.0, max_ipc=10))
    slow_umap.call("ping")
    pid, t0 = slow_umap.pid, time.monotonic()
    *_, (status, *_rest) = feature_tab.draw("random", "UMAP", False, who)
    assert time.monotonic() - t0 < 15, "the cap did not reach the UMAP fit"
    assert "time cap" in status and f"pid {pid}" in status and _gone(pid)
    assert s.feature_view is not None and s.feature_view.projection == "PCA"  # the last good map stays
    assert not s.jobs  # the slot was released


def test_closing_the_page_during_a_umap_fit_ends_the_worker(slow_umap, map_session):
    from components import feature_tab

    who, _ = map_session
    slow_umap.call("ping")
    pid = slow_umap.pid
    draw = feature_tab.draw("random", "UMAP", False, who)
    for status, *_ in draw:
        if "fitting UMAP" in status and " s of about" in status:  # the clock: the fit is under way in the worker
            break
    draw.close()  # what gradio does to the handler when the page goes away
    assert _gone(pid), "the UMAP worker kept fitting for a page nobody has open"


def test_the_map_api_under_its_cap_ends_the_fit_with_a_plain_message(slow_umap, map_session, monkeypatch):
    import gradio as gr

    from components import api, feature_view

    who, s = map_session
    feature_view.compute_view(s, "random", "PCA", paths=False)  # features cached: the cap is spent on UMAP
    monkeypatch.setattr(api, "LIMITS", runtime.Limits(max_steps=10, max_seconds=2.0, max_ipc=10))
    slow_umap.call("ping")
    pid, t0 = slow_umap.pid, time.monotonic()
    with pytest.raises(gr.Error, match="time cap of 2 s") as err:
        api.map_api("random", "UMAP", who)
    assert time.monotonic() - t0 < 15 and f"pid {pid}" in str(err.value) and _gone(pid)


@pytest.fixture
def slow_teacher(monkeypatch, tmp_path):
    """The trained feature network not cached anywhere, and its training a stand-in that takes 30 s
    unless its stop is set (a first MNIST training on a loaded machine, without the minutes)."""
    from dd_core import embed, teacher
    from dd_core.interrupt import check

    monkeypatch.setenv("DD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(teacher, "_memory", {})
    monkeypatch.setattr(embed, "_maps", {})

    def train(dataset, arch, epochs, seed, device, stop=None, **_):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            check(stop)
            time.sleep(0.05)
        raise AssertionError("the feature network's training was never stopped")

    monkeypatch.setattr(teacher, "train_on_real", train)
    return teacher


def test_the_time_cap_ends_the_feature_networks_first_training(slow_teacher, map_session, monkeypatch):
    from components import feature_tab

    who, s = map_session
    monkeypatch.setattr(feature_tab, "LIMITS", runtime.Limits(max_steps=10, max_seconds=1.0, max_ipc=10))
    t0 = time.monotonic()
    *_, (status, *_rest) = feature_tab.draw("trained", "PCA", False, who)
    assert time.monotonic() - t0 < 10, "the cap did not reach the feature network's training"
    assert "time cap" in status and "first training was stopped" in status and "random network" in status
    assert not slow_teacher._memory and not s.jobs  # nothing cached; the slot was released


def test_the_map_api_under_its_cap_ends_the_feature_networks_training_with_a_plain_message(
        slow_teacher, map_session, monkeypatch):
    import gradio as gr

    from components import api

    who, _ = map_session
    monkeypatch.setattr(api, "LIMITS", runtime.Limits(max_steps=10, max_seconds=1.0, max_ipc=10))
    t0 = time.monotonic()
    with pytest.raises(gr.Error, match="time cap of 1 s per job: the feature network's first training") as err:
        api.map_api("trained", "PCA", who)
    assert time.monotonic() - t0 < 10 and "kind random" in str(err.value)


def test_the_server_keeps_to_two_malloc_arenas():
    """glibc gives each allocating thread an arena (up to 8 per core) and keeps what is freed in it,
    so RSS stayed ~9% up after sessions dropped (benchmarks/rss_lifecycle.py); configure() caps them."""
    code = """
import ctypes, os, tempfile, threading
from components import runtime
runtime.configure()
together = threading.Barrier(8)
def churn():
    held = [bytearray(100_000) for _ in range(20)]
    together.wait()  # all eight allocate at once, as a server's handler threads do
    held += [bytearray(100_000) for _ in range(20)]
threads = [threading.Thread(target=churn) for _ in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile() as f:
    fp = libc.fopen(f.name.encode(), b"w"); libc.malloc_info(0, fp); libc.fclose(fp)
    print(open(f.name).read().count("<heap nr="))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "DISTILLERY_MALLOC_ARENAS")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if out.returncode and "libc.so.6" in out.stderr:
        pytest.skip("not glibc")
    assert int(out.stdout.split()[-1]) <= 2, out.stderr[-500:]
