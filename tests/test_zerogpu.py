"""ZeroGPU: a long distillation as a series of short GPU calls, checked through a stand-in for
`spaces.GPU` that records each call (name, duration asked, seconds taken) and, like ZeroGPU's
worker process, hands arguments and every yield or result across pickled. The chunked run must
give the very images of one uninterrupted run, for every registered method."""
from __future__ import annotations

import os
import pickle
import sys
import threading
import time
import types

import pytest
import torch

from components import zerogpu
from dd_core import load_dataset
from dd_core.distill import run_to_end
from dd_core.evaluate import evaluate, protocol
from dd_core.methods import METHODS, hyperparameters, make_method

CPU = torch.device("cpu")
# Small settings, as in the contract tests, for whichever method has the field.
TINY = {"model": "convnet_d2", "batch_real": 16, "num_freqs": 64, "inner_loop": 1}


def tiny_method(name: str, ipc: int, **extra):
    fields = {f.name for f in hyperparameters(METHODS.get(name))}
    overrides = {k: v for k, v in {**TINY, **extra}.items() if k in fields}
    return make_method(name, preset="fast", dataset="digits", ipc=ipc, **overrides)


class Recorder:
    """A stand-in for spaces.GPU(duration=...): records every call and crosses a process boundary
    the way ZeroGPU's worker does (arguments in, each yield or the result out, all pickled)."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, *, duration):
        def decorate(fn):
            def call(*args):
                args = pickle.loads(pickle.dumps(args))
                record = {"name": fn.__name__, "duration": duration, "start": time.perf_counter(), "yields": 0}
                self.calls.append(record)
                try:
                    result = fn(*args)
                    if not isinstance(result, types.GeneratorType):
                        return pickle.loads(pickle.dumps(result))
                    return self._stream(result, record)
                finally:
                    record["seconds"] = time.perf_counter() - record["start"]

            return call
        return decorate

    def _stream(self, gen, record):
        t0 = time.perf_counter()
        for item in gen:
            record["yields"] += 1
            yield pickle.loads(pickle.dumps(item))
        record["seconds"] = time.perf_counter() - t0


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def chunked(name: str, ipc: int, steps: int, recorder: Recorder, *, target: float = 0.0, stop=None, method=None):
    calls = zerogpu.Calls(recorder)
    return list(zerogpu.distill_in_calls("digits", method or tiny_method(name, ipc), method_name=name, ipc=ipc,
                                         steps=steps, seed=0, stop=stop, calls=calls, target_seconds=target))


def test_a_long_run_is_a_series_of_short_calls_that_ends_with_the_uninterrupted_runs_images(digits, monkeypatch):
    monkeypatch.setattr(zerogpu, "FIRST_CHUNK_STEPS", 3)
    recorder = Recorder()
    snaps = chunked("dm", 1, 12, recorder, target=0.01)
    whole = run_to_end(digits, tiny_method("dm", 1), method_name="dm", ipc=1, steps=12, seed=0, device=CPU)
    last = snaps[-1]
    assert last.status == "done" and last.step == 12, last.message
    assert torch.equal(last.synthetic.images, whole.synthetic.images), "chunking changed the result"
    assert [h["step"] for h in last.history] == list(range(1, 13))
    assert [h["loss"] for h in last.history] == [h["loss"] for h in whole.history]
    names = [c["name"] for c in recorder.calls]
    assert names[0] == "_setup_call" and set(names[1:]) == {"_advance_call"} and len(names) >= 4, names
    for call in recorder.calls:  # each call well under what it asked for
        assert call["seconds"] < call["duration"] / 2, call
    # the page streams across calls: steps only go up, and elapsed time runs on
    steps = [s.step for s in snaps]
    assert steps == sorted(steps) and snaps[0].step == 0
    assert [s.elapsed for s in snaps] == sorted(s.elapsed for s in snaps)


def test_the_second_call_is_sized_from_the_first_calls_pace():
    assert zerogpu.chunk_steps(0, 0.0) == zerogpu.FIRST_CHUNK_STEPS
    assert zerogpu.chunk_steps(20, 2.0, target=20.0) == 200
    assert zerogpu.chunk_steps(1, 60.0, target=20.0) == 1  # a very slow step still makes progress


# Methods whose set-up is quick on one CPU thread run by default; the others (a feature network,
# teacher or expert trained in set-up: half a minute to minutes on a busy CPU) with -m slow.
QUICK = {"random", "dc", "dm", "datadam"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in QUICK else pytest.mark.slow)
                                  for n in METHODS.names()])
def test_every_methods_state_survives_the_calls(name, monkeypatch):
    # one step per call: the optimizer, the generator and any learned labels or lr cross every time
    monkeypatch.setattr(zerogpu, "FIRST_CHUNK_STEPS", 1)
    snaps = chunked(name, 1, 3, Recorder())
    whole = run_to_end(load_dataset("digits"), tiny_method(name, 1), method_name=name, ipc=1, steps=3, seed=0,
                       device=CPU)
    assert snaps[-1].status == "done", snaps[-1].message
    assert torch.equal(snaps[-1].synthetic.images, whole.synthetic.images)


def test_a_stop_between_calls_ends_the_run_with_the_images_so_far(monkeypatch):
    monkeypatch.setattr(zerogpu, "FIRST_CHUNK_STEPS", 2)
    stop, recorder = threading.Event(), Recorder()
    calls = zerogpu.Calls(recorder)
    snaps = []
    for snap in zerogpu.distill_in_calls("digits", tiny_method("dm", 1), method_name="dm", ipc=1, steps=50,
                                         stop=stop, calls=calls, target_seconds=0.0):
        snaps.append(snap)
        if snap.step >= 4:
            stop.set()
    last = snaps[-1]
    assert last.status == "stopped" and 4 <= last.step < 50, (last.status, last.step)
    assert torch.equal(last.synthetic.images, snaps[-2].synthetic.images)
    assert len(recorder.calls) < 10, "no call may start after the stop"


def test_a_stop_inside_a_call_takes_effect_within_a_long_step():
    # DC with ten million inner epochs: its first step would take hours; the stop crosses into the
    # call as a file and the step's own stop checks end it, keeping the images of step 0.
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    t0 = time.perf_counter()
    method = tiny_method("dc", 1, outer_loop=2)
    method.inner_loop = 10_000_000  # past the range a user may ask for: set after the check
    snaps = chunked("dc", 1, 3, Recorder(), stop=stop, method=method)
    took = time.perf_counter() - t0
    last = snaps[-1]
    assert last.status == "stopped" and "during step 1" in last.message, last.message
    assert torch.equal(last.synthetic.images, snaps[0].synthetic.images)
    assert took < 60, f"the stop took {took:.0f} s to take effect"


def test_file_stop_crosses_a_pickle_and_behaves_like_an_event():
    flag = zerogpu.FileStop()
    other = pickle.loads(pickle.dumps(flag))
    assert not other.is_set() and not other.wait(0.01)
    flag.set()
    assert other.is_set() and other.wait(0.01)
    other.clear()
    assert not flag.is_set()


def test_evaluation_runs_one_call_per_network_and_matches_one_run(digits):
    images = digits.x_train[:20]
    labels = digits.y_train[:20]
    config = protocol("fast", epochs=3, num_models=2)
    recorder = Recorder()
    split = zerogpu.evaluate_in_calls("digits", images, labels, digits, config, calls=zerogpu.Calls(recorder))
    whole = evaluate(images, labels, digits, config, device=CPU)
    assert split.accuracies == whole.accuracies and split.config == whole.config
    assert [c["name"] for c in recorder.calls] == ["_evaluate_one"] * 2
    assert all(c["duration"] == zerogpu.EVAL_SECONDS for c in recorder.calls)


def test_a_spaces_module_on_zerogpu_is_used(monkeypatch):
    calls = []

    def gpu(task=None, *, duration=None):
        calls.append(duration)
        return lambda fn: fn

    fake = types.ModuleType("spaces")
    fake.GPU = gpu
    fake.config = types.SimpleNamespace(Config=types.SimpleNamespace(zero_gpu=True))
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert zerogpu._spaces_gpu() is gpu
    zerogpu.Calls(zerogpu._spaces_gpu())
    # set-up, steps, an evaluation network, a teacher: each its own GPU function with its own duration
    assert sorted(calls) == sorted([zerogpu.SETUP_SECONDS, zerogpu.CALL_SECONDS, zerogpu.EVAL_SECONDS,
                                    zerogpu.SETUP_SECONDS])
    fake.config.Config.zero_gpu = False
    assert zerogpu._spaces_gpu() is None, "off ZeroGPU the app calls the engine directly"


def test_the_real_spaces_package_leaves_everything_unchanged_off_zerogpu(monkeypatch):
    spaces = pytest.importorskip("spaces", reason="the optional `spaces` package is not installed")
    assert not spaces.config.Config.zero_gpu, "this test expects a machine that is not a ZeroGPU Space"
    assert zerogpu._spaces_gpu() is None and not zerogpu.ENABLED

    def task(x):
        return x + 1

    assert spaces.GPU(duration=zerogpu.CALL_SECONDS)(task) is task  # the decorator is a no-op here


@pytest.mark.cuda
def test_on_a_gpu_the_state_crosses_calls_on_the_gpu(digits, monkeypatch):
    # the calls pick CUDA themselves; the packed state keeps its CUDA tensors between calls
    monkeypatch.setattr(zerogpu, "FIRST_CHUNK_STEPS", 3)
    snaps = chunked("dm", 2, 10, Recorder(), target=0.01)
    whole = run_to_end(digits, tiny_method("dm", 2), method_name="dm", ipc=2, steps=10, seed=0,
                       device=torch.device("cuda"))
    assert snaps[-1].status == "done", snaps[-1].message
    # cuDNN may pick other kernels from one run to the next (benchmark mode): equal to float noise
    assert torch.allclose(snaps[-1].synthetic.images, whole.synthetic.images, rtol=1e-3, atol=1e-4)


def test_teacher_training_runs_in_a_call_of_its_own(digits):
    recorder = Recorder()
    calls = zerogpu.Calls(recorder)
    net = zerogpu.get_teacher(digits, arch="mlp", epochs=1, seed=5, calls=calls)
    assert [c["name"] for c in recorder.calls] == ["_train_teacher"]
    assert 0.0 <= net.test_accuracy <= 1.0 and net.arch == "mlp"
    stop = threading.Event()
    stop.set()
    with pytest.raises(zerogpu.Interrupted):  # a stop before (or during) the call ends it, caching nothing
        zerogpu.get_teacher(digits, arch="mlp", epochs=2, seed=6, calls=calls, stop=stop)


def test_off_zerogpu_the_drop_ins_are_the_engine(digits):
    assert not zerogpu.ENABLED
    method = tiny_method("dm", 1)
    snaps = list(zerogpu.distill(digits, method, method_name="dm", ipc=1, steps=3, seed=0, device=CPU))
    whole = run_to_end(digits, tiny_method("dm", 1), method_name="dm", ipc=1, steps=3, seed=0, device=CPU)
    assert torch.equal(snaps[-1].synthetic.images, whole.synthetic.images)


class ForkedCalls:
    """A stand-in closer still to ZeroGPU: each call runs in a forked child process (as spaces does),
    its arguments and every yield crossing through a multiprocessing queue."""

    def __call__(self, *, duration):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")

        def decorate(fn):
            def child(args, queue):
                try:
                    result = fn(*args)
                    if isinstance(result, types.GeneratorType):
                        for item in result:  # plain pickles: torch's queue sharing would outlive the child
                            queue.put(("item", pickle.dumps(item)))
                    else:
                        queue.put(("item", pickle.dumps(result)))
                    queue.put(("end", None))
                except BaseException as err:  # noqa: BLE001 - reported to the caller
                    queue.put(("error", repr(err)))
                queue.close()
                queue.join_thread()
                os._exit(0)  # as a worker process ends: no interpreter teardown of the parent's copied threads

            def call(*args):
                queue = ctx.Queue()
                proc = ctx.Process(target=child, args=(args, queue), daemon=True)
                proc.start()
                if not fn.__name__.startswith(("_setup", "_advance")):
                    kind, value = queue.get(timeout=120)
                    proc.join(5)
                    assert kind == "item", value
                    return pickle.loads(value)
                return stream(queue, proc)

            return call
        return decorate


def stream(queue, proc):
    try:
        while True:
            kind, value = queue.get(timeout=120)
            if kind == "end":
                return
            assert kind == "item", value
            yield pickle.loads(value)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


@pytest.mark.slow  # a fork per call: about 10 s each on a busy 2-core machine
def test_in_forked_processes_state_streams_and_a_stop_cross_over(digits, monkeypatch):
    monkeypatch.setattr(zerogpu, "FIRST_CHUNK_STEPS", 2)
    calls = zerogpu.Calls(ForkedCalls())
    snaps = list(zerogpu.distill_in_calls("digits", tiny_method("dm", 1), method_name="dm", ipc=1, steps=6,
                                          calls=calls, target_seconds=0.0))
    whole = run_to_end(digits, tiny_method("dm", 1), method_name="dm", ipc=1, steps=6, seed=0, device=CPU)
    assert snaps[-1].status == "done" and torch.equal(snaps[-1].synthetic.images, whole.synthetic.images)
    # a stop set in this process ends a long step running in the child
    method = tiny_method("dc", 1, outer_loop=2)
    method.inner_loop = 10_000_000
    stop, t0 = threading.Event(), None
    for last in zerogpu.distill_in_calls("digits", method, method_name="dc", ipc=1, steps=3, stop=stop, calls=calls):
        if t0 is None:  # the child has set up and starts its first (endless) step: stop it a second later
            t0 = time.perf_counter()
            threading.Timer(1.0, stop.set).start()
    assert last.status == "stopped" and "during step 1" in last.message, last.message
    assert time.perf_counter() - t0 < 30
