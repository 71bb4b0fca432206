"""Active learning: each strategy picks what it must on constructed cases; the selection's files and errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from edgecompress.active.select import SelectConfig, read_pool, run_selection, score_pool
from edgecompress.active.strategies import STRATEGIES, Scored, badge, choose, gradient_embeddings
from edgecompress.checkpoint import save_checkpoint
from edgecompress.config import from_dict
from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent

CONFIDENT, UNSURE = [0.97, 0.01, 0.01, 0.01], [0.3, 0.3, 0.2, 0.2]


def _probs(*rows: list[float]) -> np.ndarray:
    return np.array(rows, np.float64)


@pytest.mark.parametrize("strategy", ["least_confidence", "margin", "entropy"])
def test_uncertainty_strategies_pick_the_most_uncertain_image(strategy: str) -> None:
    s = Scored(_probs(CONFIDENT, CONFIDENT, UNSURE, [0.6, 0.4, 0, 0], CONFIDENT))
    idx, score = choose(strategy, s, 2)
    assert idx[0] == 2 and idx[1] == 3 and score[0] >= score[1]


def test_margin_prefers_a_tie_between_two_classes_over_spread_doubt() -> None:
    s = Scored(_probs([0.5, 0.5, 0, 0], [0.4, 0.2, 0.2, 0.2]))
    assert choose("margin", s, 1)[0][0] == 0 and choose("least_confidence", s, 1)[0][0] == 1


def test_bald_picks_disagreement_not_ambiguity() -> None:
    """Image 0: every sample says 50/50 (ambiguous: high entropy, no mutual information). Image 1: the
    samples are confident and disagree (high mutual information): what labelling resolves."""
    samples = np.array([[[0.5, 0.5], [0.95, 0.05], [0.9, 0.1]],
                        [[0.5, 0.5], [0.05, 0.95], [0.9, 0.1]]])
    s = Scored(samples.mean(0), samples)
    assert choose("entropy", s, 1)[0][0] == 0
    assert choose("bald", s, 1)[0][0] == 1
    with pytest.raises(EdgeCompressError, match="bald needs several predictions"):
        choose("bald", Scored(samples.mean(0)), 1)


def test_kcenter_picks_the_point_farthest_from_what_is_labeled() -> None:
    emb = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [10.0, 0.0], [0.0, 0.2]])
    s = Scored(np.full((5, 2), 0.5), embeddings=emb, labeled=np.array([[0.0, 0.0]]))
    idx, _ = choose("kcenter", s, 2)
    assert idx.tolist() == [3, 2]  # (10, 0) is farthest from the labeled origin, then (5, 5)
    with pytest.raises(EdgeCompressError, match="kcenter needs the model's embeddings"):
        choose("kcenter", Scored(np.full((5, 2), 0.5)), 1)


def test_weighted_kcenter_trades_distance_for_uncertainty() -> None:
    emb = np.array([[10.0, 0.0], [6.0, 0.0], [0.1, 0.0]])
    probs = _probs([0.99, 0.01], [0.5, 0.5], [0.5, 0.5])
    s = Scored(probs, embeddings=emb, labeled=np.zeros((1, 2)))
    assert choose("kcenter", s, 1)[0][0] == 0 and choose("weighted_kcenter", s, 1)[0][0] == 1


def test_badge_covers_both_uncertain_clusters_and_skips_the_confident() -> None:
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 0.01, (20, 4)) + [5, 0, 0, 0], rng.normal(0, 0.01, (20, 4)) + [0, 5, 0, 0],
                          rng.normal(0, 0.01, (20, 4)) + [0, 0, 5, 0]])
    probs = np.concatenate([np.tile([0.5, 0.5], (40, 1)), np.tile([1.0, 0.0], (20, 1))])
    g = gradient_embeddings(probs, emb)
    assert np.allclose(g[40:], 0)  # a certain, correct-looking prediction has no gradient: nothing to learn
    idx, _ = badge(Scored(probs, embeddings=emb), 2, seed=0)
    assert {int(i) // 20 for i in idx} == {0, 1}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_respects_the_budget_without_duplicates(strategy: str) -> None:
    rng = np.random.default_rng(1)
    samples = rng.dirichlet(np.ones(5), size=(4, 60))
    s = Scored(samples.mean(0), samples, rng.normal(size=(60, 8)), rng.normal(size=(3, 8)))
    idx, score = choose(strategy, s, 25, seed=3)
    assert len(idx) == 25 == len(np.unique(idx)) == len(score) and idx.max() < 60
    assert np.array_equal(idx, choose(strategy, s, 25, seed=3)[0])  # seeded: reproducible
    with pytest.raises(EdgeCompressError, match=r"budget 61 is larger than the pool \(60 images\)"):
        choose(strategy, s, 61)


def test_configs_and_unknown_strategy_are_refused() -> None:
    with pytest.raises(EdgeCompressError, match=r"unknown strategy 'coreset'; allowed: random, "):
        choose("coreset", Scored(_probs(UNSURE)), 1)
    with pytest.raises(EdgeCompressError, match=r"invalid value strategy='coreset'"):
        from_dict(SelectConfig, {"strategy": "coreset"})
    with pytest.raises(EdgeCompressError, match=r"invalid value budget=0"):
        from_dict(SelectConfig, {"budget": 0})
    with pytest.raises(EdgeCompressError, match=r"invalid value model='resnet'"):
        from_dict(SelectConfig, {"model": "resnet"})


def _pool_dir(tmp: Path, n: int, size: int = 12, mode: str = "L") -> Path:
    d = tmp / "pool"
    (d / "day1").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).convert(mode).save(d / "day1" / f"{i}.png")
    return d


def test_pool_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeCompressError, match=r"holds no images"):
        read_pool(tmp_path / "empty", (1, 12, 12))
    d = _pool_dir(tmp_path, 3, size=16)
    with pytest.raises(EdgeCompressError, match=r"0\.png is 16x16, the model takes 12x12"):
        read_pool(d, (1, 12, 12))
    np.savez(tmp_path / "rgb.npz", x=np.zeros((4, 12, 12, 3), np.uint8))
    with pytest.raises(EdgeCompressError, match=r"shape \(3, 12, 12\) \(C, H, W\); the model takes \(1, 12, 12\)"):
        read_pool(tmp_path / "rgb.npz", (1, 12, 12))
    np.savez(tmp_path / "none.npz", x=np.zeros((0, 12, 12), np.uint8))
    with pytest.raises(EdgeCompressError, match=r"is empty: nothing to choose from"):
        read_pool(tmp_path / "none.npz", (1, 12, 12))
    names, x = read_pool(d.parent / "pool", (3, 16, 16))  # grayscale files read as RGB for an RGB model
    assert x.shape == (3, 3, 16, 16) and names[0] == "day1/0.png"


def test_bald_on_a_network_without_dropout_says_what_to_use() -> None:
    model = MobileNetStudent(1, 4, [8, 8], [2])
    with pytest.raises(EdgeCompressError, match=r"needs MC dropout, but MobileNetStudent has no dropout layer"):
        score_pool([model], torch.zeros(3, 1, 12, 12), SelectConfig(strategy="bald"))
    dropout = MobileNetStudent(1, 4, [8, 8], [2], dropout=0.5)
    scored = score_pool([dropout], torch.randn(3, 1, 12, 12), SelectConfig(strategy="bald", mc_samples=4))
    assert scored.samples is not None and scored.samples.shape == (4, 3, 4)


def test_selection_writes_the_list_and_the_contact_sheet(tmp_path: Path) -> None:
    model = MobileNetStudent(1, 4, [8, 8], [2])
    data = {"input_shape": [1, 12, 12], "mean": [0.5], "std": [0.25], "class_names": ["a", "b", "c", "d"]}
    save_checkpoint(tmp_path / "student.pt", model, {"kind": "mobilenet", "in_channels": 1, "num_classes": 4,
                                                     "channels": [8, 8], "strides": [2], "dropout": 0.0},
                    {"data": data, "metrics": {}})
    pool = _pool_dir(tmp_path, 7)
    for strategy in ("entropy", "kcenter"):
        out = tmp_path / f"{strategy}.csv"
        summary = run_selection(pool, [tmp_path / "student.pt"], SelectConfig(strategy=strategy, budget=5,
                                                                              sheet_columns=3), out,
                                tmp_path / f"{strategy}.png")
        rows = list(csv.DictReader(out.open()))
        assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"] and len({r["file"] for r in rows}) == 5
        assert all(r["guess"] in data["class_names"] and r["label"] == "" for r in rows)
        assert sum(summary["class_histogram"].values()) == 5
        sheet = Image.open(tmp_path / f"{strategy}.png")
        assert sheet.size == (3 * 14 + 2, 2 * 14 + 2)  # 3 columns, 2 rows of 12 px + 2 px gaps
    with pytest.raises(EdgeCompressError, match=r"budget 8 is larger than the pool \(7 images"):
        run_selection(pool, [tmp_path / "student.pt"], SelectConfig(budget=8), tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_the_runner_scores_a_pool_with_a_heads_artifact(tmp_path: Path) -> None:
    """Per-image entropy and mutual information on the device equal the PyTorch multi-head student's."""
    import json

    from edgecompress.deploy import runner
    from edgecompress.metrics import uncertainty_decomposition
    from edgecompress.models import MultiHeadStudent, PerHeadOutputs

    torch.manual_seed(0)
    model = MultiHeadStudent(MobileNetStudent(1, 4, [8, 8], [2]), num_heads=3).eval()
    path = tmp_path / "heads.onnx"
    torch.onnx.export(PerHeadOutputs(model).eval(), (torch.zeros(1, 1, 12, 12),), str(path), input_names=["input"],
                      output_names=["probs", "head_probs"], dynamic_axes={"input": {0: "n"}}, dynamo=False)
    (tmp_path / "heads.onnx.json").write_text(json.dumps({
        "format": "onnx", "precision": "fp32", "input_shape": [1, 1, 12, 12], "layout": "NCHW",
        "input_dtype": "float32", "mean": [0.5], "std": [0.25], "num_classes": 4,
        "outputs": {"probs": "mean", "head_probs": "per head"}}))
    x = np.random.default_rng(0).integers(0, 256, (9, 1, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "pool.npz", x=x)
    res = runner.score(path, tmp_path / "pool.npz", batch=4)
    with torch.no_grad():
        heads = torch.softmax(model.forward_heads(torch.from_numpy((x / 255.0 - 0.5) / 0.25).float()), -1).numpy()
    want = uncertainty_decomposition(heads)
    assert res["images"] == 9 and np.allclose(res["mutual_information"], want["mutual_information"], atol=1e-5)
    assert np.allclose(res["entropy"], want["total"], atol=1e-5)
    assert res["guess"] == heads.mean(0).argmax(1).tolist()


def test_the_select_stage_writes_its_outputs_and_refuses_an_unknown_pool(tmp_path: Path) -> None:
    """stages/to_label.py (dvc's select@<pool>) with active_learning.pools set: the CSV, sheet and metrics."""
    import json
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[1]
    models = tmp_path / "models"
    data = {"input_shape": [1, 12, 12], "mean": [0.5], "std": [0.25], "class_names": ["a", "b", "c", "d"]}
    save_checkpoint(models / "student.pt", MobileNetStudent(1, 4, [8, 8], [2]),
                    {"kind": "mobilenet", "in_channels": 1, "num_classes": 4, "channels": [8, 8], "strides": [2],
                     "dropout": 0.0}, {"data": data, "metrics": {}})
    pool = _pool_dir(tmp_path, 6)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["active_learning"].update(pools={"field": str(pool)}, budget=4, strategy="margin")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def stage(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(repo / "stages/to_label.py"), "--params", "params.yaml",
                               "--name", name, "--models", "models", "--out", f"out/{name}.csv", "--sheet",
                               f"out/{name}.png", "--metrics", f"out/{name}.json"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    ok = stage("field")
    assert ok.returncode == 0, ok.stderr
    assert len(list(csv.DictReader((tmp_path / "out/field.csv").open()))) == 4
    assert json.loads((tmp_path / "out/field.json").read_text())["strategy"] == "margin"
    assert (tmp_path / "out/field.png").is_file()
    bad = stage("nope")
    assert bad.returncode == 1 and "active_learning.pools has no pool 'nope'" in bad.stderr
    assert not (tmp_path / "out/nope.csv").exists()


def test_labelled_rows_go_into_the_imagefolder_dataset(tmp_path: Path) -> None:
    """The loop's last step: the person's labels become training images; bad rows copy nothing."""
    from edgecompress.active.labels import merge_labels
    from edgecompress.cli import main as cli

    pool = _pool_dir(tmp_path, 4)
    for c in ("bag", "shoe"):
        (tmp_path / "ds" / "train" / c).mkdir(parents=True)
    rows = [["file", "rank", "score", "guess", "confidence", "label"], ["day1/0.png", 1, 0.9, "bag", 0.5, "shoe"],
            ["day1/1.png", 2, 0.8, "bag", 0.5, ""], ["day1/2.png", 3, 0.7, "shoe", 0.5, "bag"]]
    out = tmp_path / "to_label.csv"
    with out.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert cli(["add-labels", "--csv", str(out), "--pool", str(pool), "--dataset", str(tmp_path / "ds")]) is None
    assert sorted(p.name for p in (tmp_path / "ds/train/shoe").iterdir()) == ["day1_0.png"]
    assert sorted(p.name for p in (tmp_path / "ds/train/bag").iterdir()) == ["day1_2.png"]
    with pytest.raises(EdgeCompressError, match=r"already exists \(labelled twice\?\)"):
        merge_labels(out, pool, tmp_path / "ds")
    rows[1][5], rows[3][5] = "sandal", "bag"
    with out.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(EdgeCompressError, match=r"line 2: label 'sandal' is not a class of .* \(bag, shoe\)"):
        merge_labels(out, pool, tmp_path / "ds")
    # An npz pool: its images are written as PNG files the imagefolder loader reads.
    np.savez(tmp_path / "field.npz", x=np.full((3, 1, 12, 12), 200, np.uint8))
    with out.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], ["field.npz[2]", 1, 0.9, "bag", 0.5, "bag"]])
    assert merge_labels(out, tmp_path / "field.npz", tmp_path / "ds")["per_class"] == {"bag": 1}
    assert np.asarray(Image.open(tmp_path / "ds/train/bag/field-2.png")).shape == (12, 12)
