"""Evaluator seconds: training a fresh network on a synthetic set through ConvNet's fast CPU path
(`forward_fast`, what `evaluate` uses) against the plain `forward`, alternated in one run.

    DD_DATA_ROOT=<data> python -m benchmarks.eval_speed --dataset mnist --ipc 10 --epochs 40 --repeats 2
"""
from __future__ import annotations

import argparse
import importlib
import json
import time

import torch

from dd_core.data import load_dataset
from dd_core.synthetic import init_synthetic

from .alternate import plain_forward, plain_then_fast
from .reproduce import allocator, code_version

ev = importlib.import_module("dd_core.evaluate")  # the module (the package exports a function of that name)


def one_run(dataset, syn, epochs: int, plain: bool) -> tuple[float, float]:
    with plain_forward(ev, plain):
        t0 = time.perf_counter()
        result = ev.evaluate(syn.images, syn.labels, dataset, ev.protocol("paper", epochs=epochs, num_models=1),
                             device=torch.device("cpu"))
        return time.perf_counter() - t0, result.accuracies[0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    syn = init_synthetic(dataset, args.ipc, seed=0)  # real images of each class: a typical set to train on
    seconds, accs = plain_then_fast(lambda plain: one_run(dataset, syn, args.epochs, plain), args.repeats)
    plain, fast = seconds["plain"], seconds["fast"]
    print(json.dumps({"dataset": args.dataset, "ipc": args.ipc, "epochs": args.epochs, "threads": args.threads,
                      "protocol": "paper (DSA), 1 network, final test accuracy on the whole test set",
                      "plain_s": round(plain, 1), "fast_s": round(fast, 1), "speedup": round(plain / fast, 2),
                      "accuracy_plain": accs["plain"], "accuracy_fast": accs["fast"], "allocator": allocator(), "code_version": code_version()}))


if __name__ == "__main__":
    main()
