"""Label space benchmark: for a DM synthetic set and a random real subset of the same size, every
label store's bytes and test accuracy, and the share of the dynamic labels' gain over hard labels
that each lighter store keeps, at what fraction of their bytes. Writes a markdown report.

    DD_DATA_ROOT=<data> python -m benchmarks.labels_bench --dataset digits --ipc 1 10 --networks 3
    DD_DATA_ROOT=<data> python -m benchmarks.labels_bench --dataset mnist --ipc 1 10 --epochs 100 \\
        --model convnet_w32 --dm-steps 200 --dm-model convnet_w32
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import fields
from pathlib import Path

import torch

from dd_core.data import load_dataset
from dd_core.distill import run_to_end
from dd_core.evaluate import protocol
from dd_core.methods import METHODS, make_method
from dd_core.teacher import get_teacher
from dd_core.tradeoff import DEFAULT_STORES, Point, Tradeoff, markdown, run_tradeoff, summary


def distill_dm(dataset, ipc: int, steps: int | None, seed: int, model: str | None):
    """A DM set with the fast preset (steps and network: the preset's unless given)."""
    steps = steps or METHODS.get("dm").default_steps("fast", dataset=dataset.name, ipc=ipc)
    method = make_method("dm", preset="fast", dataset=dataset.name, ipc=ipc, **({"model": model} if model else {}))
    t0 = time.perf_counter()
    snap = run_to_end(dataset, method, method_name="dm", ipc=ipc, steps=steps, seed=seed, device=torch.device("cpu"))
    return snap.synthetic, steps, time.perf_counter() - t0


def share_table(result) -> str:
    """Per store and set: its share of dynamic's gain over hard, and its byte fractions of dynamic's."""
    lines = ["| set | labels | accuracy | share of dynamic's gain | label bytes / dynamic's | total bytes / dynamic's "
             "| >= 90% at <= 2%? |", "|" + " --- |" * 7]
    for kind in ("synthetic", "random"):
        acc = {p.labels: p for p in result.of(kind)}
        for r in result.gain_shares(kind):
            share = "n/a (no gain)" if r["share"] != r["share"] else f"{r['share']:.0%}"
            p = acc[r["labels"]]
            lines.append(f"| {kind} | {r['labels']} | {p.accuracy_mean:.4f} ± {p.accuracy_std:.4f} | {share} "
                         f"| {r['label_fraction']:.2%} | {r['total_fraction']:.2%} | {'yes' if r['meets_aim'] else 'no'} |")
    return "\n".join(lines)


def from_rows(rows: list[dict]) -> Tradeoff:
    """A trade-off rebuilt from its saved JSON rows (one dataset and IPC), to re-render the tables."""
    names = [f.name for f in fields(Point)]
    points = [Point(**{k: r[k] for k in names}) for r in rows if r["set"] != "whole"]
    whole = next((r for r in rows if r["set"] == "whole"), {})
    # The image count is not saved (0 here); no table needs it.
    return Tradeoff(rows[0]["dataset"], 0, points[0].protocol, points=points, whole_image_bytes=whole.get("image_bytes", 0),
                    whole_label_bytes=whole.get("label_bytes", 0), whole_accuracy=whole.get("accuracy_mean"),
                    whole_note=whole.get("teacher", ""))


def render(path: str) -> None:
    """Print the tables of a saved run again (e.g. after a change to how shares are summarised)."""
    rows = json.loads(Path(path).read_text())
    for ipc in sorted({r["ipc"] for r in rows}):
        result = from_rows([r for r in rows if r["ipc"] == ipc])
        print(f"### IPC {ipc}\n\n{markdown(result)}\n\n{share_table(result)}\n\n{summary(result)}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    p.add_argument("--networks", type=int, default=3, help="evaluation networks per point")
    p.add_argument("--epochs", type=int, default=None, help="evaluation epochs (default: the fast protocol's 300)")
    p.add_argument("--model", default=None, help="evaluation network (default: the DD ConvNet for the resolution)")
    p.add_argument("--dm-steps", type=int, default=None, help="DM steps (default: the fast preset's)")
    p.add_argument("--dm-model", default=None, help="DM's embedding network (default: the fast preset's)")
    p.add_argument("--stores", nargs="*", default=DEFAULT_STORES)
    p.add_argument("--image-format", default="uint8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="markdown report path (default: bench_out/labels_<dataset>.md)")
    p.add_argument("--render", default=None, metavar="JSON", help="only print the tables of a saved run again")
    args = p.parse_args()
    if args.render:
        return render(args.render)
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"bench_out/labels_{args.dataset}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.dataset)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("model", args.model)) if v}
    config = protocol("fast", num_models=args.networks, seed=args.seed, **overrides)
    t0 = time.perf_counter()
    teacher = get_teacher(dataset, device=torch.device("cpu"))
    sections = [f"## Label space on {args.dataset} ({platform.machine()} CPU, {args.threads} thread)",
                f"Teacher: {teacher.describe()}, calibrated temperature {teacher.calibrated_temperature(dataset):g} "
                f"({time.perf_counter() - t0:.0f} s to train or load). Protocol: {config.describe()}."]
    rows = []
    for ipc in args.ipc:
        syn, steps, dm_seconds = distill_dm(dataset, ipc, args.dm_steps, args.seed, args.dm_model)
        t1 = time.perf_counter()
        result = run_tradeoff(syn, dataset, config, args.stores, image_format=args.image_format, teacher=teacher,
                              device=torch.device("cpu"),
                              progress=lambda f, t: print(f"\r[ipc {ipc} {f:4.0%}] {t[:90]:90s}", end="", flush=True))
        print()
        sections += [f"### IPC {ipc}: DM ({steps} steps of {syn.config.get('model')}, {dm_seconds:.0f} s) and a random real subset, "
                     f"{len(syn.images)} images as {args.image_format}; {time.perf_counter() - t1:.0f} s of evaluation",
                     markdown(result), share_table(result), summary(result).replace("\n", "  \n")]
        sections += [f"Not counted: {n}." for n in sorted({p.uncounted for p in result.points if p.uncounted})]
        sections += [f"Could not run: {e}" for e in result.errors]
        rows += [{"dataset": args.dataset, "ipc": ipc, **r} for r in result.as_rows()]
        out.write_text("\n\n".join(sections) + "\n")  # after every setting, so a long run leaves its part
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
