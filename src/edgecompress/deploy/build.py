"""Build one target: measure the candidate pool on the target's device, ship the best that fits.

The candidates stage exported and scored every model in every precision (accuracy, NLL, ECE on
validation images, with each artifact's own runtime). Here the profile's build spec and its
device-independent budgets (size, accuracy, calibration) filter them before anything runs; the rest
are measured with the target's runtime on its device (the same runner and flags as the check,
locally, emulated or over SSH) in order of accuracy, stopping once the most accurate feasible one and
its ties are known; on an emulated device latency and peak memory decide nothing. Measurements are
cached by what determines them, so changing a budget re-chooses without re-measuring.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping


from edgecompress.deploy.agreement import Agreement
from edgecompress.deploy.check import cascade_segments, hardware_matches, timings_judged
from edgecompress.deploy.choose import (Candidate, Choice, NoFeasibleCandidate, Rejection, allowed, cascades_for,
                                        choose, misses, nearest_first)
from edgecompress.deploy.choose import overshoot as budget_overshoot
from edgecompress.deploy.devices import DeviceSpec, resolve_device
from edgecompress.deploy.pack import pack_file
from edgecompress.deploy.package import PACKAGE_SUFFIX
from edgecompress.deploy.runner import RunnerError, segment_path
from edgecompress.deploy.search import (CACHE_ENV, DEFAULT_CACHE, MeasurementCache, SearchResult,  # noqa: F401
                                        candidate_of, search)
from edgecompress.deploy.budgets import accuracy_ci, rounds_note
from edgecompress.deploy.targets import BuildSpec, TargetProfile
from edgecompress.errors import EdgeCompressError
from edgecompress.dirs import replace_dir
from edgecompress.log import get_logger
from edgecompress.records import (INDEX, INDEX_HINT, BuildRecord, BuildSpecRecord, CandidateRow, ChosenRecord,
                                  PoolEntry, PoolIndex, ReferenceRecord, SearchRecord, entry_digest, read_index,
                                  write_build_record)

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
    return [candidate_of(c, scored_images(index)) for c in index.candidates]


def scored_images(index: PoolIndex) -> int | None:
    """How many validation images the pool's accuracies rest on (their noise decides what is tied)."""
    n = (index.scored_on or {}).get("images")
    return n if isinstance(n, int) and n > 0 else None


@dataclass(frozen=True)
class _Verdict:
    """How the build ended: its status, whether the hardware matched (and why not), the nothing-fits message."""

    status: str
    match: bool
    reasons: list[str]
    infeasible: str | None


def build_target(profile: TargetProfile, pool_dir: str | Path, out_dir: str | Path,
                 cache: MeasurementCache | None = None, device: DeviceSpec | str | Mapping[str, Any] | None = None,
                 strict: bool = False, exhaustive: bool = False, predict: bool = True) -> BuildRecord:
    """Choose, copy the chosen artifact into ``out_dir`` (whole or not at all); the build record.

    No feasible candidate: on the profile's hardware (or ``strict``) the build fails with the
    nearest candidates and what each misses; on a proxy machine it ships the nearest, labelled. ``predict``:
    the latency model may skip candidates predicted confidently over a latency budget (``deploy.predict``).
    """
    t0 = time.perf_counter()
    pool_dir, cache = Path(pool_dir), cache or MeasurementCache()
    index = load_index(pool_dir)
    dev = resolve_device(profile.device, device)
    spec = resolve_spec(index, profile)
    candidates = pool_candidates(index)
    ref = index.reference_accuracy if profile.budgets.max_drop is not None else None
    found = search(profile, spec, pool_dir, index.candidates, ref, dev, cache, scored_images(index), exhaustive,
                   predict)
    # What choose() sees: the measured ones and those the spec or a static budget ruled out; the
    # skipped ones cannot win (less accurate than a feasible one) and are reported as such, and those
    # predicted over a latency budget were never measured, so they can never be chosen.
    out = found.prediction.ruled_out
    table = [found.measured.get(c.name, c) for c in candidates if c.name not in found.skipped and c.name not in out]
    fp = found.probe.get("fingerprint") or {}
    # Emulated timings, or a GPU profile's measured without its GPU, are recorded and never judged.
    judged = timings_judged(profile, dev, list(found.raw.values()))
    try:
        choice = choose(table, profile.budgets, spec, ref, profile.name, judged)
        infeasible = None
    except NoFeasibleCandidate as e:
        if not allowed(table, spec, cascades_for(profile.budgets))[0]:
            raise  # the profile allows nothing in the pool: its build section is wrong, on any machine
        infeasible = e
        choice = _nearest(table, profile, spec, ref, judged)
    chosen = choice.chosen
    chosen_raw = found.raw.get(chosen.name) or {}
    match, reasons = hardware_matches(profile.hardware, chosen_raw.get("fingerprint") or fp,
                                      chosen_raw.get("active_providers"))
    status = ("built" if match else "proxy-built") if infeasible is None else \
        ("infeasible" if match else "proxy-infeasible")
    verdict = _Verdict(status, match, reasons, str(infeasible) if infeasible else None)
    record = _record(profile, spec, index, choice, found, verdict, ref, dev, time.perf_counter() - t0)
    said = record.decision or {}
    if said.get("why"):
        log.info(f"{profile.name}: {chosen.name} {said['why']}")
    if said.get("warning"):
        log.warning(f"{profile.name}: {said['warning']}")
    failed = infeasible is not None and (match or strict)
    if failed:  # in the record on disk too: the check of this directory must say the build failed
        record = replace(record, error=str(infeasible))
    # A failed build leaves only its record: nothing in out_dir may look shippable (a stale artifact included).
    _write_out(pool_dir, None if failed else index.entry(chosen.name), Path(out_dir), record)
    return record


def overshoot(c: Candidate, profile: TargetProfile, ref: float | None) -> float:
    """How far ``c`` is outside ``profile``'s budgets (``choose.overshoot``; 0 when it fits)."""
    return budget_overshoot(c, profile.budgets, ref)


def _nearest(table: list[Candidate], profile: TargetProfile, spec: BuildSpec, ref: float | None,
             judged: bool = True) -> Choice:
    """On proxy hardware with nothing feasible: the allowed candidate closest to its budgets (``judged``
    False: of those known without the device's timings and memory)."""
    kept, rejected = allowed(table, spec, cascades_for(profile.budgets))
    best = min(kept, key=lambda c: nearest_first(c, profile.budgets, ref, judged))
    rest = [Rejection(c.name, tuple(misses(c, profile.budgets, ref, judged))) for c in kept if c.name != best.name]
    return Choice(chosen=best, feasible=(), rejected=tuple(rejected + rest))


def _row(c: Candidate, fate: str, reasons: tuple[str, ...], raw: Mapping[str, Any] | None,
         source: str, agreement: Agreement | None = None) -> CandidateRow:
    return CandidateRow(name=c.name, model=c.model, precision=c.precision, engine=c.engine, size_bytes=c.size_bytes,
                        download_bytes=c.download_bytes, accuracy=c.accuracy, nll=c.nll, ece=c.ece,
                        latency_ms=dict(c.latency_ms) or None, peak_memory_mb=c.peak_memory_mb, measured=source,
                        fate=fate, why=tuple(reasons), warnings=tuple((raw or {}).get("warnings") or []),
                        accuracy_ci=accuracy_ci(c.accuracy, c.accuracy_n),
                        latency_ci={k: v.to_json() for k, v in c.latency_ci.items()} or None,
                        conditions=(raw or {}).get("conditions"), rounds=rounds_note(raw),
                        agreement=None if agreement is None else agreement.to_json())


def decision(profile: TargetProfile, index: PoolIndex, choice: Choice) -> dict[str, Any]:
    """How the choice was made beyond "most accurate that fits": the tie and how it was broken, and whether
    an accuracy floor was met by less than the validation-to-test gap the reference model shows."""
    out: dict[str, Any] = {"tied": list(choice.tied), "why": choice.why, "val_test_gap_pt": None, "warning": None}
    ref_val, ref_test = index.reference_accuracy, (index.reference or {}).get("test_accuracy")
    if ref_test is None:
        return out
    gap = 100 * (ref_val - ref_test)
    out["val_test_gap_pt"] = round(gap, 3)
    floor = profile.budgets.min_accuracy
    margin = None if floor is None else 100 * (choice.chosen.accuracy - floor)
    if margin is not None and gap > 0 and margin < gap:
        out["warning"] = (f"{choice.chosen.name} meets min_accuracy {100 * floor:.2f}% on validation by "
                          f"{margin:.2f} pt, inside the {gap:.2f} pt the reference model ({index.reference_model}) "
                          f"loses from validation to test: its check on test may fail")
    return out


def _record(profile: TargetProfile, spec: BuildSpec, index: PoolIndex, choice: Choice, found: SearchResult,
            verdict: _Verdict, ref: float | None, dev: DeviceSpec, seconds: float) -> BuildRecord:
    measured, raw = found.measured, found.raw
    skipped = [Rejection(n, (f"not measured: {choice.chosen.name} is more accurate and fits",)) for n in found.skipped]
    pred = found.prediction
    why = {r.name: r.reasons for r in (*choice.rejected, *skipped)}
    why.update({n: (reason,) for n, reason in pred.ruled_out.items()})
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
            cand = candidate_of(entry, scored_images(index))
        source = "device" if name in raw else "not measured"
        rows.append(replace(_row(cand, fate, tuple(why.get(name, ())), raw.get(name), source,
                                 found.agreements.get(name)), predicted_ms=pred.predicted.get(name)))
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
                            val_accuracy=ch.accuracy, val_ece=ch.ece, val_nll=ch.nll, latency_ms=dict(ch.latency_ms),
                            val_accuracy_ci=accuracy_ci(ch.accuracy, ch.accuracy_n),
                            latency_ci={k: v.to_json() for k, v in ch.latency_ci.items()} or None),
        reference=ReferenceRecord(model=index.reference_model, val_accuracy=index.reference_accuracy,
                                  used=ref is not None),
        scored_on=index.scored_on,
        search=SearchRecord(candidates=len(index.candidates), device_runs=found.device_runs,
                            cache_hits=found.cache_hits, skipped=len(skipped), seconds=round(seconds, 2),
                            prediction=pred.note, predicted_skips=len(pred.ruled_out) if pred.on else None,
                            model_error=None if pred.holdout is None else
                            {"mdape": round(pred.holdout.mdape, 4), "n": pred.holdout.n}),
        infeasible=verdict.infeasible, candidates=tuple(rows), decision=decision(profile, index, choice),
        agreement=found.agreement_note)


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
