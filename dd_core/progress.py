"""Progress of long set-up work (a teacher trained on the whole training set before a decoupled method's
first step), so that whoever watches a run sees how far it is and about how long is left, not a silent wait.

The run's loop opens a `Progress` around a method's set-up (`reporting`); work deep inside it, such as
`teachers.train_teacher`, finds it with `current()` and reports without any argument passed down to it.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

_current: contextvars.ContextVar["Progress | None"] = contextvars.ContextVar("dd_progress", default=None)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """One piece of work at a time: what it is, units done of a total, and when it began. Thread-safe:
    the work advances it in one thread, a watcher reads `text()` in another."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._lock = threading.Lock()
        self.what, self.unit, self.done, self.total, self.started = "", "", 0, 0, 0.0

    def begin(self, what: str, total: int, unit: str = "steps") -> None:
        with self._lock:
            self.what, self.unit, self.done, self.total, self.started = what, unit, 0, max(0, int(total)), self._clock()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done = min(self.total, self.done + n) if self.total else self.done + n

    def end(self) -> None:
        with self._lock:
            self.what = ""

    @property
    def active(self) -> bool:
        return bool(self.what)

    def text(self) -> str:
        """'training the X teacher: 120 of 5,865 steps (2 %), 1 min so far, about 55 min left', or '' when idle.
        The estimate is the pace so far carried over what is left (none before the first unit is done)."""
        with self._lock:
            what, unit, done, total, started = self.what, self.unit, self.done, self.total, self.started
        if not what:
            return ""
        elapsed = self._clock() - started
        parts = [f"{done:,} of {total:,} {unit} ({100 * done / total:.0f} %)" if total else f"{done:,} {unit}",
                 f"{_duration(elapsed)} so far"]
        if total and 0 < done < total:
            parts.append(f"about {_duration(elapsed / done * (total - done))} left")
        return f"{what}: " + ", ".join(parts)


def current() -> Progress | None:
    """The progress the running set-up reports to, if a watcher opened one."""
    return _current.get()


@contextlib.contextmanager
def reporting(progress: Progress) -> Iterator[Progress]:
    """Make `progress` the current one for the work inside the block (this thread's context)."""
    token = _current.set(progress)
    try:
        yield progress
    finally:
        _current.reset(token)


@contextlib.contextmanager
def task(what: str, total: int, unit: str = "steps") -> Iterator[None]:
    """Report one piece of work (`advance()` inside it counts its units) to the current progress, if a
    watcher opened one; nothing otherwise."""
    report = current()
    if report is None:
        yield
        return
    report.begin(what, total, unit)
    try:
        yield
    finally:
        report.end()


def advance(n: int = 1) -> None:
    """One more unit of the current task done (a training step); nothing when nobody watches."""
    report = current()
    if report is not None:
        report.advance(n)


def in_thread(work: Callable[[], T], every: float, *, wait_on_close: bool = False,
              name: str = "dd-work") -> Iterator[float | tuple[str, T]]:
    """Run `work()` in a thread of its own under the caller's context (so `current()` reaches it); yield the
    seconds elapsed every `every` seconds while it runs, then ("done", result). Its exception is raised here,
    in the caller's thread. `wait_on_close`: a consumer that stops early still waits for the work to end."""
    box: dict = {}
    context = contextvars.copy_context()

    def target():
        try:
            box["result"] = context.run(work)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name=name, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    try:
        while thread.is_alive():
            thread.join(every)
            if thread.is_alive():
                yield time.perf_counter() - t0
    finally:
        if wait_on_close:
            thread.join()
    if "error" in box:
        raise box["error"]
    yield "done", box["result"]
