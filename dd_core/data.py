"""Datasets as tensors: one registry, each entry returns a normalized `Dataset`.

A dataset is two pairs of tensors (train, test) kept whole in memory and indexed directly;
the datasets we distill are small enough that a DataLoader would only add overhead.
"""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .jpeg_split import read_jpeg_split
from .registry import Registry

DATASETS: Registry = Registry("dataset")


class DatasetUnavailable(RuntimeError):
    """The files of a dataset are missing and cannot be downloaded; the message says where to put them."""


@dataclass(frozen=True, kw_only=True)
class DatasetFacts:
    """What the engine must know about a dataset besides its tensors, declared once where the
    dataset is registered (below), so that adding a dataset changes this one file."""

    flips: bool = True  # a horizontally flipped image keeps its class; not for digits (a flipped 2 is no 2)
    small: bool = False  # tiny images (8x8): a fast preset can afford the paper's network and fewer steps
    teacher_arch: str = "convnet_w32"  # the network trained on the whole set (teacher, features, reference)
    teacher_epochs: int = 5  # its epochs: about a minute on a 2-core CPU
    dc_augment: bool = False  # the DC paper's evaluation augments it (crop/scale/rotate): MNIST in its code
    published_whole: float | None = None  # the papers' whole-set test accuracy (ConvNet-3, fraction)
    trajectory_zca: bool = False  # trajectory matching's papers ZCA-whiten it at IPC 1 and 10 (MTT: CIFAR-10)


@dataclass(frozen=True, eq=False)
class Dataset(DatasetFacts):
    """Normalized train/test tensors, their facts, and what is needed to show and describe them."""

    name: str
    x_train: torch.Tensor  # (n, c, h, w) float32, normalized
    y_train: torch.Tensor  # (n,) int64
    x_test: torch.Tensor  # (m, c, h, w) float32, normalized
    y_test: torch.Tensor  # (m,) int64
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    split_note: str = ""  # how train/test were obtained, for provenance

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.x_train.shape[2:])

    def class_counts(self) -> list[int]:
        return torch.bincount(self.y_train, minlength=self.num_classes).tolist()

    def indices_of(self, c: int) -> torch.Tensor:
        return torch.nonzero(self.y_train == c).flatten()

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalization and clip to [0, 1] for display."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)


def normalize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """(n, c, h, w) pixels in [0, 1] -> normalized float32."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((pixels.float() - m) / s).contiguous()


def data_root() -> Path:
    """Where torchvision datasets live: $DD_DATA_ROOT, else a cache folder in the user's home."""
    root = os.environ.get("DD_DATA_ROOT")
    if root:
        return Path(root).expanduser()
    return Path.home() / ".cache" / "distillery" / "data"


def load_dataset(name: str) -> Dataset:
    """Load a registered dataset by name, or a user's images with 'folder:<path>'."""
    if name.startswith("folder:"):
        from .folder import load_folder

        return load_folder(name[len("folder:"):])
    return _load_cached(name, str(data_root()))


@dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: how to load it from a data root, and its facts (known before loading)."""

    load: Callable[[Path], Dataset]
    facts: DatasetFacts

    def __call__(self, root: Path) -> Dataset:
        return self.load(root)


def register_dataset(name: str, facts: DatasetFacts = DatasetFacts()):
    """Decorator: register `load(root) -> Dataset` under `name` with its facts."""
    def decorator(load: Callable[[Path], Dataset]) -> Callable[[Path], Dataset]:
        DATASETS.register(name)(DatasetSource(load, facts))
        return load

    return decorator


def dataset_facts(name: str) -> DatasetFacts:
    """The facts of a dataset by name, without loading it; a folder dataset's come from its
    optional distillery.json (folder.py), else the defaults."""
    if name.startswith("folder:"):
        from .folder import facts_of

        return facts_of(name)
    return DATASETS.get(name).facts


def dataset_names() -> list[str]:
    return DATASETS.names() + ["folder:<path>"]


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: str) -> Dataset:
    return DATASETS.get(name)(Path(root))


# ---------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 digits, the offline default


DIGITS_FACTS = DatasetFacts(flips=False, small=True, teacher_arch="convnet_d2", teacher_epochs=30)


@register_dataset("digits", DIGITS_FACTS)
def load_digits(root: Path) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    pixels = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    target = torch.from_numpy(bunch.target.astype(np.int64))
    # The documented split: stratified 80/20 over np.arange(1797) with random_state=0.
    train_idx, test_idx = train_test_split(
        np.arange(len(target)), test_size=0.2, stratify=bunch.target, random_state=0
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    # Normalization statistics from the train split only, so no test information leaks in.
    mean = (round(pixels[train_idx].mean().item(), 4),)
    std = (round(pixels[train_idx].std().item(), 4),)
    return Dataset(
        name="digits",
        x_train=normalize(pixels[train_idx], mean, std),
        y_train=target[train_idx],
        x_test=normalize(pixels[test_idx], mean, std),
        y_test=target[test_idx],
        classes=tuple(str(i) for i in range(10)),
        mean=mean,
        std=std,
        **asdict(DIGITS_FACTS),
        split_note="sklearn load_digits; train_test_split(np.arange(1797), test_size=0.2, "
        "stratify=target, random_state=0): 1437 train / 360 test",
    )


# ---------------------------------------------------------------------------------------------
# torchvision datasets: read from $DD_DATA_ROOT, downloaded when the machine is online

# The published CIFAR-10 normalization (as in the DC/DSA/DM code) and the official class order.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
JPEG_FOLDER = "cifar10-jpeg"  # under the data root: train/<class>/*.jpg and test/<class>/*.jpg

_TORCHVISION = {
    # name: (torchvision class, mean, std, expected folder under the root, facts)
    "mnist": ("MNIST", (0.1307,), (0.3081,), "MNIST/raw",
              DatasetFacts(flips=False, teacher_epochs=2, dc_augment=True, published_whole=0.996)),
    "fashion_mnist": ("FashionMNIST", (0.2861,), (0.3530,), "FashionMNIST/raw",
                      DatasetFacts(teacher_epochs=3, published_whole=0.935)),
    "cifar10": ("CIFAR10", CIFAR10_MEAN, CIFAR10_STD, "cifar-10-batches-py",
                DatasetFacts(published_whole=0.848, trajectory_zca=True)),
    "cifar100": ("CIFAR100", (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762), "cifar-100-python", DatasetFacts()),
    "svhn": ("SVHN", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "SVHN (train_32x32.mat, test_32x32.mat)",
             DatasetFacts(flips=False)),
}


def _open_torchvision(cls, root: Path, split: str, folder: str):
    kwargs = {"split": split} if cls.__name__ == "SVHN" else {"train": split == "train"}
    try:
        return cls(root=str(root), download=False, **kwargs)
    except RuntimeError:
        pass  # not on disk: try to download it
    try:
        root.mkdir(parents=True, exist_ok=True)
        return cls(root=str(root), download=True, **kwargs)
    except Exception as err:  # offline, blocked, or a broken partial download
        raise DatasetUnavailable(
            f"{cls.__name__} is not under {root} and could not be downloaded ({type(err).__name__}). "
            f"Put its files in {root / folder} (the torchvision layout), or set DD_DATA_ROOT to "
            f"the folder that holds them."
        ) from None


def _to_pixels(data) -> torch.Tensor:
    """torchvision's raw arrays -> (n, c, h, w) float in [0, 1]."""
    x = torch.as_tensor(np.asarray(data))
    if x.dim() == 3:  # (n, h, w) grey
        x = x.unsqueeze(1)
    elif x.shape[-1] == 3:  # (n, h, w, 3) colour
        x = x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


def _torchvision_loader(name: str):
    cls_name, mean, std, folder, facts = _TORCHVISION[name]

    def load(root: Path) -> Dataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        parts = {}
        for split in ("train", "test"):
            ds = _open_torchvision(cls, root, split, folder)
            labels = ds.labels if cls_name == "SVHN" else ds.targets
            parts[split] = (_to_pixels(ds.data), torch.as_tensor(np.asarray(labels), dtype=torch.int64))
        classes = getattr(ds, "classes", None) or [str(i) for i in range(10)]
        return Dataset(
            name=name,
            x_train=normalize(parts["train"][0], mean, std),
            y_train=parts["train"][1],
            x_test=normalize(parts["test"][0], mean, std),
            y_test=parts["test"][1],
            classes=tuple(str(c) for c in classes),
            mean=mean,
            std=std,
            split_note=f"torchvision {cls_name}: official train/test split",
            **asdict(facts),
        )

    return load


for _name in ("mnist", "fashion_mnist", "cifar100", "svhn"):
    register_dataset(_name, _TORCHVISION[_name][4])(_torchvision_loader(_name))


# ---------------------------------------------------------------------------------------------
# cifar10: torchvision's pickled batches when present, else a folder of JPEGs (decoded once, cached)

@register_dataset("cifar10", _TORCHVISION["cifar10"][4])
def load_cifar10(root: Path) -> Dataset:
    jpegs = root / JPEG_FOLDER
    if (root / "cifar-10-batches-py").is_dir() or not jpegs.is_dir():
        try:
            return _torchvision_loader("cifar10")(root)
        except DatasetUnavailable as err:
            raise DatasetUnavailable(f"{err} A JPEG copy also works: {jpegs}/train/<class>/*.jpg and "
                                     f"{jpegs}/test/<class>/*.jpg, classes {', '.join(CIFAR10_CLASSES)}.") from None
    parts = {split: read_jpeg_split(jpegs / split, CIFAR10_CLASSES, (3, 32, 32)) for split in ("train", "test")}
    return Dataset(
        name="cifar10",
        x_train=normalize(parts["train"][0].float().div_(255.0), CIFAR10_MEAN, CIFAR10_STD),
        y_train=parts["train"][1],
        x_test=normalize(parts["test"][0].float().div_(255.0), CIFAR10_MEAN, CIFAR10_STD),
        y_test=parts["test"][1],
        classes=CIFAR10_CLASSES,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        split_note=f"CIFAR-10 as JPEG files ({JPEG_FOLDER}/train, {JPEG_FOLDER}/test: the official split); "
        "JPEG pixels differ slightly from the official binary release",
        **asdict(_TORCHVISION["cifar10"][4]),
    )
