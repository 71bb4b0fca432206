"""The build's device search: measure, on the target's device, only the candidates that can still win.

Candidates are taken most accurate first, in groups of one network's variants whose validation
accuracies are within noise of each other (``choose.tied_with``). A group is measured together, in interleaved rounds (A B C A B C ...:
one runner process per candidate, ``deploy.measure``), so drift and background load hit all of them
alike. A candidate whose latency interval straddles a budget gets more rounds, up to the profile's
``bench.max_seconds``; still undecided, it counts as a miss. The search stops once a feasible candidate
is known and the next one is not within noise of it. Results are cached by what determines them, so
changing a budget re-chooses without re-measuring. On an emulated device latency and peak memory
decide nothing (``judge(device=False)``): no extension rounds, and only accuracy and sizes rule out.
Before a candidate is measured the latency model predicts it (``deploy.predict``): one confidently over a
latency budget is not measured and counts as a miss; whatever ships was measured. With an ``agreement``
device, a candidate that fits is compared there only where the outcome can change the choice (``settle``):
the one chosen always is.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgecompress.deploy import agreement as agree
from edgecompress.deploy.agreement import Agreement
from edgecompress.deploy.bench import local_command, run_local, runner_args
from edgecompress.deploy.budgets import latency_intervals, undecided
from edgecompress.deploy.check import extra_rounds, plan_for, run_check
from edgecompress.deploy.choose import (Candidate, NoFeasibleCandidate, allowed, cascades_for, choose, misses,
                                        ranked_for_search, tied_with)
from edgecompress.deploy.devices import DeviceSpec
from edgecompress.deploy.emulate import emulator
from edgecompress.deploy.hardware import local_gpu, timings_judged
from edgecompress.deploy.measure import PRIORITY, Job, interleave
from edgecompress.deploy.predict import PredictionSummary, Predictor, why_not
from edgecompress.deploy.stats import expand
from edgecompress.deploy.remote import run_remote
from edgecompress.deploy.targets import LATENCY_KEYS, BuildSpec, TargetProfile
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import write_json
from edgecompress.log import get_logger
from edgecompress.records import PoolEntry

CACHE_ENV = "EDGECOMPRESS_CACHE"
DEFAULT_CACHE = Path(".cache") / "measurements"

log = get_logger("build")


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
                 "bench": [b.warmup, b.runs, b.batch, b.max_seconds, b.round_count, b.sustained_s, b.sustained_intervals],
                 "device": profile.device.url, "priority": PRIORITY if profile.device.is_local else None}
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

    def get_agreement(self, key: str) -> Agreement | None:
        """A cached agreement record, or None (absent, or corrupt: compared again)."""
        path = self.dir / f"{key}.json"
        if not path.exists():
            return None
        try:
            return Agreement.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, EdgeCompressError) as e:
            log.warning(f"ignoring the corrupt agreement cache entry {path} ({e}); comparing again")
            return None

    def put(self, key: str, result: Mapping[str, Any]) -> None:
        try:
            write_json(self.dir / f"{key}.json", result)
        except OSError as e:
            raise EdgeCompressError(f"measurement cache {self.dir} (from {self.source}): cannot write "
                                    f"{key}.json ({e.strerror}); point --cache or {CACHE_ENV} at a writable "
                                    f"directory") from None


def _unusable(entry: Any) -> str | None:
    """Why a cache entry cannot be a runner result (None: it can): what ``measured`` reads must be numbers."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    lat, mem = entry.get("latency_ms"), entry.get("memory")
    if not isinstance(lat, dict) or not isinstance(mem, (dict, type(None))):
        return "no latency_ms object"
    values = [lat.get(k) for k in LATENCY_KEYS] + [(mem or {}).get("peak_rss_mb")]
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf)
           for v in values):
        return "a latency or memory figure is not a number >= 0"
    try:  # readable samples (their intervals are computed once, when the candidate is judged)
        expand(entry.get("samples_ms") or [], "samples_ms")
        expand((entry.get("sustained") or {}).get("tail_samples_ms") or [], "sustained.tail_samples_ms")
    except (EdgeCompressError, TypeError, ValueError, AttributeError) as e:
        return f"its samples are unreadable ({e})"
    return None


def probe_device(profile: TargetProfile, device: DeviceSpec) -> dict[str, Any]:
    """The device's fingerprint and runtime versions (one short runner call, no model)."""
    emu = emulator(device)
    if emu is not None:
        return emu.mark(run_local(emu.command(["--probe"]), Path("(probe)"), 120, f"target {profile.name}"))
    if device.is_local:
        return run_local(local_command(["--probe"]), Path("(probe)"), 120, f"target {profile.name}")
    return run_remote(profile, device, None, None, None, ["--probe"])


def candidate_of(c: PoolEntry, images: int | None) -> Candidate:
    """A pool entry as a candidate, not yet measured on any device (``images``: the validation images the
    pool scored every candidate on; an entry scored on more, ``accuracy_images``, counts those)."""
    return Candidate(name=c.name, model=c.model, precision=c.precision, engine=c.engine, size_bytes=c.size_bytes,
                     accuracy=c.accuracy, ece=c.ece, nll=c.nll, latency_ms={}, uncertainty=bool(c.uncertainty),
                     download_bytes=c.package_bytes, cascade=c.is_cascade,
                     accuracy_n=c.accuracy_images or images)


def measured(c: Candidate, raw: Mapping[str, Any]) -> Candidate:
    """``c`` with what the device measured: latencies, their intervals, peak memory."""
    lat = raw.get("latency_ms") or {}
    return replace(c, latency_ms={k: lat[k] for k in LATENCY_KEYS if lat.get(k) is not None},
                   latency_ci=latency_intervals(raw), peak_memory_mb=(raw.get("memory") or {}).get("peak_rss_mb"))


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
    agreements: dict[str, Agreement] = field(default_factory=dict)  # per measured candidate (agreement:)
    agreement_note: str | None = None  # where and on how many images, or why it was not compared
    prediction: PredictionSummary = field(default_factory=lambda: PredictionSummary("off"))


class Agreements:
    """A build's comparisons with the profile's ``agreement`` device: whether it can run here (said once), the
    validation images, and each candidate's record, cached by what determines it."""

    def __init__(self, profile: TargetProfile, pool_dir: Path, cache: "MeasurementCache") -> None:
        self.spec, self.cache, self.note = profile.agreement, cache, None
        self.why_not = None if self.spec is None else agree.unavailable(self.spec)
        self.identity = agree.device_identity(self.spec) if self.spec is not None and not self.why_not else {}
        self._xy: tuple[Any, Any] | None = None
        self.pool_dir = pool_dir
        if self.spec is not None and self.why_not:
            self.note = (f"not compared with {self.spec.device.url}: {self.why_not}; the build goes on without it "
                         f"(budgets.min_agreement is not judged)")
            log.warning(f"{profile.name}: agreement {self.note}")

    @property
    def active(self) -> bool:
        return self.spec is not None and not self.why_not

    def of(self, variant: TargetProfile, entry: PoolEntry) -> Agreement:
        """``entry``'s agreement (from the cache, or measured on the device and here, then cached)."""
        assert self.spec is not None
        if self._xy is None:
            with np.load(self.pool_dir / "valset.npz", allow_pickle=False) as z:
                idx = agree.subset(z["y"], self.spec.samples)
                self._xy = (z["x"][idx], z["y"][idx])
            self.note = f"compared with {self.spec.device.url} on {len(self._xy[1])} validation images"
        key = agree.cache_key(entry.sha256, variant, self.identity, len(self._xy[1]))
        found = self.cache.get_agreement(key)
        if found is None:
            found = agree.measure(variant, self.pool_dir / entry.path, *self._xy, self.spec.device)
            self.cache.put(key, found.to_json())
        return found


def _variant(profile: TargetProfile, entry: PoolEntry) -> TargetProfile:
    variant = profile.pinned(entry.format, entry.precision, entry.is_cascade)
    # Real inputs, as many as one batch: the scores are the pool's, the device gives the latency.
    return replace(variant, bench=replace(variant.bench, accuracy_samples=variant.bench.batch))


def measure_group(profile: TargetProfile, pool_dir: Path, entries: Sequence[PoolEntry],
                  device: DeviceSpec) -> dict[str, dict[str, Any]]:
    """Runner results of ``entries`` on ``device``: here (or emulated here), one process each in interleaved
    rounds; over SSH (one runner call at a time) each candidate's rounds run back to back."""
    valset = pool_dir / "valset.npz"
    if not device.is_local and not device.emulated:
        return {e.name: run_check(_variant(profile, e), pool_dir / Path(e.path).parent, valset, device)
                for e in entries}
    jobs = []
    for e in entries:
        model = (pool_dir / e.path).resolve()
        sidecar = None if e.is_cascade else f"{model}.json"
        jobs.append(Job(e.name, runner_args(_variant(profile, e), str(model), sidecar, str(valset.resolve())), model))
    emu = emulator(device)
    if emu is not None:  # its latency decides nothing, so an undecided one gets no more rounds
        found = interleave(jobs, plan_for(profile, device), f"target {profile.name}", command=emu.command)
        return {name: emu.mark(result) for name, result in found.items()}
    if not local_gpu(profile):  # a GPU profile without its GPU: the CPU's latency decides nothing either
        return interleave(jobs, plan_for(profile), f"target {profile.name}")
    return interleave(jobs, plan_for(profile), f"target {profile.name}",
                      more=lambda _, rounds: undecided(profile.budgets, rounds), extra_rounds=extra_rounds(profile))


SETTLE_LIMIT = 8  # more uncompared candidates than this: compare them all (2**8 re-choices at most)


def settle(found: Mapping[str, Candidate], pending: set[str], choice_of: Callable[[dict[str, Candidate]], str | None],
           compare: Callable[[str], None], limit: int = SETTLE_LIMIT) -> None:
    """Compare ``pending`` candidates (they fit, their agreement not yet known) until the choice is compared
    and no outcome of the others could change it.

    A comparison can only rule a candidate out. So the choice is made as if every pending one passed; the
    chosen one is compared (and the choice made again if it failed); then every set of the others is taken
    out as if it failed, and if any set changes the choice, that set is compared too. What is left uncompared
    cannot change what ships, whichever way its comparison would go: the choice equals the one made with
    every candidate compared. ``compare`` updates ``found`` and removes the name from ``pending``.
    """
    while pending:
        chosen = choice_of(dict(found))
        if chosen is None:
            return
        if chosen in pending:
            compare(chosen)
            continue
        names = sorted(pending)
        if len(names) > limit:
            for name in names:
                compare(name)
            return
        changing = next((out for k in range(1, len(names) + 1) for out in combinations(names, k)
                         if choice_of({n: c for n, c in found.items() if n not in out}) != chosen), None)
        if changing is None:
            return
        for name in changing:
            compare(name)


def search(profile: TargetProfile, spec: BuildSpec, pool_dir: Path, entries: Sequence[PoolEntry],
           reference: float | None, device: DeviceSpec, cache: "MeasurementCache", images: int | None = None,
           exhaustive: bool = False, predict: bool = True) -> SearchResult:
    """Measure what can win among the pool's ``entries``, in order of accuracy, a tie group at a time.

    ``images``: the validation images behind the pool's accuracies (their noise makes the groups);
    ``exhaustive`` measures every allowed candidate (the benchmark's baseline); ``predict`` lets the latency
    model skip candidates predicted confidently over a latency budget (``deploy.predict``).
    """
    by_name = {e.name: e for e in entries}
    kept, _ = allowed([candidate_of(e, images) for e in entries], spec, cascades_for(profile.budgets))
    order = ranked_for_search(c for c in kept if exhaustive or not misses(c, profile.budgets, reference, device=False))
    probe = probe_device(profile, device)
    variants = {c.name: _variant(profile, by_name[c.name]) for c in kept}
    predictor = Predictor(profile, probe, cache.dir, why_not(profile, device, predict), skip=not exhaustive)
    waiting = {c.name: c for c in order}  # what the loop may still measure (the predicted-over ones included)
    found: dict[str, Candidate] = {}
    raw: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    runs = hits = 0
    best: Candidate | None = None
    progress = get_logger(f"build {profile.name}")
    agreements = Agreements(profile, pool_dir, cache)
    compared: dict[str, Agreement] = {}
    pending: set[str] = set()  # fit everything else; compared with the agreement device only where it can matter
    done = 0

    def fits(name: str) -> bool:
        return not misses(found[name], profile.budgets, reference, device=timings_judged(profile, device, [raw[name]]))

    def compare(name: str) -> None:
        a = compared[name] = agreements.of(variants[name], by_name[name])
        found[name] = replace(found[name], agreement=a.top1, agreement_n=a.images, max_prob_diff=a.max_prob_diff)
        pending.discard(name)
        progress.info(f"{name}: agreement {a.text}, {'fits' if fits(name) else 'misses'}")

    def choice_of(table: dict[str, Candidate]) -> str | None:
        try:  # as build_target chooses (its judged: over every measurement)
            return choose(table.values(), profile.budgets, spec, reference, profile.name,
                          timings_judged(profile, device, list(raw.values()))).chosen.name
        except NoFeasibleCandidate:
            return None
    while order or (best is None and predictor.ruled_out):
        if not order:  # nothing measured fits: measure the predicted-over ones after all (never decided by a guess)
            order = ranked_for_search(waiting[n] for n in predictor.release())
        head = order[0]
        if best is not None and not exhaustive and not tied_with(head, best):
            skipped += [c.name for c in order]  # less accurate than a feasible one, beyond its noise
            break
        group = [c for c in order if tied_with(c, head)] if not exhaustive else list(order)
        order = [c for c in order if c not in group]
        keys = {c.name: cache.key(by_name[c.name].sha256, probe, _variant(profile, by_name[c.name])) for c in group}
        results = {c.name: r for c in group if (r := cache.get(keys[c.name])) is not None}
        hits += len(results)
        todo = predictor.screen(variants, [by_name[c.name] for c in group if c.name not in results], pool_dir)
        t0 = time.perf_counter()
        if todo:
            fresh = measure_group(profile, pool_dir, todo, device)
            for name, result in fresh.items():
                for score in ("accuracy", "nll", "ece"):  # of the one input image: the pool's scores count
                    result.pop(score, None)
                result["artifact_sha256"] = by_name[name].sha256  # the latency model's key, wherever it ran
                cache.put(keys[name], result)
            results.update(fresh)
            runs += len(todo)
        how = f"measured together in {time.perf_counter() - t0:.1f} s" if todo else "from the cache"
        for name, result in results.items():  # what this device just gave (or gave before) teaches the model
            if not by_name[name].is_cascade:
                predictor.add(result, pool_dir / by_name[name].path, by_name[name].sha256,
                              str(cache.dir / f"{keys[name]}.json"))
        for c in group:
            done += 1
            if c.name in predictor.ruled_out:
                progress.info(f"{done}/{done + len(order)} {c.name}: accuracy {100 * c.accuracy:.2f}%, "
                              f"{predictor.ruled_out[c.name]}")
                continue
            m = measured(c, results[c.name])
            judged = timings_judged(profile, device, [results[c.name]])
            missed = misses(m, profile.budgets, reference, device=judged)
            found[c.name], raw[c.name] = m, results[c.name]
            # Only a candidate every other budget lets through is compared (emulated float kernels run 20-500 ms
            # an image, and one already out cannot ship whatever its outputs), and only where it can matter.
            wait = not missed and agreements.active and not by_name[c.name].is_cascade
            if wait:
                pending.add(c.name)
            ci = m.latency_ci.get("p50")
            p50 = "n/a" if ci is None else f"{ci.point:.4f} [{ci.lo:.4f}, {ci.hi:.4f}] ms"
            progress.info(f"{done}/{done + len(order)} {c.name}: accuracy {100 * c.accuracy:.2f}%, p50 {p50}, "
                          f"{'misses' if missed else 'fits (agreement to come)' if wait else 'fits'} ({how})")
        if exhaustive:  # the benchmark's baseline compares everything
            for name in sorted(pending):
                compare(name)
        settle(found, pending, choice_of, compare)
        # The stop rule's reference: the most accurate one known to fit (an uncompared one might not).
        sure = [found[n] for n in found if n not in pending and fits(n)]
        best = max(sure, key=lambda m: m.accuracy, default=None)
    summary = predictor.summary(variants, [by_name[c.name] for c in kept], pool_dir)
    note = agreements.note
    if pending and note:
        note += (f"; {len(compared)} compared, {len(pending)} not ({', '.join(sorted(pending))}): neither outcome "
                 f"of theirs could change the choice")
    return SearchResult(found, raw, skipped, runs, hits, probe, compared, note, summary)
