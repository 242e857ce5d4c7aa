"""The one distillation loop: runs a method step by step and yields snapshots.

It honours a stop signal between steps (and inside long steps and setups, which check it between
their pieces and raise `Interrupted`), is deterministic for a seed on the CPU, runs on CUDA
when present, and never hands back a corrupted set: a non-finite loss or image restores the
last good images and ends the run with a message.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from . import progress
from .data import Dataset
from .device import autocast, configure as configure_device, default_device
from .interrupt import Interrupted
from .methods.base import Method
from .synthetic import SyntheticSet, init_synthetic


@dataclass
class Snapshot:
    """The state of a run after `step` steps."""

    step: int
    total_steps: int
    synthetic: SyntheticSet  # a detached copy on the CPU; safe to keep
    stats: dict[str, float]
    elapsed: float  # seconds since the first step began
    status: str  # "running", "done", "stopped" or "failed"
    message: str = ""
    history: list[dict] = field(default_factory=list)  # every step's stats so far

    @property
    def finished(self) -> bool:
        return self.status != "running"

    @property
    def steps_per_second(self) -> float:
        return self.step / self.elapsed if self.elapsed > 0 else 0.0


class Gate:
    """Pause, step and resume for a running distillation: a condition variable the loop waits on
    between steps. `pause()` holds the run after its current step; `step()` lets exactly one more
    step through and holds again; `resume()` lets it run on. A stop signal always gets through."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._grants = 0  # steps allowed through while paused
        self._paused_since: float | None = None
        self.paused_seconds = 0.0  # time spent held, left out of a run's elapsed time

    @property
    def paused(self) -> bool:
        return self._paused

    def holds(self) -> bool:
        """Would the loop wait before its next step?"""
        with self._cond:
            return self._paused and self._grants == 0

    def pause(self) -> None:
        with self._cond:
            if not self._paused:
                self._paused, self._grants, self._paused_since = True, 0, time.perf_counter()
            self._cond.notify_all()

    def step(self, n: int = 1) -> None:
        with self._cond:
            if not self._paused:
                self.pause()
            self._grants += n
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            if self._paused and self._paused_since is not None:
                self.paused_seconds += time.perf_counter() - self._paused_since
            self._paused, self._grants, self._paused_since = False, 0, None
            self._cond.notify_all()

    def wait(self, stop: threading.Event | None = None, poll: float = 0.1) -> bool:
        """Block while held; True when a granted step was taken (the loop then yields it). The time
        a granted step works is run time, not held time."""
        with self._cond:
            if self._paused and self._paused_since is None:  # held again after a granted step
                self._paused_since = time.perf_counter()
            while self._paused and self._grants == 0 and not (stop is not None and stop.is_set()):
                self._cond.wait(poll)  # the poll lets a stop set elsewhere get through
            if self._paused and self._grants > 0:
                self._grants -= 1
                if self._paused_since is not None:
                    self.paused_seconds += time.perf_counter() - self._paused_since
                    self._paused_since = None
                return True
            return False

    def held_seconds(self) -> float:
        with self._cond:
            now = self.paused_seconds
            if self._paused_since is not None:
                now += time.perf_counter() - self._paused_since
            return now


@dataclass
class Resume:
    """Where a run left off between two calls of distill() (a ZeroGPU Space runs a long distillation
    as a series of short GPU calls): `step` steps are done, the method passed in is already set up
    and carries its state (images, optimizer, learned labels or lr), and `synthetic` holds the set's
    provenance. The caller restores the global RNG state if it wants the uninterrupted run's draws."""

    step: int
    synthetic: SyntheticSet
    elapsed: float = 0.0  # seconds of work before this call, so elapsed and steps/s run on


def _finite(stats: dict[str, float], images: torch.Tensor) -> bool:
    return all(math.isfinite(v) for v in stats.values()) and bool(torch.isfinite(images).all())


SETTING_UP = "setting up: "  # the message of a snapshot yielded while a long set-up reports its progress


def _set_up(method: Method, dataset: Dataset, syn: SyntheticSet, *, seed: int, device, every: float) -> Iterator[str]:
    """Run `method.setup` in a thread of its own; while it runs, yield every `every` seconds what it reports
    through `progress` (a teacher's training: steps done and about how long is left), if anything. Its
    exception (`Interrupted` by the run's stop, or any error) is raised here, in the caller's thread.
    The thread keeps the caller's grad mode; the global RNG it draws from is the process's, as before.
    A run closed while setting up still waits for its set-up, as when the set-up ran in the caller's thread:
    the job keeps its compute slot until the work ends (the run's stop is what ends it early)."""
    report, grad = progress.Progress(), torch.is_grad_enabled()

    def work():
        with progress.reporting(report), torch.set_grad_enabled(grad):
            method.setup(dataset, syn, seed=seed, device=device)

    for tick in progress.in_thread(work, every, wait_on_close=True, name="dd-setup"):
        if not isinstance(tick, tuple) and report.active:
            yield report.text()


def distill(dataset: Dataset, method: Method, *, method_name: str, ipc: int, steps: int, seed: int = 0,
            init: str = "real", initial: SyntheticSet | None = None, snapshot_every: int = 10,
            snapshot_seconds: float | None = None, stop: threading.Event | None = None,
            device: torch.device | None = None, gate: Gate | None = None, resume: Resume | None = None,
            until: int | None = None) -> Iterator[Snapshot]:
    """Run `method` for `steps` steps; yield a Snapshot every `snapshot_every` steps (or every
    `snapshot_seconds` of work, whichever comes first) and a final one whose status says how it ended.
    With a `gate`, a held run yields one snapshot with message "paused" and waits; every step let
    through while paused is yielded.
    `until`: do steps only up to that one; a run not yet at `steps` then yields a "running" snapshot
    of it last. `resume`: go on from a Resume instead of setting up (no "initialised" snapshot)."""
    device = device or default_device()
    configure_device(device)
    if resume is None:
        torch.manual_seed(seed)  # anything a method draws outside its own generator is reproducible too
    syn = (resume.synthetic.clone() if resume is not None else
           initial.clone() if initial is not None else init_synthetic(dataset, ipc, init=init, seed=seed))
    syn.method, syn.seed, syn.config = method_name, seed, method.config()
    method.stop_ = stop
    history: list[dict] = []
    good, t0 = syn.images.detach().cpu().clone(), time.perf_counter()
    held_before = 0.0  # the gate's held time when the first step began

    def snapshot(step: int, status: str, message: str = "") -> Snapshot:
        out = syn.clone()
        out.images, out.steps = good.clone(), step
        held = gate.held_seconds() - held_before if gate is not None else 0.0
        return Snapshot(step, steps, out, dict(history[-1]) if history else {}, time.perf_counter() - t0 - held,
                        status, message, list(history))

    try:
        if resume is None:
            for text in _set_up(method, dataset, syn, seed=seed, device=device, every=snapshot_seconds or 1.0):
                yield snapshot(0, "running", SETTING_UP + text)
    except Interrupted:  # e.g. a long feature-network training: keep the initial images
        yield snapshot(0, "stopped", "stopped while setting up, before step 1; kept the initial images")
        return
    good = method.images().cpu().clone()
    t0 = last_yield = time.perf_counter()
    t0 -= resume.elapsed if resume is not None else 0.0
    held_before = gate.held_seconds() if gate is not None else 0.0  # a pause during set-up is not run time
    if resume is None:
        yield snapshot(0, "running", "initialised")
    shown = -1  # the last step yielded with its own snapshot (-1: none yet, so a run held at once says so)
    if not method.learns_images:
        steps = min(steps, 1)  # a coreset is chosen in one step
    first = resume.step + 1 if resume is not None else 1
    end = steps if until is None else min(steps, until)
    for step in range(first, end + 1):
        stepping = False
        if gate is not None and gate.holds():
            if shown != step - 1:
                shown = step - 1
                yield snapshot(step - 1, "running", "paused")
            stepping = gate.wait(stop)
        if stop is not None and stop.is_set():
            yield snapshot(step - 1, "stopped", f"stopped at step {step - 1} of {steps}")
            return
        try:
            with autocast(device):  # bf16 on CUDA only when DD_AMP=bf16 (device.py); a no-op otherwise
                stats = method.step()
        except Interrupted:
            method.restore(good)
            yield snapshot(step - 1, "stopped", f"stopped during step {step}; kept the images of step {step - 1}")
            return
        except RuntimeError as err:  # e.g. out of memory: keep what we have
            method.restore(good)
            yield snapshot(step - 1, "failed", f"step {step} failed ({err}); kept the images of step {step - 1}")
            return
        images = method.images()
        if not _finite(stats, images):
            method.restore(good)
            yield snapshot(step - 1, "failed", f"step {step} gave a non-finite loss or image {stats}; "
                                               f"kept the images of step {step - 1}. Try a lower learning rate.")
            return
        good = images.cpu().clone()
        history.append({"step": step, **stats})
        now = time.perf_counter()
        due = step % snapshot_every == 0 or (snapshot_seconds is not None and now - last_yield >= snapshot_seconds)
        if (due or stepping) and step < end:
            last_yield, shown = now, step
            yield snapshot(step, "running", "stepped" if stepping else "")
    if end < steps:
        if end >= first:  # this call did steps; a set-up-only call (until=0) ends at "initialised"
            yield snapshot(end, "running", f"reached step {end} of {steps}")
        return
    yield snapshot(steps, "done", f"finished {steps} steps")


def run_to_end(dataset: Dataset, method: Method, **kw) -> Snapshot:
    """Run a distillation headless and return its final snapshot."""
    last = None
    for last in distill(dataset, method, **kw):
        pass
    return last


def time_budget(minutes: float | None, stop: threading.Event | None = None) -> tuple[threading.Event, threading.Timer | None]:
    """A stop event that sets itself after `minutes` of wall time (setup included), so a run does at
    most that much work and ends with status "stopped" and its last good images. Cancel the timer
    when the run ends."""
    stop = stop or threading.Event()
    if minutes is None:
        return stop, None
    if minutes <= 0:
        raise ValueError(f"a time budget must be positive, got {minutes} minutes")
    timer = threading.Timer(minutes * 60, stop.set)
    timer.daemon = True
    timer.start()
    return stop, timer
