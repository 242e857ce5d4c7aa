"""A distillation run's peak memory, estimated before it starts, so a shared server can refuse a
run that would not fit instead of finding out when the machine swaps or the process is killed.

The estimate is deliberately simple and errs high: the synthetic images four times over (pixels,
gradient, momentum, a kept snapshot), the real images one step holds (twice: raw and augmented),
the activations autograd keeps for the images whose graph a step holds at its peak (the method
says how many, `Method.memory_images`), and whatever the method adds of its own
(`Method.memory_extra_bytes`). Activation bytes per image are measured once per network and
image shape: one forward pass on two images, counting what autograd saves.
"""
from __future__ import annotations

import functools

import torch

from .models import build_model, resolve_model

FLOAT = 4  # bytes per float32


@functools.lru_cache(maxsize=64)
def _saved_bytes_per_image(model: str, channels: int, num_classes: int, image_size: tuple[int, int]) -> int:
    net = build_model(model, channels=channels, num_classes=num_classes, image_size=image_size, seed=0)
    x = torch.zeros(2, channels, *image_size, requires_grad=True)  # (2, c, h, w)
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net.embed(x) if hasattr(net, "embed") else net(x)
    return max(1, saved // 2)


def activation_bytes(model: str, dataset) -> int:
    """Bytes autograd keeps per image for one forward pass of `model` ('auto' or a name) on `dataset`'s images."""
    name = resolve_model(model, dataset)
    return _saved_bytes_per_image(name, dataset.channels, dataset.num_classes, tuple(dataset.image_size))


def estimate_bytes(method, dataset, ipc: int) -> int:
    """Peak bytes one step of `method` is expected to need on `dataset` at `ipc` (an upper estimate)."""
    c, h, w = dataset.x_train.shape[1:]
    image = c * h * w * FLOAT
    classes = dataset.num_classes
    graph_images, real_images = method.memory_images(classes, ipc)
    model = getattr(method, "model", None) or getattr(method, "feature_model", None) or "auto"
    try:
        per_image = activation_bytes(model if model != "" else "auto", dataset)
    except (KeyError, ValueError, RuntimeError):  # an unusual network: take the default one's
        per_image = activation_bytes("auto", dataset)
    return (4 * classes * ipc * image + 2 * real_images * image + graph_images * per_image
            + int(method.memory_extra_bytes(classes, ipc)))


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit in ("B", "KB") else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"
