"""Check one target profile: run its artifact with its runtime, compare against its budgets.

The runner runs in a subprocess so its peak RSS is the model's and the runtime's, not this
process's (which may have torch loaded). When the machine does not look like the profile's
hardware, the result is labelled a proxy: it says something, but not what the profile promises.
On an emulated device of the profile's instruction set (``emulate:aarch64``) the outputs are the
device runtime's own, so accuracy and sizes are judged as on the device; latency and peak memory are
the emulator's, recorded as a proxy and never judged, and the status says ``emulated``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from edgecompress.data import load_npz_split
from edgecompress.errors import EdgeCompressError
from edgecompress.deploy import agreement as agree
from edgecompress.deploy.bench import local_command, runner_args
from edgecompress.deploy.budgets import BudgetRow, Measurement, accuracy_ci, judge, rounds_note, undecided
from edgecompress.deploy.measure import Job, Plan, interleave
from edgecompress.deploy.remote import run_remote
from edgecompress.deploy.devices import DeviceSpec, resolve_device
from edgecompress.deploy.emulate import SLOWDOWN, emulator
from edgecompress.deploy.hardware import (emulates, fails, hardware_matches, local_gpu, status_of,  # noqa: F401
                                         timings_judged)
from edgecompress.deploy.targets import ArtifactSpec, TargetProfile, load_target, valid_name
from edgecompress.records import BUILD_RECORD, BuildRecord, read_build_record

@dataclass(frozen=True)
class CheckConfig:
    """The ``check`` section: which profiles (targets/<name>.yaml) the pipeline checks, and how strictly."""

    targets: tuple[str, ...] = ()
    strict: bool = False  # true: a budget missed on proxy hardware also fails the pipeline

    def __post_init__(self) -> None:
        bad = [n for n in self.targets if not valid_name(n)]
        if bad:
            raise EdgeCompressError(f"invalid value targets: {bad} are not target names (letters, digits, '.', "
                                    f"'_' or '-', naming targets/<name>.yaml)")
        if len(set(self.targets)) != len(self.targets):
            raise EdgeCompressError(f"invalid value targets={list(self.targets)}: a target is listed twice")


def cascade_segments(manifest: Path) -> list[Path]:
    """The segment files an early-exit cascade manifest names (beside it), checked to exist."""
    from edgecompress.deploy.runner import RunnerError, read_cascade

    try:
        return [manifest.parent / seg["file"] for seg in read_cascade(manifest)["segments"]]
    except RunnerError as e:
        raise EdgeCompressError(str(e)) from None


def _inputs(profile: TargetProfile, artifacts_dir: Path,
            testset: Path | None) -> tuple[Path, Path | None, Path | None, list[Path]]:
    """(model, sidecar, testset, a cascade's segments) after checking they exist, so a remote run fails
    before connecting. A cascade manifest is its own sidecar (None)."""
    model = Path(artifacts_dir) / profile.artifact.filename
    sidecar = None if profile.artifact.cascade else Path(f"{model}.json")
    for path, what in ((model, "artifact"), (sidecar, "artifact sidecar")):
        if path is not None and not path.is_file():
            raise EdgeCompressError(f"target {profile.name}: {what} {path} not found; run the stage that writes "
                                    f"{artifacts_dir} (dvc repro build@{profile.name}, or export)")
    segments = cascade_segments(model) if profile.artifact.cascade else []
    if testset is not None and not Path(testset).is_file():
        raise EdgeCompressError(f"target {profile.name}: test set {testset} not found; the export stage writes it "
                                f"(dvc repro export)")
    if testset is None and profile.budgets.min_accuracy is not None:
        raise EdgeCompressError(f"target {profile.name}: budgets.min_accuracy needs a test set")
    return model, sidecar, None if testset is None else Path(testset), segments


def _display_path(path: str | None) -> str | None:
    """Repository-relative path when the artifact is inside the working directory (portable reports)."""
    if not path:
        return path
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def run_check(profile: TargetProfile, artifacts_dir: Path, testset: Path | None,
              device: DeviceSpec | None = None) -> dict[str, Any]:
    """Run the profile's artifact through the runner (here, under emulation, or on ``device`` over SSH); the
    runner's JSON."""
    device = device or profile.device
    model, sidecar, testset, segments = _inputs(profile, Path(artifacts_dir), testset)
    if not device.is_local and not device.emulated:
        names = runner_args(profile, model.name, sidecar and f"{model.name}.json",
                            None if testset is None else "testset.npz")
        raw = run_remote(profile, device, model, sidecar, testset, names, segments)
        raw["model"] = str(model)  # the remote copy is gone; reports name the artifact that was measured
        return raw
    job = Job(profile.name, runner_args(profile, str(model.resolve()), None if sidecar is None else str(sidecar.resolve()),
                                        None if testset is None else str(testset.resolve())), model)
    # One candidate, still in rounds: the rounds show drift, and an undecided latency gets more of them
    # (not when emulated: that latency decides nothing).
    emu = emulator(device)
    judged = emu is None and local_gpu(profile)
    raw = interleave([job], plan_for(profile, device), f"target {profile.name}",
                     more=lambda _, rounds: judged and undecided(profile.budgets, rounds),
                     extra_rounds=extra_rounds(profile) if judged else 0,
                     command=emu.command if emu else local_command)[job.name]
    return emu.mark(raw) if emu else raw


EXTRA_ROUNDS = 2  # an undecided latency may get up to this many times its rounds again (within max_seconds)


def plan_for(profile: TargetProfile, device: DeviceSpec | None = None) -> Plan:
    """How the runner measures for ``profile``: its rounds, runs and warm-ups; a short re-warm per round.
    An emulated ``device`` gets ``emulate.SLOWDOWN`` times the time to answer (scoring runs emulated too)."""
    b = profile.bench
    timeout = b.max_seconds * 3 + 60 + b.sustained_s
    return Plan(rounds=b.round_count, runs=b.runs, warmup=b.warmup, round_warmup=max(1, b.warmup // 10),
                max_seconds=b.max_seconds,
                timeout=timeout * SLOWDOWN if device is not None and device.emulated else timeout)


def extra_rounds(profile: TargetProfile) -> int:
    """Rounds an undecided latency may get beyond the plan (the runner's max_seconds still caps them)."""
    return EXTRA_ROUNDS * profile.bench.round_count


def evaluate_budgets(profile: TargetProfile, result: Mapping[str, Any],
                     teacher_accuracy: float | None = None) -> tuple[BudgetRow, ...]:
    """One row per budget of ``profile``, judged against the runner's ``result`` (``budgets.judge``);
    ``teacher_accuracy`` is the reference of max_drop. An unmeasured value fails its budget."""
    return judge(Measurement.from_runner(result, teacher_accuracy), profile.budgets)


def teacher_accuracy(checkpoint: str | Path, testset: str | Path, samples: int | None) -> float:
    """The teacher's accuracy on the same ``samples`` test images the runner scores."""
    import torch

    from edgecompress.checkpoint import load_checkpoint
    from edgecompress.data import normalize_images
    from edgecompress.models import batched

    from edgecompress.deploy.runner import stratified_subset

    model, meta = load_checkpoint(checkpoint)
    x, y = load_npz_split(testset)
    if samples is not None:  # the runner's seeded, class-stratified subset: equal images, equal footing
        keep = stratified_subset(y, samples)
        x, y = x[keep], y[keep]
    xn = torch.from_numpy(normalize_images(x, meta["data"]["mean"], meta["data"]["std"]))
    pred = batched(lambda xb: model(xb).argmax(1), xn, 1000, channels_last=False).numpy()
    return float((pred == y).mean())


def package_bytes(model: Path, cascade: bool = False) -> int:
    """Bytes the device downloads for ``model``: the build's shipped package beside it, else one packed now;
    for a cascade, its manifest plus every segment's package."""
    from edgecompress.deploy.pack import pack_file
    from edgecompress.deploy.package import PACKAGE_SUFFIX

    if cascade:
        return model.stat().st_size + sum(package_bytes(seg) for seg in cascade_segments(model))
    shipped = model.with_name(model.name + PACKAGE_SUFFIX)
    return shipped.stat().st_size if shipped.is_file() else len(pack_file(model))


@dataclass(frozen=True)
class CheckedArtifact:
    """The file a check measured: where, what, how big; ``candidate``: what its build chose (if built)."""

    path: str | None
    format: str
    precision: str
    size_bytes: int | None
    package_bytes: int | None
    candidate: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = {"path": self.path, "format": self.format, "precision": self.precision, "size_bytes": self.size_bytes,
             "package_bytes": self.package_bytes}
        return d if self.candidate is None else {**d, "candidate": self.candidate}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CheckedArtifact:
        return cls(d["path"], d["format"], d["precision"], d["size_bytes"], d["package_bytes"], d.get("candidate"))


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """One target's check: what ran where, what it measured, each budget judged, and the verdict.

    ``status`` is pass, fail, emulated-pass, emulated-fail, proxy-pass or proxy-fail; ``failed`` (``fails``) is
    whether it fails the run.
    The runner's own sections (fingerprint, runtime, bench, latency_ms, memory) are kept as it wrote
    them. ``to_json`` is metrics/check/<target>.json, key for key; ``from_json`` reads it back.
    """

    target: str
    description: str = ""
    device: str = "local"
    remote: Mapping[str, Any] | None = None
    artifact: CheckedArtifact
    status: str
    strict: bool = False
    hardware_match: bool = True
    hardware_reasons: tuple[str, ...] = ()
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    runtime: Mapping[str, Any] | None = None
    bench: Mapping[str, Any] | None = None
    latency_ms: Mapping[str, Any] | None = None
    throughput_per_s: float | None = None
    memory: Mapping[str, Any] | None = None
    accuracy: float | None = None
    nll: float | None = None
    ece: float | None = None
    accuracy_samples: int | None = None
    budgets: tuple[BudgetRow, ...] = ()
    warnings: tuple[str, ...] = ()
    teacher_accuracy: float | None = None
    # 95% intervals: {statistic: {point, lo, hi, n}} from the runner's samples, and the accuracy's (Wilson)
    latency_ci: Mapping[str, Any] | None = None
    accuracy_ci: Mapping[str, Any] | None = None
    conditions: Mapping[str, Any] | None = None  # the runner's load, CPU frequency, temperatures (start, end)
    rounds: str | None = None  # "" rounds agree; else how they disagree (the load changed); None: one round
    sustained: Mapping[str, Any] | None = None  # the sustained run's intervals and drift (bench.sustained_s)
    build_status: str | None = None  # the build record's status; None: checked an export directory
    build_infeasible: bool = False  # its build shipped only the nearest candidate
    failed: bool = False  # the verdict (``fails``); the JSON calls it gate_failed
    timings_judged: bool = True  # False: latency and peak memory recorded, a proxy (emulated, or no GPU active)
    agreement: Mapping[str, Any] | None = None  # the artifact's outputs on the agreement device vs this host's

    def __post_init__(self) -> None:
        # Lists from JSON or callers become tuples, so the result stays immutable.
        for name in ("hardware_reasons", "budgets", "warnings"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_json(self) -> dict[str, Any]:
        d = {"target": self.target, "description": self.description, "device": self.device, "remote": self.remote,
             "artifact": self.artifact.to_json(), "status": self.status, "strict": self.strict,
             "hardware_match": self.hardware_match, "hardware_reasons": list(self.hardware_reasons),
             "fingerprint": self.fingerprint, "runtime": self.runtime, "bench": self.bench,
             "latency_ms": self.latency_ms, "throughput_per_s": self.throughput_per_s, "memory": self.memory,
             "accuracy": self.accuracy, "nll": self.nll, "ece": self.ece, "accuracy_samples": self.accuracy_samples,
             "budgets": [r.to_json() for r in self.budgets], "warnings": list(self.warnings),
             "teacher_accuracy": self.teacher_accuracy}
        for key in ("latency_ci", "accuracy_ci", "conditions", "rounds", "sustained"):  # when measured
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.build_status is not None:
            d["build_status"] = self.build_status
        if self.build_infeasible:
            d["build_infeasible"] = True
        if not self.timings_judged:
            d["timings_judged"] = False
        if self.agreement is not None:
            d["agreement"] = self.agreement
        d["gate_failed"] = self.failed
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "check result") -> CheckResult:
        """Read what ``to_json`` wrote; a file of another shape is one line naming ``where``."""
        try:
            ref = d["teacher_accuracy"]
            return cls(target=d["target"], description=d["description"], device=d["device"], remote=d["remote"],
                       artifact=CheckedArtifact.from_json(d["artifact"]), status=d["status"], strict=d["strict"],
                       hardware_match=d["hardware_match"], hardware_reasons=d["hardware_reasons"],
                       fingerprint=d["fingerprint"], runtime=d["runtime"], bench=d["bench"],
                       latency_ms=d["latency_ms"], throughput_per_s=d["throughput_per_s"], memory=d["memory"],
                       accuracy=d["accuracy"], nll=d["nll"], ece=d["ece"], accuracy_samples=d["accuracy_samples"],
                       budgets=[BudgetRow.from_json(r, ref) for r in d["budgets"]], warnings=d["warnings"],
                       teacher_accuracy=ref, latency_ci=d.get("latency_ci"), accuracy_ci=d.get("accuracy_ci"),
                       conditions=d.get("conditions"), rounds=d.get("rounds"), sustained=d.get("sustained"),
                       build_status=d.get("build_status"),
                       build_infeasible=bool(d.get("build_infeasible")), failed=d["gate_failed"],
                       timings_judged=d.get("timings_judged", True), agreement=d.get("agreement"))
        except (KeyError, TypeError, AttributeError) as e:
            raise EdgeCompressError(f"{where}: not a check result (no {e}); re-run the check stage") from None


def check_target(profile: TargetProfile, artifacts_dir: Path, testset: Path | None, strict: bool = False,
                 device: DeviceSpec | str | Mapping[str, Any] | None = None,
                 reference_accuracy: float | None = None) -> CheckResult:
    """Run and judge one target; its ``status`` is pass, fail, emulated-*, proxy-pass or proxy-fail.

    ``device`` overrides the profile's (see ``resolve_device``). Over SSH the fingerprint is the
    device's own, so a real board matches its profile and is not reported as a proxy. Emulated, latency
    and peak memory are recorded but not judged (``judge(device=False)``).
    """
    dev = resolve_device(profile.device, device)
    raw = run_check(profile, Path(artifacts_dir), testset, dev)
    if profile.budgets.download_mb is not None:
        raw["package_bytes"] = package_bytes(Path(artifacts_dir) / profile.artifact.filename, profile.artifact.cascade)
    m = Measurement.from_runner(raw, reference_accuracy)
    warnings = list(raw.get("warnings") or [])
    agreed, why_not = agree.on_test_images(profile, Path(artifacts_dir), testset)
    if agreed is not None:  # the outputs that ship are the agreement device's: judge those
        m = replace(m, accuracy=agreed.accuracy, nll=agreed.nll, ece=agreed.ece, accuracy_n=agreed.images,
                    agreement=agreed.top1, agreement_n=agreed.images)
    elif why_not:
        warnings.append(why_not)
    judged = timings_judged(profile, dev, [raw])
    rows = judge(m, profile.budgets, device=judged)
    fp = raw.get("fingerprint") or {}
    match, reasons = hardware_matches(profile.hardware, fp, raw.get("active_providers"))
    ok = not any(r.missed for r in rows)
    status = status_of(ok, match, emulates(profile, dev, fp))
    if agreed is not None and not match:
        # Outputs judged on the device's own kernels stand as on the device; the host's timings stay a proxy.
        outputs_ok = not any(r.missed for r in rows if not r.budget.device)
        status = "emulated-fail" if not outputs_ok else "emulated-pass" if ok else "proxy-fail"
    if status.startswith("emulated"):
        warnings.append("emulated: accuracy and sizes are judged as on the device; latency and peak memory are "
                        "the emulator's (a proxy), recorded and not judged")
    elif not match:
        warnings.append("measured on a proxy machine, not the profile's hardware: " + "; ".join(reasons))
    artifact = CheckedArtifact(_display_path(raw.get("model")), profile.artifact.format, profile.artifact.precision,
                               raw.get("model_size_bytes"), raw.get("package_bytes"))
    return CheckResult(target=profile.name, description=profile.description, device=dev.url,
                       remote=raw.get("remote"), artifact=artifact, status=status, strict=strict,
                       hardware_match=match, hardware_reasons=reasons, fingerprint=fp, runtime=raw.get("runtime"),
                       bench=raw.get("bench"), latency_ms=raw.get("latency_ms"),
                       throughput_per_s=raw.get("throughput_per_s"), memory=raw.get("memory"),
                       accuracy=m.accuracy, nll=m.nll, ece=m.ece,
                       accuracy_samples=raw.get("accuracy_samples"), budgets=rows, warnings=warnings,
                       teacher_accuracy=reference_accuracy, failed=fails(status, strict),
                       latency_ci={k: v.to_json() for k, v in m.latency_ci.items()} or None,
                       accuracy_ci=accuracy_ci(m.accuracy, m.accuracy_n), conditions=raw.get("conditions"),
                       rounds=rounds_note(raw), sustained=_sustained_summary(raw.get("sustained")),
                       timings_judged=judged, agreement=None if agreed is None else agreed.to_json())


def _sustained_summary(sustained: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The sustained run as the check keeps it: intervals and drift, without the raw tail samples."""
    if not sustained:
        return None
    return {k: v for k, v in sustained.items() if k != "tail_samples_ms"}


def built_profile(profile: TargetProfile, artifacts_dir: str | Path) -> tuple[TargetProfile, BuildRecord | None]:
    """``profile`` pinned to what its build chose (``artifacts_dir`` holds a build record), and that record.

    Without a record the directory is an export directory and the profile must pin its artifact.
    """
    path = Path(artifacts_dir) / BUILD_RECORD
    if not path.is_file():
        if profile.artifact is None:
            raise EdgeCompressError(f"{profile.where} has a build section: check what its build chose "
                                    f"(models/targets/{profile.name}, dvc repro build@{profile.name}), not {artifacts_dir}")
        return profile, None
    record = read_build_record(path, f"re-run dvc repro build@{profile.name}")
    try:  # the record names the file it shipped; its format and whether it is a cascade are the file's
        spec = ArtifactSpec.from_filename(record.chosen.file)
    except (TypeError, ValueError, AttributeError):
        raise EdgeCompressError(f"{path}: not a build record (no chosen.file); re-run dvc repro build@{profile.name}") \
            from None
    if record.target != profile.name:
        raise EdgeCompressError(f"{path} is the build of target {record.target!r}, not {profile.name!r}; "
                                f"re-run dvc repro build@{profile.name}")
    if record.failed:  # failed: it wrote its record only
        raise EdgeCompressError(f"{path}: build@{profile.name} found no candidate that meets every budget, so "
                                f"nothing was shipped to check; relax a budget or widen the build (see "
                                f"reports/build/{profile.name}.md), then re-run dvc repro build@{profile.name}")
    return profile.pinned(spec.format, spec.precision, spec.cascade), record


def run_target_check(target_path: str | Path, artifacts_dir: str | Path, testset: str | Path | None,
                     strict: bool, device: DeviceSpec | str | Mapping[str, Any] | None = None,
                     teacher: str | Path | None = None) -> CheckResult:
    """Load the profile, measure its artifact and judge its budgets; the result, with its verdict.

    ``device`` overrides the profile's device for a by-hand run (``edgecompress check --device``);
    ``teacher`` is the reference checkpoint of ``budgets.max_drop``.
    """
    profile, built = built_profile(load_target(target_path), artifacts_dir)
    # Inputs first: a missing export or a corrupt test set is reported before any other work.
    _inputs(profile, Path(artifacts_dir), Path(testset) if testset is not None else None)
    if testset is not None:
        load_npz_split(testset)
    reference = None
    if profile.budgets.max_drop is not None:
        if teacher is None or testset is None:
            raise EdgeCompressError(f"{target_path}: budgets.max_drop compares with the teacher; give the teacher "
                                    f"checkpoint (--teacher models/teacher.pt) and a test set")
        reference = teacher_accuracy(teacher, testset, profile.bench.accuracy_samples)
    result = check_target(profile, Path(artifacts_dir), Path(testset) if testset is not None else None, strict,
                          device, reference)
    if built is not None:
        result = replace(result, artifact=replace(result.artifact, candidate=built.chosen.name),
                         build_status=built.status)
        if built.infeasible:  # a proxy build shipped its nearest: whatever the test set says, it failed
            status = status_of(False, result.hardware_match, result.status.startswith("emulated"))
            result = replace(result, build_infeasible=True, status=status, failed=fails(status, strict),
                             warnings=(f"build@{profile.name} found no candidate that meets every budget; this "
                                       f"artifact is only the nearest one", *result.warnings))
    return result
