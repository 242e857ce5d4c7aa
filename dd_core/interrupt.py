"""Cooperative interruption inside long work: a step with many inner loops, or the training of a
feature network. Python threads cannot be pre-empted, so long loops call `check(stop)` between
their pieces; the caller catches `Interrupted` and keeps what it had before the work began."""
from __future__ import annotations

import threading


class Interrupted(Exception):
    """The stop signal was set while a long computation ran; its partial result is discarded."""


def check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Interrupted
