"""Checkpoints that carry what made them: arch, data stats, params, parent artifact, metrics.

Only tensors and JSON-able values are stored, so loading uses ``torch.load(weights_only=True)``
(no arbitrary pickles); a JSON sidecar beside each ``.pt`` lets people and tools read the
metadata without torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import save_torch, write_json
from edgecompress.models import arch_of, build_model
from edgecompress.usermodel import layer_shapes, rebuild_user, restore_pruned


def params_hash(params: Any) -> str:
    """Short stable hash of a params section (what made an artifact)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(path: str | Path, model: nn.Module, arch: dict[str, Any], meta: dict[str, Any]) -> None:
    """Save weights + arch + metadata atomically, plus ``<path>.json`` with everything but weights."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"arch": arch, "meta": json.loads(json.dumps(meta, default=str)), "state_dict": state}
    save_torch(payload, path)  # byte-identical for identical runs (dvc.lock's md5 stays put)
    write_json(Path(str(path) + ".json"), {"arch": arch, **payload["meta"]})


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """(arch, meta, state dict) of a checkpoint file, or one clear error if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise EdgeCompressError(f"checkpoint {path} does not exist; run the stage that produces it (dvc repro)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return payload["arch"], payload["meta"], payload["state_dict"]
    except Exception as e:  # torch raises many types for truncated/corrupt files
        raise EdgeCompressError(f"checkpoint {path} is unreadable or corrupt ({type(e).__name__}: {e}); "
                                f"delete it and re-run dvc repro") from e


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint; returns (model in eval mode, metadata with 'arch')."""
    arch, meta, state = read_checkpoint(path)
    if arch.get("kind") == "user":  # the user's own classifier: its factory, exported program or ONNX graph
        return rebuild_user(arch, state, f"checkpoint {path}"), {"arch": arch, **meta}
    shapes = arch.get("layer_shapes")
    model = build_model({k: v for k, v in arch.items() if k != "layer_shapes"})
    if shapes:  # a structurally pruned network its arch's widths cannot describe (a pruned teacher)
        return restore_pruned(model, shapes, state, f"checkpoint {path}").eval(), {"arch": arch, **meta}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise EdgeCompressError(f"checkpoint {path}: weights do not match its arch {arch}: {e}") from e
    return model.eval(), {"arch": arch, **meta}


def arch_after_pruning(model: nn.Module, arch: dict[str, Any]) -> dict[str, Any]:
    """The arch of ``model``, built from ``arch`` and then structurally pruned.

    Our students describe their channels themselves (``arch_of``); any other network (a pruned
    teacher, the user's module) keeps its original arch plus the pruned layers' shapes, which
    ``load_checkpoint`` applies to a freshly built copy before loading the weights.
    """
    if arch.get("kind") in ("mobilenet", "multihead"):
        return arch_of(model)
    return {**arch, "layer_shapes": layer_shapes(model)}
