"""Output directories that appear whole or not at all (the directory counterpart of ``fileio.atomic_path``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; restored at once
    os.umask(mask)
    return mask


def replace_dir(src: str | Path, out: str | Path) -> None:
    """Replace directory ``out`` by the complete directory ``src`` (same filesystem: a rename).

    Across filesystems ``src`` is first copied beside ``out`` as ``.<out>.tmp``, the only moment a
    killed process can leave something behind (the next call removes it).
    """
    src, out = Path(src), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(src, 0o777 & ~_umask())  # mkdtemp makes 0700; an output directory is like any other
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.rename(src, tmp)
    except OSError:  # another filesystem (EXDEV)
        shutil.copytree(src, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
