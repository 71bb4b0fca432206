"""The typed records that cross a wing (pool index, build record): their JSON is what the pipeline has always
written, byte for byte, and a malformed file is one line naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgecompress.errors import EdgeCompressError
from edgecompress.records import (BUILD_RECORD, INDEX, BuildRecord, PoolEntry, PoolIndex, read_build_record,
                                  read_index, write_build_record, write_index)

# The shapes the candidates stage writes: a model entry (with float_layers, an int8 ONNX), a plain one, and a
# cascade entry (segments after path, then thresholds, exit fractions, macs_to_exit), in the writer's key order.
MODEL = {"name": "student/int8.onnx", "model": "student", "precision": "int8", "format": "onnx",
         "engine": "onnxruntime", "path": "student/int8.onnx", "size_bytes": 20613, "package_bytes": 9876,
         "sha256": "a" * 64, "accuracy": 0.8125, "nll": 0.5234567890123456, "ece": 0.04123, "top1_agreement": 0.96875,
         "uncertainty": False, "float_layers": ["/features.0/Conv"]}
PLAIN = {**{k: v for k, v in MODEL.items() if k != "float_layers"}, "name": "ensemble/fp32.onnx", "model": "ensemble",
         "precision": "fp32", "path": "ensemble/fp32.onnx", "uncertainty": True, "accuracy": 1.0}
CASCADE = {"name": "teacher-ee/fp32.onnx", "model": "teacher-ee", "precision": "fp32", "format": "onnx",
           "engine": "onnxruntime", "path": "teacher-ee/fp32.onnx.cascade.json",
           "segments": ["segment0.fp32.onnx", "segment1.fp32.onnx", "segment2.fp32.onnx"], "size_bytes": 3000,
           "package_bytes": 2100, "sha256": "b" * 64, "accuracy": 0.75, "nll": 0.7, "ece": 0.1,
           "top1_agreement": 1.0, "uncertainty": False, "thresholds": [0.9, None], "exit_fractions": [0.5, 0.25, 0.25],
           "macs_to_exit": [1000, 2000, 3000]}
INDEX_JSON = {"scored_on": {"split": "validation", "images": 48, "skipped_first": 16,
                            "why": "the first images drive the accuracy-aware int8 ONNX; these never did"},
              "reference": {"model": "teacher", "accuracy": 0.875, "nll": 0.3, "ece": 0.02},
              "aliases": {"pruned": "student"},
              "pytorch": {"teacher": {"accuracy": 0.875, "nll": 0.3, "ece": 0.02}},
              "temperature": {"teacher": {"temperature": 1.2345, "fitted_on": 16,
                                          "before": {"nll": 0.4, "ece": 0.05, "accuracy": 0.875},
                                          "after": {"nll": 0.3, "ece": 0.02, "accuracy": 0.875}}},
              "candidates": [MODEL, PLAIN, CASCADE]}


def build_record_json(target: str = "t", name: str = "student/int8.onnx", file: str = "int8.onnx",
                      status: str = "built", **extra: Any) -> dict[str, Any]:
    """A complete build record as the build writes it (tests that plant a build.json use this)."""
    row = {"name": name, "model": name.split("/")[0], "precision": "int8", "engine": "onnxruntime",
           "size_bytes": 20613, "download_bytes": 9876, "accuracy": 0.8125, "nll": 0.52, "ece": 0.04,
           "latency_ms": {"p50": 0.1234, "p90": 0.2, "mean": 0.15}, "peak_memory_mb": 101.5, "measured": "device",
           "fate": "chosen", "why": [], "warnings": []}
    other = {**row, "name": "teacher/fp32.onnx", "model": "teacher", "precision": "fp32", "download_bytes": None,
             "latency_ms": None, "peak_memory_mb": None, "measured": "not measured", "fate": "rejected",
             "why": ["size 1.2 MB > 0.5 MB (by 140%)"]}
    return {"target": target, "description": None, "status": status, "hardware_match": True,
            "hardware_reasons": [], "device": "local", "fingerprint": {"hostname": "h", "arch": "x86_64", "cores": 2},
            "runtime": {"name": "onnxruntime", "version": "1.17.0", "threads": 1},
            "build": {"models": "all", "precisions": ["int8", "fp32"], "engines": ["onnxruntime"], "requires": [],
                      "pinned": False},
            "chosen": {"name": name, "model": row["model"], "file": file, "precision": "int8", "engine": "onnxruntime",
                       "size_bytes": 20613, "download_bytes": 9876, "val_accuracy": 0.8125, "val_ece": 0.04,
                       "val_nll": 0.52, "latency_ms": {"p50": 0.1234, "p90": 0.2, "mean": 0.15}},
            "reference": {"model": "teacher", "val_accuracy": 0.875, "used": False},
            "scored_on": INDEX_JSON["scored_on"],
            "search": {"candidates": 2, "device_runs": 1, "cache_hits": 0, "skipped": 0, "seconds": 1.23},
            "infeasible": None, "candidates": [row, other], **extra}


def _dumps(obj: Any) -> str:
    """What ``fileio.write_json`` writes."""
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


@pytest.mark.parametrize("entry", [MODEL, PLAIN, CASCADE], ids=["int8", "plain", "cascade"])
def test_a_pool_entry_round_trips_key_for_key(entry: dict[str, Any]) -> None:
    typed = PoolEntry.from_json(json.loads(json.dumps(entry)))
    assert _dumps(typed.to_json()) == _dumps(entry)
    assert list(typed.to_json()) == list(entry)  # the order too
    assert typed.is_cascade == ("segments" in entry) and typed.file == Path(entry["path"]).name


def test_the_index_round_trips_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / INDEX).write_text(_dumps(INDEX_JSON))
    index = read_index(tmp_path)
    assert [c.name for c in index.candidates] == ["student/int8.onnx", "ensemble/fp32.onnx", "teacher-ee/fp32.onnx"]
    assert index.reference_model == "teacher" and index.reference_accuracy == 0.875
    assert index.models == ["student", "ensemble", "teacher-ee"] and index.entry("teacher-ee/fp32.onnx").is_cascade
    out = tmp_path / "out"
    write_index(out, index)
    assert (out / INDEX).read_bytes() == (tmp_path / INDEX).read_bytes()


@pytest.mark.parametrize("extra", [{}, {"error": "no candidate meets every budget: ..."}], ids=["built", "failed"])
def test_the_build_record_round_trips_byte_for_byte(tmp_path: Path, extra: dict[str, Any]) -> None:
    raw = build_record_json(status="infeasible" if extra else "built", **extra)
    (tmp_path / BUILD_RECORD).write_text(_dumps(raw))
    record = read_build_record(tmp_path / BUILD_RECORD)
    assert record.chosen.file == "int8.onnx" and record.search.device_runs == 1
    assert record.failed == bool(extra) and (record.error is None) == (not extra)
    assert record.candidates[1].latency_ms is None and record.candidates[1].why == ("size 1.2 MB > 0.5 MB (by 140%)",)
    out = tmp_path / "out"
    write_build_record(out, record)
    assert (out / BUILD_RECORD).read_bytes() == (tmp_path / BUILD_RECORD).read_bytes()
    assert read_build_record(out) == record  # the directory names its record too


def test_a_pinned_build_record_keeps_its_model_list() -> None:
    raw = build_record_json()
    raw["build"] = {**raw["build"], "models": ["student", "teacher"], "pinned": True}
    assert _dumps(BuildRecord.from_json(raw).to_json()) == _dumps(raw)


@pytest.mark.parametrize("text, match", [
    ("[]", r"index\.json: not a candidate index \(no 'candidates' list\); re-run the candidates stage"),
    ('{"candidates": 3}', r"not a candidate index \(no 'candidates' list\)"),
    (json.dumps({k: v for k, v in INDEX_JSON.items() if k != "reference"}), r"not a candidate index \(no reference\)"),
    (json.dumps({**INDEX_JSON, "candidates": [{k: v for k, v in MODEL.items() if k != "sha256"}]}),
     r"not a candidate index \(no candidate 0\.sha256\); re-run the candidates stage \(dvc repro candidates\)"),
    (json.dumps({**INDEX_JSON, "candidates": [7]}), r"not a candidate index \(candidate 0 is a JSON int, not an object\)"),
])
def test_a_malformed_index_is_one_line(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / INDEX).write_text(text)
    with pytest.raises(EdgeCompressError, match=match):
        read_index(tmp_path)


@pytest.mark.parametrize("drop, match", [
    ("chosen.file", r"build\.json: not a build record \(no chosen\.file\); re-run dvc repro build@t"),
    ("search", r"build\.json: not a build record \(no search\)"),
    ("candidates", r"build\.json: not a build record \(no candidates\)"),
])
def test_a_malformed_build_record_is_one_line(tmp_path: Path, drop: str, match: str) -> None:
    raw = build_record_json()
    if "." in drop:
        outer, inner = drop.split(".")
        raw[outer] = {k: v for k, v in raw[outer].items() if k != inner}
    else:
        del raw[drop]
    (tmp_path / BUILD_RECORD).write_text(json.dumps(raw))
    with pytest.raises(EdgeCompressError, match=match):
        read_build_record(tmp_path / BUILD_RECORD, "re-run dvc repro build@t")
