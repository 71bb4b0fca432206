"""The deployment ledger ``deploy/<target>.json``: which device runs which artifact, and every step taken.

Written whole and atomically after each deploy or rollback (a reader never sees half a file); ``status``
compares what each device reports with it. One reader and one writer, next to the records.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import read_json, write_json


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit(cwd: str | Path = ".") -> str | None:
    """HEAD of the repository the command runs in (with ``+dirty`` for uncommitted changes), or None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


@dataclass(frozen=True)
class Event:
    """One step on one device: a deploy or a rollback, and how it ended."""

    when: str
    action: str  # deploy | rollback
    device: str  # the device id (url + dir)
    outcome: str  # switched | unchanged | failed | unreachable | not tried | not switched | rolled back
    sha256: str | None  # the release the step was about
    artifact: str | None = None  # the build's chosen candidate, e.g. student/int8.tflite
    commit: str | None = None
    smoke: dict[str, Any] | None = None  # agreement (+ Wilson interval), images, latency per image on both sides
    detail: str | None = None  # why it failed, or what was switched from

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, d: Any) -> "Event":
        if not isinstance(d, dict) or not all(k in d for k in ("when", "action", "device", "outcome", "sha256")):
            raise ValueError(f"event {d!r} lacks when/action/device/outcome/sha256")
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class DeviceState:
    """What the ledger believes a device runs."""

    current: str | None
    previous: str | None
    artifact: str | None
    updated: str

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, d: Any) -> "DeviceState":
        if not isinstance(d, dict) or "current" not in d or "updated" not in d:
            raise ValueError(f"device entry {d!r} lacks current/updated")
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class Ledger:
    target: str
    devices: dict[str, DeviceState] = field(default_factory=dict)
    events: tuple[Event, ...] = ()

    def record(self, event: Event, state: DeviceState | None) -> "Ledger":
        """This ledger with ``event`` appended and, when given, the device's new state."""
        devices = dict(self.devices)
        if state is not None:
            devices[event.device] = state
        return replace(self, devices=devices, events=(*self.events, event))

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "devices": {k: v.to_json() for k, v in sorted(self.devices.items())},
                "events": [e.to_json() for e in self.events]}

    @classmethod
    def from_json(cls, d: Any) -> "Ledger":
        if not isinstance(d, dict) or not isinstance(d.get("devices"), dict) or not isinstance(d.get("events"), list):
            raise ValueError("not an object with target, devices and events")
        return cls(str(d.get("target")), {k: DeviceState.from_json(v) for k, v in d["devices"].items()},
                   tuple(Event.from_json(e) for e in d["events"]))


def read_ledger(path: str | Path, target: str) -> Ledger:
    """The ledger at ``path``; an empty one when there is none yet."""
    path = Path(path)
    if not path.exists():
        return Ledger(target)
    try:
        ledger = Ledger.from_json(read_json(path, "deployment ledger"))
    except (ValueError, TypeError) as e:
        raise EdgeCompressError(f"{path}: not a deployment ledger ({e}); restore it from git") from None
    if ledger.target != target:
        raise EdgeCompressError(f"{path} is the ledger of target {ledger.target!r}, not {target!r}; "
                                f"give --ledger deploy/{target}.json")
    return ledger


def write_ledger(path: str | Path, ledger: Ledger) -> None:
    """Write the whole ledger atomically."""
    write_json(path, ledger.to_json())
