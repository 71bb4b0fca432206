"""The candidate pool: every model the chain made, exported once per precision and engine, each verified.

A target's build (``deploy.build``) chooses among these files; it never exports. Every candidate is
scored with its own runtime on validation images that no decision of its own export saw. The first
``calibrate.val_samples`` validation images decide: they drive the accuracy-aware int8 ONNX, the cascades'
thresholds and the temperature fits. Every file's accuracy counts every validation image its own export made
no decision on: all of them for most files (a temperature cannot move top-1), the rest only for the int8 ONNX
and the cascades. NLL, ECE and agreement use the rest only (temperatures are fitted on the first images).
Choosing on these figures never touches the test split, which only the final check uses.

Layout of the pool directory::

    index.json                 the candidates, their scores, sizes and hashes (read by the build)
    <model>/<precision>.<format>   + .json sidecar, as the export stage writes them
    valset.npz / testset.npz   raw uint8 images: device inputs for the build, the check's test split
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.artifacts import BUILD_PRECISIONS, REGISTRY
from edgecompress.checkpoint import load_checkpoint
from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.cascade import ARTIFACTS as CASCADE_ARTIFACTS
from edgecompress.compression.cascade import export_cascade, run_segments
from edgecompress.compression.ensemble_graph import EnsembleGraph
from edgecompress.compression.export import ExportConfig, export_all, run_artifact, swap_in
from edgecompress.compression.ladder import ladder_levels
from edgecompress.compression.processes import in_processes
from edgecompress.compression.temperature import can_fold, fit_temperature, fold_temperature
from edgecompress.data import Dataset, Split, save_npz_split
from edgecompress.deploy.pack import pack_file
from edgecompress.dirs import file_sha256
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import read_json
from edgecompress.log import get_logger
from edgecompress.metrics import classification_metrics, softmax
from edgecompress.models import MultiHeadStudent, batched
from edgecompress.records import PoolEntry, PoolIndex, entry_digest, write_index
from edgecompress.training.early_exit import (EarlyExitConfig, EarlyExitNet, cascade_predict, choose_thresholds,
                                              exit_probabilities)
from edgecompress.training.exit_checkpoints import SUFFIX as EXIT_SUFFIX
from edgecompress.training.exit_checkpoints import load_early_exit

__all__ = ["PoolConfig", "PoolModel", "build_pool", "cascade_candidates", "ensemble_model", "in_processes",
           "load_model", "pool_models"]

log = get_logger("candidates")


@dataclass(frozen=True)
class PoolConfig:
    """``candidates`` in params.yaml: how the pool is made beyond what ``export`` says."""

    # Fit a temperature per single-network model on the held-out validation half and fold it into
    # its classifier: same predictions, better-calibrated probabilities (ECE/NLL before and after kept).
    temperature: bool = True
    # Processes exporting models side by side; null: one per core, at most 8. TFLite conversion is
    # single-threaded Python (tracing, decompositions), so on 2 cores two of them nearly halve the stage.
    workers: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, bool):
            raise EdgeCompressError(f"invalid value temperature={self.temperature!r}: must be true or false")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise EdgeCompressError(f"invalid value workers={self.workers!r}: must be null (one per core) or an "
                                    f"integer >= 1")

    def processes(self) -> int:
        """How many export processes to run (``workers``, or one per core up to 8)."""
        return self.workers or min(os.cpu_count() or 1, 8)


@dataclass(frozen=True)
class PoolModel:
    """One model of the pool: its name (a directory), the network, its checkpoint meta and what it came from."""

    name: str  # teacher | ensemble | student | pruned-30 | ...
    model: nn.Module
    meta: dict[str, Any]
    parent: str
    uncertainty: bool = False  # members or heads: it can say how unsure it is on the device
    exportable: bool = True  # False: the user's exported program or ONNX graph, scored as the reference only


def load_model(name: str, path: str | Path) -> PoolModel:
    """A checkpoint as a pool model; a multi-head student can report uncertainty on the device."""
    model, meta = load_checkpoint(path)
    return PoolModel(name, model, meta, str(path), isinstance(model, MultiHeadStudent))


def pool_models(teacher: str | Path, members: list[nn.Module], student: str | Path, pruned: str | Path,
                ladder: str | Path | None, ratio: float, clustered: str | Path | None = None,
                early_exit: str | Path | None = None,
                elastic: str | Path | None = None,
                students: str | Path | None = None) -> tuple[list[PoolModel], dict[str, str]]:
    """(every model of the pool, aliases): teacher, the ensemble (with ``members``), student and each
    pruning-ladder level (``ladder``/pruned-<percent>.pt), or the pruned student alone without a ladder,
    then the weight-clustered copies in ``clustered`` (the cluster stage's, e.g. student-c4.pt), the
    early-exit networks in ``early_exit`` (the early_exit stage's, e.g. teacher-ee.pt: cascades) and the
    elastic student's slices in ``elastic`` (the elastic stage's, e.g. elastic-w150.pt: ordinary students) and
    the students of other widths in ``students`` (the students stage's, e.g. student-w097.pt)."""
    shared = [load_model(p.stem, p) for p in sorted(Path(clustered).glob("*.pt"))] if clustered else []
    shared += [load_model(p.stem, p) for p in sorted(Path(elastic).glob("elastic-*.pt"))] if elastic else []
    shared += [load_model(p.stem, p) for p in sorted(Path(students).glob("student-w*.pt"))] if students else []
    shared += [PoolModel(p.stem, *load_early_exit(p), str(p)) for p in sorted(Path(early_exit).glob(f"*{EXIT_SUFFIX}.pt"))] \
        if early_exit else []
    t = load_model("teacher", teacher)
    models = [t, *([ensemble_model(t, members)] if members else []), load_model("student", student)]
    form = t.meta["arch"].get("form")
    if form in ("exported", "onnx"):  # it teaches and is the reference; we export and quantize only modules
        log.info(f"the teacher is the user's {form} model: scored as the reference, not a candidate "
                 f"(bring it as source: module to ship it)")
        models[0] = replace(t, exportable=False)
    levels = ladder_levels(ladder)
    pinned = f"pruned-{round(100 * ratio)}"
    if any(p.stem == pinned for p in levels):
        return models + [load_model(p.stem, p) for p in levels] + shared, {"pruned": pinned}
    return models + [load_model("pruned", pruned)] + shared, {}


def ensemble_model(teacher: PoolModel, members: list[nn.Module]) -> PoolModel:
    """The deep ensemble (teacher = member 0) as one graph that outputs log(mean softmax)."""
    graph = EnsembleGraph([teacher.model, *members]).eval()
    return PoolModel("ensemble", graph, teacher.meta, f"{teacher.parent} + {len(members)} members", True)


def _eval_split(ds: Dataset, selection: int) -> tuple[int, Split]:
    """(images kept for export decisions, the remaining validation images that score candidates)."""
    n = len(ds.val.y)
    if n < 2:
        raise EdgeCompressError(f"the validation split has {n} image(s); candidates need validation images "
                                f"to be scored: raise data.val_fraction or data.limit")
    keep = min(selection, n // 2)  # tiny runs: half decides, half scores
    return keep, Split(ds.val.x[keep:], ds.val.y[keep:])


def _decided(result: dict[str, Any]) -> bool:
    """Whether an export made a decision on the decision images (so they cannot score it), as its own report
    says: the int8 ONNX whose accuracy check (calibrate.max_drop) ran on them to choose its float layers."""
    return bool((result.get("accuracy_aware") or {}).get("checked"))


def _pooled(accuracy: float, n: int, correct: int, extra: int) -> float:
    """The accuracy over ``n`` scored images (at ``accuracy``) and ``extra`` more, ``correct`` of them right."""
    return (accuracy * n + correct) / (n + extra)


def _right(model: nn.Module, x: np.ndarray, y: np.ndarray) -> int:
    """How many of normalized ``x`` the PyTorch ``model`` labels right."""
    return int((batched(model.eval(), torch.from_numpy(x), 1000, channels_last=False).numpy().argmax(1) == y).sum())


def _scores(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """NLL, ECE and accuracy of the PyTorch ``model`` on normalized ``x``."""
    logits = batched(model, torch.from_numpy(x), 1000, channels_last=False).numpy()
    m = classification_metrics(softmax(logits.astype(np.float64)), y)
    return {"nll": m["nll"], "ece": m["ece"], "accuracy": m["accuracy"]}


def _tempered(pm: PoolModel, x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray,
              y_eval: np.ndarray) -> tuple[PoolModel, dict[str, Any]]:
    """``pm`` with a fitted temperature folded in, and the fit (T, NLL/ECE before and after on x_eval)."""
    def scores(model: nn.Module) -> dict[str, float]:
        return _scores(model, x_eval, y_eval)

    fit_logits = batched(pm.model, torch.from_numpy(x_fit), 1000, channels_last=False).numpy()
    t = fit_temperature(fit_logits, y_fit)
    scaled = fold_temperature(pm.model, t)
    report = {"temperature": t, "fitted_on": len(y_fit), "before": scores(pm.model), "after": scores(scaled)}
    log.info(f"{pm.name}: temperature {t:.3f}, NLL {report['before']['nll']:.4f} -> "
             f"{report['after']['nll']:.4f}, ECE {report['before']['ece']:.4f} -> {report['after']['ece']:.4f}")
    return replace(pm, model=scaled), report


def build_pool(models: list[PoolModel], ds: Dataset, calib: np.ndarray, cfg: CalibrationConfig,
               export_cfg: ExportConfig, out: str | Path, aliases: dict[str, str] | None = None,
               reference: str = "teacher", temperature: bool = False, workers: int = 1) -> PoolIndex:
    """Export every model in every build precision of ``export.formats``, score each, write ``out`` whole.

    ``aliases`` name a model by another name (``pruned`` -> the level ``prune.ratio`` keeps, what a
    pinned profile ships). ``temperature``: fit one per single network on the decision half of the
    validation images and fold it in (``compression.temperature``); the index records T and the
    NLL/ECE before and after on the scoring half. ``workers`` > 1 exports that many models at a time, each
    in its own process (``in_processes``). Returns the index (also written as ``out/index.json``).
    """
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise EdgeCompressError(f"candidate models must have distinct names, got {names}")
    if reference not in names:
        raise EdgeCompressError(f"the reference model {reference!r} is not in the pool ({', '.join(names)})")
    formats = tuple(f for f in export_cfg.formats if f.split(".")[0] in BUILD_PRECISIONS)
    if not formats:
        raise EdgeCompressError(f"export.formats {list(export_cfg.formats)} has no int8/fp16/fp32 artifact for "
                                f"the candidate pool; add one (e.g. int8.tflite)")
    pool_cfg = replace(export_cfg, formats=formats, dynamic=False)
    keep, scoring = _eval_split(ds, cfg.val_samples)
    x_sel, y_sel = ds.normalize(ds.val.x[:keep]), ds.val.y[:keep]
    x_eval = ds.normalize(scoring.x)
    train = (ds.normalize(ds.train.x), ds.train.y) if export_cfg.qat.enabled else None
    out = Path(out)
    scratch = Path(tempfile.mkdtemp(prefix="edgecompress-pool."))
    candidates: list[PoolEntry] = []
    pytorch: dict[str, Any] = {}
    tempered: dict[str, Any] = {}
    try:
        one = partial(_model_candidates, scratch=scratch, formats=formats, calib=calib, cfg=cfg, pool_cfg=pool_cfg,
                      select=(x_sel, y_sel), score=(x_eval, scoring.y), train=train, temperature=temperature,
                      total=len(models))
        jobs = [(i + 1, pm) for i, pm in enumerate(models) if pm.exportable]
        done = {name: rest for name, *rest in in_processes(one, jobs, workers)}
        for pm in models:
            if not pm.exportable:  # the user's exported program or ONNX graph: the reference, scored in PyTorch
                score = _scores(pm.model.eval(), x_eval, scoring.y)
                score["accuracy"] = _pooled(score["accuracy"], len(scoring.y), _right(pm.model, x_sel, y_sel), keep)
                pytorch[pm.name] = {k: score[k] for k in ("accuracy", "nll", "ece")}
                continue
            pytorch[pm.name], fit, found = done[pm.name]
            if fit is not None:
                tempered[pm.name] = fit
            candidates += found
        # The reference on the test images, which no build decision uses: the build states this validation-to-
        # test gap and warns when a floor is met on validation by less than it.
        ref_model = next(pm for pm in models if pm.name == reference).model.eval()
        test_accuracy = _scores(ref_model, ds.normalize(ds.test.x), ds.test.y)["accuracy"]
        save_npz_split(scratch / "valset.npz", scoring, ds.class_names)
        save_npz_split(scratch / "testset.npz", ds.test, ds.class_names)
        index = PoolIndex(
            scored_on={"split": "validation", "images": int(len(scoring.y)), "skipped_first": keep,
                       "accuracy_images": int(len(ds.val.y)),
                       "why": "the first images drive the accuracy-aware int8 ONNX, the cascades' thresholds and the "
                              "temperatures; these never did. A file whose export decided nothing on them (all but "
                              "the int8 ONNX and the cascades) has its accuracy on every validation image "
                              "(accuracy_images); NLL, ECE and agreement are on these"},
            reference={"model": reference, **pytorch[reference], "test_accuracy": test_accuracy},
            aliases=dict(aliases or {}), pytorch=pytorch,
            temperature=tempered, candidates=tuple(candidates))
        write_index(scratch, index)
        swap_in(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return index


def _model_candidates(job: tuple[int, PoolModel], scratch: Path, formats: tuple[str, ...], calib: np.ndarray,
                      cfg: CalibrationConfig, pool_cfg: ExportConfig, select: tuple[np.ndarray, np.ndarray],
                      score: tuple[np.ndarray, np.ndarray], train: tuple[np.ndarray, np.ndarray] | None,
                      temperature: bool, total: int) -> tuple[str, dict[str, float], dict[str, Any] | None,
                                                              list[PoolEntry]]:
    """(name, PyTorch scores, temperature fit or None, index entries) of pool model number ``job[0]``: every
    format of ``formats`` exported into ``scratch/<name>`` and scored on the ``score`` images."""
    i, pm = job
    t0 = time.perf_counter()
    if isinstance(pm.model, EarlyExitNet):
        log.info(f"{i}/{total} {pm.name}: cascades")
        scores, found = cascade_candidates(pm, scratch / pm.name, formats, select, score)
        return pm.name, scores, None, found
    fit = None
    # Models with members or heads keep their own calibration (the ensemble's is the point of it).
    if temperature and can_fold(pm.model) and not pm.uncertainty:
        pm, fit = _tempered(pm, *select, *score)
    log.info(f"{i}/{total} {pm.name}: {', '.join(formats)}")
    results = export_all(pm.model.eval(), pm.meta, scratch / pm.name, calib, cfg, *score, pm.parent,
                         pm.meta.get("params_hash", ""), export_cfg=pool_cfg, x_val=select[0], y_val=select[1],
                         train=train)
    # The decision images score every file whose export decided nothing on them, and the PyTorch model.
    n, extra = len(score[1]), len(select[1])
    pytorch = {k: results["pytorch"][k] for k in ("accuracy", "nll", "ece")}
    pytorch["accuracy"] = _pooled(pytorch["accuracy"], n, _right(pm.model, *select), extra)
    found = []
    for art in formats:
        r = results[art]
        path = scratch / pm.name / art
        accuracy, images = r["accuracy"], n
        if not _decided(r) and extra:
            hits = run_artifact(path, read_json(f"{path}.json", "sidecar"), select[0]).argmax(1) == select[1]
            accuracy, images = _pooled(r["accuracy"], n, int(hits.sum()), extra), n + extra
        found.append(PoolEntry(
            **_identity(pm.name, art), path=f"{pm.name}/{art}", size_bytes=r["size_bytes"],
            # What a device downloads (budgets.download_mb): the Huffman-coded package of the file.
            package_bytes=len(pack_file(path)),
            sha256=file_sha256(path), accuracy=accuracy, accuracy_images=images, nll=r["nll"], ece=r["ece"],
            top1_agreement=r["top1_agreement"], uncertainty=pm.uncertainty,
            float_layers=tuple(r["float_layers"]) if "float_layers" in r else None))
    log.info(f"{pm.name}: done in {time.perf_counter() - t0:.0f} s")
    return pm.name, pytorch, fit, found


def _identity(model: str, art: str) -> dict[str, str]:
    """The fields that name a candidate in the index: ``<model>/<artifact>`` and what the artifact is."""
    a = REGISTRY[art]
    return {"name": f"{model}/{art}", "model": model, "precision": a.precision, "format": a.format,
            "engine": a.engine}


def cascade_candidates(pm: PoolModel, out: Path, formats: tuple[str, ...], decide: tuple[np.ndarray, np.ndarray],
                       score: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, float], list[PoolEntry]]:
    """(PyTorch scores, index entries) of early-exit model ``pm`` as cascades in the fp32 formats of
    ``formats``: thresholds chosen on the ``decide`` images (within the early_exit stage's max_drop), then
    every cascade scored on the ``score`` images through its own runtime, each image leaving where the
    device would let it (``cascade_predict``: the runner's rule)."""
    net: EarlyExitNet = pm.model
    max_drop = float(pm.meta["params"]["early_exit"].get("max_drop", EarlyExitConfig.max_drop))
    choice = choose_thresholds(exit_probabilities(net, torch.from_numpy(decide[0])), decide[1], max_drop)
    x, y = score
    results = export_cascade(net, pm.meta["data"], out, choice, decide[0][:64],
                             [a for a in CASCADE_ARTIFACTS if a in formats], pm.parent, pm.meta.get("params_hash", ""))

    def metrics(exit_logits: list[np.ndarray]) -> dict[str, Any]:
        probs = [softmax(lg.astype(np.float64)) for lg in exit_logits]
        pred, leave = cascade_predict(probs, choice.thresholds)
        m = classification_metrics(np.stack(probs)[leave, np.arange(len(y))], y)
        fractions = [float((leave == k).mean()) for k in range(len(probs))]
        return {"accuracy": m["accuracy"], "nll": m["nll"], "ece": m["ece"], "exit_fractions": fractions, "pred": pred}

    with torch.no_grad():
        reference = metrics([o.numpy() for o in net.eval().forward_exits(torch.from_numpy(x))])
    entries = []
    for art, r in results.items():
        manifest = Path(r["manifest"])
        segments = [out / seg["file"] for seg in r["segments"]]
        got = metrics(run_segments(manifest, x))
        entries.append(PoolEntry(
            **_identity(pm.name, art), path=f"{pm.name}/{manifest.name}", segments=tuple(f.name for f in segments),
            size_bytes=sum(f.stat().st_size for f in segments),
            package_bytes=manifest.stat().st_size + sum(len(pack_file(f)) for f in segments),
            sha256=entry_digest(manifest, segments), accuracy=got["accuracy"], accuracy_images=len(y),
            nll=got["nll"], ece=got["ece"],
            top1_agreement=float((got["pred"] == reference["pred"]).mean()), uncertainty=False,
            thresholds=tuple(choice.as_dict()["thresholds"]), exit_fractions=tuple(got["exit_fractions"]),
            macs_to_exit=(pm.meta.get("metrics") or {}).get("macs_to_exit")))
    return {k: reference[k] for k in ("accuracy", "nll", "ece")}, entries
