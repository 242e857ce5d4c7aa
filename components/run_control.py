"""Pause, Step and Resume for a session's distillation, and the words a run ends with.

The run itself waits on a `dd_core.distill.Gate` between steps; these quick handlers (no compute,
queue=False) only flip it. While held, the run keeps its compute slot and its time cap keeps
counting, so a paused run on a busy machine ends at the cap like any other.
"""
from __future__ import annotations

import threading

import gradio as gr

from dd_core.distill import Gate, Snapshot

from .runtime import LIMITS
from .sessions import Session, forget_with_session, session_for

INIT_CHOICES = [("random real images", "real"), ("noise", "noise")]
_gates: dict[str, Gate] = {}  # session key -> the gate of its latest run
_lock = threading.Lock()


def new_gate(session: Session, *, paused: bool = False) -> Gate:
    """A fresh gate for the session's new run (held at once when `paused`)."""
    gate = Gate()
    if paused:
        gate.pause()
    with _lock:
        _gates[session.key] = gate
    return gate


def gate_of(session: Session) -> Gate | None:
    with _lock:
        return _gates.get(session.key)


@forget_with_session
def forget_key(key: str) -> None:
    """When the session is dropped (its page closed, or idle: an API caller's session has a gate but
    never a page to close); its run is being stopped by the session's clean-up."""
    with _lock:
        gate = _gates.pop(key, None)
        _start_paused.discard(key)
    if gate is not None:
        gate.resume()


def _running(session: Session) -> bool:
    run = session.run
    return run is not None and run.status == "running" and gate_of(session) is not None


# On success the buttons leave the status line to the run: their answer travels by plain HTTP and
# the run's by the queue, so a late "One more step…" could overwrite the "Paused at step 2" the
# step already produced, and stay there while the run is held. They say what they did in a toast.


def pause(request: gr.Request = None):
    session = session_for(request)
    if not _running(session):
        return "Nothing is running to pause: press **Distill** first."
    gate_of(session).pause()
    gr.Info("Pausing after the current step…")
    return gr.skip()


def step(request: gr.Request = None):
    session = session_for(request)
    if not _running(session):
        return "Nothing is running to step: press **Distill** first."
    gate_of(session).step()
    return gr.skip()  # the grid redraws and the run's line says the new step


def resume(request: gr.Request = None):
    session = session_for(request)
    if not _running(session):
        return "Nothing is paused: press **Distill** first."
    gate_of(session).resume()
    gr.Info("Resumed.")
    return gr.skip()


def paused_text(snap: Snapshot) -> str:
    return (f"Paused at step **{snap.step}** of {snap.total_steps}. **Step** runs one more iteration, **Resume** "
            f"carries on; drag the slider under the grid to look back. (The run keeps its place in the compute "
            f"pool, and its {LIMITS.max_seconds / 60:g}-minute limit keeps counting.)")


def done_text(snap: Snapshot, learns_images: bool) -> str:
    """The last status line of a finished run. A coreset makes one selection, not steps."""
    if not learns_images:
        return f"Done: selected {len(snap.synthetic.labels)} real images in {snap.elapsed:.1f} s."
    noun = "step" if snap.step == 1 else "steps"
    return f"Done: {snap.step} {noun} in {snap.elapsed:.1f} s ({snap.steps_per_second:.1f} steps/s)."


_start_paused: set[str] = set()  # sessions whose next run starts held (a link with paused=1)


def start_paused_next(session_key: str, paused: bool) -> None:
    with _lock:
        (_start_paused.add if paused else _start_paused.discard)(session_key)


def take_start_paused(request: gr.Request | None) -> bool:
    """Whether this session's run about to start should start held; asked once per run."""
    key = getattr(request, "session_hash", None) or "local"
    with _lock:
        if key in _start_paused:
            _start_paused.discard(key)
            return True
        return False
