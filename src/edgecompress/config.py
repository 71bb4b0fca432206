"""One way to read params.yaml: sections into typed, frozen config dataclasses.

Every technique has one frozen dataclass (``TrainConfig``, ``DistillConfig``, ``PruneConfig``, ...)
whose ``__post_init__`` checks ranges and combinations. ``from_dict`` builds one from a params
section: it checks each value against the field's type hint (an integer where ``int`` is declared,
a list where a tuple is, a mapping for a nested config) before the dataclass sees it, so every bad
value is reported as ``params.yaml:section.key=value: what is allowed`` before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from edgecompress.errors import EdgeCompressError

C = TypeVar("C")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Parse the params file; a missing file or YAML error names the file."""
    path = Path(path)
    if not path.exists():
        raise EdgeCompressError(f"{path} not found; run from the repository root (where dvc.yaml is)")
    try:
        params = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise EdgeCompressError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(params, dict):
        raise EdgeCompressError(f"{path} must be a mapping of stage sections, got {type(params).__name__}")
    return params


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (the second would silently win)",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also rejects duplicate keys: params and target profiles are read with it."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def section(params: dict[str, Any], name: str, path: str | Path = "params.yaml") -> dict[str, Any]:
    """The ``name`` section as a dict (missing section -> {} so defaults apply)."""
    sec = params.get(name) or {}
    if not isinstance(sec, dict):
        raise EdgeCompressError(f"{path}: section {name!r} must be a mapping, got {type(sec).__name__}")
    return dict(sec)


def read(params: dict[str, Any], name: str, cls: type[C], path: str | Path = "params.yaml") -> C:
    """Section ``name`` of the parsed params file as a ``cls`` config (errors name ``path:name.key``)."""
    return from_dict(cls, section(params, name, path), f"{path}:{name}")


def from_dict(cls: type[C], d: Mapping[str, Any] | None, where: str | None = None) -> C:
    """Build the frozen dataclass ``cls`` from a params mapping; every error names ``where``
    (default: the class name).

    Unknown keys get a "did you mean"; values are checked against the field types (nested config
    dataclasses are built recursively, lists become tuples) before ``__post_init__`` checks ranges.
    """
    where = where or cls.__name__
    d = {} if d is None else d  # an empty YAML section parses as None
    if not isinstance(d, Mapping):
        raise EdgeCompressError(f"{where} must be a mapping of options, got {type(d).__name__} {d!r}")
    allowed = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise EdgeCompressError(f"{where}: unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _check(hints[k], v, f"{where}.{k}") for k, v in d.items()}
    try:
        return cls(**kwargs)
    except EdgeCompressError as e:
        raise EdgeCompressError(f"{where}: {getattr(e, 'problem', e)}") from None
    except (TypeError, ValueError) as e:
        raise EdgeCompressError(f"{where}: {e}") from None


def _describe(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}s"
        return f"a list [{', '.join(_describe(a) for a in args)}]"
    if origin in (typing.Union, types.UnionType):
        parts = [p for a in typing.get_args(tp) for p in ("null" if a is type(None) else _describe(a)).split(" or ")]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _check(tp: Any, v: Any, where: str) -> Any:
    """``v`` checked against type hint ``tp`` (lists -> tuples, mappings -> nested configs)."""
    bad = EdgeCompressError(f"{where}={v!r}: must be {_describe(tp)}")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if v is None:
            if type(None) in options:
                return None
            raise bad
        for option in (o for o in options if o is not type(None)):
            try:
                return _check(option, v, where)
            except EdgeCompressError:
                continue
        raise bad
    if tp is Any or tp is object:
        return v
    if dataclasses.is_dataclass(tp):
        if isinstance(v, tp):
            return v
        if not isinstance(v, Mapping):
            raise bad
        return from_dict(tp, v, where)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(v, bool):
            raise bad
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int) and not _is_numpy_int(v):
            raise bad
        return v
    if tp is float:
        # Ints stay ints (a YAML `4` for a temperature): the value, not its repr, is what matters.
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not _is_numpy_int(v):
            raise bad
        if not math.isfinite(v):  # YAML's .nan / .inf: no setting here means "not a number"
            raise EdgeCompressError(f"{where}={v!r}: must be a finite number")
        return v
    if tp is str:
        if not isinstance(v, str):
            raise bad
        return v
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(v, str) and args and args[0] is str:
            return v  # a single name where a list is expected; the config's own check decides
        if not isinstance(v, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis or not args:
            item = args[0] if args else Any
            return tuple(_check(item, x, f"{where}[{i}]") for i, x in enumerate(v))
        if len(v) != len(args):
            raise bad
        return tuple(_check(a, x, f"{where}[{i}]") for i, (a, x) in enumerate(zip(args, v)))
    if origin is dict:
        if not isinstance(v, Mapping):
            raise bad
        return v
    return v


def _is_numpy_int(v: Any) -> bool:
    return type(v).__module__ == "numpy" and hasattr(v, "dtype") and v.dtype.kind in "iu"
