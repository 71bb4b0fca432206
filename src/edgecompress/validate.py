"""The validation pass that runs before any stage does work (``dvc repro``'s first stage, and
``edgecompress validate``): every params.yaml section read into its typed config, every target
profile the check stage will run loaded, and the choices that span sections checked together."""

from __future__ import annotations

import difflib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from edgecompress.active.select import SelectConfig
from edgecompress.artifacts import ENGINE_FOR_FORMAT
from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.cluster import ClusterConfig
from edgecompress.compression.export import ExportConfig
from edgecompress.compression.finetune import is_slice_name
from edgecompress.compression.pool import PoolConfig
from edgecompress.compression.prune import PruneConfig, level_name
from edgecompress.config import read
from edgecompress.data import DataConfig, Dataset
from edgecompress.deploy.check import CheckConfig
from edgecompress.deploy.targets import load_target
from edgecompress.errors import EdgeCompressError
from edgecompress.training.distill import DistillConfig
from edgecompress.training.early_exit import EarlyExitConfig
from edgecompress.training.elastic import ElasticConfig, check_distill, slice_specs
from edgecompress.training.elastic_net import ElasticMobileNet
from edgecompress.training.students import StudentsConfig
from edgecompress.training.teacher import TeacherConfig
from edgecompress.usermodel import user_file

SECTIONS: dict[str, type] = {"active_learning": SelectConfig, "candidates": PoolConfig, "data": DataConfig, "train_teacher": TeacherConfig, "distill": DistillConfig,
                             "prune": PruneConfig, "calibrate": CalibrationConfig, "export": ExportConfig,
                             "cluster": ClusterConfig, "early_exit": EarlyExitConfig, "elastic": ElasticConfig,
                             "students": StudentsConfig, "check": CheckConfig}


def validate_params(params: dict[str, Any], path: str | Path = "params.yaml",
                    targets_dir: str | Path = "targets") -> dict[str, Any]:
    """All of ``params`` checked; returns the configs by section. Raises the first problem found."""
    for name in params:
        if name not in SECTIONS:
            close = difflib.get_close_matches(str(name), list(SECTIONS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise EdgeCompressError(f"{path}: unknown section {name!r}{hint}; sections: {', '.join(SECTIONS)}")
    cfg = {name: read(params, name, cls, path) for name, cls in SECTIONS.items()}
    teacher, distill, prune = cfg["train_teacher"], cfg["distill"], cfg["prune"]
    export, check = cfg["export"], cfg["check"]
    if distill.source == "ensemble" and teacher.ensemble_size < 2:
        raise EdgeCompressError(f"{path}: distill.source: ensemble needs train_teacher.ensemble_size >= 2 "
                                f"(it is {teacher.ensemble_size}); set distill.source: teacher or grow the ensemble")
    if distill.heads > 1 and distill.heads != teacher.ensemble_size:
        raise EdgeCompressError(f"{path}: distill.heads={distill.heads} but the ensemble has "
                                f"{teacher.ensemble_size} members (train_teacher.ensemble_size): head i learns "
                                f"from member i, so set distill.heads: {teacher.ensemble_size}")
    if prune.source == "ensemble" and teacher.ensemble_size < 2:
        raise EdgeCompressError(f"{path}: prune.source: ensemble needs train_teacher.ensemble_size >= 2; "
                                f"set prune.source: auto or teacher")
    _check_user_models(path, teacher, distill, prune)
    if cfg["elastic"].enabled:
        check_distill(distill)  # our MobileNet only, from the stored soft targets
    _check_pruned_slice(path, prune.source_model, distill, cfg["elastic"])
    levels = {level_name(r) for r in (prune.ratio, *prune.ladder)} if prune.ladder else set()
    unknown = [m for m in cfg["cluster"].models if m.startswith("pruned-") and m not in levels]
    if unknown:
        raise EdgeCompressError(f"{path}: cluster.models names {unknown}, which are not levels of the pruning "
                                f"ladder ({', '.join(sorted(levels)) or 'prune.ladder is empty'}); name one of "
                                f"those, or student / pruned")
    for name in check.targets:
        profile = load_target(Path(targets_dir) / f"{name}.yaml")
        if profile.artifact is None:
            offered = [f"{p}.{f}" for p in profile.search.precisions for f in ("onnx", "tflite")
                       if ENGINE_FOR_FORMAT[f] in profile.search.engines]
            if not set(offered) & set(export.artifacts):
                raise EdgeCompressError(f"{profile.where}: its build may use {', '.join(offered)}, none of which "
                                        f"the candidates stage writes (export.formats in {path}: "
                                        f"{list(export.formats)}); add one of them to export.formats or widen the "
                                        f"profile's build.precisions / build.engines")
        elif profile.artifact.filename not in export.artifacts:
            raise EdgeCompressError(
                f"{profile.where} runs {profile.artifact.filename}, which the export stage does not write "
                f"(export.formats in {path}: {list(export.formats)}); add {profile.artifact.filename} to "
                f"export.formats or change the profile's artifact")
    return cfg


def _user_file(value: str, key: str, path: str | Path) -> None:
    """A user's model file (``file.py:factory`` or a path) must exist inside ``user/`` once resolved."""
    target = value.rsplit(":", 1)[0] if ":" in value else value
    if ":" in value and not target.endswith(".py"):
        # A checkpoint may name code only inside user/ (with its sha256), so a factory from an installed package
        # would train a teacher that no later stage could load: refuse it here, with the one-line way around.
        raise EdgeCompressError(f"{path}: {key}: {value!r} names an installed package; write user/{target.split('.')[-1]}.py "
                                f"holding 'from {target} import {value.rsplit(':', 1)[1]}' and name "
                                f"'user/{target.split('.')[-1]}.py:{value.rsplit(':', 1)[1]}'")
    try:
        user_file(value, key)  # resolved first: user/../x.py and symlinks out of user/ are outside
    except EdgeCompressError as e:
        raise EdgeCompressError(f"{path}: {e}") from None
    if not Path(target).is_file():
        raise EdgeCompressError(f"{path}: {key}: {target} not found")


def _check_user_models(path: str | Path, teacher: Any, distill: Any, prune: Any) -> None:
    """A brought teacher or student: its files under ``user/``; what its form cannot do, refused before training."""
    if teacher.source != "train":
        _user_file(teacher.model, "train_teacher.model", path)
        if teacher.weights:
            _user_file(teacher.weights, "train_teacher.weights", path)
    if teacher.init:
        _user_file(teacher.init, "train_teacher.init", path)
    if distill.student:
        _user_file(distill.student, "distill.student", path)
    if teacher.source not in ("exported", "onnx"):
        return
    what = "an ONNX graph" if teacher.source == "onnx" else "a torch.export program"
    needs = [(prune.source_model == "teacher", "prune.source_model: teacher (pruning needs its layers)"),
             (distill.scheme == "online", "distill.scheme: online (a fresh copy of the teacher trains as a peer)"),
             (bool(distill.losses) and any(k != "response" for k in dict(distill.losses)),
              "distill.losses beyond response (feature and relation KD read its layers)")]
    for bad, why in needs:
        if bad:
            raise EdgeCompressError(f"{path}: train_teacher.source: {teacher.source} brings {what}, which cannot "
                                    f"serve {why}; bring the teacher as source: module (code + weights) for that")


def slice_names(distill: DistillConfig, elastic: ElasticConfig) -> list[str]:
    """The slices the elastic stage makes with these params (``elastic-w050``, ...), known before any training.

    A name depends on each slice's widths and depths and on the student's stages (distill's channels and
    strides), never on the data: the network is built with stand-in input channels and classes.
    """
    arch = distill.arch(cast(Dataset, SimpleNamespace(channels=1, num_classes=2)))
    net = ElasticMobileNet(1, 2, arch["channels"], arch["strides"], elastic.widths)
    return [f"elastic-{net.name(spec)}" for spec in slice_specs(net, elastic)]


def _check_pruned_slice(path: str | Path, source_model: str, distill: DistillConfig, elastic: ElasticConfig) -> None:
    """``prune.source_model: elastic-<name>`` needs the elastic stage on, making that slice."""
    if not is_slice_name(source_model):
        return
    if not elastic.enabled:
        raise EdgeCompressError(f"{path}: prune.source_model: {source_model} prunes a slice of the elastic student, "
                                f"but elastic.enabled is false (no slices are made); set elastic.enabled: true, or "
                                f"prune.source_model: student")
    made = slice_names(distill, elastic)
    if source_model not in made:
        asked = elastic.slices if isinstance(elastic.slices, str) else list(elastic.slices)
        raise EdgeCompressError(f"{path}: prune.source_model: {source_model} is not a slice the elastic stage makes: "
                                f"elastic.slices: {asked} makes {', '.join(made)}; name one of those, or add the "
                                f"slice to elastic.slices")


def remove_stale_members(members: tuple[int, ...], directories: list[str | Path]) -> list[Path]:
    """Delete ``member-<i>.*`` files of ensemble members no longer in ``train_teacher.members``.

    DVC forgets the train_member@i stages of a shrunk ensemble but leaves their files, so old
    checkpoints and metrics would keep showing up in ``dvc metrics show`` and beside the new ones.
    """
    removed = []
    for d in directories:
        for f in sorted(Path(d).glob("member-*")):
            index = f.name.split(".")[0].removeprefix("member-")
            if index.isdigit() and int(index) not in members:
                f.unlink()
                removed.append(f)
    return removed
