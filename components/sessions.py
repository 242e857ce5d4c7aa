"""Per-browser-session state: each session's runs, stop signal, files and pinned results.

Module-level objects are shared by every user, so everything a user makes lives in a `Session`
looked up by gradio's `session_hash` and dropped when the page is closed (demo.unload) or after
a day without activity. Nothing here is shared between sessions.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch

from dd_core.synthetic import SyntheticSet

SNAPSHOT_BUDGET = 64 * 2**20  # bytes of kept snapshot images per run (scrubbing, GIF, paths)
MAX_KEPT = 60  # snapshots kept per run at most
IDLE_SECONDS = 24 * 3600  # a session untouched this long is dropped (API clients never "close the tab")


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
    stop: threading.Event = field(default_factory=threading.Event)
    eval_stop: threading.Event = field(default_factory=threading.Event)
    run: RunRecord | None = None
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


def session_for(request: gr.Request | None) -> Session:
    """The caller's session (created on first use); `request` is a gr.Request or None (tests)."""
    key = getattr(request, "session_hash", None) or "local"
    now = time.monotonic()
    with _lock:
        for stale in [k for k, s in _sessions.items() if now - s.touched > IDLE_SECONDS and k != key]:
            _discard(_sessions.pop(stale))
        s = _sessions.get(key)
        if s is None:
            s = Session(key, Path(tempfile.mkdtemp(prefix="distillery-")))
            _sessions[key] = s
        s.touched = now
        return s


def drop_session(request: gr.Request) -> None:
    """Called when the page is closed: stop the session's work and free its memory and files."""
    key = getattr(request, "session_hash", None) or "local"
    with _lock:
        s = _sessions.pop(key, None)
    if s is not None:
        _discard(s)


def _discard(s: Session) -> None:
    s.closed = True
    s.stop.set()
    s.eval_stop.set()
    s.run = None
    shutil.rmtree(s.folder, ignore_errors=True)


def active_sessions() -> int:
    with _lock:
        return len(_sessions)
