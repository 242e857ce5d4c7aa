"""Evaluating a synthetic set: train fresh networks on it alone, test on the real test set.

Reports mean and std of the *final-epoch* test accuracy, as fractions in [0, 1], over
`num_models` networks. `report="best"` exists only to reproduce papers that report the best
checkpoint, and says so in the result.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .augment import dc_augment_for, dsa_for
from .data import Dataset, DatasetFacts
from .device import autocast, configure as configure_device, default_device, maybe_compile
from .label_stores.base import HardLabels, LabelStore, soft_cross_entropy
from .labels import load_store
from .models import default_model, fast_forward, model_for
from .soft_protocol import SOFT_CROP_MIN, train_soft
from .training import Accuracies, test_accuracy, training_views


@dataclass(frozen=True)
class EvalConfig:
    """How a synthetic set is evaluated; `protocol` names the recipe for every number shown."""

    protocol: str = "fast"
    model: str | None = None  # None: the DD ConvNet for the resolution (ConvNet-3 width 128 at 28-32 px)
    epochs: int = 300  # passes over the synthetic set
    # If > 0, the epochs instead wherever the protocol's own augmentation is on for the dataset: the DC
    # code trains 1000 then ("Training with data augmentation needs more epochs"), 300 without.
    epochs_augmented: int = 0
    lr: float = 0.01  # SGD, per batch of up to 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa: bool = True  # DSA augmentation of every training batch (per-image parameters)
    dsa_ops: str = "batch"  # "batch": one op per batch, as the reference evaluation; "image": one per image
    dc_aug: bool = False  # without DSA: the DC paper's augmentation (crop/scale/rotate per image on MNIST only)
    num_models: int = 3
    report: str = "final"  # "final" epoch accuracy; "best" only to mimic papers that did so
    seed: int = 0
    note: str = ""  # one line on what the protocol is for: the help text of the CLI and the app
    recipe: str = "sgd"  # "sgd": the recipe above; "soft": soft_protocol.py (AdamW, cosine, KL, crops + CutMix)
    temperature: float = 1.0  # soft recipe: the student's KL temperature (the set's labels carry their own)
    cutmix: float = 0.0  # soft recipe: CutMix with lam ~ Beta(cutmix, cutmix); 0 turns it off
    crop_min: float = 0.08  # soft recipe: smallest random-resized-crop area fraction

    def describe(self) -> str:
        if self.recipe == "soft":
            batch = self.batch_size or "half the set, 10-100 (RDED)"
            return (f"{self.protocol}: {self.model or 'ConvNet for the resolution'}, AdamW lr {self.lr} wd "
                    f"{self.weight_decay}, cosine, batch {batch}, {self.epochs} epochs, KL to the set's soft labels at "
                    f"T = {self.temperature:g}, random-resized crops (area >= {self.crop_min:g}) + flips where they keep "
                    f"the class + CutMix ({self.cutmix:g}), {self.report} accuracy, {self.num_models} "
                    f"network{'' if self.num_models == 1 else 's'}")
        if self.dsa:
            aug = f"DSA (one op per {self.dsa_ops})"
        elif self.dc_aug:
            aug = "DC augmentation (crop/scale/rotate per image on MNIST; none elsewhere)"
        else:
            aug = "no augmentation"
        epochs = f"{self.epochs} epochs" + (f" ({self.epochs_augmented} where it augments)" if self.epochs_augmented else "")
        return (f"{self.protocol}: {self.model or 'ConvNet for the resolution'}, SGD lr {self.lr} mom {self.momentum} wd {self.weight_decay}, "
                f"batch {self.batch_size}, {epochs} (lr x0.1 at half), {aug}, "
                f"{self.report} accuracy, {self.num_models} network{'' if self.num_models == 1 else 's'}")


PROTOCOLS = {
    # The DC/DSA/DM recipe, shorter: for interactive use on a CPU.
    "fast": EvalConfig(protocol="fast", epochs=300, dsa=True, num_models=3, note="300 epochs with DSA"),
    # The DSA/DM protocol: 1000 epochs with DSA, final epoch.
    "paper": EvalConfig(protocol="paper", epochs=1000, dsa=True, num_models=5,
                        note="1000 epochs with DSA (the DSA and DM papers)"),
    # The DC paper's protocol, behind its own figures and its coreset baselines (random, herding,
    # k-center): its own augmentation instead of DSA (MNIST only), 1000 epochs with it, 300 without.
    "dc": EvalConfig(protocol="dc", epochs=300, epochs_augmented=1000, dsa=False, dc_aug=True, num_models=5,
                     note="the DC paper's crop/scale/rotate on MNIST for 1000 epochs, no augmentation and 300 "
                          "epochs elsewhere (its own and its coreset figures)"),
    # The fast recipe at the lr the set learned (MTT and its family learn the student's lr and their
    # evaluation trains with it); for sets that carry a 'learned_lr' (evaluate.for_set).
    "learned_lr": EvalConfig(protocol="learned_lr", epochs=300, dsa=True, num_models=3,
                             note="fast at the lr a trajectory-matching set learned (MTT's evaluation)"),
    # The decoupled papers' soft-label recipe (RDED's settings; SRe2L's CIFAR relabel is the same
    # AdamW/cosine/KL with mixup at T = 30): 300 epochs, for sets that carry soft labels.
    "soft": EvalConfig(protocol="soft", recipe="soft", epochs=300, lr=0.001, momentum=0.0, weight_decay=0.01,
                       batch_size=0, dsa=False, num_models=3, temperature=20.0, cutmix=1.0, crop_min=0.08,
                       note="the decoupled papers' soft-label recipe: AdamW, cosine, KL at T = 20, crops + CutMix, "
                            "300 epochs (SRe2L, RDED, CV-DD, INFER sets)"),
}


def augment_for(config: EvalConfig, dataset: DatasetFacts):
    """The augmentation an evaluation network trains with, or None."""
    if config.dsa:
        return dsa_for(dataset)
    return dc_augment_for(dataset) if config.dc_aug else None


def protocol_help() -> str:
    """Every protocol in a line, for the CLI's --protocol and the app's radio buttons."""
    return "; ".join(f"{name}: {c.note or c.describe()}" for name, c in PROTOCOLS.items())


def protocol(name: str, **overrides) -> EvalConfig:
    """A named protocol with some fields changed; epochs given here hold with or without augmentation."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid protocols are: {', '.join(sorted(PROTOCOLS))}")
    if "epochs" in overrides:
        overrides.setdefault("epochs_augmented", 0)
    return dataclasses.replace(PROTOCOLS[name], **overrides)


def for_dataset(config: EvalConfig, dataset: Dataset) -> EvalConfig:
    """The protocol as it runs on a dataset, as every result records it: the network for the
    resolution, and `epochs_augmented` where the protocol augments this dataset."""
    if config.model is None:
        config = dataclasses.replace(config, model=default_model(dataset.image_size))
    if config.epochs_augmented:  # resolved: the record names the one number that ran
        augmented = augment_for(config, dataset) is not None
        config = dataclasses.replace(config, epochs=config.epochs_augmented if augmented else config.epochs,
                                     epochs_augmented=0)
    return config


@dataclass
class EvalResult(Accuracies):
    """Final test accuracies (fractions) of each network, and how they were obtained."""

    config: EvalConfig
    seconds: float
    label_store: str = "hard"
    stopped: bool = False

    def as_dict(self) -> dict:
        return {**self.summary(), "protocol": self.config.protocol, "protocol_detail": self.config.describe(),
                "report": self.config.report, "labels": self.label_store, "seconds": round(self.seconds, 2),
                "stopped": self.stopped}


def train_network(images: torch.Tensor, labels: LabelStore, dataset: Dataset, config: EvalConfig, *, seed: int,
                  device, on_epoch: Callable[[int], None] | None = None,
                  stop: threading.Event | None = None) -> tuple[torch.nn.Module, float | None]:
    """Train one fresh network on (images, labels); returns it and the best test accuracy if asked for."""
    if config.recipe == "soft":
        return train_soft(images, labels, dataset, config, seed=seed, device=device, on_epoch=on_epoch, stop=stop,
                          test=lambda net: test_accuracy(net, dataset, device))
    net = model_for(dataset, config.model, seed=seed, device=device)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[config.epochs // 2], gamma=0.1)
    augment = augment_for(config, dataset)
    images = images.to(device)
    best = 0.0 if config.report == "best" else None
    epoch_now = 0
    forward = maybe_compile(fast_forward(net), device)  # torch.compile only on CUDA with DD_COMPILE=1
    net.train()
    # A store that labelled one recorded schedule (dynamic labels) makes every network replay it.
    for epoch, idx, views in training_views(images, epochs=config.epochs, batch_size=config.batch_size,
                                            augment=augment, seed=labels.view_seed(seed + 1), dsa_ops=config.dsa_ops):
        if epoch != epoch_now:  # an epoch ended
            sched.step()
            if best is not None:
                best = max(best, test_accuracy(net, dataset, device))
            if on_epoch:
                on_epoch(epoch_now + 1)
            epoch_now = epoch
            if stop is not None and stop.is_set():
                return net, best
        if stop is not None and stop.is_set():  # every batch too: one epoch of a large set can take minutes
            return net, best
        views = labels.inputs(idx, views, epoch)  # a store may show its own labelled views instead
        with autocast(device):  # bf16 only on CUDA with DD_AMP=bf16 (device.py)
            loss = soft_cross_entropy(forward(views), labels.targets(idx.to(device), views, epoch).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sched.step()
    if on_epoch:
        on_epoch(config.epochs)
    return net, best


def evaluate(images: torch.Tensor, labels: torch.Tensor | LabelStore, dataset: Dataset, config: EvalConfig, *,
             device=None, progress: Callable[[float, str], None] | None = None,
             stop: threading.Event | None = None) -> EvalResult:
    """Train `config.num_models` fresh networks on the synthetic set; report final test accuracy."""
    device = device or default_device()
    configure_device(device)
    config = for_dataset(config, dataset)  # record the network and epochs actually used
    store = labels if isinstance(labels, LabelStore) else HardLabels(labels, dataset.num_classes)
    store.check_config(config, dataset)  # e.g. dynamic labels made for another number of epochs
    t0 = time.perf_counter()
    accs: list[float] = []
    for k in range(config.num_models):
        def on_epoch(e, k=k):
            if progress:
                progress((k + e / config.epochs) / config.num_models, f"network {k + 1}/{config.num_models}, epoch {e}/{config.epochs}")
        net, best = train_network(images, store, dataset, config, seed=config.seed + 1000 * k, device=device,
                                  on_epoch=on_epoch, stop=stop)
        if stop is not None and stop.is_set():
            return EvalResult(accs, config, time.perf_counter() - t0, store.name, stopped=True)
        final = test_accuracy(net, dataset, device)
        accs.append(max(best, final) if best is not None else final)
    return EvalResult(accs, config, time.perf_counter() - t0, store.name)


def for_set(config: EvalConfig, syn) -> EvalConfig:
    """The protocol as it applies to one set: 'learned_lr' takes the lr the set learned; the soft
    recipe crops no smaller than the set's method does in its own evaluation, when the set says so."""
    if config.recipe == "soft" and SOFT_CROP_MIN in syn.extra_meta:
        return dataclasses.replace(config, crop_min=float(syn.extra_meta[SOFT_CROP_MIN]))
    if config.protocol != "learned_lr":
        return config
    if "learned_lr" not in syn.extra_meta:
        raise ValueError(f"the learned_lr protocol trains with the lr a trajectory-matching method learned (mtt, tesla, "
                         f"ftd, datm, set), and this set (method {syn.method!r}) has none; use fast or paper")
    return dataclasses.replace(config, lr=float(syn.extra_meta["learned_lr"]))


def dataset_for(syn, dataset: Dataset) -> Dataset:
    """The real data as a set's networks must see it: ZCA-whitened like the set, when it records a
    transform (trajectory matching on CIFAR), else unchanged."""
    if "zca" not in syn.extra_meta:
        return dataset
    from .zca import whitened

    return whitened(dataset, float(syn.extra_meta["zca"]))


def evaluate_synthetic(syn, dataset: Dataset, config: EvalConfig, **kw) -> EvalResult:
    """Evaluate a SyntheticSet with the labels it carries: its label store when the file has one
    (soft, dynamic, ...), else its hard labels; 'learned_lr' at the set's own lr."""
    return evaluate(syn.images, load_store(syn), dataset_for(syn, dataset), for_set(config, syn), **kw)
