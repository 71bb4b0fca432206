"""One exception type for user-facing failures, and the wrapper that prints it cleanly."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

from edgecompress.log import get_logger

T = TypeVar("T")


class EdgeCompressError(Exception):
    """A failure the user can fix: the message names the file/field and the fix."""


def friendly_main(fn: Callable[..., T]) -> Callable[..., T]:
    """Run a stage/CLI ``main`` so an EdgeCompressError prints one line and exits 1 (no traceback).

    A ``main`` that returns a string (a stage's key result) gets one closing line with its wall time:
    ``[distill] done in 312 s: test accuracy 0.9243`` (through the stage's logger, so ``-q`` hides it).
    The error line stays a plain print: ``edgecompress: error: ...`` on stderr is the CLI's contract.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.monotonic()
        try:
            result = fn(*args, **kwargs)
        except EdgeCompressError as e:
            print(f"edgecompress: error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        if isinstance(result, str):
            stage = Path(sys.argv[0]).stem
            get_logger(stage).info(f"done in {time.monotonic() - start:.0f} s: {result}")
        return result

    return wrapper
