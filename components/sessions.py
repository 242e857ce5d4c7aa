"""Per-browser-session state: each session's runs, jobs, files and pinned results.

Module-level objects are shared by every user, so everything a user makes lives in a `Session`
looked up by gradio's `session_hash` and dropped when the page is closed (demo.unload), or when
it has had no job, no request waiting or running anywhere (`in_use_while`: gradio's own queue) and
no activity for `IDLE_SECONDS`: API callers never close a page, and an open page keeps its session
alive with a light ping (`keep_alive`). Nothing here is shared between sessions.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch

from dd_core.cache import pid_alive, sweep_temporaries
from dd_core.synthetic import SyntheticSet
from dd_core.umap_worker import repair_numba_cache

SNAPSHOT_BUDGET = 64 * 2**20  # bytes of kept snapshot images per run (scrubbing, GIF, paths)
MAX_KEPT = 60  # snapshots kept per run at most
IDLE_SECONDS = 60 * float(os.environ.get("DISTILLERY_IDLE_MINUTES", 15))  # idle sessions are dropped after this
KEEP_ALIVE_SECONDS = 60  # an open page touches its session this often (far below IDLE_SECONDS)
SWEEP_SECONDS = 30  # how often the idle sweep runs, whether or not anyone calls
FOLDER_PREFIX = "distillery-"  # session folders: distillery-<pid>-<random>, so leftovers of dead processes are known


@dataclass
class RunRecord:
    """One distillation run: its settings, the snapshots kept for scrubbing, and its files."""

    dataset: str  # as requested, e.g. "digits" or "folder:/full/path" (what load_dataset needs)
    method: str
    ipc: int
    steps: int
    seed: int
    kept: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (step, images (n, c, h, w))
    final: SyntheticSet | None = None
    history: list[dict] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)  # kind -> path (safetensors, png, zip, gif)
    status: str = "running"
    message: str = ""
    dataset_name: str = ""  # Dataset.name, as written in the set's file ("folder:<last part>")
    elapsed: float = 0.0  # seconds of distillation (from the first step), once the run has ended
    _stride: int = 1  # keep every `_stride`-th offered snapshot; doubles when the budget is full
    _offered: int = 0

    def keep(self, step: int, images: torch.Tensor) -> None:
        """Keep a thinned history: when full, drop every other kept snapshot (the first stays)."""
        self._offered += 1
        if (self._offered - 1) % self._stride:
            return
        self.kept.append((step, images.detach().cpu().clone()))
        limit = max(4, min(MAX_KEPT, SNAPSHOT_BUDGET // max(1, images.numel() * 4)))
        if len(self.kept) > limit:
            self.kept = self.kept[::2]
            self._stride *= 2

    def keep_last(self, step: int, images: torch.Tensor) -> None:
        """The final images are always kept, whatever the stride."""
        if self.kept and self.kept[-1][0] == step:
            self.kept[-1] = (step, images.detach().cpu().clone())
        else:
            self.kept.append((step, images.detach().cpu().clone()))

    def set_at(self, index: int) -> SyntheticSet | None:
        """The synthetic set as it was at kept snapshot `index`."""
        if self.final is None or not self.kept:
            return None
        index = min(max(0, int(index)), len(self.kept) - 1)
        step, images = self.kept[index]
        syn = self.final.clone()
        syn.images, syn.steps = images.clone(), step
        return syn


@dataclass
class Session:
    """Everything one browser session owns."""

    key: str
    folder: Path
    jobs: list = field(default_factory=list)  # jobs.Job: running and waiting, each with its own stop and cap
    run: RunRecord | None = None  # the latest distillation run that started
    pinned: list[dict] = field(default_factory=list)  # rows of the comparison table
    last_eval: dict | None = None  # the latest evaluation's row, until it is pinned
    feature_view: object = None  # the last feature_view.MapView drawn (for the nearest-real pairs)
    touched: float = field(default_factory=time.monotonic)
    saves: int = 0  # counter for unique file names of the current set
    closed: bool = False  # the page was closed: running work must stop and write nothing more

    def new_file(self, stem: str, suffix: str) -> Path:
        self.saves += 1
        return self.folder / f"{stem}-{self.saves:04d}{suffix}"

    def current(self) -> SyntheticSet | None:
        """The latest synthetic set of this session's run (during a run: its last snapshot)."""
        return self.run.final if self.run is not None else None


_sessions: dict[str, Session] = {}
_lock = threading.Lock()
_sweeper: threading.Thread | None = None
_forgetters: list = []  # fn(key) of other modules' tables keyed by session (run_control's gates, selection)


_on_sweep: list = []  # fn(live session keys), run at every idle sweep
_in_use: list = []  # fn(key) -> bool: the session's caller has a request waiting or running elsewhere


def in_use_while(fn):
    """Register `fn(session_key) -> bool`, asked before an idle session is dropped: True keeps it.
    A request can wait in gradio's queue for minutes before any handler of ours sees it (gradio
    admits a fixed number of compute events), with no job registered and no page to ping; its
    session must still be there, with its set, when the request's turn comes."""
    _in_use.append(fn)
    return fn


def on_sweep(fn):
    """Register `fn(live_keys)`, run after every idle sweep with the keys of the sessions that remain."""
    _on_sweep.append(fn)
    return fn


def forget_with_session(fn):
    """Register `fn(session_key)`, called whenever a session is dropped (page closed, or idle: API
    callers never close a page), so that no table keyed by session outlives its session."""
    _forgetters.append(fn)
    return fn


def session_for(request: gr.Request | None) -> Session:
    """The caller's session (created on first use); `request` is a gr.Request or None (tests)."""
    key = getattr(request, "session_hash", None) or "local"
    now = time.monotonic()
    _start_sweeper()
    with _lock:
        _drop_idle(now, keep=key)
        s = _sessions.get(key)
        if s is None:
            s = Session(key, Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")))
            _sessions[key] = s
        s.touched = now
        return s


def keep_alive(request: gr.Request = None) -> None:
    """An open page's ping: its session is in use even when nobody clicks."""
    key = getattr(request, "session_hash", None)
    with _lock:
        s = _sessions.get(key) if key else None
        if s is not None:
            s.touched = time.monotonic()


def _drop_idle(now: float, keep: str | None = None) -> int:
    """Drop sessions that nobody touched for IDLE_SECONDS and that have no job of ours and no request
    waiting or running elsewhere (call with _lock held). A job's end touches its session (jobs.py),
    so the idle time counts from the caller's last answer, not from when its last job began."""
    stale = [k for k, s in _sessions.items() if k != keep and not s.jobs and now - s.touched > IDLE_SECONDS
             and not any(in_use(k) for in_use in _in_use)]
    for k in stale:
        _discard(_sessions.pop(k))
    return len(stale)


def sweep_idle() -> int:
    with _lock:
        dropped = _drop_idle(time.monotonic())
        live = set(_sessions)
    for fn in _on_sweep:
        fn(live)
    if dropped:
        release_memory()
    return dropped


def release_memory() -> None:
    """Hand freed heap back to the system (glibc keeps it otherwise, so a server's resident memory
    stays at its peak long after the sessions that needed it are gone)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _start_sweeper() -> None:
    global _sweeper
    if _sweeper is not None:
        return
    def loop():
        while True:
            time.sleep(SWEEP_SECONDS)
            try:
                sweep_idle()
            except Exception:  # noqa: BLE001 - a failing hook must not end the sweeping for good
                logging.getLogger("distillery.app").exception("idle sweep failed; trying again in %d s", SWEEP_SECONDS)
    _sweeper = threading.Thread(target=loop, name="session-sweeper", daemon=True)
    _sweeper.start()


def sweep_leftovers(root: Path | None = None) -> int:
    """Remove session folders of processes that no longer run (a crash leaves them); returns bytes freed."""
    root = Path(root or tempfile.gettempdir())
    freed = 0
    for folder in root.glob(f"{FOLDER_PREFIX}*"):
        try:
            pid = int(folder.name[len(FOLDER_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid() or pid_alive(pid) or not folder.is_dir():
            continue
        freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        shutil.rmtree(folder, ignore_errors=True)
    return freed


def sweep_at_start() -> None:
    """At launch: session folders of dead processes, half-written cache files, and numba cache
    entries that no longer read (each would otherwise stay until someone deletes it by hand)."""
    freed = sweep_leftovers() + sweep_temporaries()
    repaired = repair_numba_cache(os.environ.get("NUMBA_CACHE_DIR"))
    if freed or repaired:
        logging.getLogger("distillery.app").warning("start-up sweep: freed %d bytes of leftovers, removed %d "
                                                    "unreadable numba cache entries", freed, repaired)


def drop_session(request: gr.Request) -> None:
    """Called when the page is closed: stop the session's work and free its memory and files."""
    key = getattr(request, "session_hash", None) or "local"
    with _lock:
        s = _sessions.pop(key, None)
    if s is not None:
        _discard(s)
        release_memory()


def _discard(s: Session) -> None:
    s.closed = True
    for job in list(s.jobs):
        job.stop.set()
    s.run = s.feature_view = s.last_eval = None
    for forget in _forgetters:
        forget(s.key)
    shutil.rmtree(s.folder, ignore_errors=True)


def active_sessions() -> int:
    with _lock:
        return len(_sessions)
