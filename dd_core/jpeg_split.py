"""One split of a known dataset kept as a folder of image files (`<split>/<class>/*.jpg`), decoded
once and cached as uint8 tensors: 60,000 CIFAR-10 JPEGs take about a minute to decode and a
fraction of a second to read back.

The cache key is the folder's listing (file names and sizes), so a changed copy is decoded again;
a cached file that does not match the listing is discarded and rebuilt (`cache.load_or_build`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .cache import cache_path, load_or_build

SUFFIXES = {".jpg", ".jpeg", ".png"}


class JpegSplitError(ValueError):
    """A split folder that does not hold the expected classes or image shape; the message says what to fix."""


def _listing(folder: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(file, class index) for every image, classes in the given (official) order, files sorted."""
    missing = [c for c in classes if not (folder / c).is_dir()]
    if missing:
        raise JpegSplitError(f"{folder} lacks the class folders {missing}; it needs one sub-folder per class: "
                             f"{', '.join(classes)}")
    files = []
    for label, name in enumerate(classes):
        files += [(p, label) for p in sorted((folder / name).iterdir()) if p.suffix.lower() in SUFFIXES]
    if not files:
        raise JpegSplitError(f"{folder} has no images ({', '.join(sorted(SUFFIXES))}) in its class folders")
    return files


def _key(folder: Path, files: list[tuple[Path, int]]) -> str:
    digest = hashlib.sha1()
    for path, label in files:
        digest.update(f"{path.parent.name}/{path.name}:{path.stat().st_size}:{label};".encode())
    return f"{folder.parent.name}-{folder.name}-{len(files)}-{digest.hexdigest()[:12]}"


def _decode(files: list[tuple[Path, int]], shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    from PIL import Image

    c, h, w = shape
    mode = "RGB" if c == 3 else "L"
    pixels = np.empty((len(files), h, w, c), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        with Image.open(path) as im:
            arr = np.asarray(im.convert(mode))
        if arr.shape[:2] != (h, w):
            raise JpegSplitError(f"{path} is {arr.shape[1]}x{arr.shape[0]}; every image must be {w}x{h}")
        pixels[i] = arr.reshape(h, w, c)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return {"pixels": torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), "labels": labels}  # (n, c, h, w) uint8


def read_jpeg_split(folder: Path, classes: tuple[str, ...], shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels (n, c, h, w) uint8, labels (n,) int64) of `folder/<class>/*`, cached after the first read."""
    folder = Path(folder)
    files = _listing(folder, classes)

    def load(path: Path) -> dict[str, torch.Tensor]:
        tensors = load_file(str(path))
        pixels, labels = tensors["pixels"], tensors["labels"]
        if pixels.dtype != torch.uint8 or tuple(pixels.shape) != (len(files), *shape) or len(labels) != len(files):
            raise ValueError(f"holds {tuple(pixels.shape)} {pixels.dtype}, not {(len(files), *shape)} uint8")
        if int(labels.min()) < 0 or int(labels.max()) >= len(classes):
            raise ValueError("labels out of range")
        return tensors

    path = cache_path("datasets", _key(folder, files), ".safetensors")
    tensors, _ = load_or_build(path, load=load, build=lambda: _decode(files, shape),
                               save=lambda t, tmp: save_file(t, str(tmp)))
    return tensors["pixels"], tensors["labels"]
