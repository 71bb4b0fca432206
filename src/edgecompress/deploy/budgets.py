"""One judge of a measurement against a target's budgets.

``TABLE`` lists every budget once: the ``Budgets`` field it limits, how to read the measured value from
a ``Measurement``, its unit, whether it is a ceiling or a floor, and how a miss is worded. ``judge``
compares a measurement with the budgets and gives one typed ``BudgetRow`` per budget set; the build's
misses and "nearest" ranking (``choose``), the check's JSON rows and every report's margins derive
from those rows, so a budget is compared with a measurement in this one place.

A new budget is a field of ``targets.Budgets`` plus one row of ``TABLE`` (and, if the runner does not
measure it yet, the runner).

A measured value with an interval (latency from the runner's samples, accuracy from its image count) is
judged on the interval (``stats.verdict``): met when the whole interval is inside the budget, missed
when it is wholly outside, else undecided, which counts as a miss (the conservative rule) and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgecompress.deploy.stats import (MET, MISSED, UNDECIDED, Interval, expand, latency_interval, rounds_agree,
                                      verdict, wilson)
from edgecompress.deploy.targets import LATENCY_KEYS, SUSTAINED_KEY, Budgets
from edgecompress.errors import EdgeCompressError

MIB = 2**20
CEILING, FLOOR = "max", "min"  # the words the check JSON has always used for a budget's direction


@dataclass(frozen=True)
class Measurement:
    """What budgets are judged against, whoever measured it: a candidate of the build or a check's run.

    ``None`` is "not measured", which misses its budget. ``reference_accuracy`` is the teacher's
    accuracy on the same images, which ``budgets.max_drop`` compares with. ``latency_ci`` holds the 95%
    interval of each latency statistic the samples allow; ``accuracy_n`` the images behind ``accuracy``.
    """

    latency_ms: Mapping[str, float | None] = field(default_factory=dict)
    size_bytes: int | None = None
    download_bytes: int | None = None
    peak_memory_mb: float | None = None
    accuracy: float | None = None
    ece: float | None = None
    nll: float | None = None
    reference_accuracy: float | None = None
    latency_ci: Mapping[str, Interval] = field(default_factory=dict)
    accuracy_n: int | None = None
    agreement: float | None = None  # top-1 agreement with this host's outputs (an AgreementSpec device's)
    agreement_n: int | None = None

    @classmethod
    def from_runner(cls, raw: Mapping[str, Any], reference_accuracy: float | None = None) -> Measurement:
        """From the on-device runner's JSON (plus ``package_bytes`` when the check packed the artifact)."""
        return cls(latency_ms=raw.get("latency_ms") or {}, size_bytes=raw.get("model_size_bytes"),
                   download_bytes=raw.get("package_bytes"),
                   peak_memory_mb=(raw.get("memory") or {}).get("peak_rss_mb"), accuracy=raw.get("accuracy"),
                   ece=raw.get("ece"), nll=raw.get("nll"), reference_accuracy=reference_accuracy,
                   latency_ci=latency_intervals(raw), accuracy_n=raw.get("accuracy_samples"))

    def interval(self, budget: Budget) -> Interval | None:
        """The 95% interval of what ``budget`` judges, when the measurement has one."""
        if budget.field.startswith("latency_ms."):
            return self.latency_ci.get(budget.field.partition(".")[2])
        if budget.name == "accuracy" and self.accuracy is not None and self.accuracy_n:
            return wilson(self.accuracy, self.accuracy_n)
        if budget.name == "agreement" and self.agreement is not None and self.agreement_n:
            return wilson(self.agreement, self.agreement_n)
        return None

    @property
    def accuracy_drop(self) -> float | None:
        """Accuracy points below the reference; None without both accuracies."""
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return 100 * (self.reference_accuracy - self.accuracy)


def latency_intervals(raw: Mapping[str, Any]) -> dict[str, Interval]:
    """95% intervals of every latency statistic the runner's samples allow (RUNNER_VERSION >= 5 sends them):
    percentiles by order statistics, the mean by a seeded bootstrap, the sustained p90 on the last intervals."""
    out: dict[str, Interval] = {}
    if raw.get("samples_ms"):
        x = expand(raw["samples_ms"])
        for key in LATENCY_KEYS:
            if key != SUSTAINED_KEY and (ci := latency_interval(x, key)) is not None:
                out[key] = ci
    tail = (raw.get("sustained") or {}).get("tail_samples_ms")
    if tail and (ci := latency_interval(expand(tail), SUSTAINED_KEY)) is not None:
        out[SUSTAINED_KEY] = ci
    return out


def _f(value: float, decimals: int) -> str:
    """Fixed decimals, but never round a non-zero amount to a misleading 0.00."""
    text = f"{value:.{decimals}f}"
    return f"{value:.2g}" if value != 0 and float(text) == 0 else text


def _exact(value: float, decimals: int) -> str:
    """A budget as written: fixed decimals unless they would round it (0.125 MiB is not "0.12")."""
    text = f"{value:.{decimals}f}"
    return text if float(text) == value else f"{value:g}"


def shown_apart(value: float, budget: float, decimals: int) -> tuple[str, str]:
    """(measured, budget) as text that differ visibly: the measurement gets at least the budget's decimals,
    and more until rounding no longer makes it look equal (0.0489 vs 0.045 MiB is "0.049", not "0.05")."""
    limit = _exact(budget, decimals)
    places = max(decimals, len(limit.partition(".")[2]) if "e" not in limit else decimals)
    text = f"{value:.{places}f}"
    while float(text) == float(limit) and value != budget and places < 9:
        places += 1
        text = f"{value:.{places}f}"
    return text, limit


def _relative(value: float, limit: float, kind: str) -> float:
    """Relative excess over a ceiling (or shortfall under a floor); 0 inside, and for a zero limit."""
    if not limit:
        return 0.0
    return max(0.0, value / limit - 1) if kind == CEILING else max(0.0, 1 - value / limit)


def _points(value: float, limit: float, kind: str) -> float:
    """Excess in points, relative to the budget but never to less than one point (a 0.5-point budget
    missed by one point is not "twice as far" as a 1-point one missed by one)."""
    return max(0.0, value - limit) / max(limit, 1.0)


@dataclass(frozen=True)
class Budget:
    """One kind of budget: what it limits, how it is read and judged, how a miss reads.

    ``label``/``unit`` are the check report's words (units of the JSON row, sizes in "MB" meaning MiB);
    ``phrase``/``shown_unit``/``by_unit``/``scale``/``decimals`` word the one-line miss of a candidate
    (``"size 1.20 MiB > 0.50 MiB (by 0.70 MiB)"``). ``judged`` is the value the comparison sees.
    """

    name: str  # the row's name in metrics/check/<target>.json
    field: str  # the Budgets attribute holding the limit ("latency_ms.p90" for a percentile)
    label: str
    unit: str
    kind: str  # CEILING (measured <= limit) or FLOOR (measured >= limit)
    read: Callable[[Measurement], float | None]  # the measured value, in the row's unit
    phrase: str
    shown_unit: str
    decimals: int
    by_unit: str | None = None  # unit of the "(by ...)" amount; None: shown_unit
    scale: float = 1.0  # shown = scale * value (an accuracy fraction shown in percent)
    device: bool = False  # known only once the device has run it (the build's search skips it before)
    unmeasured: str | None = None  # the miss when not measured; None: "<phrase> not measured"
    judged: Callable[[float], float] = lambda v: v  # what the comparison sees of the measured value
    versus_reference: bool = False  # measured against the teacher: the miss names its accuracy
    overshoot: Callable[[float, float, str], float] = _relative  # how far outside, for "nearest" rankings
    # Judged only where measured (agreement: only where a second device ran it); elsewhere no row, and the
    # report says why, instead of a miss on every machine that cannot run that device.
    optional: bool = False

    def limit(self, budgets: Budgets) -> float | None:
        """This budget's limit in ``budgets``; None when the target does not set it."""
        head, _, key = self.field.partition(".")
        value = getattr(budgets, head)
        return value.get(key) if key else value


def _latency(key: str) -> Budget:
    return Budget(f"latency_{key}", f"latency_ms.{key}", f"{key} latency", "ms", CEILING,
                  lambda m: m.latency_ms.get(key), f"latency {key}", " ms", 2, device=True)


def _drop(value: float) -> float:
    # 0.93 - 0.91 is 0.0200000000000002 in floats, which must not miss a 2-point budget.
    return round(value, 9)


LATENCY = {key: _latency(key) for key in LATENCY_KEYS}
# Every budget but latency, in the order reports list them (latency first, in the profile's own order).
TABLE: tuple[Budget, ...] = (
    Budget("size", "size_mb", "size", "MB", CEILING,
           lambda m: None if m.size_bytes is None else m.size_bytes / MIB, "size", " MiB", 2),
    Budget("download", "download_mb", "download (package)", "MB", CEILING,
           lambda m: None if m.download_bytes is None else m.download_bytes / MIB, "download", " MiB", 3,
           unmeasured="download size unknown (no package; re-run the candidates stage)"),
    Budget("peak_memory", "peak_memory_mb", "peak memory", "MB", CEILING, lambda m: m.peak_memory_mb,
           "peak memory", " MiB", 1, device=True),
    Budget("accuracy", "min_accuracy", "accuracy", "", FLOOR, lambda m: m.accuracy, "accuracy", "%", 2,
           by_unit=" pt", scale=100),
    Budget("accuracy_drop", "max_drop", "accuracy drop vs teacher", "pt", CEILING, lambda m: m.accuracy_drop,
           "accuracy drop", " pt", 2, judged=_drop, overshoot=_points, versus_reference=True),
    Budget("ece", "max_ece", "ECE", "", CEILING, lambda m: m.ece, "ECE", "", 3),
    Budget("nll", "max_nll", "NLL", "", CEILING, lambda m: m.nll, "NLL", " nats", 3),
    Budget("agreement", "min_agreement", "top-1 agreement with this host", "", FLOOR, lambda m: m.agreement,
           "agreement with this host", "%", 2, by_unit=" pt", scale=100, optional=True),
)
BY_NAME: dict[str, Budget] = {b.name: b for b in (*LATENCY.values(), *TABLE)}


@dataclass(frozen=True)
class BudgetRow:
    """One budget judged: its limit, the measured value (None: not measured), and whether it missed.

    ``reference`` is the teacher accuracy the drop was measured against (it words the drop's miss).
    """

    budget: Budget
    limit: float
    measured: float | None
    missed: bool
    reference: float | None = None
    interval: Interval | None = None  # the measured value's 95% interval, when it has one
    verdict: str = ""  # met, missed or undecided (an undecided row is missed: the conservative rule)

    def __post_init__(self) -> None:
        if not self.verdict:
            object.__setattr__(self, "verdict", MISSED if self.missed else MET)

    @property
    def margin(self) -> float | None:
        """measured - limit in the row's unit: negative is inside a ceiling, positive above a floor."""
        return None if self.measured is None else self.measured - self.limit

    @property
    def overshoot(self) -> float:
        """How far outside the budget, relative to it (0 inside or unmeasured)."""
        b = self.budget
        return 0.0 if self.measured is None else b.overshoot(self.measured, self.limit, b.kind)

    @property
    def reason(self) -> str:
        """The one-line miss ("" when it fits): ``latency p90 2.10 ms > 1.00 ms (by 1.10 ms)``."""
        b = self.budget
        if not self.missed:
            return ""
        if self.measured is None:
            return b.unmeasured or f"{b.phrase} not measured"
        v, u = b.judged(self.measured), b.shown_unit
        if self.verdict == UNDECIDED and self.interval is not None:
            lo, hi = (f"{b.scale * e:.{b.decimals + 1}f}" for e in (self.interval.lo, self.interval.hi))
            return (f"{b.phrase} undecided: {lo}-{hi}{u} (95%, {self.interval.n} "
                    f"{'runs' if b.device else 'images'}) straddles {_exact(b.scale * self.limit, b.decimals)}{u}; "
                    f"treated as a miss")
        shown, limit = shown_apart(b.scale * v, b.scale * self.limit, b.decimals)
        excess = b.scale * (v - self.limit) if b.kind == CEILING else b.scale * (self.limit - v)
        vs = f" vs teacher {100 * self.reference:.2f}%" if self.reference is not None else ""
        return (f"{b.phrase} {shown}{u} {'>' if b.kind == CEILING else '<'} {limit}{u}{vs} "
                f"(by {_f(excess, b.decimals)}{u if b.by_unit is None else b.by_unit})")

    def to_json(self) -> dict[str, Any]:
        """The row as metrics/check/<target>.json has always held it."""
        b = self.budget
        return {"name": b.name, "label": b.label, "unit": b.unit, "kind": b.kind, "budget": self.limit,
                "measured": self.measured, "ok": not self.missed, "margin": self.margin,
                # judged on an interval: its verdict (met, missed, undecided) and the interval itself
                **({} if self.interval is None else {"verdict": self.verdict, "interval": self.interval.to_json()})}

    @classmethod
    def from_json(cls, row: Mapping[str, Any], reference: float | None = None) -> BudgetRow:
        """A row of a check result, read back (``reference``: the result's teacher accuracy)."""
        try:
            budget = BY_NAME[row["name"]]
            ci = row.get("interval")
            return cls(budget, row["budget"], row["measured"], not row["ok"],
                       reference if budget.versus_reference else None,
                       None if ci is None else Interval.from_json(ci), row.get("verdict") or "")
        except (KeyError, TypeError, AttributeError):
            raise EdgeCompressError(f"not a budget row of a check result: {dict(row)!r}; re-run the check") from None


def judge(m: Measurement, budgets: Budgets, device: bool = True) -> tuple[BudgetRow, ...]:
    """One row per budget ``budgets`` sets, latency first in the profile's order; an unmeasured value misses.

    ``device=False`` judges only what is known before the device runs it (size, download, accuracy,
    calibration), so the build's search never measures a candidate that cannot win.
    """
    rows = []
    for b in (*(LATENCY[k] for k in budgets.latency_ms), *TABLE):
        limit = b.limit(budgets)
        if limit is None or (b.device and not device):
            continue
        v = b.read(m)
        if v is None and b.optional:
            continue
        ci = m.interval(b) if v is not None else None
        if ci is not None:
            said = verdict(ci, limit, b.kind)
        else:
            # "not inside", rather than "outside": a NaN measurement misses too.
            inside = v is not None and (b.judged(v) <= limit if b.kind == CEILING else b.judged(v) >= limit)
            said = MET if inside else MISSED
        rows.append(BudgetRow(b, limit, v, said != MET, m.reference_accuracy if b.versus_reference else None,
                              ci, said))
    return tuple(rows)


def rounds_note(raw: Mapping[str, Any] | None) -> str | None:
    """"" when the runner's rounds agree, the disagreement when the load changed mid-measurement; None: no rounds."""
    rounds = [r.get("samples_ms") for r in (raw or {}).get("rounds") or []]
    if len(rounds) < 2 or not all(rounds):
        return None
    return rounds_agree([expand(r) for r in rounds]).text


def accuracy_ci(accuracy: float | None, n: int | None) -> dict[str, Any] | None:
    """The 95% Wilson interval of an accuracy over ``n`` images, as records keep it."""
    return None if accuracy is None or not n else wilson(accuracy, n).to_json()


def undecided(budgets: Budgets, rounds: Sequence[np.ndarray]) -> bool:
    """Whether a budgeted latency percentile or mean of these rounds' samples still straddles its budget
    (the measurement driver then gives it more rounds)."""
    if not rounds:
        return False
    x = np.sort(np.concatenate(rounds))
    for key, limit in budgets.latency_ms.items():
        ci = None if key == SUSTAINED_KEY else latency_interval(x, key)
        if ci is not None and verdict(ci, limit, CEILING) == UNDECIDED:
            return True
    return False


def margin_text(row: BudgetRow) -> str:
    """A row's margin in its unit; an accuracy (a fraction) in points, as the accuracy drop is."""
    if row.margin is None:
        return "n/a"
    if row.budget.scale != 1:  # shown scaled (an accuracy in points), as its miss is
        return f"{row.budget.scale * row.margin:+.2f}{row.budget.by_unit or row.budget.shown_unit}"
    return f"{row.margin:+.3g}" + (f" {row.budget.unit}" if row.budget.unit else "")
