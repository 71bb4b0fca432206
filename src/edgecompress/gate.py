"""The check stage's last step, shared with ``edgecompress check``: measure a target, write its
reports (JSON for dvc metrics, markdown for people), print, and fail the pipeline on a missed budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecompress.deploy.check import gate_error, render_markdown, run_target_check
from edgecompress.fileio import write_json, write_text


def check_and_report(target: str | Path, artifacts: str | Path, testset: str | Path | None, out_json: str | Path,
                       out_md: str | Path, strict: bool, device: Any = None,
                       teacher: str | Path | None = None) -> dict[str, Any]:
    """The check stage (and ``edgecompress check``): measure, write JSON + markdown, print, then gate.

    The reports are written before the gate raises: a failed budget is when the user needs them.
    """
    result = run_target_check(target, artifacts, testset, strict, device, teacher)
    md = render_markdown(result)
    write_json(out_json, result)
    write_text(out_md, md)
    print(md)
    failed = gate_error(result, out_md)
    if failed:
        raise failed
    return result
