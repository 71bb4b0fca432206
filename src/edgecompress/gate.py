"""The check stage's work, shared with ``edgecompress check``: measure a target, write its reports
(JSON for dvc metrics, markdown for people), print, and (by hand) fail on a missed budget.

In ``dvc repro`` the check stages only record; the report stage gates after writing the summary,
so a failed target is never left listed as passing in a stale ``reports/summary.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecompress.deploy.check import gate_error, render_markdown, run_target_check
from edgecompress.fileio import write_json, write_text


def check_and_report(target: str | Path, artifacts: str | Path, testset: str | Path | None, out_json: str | Path,
                     out_md: str | Path, strict: bool, device: Any = None,
                     teacher: str | Path | None = None, gate: bool = True) -> dict[str, Any]:
    """Measure, write JSON + markdown, print, then (``gate``) raise on a missed budget.

    The reports are written before the gate raises: a failed budget is when the user needs them.
    """
    result = run_target_check(target, artifacts, testset, strict, device, teacher)
    md = render_markdown(result)
    write_json(out_json, result)
    write_text(out_md, md)
    print(md)
    failed = gate_error(result, out_md)
    if failed and gate:
        raise failed
    return result
