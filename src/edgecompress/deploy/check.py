"""Check one target profile: run its artifact with its runtime, compare against its budgets.

The runner runs in a subprocess so its peak RSS is the model's and the runtime's, not this
process's (which may have torch loaded). When the machine does not look like the profile's
hardware, the result is labelled a proxy: it says something, but not what the profile promises.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from edgecompress.data import load_npz_split
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import read_json
from edgecompress.deploy.bench import run_local, runner_args, runner_command
from edgecompress.deploy.choose import shown_apart
from edgecompress.deploy.remote import run_remote
from edgecompress.deploy.devices import DeviceSpec, resolve_device
from edgecompress.deploy.targets import ArtifactSpec, Hardware, TargetProfile, load_target, valid_name

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


# Active providers that count as "running on a GPU" for hardware.gpu.
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                 "MIGraphXExecutionProvider")
_LATENCY_LABEL = {"p50": "p50 latency", "p90": "p90 latency", "p99": "p99 latency", "mean": "mean latency"}


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
    """Run the profile's artifact through the runner (here, or on ``device`` over SSH); the runner's JSON."""
    device = device or profile.device
    model, sidecar, testset, segments = _inputs(profile, Path(artifacts_dir), testset)
    if not device.is_local:
        names = runner_args(profile, model.name, sidecar and f"{model.name}.json",
                            None if testset is None else "testset.npz")
        raw = run_remote(profile, device, model, sidecar, testset, names, segments)
        raw["model"] = str(model)  # the remote copy is gone; reports name the artifact that was measured
        return raw
    return run_local(runner_command(profile, model, sidecar, testset), model, profile.bench.max_seconds * 3 + 60, f"target {profile.name}",
                     f" (bench.max_seconds={profile.bench.max_seconds:g}); lower bench.runs or bench.accuracy_samples")


def evaluate_budgets(profile: TargetProfile, result: dict[str, Any],
                     teacher_accuracy: float | None = None) -> list[dict[str, Any]]:
    """One row per budget; ``margin`` = measured - budget in the budget's unit (for min_accuracy,
    positive is good; for the others, negative is good). An unmeasured value fails its budget."""
    b = profile.budgets
    rows: list[dict[str, Any]] = []

    def row(name: str, label: str, unit: str, budget: float, measured: float | None, kind: str) -> None:
        ok = measured is not None and (measured <= budget if kind == "max" else measured >= budget)
        rows.append({"name": name, "label": label, "unit": unit, "kind": kind, "budget": budget,
                     "measured": measured, "ok": bool(ok),
                     "margin": None if measured is None else measured - budget})

    latency = result.get("latency_ms") or {}
    for key, budget in b.latency_ms.items():
        row(f"latency_{key}", _LATENCY_LABEL[key], "ms", budget, latency.get(key), "max")
    if b.size_mb is not None:
        size = result.get("model_size_bytes")
        row("size", "size", "MB", b.size_mb, None if size is None else size / 2**20, "max")
    if b.download_mb is not None:
        pkg = result.get("package_bytes")
        row("download", "download (package)", "MB", b.download_mb, None if pkg is None else pkg / 2**20, "max")
    if b.peak_memory_mb is not None:
        row("peak_memory", "peak memory", "MB", b.peak_memory_mb, (result.get("memory") or {}).get("peak_rss_mb"), "max")
    if b.min_accuracy is not None:
        row("accuracy", "accuracy", "", b.min_accuracy, result.get("accuracy"), "min")
    if b.max_drop is not None:
        acc = result.get("accuracy")
        drop = None if acc is None or teacher_accuracy is None else 100 * (teacher_accuracy - acc)
        row("accuracy_drop", "accuracy drop vs teacher", "pt", b.max_drop, drop, "max")
    if b.max_ece is not None:
        row("ece", "ECE", "", b.max_ece, result.get("ece"), "max")
    if b.max_nll is not None:
        row("nll", "NLL", "", b.max_nll, result.get("nll"), "max")
    return rows


def teacher_accuracy(checkpoint: str | Path, testset: str | Path, samples: int | None) -> float:
    """The teacher's accuracy on the same first ``samples`` test images the runner scores."""
    import torch

    from edgecompress.checkpoint import load_checkpoint
    from edgecompress.data import normalize_images
    from edgecompress.models import batched

    model, meta = load_checkpoint(checkpoint)
    x, y = load_npz_split(testset)
    if samples is not None:
        x, y = x[:samples], y[:samples]
    xn = torch.from_numpy(normalize_images(x, meta["data"]["mean"], meta["data"]["std"]))
    pred = batched(lambda xb: model(xb).argmax(1), xn, 1000, channels_last=False).numpy()
    return float((pred == y).mean())


def package_bytes(model: Path, cascade: bool = False) -> int:
    """Bytes the device downloads for ``model``: the build's shipped package beside it, else one packed now;
    for a cascade, its manifest plus every segment's package."""
    from edgecompress.deploy.package import PACKAGE_SUFFIX, pack_file

    if cascade:
        return model.stat().st_size + sum(package_bytes(seg) for seg in cascade_segments(model))
    shipped = model.with_name(model.name + PACKAGE_SUFFIX)
    return shipped.stat().st_size if shipped.is_file() else len(pack_file(model))


def hardware_matches(hardware: Hardware, fingerprint: dict[str, Any],
                     active_providers: list[str] | None = None) -> tuple[bool, list[str]]:
    """Whether the measuring machine is the profile's hardware; reasons list every mismatch.

    ``active_providers`` defaults to ``fingerprint["active_providers"]``; a GPU only counts when the
    runtime really ran on it, not when one is merely installed.
    """
    reasons: list[str] = []
    arch = fingerprint.get("arch") or "unknown"
    if hardware.arch != "any" and arch != hardware.arch:
        reasons.append(f"arch is {arch}, profile wants {hardware.arch}")
    if hardware.cpu:
        seen = " / ".join(filter(None, [fingerprint.get("cpu_model"), fingerprint.get("board")])) or "unknown"
        if hardware.cpu.lower() not in seen.lower():
            reasons.append(f"cpu is {seen!r}, profile wants one containing {hardware.cpu!r}")
    if hardware.gpu:
        active = list(active_providers if active_providers is not None else fingerprint.get("active_providers") or [])
        if not any(p in GPU_PROVIDERS for p in active):
            reasons.append(f"profile wants GPU {hardware.gpu!r} but the active providers are "
                           f"{', '.join(active) or 'none'} (no CUDA/TensorRT/ROCm)")
    if hardware.cores is not None:
        cores = fingerprint.get("cores")
        if not isinstance(cores, int) or cores < hardware.cores:
            reasons.append(f"{cores} cores, profile wants at least {hardware.cores}")
    return not reasons, reasons


def check_target(profile: TargetProfile, artifacts_dir: Path, testset: Path | None, strict: bool = False,
                 device: DeviceSpec | str | Mapping[str, Any] | None = None,
                 reference_accuracy: float | None = None) -> dict[str, Any]:
    """Run and evaluate one target; ``status`` is pass, fail, proxy-pass or proxy-fail.

    ``device`` overrides the profile's (see ``resolve_device``). Over SSH the fingerprint is the
    device's own, so a real board matches its profile and is not reported as a proxy.
    """
    dev = resolve_device(profile.device, device)
    raw = run_check(profile, Path(artifacts_dir), testset, dev)
    if profile.budgets.download_mb is not None:
        raw["package_bytes"] = package_bytes(Path(artifacts_dir) / profile.artifact.filename, profile.artifact.cascade)
    rows = evaluate_budgets(profile, raw, reference_accuracy)
    fp = raw.get("fingerprint") or {}
    match, reasons = hardware_matches(profile.hardware, fp, raw.get("active_providers"))
    ok = all(r["ok"] for r in rows)
    status = ("pass" if ok else "fail") if match else ("proxy-pass" if ok else "proxy-fail")
    warnings = list(raw.get("warnings") or [])
    if not match:
        warnings.append("measured on a proxy machine, not the profile's hardware: " + "; ".join(reasons))
    return {"target": profile.name, "description": profile.description, "device": dev.url,
            "remote": raw.get("remote"),
            "artifact": {"path": _display_path(raw.get("model")), "format": profile.artifact.format,
                         "precision": profile.artifact.precision, "size_bytes": raw.get("model_size_bytes"),
                         "package_bytes": raw.get("package_bytes")},
            "status": status, "strict": strict, "hardware_match": match, "hardware_reasons": reasons,
            "fingerprint": fp, "runtime": raw.get("runtime"), "bench": raw.get("bench"),
            "latency_ms": raw.get("latency_ms"), "throughput_per_s": raw.get("throughput_per_s"),
            "memory": raw.get("memory"), "accuracy": raw.get("accuracy"), "nll": raw.get("nll"),
            "ece": raw.get("ece"),
            "accuracy_samples": raw.get("accuracy_samples"), "budgets": rows, "warnings": warnings}


def gate(result: dict[str, Any], strict: bool) -> bool:
    """True when the pipeline must fail: a real miss, or (strict) a miss on proxy hardware."""
    return result["status"] == "fail" or (strict and result["status"] == "proxy-fail")


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "":
        return f"{value:.4f}"
    if unit == "ms":
        return f"{value:.3f} ms"
    return f"{value:.3f} {unit}"


def _pair(r: Mapping[str, Any]) -> tuple[str, str]:
    """(measured, limit) of a budget row as text, with enough digits that a miss never reads as equal."""
    if r["measured"] is None:
        return "n/a", _fmt(r["budget"], r["unit"])
    shown, limit = shown_apart(r["measured"], r["budget"], 4 if r["unit"] == "" else 3)
    return (f"{shown} {r['unit']}".rstrip(), f"{limit} {r['unit']}".rstrip())


def margin_text(r: Mapping[str, Any]) -> str:
    """A budget row's margin in its unit; an accuracy (a fraction) in points, as the accuracy drop is."""
    if r.get("margin") is None:
        return "n/a"
    if r["name"] == "accuracy":
        return f"{100 * r['margin']:+.2f} pt"
    return f"{r['margin']:+.3g}" + (f" {r['unit']}" if r["unit"] else "")


def _missed(rows: list[dict[str, Any]]) -> str:
    parts = []
    for r in rows:
        if r["ok"]:
            continue
        if r["measured"] is None:
            parts.append(f"{r['label']} was not measured (budget {_fmt(r['budget'], r['unit'])})")
        else:
            op = ">" if r["kind"] == "max" else "<"
            shown, limit = _pair(r)
            parts.append(f"{r['label']} {shown} {op} {limit} ({margin_text(r)})")
    return ", ".join(parts)


def render_markdown(result: dict[str, Any]) -> str:
    """A readable per-target report: the artifact, each budget vs measurement, where it ran."""
    art, fp, rt = result["artifact"], result.get("fingerprint") or {}, result.get("runtime") or {}
    lat = result.get("latency_ms") or {}
    lines = [f"# Target `{result['target']}`: **{result['status'].upper()}**", ""]
    if result.get("build_infeasible"):
        lines += [f"**Its build found no candidate that meets every budget: this artifact is only the nearest one, "
                  f"shipped by a proxy build** (reports/build/{result['target']}.md says what each misses).", ""]
    if result.get("description"):
        lines += [result["description"], ""]
    size = art.get("size_bytes")
    built = f"; candidate `{art['candidate']}`, chosen by build@{result['target']}" if art.get("candidate") else ""
    lines += [f"- artifact: `{art.get('path')}` ({art['precision']} {art['format']}, "
              f"{'n/a' if size is None else f'{size / 1024:.1f} KiB'}{built})",
              f"- accuracy: {_fmt(result.get('accuracy'), '')} on {result.get('accuracy_samples')} test images",
              f"- latency (batch {(result.get('bench') or {}).get('batch')}, n={lat.get('n')}): "
              + ", ".join(f"{k} {_fmt(lat.get(k), 'ms')}" for k in ("p50", "p90", "p99", "mean", "max")),
              f"- peak memory: {_fmt((result.get('memory') or {}).get('peak_rss_mb'), 'MB')}", "",
              "| budget | limit | measured | margin | result |", "|---|---|---|---|---|"]
    for r in result["budgets"]:
        shown, limit = _pair(r)
        lines.append(f"| {r['label']} | {'≥' if r['kind'] == 'min' else '≤'} {limit} | {shown} | {margin_text(r)} | "
                     f"{'ok' if r['ok'] else '**MISSED**'} |")
    providers = rt.get("active_providers")
    lines += ["", "## Where it ran", "",
              f"- device: {result.get('device', 'local')}",
              f"- hardware match: {'yes' if result['hardware_match'] else 'no (proxy measurement)'}"]
    lines += [f"  - {reason}" for reason in result.get("hardware_reasons") or []]
    lines += [f"- machine: {fp.get('hostname')}, {fp.get('arch')}, {fp.get('cpu_model')}"
              + (f" ({fp['board']})" if fp.get("board") else "") + f", {fp.get('cores')} cores",
              f"- os: {fp.get('os')}; python {fp.get('python')}, numpy {fp.get('numpy')}",
              f"- runtime: {rt.get('name')} {rt.get('version')}, threads {rt.get('threads') or 'default'}"
              + (f", providers {', '.join(providers)}" if providers else "")
              + (f", delegate {rt['delegate']}" if rt.get("delegate") else "")]
    if result.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    return "\n".join(lines) + "\n"


BUILD_RECORD = "build.json"  # written by the build beside the artifact it chose


def built_profile(profile: TargetProfile, artifacts_dir: str | Path) -> tuple[TargetProfile, dict[str, Any] | None]:
    """``profile`` pinned to what its build chose (``artifacts_dir`` holds a build record), and that record.

    Without a record the directory is an export directory and the profile must pin its artifact.
    """
    path = Path(artifacts_dir) / BUILD_RECORD
    if not path.is_file():
        if profile.artifact is None:
            raise EdgeCompressError(f"{profile.where} has a build section: check what its build chose "
                                    f"(models/targets/{profile.name}, dvc repro build@{profile.name}), not {artifacts_dir}")
        return profile, None
    record = read_json(path, "build record")
    try:
        spec = ArtifactSpec.from_filename(record["chosen"]["file"])
        if record["target"] != profile.name:
            raise EdgeCompressError(f"{path} is the build of target {record['target']!r}, not {profile.name!r}; "
                                    f"re-run dvc repro build@{profile.name}")
        if record.get("error") or record.get("status") == "infeasible":  # failed: it wrote its record only
            raise EdgeCompressError(f"{path}: build@{profile.name} found no candidate that meets every budget, so "
                                    f"nothing was shipped to check; relax a budget or widen the build (see "
                                    f"reports/build/{profile.name}.md), then re-run dvc repro build@{profile.name}")
        return profile.pinned(spec.format, spec.precision, spec.cascade), record
    except (KeyError, TypeError, ValueError, AttributeError):
        raise EdgeCompressError(f"{path}: not a build record (no chosen.file); re-run dvc repro build@{profile.name}") \
            from None


def run_target_check(target_path: str | Path, artifacts_dir: str | Path, testset: str | Path | None,
                     strict: bool, device: DeviceSpec | str | Mapping[str, Any] | None = None,
                     teacher: str | Path | None = None) -> dict[str, Any]:
    """Load the profile, measure its artifact and judge its budgets; the result, with ``gate_failed``.

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
    result["teacher_accuracy"] = reference
    if built is not None:
        result["artifact"]["candidate"] = built["chosen"]["name"]
        result["build_status"] = built["status"]
        if built.get("infeasible"):  # a proxy build shipped its nearest: whatever the test set says, it failed
            result["build_infeasible"] = True
            result["status"] = "fail" if result["hardware_match"] else "proxy-fail"
            result["warnings"].insert(0, f"build@{profile.name} found no candidate that meets every budget; this "
                                         f"artifact is only the nearest one")
    result["gate_failed"] = gate(result, strict)
    return result


def gate_error(result: dict[str, Any], report_path: str | Path) -> EdgeCompressError | None:
    """The error that fails the pipeline for this result (None when the gate passes)."""
    if not result.get("gate_failed"):
        return None
    where = " on proxy hardware (check.strict is true)" if result["status"] == "proxy-fail" else ""
    missed = _missed(result["budgets"])
    if result.get("build_infeasible"):
        missed = "its build found no candidate that meets every budget (this is only the nearest)" + \
            (f"; {missed}" if missed else "")
    return EdgeCompressError(f"target {result['target']} missed budget(s){where}: {missed}; see {report_path}")
