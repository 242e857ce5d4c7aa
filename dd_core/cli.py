"""Command line: `python -m dd_core distill | evaluate | labels | experts | list`.

Bad input exits with status 2 and one line that says what to do; never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from . import defaults
from .evaluate import PROTOCOLS, protocol_help
from .methods.base import PRESETS
from .synthetic import INITS
from .tradeoff import LABEL_PROTOCOLS
from .transfer import TransferConfig


def _threads() -> None:
    # Use every core deliberately; torch and numba both otherwise guess.
    torch.set_num_threads(int(os.environ.get("DD_THREADS", os.cpu_count() or 1)))


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=quiet, file=sys.stderr, dynamic_ncols=True)


def _positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (steps, IPC): a run of -5 steps is a typo."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1 (got {text[:40]!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1 (got {value})")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive: expected a number of minutes above 0 (got {text[:40]!r})")
    return value


def cmd_distill(args) -> int:
    from .data import load_dataset
    from .distill import distill, time_budget
    from .methods import METHODS, make_method
    from .methods.base import method_overrides
    from .synthetic import check_ipc

    dataset = load_dataset(args.dataset)
    check_ipc(dataset, args.ipc)
    method = make_method(args.method, preset=args.preset, dataset=dataset.name, ipc=args.ipc,
                         **method_overrides(args.method, args.set))
    steps = args.steps if args.steps is not None else METHODS.get(args.method).default_steps(
        args.preset, dataset=dataset.name, ipc=args.ipc)
    bar = _progress(steps, f"{args.method} {dataset.name} ipc={args.ipc}", args.quiet)
    # Until the first snapshot: a first run may train and cache networks first (a teacher, experts,
    # an encoder), minutes on a CPU for 32 px data, with the bar at 0.
    bar.set_postfix_str("setting up; a first run trains and caches the networks the method needs")
    stop, timer = time_budget(args.minutes)
    last = None
    for last in distill(dataset, method, method_name=args.method, ipc=args.ipc, steps=steps, seed=args.seed,
                        init=args.init, snapshot_every=max(1, steps // 100), stop=stop):
        bar.n = last.step
        bar.set_postfix({k: f"{v:.4g}" for k, v in last.stats.items() if k != "step"})
        bar.refresh()
    bar.close()
    if timer is not None:
        timer.cancel()
    syn = last.synthetic
    syn.extra_meta["preset"] = args.preset
    syn.extra_meta["seconds"] = f"{last.elapsed:.2f}"
    syn.save(args.out)
    if args.grid:
        syn.save_grid(args.grid)
    print(json.dumps({"out": str(args.out), "status": last.status, "message": last.message, "steps": last.step,
                      "seconds": round(last.elapsed, 2), "final": last.stats}))
    return 0 if last.status in ("done", "stopped") else 1


def cmd_evaluate(args) -> int:
    from .data import load_dataset
    from .evaluate import dataset_for, evaluate, for_set, protocol
    from .labels import load_store, same_kind
    from .metrics import dd_ranking
    from .transfer import refuse_unlabelled
    from .synthetic import SyntheticSet, random_subset

    syn = SyntheticSet.load(args.file)
    refuse_unlabelled(syn)  # a KRR-ST set has no class labels: `transfer` evaluates it
    if args.dataset is None and syn.dataset.startswith("folder:"):  # only the folder's name is recorded
        raise ValueError(f"{args.file} was distilled from an image folder named {syn.dataset[7:]!r}; the file keeps its "
                         f"name, not its place on disk. Pass it: --dataset folder:<path of that folder>")
    dataset = load_dataset(args.dataset or syn.dataset)
    check_compatible(syn, dataset)
    dataset = dataset_for(syn, dataset)  # a ZCA-whitened set trains and tests on whitened data
    overrides = {k: v for k, v in (("num_models", args.models), ("epochs", args.epochs), ("model", args.arch)) if v}
    config = for_set(protocol(args.protocol, **overrides), syn)  # learned_lr: the lr the set learned
    bar = _progress(1000, "evaluate", args.quiet or args.json)

    def progress(frac, text):
        bar.n = int(frac * 1000)
        bar.set_description(text)
        bar.refresh()

    store = load_store(syn)
    result = evaluate(syn.images, store, dataset, config, progress=progress)
    out = {"file": str(args.file), "dataset": dataset.name, "method": syn.method, "ipc": syn.ipc, **result.as_dict(),
           "label_spec": store.spec}
    if args.baseline or args.whole is not None:
        # DD-Ranking: IOR against a random subset with the same kind of labels; HLR on hard labels.
        rnd = random_subset(dataset, max(syn.ipc, 1))
        teacher = None
        if store.needs_teacher:  # the teacher the set's labels came from, when it records one (teachers.py)
            from .teacher import get_teacher
            from .teachers import teacher_of_set
            teacher = teacher_of_set(syn, dataset) or get_teacher(dataset)
        base = evaluate(rnd.images, same_kind(store, rnd, dataset, teacher, config), dataset, config, progress=progress)
        out["random_mean"], out["random_std"] = base.mean, base.std
        if store.needs_teacher:
            # the label-first baseline (Xiao et al. 2025): pca's pruned real images with the same labels,
            # equal images and label bytes
            from .tradeoff import pruned_subset

            pruned = pruned_subset(syn, dataset, teacher, None)
            first = evaluate(pruned.images, same_kind(store, pruned, dataset, teacher, config), dataset, config,
                             progress=progress)
            out["label_first_mean"], out["label_first_std"] = first.mean, first.std
    if args.whole is not None:
        if args.whole == "measure":
            from .teacher import whole_reference

            out["whole_accuracy"], out["whole_detail"] = whole_reference(dataset)
        else:
            out["whole_accuracy"], out["whole_detail"] = args.whole, "given on the command line"
        hard = result if store.name == "hard" else evaluate(syn.images, syn.labels, dataset, config, progress=progress)
        out["hard_mean"] = hard.mean
        out.update(dd_ranking(result.mean, base.mean, out["whole_accuracy"], acc_hard=hard.mean))
    if args.rs2:
        # RS2: the same per-epoch image budget (the set's size) and epochs, from the whole training set
        from .rs2 import describe_rs2, evaluate_rs2

        rs2 = evaluate_rs2(dataset, config, len(syn.images), progress=progress)
        out.update({"rs2_mean": rs2.mean, "rs2_std": rs2.std, "rs2_accuracies": rs2.accuracies,
                    "rs2_seconds": round(rs2.seconds, 2), "rs2_detail": describe_rs2(len(syn.images), dataset, config),
                    "distill_seconds": float(syn.extra_meta["seconds"]) if "seconds" in syn.extra_meta else None})
    bar.close()
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{syn.method} on {dataset.name}, IPC {syn.ipc}, labels {store.spec}: accuracy {result.mean:.4f} "
          f"+- {result.std:.4f} ({config.describe()})")
    if "random_mean" in out:
        print(f"random real subset, IPC {max(syn.ipc, 1)}, same labels: {out['random_mean']:.4f} +- {out['random_std']:.4f}")
    if "label_first_mean" in out:
        print(f"label-first baseline (easiest real images by pca's rule), same labels: "
              f"{out['label_first_mean']:.4f} +- {out['label_first_std']:.4f}")
    if "whole_accuracy" in out:
        print(f"whole dataset: {out['whole_accuracy']:.4f} ({out['whole_detail']})")
        print(f"DD-Ranking: IOR {out['IOR']:+.4f}, HLR {out['HLR']:+.4f}, LRS {out['LRS']:.4f}")
    if "rs2_mean" in out:
        made = "" if out["distill_seconds"] is None else f", after {out['distill_seconds']:.1f} s of distillation"
        print(f"training on the set: {result.seconds:.1f} s{made}")
        print(f"RS2, {len(syn.images)} fresh real images an epoch: {out['rs2_mean']:.4f} +- {out['rs2_std']:.4f} "
              f"in {out['rs2_seconds']:.1f} s ({out['rs2_detail']})")
    return 0


def _whole(value: str) -> float | str:
    """--whole: 'measure', or an accuracy given as a fraction in [0, 1]."""
    if value == "measure":
        return value
    try:
        whole = float(value)
    except ValueError:
        whole = -1.0
    if not 0.0 <= whole <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 'measure' or a fraction in [0, 1] (got {value!r}; "
                                         "divide a percentage by 100)")
    return whole


def cmd_labels(args) -> int:
    from .tradeoff import labels_command

    return labels_command(args.file, args.protocol, args.stores, args.models, args.json, epochs=args.epochs,
                          image_format=args.image_format, random_set=not args.no_random,
                          pruned_set=not args.no_pruned)


def cmd_experts(args) -> int:
    from .experts import experts_command

    return experts_command(args)


def cmd_transfer(args) -> int:
    from .data import load_dataset
    from .methods.krr_st import TARGETS
    from .synthetic import SyntheticSet
    from .transfer import evaluate_transfer, references, targets_of

    syn = SyntheticSet.load(args.file)
    targets = targets_of(syn)
    if targets is None:
        raise ValueError(f"{args.file} carries no target representations ({TARGETS}): the transfer protocol "
                         f"pre-trains on an unlabelled set with targets; make one with `distill --method krr_st`")
    dataset = load_dataset(args.dataset or syn.dataset)
    check_compatible(syn, dataset)
    config = TransferConfig(model=args.arch, pretrain_epochs=args.epochs, probe_per_class=args.probe_per_class,
                            num_models=args.models)
    result = evaluate_transfer(syn.images, targets, dataset, config)
    out = {"file": str(args.file), "dataset": dataset.name, "method": syn.method, "images": len(syn.images),
           "target_bytes": targets.numel() * 4, **result.as_dict()}
    if args.baseline:  # random real images carrying the same encoder's targets; no pre-training; the encoder
        out.update(references(syn, dataset, config).as_dict())
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{syn.method} on {dataset.name}, {len(syn.images)} unlabelled images + targets: transfer accuracy "
          f"{result.mean:.4f} +- {result.std:.4f} ({config.describe()})")
    if args.baseline:
        print(f"random real images with the encoder's targets: {out['random_mean']:.4f} +- {out['random_std']:.4f}")
        print(f"no pre-training (random weights): {out['none_mean']:.4f} +- {out['none_std']:.4f}")
        print(f"the self-supervised encoder itself ({out['encoder']}): {out['encoder_probe']:.4f}")
    return 0


def cmd_list(args) -> int:
    from .data import dataset_names
    from .label_stores.base import LABEL_STORES
    from .methods import METHODS
    from .methods.base import field_help, hyperparameters
    from .models import MODELS

    print("datasets:", ", ".join(dataset_names()))
    print("models:", ", ".join(MODELS.names()))
    print("label stores:", ", ".join(LABEL_STORES.names()))
    print("methods:")
    for name in METHODS.names():
        cls = METHODS.get(name)
        print(f"  {name}: {cls.paper}")
        for f in hyperparameters(cls):
            print(f"      --set {f.name}={f.default!r}  {field_help(f)}")
    return 0


def check_compatible(syn, dataset) -> None:
    """A synthetic set can only be evaluated on the dataset it was distilled from (same shape, classes)."""
    if tuple(syn.images.shape[1:]) != tuple(dataset.x_train.shape[1:]) or syn.num_classes != dataset.num_classes:
        raise ValueError(f"this synthetic set has images {tuple(syn.images.shape[1:])} and {syn.num_classes} classes "
                         f"but {dataset.name} has {tuple(dataset.x_train.shape[1:])} and {dataset.num_classes}; "
                         f"evaluate it on {syn.dataset!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dd_core", description="Distillery: dataset distillation engine")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("distill", help="distill a dataset into a synthetic set")
    d.add_argument("--dataset", default=defaults.DATASET, help="dataset name or folder:<path> (see `list`)")
    d.add_argument("--method", default=defaults.METHOD)
    d.add_argument("--ipc", type=_positive_int, default=defaults.IPC, help="images per class")
    d.add_argument("--steps", type=_positive_int, default=None, help="outer iterations (default: the preset's)")
    d.add_argument("--minutes", type=_positive_float, default=None,
                   help="time budget: stop after this many minutes (setup included) and keep the last good set")
    d.add_argument("--seed", type=int, default=defaults.SEED)
    d.add_argument("--preset", default=defaults.PRESET, choices=PRESETS)
    d.add_argument("--init", default=defaults.INIT, choices=INITS)
    d.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a hyperparameter")
    d.add_argument("--out", default="synthetic.safetensors")
    d.add_argument("--grid", default=None, help="also save a PNG grid here")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_distill)

    e = sub.add_parser("evaluate", help="train fresh networks on a synthetic set and report test accuracy")
    e.add_argument("file")
    e.add_argument("--protocol", default=defaults.PROTOCOL, choices=list(PROTOCOLS), help=protocol_help())
    e.add_argument("--models", type=int, default=None, help="number of evaluation networks")
    e.add_argument("--epochs", type=int, default=None)
    e.add_argument("--arch", default=None, help="evaluation network (cross-architecture)")
    e.add_argument("--dataset", default=None, help="default: the dataset recorded in the file")
    e.add_argument("--baseline", action="store_true", help="also evaluate a random real subset of the same IPC")
    e.add_argument("--whole", type=_whole, default=None, metavar="measure|FRACTION",
                   help="the whole-dataset reference for the DD-Ranking scores (IOR, HLR, LRS): 'measure' uses "
                        "the cached network trained on the whole training set (trained now if not cached), or "
                        "give its accuracy as a fraction; implies --baseline")
    e.add_argument("--rs2", action="store_true",
                   help="also train with RS2 (Okanovic et al. 2023): a fresh random subset of the whole training "
                        "set each epoch, as many images as the set holds, for the same epochs; with both wall times")
    e.add_argument("--json", action="store_true")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    lab = sub.add_parser("labels", help="bytes vs accuracy of every label store for one synthetic set")
    lab.add_argument("file")
    lab.add_argument("--protocol", default=defaults.PROTOCOL, choices=LABEL_PROTOCOLS)
    lab.add_argument("--stores", nargs="*", default=None)
    lab.add_argument("--models", type=int, default=None)
    lab.add_argument("--epochs", type=int, default=None, help="training epochs (default: the protocol's)")
    lab.add_argument("--image-format", default="uint8",
                     help="how the images are stored, for their bytes: uint8, float16 or float32")
    lab.add_argument("--no-random", action="store_true", help="skip the random-subset reference")
    lab.add_argument("--no-pruned", action="store_true",
                     help="skip the label-first baseline (real images kept by pca's prune rule, same labels)")
    lab.add_argument("--json", action="store_true")
    lab.set_defaults(func=cmd_labels)

    ex = sub.add_parser("experts", help="train expert trajectories for trajectory matching (MTT and kin); "
                                         "runs under torchrun, each process training its share")
    ex.add_argument("--dataset", default="digits")
    ex.add_argument("--model", default=None, help="network (default: the dataset's DD ConvNet)")
    ex.add_argument("--experts", type=int, default=10, help="number of experts (MTT uses 100)")
    ex.add_argument("--epochs", type=int, default=50, help="epochs per expert (a snapshot after each)")
    ex.add_argument("--seed", type=int, default=0, help="seed of expert 0 (expert i uses seed + i)")
    ex.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="recipe: lr, momentum, weight_decay, batch_size, dsa, rho (SAM, FTD), clip and "
                         "grad_penalty (SeT)")
    ex.add_argument("--fp16", action="store_true", help="store the checkpoints as float16 (half the bytes)")
    ex.add_argument("--out", required=True, help="folder for expert_NNN.safetensors and index.json")
    ex.add_argument("--resume", action="store_true",
                    help="keep the expert files an interrupted run of the same command left in --out (same dataset, "
                         "recipe, seed and dtype; each is checked) and train only the rest")
    ex.add_argument("--quiet", action="store_true")
    ex.set_defaults(func=cmd_experts)

    t = sub.add_parser("transfer", help="pre-train on an unlabelled set with targets (KRR-ST) and linear-probe")
    t.add_argument("file")
    t.add_argument("--epochs", type=int, default=300, help="pre-training epochs on the set")
    t.add_argument("--probe-per-class", type=int, default=TransferConfig.probe_per_class,
                   help="labelled images per class for the probe (default %(default)s); 0 = all")
    t.add_argument("--models", type=int, default=3, help="number of networks")
    t.add_argument("--arch", default=None, help="the pre-trained network (default: the ConvNet for the resolution)")
    t.add_argument("--dataset", default=None, help="default: the dataset recorded in the file")
    t.add_argument("--baseline", action="store_true",
                   help="also random real images with the encoder's targets, no pre-training, and the encoder itself")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_transfer)

    ls = sub.add_parser("list", help="list datasets, models, methods and their hyperparameters")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    from .data import DatasetUnavailable
    from .registry import UnknownNameError
    from .synthetic import SyntheticFileError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its usage line and the reason
        return int(exit_.code or 0)
    _threads()
    t0 = time.perf_counter()
    try:
        code = args.func(args)
    except (UnknownNameError, DatasetUnavailable, SyntheticFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if not getattr(args, "json", False) and not getattr(args, "quiet", False):
        print(f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return code
