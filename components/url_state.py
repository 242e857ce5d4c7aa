"""The Distill tab's settings in the page URL's query string, both ways.

`parse(query)` turns what a link carries into checked settings, a list of controls to hide, the tab
to open and whether to start a run, with a note for every value it had to ignore (never an error:
a bad link still opens the app). `to_query(...)` writes the current settings back as a link.

    ?dataset=digits&method=dm&ipc=10&steps=600&seed=0&preset=fast&from=noise&lr_img=10
     &tab=distill&hide=dataset,seed,params&autorun=1

A method's own hyperparameters are keys of their own (`lr_img=10`), checked against the field's
type and declared range or choices. `lesson=<name>` starts from a lesson's settings
(assets/lessons/<name>.json); keys given beside it win.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlencode

from dd_core.methods import METHODS
from dd_core.methods.base import PRESETS, field_choices, field_range, hyperparameters
from dd_core.synthetic import INITS

from . import inputs

CORE = ("dataset", "method", "ipc", "steps", "seed", "preset", "from")  # the Distill tab's own controls
TABS = ("distill", "compare", "features", "evaluate", "learn", "labels", "lessons")
# Names `hide=` accepts: the Distill tab's controls, its hyperparameter and about panels, a tab by
# its id, or "tabs" for every tab but the open one and Distill.
HIDEABLE = CORE + ("params", "about", "tabs") + TABS
FLAGS = ("autorun", "paused")  # autorun=1 starts the run on opening; paused=1 starts it held at step 0
OTHER = ("tab", "hide", "lesson", "compare") + FLAGS


@dataclass
class UrlState:
    """What a link asks for, checked; `notes` says what was ignored and why."""

    values: dict = field(default_factory=dict)  # CORE key -> checked value (only the keys given)
    params: dict = field(default_factory=dict)  # hyperparameter -> checked value, for values["method"]
    tab: str | None = None
    hide: tuple[str, ...] = ()
    autorun: bool = False
    paused: bool = False
    compare: tuple[str, str] | None = None  # two methods for the Compare tab
    lesson: str | None = None
    notes: list[str] = field(default_factory=list)

    def note_markdown(self) -> str:
        if not self.notes:
            return ""
        return "⚠ **Some of this link's settings were ignored:** " + " ".join(f"{n}" for n in self.notes)


def _flag(value: str) -> bool | None:
    v = str(value).strip().lower()
    return True if v in ("1", "true", "yes", "on") else False if v in ("0", "false", "no", "off", "") else None


def _core(key: str, raw: str):
    """One Distill-tab control's value from its text; raises inputs.UserError."""
    if key == "dataset":
        if raw.startswith("folder") or raw not in inputs.dataset_choices():
            # A link never names a folder on someone's disk: it would not exist on another machine.
            raise inputs.UserError(f"dataset {raw!r} is not offered here; valid ones are: "
                                   f"{', '.join(c for c in inputs.dataset_choices() if c != inputs.FOLDER_CHOICE)}.")
        return raw
    if key == "method":
        return inputs.check_method(raw)
    if key == "ipc":
        return inputs.check_ipc_value(raw)
    if key == "steps":
        return inputs.check_steps(raw)
    if key == "seed":
        return inputs.check_seed(raw)
    valid = PRESETS if key == "preset" else INITS  # from=noise: a keyword, so never a method field
    if raw not in valid:
        raise inputs.UserError(f"{key} {raw!r} is not one of: {', '.join(valid)}.")
    return raw


def param_value(method: str, name: str, raw):
    """A hyperparameter of `method` from text (or a value), checked like the method checks it."""
    fields = {f.name: f for f in hyperparameters(METHODS.get(method))}
    if name not in fields:
        raise inputs.UserError(f"{method} has no hyperparameter {name!r}; its hyperparameters are: "
                               f"{', '.join(sorted(fields)) or 'none'}.")
    f = fields[name]
    default = f.default if f.default is not dataclasses.MISSING else None
    text = str(raw).strip()
    if isinstance(default, bool):
        value = _flag(text)
        if value is None:
            raise inputs.UserError(f"{name} must be 1 or 0 (got {text!r}).")
    elif isinstance(default, (int, float)):
        try:
            number = float(text)
        except ValueError:
            raise inputs.UserError(f"{name} must be a number (got {text!r}).") from None
        if not math.isfinite(number) or (isinstance(default, int) and number != int(number)):
            raise inputs.UserError(f"{name} must be a {'whole ' if isinstance(default, int) else ''}number "
                                   f"(got {text!r}).")
        value = int(number) if isinstance(default, int) else number
        bounds = field_range(f)
        if bounds and not bounds[0] <= value <= bounds[1]:
            raise inputs.UserError(f"{name} = {text} is outside its range {bounds[0]} to {bounds[1]}.")
    else:
        value = text
        choices = field_choices(f)
        if choices and value not in choices:
            raise inputs.UserError(f"{name} {text!r} is not one of: {', '.join(map(str, choices))}.")
    return value


def _hide(raw: str, notes: list[str]) -> tuple[str, ...]:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if n not in HIDEABLE]
    if bad:
        notes.append(f"hide: {', '.join(map(repr, bad))} cannot be hidden; names that can: {', '.join(HIDEABLE)}.")
    return tuple(dict.fromkeys(n for n in names if n in HIDEABLE))


def _compare(raw: str, notes: list[str]) -> tuple[str, str] | None:
    names = [n.strip() for n in raw.split(",")]
    if len(names) != 2 or not all(n in METHODS for n in names):
        notes.append(f"compare={raw!r} needs two methods separated by a comma, from: {', '.join(METHODS.names())}.")
        return None
    return names[0], names[1]


def parse(query: Mapping[str, str], lessons: Mapping[str, Mapping] | None = None) -> UrlState:
    """Check every key of a link; anything bad is left out with a note, nothing raises."""
    state = UrlState()
    query = {str(k): str(v) for k, v in dict(query).items()}
    if "lesson" in query:
        name = query.pop("lesson").strip()
        if lessons is not None and name in lessons:
            state.lesson = name
            query = {**{k: _text(v) for k, v in lessons[name].items()}, **query}
        else:
            state.notes.append(f"lesson {name!r} does not exist; lessons here: {', '.join(sorted(lessons or {}))}.")
    for key in CORE:
        if key in query:
            try:
                state.values[key] = _core(key, query[key].strip())
            except inputs.UserError as err:
                state.notes.append(f"{key}: {err}")
    if "tab" in query:
        tab = query["tab"].strip()
        if tab in TABS:
            state.tab = tab
        else:
            state.notes.append(f"tab {tab!r} does not exist; tabs: {', '.join(TABS)}.")
    if "hide" in query:
        state.hide = _hide(query["hide"], state.notes)
    for key in FLAGS:
        if key in query:
            value = _flag(query[key])
            if value is None:
                state.notes.append(f"{key} must be 1 or 0 (got {query[key]!r}).")
            else:
                setattr(state, key, value)
    if "compare" in query:
        state.compare = _compare(query["compare"], state.notes)
    method = state.values.get("method")
    rest = [k for k in query if k not in CORE and k not in OTHER]
    for key in rest:
        if method is None:
            state.notes.append(f"{key}: a hyperparameter needs method= in the link; ignored.")
            continue
        try:
            state.params[key] = param_value(method, key, query[key])
        except inputs.UserError as err:
            state.notes.append(f"{key}: {err}" if "has no hyperparameter" not in str(err) else str(err))
    return state


def _text(value) -> str:
    """A lesson file's value as a link would carry it (lists become comma lists, booleans 1/0)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def to_query(values: Mapping, params: Mapping | None = None, *, tab: str | None = None, hide=(),
             autorun: bool = False, paused: bool = False, compare=None) -> str:
    """A query string (without '?') for these settings; keys in a fixed, readable order."""
    pairs = [(k, _text(values[k])) for k in CORE if values.get(k) not in (None, "")]
    pairs += [(k, _text(v)) for k, v in (params or {}).items()]
    if compare:
        pairs.append(("compare", _text(compare)))
    if tab and tab != "distill":
        pairs.append(("tab", tab))
    if hide:
        pairs.append(("hide", _text(hide)))
    if autorun:
        pairs.append(("autorun", "1"))
    if paused:
        pairs.append(("paused", "1"))
    return urlencode(pairs, safe=",:")


def changed_params(method: str, preset: str, dataset: str, ipc: int, values: Mapping) -> dict:
    """The hyperparameters whose value differs from what the preset gives (a link carries only
    those, so it stays short and readable)."""
    cls = METHODS.get(method)
    base = {f.name: f.default for f in hyperparameters(cls) if f.default is not dataclasses.MISSING}
    base.update(cls.preset(preset, dataset=dataset, ipc=ipc))
    out = {}
    for name, value in values.items():
        if name in base and value is not None and value != base[name]:
            out[name] = value
    return out
