"""Huffman-coded shipping package for .onnx/.tflite files (Deep Compression, Han et al. 2016, stage 3).

Weight tensors are located as exact byte runs inside the model file. A run with at most 256 distinct
values (clustered or int8 weights, pruned zeros) becomes a codebook of those values' raw bytes plus
canonical-Huffman-coded indices, optionally with a zlib'd zero mask so only non-zeros are coded; other
runs are zlib'd (bytes as stored, or byte-shuffled). Everything between the runs (the "skeleton": graph,
names, small tensors) is stored once, lzma'd or zlib'd. ``unpack`` restores the file bit for bit and
checks its sha256. Like runner.py, this file is copied alone to devices: it imports only the standard
library and numpy at module level (onnx / LiteRT only inside ``find_tensors``, never when decoding).

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

import gzip
import hashlib
import heapq
import lzma
import os
import struct
import zlib
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"ECPK"
PACKAGE_SUFFIX = ".ecpk"  # MODEL.onnx -> MODEL.onnx.ecpk
VERSION = 1
MIN_ELEMENTS = 64  # below this a codebook and code table cost more than they save
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


def _code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length per symbol (all counts > 0), limited to MAX_CODE_LEN bits."""
    if len(counts) == 1:
        return np.zeros(1, np.uint8)  # the only symbol needs no bits
    weights = counts.astype(np.int64)
    while True:
        lengths = np.zeros(len(weights), np.int64)
        heap = [(int(c), [i]) for i, c in enumerate(weights)]  # equal counts: the symbol lists break ties
        heapq.heapify(heap)
        while len(heap) > 1:
            (c1, s1), (c2, s2) = heapq.heappop(heap), heapq.heappop(heap)
            lengths[s1 + s2] += 1
            heapq.heappush(heap, (c1 + c2, s1 + s2))
        if lengths.max() <= MAX_CODE_LEN:
            return lengths.astype(np.uint8)
        # Too deep (very skewed counts): flatten the counts and rebuild; equal counts give <= 8 bits.
        weights = np.maximum(weights >> 1, 1)


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


def _huffman_encode(idx: np.ndarray, lengths: np.ndarray) -> bytes:
    """Concatenated codes of ``idx`` (MSB first), vectorized: bits of left-aligned codes, masked."""
    if lengths.max() == 0:
        return b""
    codes, *_ = _canonical(lengths)
    aligned = (codes << (32 - lengths.astype(np.int64))).astype(">u4")
    max_len = int(lengths.max())
    out, carry = [], np.zeros(0, np.uint8)
    for start in range(0, len(idx), _CHUNK):  # chunks bound the (n, max_len) bit matrix
        part = idx[start:start + _CHUNK]
        bits = np.unpackbits(aligned[part].view(np.uint8).reshape(-1, 4), axis=1, count=max_len)
        bits = np.concatenate([carry, bits[np.arange(max_len) < lengths[part][:, None].astype(np.int64)]])
        whole = len(bits) // 8 * 8
        out.append(np.packbits(bits[:whole]).tobytes())
        carry = bits[whole:]
    return b"".join(out) + np.packbits(carry).tobytes()


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


def _huffman_payload(values: np.ndarray) -> bytes:
    symbols, idx, counts = np.unique(values, return_inverse=True, return_counts=True)
    lengths = _code_lengths(counts)
    return (struct.pack("<H", len(symbols)) + symbols.astype(symbols.dtype.newbyteorder("<")).tobytes()
            + lengths.tobytes() + _huffman_encode(idx.ravel(), lengths))


def _encode_run(run: bytes, width: int) -> tuple[int, bytes]:
    """(kind, payload): the smallest of the forms that apply to this run."""
    view = np.frombuffer(run, f"<u{width}")
    forms = {1: zlib.compress(run, 6)}  # level 9 takes 10x longer on weights for < 1% smaller
    if width > 1:
        forms[2] = zlib.compress(view.view(np.uint8).reshape(-1, width).T.tobytes(), 6)
    # A sample with > 256 values already rules the codebook out, without sorting all of a big tensor.
    if len(np.unique(view[:: max(1, len(view) // 4096)])) <= 256 and len(np.unique(view)) <= 256:
        forms[3] = _huffman_payload(view)
        nonzero = view != 0
        if 0 < nonzero.sum() <= len(view) // 2:  # pruned: most positions are zero, code only the others
            mask = zlib.compress(np.packbits(nonzero).tobytes(), 9)
            forms[4] = struct.pack("<I", len(mask)) + mask + _huffman_payload(view[nonzero])
    kind = min(forms, key=lambda k: len(forms[k]))
    return kind, forms[kind]


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


def pack(model_bytes: bytes, tensors: list[np.ndarray], suffix: str) -> bytes:
    """The package of ``model_bytes``; each tensor found verbatim in it (>= 64 elements) is coded alone."""
    if suffix not in SUFFIXES:
        raise PackageError(f"suffix {suffix!r} must be one of {', '.join(SUFFIXES)}")
    chosen: list[tuple[int, int, int]] = []  # (offset, length, width)
    # Any fixed-width dtype (bfloat16 and float8 too): runs are coded as raw integers of their width.
    usable = [t for t in tensors if not t.dtype.hasobject and t.dtype.itemsize in (1, 2, 4, 8)
              and t.size >= MIN_ELEMENTS]
    for t in sorted(usable, key=lambda t: -t.nbytes):  # biggest first: they win an overlap
        raw = np.ascontiguousarray(t, t.dtype.newbyteorder("<")).tobytes()
        start = 0
        for _try in range(8):  # equal tensors (or zero runs) may match an earlier, taken place
            at = model_bytes.find(raw, start)
            if at < 0:
                break
            if all(at + len(raw) <= o or o + n <= at for o, n, _w in chosen):
                chosen.append((at, len(raw), t.dtype.itemsize))
                break
            start = at + 1
    chosen.sort()
    gaps, payloads, table, cursor = [], [], [], 0
    for offset, length, width in chosen:
        gaps.append(model_bytes[cursor:offset])
        kind, payload = _encode_run(model_bytes[offset:offset + length], width)
        table.append(_RUN.pack(offset, length, width, kind, len(payload), zlib.crc32(payload)))
        payloads.append(payload)
        cursor = offset + length
    gaps.append(model_bytes[cursor:])
    skeleton = b"".join(gaps)
    # lzma's default preset: its 8 MiB dictionary keeps decoding cheap on small devices (preset 9: 64 MiB).
    skel = min([(1, zlib.compress(skeleton, 9)), (2, lzma.compress(skeleton))], key=lambda c: len(c[1]))
    header = (_HEAD.pack(MAGIC, VERSION, len(suffix)) + suffix.encode("ascii")
              + _META.pack(len(model_bytes), hashlib.sha256(model_bytes).digest(), len(chosen))
              + _SKEL.pack(skel[0], len(skel[1]), zlib.crc32(skel[1])) + b"".join(table))
    return header + _CRC.pack(zlib.crc32(header)) + skel[1] + b"".join(payloads)


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


def find_tensors(model_bytes: bytes, suffix: str) -> list[np.ndarray]:
    """Weight tensors of an .onnx (initializers, Constants) or .tflite model; a file its parser rejects has none."""
    readers: list[Any] = []
    if suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        with suppress(Exception):
            graph = onnx.load_model_from_string(model_bytes).graph
            protos = list(graph.initializer) + [a.t for nd in graph.node for a in nd.attribute if a.HasField("t")]
            readers = [lambda p=p: numpy_helper.to_array(p) for p in protos]
    elif suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        with suppress(Exception):
            interpreter = Interpreter(model_content=model_bytes)
            readers = [lambda i=d["index"]: interpreter.get_tensor(i) for d in interpreter.get_tensor_details()]
    found = []
    for read in readers:
        with suppress(Exception):  # exotic types, external data, activations (no data before allocate_tensors)
            found.append(np.array(read()))
    return found


def pack_file(path: str | Path) -> bytes:
    """The package of an .onnx or .tflite file, its weight tensors found by parsing it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise PackageError(f"{path}: only {' and '.join(SUFFIXES)} models are packed (exported artifacts, "
                           f"e.g. models/export/fp32.onnx)")
    data = path.read_bytes()
    return pack(data, find_tensors(data, suffix), suffix)


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


def sizes(model_bytes: bytes, suffix: str | None = None) -> dict[str, int | None]:
    """Bytes of the file, gzip -9, zstd -19 (None without the zstandard package) and our package."""
    if suffix is None:  # a .tflite flatbuffer carries the identifier "TFL3" at byte 4
        suffix = ".tflite" if model_bytes[4:8] == b"TFL3" else ".onnx"
    try:
        import zstandard

        zstd: int | None = len(zstandard.ZstdCompressor(level=19).compress(model_bytes))
    except ImportError:
        zstd = None
    return {"file": len(model_bytes), "gzip": len(gzip.compress(model_bytes, 9)), "zstd": zstd,
            "package": len(pack(model_bytes, find_tensors(model_bytes, suffix), suffix))}
