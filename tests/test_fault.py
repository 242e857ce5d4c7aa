"""Corrupt caches repair themselves: every cache file the app writes is garbled, the app restarts,
and the next use of each feature works (issue 16, defect 6)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from dd_core.umap_worker import repair_numba_cache

ROOT = Path(__file__).resolve().parents[1]


def _entry(folder: Path, stem: str, good: bool = True) -> None:
    """A numba-like cache entry: an index (two pickles) and one data file."""
    (folder / f"{stem}.nbi").write_bytes(pickle.dumps("0.61") + pickle.dumps((("stamp", 1), {"sig": f"{stem}.1.nbc"})))
    (folder / f"{stem}.1.nbc").write_bytes(pickle.dumps(b"object code") if good else b"\x80\x05garbage")


def test_unreadable_numba_entries_are_removed_and_good_ones_kept(tmp_path):
    _entry(tmp_path, "good.f-10.py311")
    _entry(tmp_path, "bad_data.f-20.py311", good=False)
    _entry(tmp_path, "bad_index.f-30.py311")
    (tmp_path / "bad_index.f-30.py311.nbi").write_bytes(b":garbage")
    (tmp_path / "orphan.f-40.py311.1.nbc").write_bytes(pickle.dumps(b"x"))
    assert repair_numba_cache(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.f-10.py311.1.nbc", "good.f-10.py311.nbi"]


# Each feature that reads or writes a cache, used once through the app's own handlers.
USE_EVERY_FEATURE = r"""
import sys
from types import SimpleNamespace
import torch
torch.set_num_threads(1)
from components import distill_run, evaluate_tab, feature_view, labels_tab
from components.sessions import session_for
s = session_for(SimpleNamespace(session_hash="fault"))
for method in ("herding", "dm"):   # herding: the cached feature network; dm: a plain run
    last = list(distill_run.run(s, distill_run.check_request("digits", "", method, 1, 2, 0)))[-1]
    assert last.phase == "done", (method, last.text)
status, report = list(evaluate_tab.run_evaluation(s, s.current(), "fast", 1, "mlp", True))[-1]
assert "Done" in status and "whole training set" in report, status   # the teacher (whole-set reference)
view = feature_view.compute_view(s, "trained", "UMAP", paths=False)    # the feature map: teacher + numba
assert view.projection == "UMAP" and len(view.syn_xy) == 10
path = s.run.files["safetensors"]
outs = list(labels_tab.run_labels(labels_tab.SOURCES[1], str(path), None, ["hard", "soft"], "", "fast", 1, 1,
                                  labels_tab.SAME_ARCH, "uint8", False, SimpleNamespace(session_hash="fault")))
assert outs[-1][0].startswith("✓ Done"), outs[-1][0]                    # soft labels: the teacher again
print("ALL FEATURES OK")
"""


def _use_every_feature(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", USE_EVERY_FEATURE], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1500)


@pytest.mark.slow
def test_every_feature_works_after_every_cache_file_is_corrupted(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, DD_CACHE_DIR=str(cache), NUMBA_CACHE_DIR=str(cache / "numba"), DD_THREADS="1",
               GRADIO_ANALYTICS_ENABLED="False")
    first = _use_every_feature(env)
    assert "ALL FEATURES OK" in first.stdout, first.stderr[-3000:]
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert any(p.suffix == ".nbi" for p in files) and any("teachers" in p.parts for p in files)
    for i, p in enumerate(files):  # garble half, truncate the rest
        data = p.read_bytes()
        p.write_bytes(b"\x80\x04garbled" + bytes(range(256)) if i % 2 else data[: len(data) // 2])
    again = _use_every_feature(env)  # a fresh process: the restart
    assert "ALL FEATURES OK" in again.stdout, again.stderr[-3000:]
    assert "unusable" in again.stderr or "unreadable" in again.stderr  # the repair was logged
