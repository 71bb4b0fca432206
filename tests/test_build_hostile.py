"""Hostile and careless input to builds, the measurement cache and packages (issue #26, part D): a swapped
candidate, corrupt cache entries, crafted package headers, infeasible builds, nearest tables and formats."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.export import ExportConfig
from edgecompress.compression.pool import PoolModel, build_pool, in_processes
from edgecompress.data import Dataset, Split
from edgecompress.deploy import pack as E
from edgecompress.deploy import package as P
from edgecompress.deploy.build import MeasurementCache, _nearest, build_target, load_index
from edgecompress.deploy.budgets import BY_NAME, BudgetRow, margin_text
from edgecompress.deploy.check import run_target_check
from edgecompress.deploy.check_report import missed_text
from edgecompress.deploy.choose import MIB, Budgets, BuildSpec, Candidate, NoFeasibleCandidate, choose, misses
from edgecompress.deploy.pack import pack, pack_file
from edgecompress.deploy.package import package_stats, unpack
from edgecompress.deploy.targets import load_target
from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent, ResNetTeacher
from edgecompress.report import _margins
from tests.test_ensemble import blob_dataset

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``edgecompress ARGS`` in a subprocess of this venv's python, as a user types it."""
    src = str(REPO / "src")
    environ = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "edgecompress.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=environ)


def _one_line_error(proc: subprocess.CompletedProcess, *parts: str) -> str:
    """The failure is exit code 1 and one ``edgecompress: error:`` line holding every one of ``parts``."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("edgecompress: error:")]
    assert len(lines) == 1, proc.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# --- a small real pool: two untrained networks, fp32 and int8 ONNX each ---------------------------

@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = blob_dataset()
    val = Split(np.concatenate([base.val.x, base.test.x]), np.concatenate([base.val.y, base.test.y]))
    ds = Dataset(base.train, val, base.test, base.class_names, base.mean, base.std)
    torch.manual_seed(0)
    meta = {"data": ds.meta(), "params_hash": "h"}
    models = [PoolModel("teacher", ResNetTeacher(1, 4, widths=[8, 16], blocks=[1, 1], stem=8).eval(), meta, "t.pt"),
              PoolModel("student", MobileNetStudent(1, 4, [8, 16], [2]).eval(), meta, "s.pt")]
    out = tmp_path_factory.mktemp("pool") / "candidates"
    build_pool(models, ds, ds.normalize(ds.train.x[:32]), CalibrationConfig(val_samples=16, max_drop=None),
               ExportConfig(formats=("fp32.onnx", "int8.onnx")), out, temperature=False)
    return out


def _profile(tmp_path: Path, budgets: str, arch: str = "any", name: str = "t") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nhardware: {{arch: {arch}}}\nbuild: {{models: all, precisions: [int8, fp32], "
                    f"engines: [onnxruntime]}}\nruntime: {{threads: 1}}\n"
                    f"bench: {{warmup: 1, runs: 8, batch: 1, max_seconds: 5}}\nbudgets: {budgets}\n")
    return path


def _swap_weights(path: Path) -> None:
    """Rewrite ``path`` as another valid model of the very same size: its largest weight tensor reversed."""
    data = path.read_bytes()
    biggest = max(E.find_tensors(data, ".onnx"), key=lambda t: t.nbytes)
    raw = biggest.tobytes()
    at = data.find(raw)
    assert at >= 0 and raw[::-1] != raw
    path.write_bytes(data[:at] + raw[::-1] + data[at + len(raw):])


def test_a_swapped_candidate_never_ships_its_stale_scores(pool: Path, tmp_path: Path) -> None:
    """A pool file replaced by another of the same size: the build refuses before it uses the index's scores
    or the cached measurement of the file that was scored (both keyed on the index's sha256)."""
    copy = tmp_path / "candidates"
    shutil.copytree(pool, copy)
    target = _profile(tmp_path, "{latency_ms: {p50: 1000}}")
    cache = tmp_path / "cache"
    first = _cli("build", "--target", str(target), "--candidates", str(copy), "--out", str(tmp_path / "a"),
                 "--cache", str(cache), "--out-md", str(tmp_path / "a.md"), "--exhaustive", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert len(list(cache.glob("*.json"))) == 4  # every candidate measured and cached
    swapped = copy / "student" / "int8.onnx"
    size = swapped.stat().st_size
    _swap_weights(swapped)
    assert swapped.stat().st_size == size
    again = _cli("build", "--target", str(target), "--candidates", str(copy), "--out", str(tmp_path / "b"),
                 "--cache", str(cache), "--out-md", str(tmp_path / "b.md"), cwd=tmp_path)
    _one_line_error(again, str(swapped), "sha256", "dvc repro candidates")
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.md").exists()
    with pytest.raises(EdgeCompressError, match=r"student/int8\.onnx: its sha256 differs from the index's"):
        load_index(copy)


# --- the measurement cache ------------------------------------------------------------------------

@pytest.mark.slow  # seconds of subprocesses or timeouts: CI runs it, the fast lane does not
def test_corrupt_cache_entries_are_measured_again_with_a_warning(pool: Path, tmp_path: Path) -> None:
    target = _profile(tmp_path, "{latency_ms: {p50: 1000}}")
    cache = tmp_path / "cache"

    def build(out: str) -> subprocess.CompletedProcess:
        return _cli("build", "--target", str(target), "--candidates", str(pool), "--out", str(tmp_path / out),
                    "--cache", str(cache), "--out-md", str(tmp_path / f"{out}.md"), cwd=tmp_path)

    assert build("a").returncode == 0
    entries = sorted(cache.glob("*.json"))
    assert entries
    for entry, junk in zip(entries, ["[]", '{"latency_ms": [1, 2]}', '{"latency_ms": {"p50": "fast"}}', "{half"] * 4):
        entry.write_text(junk)  # a JSON list raised AttributeError; the others crashed or passed a wrong figure
    again = build("b")
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert again.stderr.count("warning: ignoring the corrupt measurement cache entry") == len(entries)
    record = json.loads((tmp_path / "b" / "build.json").read_text())
    assert record["search"]["cache_hits"] == 0 and record["search"]["device_runs"] == len(entries)
    assert all(isinstance(json.loads(e.read_text()), dict) for e in entries)  # re-measured and rewritten


def test_unit_cache_entry_kinds(tmp_path: Path) -> None:
    cache = MeasurementCache(tmp_path / "c")
    cache.put("k", {"latency_ms": {"p50": 1.0}, "memory": {"peak_rss_mb": 3.0}})
    assert cache.get("k") == {"latency_ms": {"p50": 1.0}, "memory": {"peak_rss_mb": 3.0}}
    assert cache.get("absent") is None
    for junk in ("[1]", '"text"', '{"latency_ms": {"p90": -1}}', '{"latency_ms": {}, "memory": 5}',
                 '{"latency_ms": {"p50": NaN}}'):
        (tmp_path / "c" / "k.json").write_text(junk)
        assert cache.get("k") is None, junk


@pytest.mark.parametrize("how", ["env", "flag", "parent"])
def test_a_cache_path_that_is_a_file_is_one_error(pool: Path, tmp_path: Path, how: str) -> None:
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a directory")
    cache = blocker / "sub" if how == "parent" else blocker
    args = ["build", "--target", str(_profile(tmp_path, "{latency_ms: {p50: 1000}}")), "--candidates", str(pool),
            "--out", str(tmp_path / "out"), "--out-md", str(tmp_path / "out.md")]
    if how == "env":
        proc = _cli(*args, cwd=tmp_path, env={"EDGECOMPRESS_CACHE": str(cache)})
        _one_line_error(proc, "$EDGECOMPRESS_CACHE", str(blocker), "is a file, not a directory")
    else:
        proc = _cli(*args, "--cache", str(cache), cwd=tmp_path)
        _one_line_error(proc, "--cache", str(blocker), "is a file, not a directory")
    assert not (tmp_path / "out").exists()


# --- packages: crafted headers, directories ---------------------------------------------------------

def _recrc(pkg: bytes, suffix: bytes | None = None, size: int | None = None, run_length: int | None = None) -> bytes:
    """``pkg`` with its header's suffix, original size or first run's length replaced, the crc32 made valid
    again: what a hostile packager writes (the crc only guards against accidents)."""
    k = pkg[6]
    end = package_stats(pkg)["header"] - 4  # where the header's crc32 starts
    head = P._HEAD.pack(P.MAGIC, P.VERSION, len(suffix if suffix is not None else pkg[7:7 + k]))
    body = bytearray(pkg[7 + k:end])
    if size is not None:
        body[0:8] = struct.pack("<Q", size)
    if run_length is not None:
        first_run = P._META.size + P._SKEL.size
        body[first_run + 8:first_run + 16] = struct.pack("<Q", run_length)
    header = head + (suffix if suffix is not None else pkg[7:7 + k]) + bytes(body)
    return header + struct.pack("<I", zlib.crc32(header)) + pkg[end + 4:]


@pytest.fixture(scope="module")
def one_value_pkg() -> bytes:
    """A package whose one run is a single-symbol Huffman run (no stream: any length costs 4 bytes)."""
    run = np.full(1000, 7, np.uint8)
    pkg = pack(b"head" + run.tobytes() + b"tail", [run], ".onnx")
    assert [r["kind"] for r in package_stats(pkg)["runs"]] == ["huffman"]
    return pkg


def test_a_header_suffix_never_names_the_output(pool: Path, tmp_path: Path) -> None:
    """Item 8: a header suffix `/../../ec-escape.onnx` made `unpack models.ecpk` write ../ec-escape.onnx."""
    work = tmp_path / "repo" / "work"
    (work / "models").mkdir(parents=True)  # as in a repository: models/../../ resolves to the folder above
    good = pack_file(pool / "student" / "fp32.onnx")
    (work / "models.ecpk").write_bytes(_recrc(good, suffix=b"/../../ec-escape.onnx"))
    before = sorted(p for p in tmp_path.rglob("*"))
    proc = _cli("unpack", "models.ecpk", cwd=work)
    _one_line_error(proc, "models.ecpk", "'/../../ec-escape.onnx'", "not one of .onnx, .tflite")
    assert not (tmp_path / "repo" / "ec-escape.onnx").exists() and not (tmp_path / "ec-escape.onnx").exists()
    assert sorted(p for p in tmp_path.rglob("*")) == before
    # A sound package restores beside itself, under its own name (run from elsewhere: not the cwd).
    (work / "models.ecpk").write_bytes(good)
    ok = _cli("unpack", str(work / "models.ecpk"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (work / "models.onnx").read_bytes() == (pool / "student" / "fp32.onnx").read_bytes()
    assert sorted(p.name for p in work.iterdir()) == ["models", "models.ecpk", "models.onnx"]


@pytest.mark.parametrize("suffix", [b".onnx\0", b"../x.onnx", b".exe"])
def test_a_foreign_suffix_is_refused(one_value_pkg: bytes, suffix: bytes) -> None:
    with pytest.raises(P.PackageError, match=r"package corrupt: its header names the suffix .* not one of "):
        unpack(_recrc(one_value_pkg, suffix=suffix))


def test_a_suffix_is_packed_only_from_the_allow_list() -> None:
    with pytest.raises(P.PackageError, match=r"suffix '/\.\./x\.onnx' must be one of \.onnx, \.tflite"):
        pack(b"x" * 10, [], "/../x.onnx")


def test_unpack_crashes_are_one_line(one_value_pkg: bytes, tmp_path: Path) -> None:
    """A 100 GB tensor claim (it allocated 745 GiB), a NUL in the suffix, --out a directory."""
    huge = 100 * 10**9
    cases = {"huge.onnx.ecpk": (_recrc(one_value_pkg, size=huge + 8, run_length=huge), f"claims a {huge + 8}-byte"),
             "nul.onnx.ecpk": (_recrc(one_value_pkg, suffix=b".onnx\0"), "not one of .onnx, .tflite")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        _one_line_error(_cli("unpack", name, cwd=tmp_path), name, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(cases)  # nothing restored, no temp file left
    (tmp_path / "ok.onnx.ecpk").write_bytes(one_value_pkg)
    (tmp_path / "folder").mkdir()
    _one_line_error(_cli("unpack", "ok.onnx.ecpk", "--out", "folder", cwd=tmp_path), "folder is a directory",
                    "--out")
    (tmp_path / "ok.onnx").mkdir()  # the default output is a folder: os.replace fails late
    _one_line_error(_cli("unpack", "ok.onnx.ecpk", cwd=tmp_path), "ok.onnx.ecpk", "cannot write the restored model")
    _one_line_error(_cli("unpack", "folder", cwd=tmp_path), "folder is a directory")
    assert not list((tmp_path / "folder").iterdir())


def test_pack_crashes_are_one_line(pool: Path, tmp_path: Path) -> None:
    (tmp_path / "dir.onnx").mkdir()
    _one_line_error(_cli("pack", "dir.onnx", cwd=tmp_path), "dir.onnx is a directory")
    shutil.copy(pool / "student" / "fp32.onnx", tmp_path / "m.onnx")
    (tmp_path / "out").mkdir()
    _one_line_error(_cli("pack", "m.onnx", "--out", "out", cwd=tmp_path), "out is a directory",
                    str(Path("out") / "m.onnx.ecpk"))
    _one_line_error(_cli("pack", "missing.onnx", cwd=tmp_path), "missing.onnx not found")
    assert not list((tmp_path / "out").iterdir())
    done = _cli("pack", "m.onnx", cwd=tmp_path)
    assert done.returncode == 0
    assert unpack((tmp_path / "m.onnx.ecpk").read_bytes())[0] == (tmp_path / "m.onnx").read_bytes()


# --- infeasible builds (item 12) and the nearest table (item 11) -----------------------------------

def test_an_infeasible_build_leaves_nothing_shippable_and_check_says_so(pool: Path, tmp_path: Path) -> None:
    cache = MeasurementCache(tmp_path / "cache")
    out = tmp_path / "targets" / "t"
    ok = build_target(load_target(_profile(tmp_path, "{latency_ms: {p50: 1000}}")), pool, out, cache)
    shipped = Path(ok.chosen.file).name
    assert (out / shipped).is_file()  # an earlier good build: its artifact must not survive the failed one
    target = _profile(tmp_path, "{size_mb: 0.000001}")
    record = build_target(load_target(target), pool, out, cache)
    assert record.status == "infeasible" and "no candidate meets every budget" in record.error
    assert sorted(p.name for p in out.iterdir()) == ["build.json"]
    assert json.loads((out / "build.json").read_text())["error"] == record.error
    proc = _cli("check", "--target", str(target), "--artifacts", str(out), "--testset", str(pool / "testset.npz"),
                "--out-json", str(tmp_path / "c.json"), "--out-md", str(tmp_path / "c.md"), cwd=tmp_path)
    _one_line_error(proc, str(out / "build.json"), "found no candidate that meets every budget",
                    "nothing was shipped to check")
    # On a proxy machine the nearest ships, labelled; its check fails even if the test set flatters it.
    proxy_target = _profile(tmp_path, "{size_mb: 0.000001}", arch="aarch64", name="p")
    proxy = build_target(load_target(proxy_target), pool, tmp_path / "p", cache)
    assert proxy.status == "proxy-infeasible" and (tmp_path / "p" / proxy.chosen.file).is_file()
    result = run_target_check(proxy_target, tmp_path / "p", pool / "testset.npz", strict=True)
    assert result.status == "proxy-fail" and result.build_infeasible and result.failed
    assert result.warnings[0].startswith("build@p found no candidate that meets every budget")


def _c(name: str, accuracy: float, size_mb: float) -> Candidate:
    return Candidate(name=name, model="student", precision="int8", engine="onnxruntime",
                     size_bytes=int(size_mb * MIB), accuracy=accuracy, ece=0.02, nll=0.3,
                     latency_ms={"p50": 1.0}, peak_memory_mb=10.0)


def test_the_nearest_table_leads_with_the_nearest(tmp_path: Path) -> None:
    """Item 11: on a size-bound target every candidate misses only size; the largest (most accurate) were
    listed first and the one that comes closest, which a proxy build ships, was left out."""
    table = [_c(f"big{i}", 0.95 - i / 100, 4.0 + i) for i in range(6)] + [_c("close", 0.70, 1.1)]
    budgets = Budgets(size_mb=1.0)
    with pytest.raises(NoFeasibleCandidate) as info:
        choose(table, budgets, BuildSpec(), target="phone")
    rows = [r.split()[0] for r in str(info.value).splitlines()[2:]]
    assert rows == ["close", "big0", "big1", "big2", "big3"]
    profile = load_target(_profile(tmp_path, "{size_mb: 1.0}"))
    assert _nearest(table, profile, BuildSpec(), None).chosen.name == rows[0]


# --- formats (item 14) ----------------------------------------------------------------------------

def test_a_miss_never_reads_as_equal() -> None:
    got = misses(_c("c", 0.8999, 0.0489), Budgets(size_mb=0.045, min_accuracy=0.9), None)
    assert got[0].startswith("size 0.049 MiB > 0.045 MiB")
    assert got[1].startswith("accuracy 89.99% < 90.00%")
    close = misses(_c("c", 0.9, 0.04501), Budgets(size_mb=0.045), None)
    assert close[0].startswith("size 0.04501 MiB > 0.045 MiB")
    row = BudgetRow(BY_NAME["size"], 0.045, 0.04504, missed=True)
    assert missed_text([row]) == "size 0.04504 MB > 0.045 MB (+4e-05 MB)"


def test_accuracy_margins_are_points_everywhere() -> None:
    rows = [BudgetRow(BY_NAME["accuracy"], 0.88, 0.88 + 0.0421, missed=False),
            BudgetRow(BY_NAME["accuracy_drop"], 3.0, 3.0 - 3.29, missed=False),
            BudgetRow(BY_NAME["latency_p50"], 1.0, 1.0 - 0.21, missed=False)]
    assert [margin_text(r) for r in rows] == ["+4.21 pt", "-3.29 pt", "-0.21 ms"]
    assert _margins(rows) == "accuracy +4.21 pt, drop -3.29 pt, p50 -0.21 ms"


# --- the pool's worker processes (item 14) ---------------------------------------------------------

def _parameters(job: tuple[int, torch.nn.Module]) -> int:
    return sum(p.numel() for p in job[1].parameters())


def test_a_brought_module_is_exported_in_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model whose class lives in the user's script (loaded from its path) is rebuilt in each worker from
    that script; it used to break the pool (or print a PicklingError and export serially)."""
    from edgecompress.usermodel import build_module

    script = tmp_path / "brought_net.py"
    script.write_text("from torch import nn\n\nclass Net(nn.Module):\n    def __init__(self, k):\n"
                      "        super().__init__()\n        self.fc = nn.Linear(k, 4)\n\n"
                      "    def forward(self, x):\n        return self.fc(x.flatten(1))\n\n\n"
                      "def make(num_classes, in_channels, image_size):\n"
                      "    return Net(in_channels * image_size * image_size)\n")
    model = build_module(f"{script}:make", 4, 1, 8)
    assert in_processes(_parameters, [(1, model), (2, model)], workers=2) == [260, 260]
    err = capsys.readouterr().err
    assert "in 2 processes" in err and "one model at a time" not in err


def test_what_cannot_be_sent_is_said_once_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    assert in_processes(lambda make: make(), [lambda: 1, lambda: 2, lambda: 3], workers=2) == [1, 2, 3]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one model at a time" in err and "Error" not in err
