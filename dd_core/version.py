"""The version of this code, recorded in every saved set, expert index and benchmark line.

In a git checkout: the commit, with "-dirty" when tracked code differs from it (benchmark results
and Markdown, which runs append to, do not count). In a tree exported with `git archive`, the
commit written into `dd_core/VERSION` by .gitattributes' export-subst. Otherwise (no git, or git
refusing the folder): "unknown". Read once per process: a long run reports the code it started with.
"""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPORTED = Path(__file__).with_name("VERSION")  # "$Format:%h$" in the repository, the commit in an archive
IGNORED = (":!benchmarks/results", ":!*.md")  # what a running benchmark may change without making its code dirty


def _git(*args: str) -> str | None:
    """git's output in ROOT, or None when git is missing, fails, or ROOT is not the top of a checkout."""
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _from_git() -> str | None:
    top = _git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != ROOT:  # not ours: e.g. installed inside some other repository
        return None
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return None
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *IGNORED)
    return head + ("" if changed == "" else "-dirty")  # None (status failed) counts as dirty


def _from_export() -> str | None:
    try:
        text = EXPORTED.read_text().strip()
    except OSError:
        return None
    return text if text and not text.startswith("$Format") else None


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    return _from_git() or _from_export() or "unknown"
