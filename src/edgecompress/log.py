"""Logging for the stages and the CLI: every line on stderr, tagged with its logger's short name.

``get_logger("build").info("done")`` prints ``[build] done``; a warning prints ``[build] warning: ...``,
the shape the stages have always printed, so the same lines appear under ``dvc repro``, in a terminal
and in the tests. The handler is installed on first use (the package is an application: its stages
and CLI want their lines shown without setup code in each ``main``); ``set_verbosity`` backs the CLI's
``-q`` / ``-v``. The standalone on-device runner does not use this module: it is copied alone.
"""

from __future__ import annotations

import logging
import sys

ROOT = "edgecompress"


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a line is emitted (pytest swaps it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - logging's own attribute
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001 - StreamHandler.__init__ assigns it
        pass


class _Tagged(logging.Formatter):
    """``[tag] message``; ``[tag] warning: message`` / ``[tag] error: message`` (``tag``: the name after ``edgecompress.``)."""

    def format(self, record: logging.LogRecord) -> str:
        tag = record.name[len(ROOT) + 1:] if record.name.startswith(ROOT + ".") else record.name
        msg = record.getMessage()
        level = "error" if record.levelno >= logging.ERROR else "warning" if record.levelno >= logging.WARNING else ""
        if level and not msg.startswith(level):
            msg = f"{level}: {msg}"
        return f"[{tag}] {msg}"


def _root() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _Stderr) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(_Tagged())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False  # one copy of each line, whatever the host application configured
    return root


def get_logger(tag: str) -> logging.Logger:
    """The logger whose lines read ``[tag] ...`` (``tag``: the stage or module, e.g. ``build``, ``teacher``)."""
    _root()
    return logging.getLogger(f"{ROOT}.{tag}")


def set_verbosity(verbosity: int) -> None:
    """-1: warnings and errors only (``-q``); 0: progress lines (default); 1: debug detail too (``-v``)."""
    _root().setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
