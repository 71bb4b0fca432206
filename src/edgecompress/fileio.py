"""Files in and out: atomic writes (an output appears complete or not at all, with the usual
permissions), and readers that turn a missing or corrupt JSON/npz file into one clear error."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgecompress.errors import EdgeCompressError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; an output is a file like any other: 0666 less the umask (0644 by default).
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; restored at once
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(o: Any) -> Any:
    # numpy scalars/arrays and Paths show up in metrics; make them plain JSON.
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read JSON, turning a missing/corrupt file into a clear EdgeCompressError."""
    path = Path(path)
    if not path.exists():
        raise EdgeCompressError(f"{what} {path} does not exist; run the stage that produces it (dvc repro)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeCompressError(f"{what} {path} is not valid JSON ({e}); delete it and re-run dvc repro") from e
    except OSError as e:
        raise EdgeCompressError(f"{what} {path} cannot be read ({e})") from e


def read_npz(path: str | Path, keys: tuple[str, ...], what: str = "file",
             fix: str = "delete it and re-run dvc repro") -> dict[str, Any]:
    """The arrays ``keys`` of an .npz file (no pickles); a missing, truncated or foreign file is one
    clear EdgeCompressError naming the file, what it is and ``fix``."""
    import zipfile
    import zlib

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise EdgeCompressError(f"{what} {path} does not exist; {fix}")
    try:
        with open(path, "rb") as fh:  # our handle: np.load leaks its own when the zip is corrupt
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise EdgeCompressError(f"{what} {path} is a single .npy array, not an .npz archive; {fix}")
            with z:
                missing = [k for k in keys if k not in z.files]
                if missing:
                    raise EdgeCompressError(f"{what} {path} lacks arrays {missing} (it has {sorted(z.files)}); {fix}")
                return {k: z[k] for k in keys}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise EdgeCompressError(f"{what} {path} is unreadable or corrupt ({type(e).__name__}: {e}); {fix}") from None
