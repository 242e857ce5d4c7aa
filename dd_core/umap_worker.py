"""UMAP in its own low-priority process.

umap-learn compiles with numba: tens of seconds of single-threaded work that holds the GIL, and
part of it is compiled again in every new process. Run inside a server, that stalls every other
request. So one long-lived child process does all fitting and transforming: it compiles once
(while the app is already usable), keeps the fitted reducers by key, and answers over a pipe.

Protocol: length-prefixed pickles over the child's stdin/stdout, one request at a time; this is a
private channel between two processes of this program, never a network one.
"""
from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

UMAP_SETTINGS = dict(n_neighbors=15, min_dist=0.5)  # min_dist 0.5 (default 0.1) keeps classes from collapsing to dots under the markers


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def _recv(stream):
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("the other side closed the pipe")
    (n,) = struct.unpack("<Q", header)
    return pickle.loads(stream.read(n))


# -- the child ------------------------------------------------------------------------------------


def _fit(reducers: dict, key, feats: np.ndarray, seed: int) -> np.ndarray:
    if key not in reducers:
        import umap

        reducer = umap.UMAP(random_state=seed, transform_seed=seed, **UMAP_SETTINGS)
        reducer.fit(feats)
        reducers[key] = reducer
    return np.asarray(reducers[key].embedding_, dtype=np.float32)


def _warm(reducers: dict, digits_map: bool) -> str:
    """Compile numba's code paths on tiny data; optionally fit the digits map in advance."""
    import umap

    rng = np.random.default_rng(0)
    tiny = umap.UMAP(random_state=0, **UMAP_SETTINGS).fit(rng.normal(size=(300, 16)).astype(np.float32))
    tiny.transform(rng.normal(size=(10, 16)).astype(np.float32))
    if digits_map:
        import torch

        torch.set_num_threads(1)
        from .data import load_dataset
        from .embed import real_map

        m = real_map(load_dataset("digits"), "trained")  # trains and caches the teacher on first use
        _fit(reducers, m.key, m.feats, seed=0)
        reducers[m.key].transform(m.feats[:10])
    return "warm"


def serve(inp, out) -> None:
    """Answer requests until the parent closes the pipe."""
    reducers: dict = {}
    while True:
        try:
            cmd, key, payload = _recv(inp)
        except EOFError:
            return
        try:
            if cmd == "ping":
                result = "pong"
            elif cmd == "fit":
                result = _fit(reducers, key, payload["feats"], payload["seed"])
            elif cmd == "transform":
                if key not in reducers:
                    raise KeyError(f"no map fitted under {key!r}")
                result = np.asarray(reducers[key].transform(payload), dtype=np.float32)
            elif cmd == "warm":
                result = _warm(reducers, bool(payload))
            else:
                raise ValueError(f"unknown command {cmd!r}")
            reply = ("ok", result)
        except KeyError as err:
            reply = ("missing", str(err))
        except Exception as err:  # noqa: BLE001 - reported to the parent, the worker stays up
            reply = ("error", f"{type(err).__name__}: {err}")
        _send(out, reply)


def _exit_with_parent(parent: int, every: float = 2.0) -> None:
    """Leave as soon as the parent is gone, even mid-compile or mid-fit: an orphan at low priority
    would otherwise linger until its current job ends, which on a loaded machine takes minutes."""
    import time

    while os.getppid() == parent:
        time.sleep(every)
    os._exit(0)


def _pickles_ok(data: bytes) -> bool:
    """True when `data` is one or more complete pickle streams (walked, never executed)."""
    import io
    import pickletools

    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):
            for _ in pickletools.genops(stream):
                pass
    except Exception:  # noqa: BLE001 - any malformed byte means: not a pickle
        return False
    return len(data) > 0


def repair_numba_cache(root: str | os.PathLike | None) -> int:
    """Remove numba cache entries that cannot be read (a truncated or garbled index or data file
    makes `import umap` fail in every new process until someone deletes it by hand); numba then
    compiles those functions again. Returns how many functions' entries were removed."""
    if not root or not Path(root).is_dir():
        return 0
    removed = 0
    for index in Path(root).rglob("*.nbi"):
        stem = index.name[:-len(".nbi")]  # e.g. rp_trees.select_side-2772.py311
        data = sorted(index.parent.glob(f"{stem}.*.nbc"))
        try:
            ok = _pickles_ok(index.read_bytes()) and all(_pickles_ok(d.read_bytes()) for d in data)
        except OSError:
            ok = False
        if not ok:
            for f in [index, *data]:
                f.unlink(missing_ok=True)
            removed += 1
    for orphan in Path(root).rglob("*.nbc"):  # data whose index is gone
        if not orphan.with_name(orphan.name.rsplit(".", 2)[0] + ".nbi").exists():
            orphan.unlink(missing_ok=True)
    if removed:
        print(f"numba cache: removed {removed} unreadable entr{'y' if removed == 1 else 'ies'} under {root}; "
              f"they compile again", file=sys.stderr)
    return removed


def main() -> None:
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    repair_numba_cache(os.environ.get("NUMBA_CACHE_DIR"))  # before anything imports umap
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    serve(sys.stdin.buffer, proto_out)


# -- the parent -----------------------------------------------------------------------------------


class MissingMap(KeyError):
    """The worker has no map under that key (e.g. it was restarted); fit again."""


class Stopped(RuntimeError):
    """The caller's stop was set while it waited for UMAP; `pid` is the worker process that was
    ended for it (None when the caller was still waiting for the worker and nothing was ended)."""

    def __init__(self, pid: int | None, message: str | None = None):
        self.pid = pid
        ended = f"its worker process (pid {pid}) was ended" if pid else "nothing had started yet"
        super().__init__(message or f"UMAP stopped: {ended}")


STOP_POLL = 0.2  # seconds between looks at the caller's stop while UMAP works


class UmapWorker:
    """Client of the worker process; started on first use, restarted if it dies. A caller's stop
    (an Event) ends the worker mid-fit by its pid: numba's code cannot be interrupted any other way,
    and a fit can take minutes. The next call starts a fresh worker (numba's disk cache makes that
    seconds); maps it had fitted are fitted again on demand (MissingMap)."""

    def __init__(self, nice: int = 10, argv: list[str] | None = None):
        self.nice = nice
        self.argv = argv or [sys.executable, "-m", "dd_core.umap_worker"]  # a test may run a stand-in
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _ensure(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
            root = Path(__file__).resolve().parent.parent
            self._proc = subprocess.Popen(
                self.argv, cwd=root, env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                preexec_fn=(lambda: os.nice(self.nice)) if os.name == "posix" and self.nice else None)
        return self._proc

    def _acquire(self, stop) -> None:
        """Take the one-request-at-a-time lock, giving up (Stopped, nothing ended) if `stop` is set
        while another caller's fit holds it."""
        while not self._lock.acquire(timeout=STOP_POLL if stop is not None else -1):
            if stop.is_set():
                raise Stopped(None)

    def _await_reply(self, proc: subprocess.Popen, stop) -> None:
        """Return once the worker's reply starts arriving; if `stop` is set first, end the worker
        by its pid and raise Stopped (call with the lock held)."""
        if stop is None or os.name != "posix":
            return
        while not select.select([proc.stdout], [], [], STOP_POLL)[0]:
            if stop.is_set():
                proc.kill()  # SIGKILL to proc.pid: numba holds the worker's only thread
                proc.wait()
                self._proc = None
                raise Stopped(proc.pid)

    def call(self, cmd: str, key=None, payload=None, *, retry: bool = True, stop=None):
        """Send one request and return its result; `stop` (a threading.Event or None) ends the wait."""
        self._acquire(stop)
        try:
            proc = self._ensure()
            try:
                _send(proc.stdin, (cmd, key, payload))
                self._await_reply(proc, stop)
                status, result = _recv(proc.stdout)
            except (EOFError, BrokenPipeError, OSError) as err:
                self._proc = None
                status, result = "died", f"the UMAP worker stopped ({err})"
        finally:
            self._lock.release()
        if retry and (status == "died" or (status == "error" and _looks_like_cache(result))):
            # A broken numba cache fails every import of umap; clear it and try once more in a new worker.
            self.close()
            _clear_numba_cache(result)
            return self.call(cmd, key, payload, retry=False, stop=stop)
        if status == "died":
            raise RuntimeError(f"{result}; try again")
        if status == "missing":
            raise MissingMap(result)
        if status == "error":
            raise RuntimeError(f"UMAP failed: {result}")
        return result

    def fit(self, key, feats: np.ndarray, seed: int = 0, *, stop=None) -> np.ndarray:
        return self.call("fit", key, {"feats": np.ascontiguousarray(feats, dtype=np.float32), "seed": seed},
                         stop=stop)

    def transform(self, key, feats: np.ndarray, *, stop=None) -> np.ndarray:
        return self.call("transform", key, np.ascontiguousarray(feats, dtype=np.float32), stop=stop)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.stdin.close()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
            self._proc = None


CACHE_ERRORS = ("pickle", "numba", "cache", "EOFError", "load key", "ImportError", "truncated", "marshal")


def _looks_like_cache(message: str) -> bool:
    return any(word.lower() in str(message).lower() for word in CACHE_ERRORS)


def _clear_numba_cache(reason: str) -> None:
    import logging
    import shutil

    root = os.environ.get("NUMBA_CACHE_DIR")
    if root and Path(root).is_dir():
        logging.getLogger("distillery.cache").warning(
            "UMAP failed (%s); clearing numba's cache %s so it compiles afresh", str(reason)[:200], root)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
