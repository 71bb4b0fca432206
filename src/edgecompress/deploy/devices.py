"""Where a check runs: this machine, an SSH device (``ssh://user@host[:port]``) and its options, or an
emulated one (``emulate:aarch64``: a Debian root for that instruction set run through qemu, see
``deploy.emulate``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Mapping

from edgecompress.deploy.fields import FieldError, build, integer, opt_str, positive
from edgecompress.errors import EdgeCompressError

# ssh://user@host[:port]; the user is required so a profile never depends on whoever runs dvc.
# User and host start with a letter/digit so neither can be read as an ssh option ("-oProxyCommand").
SSH_DEVICE = re.compile(r"^ssh://(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]*)@(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*)"
                        r"(:(?P<port>\d{1,5}))?$")

# emulate:<arch>; the arches edgecompress can prepare a device root for (``edgecompress device prepare``),
# with Debian's name for each. armv7 is 32-bit ARM (armhf: Raspberry Pi OS 32-bit, iot-camera's Cortex-A7).
EMULATE_DEVICE = re.compile(r"^emulate:(?P<arch>.*)$")
EMULATED_ARCHES = {"aarch64": "arm64", "armv7": "armhf"}
DEVICE_FORMS = "'local' or 'ssh://user@host[:port]' (or 'emulate:aarch64')"


def unknown_arch(arch: str) -> str:
    """The one-line complaint about an arch edgecompress cannot emulate."""
    return f"unknown arch {arch!r}; edgecompress can emulate: {', '.join(EMULATED_ARCHES)}"

# Remote work_dir: plain characters only, so the path means the same to the remote shell, scp's
# SFTP and legacy modes alike (quoting differs between them).
SAFE_REMOTE_DIR = re.compile(r"^/[A-Za-z0-9._/-]*$")


DEVICE_KEYS = ("url", "key_file", "known_hosts", "python", "work_dir", "timeout", "connect_timeout")


@dataclass(frozen=True)
class DeviceSpec:
    """Where the check runs: ``local`` (this machine), an SSH host that runs the runner itself, or
    ``emulate:<arch>`` (this machine, under qemu, in a root prepared by ``edgecompress device prepare``)."""

    url: str = "local"  # "local", "ssh://user@host[:port]" or "emulate:<arch>"
    key_file: str | None = None  # private key for ssh -i; None: ssh's own defaults/agent
    known_hosts: str | None = None  # UserKnownHostsFile; None: ~/.ssh/known_hosts
    python: str = "python3"  # interpreter on the device (needs numpy + the runtime)
    work_dir: str = "/tmp/edgecompress"  # a unique sub-directory is created per run and removed after
    timeout: float = 120.0  # seconds for the whole remote run (copy, run, clean up)
    connect_timeout: int = 10  # ssh ConnectTimeout, seconds

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not (self.url == "local" or SSH_DEVICE.match(self.url)
                                                 or EMULATE_DEVICE.match(self.url)):
            raise FieldError("url", f"{self.url!r} is not {DEVICE_FORMS}")
        if self.emulated and self.arch not in EMULATED_ARCHES:
            raise FieldError("url", f"{self.url!r}: {unknown_arch(str(self.arch))}")
        port = self._match("port")
        if port is not None and not 1 <= int(port) <= 65535:
            raise FieldError("url", f"{self.url!r}: port {port} must be between 1 and 65535")
        opt_str("key_file", self.key_file)
        opt_str("known_hosts", self.known_hosts)
        # One word: it is quoted as a single argument on the remote shell.
        if not isinstance(self.python, str) or not re.fullmatch(r"[^\s'\"]+", self.python):
            raise FieldError("python", f"{self.python!r} must be one interpreter name or path without spaces, "
                                       "e.g. python3 or /home/pi/venv/bin/python")
        if not isinstance(self.work_dir, str) or not SAFE_REMOTE_DIR.match(self.work_dir) or self.work_dir == "/":
            raise FieldError("work_dir", f"{self.work_dir!r} must be an absolute path of letters, digits, "
                                         "'.', '_', '-' and '/', e.g. /tmp/edgecompress")
        positive("timeout", self.timeout)
        integer("connect_timeout", self.connect_timeout, 1)

    def _match(self, group: str) -> str | None:
        m = SSH_DEVICE.match(self.url)
        return m.group(group) if m else None

    @property
    def is_local(self) -> bool:
        return self.url == "local"

    @property
    def emulated(self) -> bool:
        """Runs here, under qemu, in a prepared root of another instruction set: its timings are not the device's."""
        return self.url.startswith("emulate:")

    @property
    def arch(self) -> str | None:
        """The emulated instruction set (``emulate:aarch64`` -> ``aarch64``); None for a real device."""
        m = EMULATE_DEVICE.match(self.url)
        return m.group("arch") if m else None

    @property
    def user(self) -> str | None:
        return self._match("user")

    @property
    def host(self) -> str | None:
        return self._match("host")

    @property
    def port(self) -> int | None:
        port = self._match("port")
        return int(port) if port else None

    def __str__(self) -> str:
        # Old code printed profile.device as the string; keep f-strings showing the url.
        return self.url


def parse_device(value: Any) -> DeviceSpec:
    """``local`` / ``ssh://...`` / ``emulate:<arch>``, or a mapping with DEVICE_KEYS (or ``{emulate: <arch>}``)
    -> DeviceSpec (FieldErrors name device.*)."""
    if isinstance(value, DeviceSpec):
        return value
    if isinstance(value, str):
        try:
            return DeviceSpec(url=value)
        except FieldError as e:
            raise FieldError("device", e.detail) from None
    if not isinstance(value, dict):
        raise FieldError("device", f"{value!r} must be 'local', 'ssh://user@host[:port]' or a mapping with "
                                   f"keys {', '.join(DEVICE_KEYS)} (or 'emulate:aarch64')")
    if "emulate" in value:  # {emulate: aarch64}: the short form of url: emulate:aarch64
        if len(value) != 1:
            raise FieldError("device.emulate", "stands alone: {emulate: aarch64} takes no other keys")
        return parse_device(f"emulate:{value['emulate']}")
    for k in value:
        if k not in DEVICE_KEYS:
            raise FieldError(f"device.{k}", f"unknown key; allowed keys: {', '.join(DEVICE_KEYS)}")
    if value.get("url") is None:
        raise FieldError("device.url", "is required in the mapping form, e.g. url: ssh://pi@10.0.0.7")
    return build(DeviceSpec, "device", dict(value))


def resolve_device(base: DeviceSpec, override: DeviceSpec | str | Mapping[str, Any] | None) -> DeviceSpec:
    """The device a check really uses: ``override`` (a by-hand --device) wins over the profile's.

    A string replaces only the url, so the profile's key, timeout, python and work_dir still apply;
    a mapping replaces the fields it names; a DeviceSpec replaces everything.
    """
    if override is None:
        return base
    if isinstance(override, DeviceSpec):
        return override
    fields = {"url": override} if isinstance(override, str) else dict(override)
    for k in fields:
        if k not in DEVICE_KEYS:
            raise EdgeCompressError(f"device override: unknown field {k!r}; allowed: {', '.join(DEVICE_KEYS)}")
    try:
        dev = replace(base, **fields)
    except FieldError as e:
        raise EdgeCompressError(f"device override: {e}") from None
    extra = [k for k in ("key_file", "known_hosts", "python") if fields.get(k) is not None]
    if (dev.is_local or dev.emulated) and extra:
        raise EdgeCompressError(f"device override: {', '.join(extra)} applies only to an ssh device; "
                                f"also give --device ssh://user@host[:port]")
    return dev


@dataclass(frozen=True)
class AgreementSpec:
    """A second device whose kernels are the ones that ship (``emulate:aarch64``, or a board over SSH): each
    candidate's class probabilities there are compared with this machine's on the same images (top-1 agreement,
    largest probability difference), while latency stays with ``device``. ``samples``: the validation images a
    build compares each candidate that meets every other budget on (None: all the pool's); the check compares
    the shipped artifact on its own test images."""

    device: DeviceSpec
    samples: int | None = 1000  # emulated float kernels take 20-700 ms an image: 1000 bound a build's cost

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "device", parse_device(self.device))
        except FieldError as e:
            raise FieldError("device", e.detail) from None
        if self.device.is_local:
            raise FieldError("device", "'local' compares this machine with itself; give the device whose kernels "
                                       "ship, e.g. emulate:aarch64 or ssh://pi@10.0.0.7")
        integer("samples", self.samples, 10, optional=True)
