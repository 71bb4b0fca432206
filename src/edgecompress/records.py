"""Records that cross a wing: the candidate pool's index (compression writes, deploy reads) and a target's
build record (deploy's build writes; the check, the build report, the final report and the gate read).

Each is a frozen dataclass with its writer and reader here, next to it. ``to_json()`` gives the exact JSON
the pipeline has always written (same keys, same order), so a typed record changes no byte on disk;
``from_json()`` checks the shape and says in one line what is wrong. Checking an index against the files
it names (sizes, hashes, cascade segments) is the build's reader's job (``deploy.build.load_index``): it
needs the runner's rule for where a segment may lie.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from edgecompress.dirs import file_sha256
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import read_json, write_json

INDEX = "index.json"  # the pool's index, in the pool directory
BUILD_RECORD = "build.json"  # written by the build beside the artifact it chose
INDEX_HINT = "re-run the candidates stage (dvc repro candidates)"


def _plain(value: Any) -> Any:
    """``value`` as JSON wants it: records as their dicts, tuples as lists (dicts kept as they are)."""
    if is_dataclass(value) and not isinstance(value, type):
        return value.to_json()  # type: ignore[attr-defined]
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _fields_json(record: Any, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every field in declaration order (the JSON's key order); those in ``optional`` only when set."""
    return {f.name: _plain(getattr(record, f.name)) for f in fields(record)
            if f.name not in optional or getattr(record, f.name) is not None}


def _take(d: Any, cls: type, where: str, optional: tuple[str, ...] = (),
          tuples: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keyword arguments of ``cls`` read from the JSON object ``d`` (ValueError naming what is missing);
    lists of the fields in ``tuples`` become tuples, keys in ``optional`` may be absent."""
    if not isinstance(d, dict):
        raise ValueError(f"{where or 'the record'} is a JSON {type(d).__name__}, not an object")
    out = {}
    for f in fields(cls):
        if f.name not in d:
            if f.name in optional:
                continue
            raise ValueError(f"no {where}{'.' if where else ''}{f.name}")
        v = d[f.name]
        out[f.name] = tuple(v) if f.name in tuples and isinstance(v, list) else v
    return out


# --- the candidate pool's index ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolEntry:
    """One candidate of the pool: an exported model file (or a cascade: a manifest and its segments), what it
    is, its hashes and sizes, and its scores on the validation images no export decision saw."""

    name: str  # <model>/<artifact>, e.g. student/int8.onnx
    model: str
    precision: str
    format: str
    engine: str
    path: str  # inside the pool directory: the file, or a cascade's manifest
    size_bytes: int  # the file's, or a cascade's segments' together
    package_bytes: int  # what a device downloads (budgets.download_mb)
    sha256: str  # ``entry_digest`` of the file(s): what the measurement cache keys on
    accuracy: float
    nll: float
    ece: float
    top1_agreement: float
    uncertainty: bool  # members or heads: it can say how unsure it is
    # The validation images ``accuracy`` rests on: every one no decision of this file's own export saw (None:
    # an older index, whose accuracies rest on scored_on's images). NLL, ECE and agreement: scored_on's images.
    accuracy_images: int | None = None
    float_layers: tuple[str, ...] | None = None  # an int8 ONNX: the layers the accuracy check kept in float
    # A cascade (early exits): its segment files beside the manifest, thresholds, where images leave.
    segments: tuple[str, ...] | None = None
    thresholds: tuple[float | None, ...] | None = None
    exit_fractions: tuple[float, ...] | None = None
    macs_to_exit: Any = None

    _CASCADE = ("thresholds", "exit_fractions", "macs_to_exit")

    @property
    def is_cascade(self) -> bool:
        return bool(self.segments)

    @property
    def file(self) -> str:
        """The file name the entry's path ends in (what a build ships and its record names)."""
        return Path(self.path).name

    def to_json(self) -> dict[str, Any]:
        """The index's JSON object: a model's keys, or a cascade's (segments after path, then its exits)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("name", "model", "precision", "format", "engine", "path")}
        if self.segments is not None:
            out["segments"] = list(self.segments)
        out.update({k: getattr(self, k) for k in ("size_bytes", "package_bytes", "sha256", "accuracy", "nll", "ece",
                                                  "top1_agreement", "uncertainty")})
        if self.accuracy_images is not None:
            out["accuracy_images"] = self.accuracy_images
        if self.float_layers is not None:
            out["float_layers"] = list(self.float_layers)
        if self.segments is not None:
            out.update({k: _plain(getattr(self, k)) for k in self._CASCADE})
        return out

    @classmethod
    def from_json(cls, d: Any, where: str = "candidate") -> "PoolEntry":
        """An index entry (ValueError: what is missing)."""
        kwargs = _take(d, cls, where, optional=("accuracy_images", "float_layers", "segments", *cls._CASCADE),
                       tuples=("float_layers", "segments", "thresholds", "exit_fractions", "macs_to_exit"))
        if not isinstance(kwargs["name"], str) or not isinstance(kwargs["path"], str):
            raise ValueError(f"{where}: name and path must be strings")
        return cls(**kwargs)


@dataclass(frozen=True)
class PoolIndex:
    """The pool: where its candidates were scored, the reference model, aliases, the PyTorch scores of every
    model, the temperature fits, and the candidates."""

    scored_on: dict[str, Any]  # split, images, skipped_first, why
    reference: dict[str, Any]  # model and its PyTorch accuracy, nll, ece
    aliases: dict[str, str]  # another name of a model (pruned -> the ladder level prune.ratio keeps)
    pytorch: dict[str, dict[str, float]]
    temperature: dict[str, dict[str, Any]]
    candidates: tuple[PoolEntry, ...]

    @property
    def reference_model(self) -> str:
        return self.reference["model"]

    @property
    def reference_accuracy(self) -> float:
        return self.reference["accuracy"]

    @property
    def models(self) -> list[str]:
        """The candidates' models, each once, in index order."""
        return list(dict.fromkeys(c.model for c in self.candidates))

    def entry(self, name: str) -> PoolEntry:
        return next(c for c in self.candidates if c.name == name)

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @classmethod
    def from_json(cls, d: Any) -> "PoolIndex":
        """The index (ValueError: what is missing; ``no 'candidates' list`` for what is no index at all)."""
        if not isinstance(d, dict) or not isinstance(d.get("candidates"), list):
            raise ValueError("no 'candidates' list")
        kwargs = _take(d, cls, "")
        kwargs["candidates"] = tuple(PoolEntry.from_json(c, f"candidate {k}") for k, c in enumerate(d["candidates"]))
        return cls(**kwargs)


def entry_digest(path: Path, segments: list[Path]) -> str:
    """What the index records as a candidate's sha256: the file's, or a cascade's manifest and segments'."""
    if not segments:
        return file_sha256(path)
    return hashlib.sha256(b"".join(f.read_bytes() for f in [path, *segments])).hexdigest()


def write_index(pool_dir: str | Path, index: PoolIndex) -> None:
    """Write ``pool_dir/index.json`` (atomically)."""
    write_json(Path(pool_dir) / INDEX, index.to_json())


def read_index(pool_dir: str | Path) -> PoolIndex:
    """``pool_dir/index.json`` as a typed index; one line naming the file when it is not one. (The files it
    names are checked by its reader in deploy, ``load_index``.)"""
    path = Path(pool_dir) / INDEX
    raw = read_json(path, "candidate pool index")
    try:
        return PoolIndex.from_json(raw)
    except (ValueError, TypeError) as e:
        raise EdgeCompressError(f"{path}: not a candidate index ({e}); {INDEX_HINT}") from None


# --- a target's build record -------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildSpecRecord:
    """What the profile let the build choose from (``build`` in the record)."""

    models: str | tuple[str, ...]  # "all" or the model names
    precisions: tuple[str, ...]
    engines: tuple[str, ...]
    requires: tuple[str, ...]
    pinned: bool  # the profile named one artifact (``artifact:``), not a build section

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @classmethod
    def from_json(cls, d: Any) -> "BuildSpecRecord":
        return cls(**_take(d, cls, "build", tuples=("models", "precisions", "engines", "requires")))


@dataclass(frozen=True)
class ChosenRecord:
    """The candidate the build shipped (or, when it failed, the nearest one): its validation scores and the
    device's latencies."""

    name: str
    model: str
    file: str  # the artifact's file name in the build directory (a cascade: its manifest)
    precision: str
    engine: str
    size_bytes: int
    download_bytes: int | None
    val_accuracy: float
    val_ece: float | None
    val_nll: float | None
    latency_ms: dict[str, float]
    val_accuracy_ci: dict[str, Any] | None = None  # 95% Wilson interval {point, lo, hi, n}
    latency_ci: dict[str, dict[str, Any]] | None = None  # per statistic, 95% {point, lo, hi, n}

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self, optional=("val_accuracy_ci", "latency_ci"))  # absent from older records

    @classmethod
    def from_json(cls, d: Any) -> "ChosenRecord":
        return cls(**_take(d, cls, "chosen", optional=("val_accuracy_ci", "latency_ci")))


@dataclass(frozen=True)
class ReferenceRecord:
    """The pool's reference model and its validation accuracy; ``used``: a max_drop budget compared with it."""

    model: str
    val_accuracy: float
    used: bool

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @classmethod
    def from_json(cls, d: Any) -> "ReferenceRecord":
        return cls(**_take(d, cls, "reference"))


@dataclass(frozen=True)
class SearchRecord:
    """How the search went: candidates in the pool, device runs, cache hits, those skipped, seconds; and the
    latency model's part (absent from records written before it): whether it was on, how many candidates it
    kept from being measured, and its held-out error on this device ({mdape, n}: median absolute percentage
    error of p50 on n artifacts of networks it did not see)."""

    candidates: int
    device_runs: int
    cache_hits: int
    skipped: int
    seconds: float
    prediction: str | None = None  # "on: ..." or why it was off
    predicted_skips: int | None = None  # predicted confidently over a latency budget, not measured; None: off
    model_error: dict[str, Any] | None = None  # {mdape (a fraction), n}; None: not computable

    _OPTIONAL = ("prediction", "predicted_skips", "model_error")

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self, optional=self._OPTIONAL)

    @classmethod
    def from_json(cls, d: Any) -> "SearchRecord":
        return cls(**_take(d, cls, "search", optional=cls._OPTIONAL))


@dataclass(frozen=True)
class CandidateRow:
    """One candidate in a build record: its scores, what the device measured, its fate and why."""

    name: str
    model: str
    precision: str
    engine: str
    size_bytes: int
    download_bytes: int | None
    accuracy: float
    nll: float | None
    ece: float | None
    latency_ms: dict[str, float] | None  # None: not measured
    peak_memory_mb: float | None
    measured: str  # "device" | "not measured"
    fate: str  # chosen | feasible, less accurate | skipped | rejected
    why: tuple[str, ...]
    warnings: tuple[str, ...]
    accuracy_ci: dict[str, Any] | None = None  # 95% Wilson interval on the validation images
    latency_ci: dict[str, dict[str, Any]] | None = None  # per statistic, 95% {point, lo, hi, n}
    conditions: dict[str, Any] | None = None  # the runner's load, CPU frequency and temperatures at start and end
    rounds: str | None = None  # "" when the rounds agree; the disagreement when the load changed; None: no rounds
    agreement: dict[str, Any] | None = None  # its outputs on the profile's agreement device vs this host's
    predicted_ms: dict[str, float] | None = None  # the latency model's p50 {p50, lo, hi}; None: not predicted

    _OPTIONAL = ("accuracy_ci", "latency_ci", "conditions", "rounds", "agreement", "predicted_ms")

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self, optional=self._OPTIONAL)

    @classmethod
    def from_json(cls, d: Any) -> "CandidateRow":
        return cls(**_take(d, cls, "candidates[]", tuples=("why", "warnings"), optional=cls._OPTIONAL))


@dataclass(frozen=True)
class BuildRecord:
    """``build.json``: what a target's build chose, where it measured, and every candidate's fate."""

    target: str
    description: str | None
    status: str  # built | proxy-built | infeasible | proxy-infeasible
    hardware_match: bool
    hardware_reasons: tuple[str, ...]
    device: str
    fingerprint: dict[str, Any] | None  # the runner's, as it reported it
    runtime: dict[str, Any] | None
    build: BuildSpecRecord
    chosen: ChosenRecord
    reference: ReferenceRecord
    scored_on: dict[str, Any] | None
    search: SearchRecord
    infeasible: str | None  # the nothing-fits message, when nothing met every budget
    candidates: tuple[CandidateRow, ...]
    error: str | None = None  # the build failed (nothing shipped); absent from the JSON otherwise
    # tied (names within validation noise of the chosen), why (how the tie was broken), val_test_gap_pt
    # (the reference model's validation minus test accuracy) and warning (a floor met inside that gap)
    decision: dict[str, Any] | None = None
    agreement: str | None = None  # where the candidates' outputs were compared with this host's, or why not

    @property
    def failed(self) -> bool:
        """Nothing was shipped: the directory holds this record only."""
        return bool(self.error) or self.status == "infeasible"

    def to_json(self) -> dict[str, Any]:
        """Today's build.json object, key for key."""
        return _fields_json(self, optional=("error", "decision", "agreement"))

    @classmethod
    def from_json(cls, d: Any) -> "BuildRecord":
        """A build record (ValueError: what is missing, e.g. ``no chosen.file``)."""
        kwargs = _take(d, cls, "", optional=("error", "decision", "agreement"), tuples=("hardware_reasons",))
        kwargs["build"] = BuildSpecRecord.from_json(kwargs["build"])
        kwargs["chosen"] = ChosenRecord.from_json(kwargs["chosen"])
        kwargs["reference"] = ReferenceRecord.from_json(kwargs["reference"])
        kwargs["search"] = SearchRecord.from_json(kwargs["search"])
        if not isinstance(kwargs["candidates"], list):
            raise ValueError("candidates is not a list")
        kwargs["candidates"] = tuple(CandidateRow.from_json(c) for c in kwargs["candidates"])
        return cls(**kwargs)


def write_build_record(out_dir: str | Path, record: BuildRecord) -> None:
    """Write ``out_dir/build.json`` (atomically)."""
    write_json(Path(out_dir) / BUILD_RECORD, record.to_json())


def read_build_record(path: str | Path, fix: str = "re-run dvc repro build@<target>") -> BuildRecord:
    """A ``build.json`` (``path``: the file, or the directory holding it); one line naming the file and
    ``fix`` when it is not a build record."""
    path = Path(path)
    if path.is_dir():
        path = path / BUILD_RECORD
    raw = read_json(path, "build record")
    try:
        return BuildRecord.from_json(raw)
    except (ValueError, TypeError) as e:
        raise EdgeCompressError(f"{path}: not a build record ({e}); {fix}") from None

