"""Start-up warm-ups, kept off the critical path: the page is served while they run.

- In this process (a thread, about a second of work): the digits data and one DM step, so the
  first press of Distill does not pay for sklearn's and torch.optim's first imports; then the
  random-real baselines the lessons compare with (digits, IPC 1 and 10, the fast protocol with one
  network, a few seconds each), into the same cache every visitor's evaluation reads.
- In this process (another thread, about 15 s of CPU): the digits experts of MTT's fast preset.
- In the low-priority UMAP worker process (dd_core/umap_worker.py): numba's compilation and the
  digits feature map, tens of seconds that would otherwise hold this server's GIL.
"""
from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("distillery.app")


def preload() -> None:
    """The digits data (sklearn's import is slow) and one DM step on it, which imports what
    torch.optim pulls in on first use (torch._dynamo: seconds on a busy CPU)."""
    from dd_core import load_dataset, make_method
    from dd_core.distill import distill

    digits = load_dataset("digits")
    for _ in distill(digits, make_method("dm", dataset="digits", ipc=1, batch_real=8), method_name="dm",
                     ipc=1, steps=1):
        pass
    baselines(digits)


def baselines(digits=None, ipcs=(1, 10)) -> None:
    """The random baselines of the digits lessons (random-vs-dm and ten-against-all compare with
    IPC 1 under the fast protocol, one network): computed once, as a visitor's evaluation would,
    and kept in evaluate_run's shared cache."""
    import tempfile
    import threading
    from pathlib import Path

    from dd_core import load_dataset
    from dd_core.synthetic import random_subset

    from . import evaluate_run
    from .sessions import Session

    digits = digits or load_dataset("digits")
    config = evaluate_run.config_for("fast", 1, None)
    session = Session("warm-up", Path(tempfile.gettempdir()))  # nothing is written: only the dataset's name is read
    for ipc in ipcs:
        try:
            evaluate_run.baseline(session, random_subset(digits, ipc), config, stop=threading.Event())
        except Exception as err:  # noqa: BLE001 - a failed warm-up only means the first evaluation computes it
            log.warning("baseline warm-up failed: %s", err)


def experts() -> None:
    """The digits expert trajectories of the trajectory-matching methods' fast preset (MTT, TESLA
    and DATM's first window share them), trained once into the cache: about 15 s of CPU, so that
    the first MTT run on digits starts at once instead of training them; then DATM's labelling
    expert (one expert trained on further, about 20 s)."""
    from dd_core import load_dataset, make_method
    from dd_core.experts import get_experts

    digits = load_dataset("digits")
    wanted = []  # (recipe, experts, seed), each built or read once: MTT's and DATM's windows share theirs
    for name in ("mtt", "datm"):
        method = make_method(name, dataset="digits", ipc=1)
        recipe = method.recipe(digits)
        wanted.append((recipe, method.num_experts, method.expert_seed))
        labeller = method.labeller_recipe(digits, recipe.epochs)
        if labeller is not None:
            wanted.append((labeller, 1, method.expert_seed))
    try:
        for recipe, count, seed in dict.fromkeys(wanted):
            get_experts(digits, recipe, count, seed=seed)
    except Exception as err:  # noqa: BLE001 - a failed warm-up only means the first run trains them
        log.warning("expert warm-up failed: %s", err)


def _umap() -> None:
    from dd_core import embed

    try:
        embed.warm_up(digits_map=True)
    except Exception as err:  # noqa: BLE001 - a failed warm-up only means a slower first map
        log.warning("UMAP warm-up failed: %s", err)


def start() -> None:
    """Run both warm-ups in background threads (skipped with DISTILLERY_WARMUP=0)."""
    if os.environ.get("DISTILLERY_WARMUP", "1") == "0":
        return
    threading.Thread(target=preload, name="preload", daemon=True).start()
    threading.Thread(target=_umap, name="umap-warmup", daemon=True).start()
    threading.Thread(target=experts, name="experts-warmup", daemon=True).start()
