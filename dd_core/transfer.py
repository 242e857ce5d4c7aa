"""The transfer protocol for unlabelled sets (KRR-ST): pre-train a fresh network on the set's images
and target representations, then linear-probe it on a labelled set and test.

Pre-training regresses the targets from the network's embedding through a linear head (mean
squared error, Adam), with DSA augmentation of the images; the head is then dropped. The probe is
a multinomial logistic regression on the frozen embeddings (L-BFGS, full batch), trained on the
labelled training images (all, or `probe_per_class` of each class) and tested on the test set.
Accuracies are fractions of the test set, one per network, as in evaluate.py.

References worth setting beside a number: the same network with no pre-training (random weights,
probed alike), random real images carrying their encoder targets (the selection baseline), and the
self-supervised encoder itself (pre-trained on all the real images).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import dsa_for
from .data import Dataset
from .methods.krr_st import TARGETS
from .models import default_model, model_for
from .teacher import features
from .training import Accuracies


@dataclass(frozen=True)
class TransferConfig:
    """How an unlabelled set is evaluated by transfer; every number names it."""

    model: str | None = None  # None: the DD ConvNet for the resolution
    pretrain_epochs: int = 300  # passes over the synthetic set
    pretrain_lr: float = 1e-3  # Adam, on the network and the linear head
    batch_size: int = 256
    dsa: bool = True
    # Labelled training images per class for the probe; 0 = all. A few: with every label a linear probe
    # nears its ceiling whatever the pre-training (digits: 0.99 for the set, random images and random weights).
    probe_per_class: int = 10
    probe_l2: float = 1e-4  # weight decay of the probe, per mean example
    num_models: int = 3
    seed: int = 0

    def describe(self) -> str:
        labelled = "all labelled training images" if not self.probe_per_class else \
            f"{self.probe_per_class} labelled training images per class"
        return (f"transfer: {self.model or 'ConvNet for the resolution'} pre-trained {self.pretrain_epochs} epochs "
                f"on the set (MSE to its targets, Adam lr {self.pretrain_lr}, batch {self.batch_size}"
                f"{', DSA' if self.dsa else ''}), then a linear probe (L-BFGS, L2 {self.probe_l2}) on {labelled}; "
                f"final test accuracy, {self.num_models} network{'' if self.num_models == 1 else 's'}")


@dataclass
class TransferResult(Accuracies):
    config: TransferConfig
    seconds: float
    what: str  # which pre-training: 'synthetic set', 'none', ...
    stopped: bool = False

    def as_dict(self) -> dict:
        return {**self.summary(), "pretraining": self.what, "protocol": "transfer", "protocol_detail": self.config.describe(),
                "config": asdict(self.config), "seconds": round(self.seconds, 2), "stopped": self.stopped}


def refuse_unlabelled(syn) -> None:
    """A KRR-ST set carries target representations, not class labels: a classifier trained on it
    would learn the classes its images started from, which the method never used. Say where such a
    set is evaluated instead."""
    if TARGETS in syn.extra:
        raise ValueError(f"this {syn.method} set has no class labels: its images carry target representations "
                         f"({TARGETS}). Evaluate it by transfer: python -m dd_core transfer FILE --baseline")


def pretrain(net: nn.Module, images: torch.Tensor, targets: torch.Tensor, dataset: Dataset, config: TransferConfig,
             *, seed: int, device, stop: threading.Event | None = None) -> nn.Module:
    """Regress (m, d) targets from the embedding of (m, c, h, w) images for config.pretrain_epochs."""
    images, targets = images.to(device), targets.to(device)
    dim = net.embed(images[:1]).shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(dim, targets.shape[1]).to(device)
    opt = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), lr=config.pretrain_lr)
    augment = dsa_for(dataset) if config.dsa else None
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(config.pretrain_epochs):
        if stop is not None and stop.is_set():
            break
        perm = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), config.batch_size):
            idx = perm[i:i + config.batch_size]
            x = images[idx.to(device)]
            if augment is not None:
                x = augment.apply(x, augment.sample(len(idx), g), torch.arange(len(idx)))
            loss = F.mse_loss(head(net.embed(x)), targets[idx.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    return net


def probe_indices(dataset: Dataset, per_class: int, seed: int) -> torch.Tensor:
    """The labelled training images the probe sees: all, or `per_class` random ones of each class."""
    if not per_class:
        return torch.arange(len(dataset.x_train))
    g = torch.Generator().manual_seed(seed)
    return torch.cat([dataset.indices_of(c)[torch.randperm(len(dataset.indices_of(c)), generator=g)[:per_class]]
                      for c in range(dataset.num_classes)])


def linear_probe(net: nn.Module, dataset: Dataset, config: TransferConfig, *, seed: int, device) -> float:
    """Test accuracy (fraction) of logistic regression on the frozen, standardized embeddings."""
    idx = probe_indices(dataset, config.probe_per_class, seed)
    f_train = features(net, dataset.x_train[idx], device).double()  # (n, k)
    f_test = features(net, dataset.x_test, device).double()
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mean) / std, (f_test - mean) / std
    y = dataset.y_train[idx]
    w = torch.zeros(f_train.shape[1], dataset.num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(dataset.num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(f_train @ w + b, y) + config.probe_l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((f_test @ w + b).argmax(1) == dataset.y_test).double().mean().item()


def evaluate_transfer(images: torch.Tensor | None, targets: torch.Tensor | None, dataset: Dataset,
                      config: TransferConfig, *, what: str = "synthetic set", device=None,
                      stop: threading.Event | None = None,
                      progress: Callable[[float, str], None] | None = None) -> TransferResult:
    """Pre-train config.num_models fresh networks on (images, targets) and probe each; with images
    None, the networks are probed with their random weights (the no-pre-training reference).
    `progress(fraction, text)` is told as each network starts."""
    device = device or torch.device("cpu")
    model = config.model or default_model(dataset.image_size)
    t0 = time.perf_counter()
    accs: list[float] = []
    for k in range(config.num_models):
        if progress is not None:
            progress(k / config.num_models, f"network {k + 1} of {config.num_models}")
        seed = config.seed + 1000 * k
        net = model_for(dataset, model, seed=seed, device=device)
        if images is not None:
            net = pretrain(net, images, targets, dataset, config, seed=seed, device=device, stop=stop)
        if stop is not None and stop.is_set():
            return TransferResult(accs, config, time.perf_counter() - t0, what if images is not None else "none", True)
        accs.append(linear_probe(net, dataset, config, seed=seed, device=device))
    return TransferResult(accs, config, time.perf_counter() - t0, what if images is not None else "none")


def probe_encoder(encoder, dataset: Dataset, config: TransferConfig, *, device=None) -> float:
    """The self-supervised encoder itself, probed alike: what pre-training on all the real images gives."""
    return linear_probe(encoder.net, dataset, config, seed=config.seed, device=device or torch.device("cpu"))


def target_bytes(syn) -> int:
    """Bytes of a KRR-ST set's target representations as stored (0 for a set with class labels)."""
    targets = syn.extra.get(TARGETS)
    return 0 if targets is None else targets.numel() * targets.element_size()


def targets_of(syn) -> torch.Tensor | None:
    """A KRR-ST set's target representations (float32), or None for a set with class labels."""
    targets = syn.extra.get(TARGETS)
    return None if targets is None else targets.float()


def encoder_of(syn, dataset: Dataset, *, device=None, stop: threading.Event | None = None):
    """The self-supervised encoder a set's targets were made with (cached; trained on first use)."""
    from .ssl import get_encoder

    target_model = syn.config.get("target_model", "auto")
    return get_encoder(dataset, arch=None if target_model in ("", "auto") else target_model,
                       epochs=syn.config.get("target_epochs") or None, device=device, stop=stop)


@dataclass
class References:
    """What a KRR-ST set's transfer accuracy is set beside (see the module docstring)."""

    random: TransferResult  # as many random real images, carrying the same encoder's targets
    none: TransferResult  # the same networks, probed with their random weights
    encoder_probe: float | None  # the encoder itself (None when stopped before it)
    encoder: str  # how the encoder was made

    def as_dict(self) -> dict:
        return {"random_mean": self.random.mean, "random_std": self.random.std, "none_mean": self.none.mean,
                "none_std": self.none.std, "encoder_probe": self.encoder_probe, "encoder": self.encoder}


def references(syn, dataset: Dataset, config: TransferConfig, *, device=None, stop: threading.Event | None = None,
               progress: Callable[[float, str], None] | None = None) -> References:
    """The three references of a KRR-ST set under `config`, in the order the cost grows."""
    from .synthetic import init_synthetic

    say = progress or (lambda frac, text: None)
    device = device or torch.device("cpu")
    say(0.0, "the encoder")
    encoder = encoder_of(syn, dataset, device=device, stop=stop)
    say(0.05, "no pre-training")
    none = evaluate_transfer(None, None, dataset, config, device=device, stop=stop)
    rnd = init_synthetic(dataset, max(syn.ipc, 1), init="real", seed=syn.seed + 1)
    random = evaluate_transfer(rnd.images, encoder.targets(dataset, rnd.images, device), dataset, config,
                               what="random real images with encoder targets", device=device, stop=stop,
                               progress=lambda f, t: say(0.1 + 0.85 * f, f"random real images, {t}"))
    stopped = stop is not None and stop.is_set()
    probe = None if stopped else probe_encoder(encoder, dataset, config, device=device)
    return References(random, none, probe, encoder.describe())
