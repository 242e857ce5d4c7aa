"""DM (or DataDAM) seconds per step: our batched step against a reference loop built the way the
original code is (one forward per class for the real and for the synthetic batch, augmentation per
class; for DataDAM the attention maps as |a|^p through abs and pow), measured in the same run, with
the same draws, so the losses must agree.

    DD_DATA_ROOT=<data> python -m benchmarks.dm_speed --dataset mnist --ipc 10 --steps 5
    DD_DATA_ROOT=<data> python -m benchmarks.dm_speed --method datadam --presets paper --steps 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from dd_core.data import load_dataset
from dd_core.methods import make_method
from dd_core.methods.datadam import LOSS_SCALE
from dd_core.models import chunk_size
from dd_core.synthetic import init_synthetic

from .reproduce import allocator, code_version


def reference_loss(method, net, x_real, g_real, params):
    """The original DM loop: per class, augment real and synthetic with that class's parameters,
    embed each separately (the real side detached), add the squared distance of the means."""
    loss = torch.zeros(())
    for c in range(method.shape_["num_classes"]):
        real_c = x_real[g_real == c]
        syn_c = method.images_[method.labels_ == c]
        if params is not None:
            group = torch.full((len(real_c),), c, dtype=torch.long)
            real_c = method.dsa_.apply(real_c, params, group)
            syn_c = method.dsa_.apply(syn_c, params, torch.full((len(syn_c),), c, dtype=torch.long))
        out_real = net.embed(real_c).detach()
        out_syn = net.embed(syn_c)
        loss = loss + ((out_real.mean(0) - out_syn.mean(0)) ** 2).sum()
    return loss


def reference_loss_datadam(method, net, x_real, g_real, params):
    """The original DataDAM loop: per class, augment both sides with that class's parameters, walk
    the network block by block, and compare the mean attention map (|a|^p averaged over channels,
    normalised per image) of every block but the last, then the mean embedding."""
    def features(x):
        maps = []
        for layer in net.features:
            x = layer(x)
            if isinstance(layer, torch.nn.ReLU):
                maps.append(torch.nn.functional.normalize(x.abs().pow(method.power).mean(dim=1).flatten(1), dim=1))
        return maps[:-1] + [x.flatten(1)]

    loss = torch.zeros(())
    for c in range(method.shape_["num_classes"]):
        real_c = x_real[g_real == c]
        syn_c = method.images_[method.labels_ == c]
        if params is not None:
            real_c = method.dsa_.apply(real_c, params, torch.full((len(real_c),), c, dtype=torch.long))
            syn_c = method.dsa_.apply(syn_c, params, torch.full((len(syn_c),), c, dtype=torch.long))
        with torch.no_grad():
            real = features(real_c)
        syn = features(syn_c)
        terms = [((r.mean(0) - s_.mean(0)) ** 2).sum() for r, s_ in zip(real, syn)]
        loss = loss + sum(terms[:-1]) + method.task_balance * terms[-1]
    return loss * LOSS_SCALE


REFERENCES = {"dm": reference_loss, "datadam": reference_loss_datadam}


_CONV_INPUTS: dict = {}


def conv_inputs(net, x):
    """The input shape of each of the network's convs on images shaped like x, in order; found by one
    forward pass per architecture and image shape, not per call (conv_floor runs inside the timing)."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    key = (tuple((c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs), tuple(x.shape[1:]))
    if key not in _CONV_INPUTS:
        _CONV_INPUTS[key] = _trace_conv_inputs(net, convs, x)
    return _CONV_INPUTS[key]


def _trace_conv_inputs(net, convs, x):
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape[1:])) for m in convs]
    with torch.no_grad():
        net.embed(x[:1])
    for h in hooks:
        h.remove()
    return shapes


def conv_floor(method, net, x_real, g_real, params):
    """Only convolutions that an exact float32 step cannot avoid, on oneDNN's kernels and in the chunks
    our step uses: each conv after the first forward for the real images (no gradients), and forward
    plus the gradient with respect to its input for the synthetic ones (the network is frozen: no
    weight gradients). Inputs are random tensors of the right shapes. The first conv (one input
    channel on MNIST: 2% of the arithmetic, and folded into our first block), the norms, ReLUs,
    pools, augmentation and everything else are left out, so its time is a lower bound on any exact
    step through these kernels on this CPU."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)][1:]
    shapes = conv_inputs(net, x_real)[1:]
    n_syn = len(method.images_) * (2 if getattr(method, "fyi", False) else 1)
    for n, grad in ((len(x_real), False), (n_syn, True)):
        chunk = chunk_size(net, x_real[:n])
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            for conv, shape in zip(convs, shapes):
                x = _random_input((m, *shape), grad)
                with torch.set_grad_enabled(grad):
                    out = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
                if grad:
                    out.backward(torch.ones_like(out))
                    x.grad = None
    return None


_INPUTS: dict = {}


def _random_input(shape, grad):
    """A random input of that shape, drawn once (drawing it each time would be timed too)."""
    key = (tuple(shape), grad)
    if key not in _INPUTS:
        _INPUTS[key] = torch.randn(*shape, requires_grad=grad)
    return _INPUTS[key]


def make(dataset, preset, ipc, seed, name="dm", model="convnet", device=torch.device("cpu")):
    # By default the network of the speed target (ConvNet-3 width 128) for every preset;
    # model=None keeps the preset's own (the fast preset's is width 32).
    overrides = {"model": model} if model else {}
    method = make_method(name, preset=preset, dataset=dataset.name, ipc=ipc, **overrides)
    method.setup(dataset, init_synthetic(dataset, ipc, seed=seed), seed=seed, device=device)
    return method


def one_step(method, reference=None) -> tuple[float, float]:
    """One step, through `reference(method, *drawn)` if given, else the method's own loss."""
    t0 = time.perf_counter()
    drawn = method.sample()
    loss = reference(method, *drawn) if reference else method.loss(*drawn)
    if loss is None:  # conv_floor: nothing to step
        return time.perf_counter() - t0, float("nan")
    method.opt_.zero_grad(set_to_none=True)
    loss.backward()
    method.opt_.step()
    if method.images_.is_cuda:  # the GPU runs behind the host: time the work, not the queueing
        torch.cuda.synchronize()
    return time.perf_counter() - t0, loss.item()


def time_steps(dataset, preset, ipc, steps, seed, name="dm", model="convnet", floor=False):
    """Two runs from the same seed, stepped alternately (reference, ours, reference, ...), so that
    a shared machine's changing load falls on both alike; with floor, a third (conv_floor) in the
    same rotation. Returns the times and losses of each, the floor's times ([] without) and ours."""
    ref, ours = make(dataset, preset, ipc, seed, name, model), make(dataset, preset, ipc, seed, name, model)
    lower = make(dataset, preset, ipc, seed, name, model) if floor else None
    t_ref, l_ref, t_new, l_new, t_floor = [], [], [], [], []
    for _ in range(steps):
        t, l = one_step(ref, REFERENCES[name])
        t_ref.append(t), l_ref.append(l)
        t, l = one_step(ours)
        t_new.append(t), l_new.append(l)
        if lower is not None:
            t_floor.append(one_step(lower, conv_floor)[0])
    return t_ref, l_ref, t_new, l_new, t_floor, ours


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--method", default="dm", choices=sorted(REFERENCES))
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--presets", nargs="*", default=["paper", "fast"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--own-model", action="store_true",
                   help="each preset's own network (fast: width 32) instead of ConvNet-3 width 128 for all")
    p.add_argument("--floor", action="store_true",
                   help="also time the step's wide convolutions alone (conv_floor), in the same rotation: the "
                        "ratio reference / floor bounds what any exact step through the same conv kernels can gain")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    rows = []
    for preset in args.presets:
        # The first step of each is warm-up and not timed.
        t_ref, l_ref, t_new, l_new, t_floor, ours = time_steps(dataset, preset, args.ipc, args.steps + 1, args.seed,
                                                               args.method, None if args.own_model else "convnet",
                                                               args.floor)
        ref, new = statistics.median(t_ref[1:]), statistics.median(t_new[1:])
        floor = {}
        if t_floor:
            low = statistics.median(t_floor[1:])
            floor = {"floor_s_per_step": round(low, 4), "ceiling_speedup": round(ref / low, 2),
                     "share_of_ceiling": round((ref / new) / (ref / low), 2)}
        max_rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(l_ref, l_new))
        rows.append({"method": args.method, "dataset": args.dataset, "ipc": args.ipc, "preset": preset, "model": ours.net_name_, "batch_real": ours.batch_real,
                     "threads": args.threads,
                     "reference_s_per_step": round(ref, 4), "ours_s_per_step": round(new, 4),
                     "speedup": round(ref / new, 2), **floor, "max_rel_loss_diff": max_rel,
                     "losses_ref": [round(v, 5) for v in l_ref], "losses_ours": [round(v, 5) for v in l_new],
                     "allocator": allocator(), "code_version": code_version()})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
