"""A public crowd's inputs: ranges, memory, malformed sets and folders, caps inside epochs, limits
on uploads, echoed input and paths, idle sessions and leftover files (issue 16's defects)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from components import distill_run, exports, inputs, runtime, sessions
from dd_core.data import load_dataset
from dd_core.labels import HardLabels
from dd_core.methods import METHODS, make_method
from dd_core.methods.base import field_choices, field_range, hyperparameters
from dd_core.synthetic import SyntheticFileError, SyntheticSet, init_synthetic

ROOT = Path(__file__).resolve().parents[1]
OURS = ("dm", "datadam", "dc", "dsa", "random", "herding", "kcenter")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def session():
    req = SimpleNamespace(session_hash="robustness")
    s = sessions.session_for(req)
    yield s
    sessions.drop_session(req)


# -- 3. hyperparameter ranges and the memory budget ---------------------------------------------

@pytest.mark.parametrize("name", [m for m in OURS if m in METHODS])
def test_every_numeric_hyperparameter_declares_its_range(name):
    for f in hyperparameters(METHODS.get(name)):
        if isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            assert field_range(f) is not None, f"{name}.{f.name} has no range"
        elif isinstance(f.default, str) and f.name not in ("model", "feature_model"):
            assert field_choices(f) is not None, f"{name}.{f.name} has no choices"


def test_a_value_outside_the_range_is_refused_with_the_range(session):
    req = distill_run.check_request("digits", "", "dm", 1, 2, 0, overrides={"batch_real": 200_000})
    last = list(distill_run.run(session, req))[-1]
    assert last.phase == "error" and "batch_real" in last.text and "1 to 1024" in last.text


def test_a_run_above_the_memory_budget_is_refused(session, monkeypatch):
    monkeypatch.setattr(runtime, "MAX_MEMORY_BYTES", 2**20)  # 1 MB
    last = list(distill_run.run(session, distill_run.check_request("digits", "", "dm", 10, 2, 0)))[-1]
    assert last.phase == "error" and "memory" in last.text and "DISTILLERY_MAX_MEMORY_MB" in last.text


def test_the_memory_estimate_grows_with_ipc_and_batch(digits):
    from dd_core.memory import estimate_bytes

    small = estimate_bytes(make_method("dm", dataset="digits", ipc=1), digits, 1)
    more_ipc = estimate_bytes(make_method("dm", dataset="digits", ipc=10), digits, 10)
    more_real = estimate_bytes(make_method("dm", dataset="digits", ipc=1, batch_real=1024), digits, 1)
    assert 0 < small < more_ipc and small < more_real


# -- 4. evaluation stops inside an epoch; uploads have limits -----------------------------------

def test_evaluation_honours_a_stop_within_an_epoch(digits):
    from dd_core.evaluate import protocol, train_network

    stop = threading.Event()
    calls = []

    class Counting(HardLabels):
        def targets(self, idx, images=None, epoch=0):
            calls.append(len(idx))
            stop.set()  # the cap fires during the first batch
            return super().targets(idx, images, epoch)

    images = digits.x_train[:1024]  # 8 batches of 128 in one epoch
    config = protocol("fast", epochs=1, batch_size=128, model="mlp", dsa=False)
    train_network(images, Counting(digits.y_train[:1024], 10), digits, config, seed=0, device="cpu", stop=stop)
    assert len(calls) == 1


def test_an_upload_above_the_size_limit_is_refused_with_the_limit(tmp_path, digits, monkeypatch):
    path = init_synthetic(digits, 2).save(tmp_path / "set.safetensors")
    monkeypatch.setattr(runtime, "MAX_UPLOAD_BYTES", 1000)
    with pytest.raises(inputs.UserError, match="at most 0 MB|at most"):
        inputs.load_set(str(path))


def test_an_upload_with_too_many_images_per_class_is_refused(tmp_path, digits, monkeypatch):
    monkeypatch.setattr(inputs, "LIMITS", runtime.Limits(max_steps=10, max_seconds=10, max_ipc=3))
    path = init_synthetic(digits, 4).save(tmp_path / "set.safetensors")
    with pytest.raises(inputs.UserError, match="at most 3 per class"):
        inputs.load_set(str(path))


# -- 7. a set is validated once, on load ---------------------------------------------------------

def _variant(tmp_path, digits, **change) -> Path:
    syn = init_synthetic(digits, 1)
    for key, value in change.items():
        setattr(syn, key, value)
    return syn.save(tmp_path / "variant.safetensors")


@pytest.mark.parametrize("change, fragment", [
    (dict(images=torch.full((10, 1, 8, 8), float("nan"))), "NaN or infinite"),
    (dict(images=torch.zeros(10, 1, 8, 8).index_fill_(0, torch.tensor([3]), float("inf"))), "NaN or infinite"),
    (dict(images=torch.zeros(0, 1, 8, 8), labels=torch.zeros(0, dtype=torch.long)), "no images"),
    (dict(classes=tuple(str(i) for i in range(100_000))), "100,000 classes"),
    (dict(images=torch.zeros(10, 7, 8, 8), mean=(0.0,) * 7, std=(1.0,) * 7), "not images this app makes"),
    (dict(std=(0.0,)), "positive std"),
])
def test_a_malformed_set_is_refused_on_load_with_what_is_wrong(tmp_path, digits, change, fragment):
    path = _variant(tmp_path, digits, **change)
    with pytest.raises(SyntheticFileError, match=fragment):
        SyntheticSet.load(path)


def test_a_set_that_does_not_fit_its_dataset_is_a_message(tmp_path, digits, session):
    from components import evaluate_run

    syn = init_synthetic(digits, 1)
    syn.images = torch.zeros(10, 1, 16, 16)
    with pytest.raises(SyntheticFileError, match="does not fit"):
        evaluate_run.dataset_of(session, syn)


def test_a_label_store_named_but_absent_is_a_message(tmp_path, digits):
    syn = init_synthetic(digits, 1)
    syn.extra_meta["label_store"] = "soft"
    path = syn.save(tmp_path / "nolabels.safetensors")
    with pytest.raises(inputs.UserError, match="names a 'soft' label store but its saved parts are missing"):
        inputs.load_set(str(path))


# -- 8. the CLI refuses a negative step count; unreadable images are skipped ---------------------

@pytest.mark.parametrize("flag, value", [("--steps", "-5"), ("--steps", "0"), ("--ipc", "-1"), ("--minutes", "-2")])
def test_the_cli_refuses_non_positive_counts(tmp_path, flag, value, capsys):
    from dd_core.cli import main

    out = tmp_path / "x.safetensors"
    code = main(["distill", "--dataset", "digits", flag, value, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert f"argument {flag}" in err and ("at least 1" in err or "positive" in err)


def _folder_with_broken_files(root: Path) -> Path:
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), color=30 * i + (0 if name == "cat" else 100)).save(root / name / f"{i}.png")
        (root / name / "broken.png").write_bytes(b"\x89PNG not really")
        (root / name / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 10)
    return root


def test_a_folder_with_unreadable_files_skips_them_and_says_how_many(tmp_path):
    from dd_core.folder import load_folder

    dataset = load_folder(str(_folder_with_broken_files(tmp_path / "pets")))
    assert len(dataset.x_train) + len(dataset.x_test) == 12
    assert "skipped 4 unreadable file(s)" in dataset.split_note


def test_the_cli_distills_a_folder_with_unreadable_files(tmp_path):
    root = _folder_with_broken_files(tmp_path / "pets")
    out = tmp_path / "pets.safetensors"
    run = subprocess.run([sys.executable, "-m", "dd_core", "distill", "--dataset", f"folder:{root}", "--method",
                          "random", "--ipc", "1", "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, DD_THREADS="1"))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["status"] == "done" and out.is_file()


# -- 9. input conversion: no rounding, plain messages, short echoes, no server paths -------------

@pytest.mark.parametrize("ipc", [2.5, True, "ten", float("nan"), [1]])
def test_ipc_that_is_not_a_whole_number_is_refused(ipc):
    with pytest.raises(inputs.UserError, match="whole number"):
        distill_run.check_request("digits", "", "dm", ipc, 10, 0)


def test_echoed_input_is_cut_short():
    with pytest.raises(inputs.UserError) as err:
        distill_run.check_request("digits", "", "x" * 100_000, 1, 10, 0)
    assert len(str(err.value)) < 400 and "100,002 characters" in str(err.value)


def test_a_public_space_never_shows_server_paths(monkeypatch):
    monkeypatch.setattr(runtime, "PUBLIC", True)
    message = inputs.user_message(FileNotFoundError(2, "No such file", "/srv/private/data/MNIST/raw/train.gz"))
    assert "/srv/private" not in message and "train.gz" in message


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
