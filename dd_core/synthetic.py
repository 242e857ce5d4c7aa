"""The synthetic set: learnable images, their labels, and where they came from; save and load.

The file format is one `.safetensors` file (it loads without executing code) holding
`images` float32 (n, c, h, w) in the *normalized* space, not clipped, and `labels` int64 (n,),
plus string metadata: dataset, classes, mean, std, method, ipc, seed, steps, config, version.
Extra tensors named `label_store.*` carry a label store (see labels.py) when one is attached.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .version import code_version
from .zca import undo as undo_zca

FORMAT_VERSION = "1"
REQUIRED_META = ("dataset", "classes", "mean", "std", "method", "ipc", "seed", "steps", "config", "version")


class SyntheticFileError(ValueError):
    """A file that is not a Distillery synthetic set; the message says what is wrong."""


@dataclass
class SyntheticSet:
    """Synthetic images (learnable), hard labels, and provenance."""

    images: torch.Tensor  # (n, c, h, w) float32, normalized space
    labels: torch.Tensor  # (n,) int64, sorted by class
    dataset: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    method: str = "init"
    ipc: int = 0
    seed: int = 0
    steps: int = 0
    config: dict = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. label_store.* tensors
    extra_meta: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def clone(self) -> "SyntheticSet":
        return SyntheticSet(self.images.detach().clone(), self.labels.clone(), self.dataset, self.classes,
                            self.mean, self.std, self.method, self.ipc, self.seed, self.steps, dict(self.config),
                            {k: v.clone() for k, v in self.extra.items()}, dict(self.extra_meta))

    def denormalized(self) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        images = undo_zca(self, self.images.detach().cpu().float())  # a ZCA-whitened set (MTT on CIFAR) unwhitened
        return (images * std + mean).clamp(0, 1)  # (n, c, h, w) in [0, 1]

    # -- save / load -------------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        meta = {
            "dataset": self.dataset, "classes": json.dumps(list(self.classes)),
            "mean": json.dumps(list(self.mean)), "std": json.dumps(list(self.std)),
            "method": self.method, "ipc": str(self.ipc), "seed": str(self.seed), "steps": str(self.steps),
            "config": json.dumps(self.config, default=str), "version": FORMAT_VERSION,
            "code_version": code_version(),  # of the code that made the set; a loaded set keeps its own
        }
        meta.update(self.extra_meta)
        return meta

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors = {"images": self.images.detach().cpu().float().contiguous(), "labels": self.labels.cpu().long().contiguous()}
        tensors.update({k: v.detach().cpu().contiguous() for k, v in self.extra.items()})
        return save(tensors, metadata=self.metadata())

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)  # atomic: a crash never leaves a half-written set
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SyntheticSet":
        path = Path(path)
        if not path.is_file():
            raise SyntheticFileError(f"{path} does not exist")
        return cls.from_bytes(path.read_bytes(), name=path.name)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "file") -> "SyntheticSet":
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            tensors = load(data)
            meta = _read_metadata(data)
        except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SyntheticFileError(f"{name} is not a readable .safetensors file ({err}); "
                                     f"give a synthetic set saved by Distillery") from None
        missing = [k for k in REQUIRED_META if k not in meta] + [k for k in ("images", "labels") if k not in tensors]
        if missing:
            raise SyntheticFileError(f"{name} is a .safetensors file but not a Distillery synthetic set: "
                                     f"it lacks {', '.join(missing)}")
        images, labels = tensors["images"], tensors["labels"]
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels) or images.dtype != torch.float32:
            raise SyntheticFileError(f"{name}: images must be float32 (n, c, h, w) and labels (n,); got "
                                     f"{tuple(images.shape)} {images.dtype} and {tuple(labels.shape)}")
        try:
            classes = tuple(json.loads(meta["classes"]))
            mean, std = tuple(json.loads(meta["mean"])), tuple(json.loads(meta["std"]))
            config = json.loads(meta["config"])
            ipc, seed, steps = int(meta["ipc"]), int(meta["seed"]), int(meta["steps"])
        except (ValueError, TypeError) as err:
            raise SyntheticFileError(f"{name}: malformed metadata ({err})") from None
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise SyntheticFileError(f"{name}: labels fall outside the {len(classes)} classes")
        _check_contents(name, images, labels, classes, mean, std)
        extra = {k: v for k, v in tensors.items() if k not in ("images", "labels")}
        extra_meta = {k: v for k, v in meta.items() if k not in REQUIRED_META}
        return cls(images, labels.long(), meta["dataset"], classes, mean, std, meta["method"], ipc, seed, steps,
                   config, extra, extra_meta)

    # -- exports -----------------------------------------------------------------------------

    def grid_image(self, *, pad: int = 1, upscale: int | None = None):
        """One PIL image: a row per class, IPC images per row, de-normalized."""
        from PIL import Image

        x = self.denormalized()
        n, c, h, w = x.shape
        order = torch.argsort(self.labels, stable=True)
        per_class = [order[self.labels[order] == k] for k in range(self.num_classes)]
        cols = max((len(p) for p in per_class), default=1) or 1
        grid = torch.ones(c, self.num_classes * (h + pad) + pad, cols * (w + pad) + pad)
        for k, idx in enumerate(per_class):
            for j, i in enumerate(idx.tolist()):
                y0, x0 = pad + k * (h + pad), pad + j * (w + pad)
                grid[:, y0:y0 + h, x0:x0 + w] = x[i]
        arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        img = Image.fromarray(arr[..., 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
        if upscale is None:  # small images are enlarged so a person can see them
            upscale = max(1, 256 // max(img.size))
        if upscale > 1:
            img = img.resize((img.size[0] * upscale, img.size[1] * upscale), Image.NEAREST)
        return img

    def save_grid(self, path: str | Path) -> Path:
        path = Path(path)
        self.grid_image().save(path)
        return path

    def imagefolder_zip(self) -> bytes:
        """A zip of <class>/<index>.png, the ImageFolder layout, de-normalized to 8-bit."""
        from PIL import Image

        x = (self.denormalized() * 255).round().to(torch.uint8)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for i, (img, y) in enumerate(zip(x, self.labels.tolist())):
                arr = img.permute(1, 2, 0).numpy()
                pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
                png = io.BytesIO()
                pil.save(png, format="PNG")
                zf.writestr(f"{_safe(self.classes[y])}/{i:05d}.png", png.getvalue())
        return buf.getvalue()


MAX_CLASSES = 10_000  # more than any dataset here (CIFAR-100: 100; ImageNet: 1,000)
MAX_SIDE = 1024  # pixels; a larger image is not a distilled one


def _check_contents(name: str, images: torch.Tensor, labels: torch.Tensor, classes: tuple, mean: tuple,
                    std: tuple) -> None:
    """What a loaded set must be before anything trains on it; each failure says what is wrong."""
    n, c, h, w = images.shape
    if n == 0:
        raise SyntheticFileError(f"{name} holds no images; distill a set with at least one image per class")
    if not 1 <= len(classes) <= MAX_CLASSES or not all(isinstance(k, str) for k in classes):
        raise SyntheticFileError(f"{name} names {len(classes):,} classes; a set needs 1 to {MAX_CLASSES:,} class "
                                 f"names (strings)")
    if c not in (1, 3) or not 1 <= min(h, w) <= max(h, w) <= MAX_SIDE:
        raise SyntheticFileError(f"{name}: images of shape {(c, h, w)} are not images this app makes (1 or 3 "
                                 f"channels, 1 to {MAX_SIDE} pixels a side)")
    if len(mean) != c or len(std) != c or not all(isinstance(v, (int, float)) for v in (*mean, *std)) \
            or min(std) <= 0:
        raise SyntheticFileError(f"{name}: its normalization (mean {list(mean)[:4]}, std {list(std)[:4]}) does not "
                                 f"fit {c}-channel images with positive std")
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise SyntheticFileError(f"{name}: {bad:,} pixel values are NaN or infinite; a set must hold finite "
                                 f"images (re-distill it, or lower the learning rate that blew it up)")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "class"


def _read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's __metadata__ (the library's load() drops it)."""
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len].decode("utf-8"))
    return header.get("__metadata__", {}) or {}


def class_balanced_labels(num_classes: int, ipc: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(ipc)  # (classes * ipc,)


def check_fits(syn: SyntheticSet, dataset) -> None:
    """A set trains and tests on the dataset it was distilled from: the same image shape and classes."""
    if tuple(syn.images.shape[1:]) != tuple(dataset.x_train.shape[1:]) or syn.num_classes != dataset.num_classes:
        raise SyntheticFileError(f"this synthetic set has images {tuple(syn.images.shape[1:])} and {syn.num_classes} "
                                 f"classes, but {dataset.name} has {tuple(dataset.x_train.shape[1:])} and "
                                 f"{dataset.num_classes}; it does not fit that dataset")


def check_ipc(dataset, ipc: int) -> None:
    """An IPC must be at least 1 and at most the size of the smallest class."""
    smallest = min(dataset.class_counts())
    if ipc < 1:
        raise ValueError(f"IPC must be at least 1 (got {ipc})")
    if ipc > smallest:
        raise ValueError(f"IPC {ipc} is larger than the smallest class of {dataset.name}, which has "
                         f"{smallest} images; choose an IPC of at most {smallest}")


RANDOM_BASELINE_SEED = 0  # one draw for every caller, so a baseline can be cached and compared across sets


def random_subset(dataset, ipc: int, *, seed: int = RANDOM_BASELINE_SEED) -> SyntheticSet:
    """The random-subset baseline: `ipc` random real training images of each class. The app's
    Evaluate tab, `python -m dd_core evaluate --baseline` and the label trade-off all draw it here,
    with the same seed, so they compare against the same images."""
    return init_synthetic(dataset, ipc, init="real", seed=seed, method="random")


INITS = ("real", "noise")  # where synthetic images start: random real images of their class, or Gaussian noise


def init_synthetic(dataset, ipc: int, *, init: str = "real", seed: int = 0, method: str = "init") -> SyntheticSet:
    """Start a synthetic set from random real images of each class, or from Gaussian noise."""
    check_ipc(dataset, ipc)
    g = torch.Generator().manual_seed(seed)
    labels = class_balanced_labels(dataset.num_classes, ipc)
    if init == "real":
        picks = [dataset.indices_of(c)[torch.randperm(len(dataset.indices_of(c)), generator=g)[:ipc]]
                 for c in range(dataset.num_classes)]
        images = dataset.x_train[torch.cat(picks)].clone()
    elif init == "noise":
        images = torch.randn(len(labels), *dataset.x_train.shape[1:], generator=g)
    else:
        raise ValueError(f"unknown init {init!r}; valid inits are: {', '.join(INITS)}")
    return SyntheticSet(images, labels, dataset.name, dataset.classes, dataset.mean, dataset.std,
                        method=method, ipc=ipc, seed=seed)
