"""How the app uses this machine: device, threads, the shared compute pool and the per-run caps.

Read once at start-up. Every compute-heavy job (distill, evaluate, labels, feature map) computes in
one of `POOL` slots (handed out by jobs.py, one per visitor), and each slot gets `cores // POOL`
torch threads, so that two runs at once share the cores instead of oversubscribing them (OpenMP
spin-waits make that slow).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


@dataclass(frozen=True)
class Limits:
    """Caps on one run; stated in the UI so nobody is surprised when a run stops."""

    max_steps: int  # distillation steps per run
    max_seconds: float  # wall-clock seconds per distillation or evaluation
    max_ipc: int  # images per class a user may ask for

    def describe(self) -> str:
        return (f"Runs on this machine stop after {self.max_steps:,} steps or {self.max_seconds / 60:.0f} minutes, "
                f"keeping everything made so far; IPC at most {self.max_ipc}.")


CUDA = torch.cuda.is_available()
CORES = os.cpu_count() or 1
# Slots of the shared compute pool: two on a small CPU (so a second user is not blocked by a long
# run), about one per four cores on a larger one, two on a GPU.
POOL = _env_int("DISTILLERY_WORKERS", 2 if (CUDA or CORES <= 4) else CORES // 4)
THREADS = _env_int("DISTILLERY_THREADS", max(1, CORES // POOL))
LIMITS = (Limits(max_steps=20_000, max_seconds=30 * 60, max_ipc=100) if CUDA
          else Limits(max_steps=_env_int("DISTILLERY_MAX_STEPS", 3000),
                      max_seconds=float(_env_int("DISTILLERY_MAX_SECONDS", 300)), max_ipc=50))
# Reading image folders from the server's disk: on for a local launch; off on a public Hugging Face
# Space (SPACE_ID is set there), where a visitor must not browse the host's files.
# DISTILLERY_FOLDERS=1 or 0 overrides either way.
# PUBLIC (a Hugging Face Space, or DISTILLERY_PUBLIC=1): messages never show the server's paths.
PUBLIC = bool(os.environ.get("SPACE_ID")) or os.environ.get("DISTILLERY_PUBLIC", "").strip().lower() in ("1", "true", "yes")
_folders = os.environ.get("DISTILLERY_FOLDERS")
FOLDERS_ALLOWED = (_folders.strip().lower() in ("1", "true", "yes")) if _folders else not PUBLIC
# Memory one distillation may need (dd_core/memory.py's estimate); above it a run is refused. Two
# runs at 4 GB plus the datasets fit a 16 GB Space; on a GPU, its share of the device's memory.
MAX_MEMORY_BYTES = (_env_int("DISTILLERY_MAX_MEMORY_MB", 4096) * 2**20 if not CUDA or "DISTILLERY_MAX_MEMORY_MB" in os.environ
                    else int(0.8 * torch.cuda.get_device_properties(0).total_memory / POOL))
# Uploaded synthetic sets: the largest a CPU run makes (CIFAR-100, IPC 50: 61 MB) with room for labels.
MAX_UPLOAD_BYTES = _env_int("DISTILLERY_MAX_UPLOAD_MB", 128) * 2**20
QUEUE_SIZE = 16  # waiting events beyond this are refused with "queue full" instead of waiting for ever


def cache_root() -> Path:
    root = os.environ.get("DD_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "distillery"


# glibc malloc arenas: by default up to 8 per core, one per thread that allocates, and memory
# freed in one arena is kept there. A server's many handler threads then leave resident memory
# well above its start after the sessions that needed it are gone (benchmarks/rss_lifecycle.py, 3
# rounds of 6 visitors: +9% and climbing with glibc's default, back within 0.3% with 2 arenas;
# BENCHMARKS "Soak").
# 0 leaves glibc's default.
MALLOC_ARENAS = int(os.environ.get("DISTILLERY_MALLOC_ARENAS", "2") or 0)
M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """mallopt(M_ARENA_MAX, arenas) unless MALLOC_ARENA_MAX is set; True if applied (glibc only).
    Call before the server's threads start allocating: arenas made earlier stay."""
    if arenas <= 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc
        return False


def configure() -> None:
    """Set threads, malloc's arenas and numba's cache folder; call before anything computes or
    imports umap."""
    limit_malloc_arenas()
    torch.set_num_threads(THREADS)
    numba_dir = cache_root() / "numba"
    try:
        numba_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("NUMBA_CACHE_DIR", str(numba_dir))
    except OSError:  # read-only home: numba then compiles in memory each start
        pass


def device_note() -> str:
    if CUDA:
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU: {CORES} cores, {POOL} runs at a time with {THREADS} thread(s) each"
