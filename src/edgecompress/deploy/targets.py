"""Target profiles: which artifact runs on which hardware with which runtime, and its budgets.

A profile is a YAML file in targets/. ``load_target`` turns it into frozen dataclasses that are
validated at construction; every error names the file, the field, the bad value and what is
allowed, so a typo in a profile never silently turns into a default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from edgecompress.artifacts import BUILD_PRECISIONS, CASCADE_SUFFIX, ENGINE_FOR_FORMAT, FORMATS, PRECISIONS, REGISTRY
from edgecompress.config import load_yaml
from edgecompress.deploy.devices import AgreementSpec, DeviceSpec, parse_device  # noqa: F401 (profiles' types)
from edgecompress.deploy.fields import FieldError, bounded, build, integer, one_of, opt_str, positive
from edgecompress.deploy.fleet import DeploySpec, parse_deploy
from edgecompress.errors import EdgeCompressError

ARCHES = ("x86_64", "aarch64", "armv7l", "any")
ENGINES = tuple(ENGINE_FOR_FORMAT.values())
LATENCY_KEYS = ("p50", "p90", "p99", "mean", "sustained_p90")
# The sustained budget is judged on the last intervals of a continuous run (bench.sustained_s).
SUSTAINED_KEY = "sustained_p90"
PINNED_MODEL = "pruned"  # what `artifact:` pins: the pruned student the export stage ships (prune.ratio)
# Target names become file names (targets/<name>.yaml, metrics/check/<name>.json): no paths, no dots first.
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# --- schema -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hardware:
    """What the profile's hardware looks like; used to tell a real measurement from a proxy."""

    arch: str = "any"
    cpu: str | None = None  # case-insensitive substring of the runner's cpu_model (or board)
    gpu: str | None = None  # any value requires an active GPU execution provider
    cores: int | None = None  # minimum logical cores

    def __post_init__(self) -> None:
        one_of("arch", self.arch, ARCHES)
        opt_str("cpu", self.cpu)
        opt_str("gpu", self.gpu)
        integer("cores", self.cores, 1, optional=True)


@dataclass(frozen=True)
class ArtifactSpec:
    """Which export-stage artifact the target runs."""

    format: str
    precision: str
    cascade: bool = False  # an early-exit cascade: a manifest and its segments (what a build may choose)

    def __post_init__(self) -> None:
        one_of("format", self.format, FORMATS)
        one_of("precision", self.precision, PRECISIONS)
        if f"{self.precision}.{self.format}" not in REGISTRY:
            raise FieldError("precision", f"{self.precision!r} has no {self.format} artifact; the export stage "
                                          f"writes {', '.join(REGISTRY)}")

    @property
    def filename(self) -> str:
        """Name inside the export directory, e.g. ``int8.tflite`` (a cascade: ``fp32.onnx.cascade.json``)."""
        return f"{self.precision}.{self.format}" + (CASCADE_SUFFIX if self.cascade else "")

    @staticmethod
    def from_filename(name: str) -> "ArtifactSpec":
        """The spec of an artifact file name (``int8.tflite``, ``fp32.onnx.cascade.json``)."""
        cascade = name.endswith(CASCADE_SUFFIX)
        precision, fmt = name.removesuffix(CASCADE_SUFFIX).split(".")
        return ArtifactSpec(fmt, precision, cascade)


@dataclass(frozen=True)
class RuntimeSpec:
    """Runtime and its settings; ``providers`` is onnxruntime-only, ``xnnpack`` litert-only."""

    engine: str | None = None  # None only in a profile with build: each candidate brings its engine
    threads: int | None = None  # None: the runtime's own default
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    xnnpack: bool = True

    def __post_init__(self) -> None:
        if self.engine is not None:
            one_of("engine", self.engine, ENGINES)
        integer("threads", self.threads, 1, optional=True)
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
    """How the runner measures: warm-up, timed runs in rounds (capped by time), batch, accuracy subset,
    and an optional sustained run."""

    warmup: int = 10
    runs: int = 100
    batch: int = 1
    max_seconds: float = 60.0
    accuracy_samples: int | None = None  # None: the whole test set; else a seeded, class-stratified subset
    rounds: int | None = None  # the timed runs come in rounds, interleaved across the candidates a build
                               #   compares; None: min(5, runs)
    sustained_s: float = 0.0  # > 0: also run continuously this long (latency_ms.sustained_p90, drift)
    sustained_intervals: int = 10

    def __post_init__(self) -> None:
        integer("warmup", self.warmup, 0)
        integer("runs", self.runs, 1)
        integer("batch", self.batch, 1)
        positive("max_seconds", self.max_seconds)
        integer("accuracy_samples", self.accuracy_samples, 1, optional=True)
        integer("rounds", self.rounds, 1, optional=True)
        if self.rounds is not None and self.runs < self.rounds:
            raise FieldError("rounds", f"{self.rounds} rounds of {self.runs} runs leave a round empty; "
                                       f"give bench.runs >= bench.rounds")
        v = self.sustained_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            raise FieldError("sustained_s", f"{v!r} must be seconds >= 0 (0: no sustained run)")
        integer("sustained_intervals", self.sustained_intervals, 2)

    @property
    def round_count(self) -> int:
        """The rounds the timed runs are split into (``rounds``, or up to 5 by default)."""
        return self.rounds if self.rounds is not None else min(5, self.runs)


@dataclass(frozen=True)
class Budgets:
    """Limits the target must meet. Latency in ms per batch call; sizes in MiB (2**20 bytes)."""

    latency_ms: Mapping[str, float] = field(default_factory=dict)
    size_mb: float | None = None  # the model file the runtime loads
    download_mb: float | None = None  # what the device downloads and stores: the Huffman-coded package
    peak_memory_mb: float | None = None  # peak RSS of the runner process
    min_accuracy: float | None = None  # fraction in [0, 1]
    max_drop: float | None = None  # accuracy POINTS below the teacher on the same test images
    max_ece: float | None = None  # expected calibration error, fraction in [0, 1]
    max_nll: float | None = None  # negative log-likelihood per image, nats
    min_agreement: float | None = None  # top-1 agreement of the device's outputs with this host's (agreement:)

    def __post_init__(self) -> None:
        if not isinstance(self.latency_ms, Mapping):
            raise FieldError("latency_ms", f"{self.latency_ms!r} must be a mapping like {{p50: 1.0, p90: 2.0}}")
        for k, v in self.latency_ms.items():
            one_of(f"latency_ms.{k}", k, LATENCY_KEYS)
            positive(f"latency_ms.{k}", v)
        # Own copy: later edits to the caller's dict must not change a validated profile.
        object.__setattr__(self, "latency_ms", dict(self.latency_ms))
        positive("size_mb", self.size_mb, optional=True)
        positive("download_mb", self.download_mb, optional=True)
        positive("peak_memory_mb", self.peak_memory_mb, optional=True)
        bounded("min_accuracy", self.min_accuracy, 0, 1, "a fraction between 0 and 1 (e.g. 0.88)")
        bounded("max_drop", self.max_drop, 0, 100, "accuracy points between 0 and 100 (e.g. 3.0)")
        bounded("max_ece", self.max_ece, 0, 1, "a fraction between 0 and 1 (e.g. 0.03)")
        bounded("min_agreement", self.min_agreement, 0, 1, "a fraction between 0 and 1 (e.g. 0.998)")
        if self.max_nll is not None:
            v = self.max_nll
            # NaN and .inf fail the range test too: a budget that can never bind is a typo.
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise FieldError("max_nll", f"{v!r} must be a finite number of nats > 0 (e.g. 0.35)")
        if (not self.latency_ms and self.size_mb is None and self.download_mb is None and self.peak_memory_mb is None
                and self.min_accuracy is None and self.max_drop is None and self.max_ece is None
                and self.max_nll is None and self.min_agreement is None):
            raise FieldError("(all)", "no budget is set; give at least one of latency_ms, size_mb, "
                                      "download_mb, peak_memory_mb, min_accuracy, max_drop, max_ece, max_nll, "
                                      "min_agreement")


OBJECTIVES = ("accuracy",)
REQUIREMENTS = ("uncertainty",)


@dataclass(frozen=True)
class BuildSpec:
    """What a target may be built from; ``requires`` filters on capabilities, not measurements."""

    models: tuple[str, ...] | str = "all"
    precisions: tuple[str, ...] = BUILD_PRECISIONS
    engines: tuple[str, ...] = ("litert", "onnxruntime")
    objective: str = "accuracy"
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Lists from YAML become tuples, so the spec stays immutable.
        for name in ("models", "precisions", "engines", "requires"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.models != "all" and (not isinstance(self.models, tuple) or not self.models
                                     or not all(isinstance(m, str) and m for m in self.models)):
            raise FieldError("build.models", f"{self.models!r} must be 'all' or a non-empty list of model "
                                             "names (e.g. [student, pruned-0.5])")
        for name, allowed, empty_ok in (("precisions", BUILD_PRECISIONS, False), ("engines", ENGINES, False),
                                        ("requires", REQUIREMENTS, True)):
            value = getattr(self, name)
            if not isinstance(value, tuple) or (not value and not empty_ok):
                raise FieldError(f"build.{name}", f"{value!r} must be a list drawn from {', '.join(allowed)}")
            for v in value:
                if v not in allowed:
                    raise FieldError(f"build.{name}", f"{v!r} is not one of {', '.join(allowed)}")
        if self.objective not in OBJECTIVES:
            raise FieldError("build.objective", f"{self.objective!r} is not supported; the only objective is "
                                                f"{', '.join(OBJECTIVES)} (most accurate within the budgets)")


@dataclass(frozen=True)
class TargetProfile:
    """One deployment target."""

    name: str
    description: str
    hardware: Hardware
    artifact: ArtifactSpec | None  # a pin: ship this artifact of the pruned student, no search
    runtime: RuntimeSpec
    budgets: Budgets
    device: DeviceSpec = field(default_factory=DeviceSpec)  # a plain "local"/"ssh://..." string is accepted too
    bench: BenchSpec = field(default_factory=BenchSpec)
    source: str | None = field(default=None, compare=False)  # the YAML file, for error messages
    build: BuildSpec | None = None  # search: the most accurate candidate it allows that meets every budget
    deploy: DeploySpec | None = field(default=None, compare=False)  # where `edgecompress deploy` installs it
    agreement: AgreementSpec | None = None  # where the shipped kernels' outputs are compared with this host's

    def __post_init__(self) -> None:
        if not valid_name(self.name):
            raise FieldError("name", f"{self.name!r} must be letters, digits, '.', '_' or '-'")
        if not isinstance(self.description, str):
            raise FieldError("description", f"{self.description!r} must be a string")
        object.__setattr__(self, "device", parse_device(self.device))
        if self.device.host and self.device.timeout <= self.bench.max_seconds:  # an SSH device
            # The timed runs alone may take max_seconds; the remote timeout would then always fire.
            raise FieldError("device.timeout", f"{self.device.timeout!r} must be larger than bench.max_seconds "
                                               f"({self.bench.max_seconds:g}): the timed runs alone may take that long")
        from edgecompress.deploy.stats import enough_runs  # numpy and the runner: only when a profile is built

        enough_runs(self.budgets.latency_ms, self.bench.runs, self.bench.sustained_s, SUSTAINED_KEY)
        if self.budgets.min_agreement is not None and self.agreement is None:
            raise FieldError("budgets.min_agreement", "needs an agreement section naming the device to compare with "
                                                      "this machine, e.g. agreement: {device: emulate:aarch64}")
        if (self.artifact is None) == (self.build is None):
            raise FieldError("artifact/build", "give exactly one: build (search the candidates for the most "
                                               "accurate one within the budgets) or artifact (pin one, no search)")
        if self.build is not None:
            if self.runtime.engine is not None:
                raise FieldError("runtime.engine", "remove it: with build, each candidate runs on its own engine "
                                                   "(restrict them with build.engines)")
            return
        want = ENGINE_FOR_FORMAT[self.artifact.format]  # type: ignore[union-attr]
        if self.runtime.engine != want:
            raise FieldError("runtime.engine", f"{self.runtime.engine!r} cannot run artifact.format "
                                               f"{self.artifact.format!r}; use {want}")  # type: ignore[union-attr]

    @property
    def search(self) -> BuildSpec:
        """What the build may choose from; a pinned artifact is a search over exactly one candidate."""
        if self.build is not None:
            return self.build
        a = self.artifact
        assert a is not None
        return BuildSpec(models=(PINNED_MODEL,), precisions=(a.precision,), engines=(ENGINE_FOR_FORMAT[a.format],))

    def pinned(self, fmt: str, precision: str, cascade: bool = False) -> "TargetProfile":
        """This profile running one given artifact: what the runner measures for a candidate or the check.
        A cascade runs one image at a time (images leave at different exits): its bench batch is 1."""
        bench = replace(self.bench, batch=1) if cascade else self.bench
        return replace(self, artifact=ArtifactSpec(fmt, precision, cascade), build=None, bench=bench,
                       runtime=replace(self.runtime, engine=ENGINE_FOR_FORMAT[fmt]))

    @property
    def is_local(self) -> bool:
        return self.device.is_local

    @property
    def where(self) -> str:
        """How messages name this profile: its file when loaded from one."""
        return self.source or f"the target profile {self.name}"


# --- YAML loading -------------------------------------------------------------------------------

_TOP_KEYS = ("name", "description", "hardware", "build", "artifact", "runtime", "device", "bench", "budgets",
             "deploy", "agreement")
_REQUIRED = ("runtime", "budgets")


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
        raise FieldError("budgets", "no budget is set; give at least one of latency_ms, size_mb, download_mb, "
                                    "max_drop, peak_memory_mb, min_accuracy, max_ece, max_nll, min_agreement")

    hardware = build(Hardware, "hardware", _section(raw, "hardware", ("arch", "cpu", "gpu", "cores")))
    if raw.get("artifact") is None and raw.get("build") is None:
        raise FieldError("build", "is required (or artifact, to pin one artifact without a search)")
    artifact = None if raw.get("artifact") is None else build(
        ArtifactSpec, "artifact", _section(raw, "artifact", ("format", "precision")))
    search = None
    if raw.get("build") is not None:
        spec = _section(raw, "build", ("models", "precisions", "engines", "objective", "requires"))
        search = BuildSpec(**spec)  # its errors already name build.<field>
    rt = _section(raw, "runtime", ("engine", "threads", "providers", "xnnpack"))
    # Settings of the other engine are a mistake in the profile, not something to ignore quietly.
    engines = (rt.get("engine"),) if search is None else search.engines
    if "providers" in rt and "onnxruntime" not in engines:
        raise FieldError("runtime.providers", "applies only to engine onnxruntime; remove it for litert")
    if "xnnpack" in rt and "litert" not in engines:
        raise FieldError("runtime.xnnpack", "applies only to engine litert; remove it for onnxruntime")
    if "providers" in rt:
        if not isinstance(rt["providers"], list):
            raise FieldError("runtime.providers", f"{rt['providers']!r} must be a list, e.g. [CPUExecutionProvider]")
        rt["providers"] = tuple(rt["providers"])
    runtime = build(RuntimeSpec, "runtime", rt)
    bench = build(BenchSpec, "bench",
                   _section(raw, "bench", ("warmup", "runs", "batch", "max_seconds", "accuracy_samples",
                                            "rounds", "sustained_s", "sustained_intervals")))
    budgets = build(Budgets, "budgets",
                     _section(raw, "budgets", ("latency_ms", "size_mb", "download_mb", "peak_memory_mb",
                                               "min_accuracy", "max_drop", "max_ece", "max_nll",
                                               "min_agreement")))
    agree = _section(raw, "agreement", ("device", "samples"))
    if agree and "device" not in agree:
        raise FieldError("agreement.device", "is required, e.g. emulate:aarch64")
    agreement = build(AgreementSpec, "agreement", agree) if agree else None
    return TargetProfile(name=raw.get("name", default_name), description=raw.get("description") or "",
                         hardware=hardware, artifact=artifact, runtime=runtime,
                         device=parse_device(raw.get("device", "local")), bench=bench, budgets=budgets,
                         source=source, build=search, deploy=parse_deploy(raw.get("deploy")), agreement=agreement)


def valid_name(name: object) -> bool:
    """Whether ``name`` may name a target (and so the files built from it)."""
    return isinstance(name, str) and NAME_RULE.fullmatch(name) is not None


def load_target(path: str | Path) -> TargetProfile:
    """Read and validate one profile; ``name`` defaults to the file stem."""
    path = Path(path)
    if not path.is_file():
        raise EdgeCompressError(f"{path}: target profile not found; profiles live in targets/*.yaml")
    try:
        raw = load_yaml(path.read_text())
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
