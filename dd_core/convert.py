"""The one conversion from text to a hyperparameter's type: a CLI `--set FIELD=VALUE`, a label
store's option in a spec ("soft:topk=2"), an expert recipe's `--set`. The type is that of the
field's default (bool, int, float or str); a wrong value raises a ValueError saying what was wanted.
"""
from __future__ import annotations

TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")
KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def from_text(text: str, like, what: str):
    """`text` as the type of `like` (a field's default); `what` names the field in the error."""
    kind = type(like)
    value = text.strip()
    try:
        if kind is bool:
            if value.lower() not in TRUE + FALSE:
                raise ValueError(value)
            return value.lower() in TRUE
        if kind in (int, float):
            return kind(value)
    except ValueError:
        raise ValueError(f"{what} takes {KINDS[kind]}; got {text!r}") from None
    return value


def fields_from_text(items: list[str], defaults: dict[str, object], what: str) -> dict[str, object]:
    """['lr=0.1', 'dsa=false'] -> {'lr': 0.1, 'dsa': False}, typed by `defaults` (field -> default);
    an item that is not FIELD=VALUE or names no field says which fields there are."""
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or key not in defaults:
            raise ValueError(f"{what} {item!r}: expected FIELD=VALUE with FIELD one of: {', '.join(sorted(defaults))}")
        out[key] = from_text(text, defaults[key], f"{what} {key}")
    return out
