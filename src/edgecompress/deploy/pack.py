"""The encoder of the Huffman-coded shipping package (format and decoder: deploy/package.py).

``pack`` finds each weight tensor's bytes in the model file and codes every run in the smallest of the
forms package.py's docstring lays out (zlib, byte-shuffled zlib, canonical Huffman over a codebook of at
most 256 values, or Huffman over the non-zeros of a pruned run); ``pack_file`` finds the tensors by
parsing the file (onnx / LiteRT, imported only there); ``sizes`` compares the package with gzip and zstd.
Runs on the host, never on a device, but stands alone as package.py does (the standard library and numpy
at module level), so that importing it pulls nothing else of edgecompress in.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import lzma
import struct
import zlib
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.deploy.package import (
    _CHUNK,
    _CRC,
    _HEAD,
    _META,
    _RUN,
    _SKEL,
    MAGIC,
    MAX_CODE_LEN,
    SUFFIXES,
    VERSION,
    PackageError,
    _canonical,
)

MIN_ELEMENTS = 64  # below this a codebook and code table cost more than they save


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
