"""Target profiles: which artifact runs on which hardware with which runtime, and its budgets.

A profile is a YAML file in targets/. ``load_target`` turns it into frozen dataclasses that are
validated at construction; every error names the file, the field, the bad value and what is
allowed, so a typo in a profile never silently turns into a default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from edgecompress.errors import EdgeCompressError

ARCHES = ("x86_64", "aarch64", "armv7l", "any")
FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "fp16", "int8")
ENGINES = ("onnxruntime", "litert")
ENGINE_FOR_FORMAT = {"onnx": "onnxruntime", "tflite": "litert"}
LATENCY_KEYS = ("p50", "p90", "p99", "mean")
# ssh://user@host[:port]; the user is required so a profile never depends on whoever runs dvc.
# User and host start with a letter/digit so neither can be read as an ssh option ("-oProxyCommand").
SSH_DEVICE = re.compile(r"^ssh://(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]*)@(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*)"
                        r"(:(?P<port>\d{1,5}))?$")
# Remote work_dir: plain characters only, so the path means the same to the remote shell, scp's
# SFTP and legacy modes alike (quoting differs between them).
SAFE_REMOTE_DIR = re.compile(r"^/[A-Za-z0-9._/-]*$")
DEVICE_KEYS = ("url", "key_file", "known_hosts", "python", "work_dir", "timeout", "connect_timeout")


class FieldError(EdgeCompressError):
    """A bad value in one field; ``load_target`` prefixes the file name and the section."""

    def __init__(self, field_name: str, detail: str) -> None:
        super().__init__(f"field {field_name}: {detail}")
        self.field_name = field_name
        self.detail = detail

    def within(self, section: str) -> FieldError:
        return FieldError(f"{section}.{self.field_name}", self.detail)


# --- small validators (shared by the dataclasses) ---------------------------------------------

def _one_of(name: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise FieldError(name, f"{value!r} is not one of {', '.join(allowed)}")


def _opt_str(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise FieldError(name, f"{value!r} must be a non-empty string or null")


def _int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    # bool is an int subclass in Python: `runs: yes` must not become 1.
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an integer or null" if optional else "an integer"
        raise FieldError(name, f"{value!r} must be {kind} >= {minimum}")
    if value < minimum:
        raise FieldError(name, f"{value!r} must be >= {minimum}")


def _positive(name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(name, f"{value!r} must be a number > 0" + (" or null" if optional else ""))
    if not value > 0:
        raise FieldError(name, f"{value!r} must be > 0")


# --- schema -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hardware:
    """What the profile's hardware looks like; used to tell a real measurement from a proxy."""

    arch: str = "any"
    cpu: str | None = None  # case-insensitive substring of the runner's cpu_model (or board)
    gpu: str | None = None  # any value requires an active GPU execution provider
    cores: int | None = None  # minimum logical cores

    def __post_init__(self) -> None:
        _one_of("arch", self.arch, ARCHES)
        _opt_str("cpu", self.cpu)
        _opt_str("gpu", self.gpu)
        _int("cores", self.cores, 1, optional=True)


@dataclass(frozen=True)
class ArtifactSpec:
    """Which export-stage artifact the target runs."""

    format: str
    precision: str

    def __post_init__(self) -> None:
        _one_of("format", self.format, FORMATS)
        _one_of("precision", self.precision, PRECISIONS)

    @property
    def filename(self) -> str:
        """Name inside the export directory, e.g. ``int8.tflite``."""
        return f"{self.precision}.{self.format}"


@dataclass(frozen=True)
class RuntimeSpec:
    """Runtime and its settings; ``providers`` is onnxruntime-only, ``xnnpack`` litert-only."""

    engine: str
    threads: int | None = None  # None: the runtime's own default
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    xnnpack: bool = True

    def __post_init__(self) -> None:
        _one_of("engine", self.engine, ENGINES)
        _int("threads", self.threads, 1, optional=True)
        if not isinstance(self.providers, tuple) or not self.providers:
            raise FieldError("providers", f"{self.providers!r} must be a non-empty list of provider names")
        for p in self.providers:
            # Catch "CUDA" / "cpu": onnxruntime wants the full class name.
            if not isinstance(p, str) or not p.endswith("ExecutionProvider"):
                raise FieldError("providers", f"{p!r} is not an onnxruntime provider name "
                                              "(e.g. CUDAExecutionProvider, CPUExecutionProvider)")
        if not isinstance(self.xnnpack, bool):
            raise FieldError("xnnpack", f"{self.xnnpack!r} must be true or false")


@dataclass(frozen=True)
class BenchSpec:
    """How the runner measures: warm-up, timed runs (capped by time), batch, accuracy subset."""

    warmup: int = 10
    runs: int = 100
    batch: int = 1
    max_seconds: float = 60.0
    accuracy_samples: int | None = None  # None: the whole test set

    def __post_init__(self) -> None:
        _int("warmup", self.warmup, 0)
        _int("runs", self.runs, 1)
        _int("batch", self.batch, 1)
        _positive("max_seconds", self.max_seconds)
        _int("accuracy_samples", self.accuracy_samples, 1, optional=True)


@dataclass(frozen=True)
class Budgets:
    """Limits the target must meet. Latency in ms per batch call; sizes in MiB (2**20 bytes)."""

    latency_ms: Mapping[str, float] = field(default_factory=dict)
    size_mb: float | None = None
    peak_memory_mb: float | None = None  # peak RSS of the runner process
    min_accuracy: float | None = None  # fraction in [0, 1]
    max_drop: float | None = None  # accuracy POINTS below the teacher on the same test images

    def __post_init__(self) -> None:
        if not isinstance(self.latency_ms, Mapping):
            raise FieldError("latency_ms", f"{self.latency_ms!r} must be a mapping like {{p50: 1.0, p90: 2.0}}")
        for k, v in self.latency_ms.items():
            _one_of(f"latency_ms.{k}", k, LATENCY_KEYS)
            _positive(f"latency_ms.{k}", v)
        # Own copy: later edits to the caller's dict must not change a validated profile.
        object.__setattr__(self, "latency_ms", dict(self.latency_ms))
        _positive("size_mb", self.size_mb, optional=True)
        _positive("peak_memory_mb", self.peak_memory_mb, optional=True)
        if self.min_accuracy is not None:
            v = self.min_accuracy
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise FieldError("min_accuracy", f"{v!r} must be a fraction between 0 and 1 (e.g. 0.88)")
        if self.max_drop is not None:
            v = self.max_drop
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
                raise FieldError("max_drop", f"{v!r} must be accuracy points between 0 and 100 (e.g. 3.0)")
        if (not self.latency_ms and self.size_mb is None and self.peak_memory_mb is None
                and self.min_accuracy is None and self.max_drop is None):
            raise FieldError("(all)", "no budget is set; give at least one of latency_ms, size_mb, "
                                      "peak_memory_mb, min_accuracy, max_drop")


@dataclass(frozen=True)
class DeviceSpec:
    """Where the check runs: ``local`` (this machine) or an SSH host that runs the runner itself."""

    url: str = "local"  # "local" or "ssh://user@host[:port]"
    key_file: str | None = None  # private key for ssh -i; None: ssh's own defaults/agent
    known_hosts: str | None = None  # UserKnownHostsFile; None: ~/.ssh/known_hosts
    python: str = "python3"  # interpreter on the device (needs numpy + the runtime)
    work_dir: str = "/tmp/edgecompress"  # a unique sub-directory is created per run and removed after
    timeout: float = 120.0  # seconds for the whole remote run (copy, run, clean up)
    connect_timeout: int = 10  # ssh ConnectTimeout, seconds

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not (self.url == "local" or SSH_DEVICE.match(self.url)):
            raise FieldError("url", f"{self.url!r} is not 'local' or 'ssh://user@host[:port]'")
        port = self._match("port")
        if port is not None and not 1 <= int(port) <= 65535:
            raise FieldError("url", f"{self.url!r}: port {port} must be between 1 and 65535")
        _opt_str("key_file", self.key_file)
        _opt_str("known_hosts", self.known_hosts)
        # One word: it is quoted as a single argument on the remote shell.
        if not isinstance(self.python, str) or not re.fullmatch(r"[^\s'\"]+", self.python):
            raise FieldError("python", f"{self.python!r} must be one interpreter name or path without spaces, "
                                       "e.g. python3 or /home/pi/venv/bin/python")
        if not isinstance(self.work_dir, str) or not SAFE_REMOTE_DIR.match(self.work_dir) or self.work_dir == "/":
            raise FieldError("work_dir", f"{self.work_dir!r} must be an absolute path of letters, digits, "
                                         "'.', '_', '-' and '/', e.g. /tmp/edgecompress")
        _positive("timeout", self.timeout)
        _int("connect_timeout", self.connect_timeout, 1)

    def _match(self, group: str) -> str | None:
        m = SSH_DEVICE.match(self.url)
        return m.group(group) if m else None

    @property
    def is_local(self) -> bool:
        return self.url == "local"

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
    """``local`` / ``ssh://...`` or a mapping with DEVICE_KEYS -> DeviceSpec (FieldErrors name device.*)."""
    if isinstance(value, DeviceSpec):
        return value
    if isinstance(value, str):
        try:
            return DeviceSpec(url=value)
        except FieldError as e:
            raise FieldError("device", e.detail) from None
    if not isinstance(value, dict):
        raise FieldError("device", f"{value!r} must be 'local', 'ssh://user@host[:port]' or a mapping with "
                                   f"keys {', '.join(DEVICE_KEYS)}")
    for k in value:
        if k not in DEVICE_KEYS:
            raise FieldError(f"device.{k}", f"unknown key; allowed keys: {', '.join(DEVICE_KEYS)}")
    if value.get("url") is None:
        raise FieldError("device.url", "is required in the mapping form, e.g. url: ssh://pi@10.0.0.7")
    return _build(DeviceSpec, "device", dict(value))


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
    if dev.is_local and extra:
        raise EdgeCompressError(f"device override: {', '.join(extra)} applies only to an ssh device; "
                                f"also give --device ssh://user@host[:port]")
    return dev


@dataclass(frozen=True)
class TargetProfile:
    """One deployment target."""

    name: str
    description: str
    hardware: Hardware
    artifact: ArtifactSpec
    runtime: RuntimeSpec
    budgets: Budgets
    device: DeviceSpec = field(default_factory=DeviceSpec)  # a plain "local"/"ssh://..." string is accepted too
    bench: BenchSpec = field(default_factory=BenchSpec)
    source: str | None = field(default=None, compare=False)  # the YAML file, for error messages


    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise FieldError("name", f"{self.name!r} must be letters, digits, '.', '_' or '-'")
        if not isinstance(self.description, str):
            raise FieldError("description", f"{self.description!r} must be a string")
        object.__setattr__(self, "device", parse_device(self.device))
        if not self.device.is_local and self.device.timeout <= self.bench.max_seconds:
            # The timed runs alone may take max_seconds; the remote timeout would then always fire.
            raise FieldError("device.timeout", f"{self.device.timeout!r} must be larger than bench.max_seconds "
                                               f"({self.bench.max_seconds:g}): the timed runs alone may take that long")
        want = ENGINE_FOR_FORMAT[self.artifact.format]
        if self.runtime.engine != want:
            raise FieldError("runtime.engine", f"{self.runtime.engine!r} cannot run artifact.format "
                                               f"{self.artifact.format!r}; use {want}")

    @property
    def is_local(self) -> bool:
        return self.device.is_local

    @property
    def where(self) -> str:
        """How messages name this profile: its file when loaded from one."""
        return self.source or f"the target profile {self.name}"


# --- YAML loading -------------------------------------------------------------------------------

_TOP_KEYS = ("name", "description", "hardware", "artifact", "runtime", "device", "bench", "budgets")
_REQUIRED = ("artifact", "runtime", "budgets")


def _section(raw: Mapping[str, Any], key: str, allowed: Iterable[str]) -> dict[str, Any]:
    """``raw[key]`` as a dict with only ``allowed`` keys (missing section -> {})."""
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError(key, f"must be a mapping, got {type(value).__name__} {value!r}")
    allowed = tuple(allowed)
    for k in value:
        if k not in allowed:
            raise FieldError(f"{key}.{k}", f"unknown key; allowed keys: {', '.join(allowed)}")
    return dict(value)


def _build(cls: type, section: str, kwargs: dict[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise e.within(section) from None


def _profile_from_dict(raw: Any, default_name: str, source: str | None = None) -> TargetProfile:
    if not isinstance(raw, dict):
        raise FieldError("(top level)", f"must be a mapping with keys {', '.join(_TOP_KEYS)}")
    for k in raw:
        if k not in _TOP_KEYS:
            raise FieldError(str(k), f"unknown key; allowed keys: {', '.join(_TOP_KEYS)}")
    for k in _REQUIRED:
        if raw.get(k) is None:
            raise FieldError(k, "is required")
    if isinstance(raw["budgets"], dict) and not any(v not in (None, {}) for v in raw["budgets"].values()):
        # A profile without budgets would always pass: that is a mistake, never an intent.
        raise FieldError("budgets", "no budget is set; give at least one of latency_ms, size_mb, max_drop, "
                                    "peak_memory_mb, min_accuracy")

    hardware = _build(Hardware, "hardware", _section(raw, "hardware", ("arch", "cpu", "gpu", "cores")))
    artifact = _build(ArtifactSpec, "artifact", _section(raw, "artifact", ("format", "precision")))
    rt = _section(raw, "runtime", ("engine", "threads", "providers", "xnnpack"))
    # Settings of the other engine are a mistake in the profile, not something to ignore quietly.
    if rt.get("engine") == "litert" and "providers" in rt:
        raise FieldError("runtime.providers", "applies only to engine onnxruntime; remove it for litert")
    if rt.get("engine") == "onnxruntime" and "xnnpack" in rt:
        raise FieldError("runtime.xnnpack", "applies only to engine litert; remove it for onnxruntime")
    if "providers" in rt:
        if not isinstance(rt["providers"], list):
            raise FieldError("runtime.providers", f"{rt['providers']!r} must be a list, e.g. [CPUExecutionProvider]")
        rt["providers"] = tuple(rt["providers"])
    runtime = _build(RuntimeSpec, "runtime", rt)
    bench = _build(BenchSpec, "bench",
                   _section(raw, "bench", ("warmup", "runs", "batch", "max_seconds", "accuracy_samples")))
    budgets = _build(Budgets, "budgets",
                     _section(raw, "budgets", ("latency_ms", "size_mb", "peak_memory_mb", "min_accuracy",
                                               "max_drop")))
    return TargetProfile(name=raw.get("name", default_name), description=raw.get("description") or "",
                         hardware=hardware, artifact=artifact, runtime=runtime,
                         device=parse_device(raw.get("device", "local")), bench=bench, budgets=budgets,
                         source=source)


def load_target(path: str | Path) -> TargetProfile:
    """Read and validate one profile; ``name`` defaults to the file stem."""
    path = Path(path)
    if not path.is_file():
        raise EdgeCompressError(f"{path}: target profile not found; profiles live in targets/*.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise EdgeCompressError(f"{path}: not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeCompressError(f"{path}: cannot read: {e}") from None
    try:
        return _profile_from_dict(raw, path.stem, str(path))
    except FieldError as e:
        raise EdgeCompressError(f"{path}: {e}") from None


def load_targets(paths: Iterable[str | Path]) -> list[TargetProfile]:
    """Load several profiles; two with the same name would overwrite each other's reports."""
    profiles: list[TargetProfile] = []
    seen: dict[str, Path] = {}
    for p in paths:
        prof = load_target(p)
        if prof.name in seen:
            raise EdgeCompressError(f"{p}: field name: {prof.name!r} is already used by {seen[prof.name]}")
        seen[prof.name] = Path(p)
        profiles.append(prof)
    return profiles
