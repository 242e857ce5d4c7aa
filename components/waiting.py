"""Long preparations with a visible clock: run a function in a thread and report, every second,
how long it has taken against an estimate, so a person never stares at an indeterminate bar."""
from __future__ import annotations

from typing import Callable, Iterator, TypeVar

from dd_core import progress

T = TypeVar("T")
# Measured here on 2 cores (issue 19): MNIST's feature network took about 80 s to train the first
# time (60,000 images of 784 pixels) and its first UMAP about 118 s, numba's compilation included.
FEATURES_SECONDS_PER_PIXEL = 80 / (60_000 * 784)
UMAP_FIRST_SECONDS = 120


def features_estimate(dataset_size: int, pixels: int) -> float:
    """Seconds to train a dataset's feature network the first time (afterwards it is cached)."""
    return max(3.0, FEATURES_SECONDS_PER_PIXEL * dataset_size * pixels)


def progress_text(what: str, elapsed: float, estimate: float | None) -> str:
    if estimate is None:
        return f"… {what}: {elapsed:.0f} s so far"
    frac = min(0.95, elapsed / estimate) if estimate > 0 else 0.0
    bar = "█" * int(frac * 20) + "░" * (20 - int(frac * 20))
    return (f"… {what}: {elapsed:.0f} s of about {estimate:.0f} s `{bar}` "
            f"(an estimate for the first time; cached afterwards)")


def with_clock(work: Callable[[], T], every: float = 1.0) -> Iterator[float | tuple[str, T]]:
    """Yield the seconds elapsed every `every` seconds while `work()` runs in a thread, then
    ("done", result); an exception inside `work` is raised here."""
    return progress.in_thread(work, every)
