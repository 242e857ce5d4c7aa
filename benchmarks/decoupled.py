"""The decoupled family on one dataset under the soft-label protocol: each method's set beside a
random real subset given the same teacher's labels of the same kind ("a label is worth a thousand
images"), the random subset with hard labels, and DM's set with hard labels and with the teacher's
labels. One JSON line per (set, labels); IOR is taken against the random subset with the same kind
of labels.

    nice -n 10 python -m benchmarks.decoupled --dataset digits --ipc 1 10 --networks 1 \
        --out benchmarks/results/decoupled_digits.jsonl
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from dd_core import load_dataset
from dd_core.distill import run_to_end
from dd_core.evaluate import evaluate, for_set, protocol
from dd_core.labels import load_store, same_kind
from dd_core.methods import METHODS, make_method
from dd_core.methods.base import method_overrides
from dd_core.synthetic import random_subset
from dd_core.teachers import teacher_of_set

from .reproduce import code_version

METHODS_RUN = ["sre2l", "cda", "dwa", "cvdd", "infer", "rded"]


def line(out, **row) -> dict:
    row["code_version"] = code_version()
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def overrides_for(method: str, items: list[str]) -> dict:
    """The `--set` items that apply to `method`: unprefixed ones, and those prefixed `method.`."""
    mine = []
    for item in items:
        key, _, value = item.partition("=")
        only, dot, field = key.rpartition(".")
        if not dot or only == method:
            mine.append(f"{field}={value}")
    return method_overrides(method, mine)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    p.add_argument("--methods", nargs="*", default=METHODS_RUN)
    p.add_argument("--preset", default="fast", choices=["fast", "paper"])
    p.add_argument("--networks", type=int, default=1)
    p.add_argument("--epochs", type=int, default=None, help="default: the soft protocol's 300")
    p.add_argument("--dm-steps", type=int, default=None)
    p.add_argument("--no-dm", action="store_true", help="leave DM out (the methods against the random subset only)")
    p.add_argument("--no-hard", action="store_true",
                   help="leave out the random subset with hard labels (context only: no IOR is taken against it)")
    p.add_argument("--set", action="append", default=[], metavar="[METHOD.]FIELD=VALUE",
                   help="a hyperparameter for every method run, or for METHOD's only, e.g. rded.teacher=convnet_bn_128_cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.no_hard and not args.no_dm:
        p.error("DM's set (hard labels) is compared with the random subset's hard labels: add --no-dm to --no-hard")
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    cpu = torch.device("cpu")
    config = protocol("soft", num_models=args.networks, **({"epochs": args.epochs} if args.epochs else {}))
    common = dict(dataset=dataset.name, protocol=config.protocol, protocol_detail=config.describe(), preset=args.preset)
    for ipc in args.ipc:
        baselines: dict[tuple[str, float], float] = {}  # by label kind and the crop floor they were measured at
        rnd = random_subset(dataset, ipc)
        if not args.no_hard:
            hard = evaluate(rnd.images, rnd.labels, dataset, config, device=cpu)
            line(args.out, set="random", labels="hard", ipc=ipc, accuracy=hard.mean, accuracies=hard.accuracies,
                 **common)
        teacher_seen, baselines_store = None, None
        for name in args.methods + ([] if args.no_dm else ["dm"]):
            method = make_method(name, preset=args.preset, dataset=dataset.name, ipc=ipc, **overrides_for(name, args.set))
            steps = args.dm_steps if name == "dm" and args.dm_steps else METHODS.get(name).default_steps(
                args.preset, dataset=dataset.name, ipc=ipc)
            t0 = time.process_time()
            snap = run_to_end(dataset, method, method_name=name, ipc=ipc, steps=steps, seed=0, device=cpu)
            distill_cpu = time.process_time() - t0
            syn = snap.synthetic
            cfg = for_set(config, syn)  # RDED's sets crop no smaller than a patch; the baseline follows
            common_here = {**common, "protocol_detail": cfg.describe()}
            if name == "dm":  # DM makes no labels: hard ones, and the teacher's (the methods' own kind)
                store, teacher = None, teacher_seen
            else:
                store, teacher = load_store(syn), teacher_of_set(syn, dataset, device=cpu)
                teacher_seen = teacher_seen or teacher
            kinds = [("own", store)] if store is not None else [("hard", None)]
            if name == "dm" and baselines_store is not None:
                kinds.append(("teacher", same_kind(baselines_store, syn, dataset, teacher, cfg)))
            for kind, labels in kinds:
                result = evaluate(syn.images, labels if labels is not None else syn.labels, dataset, cfg, device=cpu)
                spec = labels.spec if labels is not None else "hard"
                key = (spec, cfg.crop_min)
                if key not in baselines and labels is not None:  # the random subset with the same kind of labels
                    base = evaluate(rnd.images, same_kind(labels, rnd, dataset, teacher, cfg), dataset, cfg,
                                    device=cpu)
                    baselines[key] = base.mean
                    line(args.out, set="random", labels=spec, ipc=ipc, accuracy=base.mean, accuracies=base.accuracies,
                         teacher=labels.teacher_note, **common_here)
                    if spec.startswith("teacher"):
                        baselines_store = labels
                reference = baselines.get(key, hard.mean if labels is None else None)
                line(args.out, set=name, labels=spec, ipc=ipc, steps=snap.step, status=snap.status,
                     distill_cpu_s=round(distill_cpu, 1), accuracy=result.mean, accuracies=result.accuracies,
                     random_same_labels=reference, IOR=result.mean - reference,
                     teacher=(labels.teacher_note if labels is not None else ""), **common_here)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
