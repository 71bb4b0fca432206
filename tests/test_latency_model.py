"""deploy/latency_model.py and latency_features.py: features counted from the artifact, the per-device power
law on synthetic cache entries, its fallbacks, its held-out error, and when it lets the search skip a run."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.deploy import latency_features
from edgecompress.deploy.latency_features import FeatureCache, Features, artifact_features
from edgecompress.deploy.latency_model import (Group, LatencyModelConfig, Observation, Prediction, device_key, fit,
                                               holdout_error, load_observations, observation, should_measure)
from edgecompress.deploy.runner import fingerprint, probe
from edgecompress.errors import EdgeCompressError

FP = {"hostname": "pi", "arch": "aarch64", "cpu_model": "Cortex-A72", "board": "Pi 4", "cores": 4, "os": "Linux",
      "python": "3.11.2", "numpy": "2.0.0"}
G = Group("pi/t4/b1/#x", "litert", "int8")


def law(f: Features) -> float:
    """The synthetic device: 0.02 ms per call plus 3 ns per MAC."""
    return 0.02 + 3e-8 * f.macs


def synthetic(n: int, seed: int = 0, noise: float = 0.0, group: Group = G) -> list[Observation]:
    """``n`` networks with MACs over three decades (bytes drawn apart: the law ignores them), p90 = 1.5 x p50."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        f = Features(int(10 ** rng.uniform(5, 8)), 1000 + i, 10, int(10 ** rng.uniform(4, 7)))
        p50 = law(f) * math.exp(rng.normal(0, noise)) if noise else law(f)
        out.append(Observation(group, f"sha{i}", f, {"p50": p50, "p90": 1.5 * p50}))
    return out


def entry(p50: object = 0.5, **over: object) -> dict:
    """A runner result as the MeasurementCache stores it (the fields the latency model reads)."""
    e = {"model": "/pool/student/int8.tflite", "model_size_bytes": 100, "format": "tflite", "precision": "int8",
         "runtime": {"name": "ai-edge-litert", "version": "2.3.0", "threads": 4, "xnnpack": True},
         "requested_providers": None, "bench": {"batch": 1, "warmup": 10},
         "latency_ms": {"p50": p50, "p90": 0.8, "p99": 1.0}, "fingerprint": {**FP, "runtime": "ai-edge-litert",
                                                                              "runtime_version": "2.3.0"}}
    e.update(over)
    return e


def obs_at(macs_p50: list[tuple[int, float]], group: Group = G) -> list[Observation]:
    return [Observation(group, f"a{i}", Features(m, 0, 5, 1000), {"p50": p}) for i, (m, p) in enumerate(macs_p50)]


# ------------------------------------------------------------------------------------------ the law

def test_fit_recovers_overhead_and_cost_per_mac() -> None:
    model = fit(synthetic(12))
    assert model.fits[G].beta == pytest.approx([0.02, 3e-8], rel=1e-9)
    f = Features(3_000_000, 0, 10, 200_000)  # not among the training points
    p = model.predict(G, f)
    assert p is not None and p.method == "overhead + per-MAC, 12 points" and p.points == 12
    assert p.p50 == pytest.approx(law(f), rel=1e-9)
    # far below the data the overhead remains: a tiny network is not predicted free
    assert model.predict(G, Features(10, 0, 1, 100)).p50 == pytest.approx(0.02, rel=1e-3)


def test_fit_is_on_relative_error() -> None:
    """A 10% miss on a 0.02 ms network weighs as much as one on a 2 ms network."""
    pts = [(10 ** 5, 0.02), (10 ** 6, 0.05), (10 ** 7, 0.32), (10 ** 8, 3.02)]
    off = [(m, p * (1.2 if i == 0 else 1.0)) for i, (m, p) in enumerate(pts)]
    small = fit(obs_at(off)).predict(G, Features(10 ** 5, 0, 5, 1000)).p50
    assert 0.02 < small < 0.024  # pulled toward the 20% miss, not ignored as a tiny absolute one


def test_terms_stay_non_negative() -> None:
    """Faster when bigger (noise): no negative cost per MAC; the constant the data allows instead."""
    model = fit(obs_at([(10 ** 5, 0.05), (10 ** 6, 0.045), (10 ** 7, 0.04)]))
    assert model.fits[G].beta[1] == 0 and model.fits[G].beta[0] > 0
    assert model.predict(G, Features(10 ** 9, 0, 5, 1000)).p50 == pytest.approx(model.fits[G].beta[0])
    # pure compute (no overhead in the data): the constant is dropped, not made negative
    pure = fit(obs_at([(10 ** 5, 1e-3), (10 ** 6, 1e-2), (10 ** 7, 0.1)]))
    assert pure.fits[G].beta == pytest.approx([0, 1e-8])


def test_percentiles_follow_the_measured_ratio_and_the_band_holds_the_point() -> None:
    p = fit(synthetic(8)).predict(G, Features(1_000_000, 0, 5, 50_000))
    point, lo, hi = p.ms["p90"]
    assert point == pytest.approx(1.5 * p.p50) and lo < point < hi
    assert "p99" not in p.ms  # never measured in this group: no ratio, no guess
    lo50, hi50 = p.ms["p50"][1:]
    assert lo50 < p.p50 < hi50 and lo == pytest.approx(1.5 * lo50)


def test_a_tail_ratio_that_varies_widens_the_tails_band() -> None:
    """Small networks' tails are jitter-bound (p90 = 9 x p50), big ones' are not (1.3 x): the p90 band spans
    both, so a large network is not skipped on a tail ratio learnt on small ones."""
    obs = [Observation(G, f"a{i}", Features(m, 0, 5, 1000), {"p50": law(Features(m, 0, 5, 0)), "p90": r * law(
        Features(m, 0, 5, 0))}) for i, (m, r) in enumerate([(10 ** 5, 9.0), (10 ** 6, 8.0), (10 ** 7, 1.3)])]
    p = fit(obs).predict(G, Features(10 ** 8, 0, 5, 1000))
    point, lo, hi = p.ms["p90"]
    assert point == pytest.approx(8.0 * p.p50) and lo == pytest.approx(1.3 * p.ms["p50"][1])
    assert hi == pytest.approx(9.0 * p.ms["p50"][2])
    assert should_measure(p, {"p90": 1.5 * p.p50})  # the median ratio says 8x over; the band says maybe not


def test_band_widens_with_noise_and_far_from_the_data() -> None:
    near, far = Features(3_000_000, 0, 5, 100_000), Features(10 ** 11, 0, 5, 10 ** 10)
    quiet, noisy = fit(synthetic(12)), fit(synthetic(40, noise=0.8))

    def width(m, f):
        _, lo, hi = m.predict(G, f).ms["p50"]
        return math.log(hi / lo)

    assert width(quiet, near) == pytest.approx(2 * 2.0 * 0.25, rel=0.1)  # the min_spread floor, near the data
    assert noisy.fits[G].sigma > 0.45  # the residual spread sees the noise
    assert width(noisy, near) > 2 * width(quiet, near)
    # beyond the data the fit's own uncertainty adds (in relative terms, only the per-MAC cost's)
    assert width(quiet, far) > width(quiet, near)


def test_repeated_measurements_of_one_artifact_count_once() -> None:
    obs = synthetic(6)
    twin = obs[0]  # measured five more times, all slower: the median of its six is what the fit sees
    repeats = [Observation(G, twin.artifact, twin.features, {"p50": twin.latency_ms["p50"] * 3}) for _ in range(5)]
    once = fit(obs).predict(G, twin.features).p50
    many = fit(obs + repeats).predict(G, twin.features).p50
    assert once == pytest.approx(law(twin.features), rel=1e-9)
    assert many > once and fit(obs + repeats).fits[G].y.shape == (6,)


def test_groups_are_fitted_apart() -> None:
    other = Group("pi/t1/b1/#y", "litert", "int8")
    slow = [Observation(other, o.artifact, o.features, {"p50": 4 * o.latency_ms["p50"]}) for o in synthetic(6)]
    model = fit(synthetic(6) + slow)
    f = Features(2_000_000, 0, 5, 80_000)
    assert model.predict(other, f).p50 == pytest.approx(4 * model.predict(G, f).p50, rel=1e-9)
    assert model.predict(Group("pi/t4/b1/#x", "litert", "fp16"), f) is None  # nothing measured in fp16


# ------------------------------------------------------------------------------------ too few points

def test_one_network_alone_gives_the_laws_interval_and_its_middle() -> None:
    """Through one point (M0, y0) the law with both terms >= 0 puts r x M0 between y0 and r x y0."""
    only = synthetic(1)[0]
    y0, noise = only.latency_ms["p50"], math.exp(2.0 * LatencyModelConfig().min_spread)
    for r in (4.0, 0.25):
        p = fit([only]).predict(G, Features(int(r * only.features.macs), 0, 5, only.features.bytes))
        assert p.method == "1 point, between constant and MACs-proportional" and p.points == 1
        assert p.p50 == pytest.approx(y0 * math.sqrt(r), rel=1e-6)
        _, lo, hi = p.ms["p50"]
        assert lo == pytest.approx(y0 * min(1, r) / noise, rel=1e-6)
        assert hi == pytest.approx(y0 * max(1, r) * noise, rel=1e-6)
        assert p.ms["p90"][0] == pytest.approx(1.5 * p.p50)


def test_one_network_borrows_the_shape_of_a_fitted_group() -> None:
    """On a fresh machine a precision has one measured network; another precision's fit lends its overhead
    share (same engine and precision on another device first), scaled through the measured point."""
    other_dev = Group("vm/t2/b1/#y", "litert", "int8")
    fp16 = Group(G.device, "litert", "fp16")
    # the other device: 0.05 ms overhead + 1e-9 ms/MAC (overhead-dominated, like this pool's networks)
    donor = obs_at([(10 ** 6, 0.051), (2 * 10 ** 7, 0.07)], group=other_dev)
    decoy = obs_at([(10 ** 6, 0.01), (2 * 10 ** 7, 0.2)], group=fp16)  # same device, other precision: second
    one = obs_at([(10 ** 6, 0.102)])  # this device, int8: one network, twice the other device's speed
    model = fit(donor + decoy + one)
    p = model.predict(G, Features(2 * 10 ** 7, 0, 5, 1000))
    assert p.method == "1 point, the shape of litert int8" and model.fits[G].donor == other_dev
    assert p.p50 == pytest.approx(0.14, rel=1e-6)  # 2 x 0.07: the donor's law scaled to 0.102 at 1e6 MACs
    _, lo, hi = p.ms["p50"]
    assert lo < 0.102 < p.p50 < 20 * 0.102 < hi  # the point inside the law's interval
    # the same device's other precision lends its shape when no same-precision group exists
    assert fit(decoy + one).fits[G].donor == fp16


def test_copies_of_one_network_are_one_point() -> None:
    """A clustered copy has the network's MACs: two artifacts, still one network to the law."""
    o = obs_at([(10 ** 6, 0.10), (10 ** 6, 0.12)])
    f = fit(o).fits[G]
    assert f.anchor == (10 ** 6, pytest.approx(0.11))
    assert fit(o).predict(G, Features(10 ** 6, 0, 5, 10)).p50 == pytest.approx(0.11)


def test_two_points_fit_the_line_with_the_wide_band() -> None:
    p = fit(obs_at([(10 ** 6, 0.05), (10 ** 7, 0.32)])).predict(G, Features(10 ** 8, 0, 5, 1000))
    assert p.p50 == pytest.approx(0.02 + 3e-8 * 10 ** 8, rel=1e-9) and p.points == 2
    _, lo, hi = p.ms["p50"]
    assert math.log(hi / lo) == pytest.approx(2 * 2.0 * 0.7)


def test_min_points_decides_when_residuals_set_the_band() -> None:
    obs = synthetic(3)
    assert fit(obs).fits[G].sigma == pytest.approx(0, abs=1e-9)
    assert fit(obs, LatencyModelConfig(min_points=4)).fits[G].sigma is None


# ------------------------------------------------------------------------------------ should_measure

def pred(p50: float, lo: float, hi: float, p90: float | None = None) -> Prediction:
    ms = {"p50": (p50, lo, hi)}
    if p90 is not None:
        ms["p90"] = (p90, 1.5 * lo, 1.5 * hi)
    return Prediction(G, "power law", 5, ms)


@pytest.mark.parametrize("prediction, budgets, expected", [
    (None, {"p50": 1.0}, True),  # nothing known: measure
    (pred(0.5, 0.4, 0.6), {}, True),  # no latency budget: latency cannot rule it out
    (pred(0.5, 0.4, 0.6), {"p50": 1.0}, True),  # inside
    (pred(1.2, 0.9, 1.6), {"p50": 1.0}, True),  # over, but its band reaches the budget: near, measure
    (pred(2.0, 1.5, 2.7), {"p50": 1.0}, False),  # confidently over
    (pred(0.5, 0.4, 0.6, p90=0.75), {"p50": 1.0, "p90": 0.5}, False),  # p90 band [0.6, 0.9] all over 0.5
    (pred(0.5, 0.4, 0.6, p90=0.75), {"p50": 1.0, "p90": 0.7}, True),
    (pred(0.5, 0.4, 0.6), {"p99": 0.1}, True),  # no p99 ratio in this group: unknown, measure
])
def test_should_measure(prediction: Prediction | None, budgets: dict, expected: bool) -> None:
    assert should_measure(prediction, budgets) is expected


def test_a_fitted_prediction_skips_only_what_is_far_over() -> None:
    model = fit(synthetic(10, noise=0.05))
    small, huge = Features(200_000, 0, 5, 20_000), Features(50_000_000, 0, 5, 5_000_000)
    budget = {"p50": 3 * law(small)}
    assert should_measure(model.predict(G, small), budget)
    assert not should_measure(model.predict(G, huge), budget)  # ~300x over


# ------------------------------------------------------------------------------------ held-out error

def test_holdout_error_is_small_on_a_noisy_power_law() -> None:
    obs = synthetic(30, seed=1, noise=0.05)
    r = holdout_error(obs, frac=1 / 3, seed=0)
    logging.getLogger(__name__).info(f"synthetic held-out MdAPE {100 * r.mdape:.2f}% on {r.n} artifacts")
    assert r.n == 10 and set(r.per_group) == {G}
    assert r.mdape < 0.08  # the noise alone is ~3.4% median (5% lognormal)
    assert r.mdape > 0.005  # and it is there: nothing leaked
    assert r.mdape == pytest.approx(np.median([abs(p - m) / m for _, _, p, m in r.cases]))
    assert {a for _, a, _, _ in r.cases} <= {o.artifact for o in obs}
    assert holdout_error(obs, seed=0).cases == r.cases  # seeded
    assert holdout_error(obs, seed=1).cases != r.cases


def test_holdout_error_sees_a_wrong_law() -> None:
    """Measured latency that does not follow MACs at all (a flat runtime overhead): the error says so."""
    rng = np.random.default_rng(3)
    obs = [Observation(G, f"s{i}", Features(int(10 ** rng.uniform(5, 8)), 0, 5, int(10 ** rng.uniform(4, 7))),
                       {"p50": 0.05 + 0.5 * rng.random()}) for i in range(30)]
    assert holdout_error(obs).mdape > 0.2


def test_holdout_keeps_a_networks_copies_together() -> None:
    """A clustered copy (same MACs, params, layers; other bytes) of a held-out network is held out too."""
    obs = synthetic(9, seed=2)
    copies = [Observation(G, o.artifact + "-c4", replace(o.features, bytes=o.features.bytes // 2),
                          {"p50": o.latency_ms["p50"] * 1.01}) for o in obs]
    r = holdout_error(obs + copies, frac=1 / 3, seed=0)
    held = {a for _, a, _, _ in r.cases}
    assert r.n == 6 and all((a + "-c4" in held) for a in held if not a.endswith("-c4"))


def test_holdout_fits_other_devices_but_never_holds_them_out() -> None:
    """A build's fit has every device's measurements; so has its held-out error, which judges only its own."""
    other = Group("vm/t2/b1/#y", "litert", "int8")
    mine = obs_at([(10 ** 6, 0.102), (2 * 10 ** 7, 0.14)])
    extra = obs_at([(10 ** 6, 0.051), (2 * 10 ** 7, 0.07)], group=other)
    alone, lent = holdout_error(mine), holdout_error(mine, extra=extra)
    assert alone.n == lent.n == 1 and {c[0] for c in lent.cases} == {G}
    assert lent.mdape == pytest.approx(0.0, abs=1e-6)  # the other device's shape is this one's
    assert alone.mdape > 0.1


def test_holdout_needs_two_artifacts_somewhere_and_a_sane_fraction() -> None:
    with pytest.raises(EdgeCompressError, match="no group has two measured networks"):
        holdout_error(synthetic(1))
    for frac in (0, 1, 1.5):
        with pytest.raises(EdgeCompressError, match=r"frac .* strictly between 0 and 1"):
            holdout_error(synthetic(6), frac=frac)


# ------------------------------------------------------------------------------------ cache entries

def test_observation_from_a_cache_entry() -> None:
    f = Features(1, 1, 1, 100)
    o = observation(entry(), f, "abc", "k.json")
    assert o.group.engine == "litert" and o.group.precision == "int8" and o.artifact == "abc"
    assert o.latency_ms == {"p50": 0.5, "p90": 0.8, "p99": 1.0}
    # the same machine, other threads / batch: other groups; an ORT entry ignores xnnpack
    assert observation(entry(runtime={**entry()["runtime"], "threads": 1}), f, "abc").group != o.group
    assert observation(entry(bench={"batch": 8}), f, "abc").group != o.group
    ort = {"name": "onnxruntime", "version": "1.32.0", "threads": 1}
    groups = {observation(entry(runtime={**ort, "xnnpack": x}), f, "abc").group for x in (True, False, None)}
    assert len(groups) == 1 and groups.pop().engine == "onnxruntime"


def test_device_key_of_a_probe_matches_its_entries() -> None:
    """The search knows the device from its probe (no model loaded): the key must be the entry's."""
    pr = probe()
    e = entry(fingerprint=fingerprint({"name": "ai-edge-litert", "version": "2.3.0"}))
    measured = observation(e, Features(1, 1, 1, 1), "abc").group.device
    assert device_key(pr["fingerprint"], "litert", "2.3.0", 4, True, None, 1) == measured


@pytest.mark.parametrize("bad, match", [
    ([1, 2], "a JSON list, not an object"),
    (entry(latency_ms=None), "no latency_ms object"),
    (entry(p50=-1.0), "not a number > 0"),
    (entry(p50="fast"), "not a number > 0"),
    (entry(p50=True), "not a number > 0"),
    (entry(p50=float("inf")), "not a number > 0"),
    (entry(latency_ms={"p90": 1.0}), "no latency_ms.p50"),
    (entry(runtime={"name": "tensorrt"}), "no runtime name the runner knows"),
    (entry(fingerprint=None), "no fingerprint"),
    (entry(precision=None), "no precision"),
    (entry(bench={"batch": "1"}), "an int batch"),
    (entry(bench=None), "no bench settings"),
])
def test_corrupt_entries_are_named(bad: object, match: str) -> None:
    with pytest.raises(EdgeCompressError, match=rf"measurement cache entry k\.json: .*{match}.*delete it"):
        observation(bad, Features(1, 1, 1, 1), "abc", "k.json")


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    """Conv 1->4 (3x3, pad 1) on 1x8x8, then Flatten + Gemm 256->3: 4*64*9 + 256*3 = 3072 MACs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("W", (4, 1, 3, 3)), ("B", (4,)), ("FW", (3, 256)), ("FB", (3,)))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Flatten", ["c"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "FW", "FB"], ["y"], transB=1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path / "student" / "fp32.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path))
    return path


def test_onnx_features_by_hand(tiny_onnx: Path) -> None:
    assert artifact_features(tiny_onnx) == Features(macs=4 * 64 * 9 + 256 * 3, params=36 + 4 + 768 + 3, layers=2,
                                                    bytes=tiny_onnx.stat().st_size)


def test_features_match_pytorchs_count_for_an_exported_student(tiny_student, tmp_path: Path) -> None:
    from edgecompress.compression.onnx import export_onnx
    from edgecompress.models import count_macs

    export_onnx(tiny_student, (1, 12, 12), tmp_path / "s.onnx")
    f = artifact_features(tmp_path / "s.onnx")
    convs = [m for m in tiny_student.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert f.macs == count_macs(tiny_student, (1, 12, 12)) and f.layers == len(convs)
    # every conv's BatchNorm folds into a bias, one per output channel
    assert f.params == sum(m.weight.numel() + m.weight.shape[0] for m in convs)


@pytest.mark.slow  # the TFLite conversion takes ~10 s
def test_tflite_counts_what_onnx_counts(tiny_student, tmp_path: Path) -> None:
    from edgecompress.compression.onnx import export_onnx
    from edgecompress.compression.tflite import export_tflite

    export_onnx(tiny_student, (1, 12, 12), tmp_path / "s.onnx")
    export_tflite(tiny_student, (1, 12, 12), tmp_path / "s.tflite")
    o, t = artifact_features(tmp_path / "s.onnx"), artifact_features(tmp_path / "s.tflite")
    assert (t.macs, t.params, t.layers) == (o.macs, o.params, o.layers) and t.macs > 0


def test_unreadable_or_unsupported_artifacts_are_errors(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"not a model")
    with pytest.raises(EdgeCompressError, match=r"m\.onnx: cannot read the model"):
        artifact_features(tmp_path / "m.onnx")
    with pytest.raises(EdgeCompressError, match="cascade"):
        artifact_features(tmp_path / "fp32.onnx.cascade.json")


def test_feature_cache_keys_on_the_bytes(tiny_onnx: Path, tmp_path: Path, monkeypatch) -> None:
    counted = []
    real = latency_features.artifact_features
    monkeypatch.setattr(latency_features, "artifact_features", lambda p: counted.append(p) or real(p))
    first = FeatureCache(tmp_path / "feat").get(tiny_onnx)
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(tiny_onnx.read_bytes())
    again = FeatureCache(tmp_path / "feat").get(copy)  # a new process, same bytes: read from disk
    assert again == first and counted == [tiny_onnx]
    (next((tmp_path / "feat").glob("*.json"))).write_text("{broken")
    assert FeatureCache(tmp_path / "feat").get(copy) == first and counted == [tiny_onnx, copy]


def test_load_observations_reads_a_cache_and_says_what_it_left(tiny_onnx: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    size = tiny_onnx.stat().st_size
    ort = {"name": "onnxruntime", "version": "1.32.0", "threads": 1}
    (cache / "a.json").write_text(json.dumps(entry(model=str(tiny_onnx), model_size_bytes=size, runtime=ort,
                                                   precision="fp32")))
    (cache / "b.json").write_text(json.dumps(entry(model=str(tiny_onnx), model_size_bytes=size + 1)))  # re-exported
    (cache / "c.json").write_text(json.dumps(entry(model=str(tmp_path / "fp32.onnx.cascade.json"))))
    obs, left = load_observations(cache, FeatureCache())
    assert [o.where for o in obs] == [str(cache / "a.json")] and obs[0].group.engine == "onnxruntime"
    assert obs[0].features.macs == 3072
    assert [s.split(":")[0] for s in left] == ["b.json", "c.json"] and "gone or changed" in left[0]
    (cache / "d.json").write_text("{")
    with pytest.raises(EdgeCompressError, match=r"d\.json: unreadable"):
        load_observations(cache, FeatureCache())
    (cache / "d.json").write_text("[]")
    with pytest.raises(EdgeCompressError, match=r"d\.json: a JSON list, not an object"):
        load_observations(cache, FeatureCache())


def test_an_entry_named_by_sha256_needs_no_file_here(tiny_onnx: Path, tmp_path: Path) -> None:
    """A device over SSH ran its own copy: the entry names the artifact by sha256, whose features were counted
    from the pool's file when the build predicted it; the device's path means nothing on this machine."""
    from edgecompress.dirs import file_sha256

    cache, sha = tmp_path / "cache", file_sha256(tiny_onnx)
    cache.mkdir()
    remote = entry(model="/tmp/edgecompress-run-x/model.onnx", model_size_bytes=tiny_onnx.stat().st_size,
                   runtime={"name": "onnxruntime", "version": "1.32.0", "threads": 1}, precision="fp32",
                   artifact_sha256=sha)
    (cache / "r.json").write_text(json.dumps(remote))
    obs, left = load_observations(cache, FeatureCache(cache / "features"))
    assert obs == [] and "gone or changed" in left[0]  # its features never counted here: nothing to fit on
    counted = FeatureCache(cache / "features").get(tiny_onnx, sha)  # what the build's prediction does
    obs, left = load_observations(cache, FeatureCache(cache / "features"))
    assert left == [] and [(o.artifact, o.features) for o in obs] == [(sha, counted)]


@pytest.mark.parametrize("kwargs, match", [
    ({"fallback_spread": -1}, "latency_model.fallback_spread"),
    ({"z": float("nan")}, "latency_model.z"),
    ({"min_spread": "0.1"}, "latency_model.min_spread"),
    ({"min_points": 2}, "latency_model.min_points: 2 must be an int >= 3"),
    ({"min_points": 3.0}, "latency_model.min_points"),
])
def test_config_errors_name_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        LatencyModelConfig(**kwargs)


def test_fit_refuses_raw_dicts() -> None:
    with pytest.raises(EdgeCompressError, match="fit takes Observations"):
        fit([entry()])
