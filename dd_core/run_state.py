"""A distillation between two calls: the set-up method with all its state (images, optimizer
momentum, learned labels or learning rates, its random generator), packed into bytes on the CPU
and unpacked on a device, possibly in another process. A ZeroGPU Space runs a long distillation
as a series of short GPU calls, each in a worker process that receives its arguments pickled.

The dataset never travels: the Dataset object, its tensors and views of them are written as
names and resolved, when unpacking, against the dataset the receiving process loaded itself
(MNIST's training tensors alone are 188 MB). A stop signal does not travel either (a
threading.Event cannot cross processes); the receiving call gives distill() its own.

Tensors keep their device: a state packed inside a GPU call unpacks on the GPU in the next one
(pickle copies a CUDA tensor's bytes and its device), with every shared reference intact, so an
optimizer still holds the very images it updates. The process that only carries the bytes
between calls never unpacks them.
"""
from __future__ import annotations

import io
import pickle
import threading
from dataclasses import dataclass

import torch

from .data import Dataset
from .distill import Resume
from .methods.base import Method


@dataclass
class RunState:
    """What a later call needs to go on: the method (set up), where the run is, the RNG states."""

    method: Method
    resume: Resume
    rng: torch.Tensor  # torch.get_rng_state(): draws outside the method's own generator
    cuda_rng: torch.Tensor | None = None


def _dataset_tensors(dataset: Dataset) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vars(dataset).items() if isinstance(v, torch.Tensor)}


class _Pickler(pickle.Pickler):
    """Writes the dataset (and its tensors, and views of them) as references, and stop signals as None."""

    def __init__(self, file, dataset: Dataset):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.dataset = dataset
        self.tensors = _dataset_tensors(dataset)
        self.storages = {t.untyped_storage().data_ptr(): k for k, t in self.tensors.items() if t.numel()}

    def persistent_id(self, obj):
        if obj is self.dataset:
            return ("dataset",)
        if isinstance(obj, threading.Event) or getattr(obj, "is_stop_signal", False):
            return ("stop",)
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and obj.numel():
            for name, t in self.tensors.items():
                if obj is t:
                    return ("tensor", name)
            name = self.storages.get(obj.untyped_storage().data_ptr())
            if name is not None:  # a view: keep how it looks at the tensor, not the tensor's bytes
                return ("view", name, obj.storage_offset() - self.tensors[name].storage_offset(),
                        tuple(obj.shape), tuple(obj.stride()))
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, dataset: Dataset):
        super().__init__(file)
        self.dataset = dataset
        self.tensors = _dataset_tensors(dataset)

    def persistent_load(self, pid):
        kind = pid[0]
        if kind == "dataset":
            return self.dataset
        if kind == "stop":
            return None
        if kind == "tensor":
            return self.tensors[pid[1]]
        if kind == "view":
            _, name, offset, shape, stride = pid
            base = self.tensors[name]
            return base.as_strided(shape, stride, base.storage_offset() + offset)
        raise pickle.UnpicklingError(f"unknown reference {pid!r} in a packed run")


def pack(state: RunState, dataset: Dataset) -> bytes:
    """The run as bytes; the dataset's tensors (on the CPU) become references."""
    buffer = io.BytesIO()
    _Pickler(buffer, dataset).dump(state)
    return buffer.getvalue()


def unpack(blob: bytes, dataset: Dataset) -> RunState:
    """The run from pack()'s bytes, with its dataset references resolved against `dataset`."""
    state = _Unpickler(io.BytesIO(blob), dataset).load()
    if not isinstance(state, RunState):
        raise TypeError(f"not a packed run: got {type(state).__name__}")
    return state


def capture(method: Method, resume: Resume, device: torch.device) -> RunState:
    """The run as it is now, with the RNG states that the next call restores."""
    cuda = torch.device(device).type == "cuda"
    return RunState(method, resume, torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None)


def restore_rng(state: RunState, device: torch.device) -> None:
    torch.set_rng_state(state.rng)
    if state.cuda_rng is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state.cuda_rng)
