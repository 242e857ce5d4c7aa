"""What the benchmarks that start the app need from the operating system: a free loopback port, a
check that a URL is this machine, waiting for a server to answer, and a process tree's memory and
a folder's bytes, read from /proc and the file system."""
from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlparse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_only(url: str) -> str:
    """`url` with a trailing slash, or SystemExit if it is not on this machine."""
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"this benchmark targets only this machine (127.0.0.1); got {host!r}")
    return url if url.endswith("/") else url + "/"


def wait_up(url: str, timeout: float = 300) -> None:
    """Return once `url` answers HTTP 200; SystemExit after `timeout` seconds."""
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1)
    raise SystemExit(f"the app did not answer at {url} within {timeout:.0f} s")


def rss_bytes(pid: int) -> int:
    """Resident memory of one process, from /proc (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (children, then theirs)."""
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in children(k)]


def folder_bytes(*roots: Path) -> int:
    """Bytes of the files under `roots` (files that vanish while counted are skipped)."""
    total = 0
    for root in roots:
        for f in Path(root).rglob("*"):
            try:
                total += f.stat().st_size if f.is_file() else 0
            except OSError:
                pass
    return total
