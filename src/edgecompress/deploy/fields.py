"""Field errors and the small validators the target-profile dataclasses share.

A ``FieldError`` names one field; each enclosing section prefixes its own name (``within``) and
``load_target`` the file, so an error reads ``targets/pi.yaml: field runtime.threads: ...``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from edgecompress.errors import EdgeCompressError


class FieldError(EdgeCompressError):
    """A bad value in one field; ``load_target`` prefixes the file name and the section."""

    def __init__(self, field_name: str, detail: str) -> None:
        super().__init__(f"field {field_name}: {detail}")
        self.field_name = field_name
        self.detail = detail

    def within(self, section: str) -> FieldError:
        return FieldError(f"{section}.{self.field_name}", self.detail)


def one_of(name: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise FieldError(name, f"{value!r} is not one of {', '.join(allowed)}")


def opt_str(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise FieldError(name, f"{value!r} must be a non-empty string or null")


def integer(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    # bool is an int subclass in Python: `runs: yes` must not become 1.
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an integer or null" if optional else "an integer"
        raise FieldError(name, f"{value!r} must be {kind} >= {minimum}")
    if value < minimum:
        raise FieldError(name, f"{value!r} must be >= {minimum}")


def positive(name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(name, f"{value!r} must be a number > 0" + (" or null" if optional else ""))
    if not value > 0:
        raise FieldError(name, f"{value!r} must be > 0")
    if not math.isfinite(value):  # YAML's .inf: a budget or timeout that can never bind is a typo
        raise FieldError(name, f"{value!r} must be a finite number")


def bounded(name: str, value: Any, low: float, high: float, what: str) -> None:
    """None, or a number within [low, high] (NaN is not); ``what`` says what it must be, for the error."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise FieldError(name, f"{value!r} must be {what}")


def build(cls: type, section: str, kwargs: dict[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise e.within(section) from None
