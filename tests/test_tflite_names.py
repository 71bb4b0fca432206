"""Short tensor names in TFLite files: smaller, same I/O, bit-identical results, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.compression import tflite as tflite_mod
from edgecompress.compression import tflite_names
from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.tflite import export_tflite, export_tflite_fp16
from edgecompress.compression.tflite_names import strip_names, strip_tensor_names
from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent

SHAPE = (1, 12, 12)
SHORT = 8  # "t" + index: our tiny graphs have < 10**6 tensors


def interpreter(data: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data, num_threads=1)
    interp.allocate_tensors()
    return interp


def io_rows(interp: Any) -> list[tuple[Any, ...]]:
    return [(d["name"], d["index"], d["shape"].tolist(), np.dtype(d["dtype"]).name, d["quantization"],
             d["quantization_parameters"]["scales"].tolist(), d["quantization_parameters"]["zero_points"].tolist())
            for d in [*interp.get_input_details(), *interp.get_output_details()]]


def inputs(interp: Any, n: int, seed: int = 1) -> list[np.ndarray]:
    d = interp.get_input_details()[0]
    rng = np.random.default_rng(seed)
    if d["dtype"] == np.int8:
        return [rng.integers(-128, 128, d["shape"], dtype=np.int8) for _ in range(n)]
    return [rng.standard_normal(d["shape"]).astype(np.float32) for _ in range(n)]


def run(interp: Any, x: np.ndarray) -> np.ndarray:
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).copy()


def inner_names(data: bytes) -> list[str]:
    """Names of the tensors that are neither an input nor an output of their subgraph."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    return [(t.name or b"").decode() for sg in model.subgraphs for i, t in enumerate(sg.tensors)
            if i not in set(sg.inputs.tolist()) | set(sg.outputs.tolist())]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, bytes]]:
    """{artifact: (bytes as the converter wrote them, bytes we wrote)} for fp32, int8 and fp16 of a tiny student."""
    out = tmp_path_factory.mktemp("names")
    raw: dict[str, bytes] = {}
    real_file, real_bytes = tflite_mod.strip_tensor_names, tflite_mod.strip_names

    def spy_file(path: Path, what: str | None = None) -> tuple[int, int]:
        raw[Path(str(what)).name] = Path(path).read_bytes()
        return real_file(path, what)

    def spy_bytes(data: bytes, what: str = "") -> bytes:
        raw[Path(what).name] = data
        return real_bytes(data, what)

    torch.manual_seed(0)
    model = MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2]).eval()
    calib = np.random.default_rng(0).standard_normal((16, *SHAPE)).astype(np.float32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tflite_mod, "strip_tensor_names", spy_file)
        mp.setattr(tflite_mod, "strip_names", spy_bytes)
        export_tflite(model, SHAPE, out / "fp32.tflite")
        export_tflite(model, SHAPE, out / "int8.tflite", calib, CalibrationConfig())
        export_tflite_fp16(out / "fp32.tflite", out / "fp16.tflite")
    return {name: (raw[name], (out / name).read_bytes()) for name in ("fp32.tflite", "int8.tflite", "fp16.tflite")}


@pytest.mark.parametrize("name", ["fp32.tflite", "int8.tflite"])
def test_exports_are_smaller_by_about_the_names(exported, name: str) -> None:
    before, after = exported[name]
    long, short = inner_names(before), inner_names(after)
    assert max(map(len, long)) > 100  # the converter's module paths: what this is all about
    assert short and max(map(len, short)) <= SHORT and len(set(short)) == len(short)
    names_saved = sum(map(len, long)) - sum(map(len, short))
    # the saving is the names' bytes, less at most 16 bytes of alignment a buffer
    assert names_saved - 16 * len(short) < len(before) - len(after) <= names_saved + 4 * len(short)


def test_fp16_is_made_from_the_short_named_fp32(exported) -> None:
    """The quantizer reads the short-named fp32 file, so its names are short already (its new tensors are
    named after ours: "t12" -> "t12_dequant"); the file is rewritten only where that makes it smaller."""
    before, after = exported["fp16.tflite"]
    assert 0 < max(map(len, inner_names(before))) <= 2 * SHORT
    assert max(map(len, inner_names(after))) <= 2 * SHORT and len(after) <= len(before)
    assert strip_names(after) == after
    assert len(inner_names(after)) > len(inner_names(exported["fp32.tflite"][1]))  # fp16 weights + dequantize


@pytest.mark.parametrize("name", ["fp32.tflite", "int8.tflite", "fp16.tflite"])
def test_io_details_and_signatures_unchanged(exported, name: str) -> None:
    before, after = (interpreter(d) for d in exported[name])
    assert io_rows(after) == io_rows(before)
    assert after.get_signature_list() == before.get_signature_list()
    if name == "int8.tflite":
        assert io_rows(after)[0][3] == "int8" and io_rows(after)[0][4][0] > 0  # int8 I/O with a real scale


@pytest.mark.parametrize("name", ["fp32.tflite", "int8.tflite", "fp16.tflite"])
def test_outputs_bit_identical(exported, name: str) -> None:
    before, after = (interpreter(d) for d in exported[name])
    outs = []
    for x in inputs(before, 8):
        want, got = run(before, x), run(after, x)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
        outs.append(got)
    assert len({o.tobytes() for o in outs}) > 1  # the inputs really differ: the comparison can fail


def test_signature_runner_still_works(exported) -> None:
    before, after = (interpreter(d) for d in exported["int8.tflite"])
    (key,) = after.get_signature_list()
    sig = after.get_signature_list()[key]
    x = inputs(before, 1, seed=7)[0]
    want = before.get_signature_runner(key)(**{sig["inputs"][0]: x})
    got = after.get_signature_runner(key)(**{sig["inputs"][0]: x})
    assert list(got) == list(want) == sig["outputs"]
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)
    assert got[sig["outputs"][0]].tobytes() == run(after, x).tobytes()


def test_idempotent_and_file_api(exported, tmp_path: Path) -> None:
    before, after = exported["int8.tflite"]
    assert strip_names(after, "again") == after
    path = tmp_path / "m.tflite"
    path.write_bytes(before)
    assert strip_tensor_names(path) == (len(before), len(after))
    assert path.read_bytes() == after and [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


def test_buffers_stored_after_the_flatbuffer_stay_there(tmp_path: Path) -> None:
    """The fp16 quantizer puts >= 256 KiB of weights after the flatbuffer (offset/size); they move, aligned."""
    from ai_edge_litert import schema_py_generated as schema

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 12 * 12, 128)).eval()
    raw: list[bytes] = []
    real = tflite_mod.strip_names
    with pytest.MonkeyPatch.context() as mp:  # long names in, as a converter writes them
        mp.setattr(tflite_mod, "strip_tensor_names", lambda path, what=None: (0, 0))
        export_tflite(model, SHAPE, tmp_path / "fp32.tflite")
        mp.setattr(tflite_mod, "strip_names", lambda data, what="": raw.append(data) or real(data, what))
        export_tflite_fp16(tmp_path / "fp32.tflite", tmp_path / "fp16.tflite")
    after = (tmp_path / "fp16.tflite").read_bytes()
    root = schema.Model.GetRootAsModel(after, 0)
    placed = [(root.Buffers(i).Offset(), root.Buffers(i).Size()) for i in range(root.BuffersLength())
              if root.Buffers(i).Offset()]
    assert placed and sum(size for _, size in placed) >= 256 * 1024
    assert all(off % 16 == 0 and off + size <= len(after) for off, size in placed)
    assert max(map(len, inner_names(raw[0]))) > 20 and max(map(len, inner_names(after))) <= SHORT
    assert len(after) < len(raw[0])
    old, new = interpreter(raw[0]), interpreter(after)
    for x in inputs(old, 3):
        assert run(new, x).tobytes() == run(old, x).tobytes()


@pytest.mark.parametrize("damage, match", [
    (lambda d: b"", r"not a valid TFLite model"),
    (lambda d: b"hello world, not a model" * 10, r"not a valid TFLite model"),
    (lambda d: d[: len(d) // 2], r"not a valid TFLite model"),
    (lambda d: d[:8] + bytes(len(d) - 8), r"not a valid TFLite model"),
])
def test_corrupt_file_is_one_clear_error_and_left_alone(exported, tmp_path: Path, damage: Any, match: str) -> None:
    bad = damage(exported["int8.tflite"][1])
    path = tmp_path / "bad.tflite"
    path.write_bytes(bad)
    with pytest.raises(EdgeCompressError, match=rf"bad\.tflite is {match}.*re-export it"):
        strip_tensor_names(path)
    assert path.read_bytes() == bad and [p.name for p in tmp_path.iterdir()] == ["bad.tflite"]
    with pytest.raises(EdgeCompressError, match=r"cannot be read"):
        strip_tensor_names(tmp_path / "missing.tflite")


def test_visible_names_are_kept_even_when_they_look_short(exported) -> None:
    from ai_edge_litert import schema_py_generated as schema

    _, after = exported["fp32.tflite"]
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(after, 0))
    sg = model.subgraphs[0]
    taken = int([i for i in range(len(sg.tensors)) if i not in set(sg.inputs.tolist()) | set(sg.outputs.tolist())][0])
    sg.tensors[int(sg.inputs[0])].name = f"t{taken}".encode()  # an input already called like an inner tensor
    assert tflite_names.shorten_names(model) == -1  # nothing long left: the "_" suffix costs a byte
    names = [t.name for t in sg.tensors]
    assert names[int(sg.inputs[0])] == f"t{taken}".encode() and names[taken] == f"t{taken}_".encode()
    assert len(set(names)) == len(names)


def test_a_rewrite_that_changes_the_model_is_refused(exported, tmp_path: Path, monkeypatch) -> None:
    """The check before writing: renaming an input too (what must never happen) fails loudly, file untouched."""
    real = tflite_names.shorten_names

    def also_the_input(model: Any) -> int:
        saved = real(model)
        model.subgraphs[0].tensors[int(model.subgraphs[0].inputs[0])].name = b"renamed"
        return saved

    monkeypatch.setattr(tflite_names, "shorten_names", also_the_input)
    before = exported["int8.tflite"][0]
    path = tmp_path / "m.tflite"
    path.write_bytes(before)
    with pytest.raises(EdgeCompressError, match=r"m\.tflite: shortening its tensor names changed its inputs.*a bug"):
        strip_tensor_names(path)
    assert path.read_bytes() == before
