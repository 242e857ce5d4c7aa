"""Work inside a wall-clock budget, for the GPU runs (benchmarks/gpu_cifar.py): stop events that
end each piece of a step in time for the pieces after it, and evaluation in rounds, every set's
network k before any set's network k + 1, so that running out of time leaves paired networks."""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable

import torch

from dd_core.distill import time_budget
from dd_core.evaluate import evaluate, for_dataset
from dd_core.training import Accuracies


class Budget:
    """Wall-clock seconds from now; each piece of a step gets a stop event that fires `reserve` seconds
    before the end (what the later pieces need), so a step ends cleanly inside its limit."""

    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, time.perf_counter()

    def left(self, reserve: float = 0.0) -> float:
        return self.seconds - (time.perf_counter() - self.t0) - reserve

    def elapsed(self) -> float:
        return round(time.perf_counter() - self.t0, 1)

    def stop(self, reserve: float = 0.0) -> tuple[threading.Event, threading.Timer | None]:
        return time_budget(max(self.left(reserve), 0.01) / 60)


def rounds(check: str, sets: list[tuple[str, torch.Tensor, object, object, object]], networks: int,
           budget: Budget, common: dict, *, emit: Callable[[dict], dict], device) -> dict[str, list[float]]:
    """Train network k on each (name, images, labels, dataset, config) in turn, k = 0, 1, ..., while a
    round still fits (judged by the last one); a row per network, then a summary row per set. Network
    k has the seed `evaluate` gives its k-th network, so rounds equal one call with `networks` models."""
    accs: dict[str, list[float]] = {name: [] for name, *_ in sets}
    seconds: dict[str, float] = {name: 0.0 for name, *_ in sets}
    last, finished = 0.0, True
    for k in range(networks):
        if not finished or (k and budget.left() < 1.2 * last):
            break
        t0, (stop, timer) = time.perf_counter(), budget.stop()
        for name, images, labels, data, config in sets:
            one = dataclasses.replace(config, num_models=1, seed=config.seed + 1000 * k)
            result = evaluate(images, labels, data, one, device=device, stop=stop)
            if result.stopped or not result.accuracies:  # out of time: this network is not counted
                finished = False
                break
            accs[name].append(result.accuracies[0])
            seconds[name] += result.seconds
            emit({"check": check, "set": name, "network": k, "accuracy": result.accuracies[0],
                  "seconds": round(result.seconds, 1), "protocol": config.protocol, **common})
        if timer:
            timer.cancel()
        last = time.perf_counter() - t0
    for name, images, labels, data, config in sets:
        done = Accuracies(accs[name])
        resolved = dataclasses.replace(for_dataset(config, data), num_models=len(done.accuracies))
        emit({"check": check, "set": name, "summary": True, "networks": len(done.accuracies),
              "accuracies": done.accuracies, "accuracy_mean": done.mean if done.accuracies else None,
              "accuracy_std": done.std,
              "protocol": config.protocol, "protocol_detail": resolved.describe(), "eval_seconds": round(seconds[name], 1),
              "labels": getattr(labels, "spec", "hard"), **common})
    return accs
