"""One distillation run for one session: checks, loading, the engine loop with caps, kept
snapshots and files. Yields `Tick`s; the Distill tab and the /distill API each render them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dd_core import memory
from dd_core.distill import SETTING_UP, Snapshot
from dd_core.methods import METHODS, make_method
from dd_core.methods.base import PRESETS
from dd_core.synthetic import INITS

from . import inputs, jobs, run_control, runtime
from .exports import save_current, write_exports
from .runtime import LIMITS
from .sessions import RunRecord, Session
from .zerogpu import distill  # the engine's loop; on a ZeroGPU Space a series of GPU calls

SNAPSHOT_SECONDS = 0.5  # work between two UI updates; a stop takes effect within this
SAVE_SECONDS = 2.0  # how often the current set is written to disk for the Labels tab


@dataclass
class Tick:
    """What a run has to say at one moment."""

    phase: str  # waiting, loading, warming, distilling, paused, done, stopped, failed, error
    text: str  # the status line
    snapshot: Snapshot | None = None
    saved: Path | None = None  # a freshly saved current set (.safetensors), if any
    record: RunRecord | None = None  # on the last tick: this run's record (its kept snapshots and files)
    selection: dict | None = None  # a selecting method's last choice (RDED: candidate and kept crops)

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "stopped", "failed", "error")


@dataclass(frozen=True)
class Request:
    """A checked request: what the engine needs, in engine terms."""

    dataset: str
    method: str
    ipc: int
    steps: int
    seed: int
    preset: str = "fast"
    overrides: dict | None = None
    init: str = "real"  # where the images start: random real images of each class, or noise
    paused: bool = False  # start held at step 0 (a lesson that steps through a run)


def check_request(dataset_choice, folder, method, ipc, steps, seed, preset="fast", overrides=None, init="real",
                  paused=False) -> Request:
    """Everything that can be checked before loading data; raises UserError."""
    name = inputs.dataset_name(dataset_choice, folder)
    method = inputs.check_method(method)
    ipc = inputs.check_ipc_value(ipc)
    steps = inputs.check_steps(steps)
    seed = inputs.check_seed(seed)
    if preset not in PRESETS:
        raise inputs.UserError(f"Unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    if init not in INITS:
        raise inputs.UserError(f"Unknown start {init!r}; choose one of: {', '.join(INITS)}.")
    return Request(name, method, ipc, steps, seed, preset, dict(overrides or {}), init, bool(paused))


def check_memory(method, dataset, ipc: int) -> None:
    """Refuse a run whose estimated peak memory is above this machine's budget per run."""
    need = memory.estimate_bytes(method, dataset, ipc)
    if need > runtime.MAX_MEMORY_BYTES:
        raise inputs.UserError(
            f"This run would need about {memory.human(need)} of memory; this machine allows "
            f"{memory.human(runtime.MAX_MEMORY_BYTES)} per run (DISTILLERY_MAX_MEMORY_MB). Lower the IPC, the "
            f"real batch (batch_real) or the network's width (model), or use the fast preset.")


def _stop_text(snap: Snapshot, capped: bool) -> str:
    why = (f"reached this machine's limit of {LIMITS.max_seconds / 60:g} minutes per run" if capped
           else "you pressed Stop")
    # The engine says more when the stop came inside a step or the set-up; not when between steps.
    detail = "" if snap.message.startswith("stopped at step") else f" ({snap.message})"
    return f"Stopped at step {snap.step} of {snap.total_steps}: {why}{detail}. Everything made so far is kept."


def run(session: Session, req: Request, owner: str | None = None) -> Iterator[Tick]:
    """Validate against the data, wait for a compute slot, then distill; never raises for a user's
    mistake. The run owns its stop, its cap and its files: a later run of the same session (which
    waits behind this one) changes none of them."""
    yield from jobs.guarded(session, "distill", owner, lambda job: _run(session, req, job), say=Tick)


def _run(session: Session, req: Request, job: jobs.Job) -> Iterator[Tick]:
    yield Tick("loading", f"Loading dataset **{req.dataset}**…")
    try:
        dataset = inputs.open_dataset(req.dataset)
        inputs.check_ipc_value(req.ipc, dataset)
        method = make_method(req.method, preset=req.preset, dataset=dataset.name, ipc=req.ipc, **req.overrides)
        check_memory(method, dataset, req.ipc)
    except Exception as err:  # noqa: BLE001 - every failure becomes a message in the page
        yield Tick("error", inputs.user_message(err))
        return
    learns = METHODS.get(req.method).learns_images
    record = RunRecord(req.dataset, req.method, req.ipc, req.steps, req.seed, dataset_name=dataset.name)
    session.run = job.record = record
    skipped = "".join(f" ({part.strip()})" for part in dataset.split_note.split(";") if "unreadable" in part)
    yield Tick("warming", ("Warming up: building the networks and the first batch…" if learns else
               "Selecting real images (herding and k-center train a feature network on first use; cached afterwards)…")
               + skipped)
    # The machine's cap on one run, setup included: it sets this run's own stop, which the engine
    # honours between steps and inside long ones (a feature network's training, DC's loops).
    last_save = 0.0
    gate = run_control.new_gate(session, paused=req.paused)  # Pause / Step / Resume of this run
    with job.capped(LIMITS.max_seconds):
        try:
            for snap in distill(dataset, method, method_name=req.method, ipc=req.ipc, steps=req.steps, seed=req.seed,
                                init=req.init, snapshot_every=10**9, snapshot_seconds=SNAPSHOT_SECONDS,
                                stop=job.stop, gate=gate):
                record.final, record.history = snap.synthetic, snap.history
                record.keep(snap.step, snap.synthetic.images)
                if session.closed:
                    return
                if snap.finished:
                    break
                saved = None
                if time.perf_counter() - last_save >= SAVE_SECONDS:
                    saved, last_save = save_current(session, record), time.perf_counter()
                phase = "warming" if snap.step == 0 else "distilling"
                text = (setup_text(snap.message) if snap.step == 0 else
                        f"Distilling with **{req.method}** on **{dataset.name}**, IPC {req.ipc}…")
                if snap.message in ("paused", "stepped"):
                    phase, text = "paused", run_control.paused_text(snap)
                yield Tick(phase, text, snap, saved, selection=selection_of(method))
        except Exception as err:  # noqa: BLE001
            record.status, record.message = "failed", inputs.user_message(err)
            if record.final is not None:
                record.keep_last(record.final.steps, record.final.images)
                write_exports(session, record)
            yield Tick("error", record.message, None, save_current(session, record), record)
            return
    record.keep_last(snap.step, snap.synthetic.images)
    record.status, record.elapsed = snap.status, snap.elapsed
    if snap.status == "stopped":
        record.message = _stop_text(snap, job.cap_reached.is_set())
    elif snap.status == "failed":
        record.message = f"Ended early: {snap.message}"
    else:
        record.message = run_control.done_text(snap, learns)
    write_exports(session, record)
    yield Tick(snap.status, record.message, snap, save_current(session, record), record, selection_of(method))


def setup_text(message: str) -> str:
    """The status line before step 1: what a long set-up reports (a teacher's training, with about how long
    is left), else the plain warming-up line."""
    if message.startswith(SETTING_UP):
        return f"Warming up, {message[len(SETTING_UP):]}…"
    return "Warming up: the first step builds the networks…"


def selection_of(method) -> dict | None:
    """What a selecting method chose at its last step (`selection()`, RDED), or None."""
    show = getattr(method, "selection", None)
    return show() if callable(show) else None
