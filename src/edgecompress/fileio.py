"""Files in and out: atomic writes (an output appears complete or not at all, with the usual
permissions), and readers that turn a missing or corrupt JSON/npz file into one clear error."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgecompress.errors import EdgeCompressError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; an output is a file like any other: 0666 less the umask (0644 by default).
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; restored at once
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(o: Any) -> Any:
    # numpy scalars/arrays and Paths show up in metrics; make them plain JSON.
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read JSON, turning a missing/corrupt file into a clear EdgeCompressError."""
    path = Path(path)
    if not path.exists():
        raise EdgeCompressError(f"{what} {path} does not exist; run the stage that produces it (dvc repro)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeCompressError(f"{what} {path} is not valid JSON ({e}); delete it and re-run dvc repro") from e
    except OSError as e:
        raise EdgeCompressError(f"{what} {path} cannot be read ({e})") from e


def read_npz(path: str | Path, keys: tuple[str, ...], what: str = "file",
             fix: str = "delete it and re-run dvc repro") -> dict[str, Any]:
    """The arrays ``keys`` of an .npz file (no pickles); a missing, truncated or foreign file is one
    clear EdgeCompressError naming the file, what it is and ``fix``."""
    import zipfile
    import zlib

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise EdgeCompressError(f"{what} {path} does not exist; {fix}")
    try:
        with open(path, "rb") as fh:  # our handle: np.load leaks its own when the zip is corrupt
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise EdgeCompressError(f"{what} {path} is a single .npy array, not an .npz archive; {fix}")
            with z:
                missing = [k for k in keys if k not in z.files]
                if missing:
                    raise EdgeCompressError(f"{what} {path} lacks arrays {missing} (it has {sorted(z.files)}); {fix}")
                return {k: z[k] for k in keys}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise EdgeCompressError(f"{what} {path} is unreadable or corrupt ({type(e).__name__}: {e}); {fix}") from None


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` with a fixed archive name, written atomically.

    ``torch.save`` to a file names the zip's inner folder after it, so saving to a random temp name
    made every checkpoint differ between identical runs (and dvc.lock's md5 with it); a buffer's inner
    folder is always ``archive``, so equal tensors give equal bytes.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


# Members of a torch.export archive (.pt2) that torch reads as text or JSON, never unpickles.
_PT2_TEXT = {"archive_format", "archive_version", "byteorder", "version", ".data/version",
             ".data/serialization_id", ".format_version", ".storage_alignment"}


def check_pt2(path: str | Path, what: str) -> None:
    """Refuse a ``.pt2`` that could run code in ``torch.export.load`` or when its program runs.

    ``torch.export.load`` unpickles some members with ``weights_only=False`` (tensors it stores as
    pickles, sample inputs, opaque constants) and loads compiled AOTInductor libraries. Every member it
    may unpickle must pass torch's own weights-only unpickler (tensors, storages, plain containers);
    compiled code is refused, and the graph (JSON) may call only registered operators and carry only
    plain shape expressions (torch parses those with ``sympy.sympify``, an ``eval``).
    """
    import io
    import zipfile

    import torch

    path = Path(path)
    fix = "export the model again with torch.export.save from a plain nn.Module (tensors only)"
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):  # torch's zip reader and Python's may pick different copies
                raise EdgeCompressError(f"{what}: {path} repeats a member name; {fix}")
            root = names[0].split("/")[0] + "/" if names and "/" in names[0] else ""
            members = {i.filename: z.read(i) for i in infos}
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as e:
        raise EdgeCompressError(f"{what}: {path} is not a torch.export program ({type(e).__name__}: {e}); "
                                f"save one with torch.export.save(torch.export.export(model, (example,)), path)") from None
    rel = {n: n[len(root):] if n.startswith(root) else n for n in members}
    kinds = {rel[n]: d for n, d in members.items()}
    if kinds.get("archive_format") != b"pt2" and "serialized_exported_program.json" not in kinds:
        raise EdgeCompressError(f"{what}: {path} is not a torch.export program (a zip without archive_format: pt2); "
                                f"save one with torch.export.save(torch.export.export(model, (example,)), path)")
    raw = _pt2_raw_tensors(members, rel)
    for name, data in members.items():
        r = rel[name]
        if "aotinductor" in r or r.endswith((".so", ".dll", ".dylib", ".cpp")):
            raise EdgeCompressError(f"{what}: {path} member {name} is compiled code (AOTInductor), which would run "
                                    f"when loaded; {fix}")
        if r.endswith(".json"):
            _check_pt2_graph(data, f"{what}: {path} member {name}", fix)
        elif r in _PT2_TEXT or r.startswith(("extra/", "extra_files/")) or name in raw or name.endswith("/"):
            continue
        else:
            try:
                torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception as e:
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [""]
                first = next((ln for ln in lines if "Unsupported" in ln or "global" in ln.lower()), lines[0])
                first = first.split(". ")[0]  # torch goes on to suggest allowing the global: not advice for this file
                raise EdgeCompressError(f"{what}: {path} member {name} is a pickle that holds more than tensors "
                                        f"and would run code when loaded ({type(e).__name__}: {first[:200]}); "
                                        f"{fix}") from None


def _pt2_raw_tensors(members: dict[str, bytes], rel: dict[str, str]) -> set[str]:
    """Members that the archive's payload configs declare as raw tensor bytes (torch never unpickles those)."""
    by_rel = {r: n for n, r in rel.items()}
    raw: set[str] = set()
    pickled: set[str] = set()
    for name, data in members.items():
        r = rel[name]
        if not r.endswith(("_weights_config.json", "_constants_config.json")):
            continue
        folder = r.rsplit("/", 1)[0] + "/"
        try:
            config = json.loads(data).get("config", {})
            entries = [(str(e["path_name"]), bool(e.get("use_pickle"))) for e in config.values()]
        except (ValueError, AttributeError, KeyError, TypeError):
            continue  # then its payloads are scanned as pickles
        for path_name, use_pickle in entries:
            target = by_rel.get(folder + path_name)
            if target is None:
                continue
            # A constant is read raw only as a tensor_constant; custom and opaque objects are unpickled.
            if use_pickle or (r.endswith("_constants_config.json") and not path_name.startswith("tensor_")):
                pickled.add(target)
            else:
                raw.add(target)
    return raw - pickled


# Names a shape expression may use: sympy's and torch's symbolic functions, Symbol's assumptions.
_SYMPY_NAMES = {"Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod",
                "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise",
                "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality",
                "oo", "zoo", "nan", "True", "False", "None", "true", "false", "Dummy", "Tuple",
                "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
                "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
                "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
                "ToFloat", "Identity", "OpaqueUnaryFn_sqrt", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
                "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "infinite",
                "commutative", "zero", "nonzero", "even", "odd", "prime", "rational", "evaluate"}
_SYMPY_TOKEN = r"'[A-Za-z0-9_.+-]*'|\"[A-Za-z0-9_.+-]*\"|[A-Za-z_][A-Za-z0-9_]*|[0-9.eE]+|[-+*/%(),<>=!&|~^\s]+"


def _check_pt2_graph(data: bytes, where: str, fix: str) -> None:
    """The graph's node targets are registered operators; its shape expressions are plain sympy."""
    import operator
    import re

    import torch

    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return  # not JSON: torch.export.load fails on it without running anything
    from torch._export.serde.serialize import _SYM_OPS

    sym_ops = {f"{getattr(f, '__module__', '')}.{getattr(f, '__name__', '')}" for f in _SYM_OPS}
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        for key in ("target", "as_operator"):
            value = node.get(key)
            if isinstance(value, str) and (key == "as_operator" or "inputs" in node):
                if value not in sym_ops and not _is_torch_op(value, torch, operator):
                    raise EdgeCompressError(f"{where}: the graph calls {value[:80]!r}, which is not a registered "
                                            f"torch operator; {fix}")
        expr = node.get("expr_str")
        if isinstance(expr, str):
            tokens = re.findall(_SYMPY_TOKEN, expr)
            names = [t for t in tokens if t[0].isalpha() or t[0] == "_"]
            if "".join(tokens) != expr or any(n not in _SYMPY_NAMES for n in names) or "__" in expr:
                raise EdgeCompressError(f"{where}: shape expression {expr[:80]!r} is not a plain sympy expression "
                                        f"(torch would eval it); {fix}")


def _is_torch_op(target: str, torch: Any, operator: Any) -> bool:
    """``torch.ops.<namespace>.<op>.<overload>`` or ``torch.ops.higher_order.<op>``, resolved to an operator."""
    parts = target.split(".")
    if parts[:2] != ["torch", "ops"] or len(parts) not in (4, 5) or any("__" in p or not p.isidentifier() for p in parts):
        return False
    obj: Any = torch.ops
    try:
        for p in parts[2:]:
            obj = getattr(obj, p)
    except Exception:  # an unknown namespace or operator
        return False
    return isinstance(obj, (torch._ops.OpOverload, torch._ops.HigherOrderOperator))
