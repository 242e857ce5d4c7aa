"""What every distillation method is: a dataclass of hyperparameters with setup() and step()."""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..convert import from_text
from ..data import dataset_facts
from ..interrupt import check
from ..registry import Registry

METHODS: Registry = Registry("method")
# "fast": sized for a CPU; "paper": the published hyperparameters and steps. The CLI and the app offer these.
PRESETS = ("fast", "paper")


@dataclass
class Method:
    """Base of all methods. Fields are hyperparameters; state set by setup() ends in `_`."""

    # Class-level description, shown by the CLI and the app.
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    learns_images: ClassVar[bool] = True  # coresets select real images and learn nothing
    # The run's stop signal, set per instance by distill(); long work checks it via check_stop().
    stop_: ClassVar[threading.Event | None] = None

    def setup(self, real, syn, *, seed: int, device: torch.device) -> None:
        """Create state for distilling `real` into `syn` (a SyntheticSet); syn.images may be replaced."""
        raise NotImplementedError

    def step(self) -> dict[str, float]:
        """One outer iteration; updates the synthetic images in place; returns finite floats."""
        raise NotImplementedError

    def __post_init__(self):
        for f in hyperparameters(type(self)):
            valid, value = field_choices(f), getattr(self, f.name)
            if valid and value not in valid:
                raise ValueError(f"unknown {f.name} {value!r}; valid ones are: {', '.join(map(str, valid))}")
            bounds = field_range(f)
            if bounds and isinstance(value, (int, float)) and not bounds[0] <= value <= bounds[1]:
                raise ValueError(f"{f.name} = {value!r} is out of range; valid values are {bounds[0]} to {bounds[1]}")

    def memory_images(self, num_classes: int, ipc: int) -> tuple[int, int]:
        """For the memory estimate (memory.py): (images whose autograd graph one step keeps at its
        peak, real images one step holds). The default fits matching methods that embed every
        synthetic image with gradients and draw `batch_real` real images per class."""
        flips = 2 if getattr(self, "fyi", False) else 1
        return num_classes * ipc * flips, num_classes * int(getattr(self, "batch_real", 0))

    def memory_extra_bytes(self, num_classes: int, ipc: int) -> int:
        """Memory a step needs beyond images and activations (a method with large tensors of its
        own, e.g. many frequencies or a pool of networks, says so here)."""
        return 0

    def check_stop(self) -> None:
        """Raise `Interrupted` if the run's stop signal is set (distill() sets `stop_`). Long work
        inside setup() or step() calls this between its pieces, so a stop or a time cap takes
        effect within one piece instead of one whole step."""
        check(self.stop_)

    def images(self) -> torch.Tensor:
        """The current synthetic images (n, c, h, w), detached."""
        return self.images_.detach()

    def restore(self, images: torch.Tensor) -> None:
        """Put back the last good images after a failed step (and reset optimizer momentum)."""
        with torch.no_grad():
            self.images_.copy_(images.to(self.images_.device))
        opt = getattr(self, "opt_", None)
        if opt is not None:
            opt.state.clear()

    # -- presets -------------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, *, dataset: str, ipc: int) -> dict:
        """Field overrides for a named preset ('paper' or 'fast') on a dataset and IPC."""
        return {}

    @classmethod
    def default_steps(cls, name: str, *, dataset: str, ipc: int) -> int:
        return 1000

    @classmethod
    def from_preset(cls, name: str = "fast", *, dataset: str, ipc: int, **overrides) -> "Method":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets are: {', '.join(PRESETS)}")
        return cls(**{**cls.preset(name, dataset=dataset, ipc=ipc), **overrides})

    def config(self) -> dict:
        """The hyperparameters, for provenance."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def hyperparameters(cls) -> list[dataclasses.Field]:
    """The user-facing fields of a method class (what the UI and CLI expose)."""
    return [f for f in dataclasses.fields(cls) if not f.name.endswith("_")]


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def hp(default, help: str, choices: tuple | None = None, range: tuple | None = None):
    """A hyperparameter field with its help text (unit and reason), and either the valid values of
    a named option (offered as a dropdown in the app) or the inclusive numeric `range` (lo, hi).
    Both are checked when the method is made, so nothing outside them reaches the engine."""
    meta = {"help": help, **({"choices": tuple(choices)} if choices else {}),
            **({"range": tuple(range)} if range else {})}
    return dataclasses.field(default=default, metadata=meta)


def field_range(f: dataclasses.Field) -> tuple | None:
    """The inclusive (lo, hi) a numeric hyperparameter must lie in, or None."""
    return f.metadata.get("range")


def field_choices(f: dataclasses.Field) -> tuple | None:
    return f.metadata.get("choices")


def method_overrides(name: str, items: list[str]) -> dict:
    """`--set FIELD=VALUE` items for method `name`, each typed by its field's default (convert.py); a
    field the method lacks is passed on as text, for make_method to refuse with the valid names."""
    defaults = {f.name: f.default for f in hyperparameters(METHODS.get(name))}
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        out[key] = from_text(text, defaults[key], f"--set {key}") if key in defaults else text
    return out


def make_method(name: str, *, preset: str = "fast", dataset: str, ipc: int, **overrides) -> Method:
    cls = METHODS.get(name)
    valid = {f.name for f in hyperparameters(cls)}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for {name}; valid ones are: {', '.join(sorted(valid))}")
    return cls.from_preset(preset, dataset=dataset, ipc=ipc, **overrides)


def is_small(dataset: str) -> bool:
    """Whether a dataset named as presets get it has tiny images (its `small` fact: 8x8 digits),
    where a fast preset can afford the paper's network."""
    return dataset_facts(dataset).small
