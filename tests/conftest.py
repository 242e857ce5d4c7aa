"""Shared test fixtures: few threads, an isolated cache, and the real data when it is present."""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tests run beside other work on 2 cores; one thread keeps them steady
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def shared_data_root() -> Path | None:
    """The real benchmark data: $DD_DATA_ROOT, else a `shared/data` folder beside the repository."""
    env = os.environ.get("DD_DATA_ROOT")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for root in candidates:
        if (root / "MNIST" / "raw").is_dir():
            return root
    return None


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("real MNIST/FashionMNIST/CIFAR files not found: set DD_DATA_ROOT to a folder holding them")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Trained teachers are cached per session in a temporary folder, never in the user's home.
    monkeypatch.setenv("DD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dd_cache"))


@pytest.fixture
def session(request):
    """An app session of this test's own (keyed by its name), dropped with its files afterwards.
    Modules that need a set made first define their own `session`."""
    from types import SimpleNamespace

    from components import sessions

    who = SimpleNamespace(session_hash=request.node.name)
    yield sessions.session_for(who)
    sessions.drop_session(who)


# -- the launched app, and Debian's chromium for the browser tests ------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    """The app launched in this process on 127.0.0.1 and a free port; closed after the module."""
    import app

    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.demo.close()


@pytest.fixture(scope="module")
def browser():
    """Playwright driving Debian's chromium (skips when either is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip cleanly, with the reason, on a machine without a CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here); scripts/gpu_check.sh runs these on one")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
