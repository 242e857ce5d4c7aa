"""The files of an expert folder, apart from training: one expert's `.safetensors` file (written
atomically, checked before a build keeps it) and `building.json`, which names what a build in progress
is building so that an interrupted one can be resumed and another one is refused. `index.json`, which
needs the recipe and the network, is written and read by experts.py."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from .cache import atomic_write
from .data import Dataset

INDEX = "index.json"
BUILDING = "building.json"  # what a build in progress is building: the check before resuming it
FORMAT_VERSION = "1"
DTYPES = {"float32": torch.float32, "float16": torch.float16}


class ExpertFileError(ValueError):
    """An expert folder or file that cannot be used; the message says which and what to do."""


def expert_file(i: int) -> str:
    return f"expert_{i:03d}.safetensors"


def write_expert(path: Path, params: torch.Tensor, accuracy: list[float], *, seed: int, dtype: str) -> int:
    """One expert's file, written atomically; returns its size in bytes."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"unknown expert dtype {dtype!r}; valid dtypes are: {', '.join(DTYPES)}")
    tensors = {"params": params.to(DTYPES[dtype]).contiguous(), "test_accuracy": torch.tensor(accuracy, dtype=torch.float32)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"seed": str(seed), "format": FORMAT_VERSION}))
    return path.stat().st_size


def expert_usable(path: Path, *, seed: int, shape: tuple[int, int], dtype: str) -> bool:
    """Whether an expert file left by an earlier build can be kept: it reads, and holds finite params
    of the expected shape and dtype, trained with this seed."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            params, _ = f.get_tensor("params"), f.get_tensor("test_accuracy")
    except Exception:  # noqa: BLE001  missing, truncated or not safetensors: train it again
        return False
    return (meta.get("seed") == str(seed) and meta.get("format") == FORMAT_VERSION and tuple(params.shape) == shape
            and params.dtype == DTYPES[dtype] and bool(torch.isfinite(params).all()))


def images_digest(dataset: Dataset) -> str:
    """A short digest of a sample of the training images: folder datasets can share a name."""
    return hashlib.sha1(dataset.x_train[:: max(1, len(dataset.x_train) // 512)].numpy().tobytes()).hexdigest()[:10]


def building_record(dataset: Dataset, recipe, seed: int, dtype: str) -> dict:
    """What building.json holds: the dataset (with a digest of its images), the recipe, seed and dtype."""
    return {"format": FORMAT_VERSION, "dataset": dataset.name, "images": images_digest(dataset),
            "recipe": dataclasses.asdict(recipe), "seed": seed, "dtype": dtype}


def same_build(folder: Path, wanted: dict) -> bool:
    """Whether `folder` holds (part of) a build of what `wanted` describes; a different one is an error,
    since resuming it would mix experts of two recipes."""
    try:
        found = json.loads((folder / BUILDING).read_text())
    except (OSError, ValueError):
        return False  # nothing recorded (a fresh folder, or one from before resuming existed): train everything
    if found != wanted:
        differ = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        raise ValueError(f"{folder} holds part of another expert build ({', '.join(differ)} not as in this one); "
                         f"resume it with the same settings, or use another folder")
    return True
