"""Build one target: measure the candidate pool on the target's device, ship the best that fits.

The candidates stage exported and scored every model in every precision (accuracy, NLL, ECE on
validation images, with each artifact's own runtime). Here the profile's build spec and its
device-independent budgets (size, accuracy, calibration) filter them before anything runs; the rest
are measured with the target's runtime on its device (the same runner and flags as the check,
locally or over SSH) in order of accuracy, stopping once the most accurate feasible one and its ties
are known. Measurements are cached by what determines them, so changing a budget re-chooses
without re-measuring.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgecompress.deploy.bench import local_command, run_local
from edgecompress.deploy.check import cascade_segments, hardware_matches, run_check
from edgecompress.deploy.choose import (Candidate, Choice, NoFeasibleCandidate, Rejection, allowed, cascades_for,
                                        choose, misses, nearest_first, ranked_for_search)
from edgecompress.deploy.choose import overshoot as budget_overshoot
from edgecompress.deploy.devices import DeviceSpec, resolve_device
from edgecompress.deploy.pack import pack_file
from edgecompress.deploy.package import PACKAGE_SUFFIX
from edgecompress.deploy.remote import run_remote
from edgecompress.deploy.runner import RunnerError, segment_path
from edgecompress.deploy.targets import LATENCY_KEYS, BuildSpec, TargetProfile
from edgecompress.errors import EdgeCompressError
from edgecompress.dirs import replace_dir
from edgecompress.fileio import write_json
from edgecompress.log import get_logger
from edgecompress.records import (INDEX, INDEX_HINT, BuildRecord, BuildSpecRecord, CandidateRow, ChosenRecord,
                                  PoolEntry, PoolIndex, ReferenceRecord, SearchRecord, entry_digest, read_index,
                                  write_build_record)

CACHE_ENV = "EDGECOMPRESS_CACHE"
DEFAULT_CACHE = Path(".cache") / "measurements"

log = get_logger("build")


def load_index(pool_dir: str | Path) -> PoolIndex:
    """The pool's index, checked against the files it names (a missing or changed artifact is an error).

    Size and sha256: a file swapped for another of the same size must not ship on the scores and the
    cached measurements of the one that was scored (the cache keys on the index's sha256).
    """
    pool_dir = Path(pool_dir)
    index = read_index(pool_dir)
    for c in index.candidates:
        path = pool_dir / c.path
        try:  # a cascade: its manifest is its sidecar; its segments lie beside it, never outside the pool
            segments = [segment_path(path.parent, f, f"{pool_dir / INDEX}: candidate {c.name!r} segment {k}",
                                     INDEX_HINT) for k, f in enumerate(c.segments or [])]
        except RunnerError as e:
            raise EdgeCompressError(str(e)) from None
        if not all(f.is_file() for f in [path, *segments] + ([] if segments else [Path(f"{path}.json")])):
            raise EdgeCompressError(f"{path}: candidate {c.name} (or its sidecar or segments) is missing; {INDEX_HINT}")
        size = sum(f.stat().st_size for f in segments) if segments else path.stat().st_size
        if size != c.size_bytes:
            raise EdgeCompressError(f"{path}: {size} bytes but the index says {c.size_bytes}: "
                                    f"the file changed after it was scored; {INDEX_HINT}")
        if entry_digest(path, segments) != c.sha256:
            raise EdgeCompressError(f"{path}: its sha256 differs from the index's (same size, other bytes): the file "
                                    f"changed after it was scored, so its scores and measurements are not its own; "
                                    f"{INDEX_HINT}")
    return index


def resolve_spec(index: PoolIndex, profile: TargetProfile) -> BuildSpec:
    """The profile's build spec with model aliases resolved (a pin's ``pruned`` -> ``pruned-30``)."""
    models = index.models
    spec = profile.search
    if spec.models == "all":
        return spec
    resolved = tuple(index.aliases.get(m, m) for m in spec.models)
    unknown = [m for m, r in zip(spec.models, resolved) if r not in models]
    if unknown:
        raise EdgeCompressError(f"{profile.where}: build.models names {unknown}, which the candidate pool does not "
                                f"have; it has {', '.join(models + list(index.aliases))}")
    return replace(spec, models=resolved)


def pool_candidates(index: PoolIndex) -> list[Candidate]:
    """The index as candidates, not yet measured on any device."""
    return [_candidate(c) for c in index.candidates]


def _candidate(c: PoolEntry) -> Candidate:
    return Candidate(name=c.name, model=c.model, precision=c.precision, engine=c.engine, size_bytes=c.size_bytes,
                     accuracy=c.accuracy, ece=c.ece, nll=c.nll, latency_ms={}, uncertainty=bool(c.uncertainty),
                     download_bytes=c.package_bytes, cascade=c.is_cascade)


class MeasurementCache:
    """Runner results on disk, keyed by everything that determines them.

    The key: the artifact's bytes (sha256), the device (probe: machine fingerprint, runtime versions,
    runner version), the runtime settings (engine, threads, providers or XNNPACK) and the bench
    settings. A changed budget changes none of these, so re-choosing costs no device run.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.source = "--cache" if directory else f"${CACHE_ENV}" if os.environ.get(CACHE_ENV) else "the default"
        self.dir = Path(directory or os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
        # Before any device run: a file in the way would fail the first put with FileExistsError.
        for p in (self.dir, *self.dir.parents):
            if p.exists():
                if not p.is_dir():
                    raise EdgeCompressError(f"measurement cache {self.dir} (from {self.source}): {p} is a file, "
                                            f"not a directory; point --cache or {CACHE_ENV} at a directory")
                break

    @staticmethod
    def key(sha256: str, probe: Mapping[str, Any], profile: TargetProfile) -> str:
        rt, b = profile.runtime, profile.bench
        engine = rt.engine or ""
        parts = {"artifact": sha256, "fingerprint": probe.get("fingerprint"), "runner": probe.get("runner_version"),
                 "runtime": (probe.get("runtimes") or {}).get(engine), "engine": engine, "threads": rt.threads,
                 "providers": list(rt.providers) if engine == "onnxruntime" else None,
                 "xnnpack": rt.xnnpack if engine == "litert" else None,
                 "bench": [b.warmup, b.runs, b.batch, b.max_seconds], "device": profile.device.url}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry, or None when absent; a corrupt one (a killed run's, an edited one) is measured again."""
        path = self.dir / f"{key}.json"
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text())
            why = _unusable(entry)
        except (OSError, ValueError) as e:
            why = f"{type(e).__name__}: {e}"
        if why is None:
            return entry
        log.warning(f"ignoring the corrupt measurement cache entry {path} ({why}); measuring again")
        return None

    def put(self, key: str, result: Mapping[str, Any]) -> None:
        try:
            write_json(self.dir / f"{key}.json", result)
        except OSError as e:
            raise EdgeCompressError(f"measurement cache {self.dir} (from {self.source}): cannot write "
                                    f"{key}.json ({e.strerror}); point --cache or {CACHE_ENV} at a writable "
                                    f"directory") from None


def _unusable(entry: Any) -> str | None:
    """Why a cache entry cannot be a runner result (None: it can): what ``_measured`` reads must be numbers."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    lat, mem = entry.get("latency_ms"), entry.get("memory")
    if not isinstance(lat, dict) or not isinstance(mem, (dict, type(None))):
        return "no latency_ms object"
    values = [lat.get(k) for k in LATENCY_KEYS] + [(mem or {}).get("peak_rss_mb")]
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf)
           for v in values):
        return "a latency or memory figure is not a number >= 0"
    return None


def probe_device(profile: TargetProfile, device: DeviceSpec) -> dict[str, Any]:
    """The device's fingerprint and runtime versions (one short runner call, no model)."""
    if device.is_local:
        return run_local(local_command(["--probe"]), Path("(probe)"), 120, f"target {profile.name}")
    return run_remote(profile, device, None, None, None, ["--probe"])


def _measured(c: Candidate, raw: Mapping[str, Any]) -> Candidate:
    lat = raw.get("latency_ms") or {}
    return replace(c, latency_ms={k: lat[k] for k in LATENCY_KEYS if lat.get(k) is not None},
                   peak_memory_mb=(raw.get("memory") or {}).get("peak_rss_mb"))


@dataclass(frozen=True)
class SearchResult:
    """What the search found: the measured candidates and their raw runner results, those skipped (less
    accurate than a feasible one), the run counts and the device's probe."""

    measured: dict[str, Candidate]
    raw: dict[str, dict[str, Any]]
    skipped: list[str]
    device_runs: int
    cache_hits: int
    probe: dict[str, Any]


def search(profile: TargetProfile, spec: BuildSpec, pool_dir: Path, entries: Sequence[PoolEntry],
           reference: float | None, device: DeviceSpec, cache: MeasurementCache,
           exhaustive: bool = False) -> SearchResult:
    """Measure what can win among the pool's ``entries``, in order of accuracy; every candidate with its fate.

    ``exhaustive`` measures every allowed candidate (the benchmark's baseline).
    """
    by_name = {e.name: e for e in entries}
    kept, _ = allowed([_candidate(e) for e in entries], spec, cascades_for(profile.budgets))
    order = ranked_for_search(c for c in kept if exhaustive or not misses(c, profile.budgets, reference, device=False))
    probe = probe_device(profile, device)
    measured: dict[str, Candidate] = {}
    raw: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    runs = hits = 0
    best: float | None = None
    progress = get_logger(f"build {profile.name}")
    for i, c in enumerate(order):
        if best is not None and c.accuracy < best and not exhaustive:
            skipped.append(c.name)
            continue
        entry = by_name[c.name]
        variant = profile.pinned(entry.format, entry.precision, entry.is_cascade)
        # Real inputs, as many as one batch: the scores are the pool's, the device gives the latency.
        variant = replace(variant, bench=replace(variant.bench, accuracy_samples=variant.bench.batch))
        key = cache.key(entry.sha256, probe, variant)
        result = cache.get(key)
        if result is None:
            t0 = time.perf_counter()
            model_dir = pool_dir / Path(entry.path).parent
            result = run_check(variant, model_dir, pool_dir / "valset.npz", device)
            for score in ("accuracy", "nll", "ece"):  # of the one input image: the pool's scores count
                result.pop(score, None)
            cache.put(key, result)
            runs += 1
            how = f"measured in {time.perf_counter() - t0:.1f} s"
        else:
            hits += 1
            how = "from the cache"
        m = _measured(c, result)
        measured[c.name], raw[c.name] = m, result
        fits = not misses(m, profile.budgets, reference)
        if fits and best is None:
            best = m.accuracy
        p50 = m.latency_ms.get("p50")
        progress.info(f"{i + 1}/{len(order)} {c.name}: accuracy {100 * c.accuracy:.2f}%, "
                      f"p50 {'n/a' if p50 is None else f'{p50:.4f} ms'}, {'fits' if fits else 'misses'} ({how})")
    return SearchResult(measured, raw, skipped, runs, hits, probe)


@dataclass(frozen=True)
class _Verdict:
    """How the build ended: its status, whether the hardware matched (and why not), the nothing-fits message."""

    status: str
    match: bool
    reasons: list[str]
    infeasible: str | None


def build_target(profile: TargetProfile, pool_dir: str | Path, out_dir: str | Path,
                 cache: MeasurementCache | None = None, device: DeviceSpec | str | Mapping[str, Any] | None = None,
                 strict: bool = False, exhaustive: bool = False) -> BuildRecord:
    """Choose, copy the chosen artifact into ``out_dir`` (whole or not at all); the build record.

    No feasible candidate: on the profile's hardware (or ``strict``) the build fails with the
    nearest candidates and what each misses; on a proxy machine it ships the nearest, labelled.
    """
    t0 = time.perf_counter()
    pool_dir, cache = Path(pool_dir), cache or MeasurementCache()
    index = load_index(pool_dir)
    dev = resolve_device(profile.device, device)
    spec = resolve_spec(index, profile)
    candidates = pool_candidates(index)
    ref = index.reference_accuracy if profile.budgets.max_drop is not None else None
    found = search(profile, spec, pool_dir, index.candidates, ref, dev, cache, exhaustive)
    # What choose() sees: the measured ones and those the spec or a static budget ruled out; the
    # skipped ones cannot win (less accurate than a feasible one) and are reported as such.
    table = [found.measured.get(c.name, c) for c in candidates if c.name not in found.skipped]
    fp = found.probe.get("fingerprint") or {}
    try:
        choice = choose(table, profile.budgets, spec, ref, profile.name)
        infeasible = None
    except NoFeasibleCandidate as e:
        if not allowed(table, spec, cascades_for(profile.budgets))[0]:
            raise  # the profile allows nothing in the pool: its build section is wrong, on any machine
        infeasible = e
        choice = _nearest(table, profile, spec, ref)
    chosen = choice.chosen
    chosen_raw = found.raw.get(chosen.name) or {}
    match, reasons = hardware_matches(profile.hardware, chosen_raw.get("fingerprint") or fp,
                                      chosen_raw.get("active_providers"))
    status = ("built" if match else "proxy-built") if infeasible is None else \
        ("infeasible" if match else "proxy-infeasible")
    verdict = _Verdict(status, match, reasons, str(infeasible) if infeasible else None)
    record = _record(profile, spec, index, choice, found, verdict, ref, dev, time.perf_counter() - t0)
    failed = infeasible is not None and (match or strict)
    if failed:  # in the record on disk too: the check of this directory must say the build failed
        record = replace(record, error=str(infeasible))
    # A failed build leaves only its record: nothing in out_dir may look shippable (a stale artifact included).
    _write_out(pool_dir, None if failed else index.entry(chosen.name), Path(out_dir), record)
    return record


def overshoot(c: Candidate, profile: TargetProfile, ref: float | None) -> float:
    """How far ``c`` is outside ``profile``'s budgets (``choose.overshoot``; 0 when it fits)."""
    return budget_overshoot(c, profile.budgets, ref)


def _nearest(table: list[Candidate], profile: TargetProfile, spec: BuildSpec, ref: float | None) -> Choice:
    """On proxy hardware with nothing feasible: the allowed candidate closest to its budgets."""
    kept, rejected = allowed(table, spec, cascades_for(profile.budgets))
    best = min(kept, key=lambda c: nearest_first(c, profile.budgets, ref))
    rest = [Rejection(c.name, tuple(misses(c, profile.budgets, ref))) for c in kept if c.name != best.name]
    return Choice(chosen=best, feasible=(), rejected=tuple(rejected + rest))


def _row(c: Candidate, fate: str, reasons: tuple[str, ...], raw: Mapping[str, Any] | None,
         source: str) -> CandidateRow:
    return CandidateRow(name=c.name, model=c.model, precision=c.precision, engine=c.engine, size_bytes=c.size_bytes,
                        download_bytes=c.download_bytes, accuracy=c.accuracy, nll=c.nll, ece=c.ece,
                        latency_ms=dict(c.latency_ms) or None, peak_memory_mb=c.peak_memory_mb, measured=source,
                        fate=fate, why=tuple(reasons), warnings=tuple((raw or {}).get("warnings") or []))


def _record(profile: TargetProfile, spec: BuildSpec, index: PoolIndex, choice: Choice, found: SearchResult,
            verdict: _Verdict, ref: float | None, dev: DeviceSpec, seconds: float) -> BuildRecord:
    measured, raw = found.measured, found.raw
    skipped = [Rejection(n, (f"not measured: {choice.chosen.name} is more accurate and fits",)) for n in found.skipped]
    why = {r.name: r.reasons for r in (*choice.rejected, *skipped)}
    for c in pool_candidates(index):  # never run on the device: only what ruled them out beforehand counts
        static = misses(c, profile.budgets, ref, device=False)
        if c.name not in raw and static and not any(r.startswith(("model ", "precision ", "engine ", "requires "))
                                                     for r in why.get(c.name, ())):
            why[c.name] = tuple(static)
    rows = []
    by_name = {c.name: c for c in (*choice.feasible, *measured.values())}
    for entry in index.candidates:
        name = entry.name
        cand = by_name.get(name)
        fate = ("chosen" if name == choice.chosen.name else "feasible, less accurate" if cand in choice.feasible
                else "skipped" if any(s.name == name for s in skipped) else "rejected")
        if cand is None:
            cand = _candidate(entry)
        source = "device" if name in raw else "not measured"
        rows.append(_row(cand, fate, tuple(why.get(name, ())), raw.get(name), source))
    ch = choice.chosen
    chosen_raw = raw.get(ch.name) or {}
    return BuildRecord(
        target=profile.name, description=profile.description, status=verdict.status,
        hardware_match=verdict.match, hardware_reasons=tuple(verdict.reasons), device=dev.url,
        fingerprint=chosen_raw.get("fingerprint") or found.probe.get("fingerprint"),
        runtime=chosen_raw.get("runtime"),
        build=BuildSpecRecord(models=spec.models if spec.models == "all" else tuple(spec.models),
                              precisions=tuple(spec.precisions), engines=tuple(spec.engines),
                              requires=tuple(spec.requires), pinned=profile.build is None),
        chosen=ChosenRecord(name=ch.name, model=ch.model, file=index.entry(ch.name).file, precision=ch.precision,
                            engine=ch.engine, size_bytes=ch.size_bytes, download_bytes=ch.download_bytes,
                            val_accuracy=ch.accuracy, val_ece=ch.ece, val_nll=ch.nll, latency_ms=dict(ch.latency_ms)),
        reference=ReferenceRecord(model=index.reference_model, val_accuracy=index.reference_accuracy,
                                  used=ref is not None),
        scored_on=index.scored_on,
        search=SearchRecord(candidates=len(index.candidates), device_runs=found.device_runs,
                            cache_hits=found.cache_hits, skipped=len(skipped), seconds=round(seconds, 2)),
        infeasible=verdict.infeasible, candidates=tuple(rows))


def _write_out(pool_dir: Path, chosen: PoolEntry | None, out_dir: Path, record: BuildRecord) -> None:
    """Replace ``out_dir`` by the chosen artifact, its sidecar, packages and the record (``chosen`` None:
    the record alone)."""
    scratch = Path(tempfile.mkdtemp(prefix="edgecompress-build."))
    try:
        if chosen is not None:
            _copy_artifact(pool_dir / chosen.path, scratch, chosen.is_cascade)
        write_build_record(scratch, record)
        replace_dir(scratch, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _copy_artifact(src: Path, scratch: Path, cascade: bool) -> None:
    shutil.copyfile(src, scratch / src.name)
    # A cascade: the manifest (its own sidecar) and its segments; else the artifact and its sidecar.
    shipped = cascade_segments(src) if cascade else [src]
    if shipped == [src]:
        shutil.copyfile(f"{src}.json", scratch / f"{src.name}.json")
    for f in shipped:
        shutil.copyfile(f, scratch / f.name)
        # What the device downloads and stores: restores the artifact bit for bit (edgecompress unpack).
        (scratch / f"{f.name}{PACKAGE_SUFFIX}").write_bytes(pack_file(f))
