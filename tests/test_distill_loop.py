"""The distillation loop's promises: a bad step never corrupts the set, and a stop takes effect inside
long work (a step of many inner loops, a feature network's training), keeping the last good images."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from dd_core import load_dataset
from dd_core.distill import distill, run_to_end
from dd_core.methods import make_method
from dd_core.cache import cache_dir
from dd_core.teacher import get_teacher
from dd_core.interrupt import Interrupted

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def stop_after(seconds: float) -> threading.Event:
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    return stop


def test_a_non_finite_step_keeps_the_last_good_images(digits):
    method = make_method("dm", dataset="digits", ipc=1)
    method.lr_img = 1e38  # past the field's range on purpose (set after the check): overflows within a few steps
    snaps = list(distill(digits, method, method_name="dm", ipc=1, steps=20, snapshot_every=1, device=CPU))
    good, last = snaps[-2], snaps[-1]
    assert last.status == "failed" and "non-finite" in last.message and "lower learning rate" in last.message
    assert last.step == good.step < 20 and torch.equal(last.synthetic.images, good.synthetic.images)
    assert torch.isfinite(last.synthetic.images).all()
    assert torch.equal(method.images(), good.synthetic.images), "the method's own images are restored too"


def test_a_stop_inside_a_long_step_keeps_the_images_of_the_step_before(digits):
    # Two matching updates with ten million inner epochs between them: one step would take hours.
    method = make_method("dc", dataset="digits", ipc=1, outer_loop=2)
    method.inner_loop = 10_000_000  # past the field's range on purpose: a step that never ends by itself
    t0 = time.perf_counter()
    snaps = list(distill(digits, method, method_name="dc", ipc=1, steps=3, stop=stop_after(1.0), device=CPU))
    took = time.perf_counter() - t0
    last = snaps[-1]
    assert last.status == "stopped" and "during step 1" in last.message, last.message
    assert last.step == 0 and torch.equal(last.synthetic.images, snaps[0].synthetic.images)
    # The first matching update did change the method's images; the restore undid it.
    assert torch.equal(method.images(), snaps[0].synthetic.images)
    assert took < 60, f"the stop took {took:.0f} s to take effect"


def test_a_stop_while_a_feature_network_trains_ends_the_setup_and_caches_nothing(digits):
    method = make_method("herding", dataset="digits", ipc=2, feature_model="mlp")
    method.feature_epochs = 1_000_000  # past the field's range on purpose: a set-up that never ends by itself
    t0 = time.perf_counter()
    snaps = list(distill(digits, method, method_name="herding", ipc=2, steps=1, stop=stop_after(1.0), device=CPU))
    assert time.perf_counter() - t0 < 60
    *before, last = snaps  # no "initialised" snapshot: the setup never finished
    assert all(s.step == 0 and s.message.startswith("setting up: training the feature network") for s in before)
    assert last.status == "stopped" and "setting up" in last.message and last.step == 0
    assert last.synthetic.images.shape == (20, 1, 8, 8) and torch.isfinite(last.synthetic.images).all()
    assert not list((cache_dir() / "teachers").glob("*-mlp-e1000000-*")), "a half-trained network was cached"


def test_one_network_in_training_does_not_block_another(digits):
    # A long training of one (dataset, network) holds only its own lock: a different teacher is
    # served meanwhile. The long one is then stopped and raises Interrupted.
    stop, outcome = threading.Event(), {}

    def long_training():
        try:
            get_teacher(digits, arch="mlp", epochs=1_000_000, device=CPU, stop=stop)
        except Interrupted:
            outcome["interrupted"] = True

    worker = threading.Thread(target=long_training, daemon=True)
    worker.start()
    try:
        time.sleep(0.2)
        served = []
        other = threading.Thread(target=lambda: served.append(get_teacher(digits, arch="mlp", epochs=3, device=CPU)),
                                 daemon=True)
        other.start()
        other.join(60)
        assert served, "the other teacher waited for the long training"
        assert worker.is_alive(), "the long training ended before the other teacher was served"
        assert served[0].epochs == 3 and served[0].test_accuracy > 0.2  # trained: above chance (0.1)
    finally:
        stop.set()
        worker.join(60)
    assert outcome == {"interrupted": True}


def test_without_a_stop_a_run_finishes(digits):
    method = make_method("dc", dataset="digits", ipc=1, outer_loop=2, inner_loop=1, model="convnet_d2", batch_real=16)
    snap = run_to_end(digits, method, method_name="dc", ipc=1, steps=2, device=CPU)
    assert snap.status == "done" and snap.step == 2


def test_a_gate_pauses_steps_one_at_a_time_and_resumes(digits):
    from dd_core.distill import Gate

    gate, stop = Gate(), threading.Event()
    t_pause = time.perf_counter()
    gate.pause()  # held before the first step, as a lesson that starts paused would be
    method = make_method("dm", dataset="digits", ipc=1, batch_real=8)
    run = distill(digits, method, method_name="dm", ipc=1, steps=6, snapshot_every=100, gate=gate, stop=stop,
                  device=CPU)
    assert next(run).step == 0  # initialised
    held = next(run)
    assert (held.step, held.message) == (0, "paused")
    gate.step()
    one = next(run)
    assert (one.step, one.message, len(one.history)) == (1, "stepped", 1)
    assert not torch.equal(one.synthetic.images, held.synthetic.images)
    threading.Timer(0.5, gate.resume).start()
    t0 = time.perf_counter()
    rest = list(run)  # held again after exactly one step, until the resume
    assert time.perf_counter() - t0 >= 0.45
    assert rest[-1].status == "done" and rest[-1].step == 6 and len(rest[-1].history) == 6
    assert gate.paused_seconds >= 0.45  # the held time was measured
    # ... and left out of elapsed: since the pause, the clock ran for the held time plus the run's own,
    # whatever the machine's load (counting the holds would add about 0.5 s here)
    assert rest[-1].elapsed <= time.perf_counter() - t_pause - gate.paused_seconds


def test_a_stop_gets_through_a_paused_gate(digits):
    from dd_core.distill import Gate

    gate, stop = Gate(), threading.Event()
    gate.pause()
    method = make_method("dm", dataset="digits", ipc=1, batch_real=8)
    run = distill(digits, method, method_name="dm", ipc=1, steps=5, gate=gate, stop=stop, device=CPU)
    next(run), next(run)  # initialised, paused
    threading.Timer(0.2, stop.set).start()
    last = list(run)[-1]
    assert (last.status, last.step) == ("stopped", 0)


# -- a long set-up says how far it is ----------------------------------------------------------------

def test_progress_text_gives_the_steps_done_and_an_estimate_from_the_pace_so_far():
    from dd_core.progress import Progress

    now = [100.0]
    p = Progress(clock=lambda: now[0])
    assert p.text() == "" and not p.active
    p.begin("training the X teacher", 400)
    assert p.text() == "training the X teacher: 0 of 400 steps (0 %), 0 s so far"  # no pace yet, no estimate
    now[0] += 60.0
    p.advance(100)
    assert p.text() == "training the X teacher: 100 of 400 steps (25 %), 60 s so far, about 3 min left"
    now[0] += 3 * 3600
    p.advance(200)
    assert p.text().endswith("(75 %), 3.0 h so far, about 60 min left")
    p.end()
    assert p.text() == "" and not p.active


def test_a_teacher_trained_in_the_set_up_reports_its_steps_before_step_1(digits, tmp_path, monkeypatch):
    """RDED's teacher trains before the first step (on CIFAR-10 on a CPU, for an hour and more): the loop
    yields step-0 snapshots that say which teacher, how many of its steps are done and about how long is left."""
    from dd_core import teachers
    from dd_core.distill import SETTING_UP

    from components.distill_run import setup_text

    monkeypatch.setenv("DD_CACHE_DIR", str(tmp_path))  # no cached teacher: it must train now
    monkeypatch.setattr(teachers, "_memory", {})
    method = make_method("rded", dataset="digits", ipc=1, teacher="convnet_bn_quick", candidates=8)
    snaps = list(distill(digits, method, method_name="rded", ipc=1, steps=2, snapshot_seconds=0.02, device=CPU))
    setting_up = [s for s in snaps if s.message.startswith(SETTING_UP)]
    assert setting_up, [s.message for s in snaps]
    first = setting_up[0]
    assert first.step == 0 and first.status == "running"
    assert "training the convnet_bn_quick teacher on digits" in first.message and " steps (" in first.message
    assert any("left" in s.message for s in setting_up), "no estimate of the time left was given"
    assert snaps[-1].status == "done"
    assert setup_text(first.message).startswith("Warming up, training the convnet_bn_quick teacher")
    assert setup_text("initialised") == "Warming up: the first step builds the networks…"
    # The second run finds the teacher cached: nothing to report, straight to "initialised"
    again = list(distill(digits, make_method("rded", dataset="digits", ipc=1, teacher="convnet_bn_quick", candidates=8),
                         method_name="rded", ipc=1, steps=1, snapshot_seconds=0.02, device=CPU))
    assert not [s for s in again if s.message.startswith(SETTING_UP)]


def test_an_error_in_the_set_up_reaches_the_caller(digits, monkeypatch):
    method = make_method("dm", dataset="digits", ipc=1)

    def broken(*args, **kwargs):
        raise ValueError("no such layer")

    monkeypatch.setattr(method, "setup", broken)
    with pytest.raises(ValueError, match="no such layer"):
        run_to_end(digits, method, method_name="dm", ipc=1, steps=2, device=CPU)


def test_the_set_up_runs_under_the_callers_grad_mode(digits, monkeypatch):
    method = make_method("dm", dataset="digits", ipc=1)
    seen, setup = [], method.setup

    def watched(*args, **kwargs):
        seen.append(torch.is_grad_enabled())
        return setup(*args, **kwargs)

    monkeypatch.setattr(method, "setup", watched)
    run_to_end(digits, method, method_name="dm", ipc=1, steps=1, device=CPU)
    assert seen == [True]


def test_a_run_closed_while_setting_up_returns_once_its_set_up_has_ended(digits, tmp_path, monkeypatch):
    """Closing the run (a tab gone) does not leave a teacher training in the background after the job has
    handed back its compute slot: close() returns when the set-up thread has ended."""
    import threading as th

    from dd_core import teachers
    from dd_core.distill import SETTING_UP

    monkeypatch.setenv("DD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(teachers, "_memory", {})
    run = distill(digits, make_method("rded", dataset="digits", ipc=1, teacher="convnet_bn_quick", candidates=8),
                  method_name="rded", ipc=1, steps=2, snapshot_seconds=0.02, device=CPU)
    for snap in run:
        if snap.message.startswith(SETTING_UP):
            break
    else:
        pytest.fail("the teacher's training reported nothing")
    run.close()
    assert not [t for t in th.enumerate() if t.name == "dd-setup" and t.is_alive()]
