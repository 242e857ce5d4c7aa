"""Evaluator seconds, two layouts of one computation alternated in one run (a changing load falls on both).

`--protocol paper` (default): training a fresh network on a synthetic set through ConvNet's fast CPU
path (`forward_fast`, what `evaluate` uses) against the plain `forward`.

`--protocol soft`: the decoupled papers' soft-label recipe with the online teacher labelling every view,
its weights in channels-last (`models.inference_layout`, what the label store does on a CPU) against
NCHW. The teacher is an untrained network of `--teacher-arch`: a forward's seconds do not depend on
the weights, and it spares training one just to time it; the accuracies are then meaningless, but
the two layouts must agree on them (the same function, to float rounding).

    DD_DATA_ROOT=<data> python -m benchmarks.eval_speed --dataset mnist --ipc 10 --epochs 40 --repeats 2
    DD_DATA_ROOT=<data> python -m benchmarks.eval_speed --dataset cifar10 --ipc 10 --protocol soft --epochs 4 --repeats 2
"""
from __future__ import annotations

import argparse
import importlib
import json
import time

import torch

from dd_core.data import load_dataset
from dd_core.label_stores.online import OnlineTeacher, network_for
from dd_core.models import inference_layout
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


def one_soft_run(dataset, syn, store: OnlineTeacher, epochs: int, nchw: bool) -> tuple[float, float]:
    cpu = torch.device("cpu")
    if nchw:
        store.net.to(memory_format=torch.contiguous_format)
    else:
        inference_layout(store.net, cpu)
    t0 = time.perf_counter()
    result = ev.evaluate(syn.images, store, dataset, ev.protocol("soft", epochs=epochs, num_models=1), device=cpu)
    return time.perf_counter() - t0, result.accuracies[0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--protocol", default="paper", choices=["paper", "soft"])
    p.add_argument("--teacher-arch", default="convnet_bn", help="soft: the online teacher's network")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    syn = init_synthetic(dataset, args.ipc, seed=0)  # real images of each class: a typical set to train on
    common = {"dataset": args.dataset, "ipc": args.ipc, "epochs": args.epochs, "threads": args.threads}
    if args.protocol == "soft":
        net = network_for(syn, args.teacher_arch, seed=0)
        for q in net.parameters():
            q.requires_grad_(False)
        store = OnlineTeacher(net, arch=args.teacher_arch, dtype="float32", temperature=1.0)
        for nchw in (True, False):  # warm-up, not counted: first calls pay for oneDNN's kernel choice
            one_soft_run(dataset, syn, store, 1, nchw)
        seconds, accs = plain_then_fast(lambda nchw: one_soft_run(dataset, syn, store, args.epochs, nchw), args.repeats)
        print(json.dumps({**common, "protocol": "soft (online teacher), 1 network, final test accuracy",
                          "teacher": f"{args.teacher_arch}, untrained (timing only)",
                          "nchw_s": round(seconds["plain"], 1), "channels_last_s": round(seconds["fast"], 1),
                          "speedup": round(seconds["plain"] / seconds["fast"], 3),
                          "accuracy_nchw": accs["plain"], "accuracy_channels_last": accs["fast"],
                          "allocator": allocator(), "code_version": code_version()}))
        return
    seconds, accs = plain_then_fast(lambda plain: one_run(dataset, syn, args.epochs, plain), args.repeats)
    plain, fast = seconds["plain"], seconds["fast"]
    print(json.dumps({**common, "protocol": "paper (DSA), 1 network, final test accuracy on the whole test set",
                      "plain_s": round(plain, 1), "fast_s": round(fast, 1), "speedup": round(plain / fast, 2),
                      "accuracy_plain": accs["plain"], "accuracy_fast": accs["fast"], "allocator": allocator(), "code_version": code_version()}))


if __name__ == "__main__":
    main()
