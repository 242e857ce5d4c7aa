"""Start-up warm-ups, kept off the critical path.

numba (inside umap-learn) compiles for tens of seconds the first time; the compiled code is cached
on disk under NUMBA_CACHE_DIR. A low-priority child process does that compilation (and trains the
digits feature network, also cached on disk) while the page is already usable, so it never holds
the server's GIL or competes with a user's run at equal priority.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

_SCRIPT = """
import os
os.nice(19)
import torch
torch.set_num_threads(1)
from dd_core.embed import warm_up
warm_up()
"""


def preload() -> None:
    """In-process, cheap: the digits data (sklearn's import is slow) and one DM step on it, which
    imports what torch.optim pulls in on first use (torch._dynamo, seconds on a busy CPU)."""
    from dd_core import load_dataset, make_method
    from dd_core.distill import distill

    digits = load_dataset("digits")
    for _ in distill(digits, make_method("dm", dataset="digits", ipc=1, batch_real=8), method_name="dm",
                             ipc=1, steps=1):
        pass


def start() -> subprocess.Popen | None:
    """Preload in a thread and launch the warm-up process; returns the process (None when disabled
    with DISTILLERY_WARMUP=0)."""
    if os.environ.get("DISTILLERY_WARMUP", "1") == "0":
        return None
    threading.Thread(target=preload, name="preload", daemon=True).start()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT], cwd=root, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it when done
    return proc
