"""Checking what a person typed, at the boundary, with messages they can act on.

Handlers call these before any work starts; engine errors raised later are turned into the same
kind of plain message by `user_message`, so the page never shows a traceback.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from dd_core.data import DatasetUnavailable, dataset_names, load_dataset
from dd_core.folder import FolderError
from dd_core.labels import load_store
from dd_core.methods import METHODS
from dd_core.registry import UnknownNameError
from dd_core.synthetic import SyntheticFileError, SyntheticSet, check_ipc

from . import runtime
from .runtime import LIMITS

log = logging.getLogger("distillery.app")
FOLDER_CHOICE = "folder"  # the dataset dropdown entry that reveals a path box


class UserError(ValueError):
    """Input a person can fix; its message is shown as is."""


def dataset_choices() -> list[str]:
    builtin = [n for n in dataset_names() if not n.startswith("folder:")]
    return builtin + [FOLDER_CHOICE] if runtime.FOLDERS_ALLOWED else builtin


def dataset_name(choice: str | None, folder_path: str | None = "") -> str:
    """The engine's dataset name for the dropdown choice (and the path box when 'folder')."""
    if choice is not None and not isinstance(choice, str):
        raise UserError(f"The dataset must be a name (got {echo(choice)}); choose one of: {', '.join(dataset_choices())}.")
    choice = (choice or "").strip()
    if not choice:
        raise UserError("Choose a dataset.")
    if len(choice) > 4096:
        raise UserError(f"The dataset name {echo(choice)} is too long; choose one of: {', '.join(dataset_choices())}.")
    if choice == FOLDER_CHOICE or choice.startswith("folder:"):
        if not runtime.FOLDERS_ALLOWED:
            raise UserError("Image folders on the server's disk are turned off here (a public Space). Choose one of: "
                            f"{', '.join(dataset_choices())}; or run the app on your own machine "
                            "(or set DISTILLERY_FOLDERS=1) to distill your own images.")
        if choice.startswith("folder:"):  # the API passes the engine's name directly
            return choice
        path = (folder_path or "").strip()
        if not path:
            raise UserError("Type the path of an image folder (one sub-folder per class) in the folder box.")
        return f"folder:{path}"
    return choice


ECHO_CHARS = 60  # typed input repeated in a message is cut to this many characters
PATH_PATTERN = re.compile(r"(?:/[^/\s'\"(),;:]+){2,}")  # an absolute path of two or more parts


def echo(value) -> str:
    """`value` as a message repeats it: its repr, cut to ECHO_CHARS (a 100 kB name is not sent back)."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}… ({len(text):,} characters)"


def as_int(value, what: str) -> int:
    """A whole number from a Number box or an API call: an int, or a float or text holding a whole
    number. 2.5 and True are refused rather than rounded."""
    if isinstance(value, bool) or value is None:
        raise UserError(f"{what} must be a whole number (got {echo(value)}).")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{what} must be a whole number (got {echo(value)}).") from None
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"{what} must be a whole number (got {echo(value)}).")
    return int(number)


def check_steps(steps) -> int:
    n = as_int(steps, "Steps")
    if not 1 <= n <= LIMITS.max_steps:
        raise UserError(f"Steps must be between 1 and {LIMITS.max_steps:,} on this machine (got {n:,}).")
    return n


def check_seed(seed) -> int:
    n = as_int(seed, "Seed")
    if not 0 <= n < 2**31:
        raise UserError(f"Seed must be between 0 and {2**31 - 1} (got {n}).")
    return n


def check_method(name: str | None) -> str:
    if not isinstance(name, str) or name not in METHODS:
        raise UserError(f"Unknown method {echo(name)}; choose one of: {', '.join(METHODS.names())}.")
    return name


def check_ipc_value(ipc, dataset=None) -> int:
    """IPC must be 1..the machine's limit and no more than the smallest class of the dataset."""
    n = as_int(ipc, "IPC (images per class)")
    if n < 1:
        raise UserError(f"IPC (images per class) must be at least 1 (got {n}).")
    if n > LIMITS.max_ipc:
        raise UserError(f"IPC {n} is above this machine's limit of {LIMITS.max_ipc} images per class.")
    if dataset is not None:
        try:
            check_ipc(dataset, n)
        except ValueError as err:
            raise UserError(str(err)) from None
    return n


def open_dataset(name: str):
    """load_dataset with its errors turned into messages."""
    if name.startswith("folder:"):
        dataset_name(name)  # refused where folders are turned off
    try:
        return load_dataset(name)
    except (UnknownNameError, DatasetUnavailable, FolderError, OSError, ValueError) as err:
        raise UserError(user_message(err)) from None


MAX_MESSAGE_CHARS = 600  # a message longer than this (it echoes something huge) is cut


def user_message(err: BaseException) -> str:
    """A one-paragraph message for any error; unexpected ones are logged with their traceback. On
    a public Space, server paths in it are cut to their last part."""
    if isinstance(err, (UserError, UnknownNameError, DatasetUnavailable, FolderError, SyntheticFileError)):
        text = str(err)
    elif isinstance(err, FileNotFoundError):
        text = f"File not found: {err.filename or err}"
    elif isinstance(err, MemoryError):
        text = "This run needs more memory than this machine has free; choose a smaller IPC or batch."
    elif isinstance(err, ValueError):
        text = str(err)
    else:
        log.exception("unexpected error in a handler", exc_info=err)
        text = f"Something went wrong ({type(err).__name__}: {err}). The app is still running; try other settings."
    return public(text)


def public(text: str) -> str:
    """`text` cut to MAX_MESSAGE_CHARS, with server paths hidden on a public Space."""
    if runtime.PUBLIC:
        text = PATH_PATTERN.sub(lambda m: f"…/{Path(m.group(0)).name}", text)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "…"


def load_set(path) -> SyntheticSet:
    """A synthetic set from a path the app holds (an upload, the session's own file), within this
    machine's limits on file size and images per class; the set is validated on load."""
    if not path:
        raise UserError("Give a synthetic set (.safetensors) saved by Distillery.")
    path = Path(str(path))
    size = path.stat().st_size if path.is_file() else 0
    if size > runtime.MAX_UPLOAD_BYTES:
        raise UserError(f"This file is {size / 2**20:,.1f} MB; this machine takes synthetic sets of at most "
                        f"{runtime.MAX_UPLOAD_BYTES / 2**20:,.0f} MB (DISTILLERY_MAX_UPLOAD_MB).")
    syn = SyntheticSet.load(path)
    try:
        load_store(syn)  # a label store named in the file must be there, whole
    except ValueError as err:
        raise UserError(f"{path.name}: {err}") from None
    per_class = int(syn.labels.bincount().max()) if len(syn.labels) else 0
    if per_class > LIMITS.max_ipc:
        raise UserError(f"This set has {per_class} images in one class; this machine evaluates at most "
                        f"{LIMITS.max_ipc} per class ({LIMITS.max_ipc} x {syn.num_classes} classes = "
                        f"{LIMITS.max_ipc * syn.num_classes:,} images).")
    return syn
