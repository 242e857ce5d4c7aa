"""The long-job helper: each job owns its stop and cap; compute slots are shared one per visitor."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from components import jobs
from components.sessions import Session


def session(key: str, tmp_path) -> Session:
    return Session(key, tmp_path / key)


def test_one_running_and_one_waiting_job_per_owner_and_a_clear_refusal(tmp_path):
    pool = jobs.ComputePool(2)
    a = session("a", tmp_path)
    first = pool.admit(a, "distill", "session:a")
    assert list(pool.wait_turn(first)) == [] and first.state == "running"
    second = pool.admit(a, "evaluate", "session:a")
    with pytest.raises(jobs.Busy, match="one running and one waiting|running and one waiting"):
        pool.admit(a, "labels", "session:a")
    assert a.jobs == [first, second]
    # The owner's second job waits for its first even though a slot is free...
    assert next(pool.wait_turn(second)) == 1
    # ...while another visitor's job takes that slot at once.
    other = pool.admit(session("b", tmp_path), "distill", "session:b")
    assert list(pool.wait_turn(other)) == [] and other.state == "running"
    pool.release(first)
    assert list(pool.wait_turn(second)) == [] and second.state == "running"
    assert a.jobs == [second]


def test_twenty_requests_from_one_visitor_take_one_slot_and_one_place(tmp_path):
    pool = jobs.ComputePool(2)
    a = session("a", tmp_path)
    admitted, refused = [], 0
    for _ in range(20):
        try:
            admitted.append(pool.admit(a, "distill", "session:a"))
        except jobs.Busy:
            refused += 1
    assert len(admitted) == 2 and refused == 18
    b = pool.admit(session("b", tmp_path), "evaluate", "session:b")
    list(pool.wait_turn(admitted[0]))
    assert list(pool.wait_turn(b)) == []  # the next visitor is not behind the first one's line


def test_first_come_first_served_among_visitors(tmp_path):
    pool = jobs.ComputePool(1)
    running = pool.admit(session("x", tmp_path), "distill", "session:x")
    list(pool.wait_turn(running))
    early = pool.admit(session("y", tmp_path), "distill", "session:y")
    late = pool.admit(session("z", tmp_path), "distill", "session:z")
    assert next(pool.wait_turn(early)) == 1 and next(pool.wait_turn(late)) == 2
    pool.release(running)
    assert next(pool.wait_turn(late)) == 1  # still behind `early`
    assert list(pool.wait_turn(early)) == []


def test_a_feature_map_may_run_beside_its_own_distillation(tmp_path):
    pool = jobs.ComputePool(2)
    a = session("a", tmp_path)
    run = pool.admit(a, "distill", "session:a")
    list(pool.wait_turn(run))
    view = pool.admit(a, "map", "session:a")
    assert list(pool.wait_turn(view)) == []


def test_a_stop_while_waiting_cancels_the_job(tmp_path):
    pool = jobs.ComputePool(1)
    blocker = pool.admit(session("x", tmp_path), "distill", "session:x")
    list(pool.wait_turn(blocker))
    a = session("a", tmp_path)
    job = pool.admit(a, "distill", "session:a")
    waits = pool.wait_turn(job)
    next(waits)
    job.stop.set()
    assert list(waits) == [] and job.cancelled and a.jobs == []


def test_the_cap_sets_the_jobs_own_stop_only(tmp_path):
    a = session("a", tmp_path)
    first, second = jobs.Job(a, "distill", "session:a"), jobs.Job(a, "distill", "session:a")
    with first.capped(0.05):
        time.sleep(0.3)
    assert first.stop.is_set() and first.cap_reached.is_set() and not second.stop.is_set()
    with second.capped(5):
        pass  # ended before its cap: the timer is cancelled
    time.sleep(0.05)
    assert not second.stop.is_set()


def test_plain_http_calls_without_a_session_are_counted_by_address():
    url = SimpleNamespace(path="/gradio_api/call/distill")
    rest = SimpleNamespace(session_hash="0123456789abcdef0123456789abcdef", url=url, headers={},
                           client=SimpleNamespace(host="10.0.0.7"))
    assert jobs.owner_of(rest) == "address:10.0.0.7"
    proxied = SimpleNamespace(**{**vars(rest), "headers": {"x-forwarded-for": "203.0.113.5, 10.0.0.1"}})
    assert jobs.owner_of(proxied) == "address:203.0.113.5"
    named = SimpleNamespace(**{**vars(rest), "session_hash": "my-session"})
    assert jobs.owner_of(named) == "session:my-session"  # a caller that names its session is that session
    assert jobs.owner_of(SimpleNamespace(session_hash="abc")) == "session:abc"


def test_stop_reaches_a_plain_http_callers_run_in_its_own_session(tmp_path):
    owner = "address:10.0.0.7"
    run_session, stop_session = session("r1", tmp_path), session("r2", tmp_path)
    job = jobs.admit(run_session, "distill", owner)
    try:
        assert jobs.stop(stop_session, "distill", owner) == 1 and job.stop.is_set()
        assert jobs.stop(stop_session, "distill", "session:r2") == 0
    finally:
        jobs.release(job)


def test_stop_settles_until_the_job_ends_so_a_stop_line_never_lands_after_its_final_status(tmp_path):
    quick, stuck = session("q", tmp_path), session("s", tmp_path)
    job = jobs.admit(quick, "distill", "session:q")
    list(jobs.wait_turn(job))
    worker = threading.Thread(target=lambda: (job.stop.wait(5), time.sleep(0.2), jobs.release(job)))
    worker.start()
    assert jobs.stop(quick, "distill", settle=5) == 0 and job.state == "ended"  # waited the 0.2 s out
    worker.join()

    held = jobs.admit(stuck, "distill", "session:s")  # a job inside a long step: not ended by the deadline
    try:
        start = time.monotonic()
        assert jobs.stop(stuck, "distill", settle=0.3) == 1
        assert 0.3 <= time.monotonic() - start < 15  # waited the settle out, then answered
    finally:
        jobs.release(held)


def test_a_waiting_handler_reports_its_place_and_starts_when_the_slot_frees(tmp_path):
    pool = jobs.ComputePool(1)
    holder = pool.admit(session("x", tmp_path), "distill", "session:x")
    list(pool.wait_turn(holder))
    job = pool.admit(session("a", tmp_path), "evaluate", "session:a")
    seen = []
    thread = threading.Thread(target=lambda: seen.extend(pool.wait_turn(job)))
    thread.start()
    time.sleep(0.2)
    pool.release(holder)
    thread.join(5)
    assert not thread.is_alive() and seen and seen[0] == 1 and job.state == "running"


def test_the_expected_wait_rests_on_the_caps_until_jobs_have_been_timed(tmp_path, monkeypatch):
    pool = jobs.ComputePool(1)
    running = pool.admit(session("x", tmp_path), "distill", "session:x")
    list(pool.wait_turn(running))
    with running.capped(90):
        pool.admit(session("y", tmp_path), "distill", "session:y")
        mine = pool.admit(session("z", tmp_path), "distill", "session:z")
        wait = pool.expected_wait(mine, cap=90)
        # Behind a running job (about 90 s of its cap left) and one waiting (up to 90 s): 180 s at most.
        assert wait.ahead == 2 and wait.typical is None and 175 <= wait.bound <= 180
        text = jobs.waiting_text(wait.ahead, wait)
        assert "2 jobs ahead of yours" in text and "at most 3 min" in text and "capped at 1.5 min" in text


def test_the_expected_wait_uses_the_measured_durations_of_recent_jobs(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(jobs.time, "monotonic", lambda: clock[0])
    pool = jobs.ComputePool(2)
    for name in ("p", "q", "r"):  # three distillations of 30 s each finish
        done = pool.admit(session(name, tmp_path), "distill", f"session:{name}")
        list(pool.wait_turn(done))
        clock[0] += 30
        pool.release(done)
    a, b = (pool.admit(session(k, tmp_path), "distill", f"session:{k}") for k in ("a", "b"))
    list(pool.wait_turn(a)), list(pool.wait_turn(b))
    clock[0] += 10  # both running for 10 s: about 20 s left each
    c = pool.admit(session("c", tmp_path), "distill", "session:c")
    mine = pool.admit(session("d", tmp_path), "distill", "session:d")
    wait = pool.expected_wait(mine, cap=300)
    # Two slots: c starts in about 20 s, mine when the other running one ends, also about 20 s.
    assert wait.ahead == 3 and wait.typical == pytest.approx(20) and wait.bound == pytest.approx(300)
    pool.release(a)
    list(pool.wait_turn(c))  # c takes a's slot; mine waits for b (about 20 s left)
    assert pool.expected_wait(mine, cap=300).typical == pytest.approx(20)
    text = jobs.waiting_text(2, pool.expected_wait(mine, cap=300))
    assert "about 20 s" in text and "last 4 such jobs" in text and "at most 5 min" in text and "ahead of yours" in text


def test_a_waiting_handler_shows_the_expected_wait(tmp_path):
    pool = jobs.ComputePool(1)
    blocker = pool.admit(session("x", tmp_path), "distill", "session:x")
    list(pool.wait_turn(blocker))
    original = jobs.POOL
    jobs.POOL = pool
    try:
        steps = jobs.guarded(session("w", tmp_path), "distill", "session:w", lambda job: iter(["ran"]),
                             say=lambda phase, text: (phase, text))
        phase, text = next(steps)
        assert phase == "waiting" and "1 job ahead of yours" in text and "Expected wait: at most" in text
        steps.close()
    finally:
        jobs.POOL = original
