"""The Huffman-coded shipping package: bit-exact round trips, size, refusals, files and CLI."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.deploy import pack as E
from edgecompress.deploy import package as P
from edgecompress.deploy.pack import pack, pack_file, sizes
from edgecompress.deploy.package import PackageError, package_stats, unpack, unpack_file

RNG = np.random.default_rng(0)
CODEBOOK = RNG.normal(size=16).astype(np.float32)


def clustered(n: int, p: np.ndarray | None = None) -> np.ndarray:
    """Weights shared among 16 values, as after Deep Compression's k-means stage."""
    return CODEBOOK[RNG.choice(16, n, p=p)]


def pruned(n: int, zeros: float) -> np.ndarray:
    w = clustered(n)
    w[RNG.random(n) < zeros] = 0.0
    return w


def nan_payloads() -> np.ndarray:
    """-0.0, +0.0 and NaNs of several bit patterns: a float comparison would merge or lose them."""
    bits = np.array([0x80000000, 0, 0x7FC00000, 0x7FC00001, 0xFFC00000, 0x7F800001, 0x3F800000], np.uint32)
    return np.tile(bits, 40).view(np.float32)


def embed(tensors: list[np.ndarray]) -> bytes:
    """A fake model file: the tensors between odd-sized graph-like filler, as ONNX/TFLite lay them out."""
    parts = [b"\x08\x07graph:" + bytes(range(23))]
    for i, t in enumerate(tensors):
        parts += [t.tobytes(), f"node_{i}/weights".encode() * (i + 1)]
    return b"".join(parts)


def run_kinds(pkg: bytes) -> list[str]:
    return [r["kind"] for r in package_stats(pkg)["runs"]]


CASES = {
    "clustered": [clustered(4096)],
    "int8": [RNG.integers(-128, 128, 3000).astype(np.int8), RNG.integers(-3, 4, 500).astype(np.int8)],
    "pruned_80": [pruned(5000, 0.8)],
    "pruned_97": [pruned(5000, 0.97)],
    "all_distinct": [RNG.normal(size=2000).astype(np.float32)],
    "nan_and_negative_zero": [nan_payloads()],
    "one_value": [np.full(300, 0.25, np.float32), np.zeros(300, np.float32)],
    "float16_and_int64": [clustered(700).astype(np.float16), RNG.integers(0, 5, 200).astype(np.int64)],
    "mixed": [clustered(4096), pruned(3000, 0.8), RNG.normal(size=999).astype(np.float32), nan_payloads()],
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_is_bit_exact(name: str) -> None:
    data = embed(CASES[name])
    pkg = pack(data, CASES[name], ".onnx")
    assert unpack(pkg) == (data, ".onnx")
    assert len(package_stats(pkg)["runs"]) == len(CASES[name])  # every tensor was located and coded alone


def test_each_form_goes_where_it_pays() -> None:
    """Few values -> Huffman; mostly zeros -> sparse; all distinct -> zlib'd bytes (shuffled floats)."""
    assert run_kinds(pack(embed(CASES["clustered"]), CASES["clustered"], ".onnx")) == ["huffman"]
    assert run_kinds(pack(embed(CASES["pruned_97"]), CASES["pruned_97"], ".onnx")) == ["huffman-sparse"]
    assert run_kinds(pack(embed(CASES["all_distinct"]), CASES["all_distinct"], ".onnx"))[0].startswith("zlib")


def test_tensors_not_in_the_file_small_or_overlapping_stay_in_the_skeleton() -> None:
    w = clustered(1000)
    data = embed([w])
    shifted_half = w[500:]  # inside w's run, already taken
    pkg = pack(data, [w, clustered(800), clustered(20), shifted_half], ".onnx")
    assert unpack(pkg)[0] == data
    assert [(r["offset"], r["length"]) for r in package_stats(pkg)["runs"]] == [(data.find(w.tobytes()), 4000)]


def test_clustered_weights_approach_their_entropy() -> None:
    """Huffman's redundancy is below p_max + 0.086 bits (Gallager 1978): skewed clusters beat 4 bits."""
    n = 100_000
    p = np.exp(-np.arange(16) / 2.0)
    p /= p.sum()
    w = clustered(n, p)
    data = embed([w])
    stats = package_stats(pkg := pack(data, [w], ".onnx"))
    freq = np.unique(w, return_counts=True)[1] / n
    entropy = float(-(freq * np.log2(freq)).sum())
    codebook_bytes = 2 + 16 * (4 + 1)  # count, 16 float32 values, 16 code lengths
    packed = stats["runs"][0]["packed"]
    assert packed * 8 <= n * (entropy + freq.max() + 0.086) + 8 * (codebook_bytes + 1)
    assert packed < 0.7 * n * 4 / 8  # entropy ~2.5 bits: well under the 4 bits of a fixed-width index
    assert len(pkg) < 0.75 * len(gzip.compress(data, 9))  # LZ77 on float bytes: ~3.9 bits a weight


def test_uniform_16_clusters_cost_4_bits_plus_codebook() -> None:
    w = clustered(50_000, np.full(16, 1 / 16))
    packed = package_stats(pack(embed([w]), [w], ".onnx"))["runs"][0]["packed"]
    assert packed <= 50_000 * 4 / 8 + 2 + 16 * 5 + 1


def test_code_lengths_are_limited_and_still_decode() -> None:
    """Fibonacci counts make a 39-deep Huffman tree; the fallback flattens it to MAX_CODE_LEN."""
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = E._code_lengths(np.array(fib))
    assert lengths.max() <= P.MAX_CODE_LEN
    assert sum(2.0 ** -lengths.astype(float)) <= 1.0
    idx = np.concatenate([np.arange(40), RNG.integers(0, 40, 1000)])
    stream = E._huffman_encode(idx, lengths)
    assert np.array_equal(P._huffman_decode(stream, lengths, len(idx), "test"), idx)


def test_a_million_weights_pack_and_unpack_in_seconds() -> None:
    w = clustered(1_000_000)
    data = embed([w])
    start = time.perf_counter()
    pkg = pack(data, [w], ".onnx")
    packed = time.perf_counter()
    assert unpack(pkg)[0] == data
    # Typically ~0.5 s each; generous bounds because the test machines' CPUs are shared.
    assert packed - start < 10 and time.perf_counter() - packed < 10


def test_the_decoder_needs_only_numpy() -> None:
    """package.py is copied alone to devices: its imports are the standard library and numpy, nothing lazy.
    pack.py (the encoder) adds package.py and, only inside find_tensors and sizes, onnx / LiteRT / zstandard."""
    import ast
    import sys

    def imported(nodes: list[ast.AST]) -> set[str]:
        return {(n.module if isinstance(n, ast.ImportFrom) else a.name) for n in nodes
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}

    def top(names: set[str]) -> set[str]:
        return {name.split(".")[0] for name in names}

    decoder = ast.parse(Path(P.__file__).read_text())
    assert top(imported(decoder.body)) - {"__future__", "numpy"} <= set(sys.stdlib_module_names)
    assert imported(list(ast.walk(decoder))) == imported(decoder.body)  # no lazy imports: the decoder needs none
    encoder = ast.parse(Path(E.__file__).read_text())
    own = imported(encoder.body) - {"edgecompress.deploy.package"}
    assert top(own) - {"__future__", "numpy"} <= set(sys.stdlib_module_names)
    lazy = top(imported(list(ast.walk(encoder))) - imported(encoder.body))
    assert lazy == {"onnx", "ai_edge_litert", "zstandard"}  # in find_tensors and sizes, never the decoder


# --- refusals ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pkg() -> bytes:
    return pack(embed(CASES["mixed"]), CASES["mixed"], ".onnx")


def test_wrong_magic(pkg: bytes) -> None:
    with pytest.raises(PackageError, match=r"not an edgecompress package: it starts with b'PK\\x03\\x04'"):
        unpack(b"PK\x03\x04" + pkg[4:])


@pytest.mark.parametrize("cut", [0, 3, 10, 60, 100, "middle", "last"])
def test_truncated(pkg: bytes, cut: int | str) -> None:
    end = {"middle": len(pkg) // 2, "last": len(pkg) - 1}.get(cut, cut)  # type: ignore[call-overload]
    expected = r"\d+" if isinstance(cut, int) else str(len(pkg))
    with pytest.raises(PackageError, match=rf"package truncated: {expected} bytes expected .*only {end} present"):
        unpack(pkg[:end])


def test_wrong_version(pkg: bytes) -> None:
    with pytest.raises(PackageError, match="unsupported package version 7: this decoder reads version 1"):
        unpack(pkg[:4] + struct.pack("<H", 7) + pkg[6:])


@pytest.mark.parametrize("where, message", [
    (-1, r"run 3 .* fails its crc32"),
    ("run0", r"run 0 \(bytes \d+\.\.\d+, huffman\) fails its crc32"),
    (20, "the header fails its crc32"),
])
def test_flipped_byte(pkg: bytes, where: int | str, message: str) -> None:
    at = package_stats(pkg)["header"] + package_stats(pkg)["skeleton"]["packed"] + 5 if where == "run0" else where
    bad = bytearray(pkg)
    bad[at] ^= 0x40  # type: ignore[index]
    with pytest.raises(PackageError, match=f"package corrupt: {message}"):
        unpack(bytes(bad))


def test_trailing_bytes(pkg: bytes) -> None:
    with pytest.raises(PackageError, match="package corrupt: 2 bytes after the last payload"):
        unpack(pkg + b"\0\0")


def test_a_wrong_sha256_is_caught_after_restoring(pkg: bytes) -> None:
    """The end-to-end check: even with every crc32 intact, the restored bytes must match the header."""
    header = package_stats(pkg)["header"]
    sha_at = 7 + len(".onnx") + 8
    bad = bytearray(pkg)
    bad[sha_at] ^= 1
    bad[header - 4:header] = struct.pack("<I", zlib.crc32(bytes(bad[:header - 4])))
    with pytest.raises(PackageError, match=r"package corrupt: sha256 of the restored file [0-9a-f]{64} differs "
                                           r"from the header's [0-9a-f]{64}"):
        unpack(bytes(bad))


@pytest.mark.parametrize("stream, lengths, n, message", [
    (b"\x00", [1, 1], 9, "Huffman stream ends after 8 of 9 symbols"),
    (b"\x00\x00", [1, 1], 8, "Huffman stream has 1 trailing bytes"),
    (b"\xff", [2, 2, 2], 4, "invalid Huffman code at bit 0"),  # codes 00, 01, 10: 11 is unassigned
    (b"\x00", [1, 1, 1], 8, r"impossible \(over-full\) Huffman code table"),
    (b"\x00", [0, 3], 8, r"code lengths outside 1\.\.24"),
    (b"\x00", [0], 8, "one symbol but a code stream"),
])
def test_huffman_stream_errors(stream: bytes, lengths: list[int], n: int, message: str) -> None:
    with pytest.raises(PackageError, match=f"package corrupt: run 9('s)? (has )?.*{message}"):
        P._huffman_decode(stream, np.array(lengths, np.uint8), n, "run 9")


# --- files and CLI -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_conv() -> nn.Module:
    """Two convs and a classifier, weights clustered to 16 values per tensor (Deep Compression stage 2)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(16, 4)).eval()
    with torch.no_grad():
        for p in m.parameters():
            centres = torch.linspace(float(p.min()), float(p.max()), 16)
            p.copy_(centres[(p.unsqueeze(-1) - centres).abs().argmin(-1)])
    return m


@pytest.fixture(scope="module")
def tiny_onnx(two_conv: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgecompress.compression.onnx import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(two_conv, (1, 12, 12), path)
    return path


def test_real_onnx_round_trip_and_sizes(tiny_onnx: Path) -> None:
    data = tiny_onnx.read_bytes()
    pkg = pack_file(tiny_onnx)
    assert unpack(pkg) == (data, ".onnx")
    assert run_kinds(pkg) == ["huffman"] * 3  # the two conv weights and the linear weight (the rest < 64)
    s = sizes(data)
    assert s["file"] == len(data) and s["package"] == len(pkg)
    assert s["package"] < s["gzip"] and (s["zstd"] is None or s["package"] < s["zstd"])


def test_real_tflite_round_trip(two_conv: nn.Module, tmp_path: Path) -> None:
    from edgecompress.compression.tflite import export_tflite

    path = tmp_path / "tiny.tflite"
    export_tflite(two_conv, (1, 12, 12), path)  # ~5 s
    pkg = pack_file(path)
    assert unpack(pkg) == (path.read_bytes(), ".tflite")
    assert run_kinds(pkg) == ["huffman"] * 3
    assert sizes(path.read_bytes())["package"] == len(pkg)  # the suffix is recognised from the bytes


def test_pack_file_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(PackageError, match=r"m\.pt: only \.onnx and \.tflite models are packed"):
        pack_file(tmp_path / "m.pt")


def test_unpack_file_respects_umask_and_leaves_nothing_on_failure(tiny_onnx: Path, tmp_path: Path) -> None:
    pkg_path = tmp_path / "tiny.onnx.ecpk"
    pkg_path.write_bytes(pack_file(tiny_onnx))
    old = os.umask(0o027)
    try:
        out = unpack_file(pkg_path)
    finally:
        os.umask(old)
    assert out == tmp_path / "tiny.onnx" and out.read_bytes() == tiny_onnx.read_bytes()
    assert out.stat().st_mode & 0o777 == 0o640
    (tmp_path / "dir.onnx").mkdir()  # os.replace onto a directory fails after the temp file is written
    with pytest.raises(OSError):
        unpack_file(pkg_path, tmp_path / "dir.onnx")
    (tmp_path / "bad.ecpk").write_bytes(pkg_path.read_bytes()[:-1])
    with pytest.raises(PackageError):
        unpack_file(tmp_path / "bad.ecpk", tmp_path / "bad.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ecpk", "dir.onnx", "tiny.onnx", "tiny.onnx.ecpk"]
    assert unpack_file(tmp_path / "tiny.onnx.ecpk", tmp_path / "other").name == "other"


def test_cli_pack_unpack_and_a_corrupt_package(tiny_onnx: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from edgecompress.cli import main

    pkg, out = tmp_path / "m.ecpk", tmp_path / "restored.onnx"
    assert main(["pack", str(tiny_onnx), "--out", str(pkg)]) is None
    assert f"-> {pkg}" in capsys.readouterr().out
    assert main(["unpack", str(pkg), "--out", str(out)]) is None
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(tiny_onnx.read_bytes()).digest()
    assert "sha256 verified" in capsys.readouterr().out
    bad = bytearray(pkg.read_bytes())
    bad[-3] ^= 0xFF
    pkg.write_bytes(bytes(bad))
    with pytest.raises(SystemExit) as e:
        main(["unpack", str(pkg), "--out", str(tmp_path / "never.onnx")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1
    assert err.startswith(f"edgecompress: error: {pkg}: package corrupt: run 2 ")
    assert not (tmp_path / "never.onnx").exists()
