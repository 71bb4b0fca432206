"""``to_label.csv``: the list ``select`` writes, a person fills in (in a spreadsheet) and ``add-labels`` reads.

The writer (``format_selection``) and the reader (``read_labelled``) live side by side so the two cannot
drift. Text that comes from outside (pool file names, class names) is escaped against CSV injection
(OWASP "CSV Injection"): a cell that starts with ``= + - @``, a tab or a carriage return is a formula to
a spreadsheet, so it is written with a leading ``'``, which spreadsheets show as text and drop from the
value. The reader undoes it, and also accepts the name unescaped (what a spreadsheet writes back after
saving the file), so a pool file named ``=2+5.png`` is found either way.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from edgecompress.errors import EdgeCompressError

COLUMNS = ("file", "rank", "score", "guess", "confidence", "label")
_FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r", "\n")
_ESCAPE = "'"
_FIX = "give the list `edgecompress select` wrote, its label column filled in (from a spreadsheet: save as CSV UTF-8)"


def escape_cell(text: str) -> str:
    """``text`` safe to open in a spreadsheet; ``unescape_cell`` gives it back exactly."""
    # A leading ' is itself escaped where it would otherwise be read back as an escape.
    if text.startswith(_FORMULA_LEAD) or (text.startswith(_ESCAPE) and text[1:].startswith(_FORMULA_LEAD + (_ESCAPE,))):
        return _ESCAPE + text
    return text


def unescape_cell(text: str) -> str:
    """The original of an ``escape_cell`` result (text never escaped comes back unchanged)."""
    if text.startswith(_ESCAPE) and text[1:].startswith(_FORMULA_LEAD + (_ESCAPE,)):
        return text[1:]
    return text


def format_selection(rows: Iterable[tuple[str, int, float, str, float]]) -> str:
    """The CSV text of the chosen images, most wanted first: (file, rank, score, guess, confidence) each,
    with an empty ``label`` column for the person."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for name, rank, score, guess, confidence in rows:
        w.writerow([escape_cell(name), rank, f"{score:.6g}", escape_cell(guess), f"{confidence:.4f}", ""])
    return buf.getvalue()


@dataclass(frozen=True)
class LabelledRow:
    """One row of a filled-in list whose ``label`` is set: the pool image's name as ``select`` knew it
    (unescaped), the class the person gave it and the CSV line it came from (for messages)."""

    line: int
    file: str
    label: str


def read_labelled(path: str | Path) -> list[LabelledRow]:
    """The labelled rows of the filled-in list ``path`` (rows whose label is blank stay in the pool)."""
    path = Path(path)
    if not path.is_file():
        raise EdgeCompressError(f"{path} not found; `edgecompress select` writes it")
    rows: list[LabelledRow] = []
    reader = None
    try:
        # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark before the header.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ("file", "label") if c not in header]
            if missing:
                raise EdgeCompressError(f"{path} has no {' or '.join(repr(c) for c in missing)} column (its header: "
                                        f"{', '.join(map(repr, header)) or 'none'}); {_FIX}")
            for r in reader:
                line = reader.line_num
                label = (r.get("label") or "").strip()
                if not label:
                    continue
                name = r.get("file") or ""
                if not name.strip():
                    raise EdgeCompressError(f"{path} line {line}: label {label!r} but no file; name the pool image "
                                            f"in the file column or clear the label")
                rows.append(LabelledRow(line, unescape_cell(name), label))
    except UnicodeDecodeError as e:
        raise EdgeCompressError(f"{path} is not UTF-8 text ({e.reason}); {_FIX}") from None
    except csv.Error as e:
        where = f" line {reader.line_num}" if reader is not None else ""
        raise EdgeCompressError(f"{path}{where}: not a readable CSV ({e}); {_FIX}") from None
    return rows
