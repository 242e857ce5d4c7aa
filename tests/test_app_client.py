"""The launched app driven by the real gradio_client: /distill streams, /evaluate, /stop, errors."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gradio_client = pytest.importorskip("gradio_client")

from dd_core.synthetic import SyntheticSet  # noqa: E402


@pytest.fixture(scope="module")
def url(app_url):
    return app_url


def test_distill_streams_then_evaluate(url):
    client = gradio_client.Client(url, verbose=False)
    job = client.submit("digits", "dm", 2, 12, 0, api_name="/distill")
    job.result(timeout=120)
    updates = job.outputs()
    assert len(updates) >= 3  # loading, warming up, the initial set, ..., the end
    progress, set_file = updates[-1]
    assert progress["status"] == "done" and progress["step"] == 12
    assert all(u[1] is None for u in updates[:-1])  # the file comes with the last update
    syn = SyntheticSet.load(set_file)
    assert syn.dataset == "digits" and syn.method == "dm" and tuple(syn.images.shape) == (20, 1, 8, 8)
    result = client.predict(gradio_client.handle_file(set_file), "fast", 1, "mlp", api_name="/evaluate")
    assert 0.0 < result["accuracy_mean"] <= 1.0 and result["accuracy_std"] == 0.0
    assert result["protocol"] == "fast" and len(result["accuracies"]) == 1


def test_stop_in_the_middle_returns_a_valid_set(url):
    client = gradio_client.Client(url, verbose=False)
    job = client.submit("digits", "dm", 1, 3000, 0, api_name="/distill")
    for progress, _ in job:
        if progress.get("step", 0) >= 1:
            client.predict(api_name="/stop")  # the same client is the same session
            break
    progress, set_file = job.result(timeout=120)
    assert progress["status"] == "stopped" and 1 <= progress["step"] < 3000
    syn = SyntheticSet.load(set_file)
    assert syn.steps == progress["step"] and syn.images.isfinite().all()


@pytest.mark.parametrize("args, fragment", [(("digits", "dm", 0, 10, 0), "at least 1"),
                                            (("digits", "dm", 1, 10**7, 0), "Steps must be between"),
                                            (("folder:/no/such/folder", "dm", 1, 5, 0), "does not exist")])
def test_bad_input_is_an_error_message(url, args, fragment):
    client = gradio_client.Client(url, verbose=False)
    with pytest.raises(Exception, match=fragment):
        client.predict(*args, api_name="/distill")
    progress, set_file = client.predict("digits", "dm", 1, 1, 0, api_name="/distill")  # still working
    assert progress["status"] == "done" and set_file.endswith(".safetensors")


def test_evaluate_beside_rs2_reports_both_sides_with_their_seconds(url):
    client = gradio_client.Client(url, verbose=False)
    _, set_file = client.predict("digits", "random", 1, 1, 0, api_name="/distill")
    result = client.predict(gradio_client.handle_file(set_file), "fast", 1, "mlp", True, api_name="/evaluate")
    rs2 = result["rs2"]
    assert 0.0 < rs2["accuracy_mean"] <= 1.0 and len(rs2["accuracies"]) == 1 and rs2["seconds"] > 0
    assert rs2["protocol"] == result["protocol"] == "fast" and "mlp" in rs2["protocol_detail"]
    assert "rs2" not in client.predict(gradio_client.handle_file(set_file), "fast", 1, "mlp", api_name="/evaluate")
    with pytest.raises(Exception, match="rs2 is true or false"):
        client.predict(gradio_client.handle_file(set_file), "fast", 1, "mlp", "yes", api_name="/evaluate")


def test_evaluate_takes_a_krr_st_set_by_transfer_and_refuses_rs2_for_it(url, tmp_path):
    from dd_core import load_dataset
    from dd_core.methods.krr_st import TARGETS
    from dd_core.synthetic import init_synthetic

    syn = init_synthetic(load_dataset("digits"), 1, seed=0, method="krr_st")
    syn.extra[TARGETS] = torch.randn(10, 16, generator=torch.Generator().manual_seed(0))
    path = gradio_client.handle_file(str(syn.save(tmp_path / "krr.safetensors")))
    client = gradio_client.Client(url, verbose=False)
    result = client.predict(path, "fast", 1, "mlp", api_name="/evaluate")
    assert result["protocol"] == "transfer" and result["pretraining"] == "synthetic set"
    assert len(result["accuracies"]) == 1 and 0.0 < result["accuracy_mean"] <= 1.0
    assert "mlp pre-trained 300 epochs" in result["protocol_detail"]
    with pytest.raises(Exception, match="evaluated by transfer"):
        client.predict(path, "fast", 1, "mlp", True, api_name="/evaluate")


def test_evaluate_rejects_a_file_that_is_not_a_set(url, tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"\x00" * 64)
    client = gradio_client.Client(url, verbose=False)
    with pytest.raises(Exception, match="not a readable .safetensors"):
        client.predict(gradio_client.handle_file(str(bogus)), api_name="/evaluate")


def test_a_request_waiting_in_gradios_queue_keeps_its_session(url, monkeypatch):
    """A classroom fills gradio's admitted compute events, so a student's next request can wait in
    gradio's queue longer than the idle limit, before any handler of ours registers a job; the idle
    sweep must not drop that student's session (and set) meanwhile. A session nobody uses still goes."""
    import time
    from types import SimpleNamespace

    import app
    from components import sessions

    client = gradio_client.Client(url, verbose=False)
    client.predict("digits", "dm", 1, 2, 0, api_name="/distill")
    left = sessions.session_for(SimpleNamespace(session_hash="a-visitor-who-left"))
    line = app.demo._queue.event_queue_per_concurrency_id["compute"]
    admitted = line.concurrency_limit
    monkeypatch.setattr(line, "concurrency_limit", 0)  # gradio admits no compute event: the map waits in its queue
    job = client.submit("random", "PCA", api_name="/feature_map")
    try:
        deadline = time.time() + 30
        while not any(e.session_hash == client.session_hash for e in line.queue) and time.time() < deadline:
            time.sleep(0.1)
        assert any(e.session_hash == client.session_hash for e in line.queue)
        monkeypatch.setattr(sessions, "IDLE_SECONDS", 0.0)
        sessions.sweep_idle()
        assert left.closed  # the memory rule holds for those who left
    finally:
        line.concurrency_limit = admitted
    view = job.result(timeout=120)  # before: "This client has no synthetic set yet: call /distill first."
    assert view["projection"] == "PCA" and len(view["synthetic_xy"]) == 10
