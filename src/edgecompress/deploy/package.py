"""Huffman-coded shipping package for .onnx/.tflite files (Deep Compression, Han et al. 2016, stage 3).

This file holds the format and its decoder; the encoder is deploy/pack.py.

Weight tensors are located as exact byte runs inside the model file. A run with at most 256 distinct
values (clustered or int8 weights, pruned zeros) becomes a codebook of those values' raw bytes plus
canonical-Huffman-coded indices, optionally with a zlib'd zero mask so only non-zeros are coded; other
runs are zlib'd (bytes as stored, or byte-shuffled). Everything between the runs (the "skeleton": graph,
names, small tensors) is stored once, lzma'd or zlib'd. ``unpack`` restores the file bit for bit and
checks its sha256. This file is all a device needs to decode a package: like runner.py it stands alone,
importing only the standard library and numpy. The encoder (``pack``, ``pack_file``, ``sizes``, Huffman
code construction, finding tensors with onnx / LiteRT) builds on it and never runs on a device.

Layout, little-endian:
    magic b"ECPK" | version u16 | suffix length u8 | suffix (ASCII, e.g. ".onnx")
    original length u64 | sha256 of the original (32 bytes) | run count R u32
    skeleton: codec u8 (1 zlib, 2 lzma) | payload length u64 | payload crc32 u32
    R runs:   offset u64 | length u64 | element width u8 (1/2/4/8) | kind u8 | payload length u64 | crc32 u32
    crc32 u32 of every header byte before it
    payloads: the skeleton's, then each run's, in table order (nothing after the last one)
Run kinds: 1 zlib of the bytes | 2 zlib of the bytes shuffled by significance (float exponents together)
| 3 Huffman: symbols u16, codebook (symbols x width raw bytes), code length per symbol (u8), bit stream
(canonical codes, MSB first, zero-padded to a byte; a single symbol has length 0 and no stream)
| 4 sparse: mask length u32, zlib of np.packbits(element != 0), then kind 3 over the non-zero elements.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"ECPK"
PACKAGE_SUFFIX = ".ecpk"  # MODEL.onnx -> MODEL.onnx.ecpk
VERSION = 1
MAX_CODE_LEN = 24  # a code plus a 7-bit offset still fits the decoder's 32-bit window
SUFFIXES = (".onnx", ".tflite")  # the only suffixes a header may carry; never a path (it names no file)
MAX_FILE = 2**31  # protobuf (.onnx) and flatbuffers (.tflite) cannot address more: a larger claim is hostile
_HEAD = struct.Struct("<4sHB")
_META = struct.Struct("<Q32sI")
_SKEL = struct.Struct("<BQI")
_RUN = struct.Struct("<QQBBQI")
_CRC = struct.Struct("<I")
CODECS = {1: "zlib", 2: "lzma"}
KINDS = {1: "zlib", 2: "zlib-shuffled", 3: "huffman", 4: "huffman-sparse"}
_CHUNK = 1 << 20  # bit positions decoded per step: bounds the decoder's memory on big tensors


class PackageError(ValueError):
    """The bytes are not a valid, intact edgecompress package (or a file cannot be packed)."""


def _canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(code per symbol, symbols in code order, first code per length, first rank per length)."""
    order = np.lexsort((np.arange(len(lengths)), lengths))
    count = np.bincount(lengths, minlength=MAX_CODE_LEN + 1)
    count[0] = 0
    first = np.zeros(MAX_CODE_LEN + 2, np.int64)
    rank = np.zeros(MAX_CODE_LEN + 2, np.int64)
    for n in range(1, MAX_CODE_LEN + 1):
        first[n + 1] = (first[n] + count[n]) << 1
        rank[n + 1] = rank[n] + count[n]
    codes = np.zeros(len(lengths), np.int64)
    sorted_len = lengths[order].astype(np.int64)
    codes[order] = first[sorted_len] + np.arange(len(order)) - rank[sorted_len]
    return codes, order, first, rank

def _huffman_decode(stream: bytes, lengths: np.ndarray, n: int, what: str) -> np.ndarray:
    """Codebook indices of ``n`` symbols; windows of every bit position are decoded in numpy, then the
    chain of code starts is followed in Python (one list lookup per symbol)."""
    if len(lengths) == 1:
        if lengths[0] != 0 or stream:
            raise PackageError(f"package corrupt: {what} has one symbol but a code stream")
        return np.zeros(n, np.uint8)  # index 0 of the book: 1 byte per element, not an int64 index
    if lengths.min() < 1 or lengths.max() > MAX_CODE_LEN:
        raise PackageError(f"package corrupt: {what} has code lengths outside 1..{MAX_CODE_LEN}")
    max_len = int(lengths.max())
    if int(np.sum(1 << (max_len - lengths.astype(np.int64)))) > 1 << max_len:
        raise PackageError(f"package corrupt: {what} has an impossible (over-full) Huffman code table")
    _, order, first, rank = _canonical(lengths)
    shift = max_len - np.arange(1, max_len + 1)
    limits = (first[2:max_len + 2] >> 1) << shift  # left-aligned end of the codes of each length
    buf = np.frombuffer(stream + b"\0\0\0\0", np.uint8).astype(np.uint64)
    words = (buf[:-3] << 24) | (buf[1:-2] << 16) | (buf[2:-1] << 8) | buf[3:]

    def windows(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = ((words[pos >> 3] << (pos & 7).astype(np.uint64)) & 0xFFFFFFFF) >> np.uint64(32 - max_len)
        return w.astype(np.int64), np.searchsorted(limits, w.astype(np.int64), side="right") + 1

    total = len(stream) * 8
    starts: list[int] = []
    pos = 0
    for a in range(0, total, _CHUNK):
        if len(starts) == n:
            break
        b = min(a + _CHUNK, total)
        lens = windows(np.arange(a, b, dtype=np.int64))[1].tolist()
        append, k = starts.append, len(starts)
        while k < n and pos < b:
            step = lens[pos - a]
            if step > max_len:
                raise PackageError(f"package corrupt: {what} has an invalid Huffman code at bit {pos}")
            append(pos)
            pos += step
            k += 1
    if len(starts) < n or pos > total:
        raise PackageError(f"package corrupt: {what}'s Huffman stream ends after {len(starts)} of {n} symbols")
    if (pos + 7) // 8 != len(stream):
        raise PackageError(f"package corrupt: {what}'s Huffman stream has {len(stream) - (pos + 7) // 8} "
                           f"trailing bytes")
    w, size = windows(np.asarray(starts, np.int64))
    return order[rank[size] + (w >> (max_len - size)) - first[size]]

def _inflate(data: bytes, size: int, codec: str, what: str) -> bytes:
    """Decompress exactly ``size`` bytes (a bomb or short stream is corruption, not a MemoryError)."""
    d = zlib.decompressobj() if codec == "zlib" else lzma.LZMADecompressor()
    try:
        out = d.decompress(data, size + 1)
    except (zlib.error, lzma.LZMAError) as e:
        raise PackageError(f"package corrupt: {what} does not {codec}-decompress ({e})") from e
    if len(out) != size or not d.eof or d.unused_data:
        raise PackageError(f"package corrupt: {what} decompresses to {len(out)} bytes, not {size}")
    return out


def _huffman_values(payload: bytes, width: int, n: int, what: str) -> np.ndarray:
    k = struct.unpack_from("<H", payload)[0] if len(payload) >= 2 else 0
    if not 1 <= k <= 256 or len(payload) < 2 + k * (width + 1):
        raise PackageError(f"package corrupt: {what} has a bad codebook ({k} symbols)")
    book = np.frombuffer(payload, f"<u{width}", k, 2)
    lengths = np.frombuffer(payload, np.uint8, k, 2 + k * width)
    return book[_huffman_decode(payload[2 + k * (width + 1):], lengths, n, what)]


def _decode_run(kind: int, payload: bytes, length: int, width: int, what: str) -> bytes:
    n = length // width
    if kind == 1:
        return _inflate(payload, length, "zlib", what)
    if kind == 2:
        return np.frombuffer(_inflate(payload, length, "zlib", what), np.uint8).reshape(width, n).T.tobytes()
    if kind == 3:
        return _huffman_values(payload, width, n, what).tobytes()
    m = struct.unpack_from("<I", payload)[0] if len(payload) >= 4 else len(payload)
    if len(payload) < 4 + m:
        raise PackageError(f"package corrupt: {what} is too short for its zero mask")
    mask = np.unpackbits(np.frombuffer(_inflate(payload[4:4 + m], (n + 7) // 8, "zlib", what), np.uint8),
                         count=n).astype(bool)
    out = np.zeros(n, f"<u{width}")
    out[mask] = _huffman_values(payload[4 + m:], width, int(mask.sum()), what)
    return out.tobytes()

def _need(package: bytes, end: int, what: str) -> None:
    if len(package) < end:
        raise PackageError(f"package truncated: {end} bytes expected ({what}), only {len(package)} present; "
                           f"copy the package again")


def _parse(package: bytes) -> dict[str, Any]:
    """Header fields and table, checked (magic, version, sizes, crc32) before anything is decoded."""
    if len(package) < 4 and MAGIC.startswith(bytes(package)):
        _need(package, 4, "the magic")
    if package[:4] != MAGIC:
        raise PackageError(f"not an edgecompress package: it starts with {bytes(package[:4])!r}, not {MAGIC!r} "
                           f"(make one with `edgecompress pack MODEL`)")
    _need(package, _HEAD.size, "the header")
    _, version, k = _HEAD.unpack_from(package)
    if version != VERSION:
        raise PackageError(f"unsupported package version {version}: this decoder reads version {VERSION}; "
                           f"unpack it with the edgecompress that packed it")
    pos = _HEAD.size + k
    _need(package, pos + _META.size + _SKEL.size, "the header")
    suffix = bytes(package[_HEAD.size:pos]).decode("ascii", "replace")
    size, sha, count = _META.unpack_from(package, pos)
    codec, skel_len, skel_crc = _SKEL.unpack_from(package, pos + _META.size)
    pos += _META.size + _SKEL.size
    _need(package, pos + count * _RUN.size + _CRC.size, f"the header with its {count} runs")
    runs = [_RUN.unpack_from(package, pos + i * _RUN.size) for i in range(count)]
    pos += count * _RUN.size
    if zlib.crc32(package[:pos]) != _CRC.unpack_from(package, pos)[0]:
        raise PackageError("package corrupt: the header fails its crc32")
    # A valid crc32 proves nothing against a crafted header: the suffix and size are checked before use.
    if suffix not in SUFFIXES:
        raise PackageError(f"package corrupt: its header names the suffix {suffix!r}, not one of {', '.join(SUFFIXES)}")
    if size > MAX_FILE:
        raise PackageError(f"package corrupt: its header claims a {size}-byte model; an .onnx or .tflite file holds "
                           f"at most {MAX_FILE} bytes")
    pos += _CRC.size
    expected = pos + skel_len + sum(r[4] for r in runs)
    _need(package, expected, f"the header and {count + 1} payloads")
    if len(package) > expected:
        raise PackageError(f"package corrupt: {len(package) - expected} bytes after the last payload")
    cursor = 0
    for offset, length, width, kind, _, _ in runs:
        if offset < cursor or width not in (1, 2, 4, 8) or not length or length % width or kind not in KINDS:
            raise PackageError(f"package corrupt: bad run table entry at offset {offset}")
        cursor = offset + length
    if codec not in CODECS or cursor > size:
        raise PackageError("package corrupt: bad skeleton codec or run table")
    return {"suffix": suffix, "size": size, "sha256": sha, "codec": codec, "skel": (skel_len, skel_crc),
            "runs": runs, "data": pos}


def _payload(package: bytes, pos: int, length: int, crc: int, what: str) -> bytes:
    if zlib.crc32(data := package[pos:pos + length]) != crc:
        raise PackageError(f"package corrupt: {what} fails its crc32")
    return data


def unpack(package: bytes) -> tuple[bytes, str]:
    """(the original file's bytes, its suffix), verified against the header's length and sha256."""
    h = _parse(package)
    pos, (skel_len, skel_crc) = h["data"], h["skel"]
    skel_size = h["size"] - sum(r[1] for r in h["runs"])
    skeleton = _inflate(_payload(package, pos, skel_len, skel_crc, "the skeleton"), skel_size,
                        CODECS[h["codec"]], "the skeleton")
    pos += skel_len
    parts, cursor, done = [], 0, 0
    for i, (offset, length, width, kind, plen, crc) in enumerate(h["runs"]):
        what = f"run {i} (bytes {offset}..{offset + length}, {KINDS[kind]})"
        parts.append(skeleton[done:done + offset - cursor])
        done += offset - cursor
        parts.append(_decode_run(kind, _payload(package, pos, plen, crc, what), length, width, what))
        pos, cursor = pos + plen, offset + length
    parts.append(skeleton[done:])
    out = b"".join(parts)
    if len(out) != h["size"]:  # only a wrong run table can do this: each part's size was checked
        raise PackageError(f"package corrupt: restored {len(out)} bytes, the header says {h['size']}")
    digest = hashlib.sha256(out).digest()
    if digest != h["sha256"]:
        raise PackageError(f"package corrupt: sha256 of the restored file {digest.hex()} differs from the "
                           f"header's {h['sha256'].hex()}")
    return out, h["suffix"]


def package_stats(package: bytes) -> dict[str, Any]:
    """Per-segment kind and sizes (header only; nothing is decoded), for reports."""
    h = _parse(package)
    runs = [{"offset": o, "length": n, "width": w, "kind": KINDS[k], "packed": p,
             "bits_per_element": round(8 * p * w / n, 3)} for o, n, w, k, p, _ in h["runs"]]
    skel_raw = h["size"] - sum(r["length"] for r in runs)
    return {"suffix": h["suffix"], "file": h["size"], "package": len(package), "header": h["data"],
            "skeleton": {"codec": CODECS[h["codec"]], "length": skel_raw, "packed": h["skel"][0]}, "runs": runs}


def unpack_file(pkg_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Restore a package to ``out_path`` (default: beside it, its name without .ecpk, plus the model suffix
    when that name lacks it). Written atomically: a partial file never appears, and a failure leaves nothing.
    """
    pkg_path = Path(pkg_path)
    data, suffix = unpack(pkg_path.read_bytes())  # ``suffix`` is one of SUFFIXES (checked by _parse)
    if out_path is None:  # the package's own name, so the header cannot steer the write elsewhere
        name = pkg_path.name.removesuffix(PACKAGE_SUFFIX) or pkg_path.name
        out_path = pkg_path.with_name(name if name.endswith(suffix) else name + suffix)
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "xb") as f:  # open(), not mkstemp: the file gets 0666 less the umask, not 0600
            f.write(data)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_path

