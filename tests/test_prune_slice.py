"""Pruning applies to any slice of the elastic student (prune.source_model: elastic-<name>), as to the student."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgecompress.checkpoint import load_checkpoint, save_checkpoint
from edgecompress.config import load_params
from edgecompress.data import Dataset, Split
from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent, arch_of, count_params
from edgecompress.compression.finetune import finetune_plan, pruning_subject
from edgecompress.compression.prune import PruneConfig, prune_and_finetune
from edgecompress.training.elastic import Slice, save_slices
from edgecompress.training.elastic_net import ElasticMobileNet, extract
from edgecompress.training.loop import TrainConfig
from edgecompress.validate import slice_names, validate_params

from conftest import make_blobs

REPO = Path(__file__).resolve().parents[1]
ONE_EPOCH = TrainConfig(epochs=1, batch_size=32, lr=0.05, crop_pad=0, flip=False)
CFG = PruneConfig(source_model="elastic-w150", ratio=0.5, ladder=(0.7,), steps=1, round_to=2, latency_runs=0,
                  source="teacher", finetune=ONE_EPOCH)


def blob_dataset() -> Dataset:
    """make_blobs' quadrant problem (1x12x12, 4 classes) as uint8 splits: 128 train, 32 val, 32 test."""
    x, y = make_blobs(192)
    x8 = ((x.clamp(-1, 3) + 1) / 4 * 255).round().to(torch.uint8).numpy()
    y64 = y.numpy().astype(np.int64)
    return Dataset(Split(x8[:128], y64[:128]), Split(x8[128:160], y64[128:160]), Split(x8[160:], y64[160:]),
                   ["a", "b", "c", "d"], (0.3,), (0.3,))


def write_checkpoints(tmp_path: Path) -> Path:
    """A tiny elastic net's slices elastic-w050 and elastic-w150 (save_slices, as the elastic stage writes them),
    and a student and a teacher beside them; returns the slices' directory."""
    torch.manual_seed(0)
    net = ElasticMobileNet(1, 4, [8, 16, 16, 32, 32], [2, 1, 2, 1], (0.5, 1.0, 1.5)).eval()
    slices = []
    for w in (0.5, 1.5):
        model, arch = extract(net, net.spec(w))
        slices.append(Slice(f"elastic-{net.name(net.spec(w))}", net.spec(w), model, arch, {}))
    save_slices(tmp_path / "elastic", slices, lambda s: {"stage": "elastic", "metrics": {"widths": list(s.spec.widths)}})
    torch.manual_seed(1)
    for name, m in (("student", MobileNetStudent(1, 4, [8, 16, 16, 32, 32], [2, 1, 2, 1])),
                    ("teacher", MobileNetStudent(1, 4, [8, 16], [2]))):
        save_checkpoint(tmp_path / f"{name}.pt", m.eval(), arch_of(m), {})
    return tmp_path / "elastic"


def test_a_slice_is_pruned_and_fine_tuned_as_the_student_is(tmp_path: Path) -> None:
    elastic = write_checkpoints(tmp_path)
    (model, meta, parent), teacher = pruning_subject(CFG.source_model, str(tmp_path / "student.pt"),
                                                     str(tmp_path / "teacher.pt"), elastic)
    assert parent == str(elastic / "elastic-w150.pt") and meta["stage"] == "elastic"
    slice_channels = arch_of(model)["channels"]
    assert slice_channels == [12, 24, 24, 48, 48]  # width 1.5 of [8, 16, 16, 32, 32]: the slice, not the student
    params0 = count_params(model)
    source, multihead = finetune_plan(CFG, model, meta, parent)
    assert (source, multihead) == ("teacher", None)
    levels: list = []
    pruned, report = prune_and_finetune(model, teacher, blob_dataset(), CFG, multihead=multihead,
                                        on_level=lambda *level: levels.append(level))
    channels = arch_of(pruned)["channels"]
    assert channels == [6, 12, 12, 24, 24]  # half of every prunable layer, even counts (round_to 2)
    assert count_params(pruned) < 0.5 * params0 == 0.5 * report["before"]["params"]
    assert report["after"]["removed"] == pytest.approx(0.5) and report["finetune_teacher"] == "teacher"
    assert [name for name, _, _ in levels] == ["pruned-50", "pruned-70"]
    ladder = arch_of(levels[1][1])["channels"]
    assert all(b <= a for a, b in zip(channels, ladder)) and sum(ladder) < sum(channels)
    with torch.no_grad():
        out = pruned(torch.randn(5, 1, 12, 12))
    assert out.shape == (5, 4) and torch.isfinite(out).all()
    assert 0 <= report["after"]["test"]["accuracy"] <= 1


@pytest.mark.parametrize("name, elastic, match", [
    ("elastic-w100", "elastic", r"elastic/elastic-w100.pt not found: the elastic stage made elastic-w050, "
                                r"elastic-w150; set prune.source_model to one of those"),
    ("elastic-w100", "empty", r"empty/elastic-w100.pt not found: the elastic stage made no slices; set "
                              r"elastic.enabled: true"),
    ("elastic-w150", None, r"prune.source_model: elastic-w150 prunes a slice .* no --elastic directory; add "
                           r"`--elastic models/elastic`"),
])
def test_a_missing_slice_names_what_the_elastic_stage_made(tmp_path: Path, name: str, elastic: str | None,
                                                           match: str) -> None:
    write_checkpoints(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeCompressError, match=match):
        pruning_subject(name, str(tmp_path / "student.pt"), str(tmp_path / "teacher.pt"),
                        tmp_path / elastic if elastic else None)


@pytest.mark.parametrize("name", ["elastic-w150", "elastic-w050-100-150-200", "elastic-w050-100-150-200-d1-2-1",
                                  "student", "teacher"])
def test_source_model_takes_a_slice_name(name: str) -> None:
    assert PruneConfig(source_model=name).source_model == name


@pytest.mark.parametrize("name", ["elastic-150", "elastic-", "elastic-w15", "Elastic-w150", "elastic-w150.pt",
                                  "pruned-30", 3])
def test_source_model_refuses_other_names(name: object) -> None:
    with pytest.raises(EdgeCompressError, match=r"invalid value source_model=.*: allowed \['student', 'teacher'\] "
                                                r"or a slice of the elastic student, elastic-<name>, e.g. elastic-w150"):
        PruneConfig(source_model=name)  # type: ignore[arg-type]


def repo_params(source_model: str, **elastic: object) -> dict:
    params = load_params(REPO / "params.yaml")
    return {**params, "prune": {**params["prune"], "source_model": source_model},
            "elastic": {**params["elastic"], **elastic}}


@pytest.mark.parametrize("source_model, elastic, match", [
    ("elastic-w150", {"enabled": False}, r"prune.source_model: elastic-w150 prunes a slice of the elastic student, "
                                         r"but elastic.enabled is false .*; set elastic.enabled: true"),
    ("elastic-w300", {"enabled": True, "widths": [0.5, 0.75, 1.0, 1.5, 2.0]}, r"prune.source_model: elastic-w300 is not a slice the elastic stage makes: "
                                        r"elastic.slices: auto makes elastic-w050, elastic-w075, elastic-w100, "
                                        r"elastic-w150, elastic-w200; name one of those"),
    ("elastic-w150", {"enabled": True, "widths": [0.5, 0.75, 1.0, 1.5, 2.0], "slices": [[0.5, 1.0, 1.5, 2.0]]},
     r"elastic.slices: \[\[0.5, 1.0, 1.5, 2.0\]\] makes elastic-w050-100-150-200; name one of those"),
    ("elastic-w100-d1-1-1", {"enabled": True, "widths": [0.5, 0.75, 1.0, 1.5, 2.0]}, r"elastic.slices: auto makes elastic-w050, .*elastic-w200;"),
])
def test_validate_refuses_a_slice_the_elastic_stage_does_not_make(source_model: str, elastic: dict,
                                                                  match: str) -> None:
    with pytest.raises(EdgeCompressError, match=r"params.yaml: .*" + match):
        validate_params(repo_params(source_model, **elastic), targets_dir=REPO / "targets")


@pytest.mark.parametrize("source_model, elastic", [
    ("elastic-w150", {"enabled": True}),
    ("elastic-w050-100-150-200", {"enabled": True, "widths": [0.5, 0.75, 1.0, 1.5, 2.0], "slices": [[0.5, 1.0, 1.5, 2.0]]}),
    ("elastic-w100-d1-1-1", {"enabled": True, "elastic_depth": True, "slices": [{"width": 1.0, "depth": [1, 1, 1]}]}),
])
def test_validate_accepts_a_slice_the_elastic_stage_makes(source_model: str, elastic: dict) -> None:
    cfg = validate_params(repo_params(source_model, **elastic), targets_dir=REPO / "targets")
    assert source_model in slice_names(cfg["distill"], cfg["elastic"])
    assert cfg["prune"].source_model == source_model


@pytest.mark.slow  # a subprocess stage run, like test_prune.py's: CI runs it, the fast lane does not
def test_prune_stage_prunes_the_slice_and_records_it(tmp_path: Path) -> None:
    elastic = write_checkpoints(tmp_path)
    ds = blob_dataset()
    x = np.concatenate([ds.train.x, ds.val.x])
    y = np.concatenate([ds.train.y, ds.val.y])
    np.savez(tmp_path / "blobs.npz", x_train=x, y_train=y, x_test=ds.test.x, y_test=ds.test.y)
    prune = {"source_model": "elastic-w150", "ratio": 0.5, "ladder": [], "steps": 1, "round_to": 2,
             "latency_runs": 0, "source": "teacher", "finetune": {"epochs": 1, "batch_size": 32, "lr": 0.05,
                                                                    "crop_pad": 0, "flip": False}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"data": {"format": "npz", "path": str(tmp_path / "blobs.npz"), "val_fraction": 0.2}, "prune": prune}))
    proc = subprocess.run([sys.executable, str(REPO / "stages/prune.py"), "--params", str(tmp_path / "params.yaml"),
                           "--student", str(tmp_path / "student.pt"), "--teacher", str(tmp_path / "teacher.pt"),
                           "--out", str(tmp_path / "pruned.pt"), "--metrics", str(tmp_path / "m.json"),
                           "--elastic", str(elastic)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pruned, meta = load_checkpoint(tmp_path / "pruned.pt")
    assert meta["source_model"] == "elastic-w150" and meta["parent"] == str(elastic / "elastic-w150.pt")
    assert meta["arch"]["channels"] == [6, 12, 12, 24, 24]  # the 1.5x slice halved, not the student (8, 16, ...)
    with torch.no_grad():
        assert pruned(torch.randn(2, 1, 12, 12)).shape == (2, 4)
