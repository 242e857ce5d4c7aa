"""Which device the engine computes on, and the switches a GPU user expects.

`default_device()` is CUDA when present, else the CPU. `prefer(device)` overrides it for the whole
process and `using(device)` for one block: a ZeroGPU Space's main process sees a stand-in CUDA
(the `spaces` package makes `torch.cuda.is_available()` true there, but computing on it fails),
so it prefers the CPU and each GPU call says `using("cuda")`.

On CUDA, read from the environment once:
  DD_CUDNN_BENCHMARK   1 (default) / 0: let cuDNN time its kernels for each new shape. DM's random
                       networks and the evaluator see the same few shapes thousands of times.
  DD_AMP               "" (default) / "bf16": autocast the steps and the evaluator's training to
                       bfloat16. Off until measured: it must not move accuracy beyond seed noise.
  DD_COMPILE           0 (default) / 1: torch.compile the evaluator's network (one network trained
                       for hundreds of epochs; DM's per-step random networks would recompile).
None of the three has been measured on a GPU yet (BENCHMARKS.md says so); scripts/gpu_check.sh
times them. The CPU ignores them: its fast kernels are chosen in models.py per device.
"""
from __future__ import annotations

import contextlib
import os
import threading

import torch

_preferred: torch.device | None = None  # process-wide choice (prefer)
_local = threading.local()  # a block's choice (using), per thread


def _cuda_present() -> bool:
    return torch.cuda.is_available()


def default_device() -> torch.device:
    """The device new work runs on: using() > prefer() > CUDA if present > CPU."""
    block = getattr(_local, "device", None)
    if block is not None:
        return block
    if _preferred is not None:
        return _preferred
    return torch.device("cuda" if _cuda_present() else "cpu")


def prefer(device: str | torch.device | None) -> None:
    """Set (or with None, clear) the process-wide device."""
    global _preferred
    _preferred = None if device is None else torch.device(device)


@contextlib.contextmanager
def using(device: str | torch.device):
    """default_device() is `device` inside the block (in this thread)."""
    before = getattr(_local, "device", None)
    _local.device = torch.device(device)
    try:
        yield _local.device
    finally:
        _local.device = before


def _flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


def cudnn_benchmark() -> bool:
    return _flag("DD_CUDNN_BENCHMARK", "1") in ("1", "true", "yes")


def amp_dtype() -> torch.dtype | None:
    """bfloat16 when DD_AMP=bf16, else None (full float32)."""
    value = _flag("DD_AMP", "")
    if value in ("", "0", "off", "none", "fp32", "float32"):
        return None
    if value in ("bf16", "bfloat16"):
        return torch.bfloat16
    raise ValueError(f"DD_AMP={value!r} is not understood; valid values are: bf16, off")


def compile_enabled() -> bool:
    return _flag("DD_COMPILE", "0") in ("1", "true", "yes")


def configure(device: str | torch.device) -> None:
    """Switch on what `device` wants before work starts (cuDNN autotuning on CUDA); idempotent."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark()


def autocast(device: str | torch.device):
    """Mixed precision for a block on CUDA when DD_AMP asks for it; otherwise a no-op."""
    dtype = amp_dtype()
    if dtype is None or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def maybe_compile(net: torch.nn.Module, device: str | torch.device):
    """`torch.compile(net)` on CUDA when DD_COMPILE=1, else `net` itself (same parameters either way)."""
    if compile_enabled() and torch.device(device).type == "cuda":
        return torch.compile(net)
    return net


def describe(device: str | torch.device) -> dict:
    """The switches in force on `device`, for provenance in benchmark rows."""
    cuda = torch.device(device).type == "cuda"
    return {"device": str(device), "cudnn_benchmark": cuda and cudnn_benchmark(),
            "amp": str(amp_dtype()).replace("torch.", "") if cuda and amp_dtype() else "off",
            "compile": cuda and compile_enabled()}
