"""Timing the plain `forward` against ConvNet's fast CPU path inside one process, taking turns."""
from __future__ import annotations

import statistics
from contextlib import contextmanager
from types import ModuleType


@contextmanager
def plain_forward(module: ModuleType, plain: bool = True):
    """Within the block, `module.fast_forward(net)` gives the network itself (its plain forward)."""
    fast = module.fast_forward
    if plain:
        module.fast_forward = lambda net: net
    try:
        yield
    finally:
        module.fast_forward = fast


def plain_then_fast(run, repeats: int) -> tuple[dict[str, float], dict[str, list]]:
    """Call run(plain) for plain = True, False, `repeats` times in turn, so that a changing load falls
    on both. run returns (seconds, result). Returns the median seconds and every result of each."""
    times: dict[str, list[float]] = {"plain": [], "fast": []}
    results: dict[str, list] = {"plain": [], "fast": []}
    for _ in range(repeats):
        for kind in ("plain", "fast"):
            seconds, result = run(kind == "plain")
            times[kind].append(seconds)
            results[kind].append(result)
    return {kind: statistics.median(t) for kind, t in times.items()}, results
