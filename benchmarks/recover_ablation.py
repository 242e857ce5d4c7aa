"""Our recover step with one lever at a time, timed in turns in one process (the reference loop is
benchmarks/recover_speed.py's, untouched): NCHW activations (the layout before session 9),
channels-last, and channels-last with the Winograd convolution on the widest layers. All three fold
conv + BN and fuse each ResNet block's ReLUs and residual add (bn_taps.FoldedBasicBlock).

    nice -n 10 python -m benchmarks.recover_ablation --steps 2 --repeats 3 --threads 1 \
        --out benchmarks/results/recover_speed.jsonl
"""
from __future__ import annotations

import argparse
import statistics

import torch

from dd_core.methods import tap_kernels

from .decoupled import line
from .recover_speed import SETTINGS, run, teacher_like

VARIANTS = {  # name -> (channels_last, Winograd's channel threshold)
    "nchw": (False, tap_kernels.WINOGRAD_MIN_CHANNELS),  # Winograd takes channels-last input only: off here
    "channels_last": (True, 10 ** 9),
    "channels_last+winograd": (True, tap_kernels.WINOGRAD_MIN_CHANNELS),
}


def timed(variant: str, model: str, channels: int, side: int, pixels, y, steps: int):
    channels_last, threshold = VARIANTS[variant]
    kept = tap_kernels.WINOGRAD_MIN_CHANNELS
    tap_kernels.WINOGRAD_MIN_CHANNELS = threshold  # read when tapped() folds the convs
    try:
        _, cpu, losses = run(True, teacher_like(model, channels, side), pixels, y, steps, 0, channels_last=channels_last)
    finally:
        tap_kernels.WINOGRAD_MIN_CHANNELS = kept
    return cpu / steps, losses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="*", default=["cifar_resnet18"], choices=list(SETTINGS))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.settings:
        model, channels, side, batch = SETTINGS[name]
        pixels = torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(0))
        y = torch.arange(batch) % 10
        for variant in VARIANTS:  # warm-up
            timed(variant, model, channels, side, pixels, y, 1)
        cpu = {v: [] for v in VARIANTS}
        losses = {}
        for _ in range(args.repeats):
            for variant in VARIANTS:
                seconds, losses[variant] = timed(variant, model, channels, side, pixels, y, args.steps)
                cpu[variant].append(seconds)
        base = losses["nchw"]
        gap = max(abs(a - b) / max(abs(b), 1e-12) for v in VARIANTS for a, b in zip(losses[v], base))
        line(args.out, bench="recover_ablation", setting=name, model=model, batch=batch, image=[channels, side, side],
             steps=args.steps, repeats=args.repeats, threads=args.threads,
             cpu_s_per_step={v: statistics.median(cpu[v]) for v in VARIANTS},
             cpu_s_per_step_all={v: cpu[v] for v in VARIANTS}, max_relative_loss_gap=gap)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
