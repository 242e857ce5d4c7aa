"""Batch-norm teachers for the decoupled methods (SRe2L and its family): a registry of training
recipes, each network trained once per dataset, recipe and seed and cached as .safetensors with
its test accuracy, plus committees of them (CV-DD) and the way back from a set's metadata.

Recovery matches a teacher's batch-norm running statistics, so these teachers must have batch
norm: a ConvNet with BN, or the small-image ResNet-18 of the CIFAR papers."""
from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import progress
from .cache import cache_path, load_or_build
from .committee import Committee
from .data import Dataset
from .training import test_accuracy
from .interrupt import check
from .models import build_model, model_for
from .registry import Registry
from .teacher import Teacher
from .device import default_device

TEACHERS: Registry = Registry("teacher recipe")
_memory: dict[str, Teacher] = {}
_memory_guard = threading.Lock()


@dataclass(frozen=True)
class TeacherRecipe:
    """How a teacher is trained on the whole training set."""

    arch: str
    epochs: int
    lr: float = 0.05  # SGD, per batch of 128; cosine to 0 over the run
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    shift: float = 0.125  # random translation, a fraction of the side (pad-and-crop, as the CIFAR recipes)

    def describe(self) -> str:
        return (f"{self.arch}, {self.epochs} epochs, SGD lr {self.lr} cosine, momentum {self.momentum}, "
                f"wd {self.weight_decay}, batch {self.batch_size}, shift {self.shift:g} + flips where they keep the class")


def cpu_epochs(dataset: Dataset) -> int:
    """About 45,000 images seen: 30 epochs of digits, 2 of MNIST or CIFAR-10 (a minute or two on a CPU)."""
    return max(2, min(30, 45000 // max(1, len(dataset.x_train))))


@TEACHERS.register("convnet_bn")
def convnet_bn(dataset: Dataset) -> TeacherRecipe:
    """CPU-sized ConvNet with batch norm: depth 2 at width 128 for 8x8 digits, depth 3 at width 32 above."""
    small = min(dataset.image_size) <= 16
    return TeacherRecipe("convnet_bn_d2" if small else "convnet_bn_w32", cpu_epochs(dataset))


@TEACHERS.register("convnet_bn_quick")
def convnet_bn_quick(dataset: Dataset) -> TeacherRecipe:
    """ConvNet-3 width 32 with batch norm, trained a sixth as long (5 epochs of digits): seconds, for tests
    and first looks."""
    return TeacherRecipe("convnet_bn_w32", max(1, cpu_epochs(dataset) // 6))


@TEACHERS.register("convnet_bn_128")
def convnet_bn_128(dataset: Dataset) -> TeacherRecipe:
    """ConvNet-3 width 128 with batch norm: RDED's Conv3 observer (82.2% on CIFAR-10); 50 epochs."""
    return TeacherRecipe("convnet_bn_d2" if min(dataset.image_size) <= 16 else "convnet_bn", 50)


@TEACHERS.register("convnet_bn_128_cpu")
def convnet_bn_128_cpu(dataset: Dataset) -> TeacherRecipe:
    """RDED's Conv3 observer on a CPU budget: the same network and recipe for 15 epochs. On CIFAR-10 it
    reaches the paper's observer accuracy (82.5 % against RDED's 82.2 %) in 1.6 CPU-hours (BENCHMARKS 15h)."""
    return replace(convnet_bn_128(dataset), epochs=15)


@TEACHERS.register("resnet18")
def resnet18(dataset: Dataset) -> TeacherRecipe:
    """ResNet-18 (3x3 stem, no max-pool), SRe2L's CIFAR squeeze: SGD lr 0.1, 200 epochs (GPU scale)."""
    return TeacherRecipe("resnet18", 200, lr=0.1)


@TEACHERS.register("resnet18_w16")
def resnet18_w16(dataset: Dataset) -> TeacherRecipe:
    """ResNet-18 at width 16: the same shape for a CPU, a second architecture for committees."""
    return TeacherRecipe("resnet18_w16", cpu_epochs(dataset))


def _digest(dataset: Dataset) -> str:
    # Folder datasets share names across users' folders: key on the data itself as well.
    sample = dataset.x_train[:: max(1, len(dataset.x_train) // 512)]
    return hashlib.sha1(sample.numpy().tobytes()).hexdigest()[:10]


def _shift_flip(x: torch.Tensor, shift: float, flips: bool, g: torch.Generator) -> torch.Tensor:
    """Pad-and-crop translation by up to `shift` of the side (zero padding in normalized space), and
    a horizontal flip of half the batch where flips keep the class."""
    n, _, h, w = x.shape
    p = int(round(shift * min(h, w)))
    if p:
        padded = F.pad(x, (p, p, p, p))
        dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=g).tolist()  # one offset per batch: cheap
        x = padded[:, :, dy:dy + h, dx:dx + w]
    if flips:
        do = torch.rand(n, generator=g) < 0.5
        x = torch.where(do.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    return x


def train_teacher(dataset: Dataset, recipe: TeacherRecipe, *, seed: int, device,
                  stop: threading.Event | None = None) -> nn.Module:
    """Supervised training on the whole training set; raises `Interrupted` between batches once `stop` is set."""
    net = model_for(dataset, recipe.arch, seed=seed, device=device)
    opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    n = len(dataset.x_train)
    steps = recipe.epochs * math.ceil(n / recipe.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    flips = dataset.flips
    # channels-last: oneDNN's faster convolution layout on a CPU (1.5x a ConvNet-3 width 128 step); same arithmetic
    layout = torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format
    net.to(memory_format=layout)
    net.train()
    for _ in range(recipe.epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, recipe.batch_size):
            check(stop)
            progress.advance()  # a watcher's progress (the run's set-up), told of every step
            idx = perm[i:i + recipe.batch_size]
            x = _shift_flip(dataset.x_train[idx], recipe.shift, flips, g).to(device).contiguous(memory_format=layout)
            loss = F.cross_entropy(net(x), dataset.y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.to(memory_format=torch.contiguous_format).eval()


def _save(teacher: Teacher, path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in teacher.net.state_dict().items()}
    save_file(state, str(path), metadata={**meta, "test_accuracy": repr(teacher.test_accuracy),
                                          "seconds": f"{teacher.seconds:.2f}"})


def _load(path: Path, dataset: Dataset, meta: dict[str, str], device) -> Teacher:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        stored = f.metadata() or {}
    for key, value in meta.items():
        if stored.get(key) != value:
            raise ValueError(f"metadata {key!r} is {stored.get(key)!r}, expected {value!r}")
    net = model_for(dataset, meta["arch"], device=device)
    net.load_state_dict(load_file(str(path), device=str(device)))  # strict: a wrong or partial file raises
    return Teacher(net.eval(), meta["arch"], int(meta["epochs"]), float(stored["test_accuracy"]),
                   float(stored["seconds"]))


def get_bn_teacher(dataset: Dataset, recipe: str = "convnet_bn", *, seed: int = 0, device=None,
                   stop: threading.Event | None = None, on_train: Callable[[str], None] | None = None) -> Teacher:
    """The teacher trained by `recipe` on `dataset` with `seed`: from memory, else from the cache
    folder, else trained now (and cached). A cache file that cannot be used is discarded and
    retrained, with a logged note. `on_train(message)` is told before a training starts."""
    device = torch.device(device or default_device())
    spec = TEACHERS.get(recipe)(dataset)
    meta = {"dataset": dataset.name, "recipe": recipe, "arch": spec.arch, "epochs": str(spec.epochs),
            "seed": str(seed), "training": json.dumps(asdict(spec))}
    path = cache_path("teachers", f"bn-{dataset.name}-{recipe}-{spec.arch}-e{spec.epochs}-s{seed}-{_digest(dataset)}",
                      ".safetensors")
    with _memory_guard:
        if str(path) in _memory and path.is_file():
            return _memory[str(path)]

    def build() -> Teacher:
        if on_train:
            on_train(f"training the {recipe} teacher ({spec.describe()}) on {dataset.name}; it is cached afterwards")
        t0 = time.perf_counter()
        with progress.task(f"training the {recipe} teacher on {dataset.name} ({spec.arch}, {spec.epochs} epochs; "
                           "once, cached afterwards)", spec.epochs * math.ceil(len(dataset.x_train) / spec.batch_size)):
            net = train_teacher(dataset, spec, seed=seed, device=device, stop=stop)
        return Teacher(net, spec.arch, spec.epochs, test_accuracy(net, dataset, device), time.perf_counter() - t0)

    teacher, _ = load_or_build(path, load=lambda p: _load(p, dataset, meta, device), build=build,
                               save=lambda t, p: _save(t, p, meta))
    teacher.net.eval()  # a teacher is frozen: its batch norm must never update
    for p in teacher.net.parameters():
        p.requires_grad_(False)
    teacher.recipe_ = recipe  # type: ignore[attr-defined]  provenance for the set's metadata
    teacher.seed_ = seed  # type: ignore[attr-defined]
    with _memory_guard:
        _memory[str(path)] = teacher
    return teacher


def committee_weights(accuracies: list[float], temperature: float) -> torch.Tensor:
    """Prior-based vote weights: softmax of the members' test accuracies over `temperature`."""
    return torch.softmax(torch.tensor(accuracies) / temperature, 0)


def committee_teacher(dataset: Dataset, members: list[Teacher], temperature: float, device) -> Teacher:
    """The committee as one Teacher (for soft labels), with its own measured test accuracy."""
    weights = committee_weights([t.test_accuracy for t in members], temperature)
    net = Committee([t.net for t in members], weights).to(device).eval()
    arch = "committee(" + ", ".join(f"{t.arch} {w:.2f}" for t, w in zip(members, weights.tolist())) + ")"
    teacher = Teacher(net, arch, max(t.epochs for t in members), test_accuracy(net, dataset, device),
                      sum(t.seconds for t in members))
    net.eval()  # frozen, as every teacher
    teacher.member_archs_ = [t.arch for t in members]  # type: ignore[attr-defined]  rebuilds the members on load
    return teacher


def provenance(teacher: Teacher) -> dict:
    """What a set's metadata records about one teacher, enough to find it again."""
    return {"recipe": getattr(teacher, "recipe_", ""), "seed": getattr(teacher, "seed_", 0), "arch": teacher.arch,
            "epochs": teacher.epochs, "test_accuracy": round(teacher.test_accuracy, 4)}


def record(syn, teachers: list[Teacher], vote_temperature: float | None = None) -> None:
    """Write the teachers (one, or a committee) into the set's metadata under `teachers`."""
    entry = {"members": [provenance(t) for t in teachers]}
    if vote_temperature is not None:
        entry["vote_temperature"] = vote_temperature
    syn.extra_meta["teachers"] = json.dumps(entry)


def teacher_of_set(syn, dataset: Dataset, device=None, stop: threading.Event | None = None) -> Teacher | None:
    """The teacher (or committee) recorded in a set's metadata, from the cache; None if none recorded."""
    text = syn.extra_meta.get("teachers")
    if not text:
        return None
    entry = json.loads(text)
    members = [get_bn_teacher(dataset, m["recipe"], seed=int(m["seed"]), device=device, stop=stop)
               for m in entry["members"]]
    if len(members) == 1:
        return members[0]
    device = device or next(members[0].net.parameters()).device
    return committee_teacher(dataset, members, float(entry.get("vote_temperature", 1.0)), device)


def build_for(dataset: Dataset, arch: str, seed: int = 0, device="cpu") -> nn.Module:
    """An untrained network of a teacher's architecture for the dataset's shape."""
    return build_model(arch, channels=dataset.channels, num_classes=dataset.num_classes,
                       image_size=dataset.image_size, seed=seed, device=device)
