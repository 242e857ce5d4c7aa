"""DC/DSA seconds per step: the fast CPU path (`forward_fast` for the real side's gradients and the
inner training) against the plain `forward` everywhere, alternated in one run from the same seed,
so the matching losses must agree to rounding.

    DD_DATA_ROOT=<data> python -m benchmarks.dsa_speed --dataset fashion_mnist --ipc 10 --steps 2 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from dd_core.data import load_dataset
from dd_core.methods import gradient_matching as gm
from dd_core.methods import make_method
from dd_core.synthetic import init_synthetic

from .alternate import plain_forward, plain_then_fast
from .reproduce import allocator, code_version


def one_run(dataset, name: str, preset: str, ipc: int, steps: int, plain: bool) -> tuple[float, tuple[list, list]]:
    """Seconds per step (mean over `steps`, after setup), and (each step's mean matching loss, each
    step's first matching loss, taken before that step's inner training)."""
    matching_loss = gm.matching_loss
    first = []

    def recorded(net, *args):
        loss = matching_loss(net, *args)
        first.append(loss.item())
        return loss

    gm.matching_loss = recorded
    try:
        with plain_forward(gm, plain):
            method = make_method(name, preset=preset, dataset=dataset.name, ipc=ipc)
            method.setup(dataset, init_synthetic(dataset, ipc, seed=0), seed=0, device=torch.device("cpu"))
            losses = []
            t0 = time.perf_counter()
            for _ in range(steps):
                losses.append(method.step()["loss"])
            seconds = (time.perf_counter() - t0) / steps
        return seconds, (losses, first[::method.loops_[0]])
    finally:
        gm.matching_loss = matching_loss


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--method", default="dsa", choices=["dc", "dsa"])
    p.add_argument("--preset", default="fast", choices=["fast", "paper"])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    seconds, runs = plain_then_fast(
        lambda plain: one_run(dataset, args.method, args.preset, args.ipc, args.steps, plain), args.repeats)
    plain, fast = seconds["plain"], seconds["fast"]
    losses = {kind: r[-1][0] for kind, r in runs.items()}  # the last repeat's
    firsts = {kind: r[-1][1] for kind, r in runs.items()}
    hp = make_method(args.method, preset=args.preset, dataset=args.dataset, ipc=args.ipc).config()
    print(json.dumps({"dataset": args.dataset, "method": args.method, "preset": args.preset, "ipc": args.ipc,
                      "hyperparameters": hp, "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                      "plain_s_per_step": round(plain, 2), "fast_s_per_step": round(fast, 2),
                      "speedup": round(plain / fast, 2), "loss_plain": losses["plain"], "loss_fast": losses["fast"],
                      # Only the run's first matching loss has the very same network and images on both
                      # paths, and must agree to float32 rounding; after it, rounding differences in the
                      # inner training and the pixel updates grow, and the losses drift apart a little.
                      "first_loss_plain": firsts["plain"][0], "first_loss_fast": firsts["fast"][0],
                      "rel_first_loss_diff": abs(firsts["plain"][0] - firsts["fast"][0]) / abs(firsts["plain"][0]),
                      "max_rel_step_loss_diff": max(abs(a - b) / abs(a) for a, b in zip(losses["plain"], losses["fast"])),
                      "allocator": allocator(), "code_version": code_version()}))


if __name__ == "__main__":
    main()
