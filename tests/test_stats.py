"""deploy/stats.py: order-statistic, bootstrap and Wilson intervals, verdicts on them, and the rounds check.

Expected order statistics were checked against scipy.stats.binom (cdf/sf/ppf) once, outside the suite;
here an exact rational binomial (math.comb) is the independent reference, so scipy stays out.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from edgecompress.deploy.stats import (
    MET, MISSED, UNDECIDED, Interval, expand, latency_interval, mean_interval, min_runs, order_statistic_bounds,
    percentile_interval, rounds_agree, verdict, wilson, within_noise,
)
from edgecompress.errors import EdgeCompressError

Z90 = 1.2815515655446004  # standard normal 0.9-quantile


def exact_bounds(n: int, q: Fraction, conf: Fraction = Fraction(95, 100)) -> tuple[int, int] | None:
    """The equal-tailed construction with exact rational binomial probabilities."""
    tail = (1 - conf) / 2
    pmf = [math.comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(n + 1)]
    cdf = [sum(pmf[: k + 1]) for k in range(n + 1)]
    lows = [k for k in range(n + 1) if cdf[k] <= tail]
    u = next(k for k in range(n + 1) if 1 - cdf[k] <= tail)
    return (lows[-1], u) if lows and u < n else None


@pytest.mark.parametrize("q", [Fraction(1, 2), Fraction(9, 10), Fraction(1, 4)])
def test_bounds_match_exact_binomial(q: Fraction) -> None:
    for n in range(1, 70):
        assert order_statistic_bounds(n, float(q)) == exact_bounds(n, q), n


@pytest.mark.parametrize("n, q, expected", [
    (200, 0.9, (170, 188)), (1000, 0.99, (982, 996)), (50000, 0.5, (24780, 25219)),
    (200000, 0.99, (197911, 198087)),  # large n: the log-space sum neither underflows nor drifts
    (200, 0.99, None),
])
def test_bounds_known_values(n: int, q: float, expected: tuple[int, int] | None) -> None:
    assert order_statistic_bounds(n, q) == expected


def test_min_runs_values_and_brute_force() -> None:
    assert (min_runs(0.5), min_runs(0.9), min_runs(0.99)) == (6, 36, 368)
    for q in (0.5, 0.9, 0.99, 0.1, 0.75):
        first = next(n for n in range(1, 2000) if order_statistic_bounds(n, q) is not None)
        assert min_runs(q) == first
        assert all(order_statistic_bounds(n, q) is not None for n in range(first, first + 30))
    assert exact_bounds(367, Fraction(99, 100)) is None and exact_bounds(368, Fraction(99, 100)) is not None
    assert min_runs(0.9, conf=0.99) > min_runs(0.9)


@pytest.mark.parametrize("q, conf", [(0.0, 0.95), (1.0, 0.95), (0.5, 1.0), (float("nan"), 0.95)])
def test_bounds_refuse_bad_arguments(q: float, conf: float) -> None:
    with pytest.raises(EdgeCompressError, match="strictly between 0 and 1"):
        order_statistic_bounds(100, q, conf)


def test_p90_coverage_by_simulation() -> None:
    mu, sigma, n, reps = 0.0, 0.5, 200, 1000
    true_p90 = math.exp(mu + sigma * Z90)
    samples = np.sort(np.random.default_rng(7).lognormal(mu, sigma, size=(reps, n)), axis=1)
    cis = [percentile_interval(s, 90.0) for s in samples]
    coverage = np.mean([ci.lo <= true_p90 <= ci.hi for ci in cis])
    widths = np.array([ci.hi - ci.lo for ci in cis])
    # Exact coverage of (x_170, x_188) is 0.967; a too-wide interval (e.g. the whole sample) would reach 1.
    assert 0.93 <= coverage <= 0.99
    assert widths.mean() < 0.3 * true_p90  # the sample's full range is about 1.6 x p90 here
    assert all(ci.n == n and ci.lo <= ci.point <= ci.hi for ci in cis)


def test_percentile_interval_none_below_min_runs_and_point_inside() -> None:
    x = np.sort(np.random.default_rng(1).lognormal(0.0, 0.4, 400))
    for pct, q in ((50.0, 0.5), (90.0, 0.9), (99.0, 0.99)):
        assert percentile_interval(x[: min_runs(q) - 1], pct) is None
        ci = percentile_interval(x[: min_runs(q)], pct)
        assert ci is not None and ci.lo <= ci.point <= ci.hi
    ci = percentile_interval(x[:200], 90.0)
    assert (ci.lo, ci.hi, ci.point) == (x[170], x[188], pytest.approx(np.percentile(x[:200], 90)))
    assert percentile_interval(np.zeros(0), 50.0) is None
    with pytest.raises(EdgeCompressError, match="sorted"):
        percentile_interval(x[::-1], 50.0)
    for bad in (0.0, 100.0, float("nan")):  # q is in percent: the ends have no two-sided interval
        with pytest.raises(EdgeCompressError, match="within"):
            percentile_interval(x, bad)
    assert percentile_interval(x[:35], 90.0) is None


def test_mean_interval_deterministic_and_sized_like_the_clt() -> None:
    x = np.random.default_rng(2).lognormal(-0.8, 0.3, 5000)
    a, b = mean_interval(x), mean_interval(x.copy())
    assert a == b
    assert a.lo < x.mean() < a.hi and a.point == pytest.approx(x.mean()) and a.n == 5000
    half = 1.959964 * x.std() / math.sqrt(len(x))
    assert (a.hi - a.lo) / 2 == pytest.approx(half, rel=0.15)
    assert mean_interval(x, seed=1) != a
    assert mean_interval(np.full(10, 0.5)) == Interval(0.5, 0.5, 0.5, 10)
    with pytest.raises(EdgeCompressError, match="needs samples"):
        mean_interval(np.zeros(0))


def test_latency_interval_keys() -> None:
    x = np.sort(np.random.default_rng(3).lognormal(0.0, 0.3, 500))
    assert latency_interval(x, "p99") == percentile_interval(x, 99.0)
    assert latency_interval(x, "sustained_p90") == percentile_interval(x, 90.0)
    assert latency_interval(x, "mean") == mean_interval(x)
    assert latency_interval(x[:100], "p99") is None
    with pytest.raises(EdgeCompressError, match="'p95' is not one of"):
        latency_interval(x, "p95")


CI = Interval(point=10.0, lo=9.0, hi=11.0, n=100)


@pytest.mark.parametrize("limit, kind, expected", [
    (12.0, "max", MET), (11.0, "max", MET), (10.5, "max", UNDECIDED), (9.0, "max", UNDECIDED),
    (8.9, "max", MISSED),
    (8.0, "min", MET), (9.0, "min", MET), (10.5, "min", UNDECIDED), (11.0, "min", UNDECIDED),
    (11.1, "min", MISSED),
])
def test_verdict(limit: float, kind: str, expected: str) -> None:
    assert verdict(CI, limit, kind) == expected


def test_verdict_refuses_unknown_kind() -> None:
    with pytest.raises(EdgeCompressError, match="'ceiling' is not 'max'"):
        verdict(CI, 1.0, "ceiling")


def test_wilson_hand_computed() -> None:
    # 90/100, z = 1.959964: centre (0.9 + z^2/200) / (1 + z^2/100) = 0.885203,
    # half z / (1 + z^2/100) * sqrt(0.09/100 + z^2/40000) = 0.059568.
    ci = wilson(0.9, 100)
    assert (ci.point, ci.n) == (0.9, 100)
    assert ci.lo == pytest.approx(0.825634, abs=2e-6) and ci.hi == pytest.approx(0.944771, abs=2e-6)
    zero = wilson(0.0, 50)  # Wald would give [0, 0]; Wilson keeps an upper bound of about 3.7/n
    assert zero.lo == 0.0 and zero.hi == pytest.approx(0.071348, abs=2e-6)
    assert wilson(1.0, 50).hi == 1.0
    with pytest.raises(EdgeCompressError, match="accuracy in"):
        wilson(92.3, 1000)  # percent instead of a fraction


def test_within_noise() -> None:
    assert within_noise(0.920, 0.915, 1000) and within_noise(0.915, 0.920, 1000)
    assert not within_noise(0.92, 0.80, 1000) and not within_noise(0.80, 0.92, 1000)
    assert not within_noise(0.920, 0.915, 1_000_000)  # the same gap, measured on many more images
    half = (wilson(0.9, 400).hi - wilson(0.9, 400).lo) / 2
    assert within_noise(0.9, 0.9 - half * 0.99, 400) and not within_noise(0.9, 0.9 - half * 1.01, 400)


def test_rounds_agree() -> None:
    rng = np.random.default_rng(4)
    r1, r2 = (np.sort(rng.lognormal(-0.9, 0.2, 300)) for _ in range(2))
    assert rounds_agree([r1, r2]).changed is False and rounds_agree([r1, r2]).text == ""
    check = rounds_agree([r1, r2, np.sort(r2 * 2.0)])
    assert check.changed
    assert check.text.startswith("rounds disagree: round medians 0.4") and "95% intervals" in check.text
    assert not rounds_agree([r1, np.sort(r2[:5] * 2.0)]).changed  # 5 runs give no median interval: skipped
    assert not rounds_agree([r1]).changed


def test_expand_round_trip() -> None:
    x = expand([[0.1, 3], [0.2, 1]])
    assert x.dtype == np.float64 and x.tolist() == [0.1, 0.1, 0.1, 0.2]
    values, counts = np.unique(x, return_counts=True)
    assert [[float(v), int(c)] for v, c in zip(values, counts)] == [[0.1, 3], [0.2, 1]]
    assert expand([]).shape == (0,)


@pytest.mark.parametrize("hist, match", [
    ([[-0.1, 1]], "value -0.1"), ([[float("nan"), 1]], "value nan"), ([[float("inf"), 2]], "value inf"),
    ([[0.1, 0]], "count 0"), ([[0.1, 1.5]], "count 1.5"), ([[0.1, True]], "count True"), ([["0.1", 1]], "value '0.1'"),
    ([[0.2, 1], [0.1, 1]], r"samples_ms\[1\]: value 0.1 after 0.2: not sorted"), ([[0.1]], "not a \\[value, count\\] pair"),
    ({"0.1": 1}, "expected"),
])
def test_expand_refuses_malformed(hist: object, match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        expand(hist)


def test_interval_json_round_trip_and_text() -> None:
    ci = Interval(0.412, 0.398, 0.431, 1000)
    assert Interval.from_json(ci.to_json()) == ci
    assert ci.to_json() == {"point": 0.412, "lo": 0.398, "hi": 0.431, "n": 1000}
    assert ci.text(unit="ms") == "0.412 [0.398, 0.431] ms"
    assert Interval(0.9223, 0.9169, 0.9274, 10000).text(decimals=1, scale=100, unit="%") == "92.2 [91.7, 92.7] %"


@pytest.mark.parametrize("d, match", [
    ({"point": 1.0, "lo": 0.5, "hi": 2.0}, r"latency\.n: 'missing' is not an int"),
    ({"point": "1", "lo": 0.5, "hi": 2.0, "n": 3}, r"latency\.point: '1' is not a finite number"),
    ({"point": 1.0, "lo": 0.5, "hi": float("inf"), "n": 3}, "hi: inf"),
    ({"point": 1.0, "lo": 0.5, "hi": 2.0, "n": 3.0}, "n: 3.0 is not an int"),
    ({"point": 3.0, "lo": 0.5, "hi": 2.0, "n": 3}, "lo <= point <= hi"),
    ({"point": 1.0, "lo": 0.5, "hi": 2.0, "n": 0}, "int n >= 1, got .* n=0"),
    ([1.0, 0.5, 2.0, 3], "is not a mapping"),
])
def test_interval_from_json_refuses_malformed(d: object, match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        Interval.from_json(d, what="latency")
