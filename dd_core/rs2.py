"""RS2, repeated random sampling (Okanovic et al., "Repeated Random Sampling for Minimizing the
Time-to-Accuracy of Learning", 2023), as the baseline a distilled set has to beat.

Instead of training on one small fixed set, every epoch trains on a fresh random subset of the
whole training set, of the same size as the distilled set (IPC x classes), for the same number of
epochs, with the same network, optimizer, schedule and augmentation as the evaluation protocol.
Both sides then see the same number of images and take the same number of steps; what differs is
which images. Subsets are drawn without replacement across epochs (the paper's recommended
variant): a random order of the whole training set is walked `per_epoch` images at a time, and
drawn afresh when it runs out, so every image is seen before any is seen twice.

A module of its own beside evaluate.py: it shares the protocol (EvalConfig) and the test, not the
loop over a fixed set of images.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .data import Dataset
from .evaluate import EvalConfig, EvalResult, augment_for, for_dataset
from .models import fast_forward, model_for
from .training import test_accuracy
from .device import default_device


def rs2_subsets(n: int, per_epoch: int, epochs: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """One (per_epoch,) tensor of training-set indices per epoch, without replacement across epochs
    until the whole set has been seen once, then from a new random order."""
    if not 1 <= per_epoch <= n:
        raise ValueError(f"RS2 needs between 1 and {n} images per epoch (the training set's size); got {per_epoch}")
    order, at = torch.randperm(n, generator=gen), 0
    for _ in range(epochs):
        take = order[at:at + per_epoch]
        at += per_epoch
        if len(take) < per_epoch:  # the order ran out: the rest of it, then the start of a new one
            order = torch.randperm(n, generator=gen)
            at = per_epoch - len(take)
            take = torch.cat([take, order[:at]])
        yield take


def train_rs2(dataset: Dataset, config: EvalConfig, per_epoch: int, *, seed: int, device,
              on_epoch: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> torch.nn.Module:
    """Train one fresh network for config.epochs epochs, each on a new random subset of `per_epoch`
    real training images with their hard labels (batches of config.batch_size, the protocol's SGD,
    lr x0.1 at half, its augmentation)."""
    net = model_for(dataset, config.model, seed=seed, device=device)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[config.epochs // 2], gamma=0.1)
    augment = augment_for(config, dataset)
    forward = fast_forward(net)
    g = torch.Generator().manual_seed(seed + 1)
    net.train()
    for epoch, subset in enumerate(rs2_subsets(len(dataset.x_train), per_epoch, config.epochs, g)):
        if stop is not None and stop.is_set():
            break
        subset = subset[torch.randperm(len(subset), generator=g)]
        for i in range(0, len(subset), config.batch_size):
            idx = subset[i:i + config.batch_size]
            views = dataset.x_train[idx].to(device)  # (b, c, h, w)
            if augment is not None:
                params = augment.sample_batch(len(idx), g) if config.dsa_ops == "batch" else augment.sample(len(idx), g)
                views = augment.apply(views, params, torch.arange(len(idx)))
            loss = F.cross_entropy(forward(views), dataset.y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if on_epoch:
            on_epoch(epoch + 1)
    return net


def evaluate_rs2(dataset: Dataset, config: EvalConfig, per_epoch: int, *, device=None,
                 progress: Callable[[float, str], None] | None = None,
                 stop: threading.Event | None = None) -> EvalResult:
    """RS2 under the protocol `config`: config.num_models networks, final-epoch test accuracy, and
    the wall time of all of it (EvalResult.seconds). Its `label_store` says 'rs2'."""
    device = device or default_device()
    config = for_dataset(config, dataset)  # the network and epochs that run, as evaluate() records them
    t0 = time.perf_counter()
    accs: list[float] = []
    for k in range(config.num_models):
        def on_epoch(e, k=k):
            if progress:
                progress((k + e / config.epochs) / config.num_models,
                         f"RS2 network {k + 1}/{config.num_models}, epoch {e}/{config.epochs}")
        net = train_rs2(dataset, config, per_epoch, seed=config.seed + 1000 * k, device=device, on_epoch=on_epoch,
                        stop=stop)
        if stop is not None and stop.is_set():
            return EvalResult(accs, config, time.perf_counter() - t0, "rs2", stopped=True)
        accs.append(test_accuracy(net, dataset, device))
    return EvalResult(accs, config, time.perf_counter() - t0, "rs2")


def describe_rs2(per_epoch: int, dataset: Dataset, config: EvalConfig) -> str:
    """One line: what the RS2 number is."""
    n = len(dataset.x_train)
    return (f"RS2 without replacement: a fresh random subset of {per_epoch} of the {n} real training images "
            f"(hard labels) each epoch, {config.epochs} epochs ({per_epoch * config.epochs} images seen, "
            f"{per_epoch * config.epochs / n:.2f} passes over the training set); otherwise the {config.protocol} protocol")
