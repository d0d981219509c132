"""Reading values out of untrusted JSON (model cards, side files) with errors that name the field.

A hand-edited or damaged file must give a sentence such as ``input.crop must be an integer
between 16 and 2048, got 'x'``, never a TypeError deep inside inference or a NaN in the answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from galaxy_core.base.config import GalaxyError

_MISSING: Any = object()
MAX_SHOWN = 60
MAX_MESSAGE = 300


class FieldError(GalaxyError):
    """A value in a JSON document has the wrong type or lies out of range; ``field`` names it."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field or message.split(" ", 1)[0]


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters: the one rule for how much of anything untrusted (a
    field, a parser's complaint, a URL) is repeated in a message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def shown(value: Any) -> str:
    """``repr`` cut to a readable length: a 50 MB field never lands whole in a message."""
    return clip(repr(value), MAX_SHOWN)


def section(values: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(values, Mapping):
        raise FieldError(f"{path or 'the document'} must be a JSON object, got {shown(values)}")
    return values


def _get(values: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
    if key in values and values[key] is not None:
        return values[key]
    if default is _MISSING:
        raise FieldError(f"{path}{key} is missing")
    return default


def number(values: Mapping[str, Any], key: str, path: str = "", *, low: float, high: float,
           default: Any = _MISSING, low_open: bool = False) -> float:
    """A finite number in [low, high] (or (low, high] with ``low_open``)."""
    value = _get(values, key, path, default)
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        bound = f"{'above' if low_open else 'at least'} {low:g} and at most {high:g}"
        raise FieldError(f"{path}{key} must be a finite number {bound}, got {shown(value)}")
    return float(value)


def integer(values: Mapping[str, Any], key: str, path: str = "", *, low: int, high: int,
            default: Any = _MISSING) -> int:
    value = _get(values, key, path, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise FieldError(f"{path}{key} must be an integer between {low:,} and {high:,}, got {shown(value)}")
    return value


def flag(values: Mapping[str, Any], key: str, path: str = "", *, default: Any = _MISSING) -> bool:
    value = _get(values, key, path, default)
    if not isinstance(value, bool):
        raise FieldError(f"{path}{key} must be true or false, got {shown(value)}")
    return value


def choice(values: Mapping[str, Any], key: str, path: str = "", *, options: Sequence[str],
           default: Any = _MISSING) -> str:
    value = _get(values, key, path, default)
    if value not in options:
        raise FieldError(f"{path}{key} must be {' or '.join(options)}, got {shown(value)}")
    return value


def text(values: Mapping[str, Any], key: str, path: str = "", *, default: Any = _MISSING,
         max_length: int = 10_000) -> str:
    value = _get(values, key, path, default)
    if not isinstance(value, str) or len(value) > max_length:
        raise FieldError(f"{path}{key} must be text of at most {max_length:,} characters, got {shown(value)}")
    return value


def numbers(values: Mapping[str, Any], key: str, path: str = "", *, length: int, low: float, high: float,
            low_open: bool = False) -> tuple[float, ...]:
    """A list of exactly ``length`` finite numbers, each within the bounds."""
    items = _get(values, key, path, _MISSING)
    if not isinstance(items, (list, tuple)) or len(items) != length:
        raise FieldError(f"{path}{key} must be a list of {length} numbers, got {shown(items)}")
    return tuple(number({f"{key}[{i}]": v}, f"{key}[{i}]", path, low=low, high=high, low_open=low_open)
                 for i, v in enumerate(items))


def rows(values: Mapping[str, Any], key: str, path: str = "", *, max_items: int = 100_000,
         default: Any = _MISSING) -> list[Any]:
    value = _get(values, key, path, default)
    if not isinstance(value, list) or len(value) > max_items:
        raise FieldError(f"{path}{key} must be a list of at most {max_items:,} entries, got {shown(value)}")
    return value
