"""The launched app over plain HTTP (`/gradio_api/call/...`), as a script or `curl` would use it:
its own /stop, one running and one waiting job per caller, and plain messages for bad numbers."""
from __future__ import annotations

import json
import threading

import pytest

httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def api(app_url):
    return app_url.rstrip("/") + "/gradio_api"


def call(api: str, name: str, data: list, session: str | None = None) -> str:
    body = {"data": data, **({"session_hash": session} if session else {})}
    return httpx.post(f"{api}/call/{name}", json=body, timeout=30).json()["event_id"]


def events(api: str, name: str, event_id: str, on_data=None) -> list[tuple[str, object]]:
    """(event, data) pairs of a call's stream, to its end."""
    out, kind = [], None
    with httpx.stream("GET", f"{api}/call/{name}/{event_id}", timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1]) if line[5:].strip() not in ("", "null") else None
                out.append((kind, data))
                if on_data is not None:
                    on_data(kind, data)
    return out


def test_a_rest_caller_stops_its_own_run_by_naming_its_session(api):
    session = "rest-own-session"
    event = call(api, "distill", ["digits", "dm", 1, 3000, 0], session)
    stopped = threading.Event()

    def stop_after_first_step(kind, data):
        if kind == "generating" and data and data[0].get("step", 0) >= 1 and not stopped.is_set():
            stopped.set()
            call(api, "stop", [], session)  # its result shares the session's stream: not read here

    out = events(api, "distill", event, stop_after_first_step)
    # The session's one stream also carries /stop's own answer (an empty update once the run has
    # ended, which it waits a moment for): the run's result is the complete event with its two outputs.
    finals = [data for kind, data in out if kind == "complete" and isinstance(data, list) and len(data) == 2]
    assert len(finals) == 1, out[-3:]
    progress, set_file = finals[0]
    assert progress["status"] == "stopped" and set_file is not None


def test_rest_callers_without_a_session_get_one_running_and_one_waiting_job(api):
    first = call(api, "distill", ["digits", "dm", 1, 3000, 0])
    second = call(api, "distill", ["digits", "dm", 1, 3000, 1])
    results, heard = {}, {"first": threading.Event(), "second": threading.Event()}

    def follow(key, event_id):
        results[key] = events(api, "distill", event_id, lambda kind, data: kind != "heartbeat" and heard[key].set())

    threads = [threading.Thread(target=follow, args=item) for item in (("first", first), ("second", second))]
    for t in threads:
        t.start()
    # Both are admitted (one running, one waiting) once each stream has said something; until then
    # gradio may still be handing them to their handlers, and the third could overtake them.
    assert all(heard[k].wait(120) for k in heard), "the first two calls were not admitted within 2 minutes"
    refused = events(api, "distill", call(api, "distill", ["digits", "dm", 1, 5, 2]))
    assert refused[-1][0] == "error" and "one running and one waiting" in json.dumps(refused[-1][1]).replace(
        "a job running and one waiting", "one running and one waiting")
    # A /stop from the same address (no session either) ends that caller's runs.
    events(api, "stop", call(api, "stop", []))
    events(api, "stop", call(api, "stop", []))  # the second one, once it has started
    for t in threads:
        t.join(300)
    assert all(results[k][-1][0] == "complete" for k in results)
    assert {results[k][-1][1][0]["status"] for k in results} <= {"stopped", "done"}


@pytest.mark.parametrize("ipc, fragment", [(2.5, "whole number"), (True, "whole number"),
                                           ("ten", "whole number"), (None, "whole number")])
def test_a_number_that_is_not_whole_is_a_plain_message(api, ipc, fragment):
    out = events(api, "distill", call(api, "distill", ["digits", "dm", ipc, 5, 0]))
    assert out[-1][0] == "error" and fragment in json.dumps(out[-1][1])


def test_echoed_input_is_cut_short(api):
    out = events(api, "distill", call(api, "distill", ["x" * 100_000, "dm", 1, 5, 0]))
    message = json.dumps(out[-1][1])
    assert out[-1][0] == "error" and len(message) < 2000 and "characters" in message


def test_gradio_keeps_no_state_for_sessions_dropped_as_idle(api, monkeypatch):
    """Each plain-HTTP call without a session makes a gradio SessionState (about 0.8 MB here) that
    gradio keeps until 10,000 exist; it must go when the app drops the session."""
    import app
    from components import sessions

    holder = app.demo.server_app.state_holder
    before = set(holder.session_data)
    for seed in range(3):
        assert events(api, "distill", call(api, "distill", ["digits", "dm", 1, 2, seed]))[-1][0] == "complete"
    made = set(holder.session_data) - before
    assert len(made) >= 3  # one per call
    monkeypatch.setattr(sessions, "IDLE_SECONDS", 0.0)
    sessions.sweep_idle()
    assert not set(holder.session_data) & made


def test_gradio_state_of_a_refused_sessionless_call_is_dropped_at_the_second_sweep(api):
    """Bad input is refused before the app makes a session, yet gradio made a state for the call."""
    import app
    from components import sessions

    holder = app.demo.server_app.state_holder
    before = set(holder.session_data)
    assert events(api, "distill", call(api, "distill", ["digits", "dm", 2.5, 5, 0]))[-1][0] == "error"
    made = set(holder.session_data) - before
    assert made
    sessions.sweep_idle()  # first seen
    sessions.sweep_idle()  # still there: dropped
    assert not set(holder.session_data) & made
