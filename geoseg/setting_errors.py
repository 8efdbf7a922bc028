"""Pydantic's validation errors in a user's words: what a setting should be, and what it got.

``inference.halo: should be at least 0 or 'auto', not -5`` instead of pydantic's
``Input should be greater than or equal to 0`` (one branch of the union only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_MAPPING = "a mapping of settings (name: value)"
_KINDS = {
    "int_parsing": "a whole number", "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number", "float_type": "a number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "text",
    "dict_type": _MAPPING, "model_type": _MAPPING, "model_attributes_type": _MAPPING,
}
_BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
           "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}


def shown(value: Any) -> str:
    """A value as the message shows it: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _wanted(err: Any) -> str | None:
    """What one error says the value should be, or None where pydantic's words stay."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _KINDS:
        return _KINDS[kind]
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"{words} {ctx.get(key)}"
    if kind == "multiple_of":
        return f"a multiple of {ctx.get('multiple_of')}"
    if kind in ("tuple_type", "list_type"):
        value = err.get("input")
        return f"a list, e.g. [{value}]" if isinstance(value, str | int | float) else \
            "a list, e.g. [a, b]"
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", ""))
        return f"one of {expected}" if " or " in expected else expected or None
    return None


def explain(errors: Sequence[Any]) -> str:
    """One message for the errors of one setting (a union reports one per branch): our own
    validators' message as it is, 'is required', or 'should be X or Y, not VALUE'; pydantic's
    words for kinds not listed here."""
    first = errors[0]
    own = next((e for e in errors if e["type"] in ("value_error", "assertion_error")), None)
    if own is not None:
        return str(own["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] == "missing":
        return "is required"
    wanted = list(dict.fromkeys(w for e in errors if (w := _wanted(e)) is not None))
    if not wanted:
        return str(first["msg"])
    return f"should be {' or '.join(wanted)}, not {shown(first.get('input'))}"
