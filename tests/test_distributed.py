"""dd_core.distributed: shares, backend choice, and two gloo processes on the CPU (slow)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dd_core import distributed


def test_shares_cover_every_job_once_and_keep_their_index():
    for n in range(0, 7):
        for world in (1, 2, 3):
            parts = [distributed.share(n, r, world) for r in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(n))
    assert distributed.share(5, 1, 2) == [1, 3]
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        distributed.share(4, 2, 2)


def test_backend_is_nccl_on_gpus_and_gloo_on_cpus():
    assert distributed.backend(True) == "nccl" and distributed.backend(False) == "gloo"


def test_one_process_needs_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.launched(cuda=False) as place:
        assert place == distributed.Place(0, 1, torch.device("cpu")) and place.is_main
        assert distributed.gather_floats([0.5], place) == [0.5]


SCRIPT = """
import json, sys
from dd_core import distributed
with distributed.launched(cuda=False) as place:
    mine = [float(i) for i in distributed.share(5, place.rank, place.world)]
    print(json.dumps({"rank": place.rank, "world": place.world, "all": distributed.gather_floats(mine, place)}))
"""


@pytest.mark.slow
def test_two_gloo_processes_under_torchrun_gather_every_share(tmp_path):
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script)], capture_output=True, text=True, env=env, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = sorted((line for line in out.stdout.splitlines() if line.startswith("{")))
    assert len(rows) == 2 and all('"world": 2' in r and '"all": [0.0, 2.0, 4.0, 1.0, 3.0]' in r for r in rows), rows
