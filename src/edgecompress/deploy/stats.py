"""A measurement is a sample: intervals for latencies and accuracies, and the verdicts drawn from them.

Percentiles get distribution-free order-statistic intervals (Hahn & Meeker, *Statistical Intervals*, ch. 5:
latencies are skewed and multi-modal), the mean a seeded percentile bootstrap, an accuracy a Wilson score
interval (sound near 0 and 1, unlike Wald's). Numpy and the standard library only: no scipy on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from numbers import Integral, Real
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np

from edgecompress.deploy import runner
from edgecompress.errors import EdgeCompressError

CONFIDENCE = 0.95
PERCENTILE_OF = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "sustained_p90": 90.0}  # 'mean' has none
MET, MISSED, UNDECIDED = "met", "missed", "undecided"
_BOOT_CHUNK = 100_000  # resampled values per bootstrap chunk: its buffers (1.6 MB) stay in cache
_RAW_BLOCK = 16_384  # indices per call for random bits: 64 KB, below glibc's 128 KB mmap threshold


def _number(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, Real) and math.isfinite(v)


def _count(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, Integral)


def _check_fraction(**values: float) -> None:
    for name, v in values.items():
        if not (_number(v) and 0.0 < v < 1.0):
            raise EdgeCompressError(f"stats: {name} {v!r} must be a number strictly between 0 and 1")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided interval, from n observations."""

    point: float
    lo: float
    hi: float
    n: int

    def __post_init__(self) -> None:
        if not (all(_number(v) for v in (self.point, self.lo, self.hi)) and self.lo <= self.point <= self.hi
                and _count(self.n) and self.n >= 1):
            raise EdgeCompressError(f"Interval needs finite lo <= point <= hi and an int n >= 1, got lo={self.lo!r}, "
                                    f"point={self.point!r}, hi={self.hi!r}, n={self.n!r}")

    def to_json(self) -> dict[str, float | int]:
        return {"point": float(self.point), "lo": float(self.lo), "hi": float(self.hi), "n": int(self.n)}

    @classmethod
    def from_json(cls, d: Any, what: str = "interval") -> Interval:
        """Read what ``to_json`` wrote; ``what`` names the field in the error."""
        shape = "an interval is {'point', 'lo', 'hi', 'n'}, as Interval.to_json writes"
        if not isinstance(d, Mapping):
            raise EdgeCompressError(f"{what}: {d!r} is not a mapping ({shape})")
        for key in ("point", "lo", "hi", "n"):
            if not (_count(d.get(key)) if key == "n" else _number(d.get(key))):
                raise EdgeCompressError(f"{what}.{key}: {d.get(key, 'missing')!r} is not "
                                        f"{'an int' if key == 'n' else 'a finite number'} ({shape})")
        try:
            return cls(float(d["point"]), float(d["lo"]), float(d["hi"]), int(d["n"]))
        except EdgeCompressError as e:
            raise EdgeCompressError(f"{what}: {e}") from None

    def text(self, decimals: int = 3, scale: float = 1.0, unit: str = "") -> str:
        """``0.412 [0.398, 0.431] ms``: the point, then the interval, each times ``scale``."""
        p, lo, hi = (f"{v * scale:.{decimals}f}" for v in (self.point, self.lo, self.hi))
        return f"{p} [{lo}, {hi}]" + (f" {unit}" if unit else "")


def expand(hist: Any, what: str = "samples_ms") -> np.ndarray:
    """The runner's compact samples [[value, count], ...] (sorted by value) -> a sorted float64 array.
    Malformed input (negative/non-finite value, count < 1 or not an int, unsorted) -> EdgeCompressError."""
    if not isinstance(hist, (list, tuple)):
        raise EdgeCompressError(f"{what}: expected [[value, count], ...] as the runner writes, got {hist!r:.40}")
    for i, pair in enumerate(hist):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise EdgeCompressError(f"{what}[{i}]: {pair!r} is not a [value, count] pair")
        if not (_number(pair[0]) and pair[0] >= 0):
            raise EdgeCompressError(f"{what}[{i}]: value {pair[0]!r} is not a finite number >= 0")
        if not (_count(pair[1]) and pair[1] >= 1):
            raise EdgeCompressError(f"{what}[{i}]: count {pair[1]!r} is not an int >= 1")
        if i and pair[0] < hist[i - 1][0]:
            raise EdgeCompressError(f"{what}[{i}]: value {pair[0]!r} after {hist[i - 1][0]!r}: not sorted")
    return runner.expand(hist)  # checked above; decoding is the runner's own inverse of its compact()


@lru_cache(maxsize=256)
def order_statistic_bounds(n: int, q: float, conf: float = CONFIDENCE) -> tuple[int, int] | None:
    """0-based indices (l, u) into the sorted sample such that [x_(l), x_(u)] covers the true q-quantile
    (q in (0,1)) with probability >= conf (distribution-free, binomial: P(l < B <= u) >= conf where
    B ~ Binomial(n, q), split as equally as possible between the tails). None when n is too small for a
    two-sided interval (u would be >= n or l < 0)."""
    # Derivation. B = #{observations below the true quantile xi} ~ Binomial(n, q). With 0-based sorted
    # x[0] <= ... <= x[n-1], x[k] <= xi exactly when at least k+1 observations lie below xi, so
    # P(x[l] <= xi) = P(B >= l+1) and P(x[u] < xi) = P(B >= u+1); hence
    # P(x[l] <= xi <= x[u]) >= P(l < B <= u) = F(u) - F(l), F the binomial CDF (equality for continuous x).
    # Equal tails: l = the largest k with F(k) <= alpha/2 (lower miss P(B <= l) <= alpha/2) and u = the
    # smallest k with P(B > k) <= alpha/2, i.e. u = binom.ppf(1 - alpha/2), l = binom.ppf(alpha/2) - 1
    # (except when F hits alpha/2 exactly). l = -1 or u = n means the sample cannot bound that tail.
    _check_fraction(q=q, conf=conf)
    if not _count(n) or n < 1:
        return None
    log_tail = math.log((1.0 - conf) / 2.0)
    k = np.arange(n + 1)
    log_fact = np.fromiter((math.lgamma(i + 1.0) for i in range(n + 1)), np.float64, n + 1)
    log_pmf = log_fact[n] - log_fact - log_fact[::-1] + k * math.log(q) + (n - k) * math.log1p(-q)
    log_cdf = np.logaddexp.accumulate(log_pmf)  # log P(B <= k), summed in log space: no underflow
    log_sf = np.append(np.logaddexp.accumulate(log_pmf[::-1])[::-1][1:], -np.inf)  # log P(B > k), no 1 - F
    lower = np.flatnonzero(log_cdf <= log_tail)
    upper = np.flatnonzero(log_sf <= log_tail)
    if len(lower) == 0 or upper[0] >= n:
        return None
    return int(lower[-1]), int(upper[0])


def min_runs(q: float, conf: float = CONFIDENCE) -> int:
    """The smallest n for which order_statistic_bounds(n, q, conf) exists (p99 needs several hundred)."""
    # l >= 0 needs P(B = 0) = (1-q)^n <= alpha/2 and u <= n-1 needs P(B = n) = q^n <= alpha/2: both fall
    # with n, so n >= log(alpha/2) / log(max(q, 1-q)); start one below (the quotient may round up) and step.
    _check_fraction(q=q, conf=conf)
    n = max(1, math.ceil(math.log((1.0 - conf) / 2.0) / math.log(max(q, 1.0 - q))) - 1)
    while order_statistic_bounds(n, q, conf) is None:
        n += 1
    return n


def _finite_1d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise EdgeCompressError(f"stats: samples must be a 1-D array of finite numbers, got shape {x.shape}")
    return x


def percentile_interval(sorted_ms: np.ndarray, q: float, conf: float = CONFIDENCE) -> Interval | None:
    """q in percent (50, 90, 99). point = np.percentile(x, q) (linear, as the runner computes it; clamp
    lo <= point <= hi); lo/hi the order statistics above. None when n < min_runs."""
    if not (_number(q) and 0.0 < q < 100.0):
        raise EdgeCompressError(f"stats: percentile {q!r} must be within (0, 100)")
    x = _finite_1d(sorted_ms)
    if len(x) > 1 and np.any(x[1:] < x[:-1]):
        raise EdgeCompressError("stats: percentile_interval needs sorted samples (np.sort them, or use expand)")
    bounds = order_statistic_bounds(len(x), q / 100.0, conf)
    if bounds is None:
        return None
    lo, hi = float(x[bounds[0]]), float(x[bounds[1]])
    point = min(max(float(np.percentile(x, q)), lo), hi)
    return Interval(point, lo, hi, len(x))


def mean_interval(samples: np.ndarray, conf: float = CONFIDENCE, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap of the mean, seeded (np.random.default_rng(seed)): the same samples give the same
    interval every time. Vectorised in chunks of resamples."""
    x = _finite_1d(samples)
    _check_fraction(conf=conf)
    if not 0 < len(x) < 2**31 or not (_count(n_boot) and n_boot >= 1):
        raise EdgeCompressError(f"stats: mean_interval needs samples and n_boot >= 1, got {len(x)} and {n_boot!r}")
    n = len(x)
    bits = np.random.default_rng(seed).bit_generator
    means = np.empty(n_boot)
    rows = max(1, _BOOT_CHUNK // n)
    idx, picked = np.empty(rows * n, np.intp), np.empty(rows * n)  # reused: fresh arrays cost page faults
    for start in range(0, n_boot, rows):
        m = min(rows, n_boot - start)
        k = m * n
        # Index = (32 random bits * n) >> 32 (Lemire's multiply-shift, no rejection step): half the draws of
        # rng.integers; an index's probability is off by <= n / 2**32 (1e-5 at 50k), far below Monte-Carlo error.
        for j in range(0, k, _RAW_BLOCK):  # small draws stay below malloc's mmap threshold: no page faults
            w = min(_RAW_BLOCK, k - j)
            np.multiply(bits.random_raw((w + 1) // 2).view(np.uint32)[:w], np.intp(n), out=idx[j:j + w])
        np.right_shift(idx[:k], 32, out=idx[:k])
        means[start:start + m] = np.take(x, idx[:k], out=picked[:k], mode="clip").reshape(m, n).mean(axis=1)
    lo, hi = np.percentile(means, [50.0 * (1.0 - conf), 50.0 * (1.0 + conf)])
    point = float(x.mean())
    # The sample mean sits at the bootstrap's centre; min/max only guard rounding in tiny samples.
    return Interval(point, min(float(lo), point), max(float(hi), point), n)


def latency_interval(sorted_ms: np.ndarray, key: str, conf: float = CONFIDENCE) -> Interval | None:
    """key: 'p50','p90','p99' -> percentile_interval; 'mean' -> mean_interval; 'sustained_p90' ->
    percentile_interval(q=90) (the caller passes the sustained tail samples)."""
    if key == "mean":
        return mean_interval(sorted_ms, conf)
    if key not in PERCENTILE_OF:
        raise EdgeCompressError(f"stats: latency key {key!r} is not one of {sorted([*PERCENTILE_OF, 'mean'])}")
    return percentile_interval(sorted_ms, PERCENTILE_OF[key], conf)


def wilson(accuracy: float, n: int, conf: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a proportion (accuracy a fraction, n images)."""
    if not (_number(accuracy) and 0.0 <= accuracy <= 1.0) or not (_count(n) and n >= 1):
        raise EdgeCompressError(f"stats: wilson needs an accuracy in [0, 1] of n >= 1 images, got {accuracy!r}, {n!r}")
    _check_fraction(conf=conf)
    z = NormalDist().inv_cdf(0.5 + conf / 2.0)
    z2n = z * z / n
    centre = (accuracy + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(accuracy * (1.0 - accuracy) / n + z2n / (4.0 * n))
    # Clamp only float rounding: the Wilson interval always contains the observed proportion.
    lo, hi = max(0.0, min(centre - half, accuracy)), min(1.0, max(centre + half, accuracy))
    return Interval(float(accuracy), lo, hi, n)


def verdict(interval: Interval, limit: float, kind: str) -> str:
    """kind 'max' (ceiling: measured <= limit) or 'min' (floor). Ceiling: met when hi <= limit, missed when
    lo > limit, else undecided. Floor mirrored: met when lo >= limit, missed when hi < limit.
    A budget exactly at a bound: hi == limit is met (ceiling); lo == limit is met (floor)."""
    if kind == "max":
        return MET if interval.hi <= limit else MISSED if interval.lo > limit else UNDECIDED
    if kind == "min":
        return MET if interval.lo >= limit else MISSED if interval.hi < limit else UNDECIDED
    raise EdgeCompressError(f"stats: budget kind {kind!r} is not 'max' (a ceiling) or 'min' (a floor)")


def within_noise(a: float, b: float, n: int, conf: float = CONFIDENCE) -> bool:
    """Two validation accuracies (fractions, same n images) are tied: |a - b| <= the half-width of the Wilson
    interval of the larger one (its (hi - lo) / 2)."""
    ci = wilson(max(a, b), n, conf)
    return abs(a - b) <= (ci.hi - ci.lo) / 2.0


@dataclass(frozen=True)
class RoundsCheck:
    """Whether the load changed between rounds of one measurement, and the sentence that says so."""

    changed: bool  # the per-round medians disagree beyond their own spread
    text: str  # "" or "rounds disagree: round medians 0.41-0.63 ms, beyond their own 95% intervals (...)"


def rounds_agree(rounds: Sequence[np.ndarray], conf: float = CONFIDENCE) -> RoundsCheck:
    """rounds: each round's sorted samples. The load changed when two rounds' p50 intervals (percentile_interval
    at 50) do not overlap. Rounds too small for an interval are skipped; fewer than 2 usable -> not changed."""
    cis = [ci for r in rounds if (ci := percentile_interval(r, 50.0, conf)) is not None]
    # Some pair is disjoint exactly when the highest lower bound lies above the lowest upper bound.
    if len(cis) < 2 or max(c.lo for c in cis) <= min(c.hi for c in cis):
        return RoundsCheck(False, "")
    lo, hi = min(c.point for c in cis), max(c.point for c in cis)
    return RoundsCheck(True, f"rounds disagree: round medians {lo:.3g}-{hi:.3g} ms, beyond their own "
                             f"{conf:.0%} intervals (load changed during the measurement)")


def enough_runs(latency_budgets: Mapping[str, float], runs: int, sustained_s: float, sustained_key: str) -> None:
    """Refuse a profile whose ``runs`` cannot bound a budgeted percentile with a distribution-free 95% interval
    (p99: several hundred), or whose sustained budget has no sustained run: every verdict on it would be a
    guess. Raises ``FieldError`` naming the bench key and the fix."""
    from edgecompress.deploy.fields import FieldError

    for key in latency_budgets:
        if key == sustained_key:
            if not sustained_s:
                raise FieldError("bench.sustained_s", f"budgets.latency_ms.{key} is judged on a sustained run; "
                                                      f"set bench.sustained_s (e.g. 60)")
            continue
        q = PERCENTILE_OF.get(key)
        if q is not None and runs < min_runs(q / 100):
            raise FieldError("bench.runs", f"{runs} runs cannot bound latency_ms.{key} with 95% confidence; "
                                           f"it needs at least {min_runs(q / 100)} runs: raise bench.runs")
