"""ZeroGPU Spaces: the GPU exists only inside functions decorated with `spaces.GPU`, for a bounded
time per call (60 s unless the decorator asks for more), in a worker process that receives its
arguments and sends back each result or yield pickled. Outside those calls the Space's own process
sees a stand-in CUDA that cannot compute, so there it prefers the CPU (dd_core.device.prefer).

Here a long distillation runs as a series of GPU calls: one that sets the method up (a feature
network or teacher trains there) and takes the first step, then calls of about CHUNK_SECONDS of
steps each, sized from the steps' pace so far. Between calls
the set-up method (images, optimizer, learned labels or lr, its generator) travels as bytes
(dd_core.run_state); the dataset is loaded once in the worker, never shipped. Each call yields the
engine's snapshots as they come, so the page streams across calls. A Stop works between calls and
within them: the session's stop event is mirrored into a file (FileStop) that the worker's loop
checks between steps and inside long ones, exactly as it checks a stop event on one machine.
The evaluator runs one GPU call per network; a teacher or feature network trains in a call of its
own, and this process loads it from the cache that call wrote.

Everywhere else (a dedicated GPU, a CPU, tests) ENABLED is False and the app calls the engine
directly; `Calls(decorate)` lets tests drive the same path through a stand-in decorator.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
import uuid
from typing import Callable, Iterator

import torch

from dd_core import device as dd_device
from dd_core.data import Dataset, load_dataset
from dd_core import teacher
from dd_core.distill import Resume, Snapshot, distill as distill_here
from dd_core.evaluate import EvalConfig, EvalResult, for_dataset
from dd_core.evaluate import evaluate as evaluate_here
from dd_core.interrupt import Interrupted
from dd_core.methods.base import Method
from dd_core.run_state import capture, pack, restore_rng, unpack

CALL_SECONDS = 60  # GPU time asked for per call: ZeroGPU's default duration
SETUP_SECONDS = 120  # the set-up call may train a feature network or teacher, then takes the first step
EVAL_SECONDS = 120  # one evaluation network (paper protocol, IPC 50: well under a minute on an H200)
CHUNK_SECONDS = 20.0  # steps per call are sized to take about this long: a third of CALL_SECONDS
FIRST_CHUNK_STEPS = 5  # steps of a call when the pace is unknown (a first step too quick to time)
SNAPSHOT_SECONDS = 0.5


def _spaces_gpu():
    """spaces.GPU when this process runs on a ZeroGPU Space, else None."""
    try:
        import spaces
    except ImportError:
        return None
    config = getattr(getattr(spaces, "config", None), "Config", None)
    on_zero = getattr(config, "zero_gpu", None)
    if on_zero is None:  # an old or unusual `spaces`: trust the Space's variable
        on_zero = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return spaces.GPU if on_zero else None


class FileStop:
    """A stop signal that crosses into a GPU worker process: set means its file exists. It has the
    threading.Event methods the engine uses (is_set, set, clear, wait) and pickles as its path."""

    is_stop_signal = True  # dd_core.run_state never packs a stop signal into a run

    def __init__(self, path: str | None = None):
        self.path = path or os.path.join(tempfile.gettempdir(), f"distillery-stop-{uuid.uuid4().hex}")

    def is_set(self) -> bool:
        return os.path.exists(self.path)

    def set(self) -> None:
        with open(self.path, "w"):
            pass

    def clear(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            if end is not None and time.monotonic() >= end:
                return False
            time.sleep(0.05)
        return True


def _mirror(stop: threading.Event | None, flag: FileStop, done: threading.Event) -> None:
    """Set `flag` as soon as `stop` is set, until `done`."""
    while stop is not None and not done.is_set():
        if stop.wait(0.1):
            flag.set()
            return


def _stop_flag(stop: threading.Event | None) -> tuple[FileStop, threading.Event]:
    """A FileStop that follows `stop` (set already if `stop` is) until the returned event is set."""
    flag, done = FileStop(), threading.Event()
    if stop is not None and stop.is_set():
        flag.set()
    threading.Thread(target=_mirror, args=(stop, flag, done), daemon=True, name="stop-mirror").start()
    return flag, done


# -- what runs inside a GPU call (module level: the worker finds these by name) -----------------

def _worker_device() -> torch.device:
    """The call's device. In a ZeroGPU worker (a fork of the Space's process, which prefers the CPU)
    the GPU is real for the call's length, so the worker prefers it for anything left to default."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if ENABLED:
        dd_device.prefer(device)
    return device


def _run_chunk(dataset_spec: str, start: Method | bytes, run: dict, until: int, stop: FileStop) -> Iterator[tuple]:
    """Set up (start is a fresh Method) or go on (start is a packed run) up to step `until`; yields
    ("snapshot", Snapshot) as the engine does, then ("state", bytes) if the run is not over."""
    device = _worker_device()
    # A ZeroGPU worker is forked from the Space's process, which loaded the dataset before its first
    # call: load_dataset's cache is inherited, so this costs nothing there (a worker started later
    # loads it once and keeps it).
    dataset = load_dataset(dataset_spec)
    if isinstance(start, Method):
        method, resume = start, None
    else:
        state = unpack(start, dataset)
        restore_rng(state, device)
        method, resume = state.method, state.resume
    last = None
    for last in distill_here(dataset, method, **run, until=until, resume=resume, stop=stop, device=device,
                        snapshot_every=10**9, snapshot_seconds=SNAPSHOT_SECONDS):
        yield "snapshot", _on_cpu(last)
    if last is not None and not last.finished:
        yield "state", pack(capture(method, Resume(last.step, last.synthetic, last.elapsed), device), dataset)


def _on_cpu(snap: Snapshot) -> Snapshot:
    """The snapshot with every tensor of its set on the CPU (a ZCA transform fitted on the GPU, say):
    the Space's own process, which receives it, cannot hold CUDA tensors."""
    syn = snap.synthetic
    syn.images, syn.labels = syn.images.cpu(), syn.labels.cpu()
    syn.extra = {k: v.cpu() for k, v in syn.extra.items()}
    return snap


def _evaluate_one(dataset_spec: str, images: torch.Tensor, labels, config: EvalConfig, stop: FileStop) -> EvalResult:
    """One evaluation network (config.num_models == 1) on this call's GPU."""
    return evaluate_here(images, labels, load_dataset(dataset_spec), config, device=_worker_device(), stop=stop)


def _train_teacher(dataset_spec: str, arch: str | None, epochs: int | None, seed: int, stop: FileStop) -> bool:
    """Train the network on the whole training set (or find it cached) on this call's GPU. Its cache
    file is what the Space's own process then loads. False if stopped (Interrupted does not cross)."""
    try:
        teacher.get_teacher(load_dataset(dataset_spec), arch=arch, epochs=epochs, seed=seed, device=_worker_device(),
                            stop=stop)
    except Interrupted:
        return False
    return True


# -- the caller's side ----------------------------------------------------------------------------

def _identity(**_):
    return lambda fn: fn


class Calls:
    """The GPU functions, each wrapped by `decorate(duration=seconds)` (spaces.GPU on ZeroGPU)."""

    def __init__(self, decorate: Callable = _identity):
        self.setup = decorate(duration=SETUP_SECONDS)(_setup_call)
        self.advance = decorate(duration=CALL_SECONDS)(_advance_call)
        self.evaluate_one = decorate(duration=EVAL_SECONDS)(_evaluate_one)
        self.train_teacher = decorate(duration=SETUP_SECONDS)(_train_teacher)


# Two names for one function, so that ZeroGPU sees (and schedules) the set-up and the steps apart.
def _setup_call(dataset_spec, method, run, until, stop):
    yield from _run_chunk(dataset_spec, method, run, until, stop)


def _advance_call(dataset_spec, blob, run, until, stop):
    yield from _run_chunk(dataset_spec, blob, run, until, stop)


_gpu = _spaces_gpu()
ENABLED = _gpu is not None
CALLS = Calls(_gpu) if ENABLED else Calls()
if ENABLED:  # this process computes on the CPU; only GPU calls see the GPU
    dd_device.prefer("cpu")


def chunk_steps(done_steps: int, seconds: float, target: float = CHUNK_SECONDS) -> int:
    """Steps for the next call: as many as took `target` seconds at the last call's pace, at least 1."""
    if done_steps <= 0 or seconds <= 0:
        return FIRST_CHUNK_STEPS
    return max(1, int(done_steps * target / seconds))


def distill_in_calls(dataset_spec: str, method: Method, *, method_name: str, ipc: int, steps: int, seed: int = 0,
                     init: str = "real", stop: threading.Event | None = None, calls: Calls | None = None,
                     target_seconds: float = CHUNK_SECONDS) -> Iterator[Snapshot]:
    """dd_core.distill.distill, run as a series of GPU calls; yields the same kind of snapshots
    (history and elapsed time run on across calls) and ends with the same statuses."""
    calls = calls or CALLS
    flag, done = _stop_flag(stop)
    run = dict(method_name=method_name, ipc=ipc, steps=steps, seed=seed, init=init)
    history: list[dict] = []
    last: Snapshot | None = None
    try:
        # The set-up call also takes the first step, so that the next call is sized from a step's time.
        start, until, call = method, 1, calls.setup
        while True:
            if last is not None and stop is not None and stop.is_set():  # between two calls
                yield dataclasses.replace(last, status="stopped", message=f"stopped at step {last.step} of {steps}")
                return
            blob, before = None, last.step if last is not None else 0
            seconds_before = last.elapsed if last is not None else 0.0
            for kind, item in call(dataset_spec, start, run, until, flag):
                if kind == "state":
                    blob = item
                    continue
                item.history = history + item.history  # this call's steps after the earlier calls'
                last = item
                yield item
            if last is None or last.finished or blob is None:
                return
            history = list(last.history)
            start, call = blob, calls.advance
            # Snapshot.elapsed counts step time only (not set-up, not the call's start): the pace of steps
            until = last.step + chunk_steps(last.step - before, last.elapsed - seconds_before, target_seconds)
    finally:
        done.set()
        flag.clear()


def evaluate_in_calls(dataset_spec: str, images: torch.Tensor, labels, dataset: Dataset, config: EvalConfig, *,
                      progress: Callable[[float, str], None] | None = None, stop: threading.Event | None = None,
                      calls: Calls | None = None) -> EvalResult:
    """dd_core.evaluate.evaluate with one GPU call per network: network k is trained from the same
    seed as in one call (config.seed + 1000 k), so the accuracies are those of a single run."""
    calls = calls or CALLS
    config = for_dataset(config, dataset)  # the network and epochs actually used, as evaluate() records them
    flag, done = _stop_flag(stop)
    t0, accs, store_name = time.perf_counter(), [], "hard"
    try:
        for k in range(config.num_models):
            if stop is not None and stop.is_set():
                return EvalResult(accs, config, time.perf_counter() - t0, store_name, stopped=True)
            if progress:
                progress(k / config.num_models, f"network {k + 1}/{config.num_models} (GPU call)")
            one = dataclasses.replace(config, num_models=1, seed=config.seed + 1000 * k)
            result = calls.evaluate_one(dataset_spec, images, labels, one, flag)
            store_name = result.label_store
            if result.stopped or not result.accuracies:
                return EvalResult(accs, config, time.perf_counter() - t0, store_name, stopped=True)
            accs += result.accuracies
        return EvalResult(accs, config, time.perf_counter() - t0, store_name)
    finally:
        done.set()
        flag.clear()


def _spec(dataset: Dataset) -> str:
    """The name a GPU worker loads the dataset by (it never receives the tensors)."""
    if dataset.name.startswith("folder:"):
        raise ValueError("image folders cannot be distilled on a ZeroGPU Space (its GPU calls load datasets by "
                         "name); choose a registered dataset")
    return dataset.name


# -- drop-ins for the app: the engine's own functions off ZeroGPU, GPU calls on it ------------------

def distill(dataset: Dataset, method: Method, *, gate=None, snapshot_every: int = 10,
            snapshot_seconds: float | None = None, **kw) -> Iterator[Snapshot]:
    """dd_core.distill.distill; on a ZeroGPU Space, as a series of GPU calls (snapshots come every
    SNAPSHOT_SECONDS there, and Pause/Step are not offered: a held run would hold a GPU)."""
    if not ENABLED:
        return distill_here(dataset, method, gate=gate, snapshot_every=snapshot_every,
                            snapshot_seconds=snapshot_seconds, **kw)
    kw.pop("device", None)
    return distill_in_calls(_spec(dataset), method, **kw)


def evaluate(images: torch.Tensor, labels, dataset: Dataset, config: EvalConfig, *, device=None,
             progress: Callable[[float, str], None] | None = None, stop: threading.Event | None = None) -> EvalResult:
    """dd_core.evaluate.evaluate; on a ZeroGPU Space, one GPU call per network."""
    if not ENABLED or device is not None:
        return evaluate_here(images, labels, dataset, config, device=device, progress=progress, stop=stop)
    return evaluate_in_calls(_spec(dataset), images, labels, dataset, config, progress=progress, stop=stop)


def get_teacher(dataset: Dataset, *, stop: threading.Event | None = None, calls: Calls | None = None, **kw):
    """dd_core.teacher.get_teacher; on a ZeroGPU Space the training runs in a GPU call of its own and
    this process loads the cached result onto its CPU."""
    if ENABLED or calls is not None:
        flag, done = _stop_flag(stop)
        try:
            finished = (calls or CALLS).train_teacher(_spec(dataset), kw.get("arch"), kw.get("epochs"),
                                                      kw.get("seed", 0), flag)
        finally:
            done.set()
            flag.clear()
        if not finished:
            raise Interrupted
    return teacher.get_teacher(dataset, stop=stop, **kw)


def whole_reference(dataset: Dataset, stop: threading.Event | None = None) -> tuple[float, str]:
    """dd_core.teacher.whole_reference, its network trained in a GPU call on a ZeroGPU Space."""
    if ENABLED:
        get_teacher(dataset, stop=stop)
    return teacher.whole_reference(dataset, stop=stop)
