"""Trajectory-matching benchmarks; one JSON line per measurement.

    # accuracy: distill each method, evaluate every set under one protocol with its own labels
    python -m benchmarks.trajectory compare --dataset digits --ipcs 1 10 --methods random dm mtt tesla ftd datm set \
        --steps 200 --out benchmarks/results/trajectory_digits.jsonl
    # ... over several distillation seeds, evaluating the 100-step snapshot of each run too; then the table
    python -m benchmarks.trajectory compare --dataset digits --ipcs 1 --methods mtt dm --steps 300 --eval-at 100 \
        --seeds 0 1 2 --out rows.jsonl
    python -m benchmarks.trajectory table rows.jsonl
    # seconds per MTT iteration: ours against a loop built like the official code, same draws
    python -m benchmarks.trajectory speed --dataset digits --ipc 10 --repeats 5
    # seconds per expert epoch (a few batches, scaled), e.g. on CIFAR-10 with the paper preset's recipe
    python -m benchmarks.trajectory expert-speed --dataset cifar10 --batches 4
    # peak memory of one iteration, MTT (autograd through the unroll) against TESLA (adjoint)
    python -m benchmarks.trajectory memory --dataset digits --ipc 10 --syn-steps 10 20 40

Every line records the settings, the code version and the machine; `speed` alternates the two
loops from the same draws, so a changing load falls on both and their losses must agree.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dd_core.data import load_dataset
from dd_core.distill import distill
from dd_core.evaluate import evaluate_synthetic, protocol
from dd_core.methods import METHODS, make_method
from dd_core.methods.unroll import matching_loss
from dd_core.synthetic import init_synthetic

from .reproduce import allocator, code_version


def _machine() -> dict:
    return {"threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "code_version": code_version(), "allocator": allocator()}


def _overrides(items: list[str], method: str) -> dict:
    out = {}
    for kv in items:
        key, value = kv.split("=", 1)
        if "." in key:
            only, key = key.split(".", 1)
            if only != method:
                continue
        out[key] = json.loads(value) if value not in ("true", "false") else value == "true"
    return out


def cmd_compare(args) -> None:
    """Distil each method (per seed) and evaluate every set under one protocol with its own labels;
    with --eval-at, also the snapshots at those steps of the same run (one line each). Each snapshot is
    evaluated as it comes, so its line is written while the run goes on; the time spent evaluating is
    left out of the run's distill seconds."""
    dataset = load_dataset(args.dataset)
    config = protocol(args.protocol, num_models=args.models)
    for seed in args.seeds:
        for ipc in args.ipcs:
            for name in args.methods:
                method = make_method(name, preset=args.preset, dataset=dataset.name, ipc=ipc,
                                     **_overrides(args.set, name))
                steps = args.steps if METHODS.get(name).learns_images else 1
                wanted = sorted({s for s in args.eval_at if 0 < s < steps} | {steps})
                t0, c0 = time.perf_counter(), time.process_time()
                eval_wall = eval_cpu = 0.0  # spent evaluating snapshots so far, not distilling
                for snap in distill(dataset, method, method_name=name, ipc=ipc, steps=steps, seed=seed,
                                    snapshot_every=math.gcd(*wanted), snapshot_seconds=300):
                    distill_wall = time.perf_counter() - t0 - eval_wall
                    distill_cpu = time.process_time() - c0 - eval_cpu
                    print(f"{name} ipc {ipc} seed {seed}: step {snap.step}/{steps}, {distill_wall:.0f} s, "
                          f"{distill_cpu:.0f} CPU s", file=sys.stderr, flush=True)
                    if snap.step not in wanted and not snap.finished:
                        continue
                    w0, e0 = time.perf_counter(), time.process_time()
                    _emit(_compare_row(args, dataset, config, method, name, ipc, seed, snap, distill_wall, distill_cpu),
                          args.out)
                    eval_wall, eval_cpu = eval_wall + time.perf_counter() - w0, eval_cpu + time.process_time() - e0


def _compare_row(args, dataset, config, method, name, ipc, seed, snap, distill_wall, distill_cpu) -> dict:
    e0 = time.process_time()
    result = evaluate_synthetic(snap.synthetic, dataset, config)  # each set with its own labels
    row = {"bench": "compare", "dataset": dataset.name, "method": name, "ipc": ipc, "preset": args.preset,
           "seed": seed, "steps": snap.step, "status": snap.status, "hyperparameters": method.config(),
           "distill_seconds": round(distill_wall, 1), "distill_cpu_seconds": round(distill_cpu, 1),
           "eval": result.as_dict(), "learned_lr": snap.synthetic.extra_meta.get("learned_lr"),
           "experts": snap.synthetic.extra_meta.get("experts"), **_machine()}
    if args.learned_lr and "learned_lr" in snap.synthetic.extra_meta:
        row["eval_learned_lr"] = evaluate_synthetic(snap.synthetic, dataset,
                                                    protocol("learned_lr", num_models=args.models,
                                                             epochs=config.epochs)).as_dict()
    row["eval_cpu_seconds"] = round(time.process_time() - e0, 1)
    return row


def cmd_table(args) -> None:
    """Markdown table of `compare` lines: one row per method, setting and step count, over its seeds.
    The setting names the hyperparameters that differ between a method's rows in these files.
    "across seeds" is the population std of the per-seed means, "across networks" the mean of the
    per-seed stds, and the last columns pool every network (points, %). A seed that appears twice for
    the same setting and steps (a run repeated) counts once, with its last line."""
    rows = [json.loads(line) for path in args.files for line in Path(path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("bench") == "compare"]
    varying = {}
    for r in rows:
        for k, v in r["hyperparameters"].items():
            varying.setdefault((r["method"], k), set()).add(json.dumps(v))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        setting = ", ".join(f"{k} {v}" for k, v in r["hyperparameters"].items()
                            if len(varying[(r["method"], k)]) > 1)
        key = (r["dataset"], r["method"], r["ipc"], setting, r["steps"], r["eval"]["protocol"])
        groups.setdefault(key, {})[r.get("seed", 0)] = r  # a seed measured again (same setting): the last line
    print("| dataset | method | IPC | setting | steps | seeds | protocol | per-seed mean % | across seeds "
          "| across networks | all networks % | learned_lr: per-seed mean % | learned_lr: all networks % |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (dataset, method, ipc, setting, steps, proto), by_seed in groups.items():
        group = list(by_seed.values())
        cells = [dataset, method, str(ipc), setting or "-", str(steps), " ".join(str(r.get("seed", 0)) for r in group),
                 proto, *_spread([r["eval"]["accuracies"] for r in group])]
        learned = [r["eval_learned_lr"]["accuracies"] for r in group if "eval_learned_lr" in r]
        per_seed, _, _, pooled = _spread(learned) if learned else ("-",) * 4
        print("| " + " | ".join(cells + [per_seed, pooled]) + " |")


def _spread(per_seed: list[list[float]]) -> list[str]:
    means = [100 * statistics.fmean(a) for a in per_seed]
    within = statistics.fmean(100 * statistics.pstdev(a) for a in per_seed)
    pooled = [100 * x for a in per_seed for x in a]
    return [", ".join(f"{m:.1f}" for m in means), f"{statistics.pstdev(means):.1f}" if len(means) > 1 else "-",
            f"{within:.1f}", f"{statistics.fmean(pooled):.1f} ± {statistics.pstdev(pooled):.1f} ({len(pooled)})"]


# -- speed: ours against a loop built like the official code -----------------------------------------


class ReparamNet(nn.Module):
    """Built like the official MTT code's reparametrised module: the network's parameters are removed
    and, on every forward, views of one flat vector are set back in their place as attributes."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.slots = [(m, n, p.shape, p.numel()) for m in net.modules() for n, p in list(m.named_parameters(recurse=False))]
        for m, n, _, _ in self.slots:
            delattr(m, n)

    def forward(self, x, flat_param):
        offset = 0
        for m, n, shape, numel in self.slots:
            setattr(m, n, flat_param[offset:offset + numel].view(shape))
            offset += numel
        return self.net(x)


def reference_iteration(ref: ReparamNet, start, target, images, labels, syn_lr, draws, augmenter) -> torch.Tensor:
    """The official inner loop: a list of student parameter vectors, each the last minus lr x the
    gradient taken with create_graph; the loss on the last one, then backward."""
    student_params = [start.clone().requires_grad_(True)]
    for idx, aug in zip(draws.batches, draws.augment):
        x = images[idx]
        if aug is not None:
            x = augmenter.apply(x, aug, torch.arange(len(idx)))
        ce = F.cross_entropy(ref(x, flat_param=student_params[-1]), labels[idx])
        grad = torch.autograd.grad(ce, student_params[-1], create_graph=True)[0]
        student_params.append(student_params[-1] - syn_lr * grad)
    loss = matching_loss(student_params[-1], start, target)
    loss.backward()
    return loss.detach()


def _untrained_experts(method, dataset) -> None:
    """Give `method` stand-in experts: random walks from a fresh network (the seconds of an iteration do
    not depend on the parameter values; this spares training experts to time MNIST or CIFAR-10)."""
    from dd_core.experts import Trajectories
    from dd_core.models import build_model, resolve_model

    recipe = method.recipe(dataset).resolved(dataset)
    net = build_model(resolve_model(method.model, dataset), channels=dataset.channels,
                      num_classes=dataset.num_classes, image_size=dataset.image_size, seed=0)
    theta = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    g = torch.Generator().manual_seed(0)
    walk = torch.cumsum(1e-3 * torch.randn(recipe.epochs + 1, len(theta), generator=g), 0) + theta  # (epochs + 1, P)
    fake = Trajectories(dataset=dataset.name, recipe=recipe, params=[walk], test_accuracy=[[0.0] * (recipe.epochs + 1)],
                        seeds=[0], names=[n for n, _ in net.named_parameters()],
                        shapes=[list(p.shape) for p in net.parameters()])
    method.load_experts = lambda real, device: fake


def cmd_speed(args) -> None:
    _emit(speed_row(args), args.out)


def speed_row(args) -> dict:
    """Time one outer iteration of ours (method.match) and of the official-style loop, alternated, from
    the same expert, start, batches and DSA draws; CPU seconds of this process (one thread) and wall.
    On a GPU (`args.device`) each timing waits for the device's queue, and the wall seconds are the ones
    to read (the CPU seconds are the host's)."""
    dataset = load_dataset(args.dataset)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    method = make_method(args.method, preset=args.preset, dataset=dataset.name, ipc=args.ipc,
                         **_overrides(args.set, args.method))
    if args.untrained_experts:
        _untrained_experts(method, dataset)
    method.setup(dataset, init_synthetic(dataset, args.ipc, seed=0), seed=0, device=device)
    import copy

    ref = ReparamNet(copy.deepcopy(method.flat_.net))
    kinds = ("ours", "reference") + (("tesla", "tesla_truncated") if args.with_tesla else ())
    times = {k: [] for k in kinds}
    cpu = {k: [] for k in kinds}
    losses = {k: [] for k in kinds}
    for r in range(args.repeats + 1):  # the first round warms up and is not counted
        expert, epoch = method.draw_start()
        start, target = method.start_and_target(expert, epoch)
        draws = method.draws()
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):  # alternate which goes first
            method.images_.grad, method.syn_lr_.grad = None, None
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            if kind in ("ours", "tesla", "tesla_truncated"):  # tesla: the same method's gradient by the constant-memory
                method.constant_memory = kind != "ours"           # adjoint; tesla_truncated: TESLA's public code's gradient
                method.hessian_chain = kind != "tesla_truncated"
                loss, _ = method.match(start, target, draws)
                del method.constant_memory, method.hessian_chain  # back to the class's own choice
            else:
                loss = reference_iteration(ref, start, target, method.images_, method.labels_, method.syn_lr_, draws,
                                           method.augmenter_)
            sync()
            if r:
                times[kind].append(time.perf_counter() - t0)
                cpu[kind].append(time.process_time() - c0)
                losses[kind].append(float(loss))
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    return {"bench": "speed", "dataset": dataset.name, "method": args.method, "ipc": args.ipc, "preset": args.preset,
           "device": str(device), "hyperparameters": method.config(), "model": method.flat_.net.__class__.__name__,
           "untrained_experts": args.untrained_experts, "seconds_median": med, "seconds": times,
           "cpu_seconds_median": cpu_med, "cpu_seconds": cpu,
           "reference_over_ours": round(med["reference"] / med["ours"], 3),
           "reference_over_ours_cpu": round(cpu_med["reference"] / cpu_med["ours"], 3),
           "max_loss_difference": max(abs(a - b) for a, b in zip(losses["ours"], losses["reference"])),
           **({"tesla_over_ours_cpu": round(cpu_med["tesla"] / cpu_med["ours"], 3),
               "tesla_over_ours": round(med["tesla"] / med["ours"], 3),
               "tesla_truncated_over_ours_cpu": round(cpu_med["tesla_truncated"] / cpu_med["ours"], 3),
               "tesla_truncated_over_ours": round(med["tesla_truncated"] / med["ours"], 3)} if args.with_tesla else {}),
           "load_average": os.getloadavg()[0], **_machine()}


def cmd_expert_speed(args) -> None:
    """Seconds of expert training, extrapolated to a full epoch: train one expert with the method's
    recipe on the first `batches` x batch_size training images (test set cut to one batch), and scale."""
    import dataclasses

    from dd_core.experts import train_expert
    from dd_core.zca import whitened

    dataset = load_dataset(args.dataset)
    method = make_method(args.method, preset=args.preset, dataset=dataset.name, ipc=1, **_overrides(args.set, args.method))
    recipe = dataclasses.replace(method.recipe(dataset), epochs=1)
    k = args.batches * recipe.batch_size
    part = dataclasses.replace(dataset, x_train=dataset.x_train[:k], y_train=dataset.y_train[:k],
                               x_test=dataset.x_test[:recipe.batch_size], y_test=dataset.y_test[:recipe.batch_size])
    timed = recipe
    if recipe.zca:  # whiten outside the timing: the ZCA fit is paid once per build, not per batch
        part, timed = whitened(part, recipe.zca), dataclasses.replace(recipe, zca=0.0)
    # one untimed batch first, for the one-off set-up (allocator, oneDNN kernels) of the first batches
    train_expert(dataclasses.replace(part, x_train=part.x_train[:recipe.batch_size],
                                     y_train=part.y_train[:recipe.batch_size]), timed, seed=0)
    t0, c0 = time.perf_counter(), time.process_time()
    train_expert(part, timed, seed=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_epoch = len(dataset.x_train) / k
    _emit({"bench": "expert_speed", "dataset": dataset.name, "recipe": dataclasses.asdict(recipe.resolved(dataset)),
           "batches_timed": args.batches, "seconds": wall, "cpu_seconds": cpu,
           "cpu_seconds_per_epoch": round(cpu * per_epoch, 1), "seconds_per_epoch": round(wall * per_epoch, 1),
           "note": "training batches only (ZCA fitted before the timing), after one untimed warm-up batch; the per-epoch "
                   "test evaluation (a forward pass over the test set) is extra",
           "load_average": os.getloadavg()[0], **_machine()}, args.out)


# -- memory: one iteration's peak resident memory, in a fresh process per setting --------------------


def _one_iteration_peak(argv: list[str]) -> None:
    """(child) Set up, run one iteration to warm up, then report how far one more raises the peak RSS."""
    dataset_name, name, ipc, syn_steps, model = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4]
    torch.set_num_threads(1)
    dataset = load_dataset(dataset_name)
    method = make_method(name, dataset=dataset.name, ipc=ipc, syn_steps=syn_steps, model=model)
    method.setup(dataset, init_synthetic(dataset, ipc, seed=0), seed=0, device=torch.device("cpu"))
    method.step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_now = _rss_kib()
    t0 = time.perf_counter()
    method.step()
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kib": after, "peak_before_kib": before, "rss_before_kib": rss_now,
                      "step_peak_over_rss_kib": after - rss_now, "seconds": seconds}))


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def cmd_memory(args) -> None:
    for steps in args.syn_steps:
        for name in ("mtt", "tesla"):
            done = subprocess.run([sys.executable, "-m", "benchmarks.trajectory", "_child", args.dataset, name,
                                   str(args.ipc), str(steps), args.model], capture_output=True, text=True, check=True)
            child = json.loads(done.stdout.strip().splitlines()[-1])
            _emit({"bench": "memory", "dataset": args.dataset, "method": name, "ipc": args.ipc, "syn_steps": steps,
                   "model": args.model, **child, **_machine()}, args.out)


def _emit(row: dict, out: str | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(line + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        return _one_iteration_peak(argv[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks.trajectory")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--dataset", default="digits")
    c.add_argument("--methods", nargs="*", default=["random", "dm", "mtt", "tesla", "ftd", "datm", "set"])
    c.add_argument("--ipcs", nargs="*", type=int, default=[1, 10])
    c.add_argument("--preset", default="fast", choices=["fast", "paper"])
    c.add_argument("--steps", type=int, default=200)
    c.add_argument("--set", action="append", default=[], metavar="[METHOD.]FIELD=VALUE")
    c.add_argument("--protocol", default="fast")
    c.add_argument("--models", type=int, default=3)
    c.add_argument("--learned-lr", action="store_true",
                   help="also evaluate trajectory sets at their learned lr (the protocol's epochs otherwise as fast)")
    c.add_argument("--seeds", nargs="*", type=int, default=[0], help="distillation seeds, one set each")
    c.add_argument("--eval-at", nargs="*", type=int, default=[], metavar="STEP",
                   help="also evaluate the run's snapshots at these steps (below --steps)")
    s = sub.add_parser("speed")
    s.add_argument("--dataset", default="digits")
    s.add_argument("--method", default="mtt")
    s.add_argument("--ipc", type=int, default=10)
    s.add_argument("--preset", default="fast", choices=["fast", "paper"])
    s.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--device", default="cpu", help="cuda: time on a GPU (wall seconds; each timing waits for the GPU)")
    s.add_argument("--untrained-experts", action="store_true",
                   help="time with stand-in experts (random walks) instead of training them first")
    s.add_argument("--with-tesla", action="store_true",
                   help="also time the same iteration by TESLA's exact adjoint and by its public code's truncated gradient")
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+", help="JSON-lines files written by compare")
    e = sub.add_parser("expert-speed")
    e.add_argument("--dataset", default="cifar10")
    e.add_argument("--method", default="mtt")
    e.add_argument("--preset", default="paper", choices=["fast", "paper"])
    e.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    e.add_argument("--batches", type=int, default=4)
    m = sub.add_parser("memory")
    m.add_argument("--dataset", default="digits")
    m.add_argument("--ipc", type=int, default=10)
    m.add_argument("--model", default="convnet_d2")
    m.add_argument("--syn-steps", nargs="*", type=int, default=[10, 20, 40])
    for q in (c, s, e, m):
        q.add_argument("--threads", type=int, default=1)
        q.add_argument("--out", default=None, help="append JSON lines here")
    args = p.parse_args(argv)
    torch.set_num_threads(getattr(args, "threads", 1))
    {"compare": cmd_compare, "speed": cmd_speed, "expert-speed": cmd_expert_speed, "memory": cmd_memory,
     "table": cmd_table}[args.command](args)


if __name__ == "__main__":
    main()
