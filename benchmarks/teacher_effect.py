"""Which teacher makes the better labels: one random subset, the online teacher's labels from several batch-norm
teachers (`ARCH:EPOCHS`, trained with the teachers' recipe and cached), each under the soft protocol. One JSON line
per teacher with its test accuracy, its calibrated label temperature and the students' accuracies (BENCHMARKS 15j).

    DD_DATA_ROOT=<data> python -m benchmarks.teacher_effect --dataset cifar10 --ipc 10 --networks 2 \
        --teachers convnet_bn_w32:2 convnet_bn_w32:15 convnet_bn:2 --out benchmarks/results/teacher_effect.jsonl
"""
from __future__ import annotations

import argparse
import time

import torch

from dd_core import load_dataset
from dd_core.evaluate import evaluate, protocol
from dd_core.labels import build_spec
from dd_core.models import MODELS
from dd_core.synthetic import random_subset
from dd_core.teachers import TEACHERS, TeacherRecipe, get_bn_teacher

from .decoupled import line


def recipe_name(spec: str) -> str:
    """Register `ARCH:EPOCHS` as a teacher recipe (the teachers' SGD recipe at that length); its name."""
    arch, _, epochs = spec.partition(":")
    if arch not in MODELS.names() or not epochs.isdigit() or int(epochs) < 1:
        raise SystemExit(f"a teacher is ARCH:EPOCHS with ARCH one of {', '.join(MODELS.names())}; got {spec!r}")
    name = f"bench_{arch}_e{epochs}"
    if name not in TEACHERS.names():
        TEACHERS.register(name)(lambda dataset, arch=arch, epochs=int(epochs): TeacherRecipe(arch, epochs))
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--teachers", nargs="+", default=["convnet_bn_d2:30"], metavar="ARCH:EPOCHS")
    p.add_argument("--networks", type=int, default=2)
    p.add_argument("--epochs", type=int, default=None, help="default: the soft protocol's 300")
    p.add_argument("--seed", type=int, default=None, help="the random subset's (default: the baseline's, as everywhere)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    dataset = load_dataset(args.dataset)
    names = [recipe_name(spec) for spec in args.teachers]  # every spec checked before anything trains
    config = protocol("soft", num_models=args.networks, **({"epochs": args.epochs} if args.epochs else {}))
    rnd = random_subset(dataset, args.ipc, **({} if args.seed is None else {"seed": args.seed}))
    for spec, name in zip(args.teachers, names):
        c0 = time.process_time()
        teacher = get_bn_teacher(dataset, name, device=cpu)
        teacher_cpu = time.process_time() - c0
        store = build_spec("teacher", rnd, dataset, teacher, config)
        c0 = time.process_time()
        result = evaluate(rnd.images, store, dataset, config, device=cpu)
        line(args.out, bench="teacher_effect", dataset=dataset.name, ipc=args.ipc, set="random", seed=rnd.seed,
             teacher=spec, teacher_test_accuracy=teacher.test_accuracy, label_temperature=store.temperature,
             teacher_cpu_s=round(teacher_cpu, 1), accuracy=result.mean, accuracies=result.accuracies,
             eval_cpu_s=round(time.process_time() - c0, 1), protocol=config.protocol, protocol_detail=config.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
