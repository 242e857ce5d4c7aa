"""Checking what a person typed, at the boundary, with messages they can act on.

Handlers call these before any work starts; engine errors raised later are turned into the same
kind of plain message by `user_message`, so the page never shows a traceback.
"""
from __future__ import annotations

import logging
import math

from dd_core.data import DatasetUnavailable, dataset_names, load_dataset
from dd_core.folder import FolderError
from dd_core.methods import METHODS
from dd_core.registry import UnknownNameError
from dd_core.synthetic import SyntheticFileError, check_ipc

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
    choice = (choice or "").strip()
    if not choice:
        raise UserError("Choose a dataset.")
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


def as_int(value, what: str) -> int:
    """A whole number from a Number box (which may hold None, a float or a string)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a whole number (got {value!r}).") from None
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"{what} must be a whole number (got {value!r}).")
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
    if not name or name not in METHODS:
        raise UserError(f"Unknown method {name!r}; choose one of: {', '.join(METHODS.names())}.")
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


def user_message(err: BaseException) -> str:
    """A one-paragraph message for any error; unexpected ones are logged with their traceback."""
    if isinstance(err, (UserError, UnknownNameError, DatasetUnavailable, FolderError, SyntheticFileError)):
        return str(err)
    if isinstance(err, FileNotFoundError):
        return f"File not found: {err.filename or err}"
    if isinstance(err, ValueError):
        return str(err)
    log.exception("unexpected error in a handler", exc_info=err)
    return f"Something went wrong ({type(err).__name__}: {err}). The app is still running; try other settings."
