"""Choose what a target ships: the most accurate candidate that meets every budget.

Pure selection over a table of measured candidates (model x precision x engine). ``allowed``
applies the build spec before anything is measured, so the on-device search stays small;
``misses`` words what ``budgets.judge`` finds of one candidate; ``choose`` ranks the feasible
ones and, when none is left, says which came nearest and by how much each budget was missed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from edgecompress.deploy.budgets import MIB, Measurement, judge  # noqa: F401 - MIB re-exported
from edgecompress.deploy.stats import Interval, wilson, within_noise
# BuildSpec lives with the profile it is part of; re-exported here beside the selection that applies it.
from edgecompress.deploy.targets import BUILD_PRECISIONS, ENGINES, LATENCY_KEYS, Budgets, BuildSpec  # noqa: F401
from edgecompress.errors import EdgeCompressError

NEAREST = 5  # rows of the "nearest candidates" table in the infeasible error
# Among accuracy-tied candidates a latency difference decides only when the 95% intervals stay apart even
# after stretching the faster one's upper end by this factor: a real 25% gap, which load and drift between
# builds do not reverse; anything closer is a tie. At 1.10 the host's teacher fp16 against int8 ONNX (p50
# 0.42 against 0.48 ms, 1.14x) went to fp16 in 9 of 10 builds from an empty cache and to int8 in 1.
SEPARATION = 1.25


class NoFeasibleCandidate(EdgeCompressError):
    """No candidate of the build meets every budget of the target."""


def _is_number(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


@dataclass(frozen=True)
class Candidate:
    """One measured artifact: validation accuracy and calibration, latency on the device."""

    name: str  # e.g. "student/int8.tflite"
    model: str  # e.g. "teacher", "ensemble", "student", "pruned-0.5"
    precision: str
    engine: str
    size_bytes: int
    accuracy: float  # validation accuracy, fraction
    ece: float | None
    nll: float | None
    latency_ms: Mapping[str, float]  # keys among LATENCY_KEYS; a missing key was not measured
    peak_memory_mb: float | None = None
    uncertainty: bool = False  # has heads or members, so it can report uncertainty on the device
    download_bytes: int | None = None  # its Huffman-coded package (deploy.package); None: not packed
    cascade: bool = False  # an early-exit cascade: only targets with a mean-latency budget consider it
    latency_ci: Mapping[str, Interval] = field(default_factory=dict)  # 95% intervals from the runner's samples
    accuracy_n: int | None = None  # validation images behind ``accuracy`` (None: no interval known)
    agreement: float | None = None  # top-1 agreement with this host on the profile's agreement device
    agreement_n: int | None = None
    max_prob_diff: float | None = None

    def __post_init__(self) -> None:
        # A candidate table is read from reports; a wrong value here would silently pick the wrong model.
        def bad(what: str) -> EdgeCompressError:
            return EdgeCompressError(f"candidate {self.name!r}: {what}")
        if not isinstance(self.name, str) or not self.name or not isinstance(self.model, str) or not self.model:
            raise bad("name and model must be non-empty strings")
        if self.precision not in BUILD_PRECISIONS:
            raise bad(f"precision {self.precision!r} is not one of {', '.join(BUILD_PRECISIONS)}")
        if self.engine not in ENGINES:
            raise bad(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        for k, n in (("size_bytes", self.size_bytes), ("download_bytes", self.download_bytes)):
            if (n is not None or k == "size_bytes") and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
                raise bad(f"{k} {n!r} must be an integer >= 0")
        if not _is_number(self.accuracy) or not 0 <= self.accuracy <= 1:
            raise bad(f"accuracy {self.accuracy!r} must be a fraction between 0 and 1")
        for k, v in (("ece", self.ece), ("nll", self.nll), ("peak_memory_mb", self.peak_memory_mb)):
            if v is not None and (not _is_number(v) or v < 0):
                raise bad(f"{k} {v!r} must be a number >= 0 or None")
        for k, v in self.latency_ms.items():
            if k not in LATENCY_KEYS or (v is not None and (not _is_number(v) or v < 0)):
                raise bad(f"latency_ms {k}: {v!r} needs a key among {', '.join(LATENCY_KEYS)} and a value >= 0")
        object.__setattr__(self, "latency_ms", dict(self.latency_ms))  # own copy, as Budgets does
        object.__setattr__(self, "latency_ci", dict(self.latency_ci))


@dataclass(frozen=True)
class Rejection:
    """A candidate left out, and every reason why."""

    name: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Choice:
    """The chosen candidate, all feasible ones (best first) and the rejected ones; ``tied``: the feasible
    candidates whose validation accuracy is within noise of the best, and ``why`` how the tie was broken."""

    chosen: Candidate
    feasible: tuple[Candidate, ...]
    rejected: tuple[Rejection, ...] = ()
    tied: tuple[str, ...] = ()
    why: str = ""


def allowed(candidates: Iterable[Candidate], spec: BuildSpec,
            cascades: bool = False) -> tuple[list[Candidate], list[Rejection]]:
    """(kept, rejected) by the build spec alone; no measurement is looked at. ``cascades``: the target budgets
    mean latency (``cascades_for``), the one figure an early-exit cascade improves; its p90/p99 are the slow
    path's, so targets on percentiles never consider one."""
    kept: list[Candidate] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for c in candidates:
        if c.name in seen:  # rejections and reports are keyed by name
            raise EdgeCompressError(f"candidate {c.name!r} is listed twice")
        seen.add(c.name)
        reasons = []
        if spec.models != "all" and c.model not in spec.models:
            reasons.append(f"model {c.model} not allowed by build.models")
        if c.precision not in spec.precisions:
            reasons.append(f"precision {c.precision} not allowed by build.precisions")
        if c.engine not in spec.engines:
            reasons.append(f"engine {c.engine} not allowed by build.engines")
        if "uncertainty" in spec.requires and not c.uncertainty:
            reasons.append("requires uncertainty: no heads or members")
        if c.cascade and not cascades:
            reasons.append("early-exit cascade: only for targets with a mean-latency budget (budgets.latency_ms.mean)")
        if reasons:
            rejected.append(Rejection(c.name, tuple(reasons)))
        else:
            kept.append(c)
    return kept, rejected


def cascades_for(budgets: Budgets) -> bool:
    """Whether a target with ``budgets`` considers early-exit cascades: it budgets mean latency."""
    return "mean" in budgets.latency_ms


def _need_reference(budgets: Budgets, reference_accuracy: float | None) -> None:
    if budgets.max_drop is not None and reference_accuracy is None:
        raise EdgeCompressError("budgets.max_drop compares with the teacher; give reference_accuracy (the "
                                "teacher's validation accuracy)")
    if reference_accuracy is not None and (not _is_number(reference_accuracy) or not 0 <= reference_accuracy <= 1):
        raise EdgeCompressError(f"reference_accuracy {reference_accuracy!r} must be a fraction between 0 and 1")


def measurement(candidate: Candidate, reference_accuracy: float | None = None) -> Measurement:
    """What the budgets judge of ``candidate`` (``reference_accuracy``: the teacher's, for max_drop)."""
    c = candidate
    return Measurement(latency_ms=c.latency_ms, size_bytes=c.size_bytes, download_bytes=c.download_bytes,
                       peak_memory_mb=c.peak_memory_mb, accuracy=c.accuracy, ece=c.ece, nll=c.nll,
                       reference_accuracy=reference_accuracy, latency_ci=c.latency_ci, accuracy_n=c.accuracy_n,
                       agreement=c.agreement, agreement_n=c.agreement_n)


def misses(candidate: Candidate, budgets: Budgets, reference_accuracy: float | None,
           device: bool = True) -> list[str]:
    """Every budget ``candidate`` misses, with the amount; an unmeasured value misses its budget.

    ``device=False`` judges only what is known before the device runs it (size, accuracy,
    calibration), so the search never measures a candidate that cannot win.
    """
    _need_reference(budgets, reference_accuracy)
    return [r.reason for r in judge(measurement(candidate, reference_accuracy), budgets, device) if r.missed]


def _best_first(c: Candidate) -> tuple[float, float, float, int, str]:
    """Accuracy first; equal accuracy goes to the faster (p90, then p50), then the smaller one."""
    lat = c.latency_ms
    return (-c.accuracy, lat.get("p90") if lat.get("p90") is not None else math.inf,
            lat.get("p50") if lat.get("p50") is not None else math.inf, c.size_bytes, c.name)


def tied_with(c: Candidate, best: Candidate) -> bool:
    """Whether ``c`` is a variant of ``best``'s network (another precision or engine) whose validation
    accuracy is within noise of ``best``'s (the Wilson interval's half-width on the images both were scored
    on); without an image count only an exact tie counts.

    Only variants of one network tie: they share almost every prediction, so a gap of a few images between
    them is noise. Different networks are ranked by their accuracies, which are fixed numbers (a re-run cannot
    flip them): on 4,000 validation images the half-width is about 0.7 pt, which would call the student
    (93.15%) equal to the teacher (93.85%), though the 10,000 test images put them 1.3 pt apart.
    """
    if c.model != best.model:
        return False
    n = best.accuracy_n or c.accuracy_n
    return c.accuracy == best.accuracy if not n else within_noise(c.accuracy, best.accuracy, n)


def decision_key(budgets: Budgets) -> str:
    """The latency statistic that separates tied candidates: the profile's first latency budget, else p50."""
    return next(iter(budgets.latency_ms), "p50")


def _faster(a: Candidate, b: Candidate, key: str) -> bool:
    """``a`` is clearly faster than ``b`` on ``key``: the intervals are apart by SEPARATION."""
    ia, ib = a.latency_ci.get(key), b.latency_ci.get(key)
    return ia is not None and ib is not None and ia.hi * SEPARATION < ib.lo


def break_tie(tied: list[Candidate], budgets: Budgets, device: bool = True) -> tuple[Candidate, str]:
    """The one to ship among accuracy-tied feasible candidates, and why: clearly faster ones first (their
    intervals apart), then fewer bytes, then the name. Never a single noisy sample. ``device=False``
    (emulated timings, or a GPU profile's on the CPU): latency decides nothing, so fewer bytes, then the name."""
    key = decision_key(budgets)
    fast = [c for c in tied if not device or not any(_faster(o, c, key) for o in tied if o is not c)]
    pick = min(fast, key=lambda c: (c.size_bytes, c.name))
    if len(tied) == 1:
        return pick, ""
    others = ", ".join(c.name for c in tied if c is not pick)
    best = max(tied, key=lambda c: c.accuracy)
    n = best.accuracy_n
    noise = "" if not n else f" (±{100 * (wilson(best.accuracy, n).hi - wilson(best.accuracy, n).lo) / 2:.2f} pt, {n} images)"
    how = (f"clearly faster on {key} (95% intervals apart by {SEPARATION:g}x), then fewer bytes"
           if len(fast) < len(tied) else f"{key} intervals not apart, so by fewer bytes, then name" if device
           else "latency a proxy (not judged), so by fewer bytes, then name")
    return pick, f"variants of {pick.model} tied within validation noise{noise} with {others}: {how}"


def ranked_for_search(candidates: Iterable[Candidate]) -> list[Candidate]:
    """The order the device search measures in: most accurate first, then smallest."""
    return sorted(candidates, key=lambda c: (-c.accuracy, c.size_bytes, c.name))


def overshoot(c: Candidate, budgets: Budgets, reference_accuracy: float | None, device: bool = True) -> float:
    """How far ``c`` is outside ``budgets``: the sum of relative excesses (0 when it fits). "Nearest" means
    this, both in the infeasible error's table and for the candidate a proxy build ships instead."""
    total = 0.0
    for row in judge(measurement(c, reference_accuracy), budgets, device):
        total += row.overshoot
    return total


def nearest_first(c: Candidate, budgets: Budgets, reference_accuracy: float | None,
                  device: bool = True) -> tuple[float, float, str]:
    """Sort key of the candidates that miss: smallest overshoot first, then the more accurate."""
    return overshoot(c, budgets, reference_accuracy, device), -c.accuracy, c.name


def _nearest_table(missed: list[tuple[Candidate, list[str]]], budgets: Budgets,
                   reference_accuracy: float | None, device: bool = True) -> str:
    # By how far each misses, not how many budgets: a size-bound target lists the closest file, not the largest.
    rows = sorted(missed, key=lambda cm: nearest_first(cm[0], budgets, reference_accuracy, device))[:NEAREST]
    width = max(len("candidate"), *(len(c.name) for c, _ in rows))
    lines = [f"  {'candidate':<{width}}  accuracy  misses"]
    lines += [f"  {c.name:<{width}}  {100 * c.accuracy:7.2f}%  {'; '.join(m)}" for c, m in rows]
    return "\n".join(lines)


def choose(candidates: Iterable[Candidate], budgets: Budgets, spec: BuildSpec,
           reference_accuracy: float | None = None, target: str = "(target)", device: bool = True) -> Choice:
    """The most accurate candidate the spec allows that meets every budget of ``target``.

    Raises NoFeasibleCandidate when none does, naming the nearest candidates and what they miss.
    ``device=False``: the device's timings and memory are not its own (emulated), so they decide nothing.
    """
    candidates = list(candidates)
    _need_reference(budgets, reference_accuracy)  # before any work: a config error, not a miss
    kept, rejected = allowed(candidates, spec, cascades_for(budgets))
    if not kept:
        why = (f"all {len(candidates)} candidate(s) are excluded by the build spec" if candidates
               else "no candidates were given")
        raise NoFeasibleCandidate(f"target {target}: nothing to choose from: {why}; check build.models, "
                                  f"build.precisions, build.engines and build.requires")
    feasible: list[Candidate] = []
    missed: list[tuple[Candidate, list[str]]] = []
    for c in kept:
        m = misses(c, budgets, reference_accuracy, device=False)
        # Never measured and already out on size/accuracy/calibration: "not measured" would add only noise.
        if device and not (m and not c.latency_ms and c.peak_memory_mb is None):
            m = misses(c, budgets, reference_accuracy)
        if m:
            missed.append((c, m))
            rejected.append(Rejection(c.name, tuple(m)))
        else:
            feasible.append(c)
    if not feasible:
        raise NoFeasibleCandidate(
            f"target {target}: no candidate meets every budget ({len(kept)} checked, {len(candidates) - len(kept)} "
            f"excluded by the build spec); relax a budget or widen the build. Nearest:\n"
            f"{_nearest_table(missed, budgets, reference_accuracy, device)}")
    order = {c.name: i for i, c in enumerate(candidates)}  # report rejections in the table's order
    feasible.sort(key=_best_first)
    tied = [c for c in feasible if tied_with(c, feasible[0])]
    chosen, why = break_tie(tied, budgets, device)
    feasible.remove(chosen)
    return Choice(chosen=chosen, feasible=(chosen, *feasible), tied=tuple(c.name for c in tied if c is not chosen),
                  why=why, rejected=tuple(sorted(rejected, key=lambda r: order[r.name])))
