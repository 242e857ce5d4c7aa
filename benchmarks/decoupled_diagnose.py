"""Where the decoupled methods lose to a random subset with the same teacher's labels on digits
(BENCHMARKS 15d): each method's set beside variants that change one thing (crop zoom, start, steps,
step size, labels per view or per image), all at IPC 10 under the soft protocol (100 epochs), and
under the same protocol without random-resized crops (area 1: RDED's own student views for
factor-1 sets). Also the recovery loss's BN term on real batches against recovered ones. One JSON
line per row.

    nice -n 10 python -m benchmarks.decoupled_diagnose --networks 2 --out benchmarks/results/decoupled_diagnose_digits.jsonl
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from dd_core import load_dataset
from dd_core.distill import run_to_end
from dd_core.evaluate import evaluate, protocol
from dd_core.labels import build_spec, load_store
from dd_core.methods import make_method
from dd_core.methods.bn_taps import recover_loss, tapped
from dd_core.methods.recover import slot_order
from dd_core.synthetic import random_subset
from dd_core.teachers import get_bn_teacher

from .decoupled import line

# (row name, method or "random", overrides, steps, labels: "own" | "teacher" | "soft", protocol crop areas)
ROWS = [
    ("random", "random", {}, 0, "teacher", (0.08, 1.0)),
    ("random", "random", {}, 0, "soft", (0.08, 1.0)),
    ("rded fast preset (crops of area >= 0.5)", "rded", {}, 100, "own", (0.08, 1.0)),
    ("rded whole images (crop area 1)", "rded", {"crop_min": 1.0}, 100, "own", (0.08, 1.0)),
    ("sre2l fast preset (300 steps)", "sre2l", {}, 300, "own", (0.08,)),
    ("sre2l 1000 steps (paper)", "sre2l", {"horizon": 1000}, 1000, "own", (0.08,)),
    ("sre2l from real images", "sre2l", {"init": "real"}, 300, "own", (0.08,)),
    ("infer fast preset (lr 0.1)", "infer", {}, 300, "own", (0.08, 1.0)),
    ("infer fast preset (lr 0.1)", "infer", {}, 300, "teacher", (0.08,)),
    ("infer lr 0.01", "infer", {"lr": 0.01}, 300, "own", (0.08, 1.0)),
]


def bn_terms(teacher, images: torch.Tensor, labels: torch.Tensor, ipc: int) -> dict:
    """The recovery loss's parts on class-major images, in SRe2L's groups of one image per class."""
    net, sink = tapped(teacher.net)
    order = slot_order(int(labels.max()) + 1, ipc)
    with torch.no_grad():
        _, stats = recover_loss(net, sink, images[order], labels[order], groups=ipc, bn_weight=0.01,
                                first_bn_multiplier=10.0)
    return {"bn_per_group": round(stats["bn"], 3), "ce": round(stats["ce"], 5),
            "layer_terms_per_group": [round(float(t) / ipc, 3) for t in sink.terms]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--networks", type=int, default=2)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset, cpu = load_dataset("digits"), torch.device("cpu")
    teacher = get_bn_teacher(dataset, "convnet_bn", device=cpu)
    rnd = random_subset(dataset, args.ipc)
    line(args.out, row="random (real images)", ipc=args.ipc, **bn_terms(teacher, rnd.images, rnd.labels, args.ipc))
    made = {}
    for name, method, overrides, steps, labels, crops in ROWS:
        key = (method, json.dumps(overrides, sort_keys=True))
        if method == "random":
            syn, cpu_s = rnd, 0.0
        elif key in made:
            syn, cpu_s = made[key]
        else:
            t0 = time.process_time()
            syn = run_to_end(dataset, make_method(method, dataset="digits", ipc=args.ipc, **overrides),
                             method_name=method, ipc=args.ipc, steps=steps, seed=0, device=cpu).synthetic
            cpu_s = time.process_time() - t0
            made[key] = syn, cpu_s
            line(args.out, row=name, ipc=args.ipc, steps=steps, distill_cpu_s=round(cpu_s, 1),
                 **bn_terms(teacher, syn.images, syn.labels, args.ipc))
        for crop_min in crops:
            config = protocol("soft", num_models=args.networks, epochs=args.epochs, crop_min=crop_min)
            store = load_store(syn) if labels == "own" else build_spec(labels, syn, dataset, teacher, config)
            result = evaluate(syn.images, store, dataset, config, device=cpu)
            line(args.out, row=name, set=method, labels=store.spec, ipc=args.ipc, protocol_crop_min=crop_min,
                 accuracy=result.mean, accuracies=result.accuracies, dataset="digits", protocol=config.protocol,
                 protocol_detail=config.describe(), teacher=teacher.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
