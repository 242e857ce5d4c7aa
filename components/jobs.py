"""Long compute jobs (distill, evaluate, labels, feature map): one helper gives each its own stop
signal and time cap, registers it with its session, and hands out the machine's compute slots
fairly.

Every compute handler enters the same way, through `guarded` (generators) or `run_blocking`
(plain functions): admitted or refused (`Busy`, beyond one running and one waiting job per
owner), a status line while it waits for a slot, the work under the time cap with `job.stop`
as its stop signal, and the slot released however it ends.

Fairness: gradio admits compute events freely (`ADMITTED` at a time) and this pool decides who
computes. `runtime.POOL` jobs run at once, at most one per owner (a browser session, a
gradio_client, or for plain-HTTP calls without a session, the caller's address; a feature map may
run beside its owner's distillation, which it follows live); each owner may have one more job
waiting, first come first served. So one visitor sending twenty requests holds one slot and one
place in line, and the other nineteen are refused at once with a message that says why.
"""
from __future__ import annotations

import heapq
import statistics
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

from . import runtime
from .inputs import UserError

T = TypeVar("T")
WAITING_PER_OWNER = 1  # jobs an owner may have waiting behind its running one
POLL_SECONDS = 1.0  # how often a waiting job reports its place in line
STOP_SETTLE = 3.0  # seconds a Stop handler waits for its job to end before saying "stopping…"
RECENT = 20  # finished jobs per kind whose durations give the typical expected wait
KINDS = ("distill", "evaluate", "labels", "map")
BESIDE = ("map",)  # kinds that may run beside their owner's other running job (short, and about that job)


class Busy(UserError):
    """The owner already has a job running and one waiting."""


@dataclass(eq=False)
class Job:
    """One long job: its own stop and cap, whatever else its session starts later."""

    session: object  # sessions.Session
    kind: str  # one of KINDS
    owner: str  # who the fairness rule counts: "session:<hash>" or "address:<ip>"
    stop: threading.Event = field(default_factory=threading.Event)
    cap_reached: threading.Event = field(default_factory=threading.Event)
    state: str = "waiting"  # waiting, running, ended
    cancelled: bool = False  # stopped (or its page closed) before it got a slot
    record: object = None  # what the job made, for its own outputs (a distillation's RunRecord)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # monotonic seconds when it got its slot
    deadline: float | None = None  # monotonic seconds when its current cap runs out

    @contextmanager
    def capped(self, seconds: float):
        """Run the body under a wall-clock cap that sets this job's stop (and says so)."""
        def reach():
            self.cap_reached.set()
            self.stop.set()

        self.deadline = time.monotonic() + seconds
        timer = threading.Timer(seconds, reach)
        timer.daemon = True
        timer.start()
        try:
            yield self
        finally:
            timer.cancel()


class ComputePool:
    """`slots` jobs at a time, one per owner, the rest in arrival order."""

    def __init__(self, slots: int):
        self.slots = slots
        self._cond = threading.Condition()
        self._running: list[Job] = []
        self._waiting: list[Job] = []
        self._took: dict[str, deque] = {kind: deque(maxlen=RECENT) for kind in KINDS}  # seconds each recent job held its slot

    def admit(self, session, kind: str, owner: str) -> Job:
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}; valid kinds are: {', '.join(KINDS)}")
        with self._cond:
            mine = [j for j in self._running + self._waiting if j.owner == owner]
            waiting = [j for j in mine if j.state == "waiting"]
            if len(waiting) >= WAITING_PER_OWNER or len(mine) >= 1 + WAITING_PER_OWNER:
                running = ", ".join(sorted({j.kind for j in mine}))
                raise Busy(f"You already have a job running and one waiting ({running}); this machine runs one job "
                           f"per visitor at a time and keeps one more in line. Wait for one to finish, or press "
                           f"Stop, then try again.")
            job = Job(session, kind, owner)
            self._waiting.append(job)
            session.jobs.append(job)
            self._start_if_free(job)
            return job

    def _start_if_free(self, job: Job) -> bool:
        if job.state == "waiting" and self._may_start(job):
            self._waiting.remove(job)
            self._running.append(job)
            job.state = "running"
            job.started_at = time.monotonic()
        return job.state == "running"

    def _owner_free(self, job: Job) -> bool:
        """No other job of the owner runs (a feature map may run beside its own distillation: the
        live map follows the run it draws)."""
        mine = [j for j in self._running if j.owner == job.owner]
        return not mine or job.kind in BESIDE or all(j.kind in BESIDE for j in mine)

    def _may_start(self, job: Job) -> bool:
        if len(self._running) >= self.slots or not self._owner_free(job):
            return False
        # First come, first served among the jobs that could start now.
        for other in self._waiting:
            if self._owner_free(other):
                return other is job
        return False

    def wait_turn(self, job: Job) -> Iterator[int]:
        """Yield how many jobs are ahead, about every POLL_SECONDS, until `job` may run (or was
        stopped while waiting: then `job.cancelled`)."""
        while True:
            with self._cond:
                if job.state == "running":
                    return
                if job.stop.is_set():
                    job.cancelled = True
                    self._end(job)
                    return
                if self._start_if_free(job):
                    return
                ahead = len(self._running) + self._waiting.index(job)
            yield ahead
            with self._cond:
                self._cond.wait_for(lambda: job.stop.is_set() or self._may_start(job), timeout=POLL_SECONDS)

    def release(self, job: Job) -> None:
        with self._cond:
            self._end(job)

    def _end(self, job: Job) -> None:
        if job in self._running and job.started_at is not None:
            self._took[job.kind].append(time.monotonic() - job.started_at)
        for queue in (self._running, self._waiting):
            if job in queue:
                queue.remove(job)
        job.state = "ended"
        if job in job.session.jobs:
            job.session.jobs.remove(job)
        job.session.touched = time.monotonic()  # its caller was just answered: idle from now, not from the job's start
        self._cond.notify_all()

    def expected_wait(self, job: Job, cap: float) -> "Wait":
        """When `job` should get a slot: the jobs ahead of it (those running, then those waiting
        before it) are laid onto the slots in order, each taking the median time of recent jobs of
        its kind (`typical`, None until some have finished), and at most its cap (`bound`: a job
        running now has its cap's time left; one not yet started, `cap` seconds)."""
        with self._cond:
            now = time.monotonic()
            ahead = self._waiting[:self._waiting.index(job)] if job in self._waiting else []
            typical_of = {k: statistics.median(v) for k, v in self._took.items() if v}
            left = [max(0.0, r.deadline - now) if r.deadline is not None else cap for r in self._running]
            seen = [now - r.started_at if r.started_at is not None else 0.0 for r in self._running]
            bound = _first_free(self.slots, left, [cap] * len(ahead))
            typical = None
            if all(j.kind in typical_of for j in self._running + ahead):
                left_typical = [min(b, max(0.0, typical_of[r.kind] - t)) for r, b, t in zip(self._running, left, seen)]
                typical = _first_free(self.slots, left_typical, [min(cap, typical_of[j.kind]) for j in ahead])
            measured = sum(len(self._took[j.kind]) for j in {j.kind: j for j in self._running + ahead}.values())
            return Wait(len(self._running) + len(ahead), typical, bound, cap, measured)

    def snapshot(self) -> dict[str, int]:
        with self._cond:
            return {"running": len(self._running), "waiting": len(self._waiting)}


def _first_free(slots: int, left: list[float], durations: list[float]) -> float:
    """Seconds until a slot is free for the next job after `durations` (in line, in order), given
    the seconds `left` of the jobs now running on `slots` slots."""
    free = sorted(left)[-slots:] if len(left) >= slots else sorted(left) + [0.0] * (slots - len(left))
    heapq.heapify(free)
    for seconds in durations:
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return free[0]


@dataclass(frozen=True)
class Wait:
    """A waiting job's expected wait, in seconds: `typical` from recent jobs' measured durations
    (None before any has finished), `bound` from the caps (no job runs past its cap)."""

    ahead: int
    typical: float | None
    bound: float
    cap: float  # seconds one job may run
    measured: int  # recent finished jobs behind `typical`


def duration_text(seconds: float) -> str:
    if seconds < 60:
        return f"{max(5, 5 * round(seconds / 5)):.0f} s"
    return f"{seconds / 60:.0f} min" if seconds >= 150 else f"{seconds / 60:.1f} min".replace(".0 min", " min")


POOL = ComputePool(runtime.POOL)
# Compute events gradio lets into handlers at once: the running ones plus a line for the others
# (each waiting handler holds one of gradio's 40 worker threads while it waits).
ADMITTED = runtime.POOL + 16
COMPUTE = dict(concurrency_id="compute", concurrency_limit=ADMITTED)  # every compute event's gradio settings


def owner_of(request) -> str:
    """Whom the fairness rule counts: the session, except for plain-HTTP calls that named none
    (gradio then makes up a fresh one per call), which are counted by the caller's address."""
    key = getattr(request, "session_hash", None) or "local"
    if _plain_http(request) and made_up(key):
        return f"address:{client_address(request)}"
    return f"session:{key}"


def _plain_http(request) -> bool:
    url = getattr(request, "url", None)
    return url is not None and "/call/" in str(getattr(url, "path", url))


def made_up(key: str) -> bool:
    return len(key) == 32 and all(c in "0123456789abcdef" for c in key)  # gradio's uuid4().hex event id


def client_address(request) -> str:
    headers = getattr(request, "headers", None) or {}
    forwarded = headers.get("x-forwarded-for", "") if hasattr(headers, "get") else ""
    if forwarded:
        return forwarded.split(",")[0].strip()
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or "unknown"


def admit(session, kind: str, owner: str) -> Job:
    return POOL.admit(session, kind, owner)


def wait_turn(job: Job) -> Iterator[int]:
    return POOL.wait_turn(job)


def release(job: Job) -> None:
    POOL.release(job)


def stop(session, kind: str, owner: str | None = None, settle: float = 0.0) -> int:
    """Set the stop of `session`'s jobs of `kind` (and, for an address owner, that owner's jobs of
    `kind` in other sessions: a plain-HTTP caller's run lives in a session of its own); wait up to
    `settle` seconds for them to end; returns how many are still running or waiting.

    A Stop handler settles before it answers: its "stopping…" line travels over its own request,
    which may land after the job's final status (sent on the page's event stream) and would
    then hide it. Once a job has ended its final status has been sent, so the handler says nothing."""
    with POOL._cond:
        found = [j for j in POOL._running + POOL._waiting if j.kind == kind and
                 (j.session is session or (owner is not None and owner.startswith("address:") and j.owner == owner))]
        for j in found:
            j.stop.set()
        POOL._cond.notify_all()
        POOL._cond.wait_for(lambda: all(j.state == "ended" for j in found), timeout=settle)
        return sum(j.state != "ended" for j in found)


def waiting_text(ahead: int, wait: Wait | None = None) -> str:
    """The queue banner: the place in line, and the expected wait with what it rests on."""
    line = (f"Waiting for a compute slot: {ahead} job{'s' if ahead != 1 else ''} ahead of yours "
            f"({runtime.POOL} run at a time, one per visitor).")
    if wait is None:
        return line
    cap = f"each is capped at {duration_text(wait.cap)}"
    if wait.typical is None:
        return f"{line} Expected wait: at most {duration_text(wait.bound)} ({cap}; no job has finished yet to time)."
    return (f"{line} Expected wait: about {duration_text(wait.typical)} (from how long the last {wait.measured} "
            f"such jobs took), at most {duration_text(wait.bound)} ({cap}).")


def guarded(session, kind: str, owner: str | None, work: Callable[[Job], Iterator[T]], *,
            say: Callable[[str, str], T], seconds: float | None = None) -> Iterator[T]:
    """The one way a generator handler runs a long job: admitted (or refused) for its owner, a
    status line while it waits, then `work(job)` under the cap (`seconds`; None: the work caps
    itself with job.capped), the slot released however it ends (a closed page included).
    `say(phase, text)` turns "error", "waiting" and "stopped" messages into the handler's outputs."""
    try:
        job = admit(session, kind, owner or f"session:{session.key}")
    except Busy as err:
        yield say("error", str(err))
        return
    try:
        for ahead in wait_turn(job):
            yield say("waiting", waiting_text(ahead, POOL.expected_wait(job, runtime.LIMITS.max_seconds)))
        if job.cancelled:
            yield say("stopped", "Stopped before it started: nothing was computed.")
            return
        if seconds is None:
            yield from work(job)
        else:
            with job.capped(seconds):
                yield from work(job)
    finally:
        # However the handler ended (a closed page closes the generator at a yield), work it left
        # running in a thread (a UMAP fit, a label run) sees its stop.
        job.stop.set()
        release(job)


def run_blocking(session, kind: str, owner: str, seconds: float, work):
    """For plain functions (the /evaluate endpoint): wait for a slot, then `work(job)` under the cap."""
    job = admit(session, kind, owner)
    try:
        for _ in wait_turn(job):
            pass
        if job.cancelled:
            raise UserError("Stopped before it started.")
        with job.capped(seconds):
            return work(job)
    finally:
        release(job)
