"""A network trained on the whole real training set, for the gap between this copy of a dataset and the
papers' whole-set figure (ConvNet-3 on CIFAR-10: 84.8 %).

The network is the evaluator's (`--arch`, default the dataset's ConvNet: instance norm, width 128) and the
recipe the teachers' (teachers.TeacherRecipe: SGD lr 0.05 cosine to 0, momentum 0.9, wd 5e-4, batch 128,
shifts and flips where they keep the class) for `--epochs`, a CPU budget; one JSON line with the final
test accuracy and the CPU seconds. Nothing is cached.

    DD_DATA_ROOT=<data> python -m benchmarks.whole_set --dataset cifar10 --epochs 12 --threads 2 \
        --out benchmarks/results/whole_set.jsonl
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from dd_core.data import load_dataset
from dd_core.teachers import TeacherRecipe, train_teacher
from dd_core.training import test_accuracy

from .reproduce import code_version


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--arch", default="convnet", help="a registered network (default: the evaluator's ConvNet)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="append the JSON line here too")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    recipe = TeacherRecipe(args.arch, args.epochs)
    w0, c0 = time.perf_counter(), time.process_time()
    net = train_teacher(dataset, recipe, seed=args.seed, device=torch.device("cpu"))
    train_wall, train_cpu = time.perf_counter() - w0, time.process_time() - c0
    row = {"bench": "whole_set", "dataset": dataset.name, "network": f"{args.arch} ({type(net).__name__})", "recipe": recipe.describe(),
           "train_images": len(dataset.x_train), "test_images": len(dataset.x_test), "seed": args.seed,
           "test_accuracy": test_accuracy(net, dataset, torch.device("cpu")), "report": "final epoch",
           "published_whole": dataset.published_whole, "train_seconds": round(train_wall, 1),
           "train_cpu_seconds": round(train_cpu, 1), "threads": args.threads, "code_version": code_version()}
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
