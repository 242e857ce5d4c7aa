"""The one on-disk cache for trained artefacts (teachers, feature networks, expert trajectories,
label projectors): keyed files under `cache_dir()`, written atomically and validated on load.
A file that fails to load or validate is discarded and rebuilt, with a logged note, so a
truncated write or a bad copy never breaks a feature until someone deletes files by hand."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")
log = logging.getLogger("distillery.cache")

_locks: dict[str, threading.RLock] = {}  # one per path: a build blocks only those who want that file
_locks_guard = threading.Lock()


class CorruptCacheError(ValueError):
    """A cached file that exists but cannot be used; the message says which and why."""


def cache_dir() -> Path:
    """`$DD_CACHE_DIR`, else ~/.cache/distillery."""
    root = os.environ.get("DD_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "distillery"


def cache_path(kind: str, key: str, suffix: str) -> Path:
    """Where the artefact `key` of `kind` (teachers, experts, ...) lives; suffix includes the dot."""
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)
    return cache_dir() / kind / f"{safe}{suffix}"


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place: readers see
    the old file or the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def lock_for(path: Path) -> threading.RLock:
    """The lock of one cached file. Re-entrant, so a caller that keeps its own in-memory copy can hold
    it around `load_or_build` on the same path."""
    with _locks_guard:
        return _locks.setdefault(str(path), threading.RLock())


def load_or_build(path: Path, *, load: Callable[[Path], T], build: Callable[[], T],
                  save: Callable[[T, Path], None]) -> tuple[T, bool]:
    """The cached artefact at `path`, or a new one from `build()` saved there atomically.

    `load(path)` must raise (any exception) on a file it cannot use; such a file is removed, logged
    and rebuilt. Returns (artefact, was_cached). One build per path at a time, even with several
    users asking at once."""
    path = Path(path)
    with lock_for(path):
        if path.is_file():
            try:
                return load(path), True
            except Exception as err:  # noqa: BLE001  any failure to read means: rebuild
                log.warning("cache file %s is unusable (%s: %s); discarding it and rebuilding",
                            path.name, type(err).__name__, str(err)[:200])
                path.unlink(missing_ok=True)
        value = build()
        atomic_write(path, lambda tmp: save(value, tmp))
        return value, False


def sweep_temporaries(root: Path | None = None) -> int:
    """Remove temporary files left by writers that died mid-write (at start-up); returns bytes freed."""
    root = Path(root or cache_dir())
    freed = 0
    if not root.is_dir():
        return 0
    for tmp in root.rglob(".*.tmp"):
        try:
            pid = int(tmp.name.split(".")[-3])
        except (ValueError, IndexError):
            pid = -1
        if pid == os.getpid() or pid_alive(pid):
            continue  # a write in progress (ours, or another live process sharing the cache)
        try:
            freed += tmp.stat().st_size
            tmp.unlink()
        except OSError:
            pass
    return freed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (another user's counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
