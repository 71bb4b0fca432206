"""Files as wholes: output directories that appear complete or not at all (the directory counterpart of
``fileio.atomic_path``), and a file's content hash (what records and caches key on)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


@contextmanager
def whole_dir(out: str | Path) -> Iterator[Path]:
    """A scratch directory to fill that replaces directory ``out`` when the block completes; if the block
    raises, ``out`` is left as it was and the scratch is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # beside out: replace_dir renames
    try:
        yield scratch
        replace_dir(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
