"""Where a target deploys: the ``deploy:`` section of a profile (its devices and how a rollout runs).

``device:`` stays the one device that build and check measure on; ``deploy.devices`` are the boards that
get the chosen model installed. Each is checked by the same rules as ``device:`` (``DeviceSpec``: an
``ssh://user@host[:port]`` URL whose user and host cannot read as ssh options, one-word python, a plain
absolute directory), so a deploy list can never smuggle an option or a shell word onto a command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgecompress.deploy.devices import DeviceSpec
from edgecompress.deploy.fields import FieldError, bounded, integer

DEVICE_KEYS = ("url", "key_file", "known_hosts", "python", "dir", "timeout", "connect_timeout")
DEPLOY_KEYS = ("devices", "canary", "parallel", "min_agreement", "smoke_images")
DEFAULT_DIR = "/opt/edgecompress"


@dataclass(frozen=True)
class FleetDevice:
    """One device a target deploys to: its SSH settings (``spec``; ``spec.work_dir`` is the install dir)."""

    spec: DeviceSpec
    index: int  # its place in deploy.devices, for messages

    @property
    def dir(self) -> str:
        return self.spec.work_dir

    @property
    def id(self) -> str:
        """URL and install dir: two dirs on one host are two devices (``ssh://pi@cam1:22/opt/edgecompress``)."""
        return f"{self.spec.url}{self.dir.rstrip('/')}"

    def field(self, name: str) -> str:
        return f"deploy.devices[{self.index}].{name}"


@dataclass(frozen=True)
class DeploySpec:
    """The devices and the rollout: canary devices first, then waves of ``parallel``; each device must agree
    with the host on >= ``min_agreement`` of ``smoke_images`` seeded validation images before it switches."""

    devices: tuple[FleetDevice, ...]
    canary: int = 1  # devices updated (and proven) alone before the rest
    parallel: int = 2  # devices prepared at once after the canary; a wave switches only when all of it passed
    min_agreement: float = 0.99  # top-1 agreement with the host's run of the same file on the smoke images
    smoke_images: int = 200  # 200 images: 99% allows at most 2 disagreements (rounding, another runtime build)

    def __post_init__(self) -> None:
        if not self.devices:
            raise FieldError("devices", "is empty; list at least one device, e.g. [{url: ssh://pi@cam1, "
                                        "dir: /opt/edgecompress}]")
        integer("canary", self.canary, 1)
        if self.canary > len(self.devices):
            raise FieldError("canary", f"{self.canary} is more than the {len(self.devices)} devices listed")
        integer("parallel", self.parallel, 1)
        bounded("min_agreement", self.min_agreement, 0, 1, "a fraction between 0 and 1 (e.g. 0.99)")
        if self.min_agreement is None:
            raise FieldError("min_agreement", "must be a fraction between 0 and 1 (e.g. 0.99)")
        integer("smoke_images", self.smoke_images, 1)
        seen: dict[str, int] = {}
        for d in self.devices:
            if d.id in seen:
                raise FieldError(f"devices[{d.index}]", f"{d.id} is listed twice (also devices[{seen[d.id]}]); "
                                                        f"give each device its own url or dir")
            seen[d.id] = d.index

    def find(self, device: str) -> list[FleetDevice]:
        """The devices ``device`` names: an exact id, or a URL (all of its dirs)."""
        return [d for d in self.devices if device in (d.id, d.spec.url)]


def _device(i: int, value: Any) -> FleetDevice:
    where = f"deploy.devices[{i}]"
    if isinstance(value, str):
        value = {"url": value}
    if not isinstance(value, dict):
        raise FieldError(where, f"{value!r} must be a mapping with keys {', '.join(DEVICE_KEYS)}")
    for k in value:
        if k not in DEVICE_KEYS:
            raise FieldError(f"{where}.{k}", f"unknown key; allowed keys: {', '.join(DEVICE_KEYS)}")
    if value.get("url") is None:
        raise FieldError(f"{where}.url", "is required, e.g. url: ssh://pi@10.0.0.7")
    kw = {("work_dir" if k == "dir" else k): v for k, v in value.items()}
    kw.setdefault("work_dir", DEFAULT_DIR)
    try:
        spec = DeviceSpec(**kw)
    except FieldError as e:
        name = "dir" if e.field_name == "work_dir" else e.field_name
        raise FieldError(f"{where}.{name}", e.detail) from None
    if spec.is_local:
        raise FieldError(f"{where}.url", "'local' cannot be deployed to; give ssh://user@host[:port] "
                                         "(this machine: ssh://$USER@127.0.0.1)")
    return FleetDevice(spec, i)


def parse_deploy(value: Any) -> DeploySpec | None:
    """The profile's ``deploy:`` mapping (None: the target deploys nowhere); FieldErrors name deploy.*."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldError("deploy", f"must be a mapping with keys {', '.join(DEPLOY_KEYS)}")
    for k in value:
        if k not in DEPLOY_KEYS:
            raise FieldError(f"deploy.{k}", f"unknown key; allowed keys: {', '.join(DEPLOY_KEYS)}")
    devices = value.get("devices")
    if not isinstance(devices, list):
        raise FieldError("deploy.devices", f"{devices!r} must be a list of devices, e.g. "
                                           f"[{{url: ssh://pi@cam1, dir: /opt/edgecompress}}]")
    rest = {k: v for k, v in value.items() if k != "devices"}
    try:
        return DeploySpec(devices=tuple(_device(i, d) for i, d in enumerate(devices)), **rest)
    except FieldError as e:
        raise (e if e.field_name.startswith("deploy") else e.within("deploy")) from None
