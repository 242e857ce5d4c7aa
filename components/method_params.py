"""A method's hyperparameter widgets, generated from its dataclass fields and their help text.

Every registered method gets a (hidden) group of widgets built once; choosing a method shows its
group. Values flow one way: widgets -> `overrides(...)` -> make_method(**overrides).
"""
from __future__ import annotations

import dataclasses
import math

import gradio as gr

from dd_core.methods import METHODS
from dd_core.methods.base import field_choices, field_help, hyperparameters
from dd_core.models import MODELS

from .inputs import UserError


@dataclasses.dataclass
class ParamWidget:
    method: str
    name: str
    kind: type  # bool, int, float or str: the type of the field's default
    component: gr.components.Component


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _widget(f: dataclasses.Field, value) -> gr.components.Component:
    label, info = f.name, field_help(f) or None
    if isinstance(value, bool):
        return gr.Checkbox(value=value, label=label, info=info)
    if isinstance(value, int):
        return gr.Number(value=value, label=label, info=info, precision=0)
    if isinstance(value, float):
        return gr.Number(value=value, label=label, info=info)
    if field_choices(f):  # a named option: only its valid values
        return gr.Dropdown(choices=list(field_choices(f)), value=value, label=label, info=info)
    if f.name == "model" or f.name.endswith("_model"):  # a network name: offer the registered ones
        choices = MODELS.names() + ([value] if value and value not in MODELS else [])  # e.g. "auto"
        return gr.Dropdown(choices=choices, value=value, label=label, info=info, allow_custom_value=True)
    return gr.Textbox(value="" if value is None else str(value), label=label, info=info)


def build_all(selected: str) -> tuple[dict[str, gr.Group], list[ParamWidget]]:
    """A group of widgets per registered method (only `selected` visible) and the flat widget list."""
    groups: dict[str, gr.Group] = {}
    widgets: list[ParamWidget] = []
    for name in METHODS.names():
        fields = hyperparameters(METHODS.get(name))
        with gr.Group(visible=name == selected) as group:
            if not fields:
                gr.Markdown(f"*{name} has no hyperparameters.*")
            for f in fields:
                value = _default(f)
                widgets.append(ParamWidget(name, f.name, type(value), _widget(f, value)))
        groups[name] = group
    return groups, widgets


def overrides(method: str, widgets: list[ParamWidget], values: list) -> dict:
    """The chosen method's field values from the flat widget values, converted and checked."""
    out = {}
    for w, value in zip(widgets, values):
        if w.method != method:
            continue
        if w.kind is bool:
            out[w.name] = bool(value)
        elif w.kind in (int, float):
            if value is None or value == "":
                raise UserError(f"{method}: {w.name} needs a number.")
            try:
                out[w.name] = w.kind(value)
            except (TypeError, ValueError):
                raise UserError(f"{method}: {w.name} must be a {w.kind.__name__} (got {value!r}).") from None
        else:
            out[w.name] = str(value)
    return out


def preset_values(method: str, preset: str, dataset: str, ipc: int, widgets: list[ParamWidget],
                  current: list | None = None, shown_ipc: int | None = None) -> list:
    """Widget updates showing the preset's value of every field of `method` (others untouched).

    With `current` (every widget's value now) and `shown_ipc` (the IPC whose preset they were set
    from, same method, preset and dataset): a field whose value differs from that preset's was
    changed by the user and keeps it; only the others follow the preset to the new IPC."""
    values = _preset_of(method, preset, dataset, ipc)
    before = _preset_of(method, preset, dataset, shown_ipc) if current is not None and shown_ipc is not None else None
    out = []
    for i, w in enumerate(widgets):
        if w.method != method or w.name not in values:
            out.append(gr.skip())
        elif before is not None and not _same(current[i], before.get(w.name)):
            out.append(gr.skip())  # the user's own value
        else:
            out.append(gr.update(value=values[w.name]))
    return out


def _preset_of(method: str, preset: str, dataset: str, ipc: int) -> dict:
    cls = METHODS.get(method)
    return {**{f.name: _default(f) for f in hyperparameters(cls)}, **cls.preset(preset, dataset=dataset, ipc=ipc)}


def _same(shown, preset_value) -> bool:
    """Whether a widget's value is the preset's (numbers compared as numbers: a Number gives 1e-06 back as 0.000001)."""
    if isinstance(preset_value, bool) or not isinstance(preset_value, (int, float)):
        return shown == preset_value
    try:
        return math.isclose(float(shown), float(preset_value), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return False
