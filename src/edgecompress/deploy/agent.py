"""The device's side of a deployment: verify a release, switch ``current`` to it, roll back, report status.

Sent over ssh as ``python -c <this file> COMMAND ROOT ...`` (nothing of it needs to be on the device), so
at module level it imports only the standard library, like runner.py and package.py; ``verify`` loads the
package.py shipped inside the release it checks. Every command prints one JSON object; a failure prints
``{"error": ...}`` and exits 2. The install directory ROOT holds::

    releases/<sha256>/     one release: the model (named by its sha256), its .ecpk, sidecar, runner.py,
                           package.py, classify.py and MANIFEST.json (sha256 of every file)
    releases/.incoming-<sha256>/   an upload being verified; never pointed to
    current -> releases/<sha256>   switched by rename(2) of a new symlink: atomic
    previous -> releases/<sha256>  what ``rollback`` switches back to
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

MANIFEST = "MANIFEST.json"
INCOMING = ".incoming-"
SHA = re.compile(r"[0-9a-f]{64}")


class AgentError(Exception):
    """Something on the device is not as the host expects; the message says what."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _release_of(link: Path) -> str | None:
    """The release a ``current``/``previous`` symlink points to (its sha256), or None."""
    if not link.is_symlink():
        return None
    name = Path(os.readlink(link)).name
    return name if SHA.fullmatch(name) else None


def _point(root: Path, name: str, sha: str) -> None:
    """``root/name -> releases/<sha>``, atomically: a new symlink renamed over the old one."""
    tmp = root / f".{name}.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(f"releases/{sha}", tmp)
    os.replace(tmp, root / name)


def _manifest(release: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((release / MANIFEST).read_text())
        if not isinstance(manifest.get("files"), dict) or manifest.get("model") not in manifest["files"]:
            raise ValueError("no files or model entry")
        return manifest
    except (OSError, ValueError, AttributeError) as e:
        raise AgentError(f"{release / MANIFEST} is missing or unreadable ({e}); deploy again") from None


def _mismatches(release: Path, files: dict[str, str], skip: str | None = None) -> dict[str, list[str]]:
    """Files of ``release`` whose sha256 differs from ``files`` (``changed``) or that are gone (``missing``)."""
    changed, missing = [], []
    for name, want in sorted(files.items()):
        path = release / name
        if name == skip:
            continue
        if "/" in name or not path.is_file():
            missing.append(name)
        elif sha256_file(path) != want:
            changed.append(name)
    return {"changed": changed, "missing": missing}


def _writable(root: Path) -> bool:
    """Whether ``root`` (or the nearest folder above it that exists) can be written, creating nothing."""
    p = root
    while not p.exists() and p != p.parent:
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def status(root: Path) -> dict[str, Any]:
    """Read only: the current and previous releases and whether current's files match its manifest."""
    cur, prev = _release_of(root / "current"), _release_of(root / "previous")
    out: dict[str, Any] = {"current": cur, "previous": prev, "writable": _writable(root),
                           "changed": [], "missing": []}
    if cur is not None:
        release = root / "releases" / cur
        out.update(_mismatches(release, _manifest(release)["files"]) if release.is_dir()
                   else {"missing": [str(release)]})
    return out


def prepare(root: Path, sha: str) -> dict[str, Any]:
    """A fresh, empty ``releases/.incoming-<sha>`` to upload into, with the status of ``root``; nothing when
    ``sha`` is current and intact already (``unchanged``)."""
    before = status(root)
    if before["current"] == sha and not before["changed"] and not before["missing"]:
        return {**before, "unchanged": True}
    incoming = root / "releases" / f"{INCOMING}{sha}"
    try:
        incoming.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(incoming, ignore_errors=True)  # an upload an earlier, interrupted deploy left
        incoming.mkdir()
    except OSError as e:
        raise AgentError(f"cannot write the install directory {root} ({e.strerror}); make it writable for this "
                         f"user, or choose another dir") from None
    return {**before, "incoming": str(incoming)}


def verify(root: Path, sha: str) -> dict[str, Any]:
    """Unpack the uploaded package with the package.py sent beside it and check every file's sha256:
    the model must be exactly ``sha`` (what the host built), the rest what MANIFEST.json lists."""
    incoming = root / "releases" / f"{INCOMING}{sha}"
    manifest = _manifest(incoming)
    model = manifest["model"]
    bad = [n for names in _mismatches(incoming, manifest["files"], skip=model).values() for n in names]
    if bad:
        raise AgentError(f"the upload of {', '.join(bad)} does not match what the host sent (sha256); "
                         f"nothing was switched")
    spec = importlib.util.spec_from_file_location("edgecompress_package", incoming / "package.py")
    package = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(package)  # type: ignore[union-attr]
    try:
        package.unpack_file(incoming / f"{model}.ecpk", incoming / model)
    except package.PackageError as e:
        raise AgentError(f"the uploaded {model}.ecpk does not unpack: {e}; nothing was switched") from None
    got = sha256_file(incoming / model)
    if got != sha or manifest["files"].get(model) != sha:
        raise AgentError(f"{model} unpacked on the device has sha256 {got[:16]}..., not the built {sha[:16]}...; "
                         f"nothing was switched")
    return {"verified": sha, "model": model}


def activate(root: Path, sha: str) -> dict[str, Any]:
    """Move the verified upload to ``releases/<sha>``, point ``previous`` at the old current and ``current``
    at it, and remove releases that are neither (a board keeps two models, not every one ever sent)."""
    releases = root / "releases"
    incoming, final = releases / f"{INCOMING}{sha}", releases / sha
    old = _release_of(root / "current")
    (incoming / "smoke.npz").unlink(missing_ok=True)
    if final.exists():  # the same model sent again (e.g. over a hand-edited copy): replace it whole
        aside = releases / f".old-{sha}-{os.getpid()}"
        os.rename(final, aside)
        os.rename(incoming, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(incoming, final)
    if old is not None and old != sha:
        _point(root, "previous", old)
    _point(root, "current", sha)
    keep = {sha, _release_of(root / "previous")}
    for p in releases.iterdir():
        if p.is_dir() and SHA.fullmatch(p.name) and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
    return {"current": sha, "previous": _release_of(root / "previous")}


def discard(root: Path, sha: str) -> dict[str, Any]:
    """Remove an upload that failed its checks; ``current`` was never touched."""
    shutil.rmtree(root / "releases" / f"{INCOMING}{sha}", ignore_errors=True)
    return {"discarded": sha}


def rollback(root: Path) -> dict[str, Any]:
    """Swap ``current`` and ``previous`` (a second rollback undoes the first)."""
    cur, prev = _release_of(root / "current"), _release_of(root / "previous")
    if prev is None or not (root / "releases" / prev).is_dir():
        raise AgentError(f"{root} has no previous release to roll back to (current: {cur or 'none'})")
    _point(root, "current", prev)
    if cur is not None:
        _point(root, "previous", cur)
    return {"current": prev, "previous": cur}


COMMANDS: dict[str, Callable[..., dict[str, Any]]] = {
    "status": status, "prepare": prepare, "verify": verify, "activate": activate, "discard": discard,
    "rollback": rollback}


def main(argv: list[str]) -> int:
    try:
        if not argv or argv[0] not in COMMANDS or len(argv) < 2:
            raise AgentError(f"usage: agent.py {{{','.join(COMMANDS)}}} ROOT [SHA256]")
        args: list[Any] = [Path(argv[1])]
        if len(argv) > 2:
            if not SHA.fullmatch(argv[2]):
                raise AgentError(f"{argv[2]!r} is not a sha256")
            args.append(argv[2])
        result = COMMANDS[argv[0]](*args)
    except (AgentError, OSError, ValueError, KeyError) as e:
        print(json.dumps({"error": str(e) if isinstance(e, AgentError) else f"{type(e).__name__}: {e}"}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
