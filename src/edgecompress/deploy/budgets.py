"""One judge of a measurement against a target's budgets.

``TABLE`` lists every budget once: the ``Budgets`` field it limits, how to read the measured value from
a ``Measurement``, its unit, whether it is a ceiling or a floor, and how a miss is worded. ``judge``
compares a measurement with the budgets and gives one typed ``BudgetRow`` per budget set; the build's
misses and "nearest" ranking (``choose``), the check's JSON rows and every report's margins derive
from those rows, so a budget is compared with a measurement in this one place.

A new budget is a field of ``targets.Budgets`` plus one row of ``TABLE`` (and, if the runner does not
measure it yet, the runner).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from edgecompress.deploy.targets import LATENCY_KEYS, Budgets
from edgecompress.errors import EdgeCompressError

MIB = 2**20
CEILING, FLOOR = "max", "min"  # the words the check JSON has always used for a budget's direction


@dataclass(frozen=True)
class Measurement:
    """What budgets are judged against, whoever measured it: a candidate of the build or a check's run.

    ``None`` is "not measured", which misses its budget. ``reference_accuracy`` is the teacher's
    accuracy on the same images, which ``budgets.max_drop`` compares with.
    """

    latency_ms: Mapping[str, float | None] = field(default_factory=dict)
    size_bytes: int | None = None
    download_bytes: int | None = None
    peak_memory_mb: float | None = None
    accuracy: float | None = None
    ece: float | None = None
    nll: float | None = None
    reference_accuracy: float | None = None

    @classmethod
    def from_runner(cls, raw: Mapping[str, Any], reference_accuracy: float | None = None) -> Measurement:
        """From the on-device runner's JSON (plus ``package_bytes`` when the check packed the artifact)."""
        return cls(latency_ms=raw.get("latency_ms") or {}, size_bytes=raw.get("model_size_bytes"),
                   download_bytes=raw.get("package_bytes"),
                   peak_memory_mb=(raw.get("memory") or {}).get("peak_rss_mb"), accuracy=raw.get("accuracy"),
                   ece=raw.get("ece"), nll=raw.get("nll"), reference_accuracy=reference_accuracy)

    @property
    def accuracy_drop(self) -> float | None:
        """Accuracy points below the reference; None without both accuracies."""
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return 100 * (self.reference_accuracy - self.accuracy)


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
        shown, limit = shown_apart(b.scale * v, b.scale * self.limit, b.decimals)
        excess = b.scale * (v - self.limit) if b.kind == CEILING else b.scale * (self.limit - v)
        vs = f" vs teacher {100 * self.reference:.2f}%" if self.reference is not None else ""
        return (f"{b.phrase} {shown}{u} {'>' if b.kind == CEILING else '<'} {limit}{u}{vs} "
                f"(by {_f(excess, b.decimals)}{u if b.by_unit is None else b.by_unit})")

    def to_json(self) -> dict[str, Any]:
        """The row as metrics/check/<target>.json has always held it."""
        b = self.budget
        return {"name": b.name, "label": b.label, "unit": b.unit, "kind": b.kind, "budget": self.limit,
                "measured": self.measured, "ok": not self.missed, "margin": self.margin}

    @classmethod
    def from_json(cls, row: Mapping[str, Any], reference: float | None = None) -> BudgetRow:
        """A row of a check result, read back (``reference``: the result's teacher accuracy)."""
        try:
            budget = BY_NAME[row["name"]]
            return cls(budget, row["budget"], row["measured"], not row["ok"],
                       reference if budget.versus_reference else None)
        except (KeyError, TypeError):
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
        # "not inside", rather than "outside": a NaN measurement misses too.
        inside = v is not None and (b.judged(v) <= limit if b.kind == CEILING else b.judged(v) >= limit)
        rows.append(BudgetRow(b, limit, v, not inside, m.reference_accuracy if b.versus_reference else None))
    return tuple(rows)


def margin_text(row: BudgetRow) -> str:
    """A row's margin in its unit; an accuracy (a fraction) in points, as the accuracy drop is."""
    if row.margin is None:
        return "n/a"
    if row.budget.scale != 1:  # shown scaled (an accuracy in points), as its miss is
        return f"{row.budget.scale * row.margin:+.2f}{row.budget.by_unit or row.budget.shown_unit}"
    return f"{row.margin:+.3g}" + (f" {row.budget.unit}" if row.budget.unit else "")
