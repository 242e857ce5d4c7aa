"""A user's own images in ImageFolder layout, as a `Dataset`.

Accepted layouts:
  <root>/train/<class>/*.png|jpg  and  <root>/test/<class>/*   (the official split is kept)
  <root>/<class>/*                                             (split by `test_fraction`, stratified, seeded)
Every image is converted to RGB or L (whichever the first image is) and resized to a common size.

A folder may carry its dataset facts (data.DatasetFacts) in `<root>/distillery.json`, e.g.
    {"flips": false, "small": true}
for digits, which a horizontal flip would turn into other symbols. Without the file a folder gets
the defaults (flips allowed, as for natural photos). Unknown keys or wrong types are refused with
a message naming the valid keys.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import torch

from .data import Dataset, DatasetFacts, normalize

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_SIDE = 64  # pixels; larger images are resized down to keep distillation interactive
FACTS_FILE = "distillery.json"  # optional, in the folder's root: its DatasetFacts
_loaded_facts: dict[str, DatasetFacts] = {}  # Dataset.name ("folder:<name>") -> facts of the folder loaded under it


class FolderError(ValueError):
    """A folder dataset that cannot be read; the message says what to fix."""


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read(paths: list[Path], size: tuple[int, int], mode: str) -> tuple[torch.Tensor, list[int]]:
    """The images that open, as (n, c, h, w) in [0, 1], and the positions in `paths` they came from;
    a file that is not a readable image (truncated, mislabelled) is skipped."""
    from PIL import Image

    out = np.empty((len(paths), size[0], size[1], 3 if mode == "RGB" else 1), dtype=np.uint8)
    kept: list[int] = []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                if im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(im)
        except (OSError, ValueError, SyntaxError):  # PIL's errors for a broken or non-image file
            continue
        out[len(kept)] = arr if arr.ndim == 3 else arr[..., None]
        kept.append(i)
    return torch.from_numpy(out[:len(kept)]).permute(0, 3, 1, 2).float().div_(255.0), kept  # (n, c, h, w)


def _first_readable(paths: list[Path]):
    """(mode, size) of the first file that opens as an image, or None."""
    from PIL import Image

    for p in paths:
        try:
            with Image.open(p) as im:
                return ("L" if im.mode in ("L", "1", "I;16", "I") else "RGB"), im.size
        except (OSError, ValueError, SyntaxError):
            continue
    return None


def _collect(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for c, name in enumerate(classes):
        found = _images_in(root / name) if (root / name).is_dir() else []
        paths += found
        labels += [c] * len(found)
    return paths, labels


def _check_fact(name: str, value, kind, default):
    """One fact's value, checked against the type of its default; a message says what is expected."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise FolderError(f"{FACTS_FILE}: {name!r} must be true or false (got {value!r})")
    if name == "teacher_epochs":
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000:
            return value
        raise FolderError(f"{FACTS_FILE}: 'teacher_epochs' must be a whole number from 1 to 1000 (got {value!r})")
    if name == "teacher_arch":
        from .models import MODELS

        if isinstance(value, str) and value in MODELS:
            return value
        raise FolderError(f"{FACTS_FILE}: 'teacher_arch' {value!r} is not a network; valid ones are: "
                          f"{', '.join(MODELS.names())}")
    if name == "published_whole":
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
            return None if value is None else float(value)
        raise FolderError(f"{FACTS_FILE}: 'published_whole' must be a test accuracy as a fraction from 0 to 1, "
                          f"or null (got {value!r})")
    raise FolderError(f"{FACTS_FILE}: {name!r} cannot be set here")  # a new fact needs its check above


def read_facts(root: str | Path) -> tuple[DatasetFacts, str]:
    """The folder's DatasetFacts from `<root>/distillery.json` (the defaults when there is none),
    and a few words for provenance naming what the file set. Raises FolderError for a bad file."""
    path = Path(root) / FACTS_FILE
    if not path.is_file():
        return DatasetFacts(), ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FolderError(f"{FACTS_FILE} in the folder is not readable JSON ({err}); write an object such as "
                          f'{{"flips": false, "small": true}}, or remove the file for the defaults') from None
    fields = {f.name: f for f in dataclasses.fields(DatasetFacts)}
    if not isinstance(data, dict):
        raise FolderError(f"{FACTS_FILE} must hold one JSON object of facts, e.g. {{\"flips\": false}}; valid keys: "
                          f"{', '.join(fields)}")
    unknown = sorted(k for k in data if k not in fields)
    if unknown:
        raise FolderError(f"{FACTS_FILE}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys are: "
                          f"{', '.join(fields)}")
    defaults = DatasetFacts()
    checked = {k: _check_fact(k, v, type(getattr(defaults, k)) if k != "published_whole" else None,
                              getattr(defaults, k)) for k, v in data.items()}
    said = ", ".join(f"{k}={json.dumps(v)}" for k, v in checked.items())
    return dataclasses.replace(defaults, **checked), (f"facts from {FACTS_FILE}: {said}" if said else "")


def facts_of(name_or_path: str) -> DatasetFacts:
    """Facts of a folder dataset by its path (its distillery.json is read) or by the name a loaded
    one goes by ("folder:<folder name>"); the defaults when neither is known."""
    text = name_or_path[len("folder:"):] if name_or_path.startswith("folder:") else name_or_path
    root = Path(text).expanduser()
    if root.is_dir():
        return read_facts(root)[0]
    return _loaded_facts.get(f"folder:{root.name}", DatasetFacts())


def load_folder(path: str, *, test_fraction: float = 0.2, seed: int = 0, size: int | None = None) -> Dataset:
    root = Path(path).expanduser().resolve()
    facts_file = root / FACTS_FILE
    stamp = facts_file.stat().st_mtime_ns if facts_file.is_file() else 0  # an edited file is read again
    return _load_folder_cached(str(root), test_fraction, seed, size, stamp)


@functools.lru_cache(maxsize=2)
def _load_folder_cached(path: str, test_fraction: float, seed: int, size: int | None, facts_stamp: int = 0) -> Dataset:
    root = Path(path)
    if not root.is_dir():
        raise FolderError(f"folder dataset {path!r} does not exist; give a folder with one sub-folder per class "
                          f"(or train/ and test/ each holding one sub-folder per class)")
    facts, facts_note = read_facts(root)
    split_given = (root / "train").is_dir() and (root / "test").is_dir()
    train_root = root / "train" if split_given else root
    classes = [d.name for d in _class_dirs(train_root)]
    if len(classes) < 2:
        raise FolderError(f"folder dataset {path!r} needs at least two class sub-folders with images; found {len(classes)}")
    paths, labels = _collect(train_root, classes)
    if not paths:
        raise FolderError(f"folder dataset {path!r} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if split_given:
        test_paths, test_labels = _collect(root / "test", classes)
    else:
        rng = np.random.default_rng(seed)
        labels_np = np.asarray(labels)
        test_mask = np.zeros(len(labels), dtype=bool)
        for c in range(len(classes)):  # stratified: the same fraction of every class goes to test
            idx = np.flatnonzero(labels_np == c)
            n_test = int(round(len(idx) * test_fraction))
            test_mask[rng.permutation(idx)[:n_test]] = True
        test_paths = [p for p, m in zip(paths, test_mask) if m]
        test_labels = [l for l, m in zip(labels, test_mask) if m]
        paths = [p for p, m in zip(paths, test_mask) if not m]
        labels = [l for l, m in zip(labels, test_mask) if not m]
    if not test_paths:
        raise FolderError(f"folder dataset {path!r} has no test images; add test/<class>/ images or more images per class")

    first = _first_readable(paths)
    if first is None:
        raise FolderError(f"folder dataset {path!r}: none of its {len(paths)} training files opens as an image")
    mode, first_size = first
    side = min(max(first_size), MAX_SIDE) if size is None else size
    shape = (side, side)
    (x_train, kept), (x_test, kept_test) = _read(paths, shape, mode), _read(test_paths, shape, mode)
    skipped = len(paths) - len(kept) + len(test_paths) - len(kept_test)
    labels, test_labels = [labels[i] for i in kept], [test_labels[i] for i in kept_test]
    if not kept_test or len(set(labels)) < len(classes):
        raise FolderError(f"folder dataset {path!r}: after skipping {skipped} unreadable file(s), some class has no "
                          f"training image or there is no test image; replace the broken files")
    # Normalization statistics from the train split, per channel.
    mean = tuple(round(v, 4) for v in x_train.mean(dim=(0, 2, 3)).tolist())
    std = tuple(round(max(v, 1e-3), 4) for v in x_train.std(dim=(0, 2, 3)).tolist())
    note = "train/ and test/ folders as given" if split_given else f"stratified split, test fraction {test_fraction}, seed {seed}"
    _loaded_facts[f"folder:{root.name}"] = facts
    return Dataset(
        **dataclasses.asdict(facts),
        name=f"folder:{root.name}",
        x_train=normalize(x_train, mean, std),
        y_train=torch.tensor(labels, dtype=torch.int64),
        x_test=normalize(x_test, mean, std),
        y_test=torch.tensor(test_labels, dtype=torch.int64),
        classes=tuple(classes),
        mean=mean,
        std=std,
        split_note=f"ImageFolder {note}; resized to {side}x{side} {mode}"
                   + (f"; skipped {skipped} unreadable file(s)" if skipped else "")
                   + (f"; {facts_note}" if facts_note else ""),
    )
