"""Recover step speed: dd_core's recover core against a loop built like SRe2L's public recover
script, at identical settings and with the same random draws, timed in turns.

The reference registers a forward hook on every BatchNorm2d that takes the batch mean of its input
and the variance of a channel-major copy (permute + contiguous + view), runs the network's plain
forward on one batch, sums CE + 0.01 x (10 x first + the rest) and takes one Adam step (betas
0.5, 0.9) on the pixels, then clips them. Ours: the same loss and step through recover.py (conv +
BN folded, with the ReLU and pool of a ConvNet block, statistics from pixel sums, hand-written
backwards; a ResNet block's ReLUs and residual add in its folds' passes; channels-last on the CPU
unless ConvNet pools are fused; Winograd on 3x3 convs of 512 channels; see bn_taps' docstring).
Both get the same crop/flip from the same generator state and start from the same pixels; each
step's loss is recorded so the two can be checked to agree.

    nice -n 10 python -m benchmarks.recover_speed --steps 20 --repeats 3 --threads 1 \
        --out benchmarks/results/recover_speed.jsonl
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from dd_core.methods.bn_taps import recover_loss, tapped
from dd_core.methods.recover import random_resized_crop
from dd_core.models import build_model

from .decoupled import line

# (name, model, channels, image side, batch): digits IPC 10 on its BN ConvNet; CIFAR-10 IPC 10
# shapes on the BN ConvNet-3 (RDED's Conv3) and on ResNet-18 (width 16 on a CPU; full width too).
SETTINGS = {
    "digits_convnet_bn_d2": ("convnet_bn_d2", 1, 8, 100),
    "cifar_convnet_bn_w32": ("convnet_bn_w32", 3, 32, 100),
    "cifar_convnet_bn": ("convnet_bn", 3, 32, 100),
    "cifar_resnet18_w16": ("resnet18_w16", 3, 32, 100),
    "cifar_resnet18": ("resnet18", 3, 32, 100),
}


def teacher_like(model: str, channels: int, side: int) -> nn.Module:
    """A network of the teacher's shape with non-trivial running statistics (speed does not depend on training)."""
    net = build_model(model, channels=channels, num_classes=10, image_size=(side, side), seed=0).eval()
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class HookReference:
    """SRe2L's recover loop: forward hooks on every BN layer, plain forward, one batch."""

    def __init__(self, net: nn.Module):
        self.net, self.terms = net, []
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        x = inputs[0]
        nch = x.shape[1]
        mean = x.mean([0, 2, 3])
        var = x.permute(1, 0, 2, 3).contiguous().view([nch, -1]).var(1, unbiased=False)
        self.terms.append(torch.norm(module.running_var.data - var, 2) + torch.norm(module.running_mean.data - mean, 2))

    def loss(self, x, y):
        self.terms = []
        ce = F.cross_entropy(self.net(x), y)
        return ce + 0.01 * (10.0 * self.terms[0] + sum(self.terms[1:]))


def run(side_is_ours: bool, net: nn.Module, pixels: torch.Tensor, y: torch.Tensor, steps: int, seed: int,
        channels_last: bool | None = None):
    """`steps` recover steps from `pixels`; returns (seconds, CPU seconds, losses). `channels_last`: our
    side's layout (None: bn_taps' rule)."""
    x = pixels.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.25, betas=(0.5, 0.9), eps=1e-8)
    g = torch.Generator().manual_seed(seed)
    if side_is_ours:
        tnet, sink = tapped(net, channels_last=channels_last)
        loss_of = lambda v: recover_loss(tnet, sink, v, y, groups=1, bn_weight=0.01, first_bn_multiplier=10.0)[0]  # noqa: E731
    else:
        ref = HookReference(net)
        loss_of = lambda v: ref.loss(v, y)  # noqa: E731
    losses = []
    low, high = torch.full((1, x.shape[1], 1, 1), -2.0), torch.full((1, x.shape[1], 1, 1), 2.5)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        views = random_resized_crop(x, (0.08, 1.0), True, g)
        loss = loss_of(views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if side_is_ours:  # recover.py's clip: one max and one min against per-channel bounds
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, high), low))
        else:  # the script's: a clamp per channel, and a copy of the pixels kept as the "best" every step
            for c in range(x.shape[1]):
                x.data[:, c] = torch.clamp(x.data[:, c], -2.0, 2.5)
            best = x.data.clone()  # noqa: F841  (its best_cost is never lowered, so it copies every step)
        losses.append(loss.item())
    return time.perf_counter() - t0, time.process_time() - c0, losses


def profile(settings: list[str], ours: bool, steps: int) -> int:
    """Print each setting's operators by self CPU time over `steps` steps of one side (after a warm-up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    for name in settings:
        model, channels, side, batch = SETTINGS[name]
        pixels = torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(0))
        y = torch.arange(batch) % 10
        run(ours, teacher_like(model, channels, side), pixels, y, 2, 0)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run(ours, teacher_like(model, channels, side), pixels, y, steps, 0)
        print(f"{name}, {'ours' if ours else 'reference'}, {steps} steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="*", default=["digits_convnet_bn_d2", "cifar_convnet_bn_w32", "cifar_resnet18_w16"],
                   choices=list(SETTINGS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--profile", choices=["ours", "reference"], default=None,
                   help="instead of timing: run --steps steps of one side under torch.profiler and print where the CPU time goes")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        return profile(args.settings, args.profile == "ours", args.steps)
    for name in args.settings:
        model, channels, side, batch = SETTINGS[name]
        net = teacher_like(model, channels, side)
        g = torch.Generator().manual_seed(0)
        pixels = torch.randn(batch, channels, side, side, generator=g)
        y = torch.arange(batch) % 10
        run(True, net, pixels, y, 2, 0)  # warm-up both sides
        run(False, teacher_like(model, channels, side), pixels, y, 2, 0)
        wall = {"ours": [], "reference": []}
        cpu = {"ours": [], "reference": []}
        losses = {}
        for _ in range(args.repeats):
            for side_name in ("reference", "ours"):
                seconds, cpu_seconds, lost = run(side_name == "ours", teacher_like(model, channels, side), pixels, y,
                                                 args.steps, 0)
                wall[side_name].append(seconds / args.steps)
                cpu[side_name].append(cpu_seconds / args.steps)
                losses[side_name] = lost
        gap = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses["ours"], losses["reference"]))
        med = {k: {side: statistics.median(v[side]) for side in v} for k, v in (("wall", wall), ("cpu", cpu))}
        # The machine is shared: the process's CPU seconds are the steadier measure; wall time is kept too.
        row = {"bench": "recover_speed", "setting": name, "model": model, "batch": batch, "image": [channels, side, side],
               "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
               "ours_cpu_s_per_step": med["cpu"]["ours"], "reference_cpu_s_per_step": med["cpu"]["reference"],
               "speedup_cpu": med["cpu"]["reference"] / med["cpu"]["ours"],
               "ours_wall_s_per_step": med["wall"]["ours"], "reference_wall_s_per_step": med["wall"]["reference"],
               "speedup_wall": med["wall"]["reference"] / med["wall"]["ours"],
               "max_relative_loss_gap": gap}
        line(args.out, **row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
