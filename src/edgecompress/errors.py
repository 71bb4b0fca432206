"""One exception type for user-facing failures, and the wrapper that prints it cleanly."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class EdgeCompressError(Exception):
    """A failure the user can fix: the message names the file/field and the fix."""


def friendly_main(fn: Callable[..., T]) -> Callable[..., T]:
    """Run a stage/CLI ``main`` so an EdgeCompressError prints one line and exits 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except EdgeCompressError as e:
            print(f"edgecompress: error: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper
