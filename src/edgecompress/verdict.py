"""Record, then fail: the one way a stage or the CLI ends on a failed verdict.

``record_then_fail`` writes first and raises after, so the reports exist when the user needs them
most. ``check_and_report`` is the check stage's work, shared with ``edgecompress check``: measure a
target, write its reports (JSON for dvc metrics, markdown for people), print, and (by hand) fail on a
missed budget. In ``dvc repro`` the check stages only record; the report stage's pipeline gate fails
after writing the summary, so a failed target is never left listed as passing in a stale
``reports/summary.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgecompress.deploy.check import CheckResult, run_target_check
from edgecompress.deploy.check_report import failure, render_markdown
from edgecompress.fileio import write_json, write_text


def record_then_fail(write: Callable[[], object], error: Exception | None) -> None:
    """Call ``write`` (the record and reports), then raise ``error`` if there is one."""
    write()
    if error is not None:
        raise error


def check_and_report(target: str | Path, artifacts: str | Path, testset: str | Path | None, out_json: str | Path,
                     out_md: str | Path, strict: bool, device: Any = None,
                     teacher: str | Path | None = None, fail: bool = True) -> CheckResult:
    """Measure, write JSON + markdown, print, then (``fail``) raise when the verdict is a failure."""
    result = run_target_check(target, artifacts, testset, strict, device, teacher)
    md = render_markdown(result)

    def write() -> None:
        write_json(out_json, result.to_json())
        write_text(out_md, md)
        print(md)

    record_then_fail(write, failure(result, out_md) if fail else None)
    return result
