"""Shared test fixtures: few threads, an isolated cache, and the real data when it is present."""
from __future__ import annotations

import os
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
