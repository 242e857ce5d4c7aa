"""The launched app driven by the real gradio_client: /distill streams, /evaluate, /stop, errors."""
from __future__ import annotations

import os

import pytest

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


def test_evaluate_rejects_a_file_that_is_not_a_set(url, tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"\x00" * 64)
    client = gradio_client.Client(url, verbose=False)
    with pytest.raises(Exception, match="not a readable .safetensors"):
        client.predict(gradio_client.handle_file(str(bogus)), api_name="/evaluate")
