"""Reading params.yaml: one section per stage, with errors that name the file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgecompress.errors import EdgeCompressError


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Parse the params file; a missing file or YAML error names the file."""
    path = Path(path)
    if not path.exists():
        raise EdgeCompressError(f"{path} not found; run from the repository root (where dvc.yaml is)")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise EdgeCompressError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(params, dict):
        raise EdgeCompressError(f"{path} must be a mapping of stage sections, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], name: str, path: str | Path = "params.yaml") -> dict[str, Any]:
    """The ``name`` section as a dict (missing section -> {} so defaults apply)."""
    sec = params.get(name) or {}
    if not isinstance(sec, dict):
        raise EdgeCompressError(f"{path}: section {name!r} must be a mapping, got {type(sec).__name__}")
    return dict(sec)
