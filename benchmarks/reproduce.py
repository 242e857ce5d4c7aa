"""Distill and evaluate a list of (dataset, method, IPC) settings; one JSON line per setting.

    DD_DATA_ROOT=<data> python -m benchmarks.reproduce --dataset digits --methods random dm --ipcs 1 10 \
        --protocol fast --models 3 --out bench_out/digits.jsonl
    python -m benchmarks.reproduce --table bench_out/digits.jsonl      # markdown table of the results

Each line records the distillation budget (preset, steps, every hyperparameter), the evaluation
protocol, every network's final accuracy, and the seconds spent on each part.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from dd_core.data import load_dataset
from dd_core.distill import run_to_end, time_budget
from dd_core.evaluate import PROTOCOLS, evaluate, protocol
from dd_core.methods import METHODS, make_method
from dd_core.methods.base import PRESETS, method_overrides
from dd_core.version import code_version as read_code_version

# Published accuracies (%, ConvNet-3, final epoch, hard labels) from the reference table.
PUBLISHED = {
    ("mnist", 1): {"random": 64.9, "herding": 89.2, "dc": 91.7, "dsa": 88.7, "dm": 89.7},
    ("mnist", 10): {"random": 95.1, "herding": 93.7, "dc": 97.4, "dsa": 97.8, "dm": 97.5},
    ("fashion_mnist", 1): {"random": 51.4, "herding": 67.0, "dc": 70.5, "dsa": 70.6},
    ("fashion_mnist", 10): {"random": 73.8, "herding": 71.1, "dc": 82.3, "dsa": 84.6},
}


_CODE_VERSION = read_code_version()  # read when the benchmark starts: a long run may outlive several commits


def code_version() -> str:
    return _CODE_VERSION


# Environment variables that change how freed memory is handled (glibc's malloc tunables, a
# preloaded allocator, PyTorch's huge-page switch). They move step times a lot, and unevenly: code
# that allocates large fresh buffers on every call (the reference loops) gains the most when freed
# memory is kept (BENCHMARKS.md, section 3). Speed rows record them.
_ALLOCATOR_VARS = ("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD", "THP_MEM_ALLOC_ENABLE")


def allocator() -> str:
    """How this process allocates: 'default', or the variables set that change it."""
    set_vars = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(_ALLOCATOR_VARS))
    return " ".join(set_vars) or "default"


def run_one(dataset, method_name: str, ipc: int, args) -> dict:
    """Distill with each seed in args.seeds and evaluate args.models networks on each set."""
    rows = [run_seed(dataset, method_name, ipc, args, seed) for seed in args.seeds]
    first = rows[0]
    if len(rows) > 1:
        accs = [a for r in rows for a in r["eval"]["accuracies"]]
        # Two spreads: of the per-seed means (distillation seeds) and within a seed (evaluation networks).
        first["per_seed"] = [{"seed": r["seed"], "accuracies": r["eval"]["accuracies"],
                              "accuracy_mean": r["eval"]["accuracy_mean"], "accuracy_std": r["eval"]["accuracy_std"],
                              "distill_seconds": r["distill_seconds"], "steps": r["steps"]} for r in rows]
        first["seed_spread"] = statistics.pstdev(r["eval"]["accuracy_mean"] for r in rows)
        first["network_spread"] = statistics.fmean(r["eval"]["accuracy_std"] for r in rows)
        first["eval"]["accuracies"] = accs
        first["eval"]["accuracy_mean"] = statistics.fmean(accs)
        first["eval"]["accuracy_std"] = statistics.pstdev(accs)
        first["eval"]["seconds"] = round(sum(r["eval"]["seconds"] for r in rows), 2)
        first["distill_seconds"] = round(sum(r["distill_seconds"] for r in rows), 1)
        first["seed"] = list(args.seeds)
    return first


def run_seed(dataset, method_name: str, ipc: int, args, seed: int) -> dict:
    mine = []
    for kv in args.set:  # method.field=value applies to one method only
        key = kv.split("=", 1)[0]
        if "." in key and key.split(".", 1)[0] != method_name:
            continue
        mine.append(kv.split(".", 1)[1] if "." in key else kv)
    overrides = method_overrides(method_name, mine)
    method = make_method(method_name, preset=args.preset, dataset=dataset.name, ipc=ipc, **overrides)
    steps = args.steps if args.steps is not None else METHODS.get(method_name).default_steps(
        args.preset, dataset=dataset.name, ipc=ipc)
    t0 = time.perf_counter()
    stop, timer = time_budget(args.minutes)
    snap = run_to_end(dataset, method, method_name=method_name, ipc=ipc, steps=steps, seed=seed,
                      snapshot_every=10**9, stop=stop)
    distill_s = time.perf_counter() - t0
    if timer is not None:
        timer.cancel()
    config = protocol(args.protocol, num_models=args.models, dsa_ops=args.dsa_ops,
                      **({"epochs": args.epochs} if args.epochs else {}))
    result = evaluate(snap.synthetic.images, snap.synthetic.labels, dataset, config)
    if args.save_dir:
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        snap.synthetic.save(Path(args.save_dir) / f"{dataset.name}-{method_name}-ipc{ipc}-s{seed}.safetensors")
    published = PUBLISHED.get((dataset.name, ipc), {}).get(method_name)
    return {
        "dataset": dataset.name, "method": method_name, "ipc": ipc, "preset": args.preset, "steps": snap.step,
        "status": snap.status, "hyperparameters": method.config(), "seed": seed,
        "features": snap.synthetic.extra_meta.get("features"),  # a feature coreset's network
        "distill_seconds": round(distill_s, 1), "minutes_budget": args.minutes, "eval": result.as_dict(), "published_percent": published,
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "code_version": code_version(),
    }


def budget(r: dict) -> str:
    """The distillation budget of a row: preset, steps, and the settings that set its cost."""
    hp = r.get("hyperparameters", {})
    parts = [r["preset"], f"{r['steps']} steps"]
    if r.get("minutes_budget"):
        parts[1] += f" (what {r['minutes_budget']:g} min allowed)"
    if "model" in hp:
        parts.append(hp["model"])
    if "batch_real" in hp:
        parts.append(f"{hp['batch_real']} real/class")
    if r.get("features"):
        parts.append("features of " + r["features"].replace(" on the whole training set", ""))
    if hp.get("rule", "argmin") != "argmin":
        parts.append(f"rule {hp['rule']}")
    seeds = r.get("seed")
    if isinstance(seeds, list) and len(seeds) > 1:
        parts.append(f"{len(seeds)} seeds")
    return ", ".join(parts)


def table(paths: list[str]) -> str:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    out = ["| dataset | method | IPC | distillation budget | distill s | eval protocol | accuracy % (mean ± std, n) "
           "| eval s | published % | diff |", "|" + " --- |" * 10]
    for r in rows:
        e = r["eval"]
        mean, std = 100 * e["accuracy_mean"], 100 * e["accuracy_std"]
        pub = r.get("published_percent")
        diff = f"{mean - pub:+.1f}" if pub is not None else "-"
        out.append(f"| {r['dataset']} | {r['method']} | {r['ipc']} | {budget(r)} | "
                   f"{r['distill_seconds']:.0f} | {e['protocol']} ({e['protocol_detail'].split(': ', 1)[1].split(', ')[4]}) | "
                   f"{mean:.1f} ± {std:.1f} ({len(e['accuracies'])}) | {e['seconds']:.0f} | "
                   f"{pub if pub is not None else '-'} | {diff} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="digits")
    p.add_argument("--methods", nargs="*", default=["random", "dm"])
    p.add_argument("--ipcs", nargs="*", type=int, default=[1, 10])
    p.add_argument("--preset", default="fast", choices=PRESETS)
    p.add_argument("--steps", type=int, default=None, help="distillation steps (default: the preset's)")
    p.add_argument("--minutes", type=float, default=None,
                   help="time budget per distillation: stop after this many minutes (the steps reached are reported)")
    p.add_argument("--set", action="append", default=[], metavar="[METHOD.]FIELD=VALUE")
    p.add_argument("--protocol", default="fast", choices=list(PROTOCOLS))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--models", type=int, default=3)
    p.add_argument("--dsa-ops", default="batch", choices=["batch", "image"],
                   help="evaluation DSA: one op per batch (the reference) or per image (results before 2026-11-28)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0],
                   help="distill (or select) once per seed; e.g. 0 1 2 averages random subsets")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-dir", default=None)
    p.add_argument("--out", default=None, help="append JSON lines here")
    p.add_argument("--table", nargs="*", default=None, help="print a markdown table of these result files")
    args = p.parse_args()
    if args.table:
        print(table(args.table))
        return
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    for ipc in args.ipcs:
        for name in args.methods:
            row = run_one(dataset, name, ipc, args)
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
