"""Your model, not only ours: a classifier brought as code + weights, as a ``torch.export`` program, or as ONNX.

Three forms, one result: an ``nn.Module`` that maps normalized (N, C, H, W) float images to
(N, classes) logits, checked on a batch before any training starts.

* ``module``: ``"my_models.py:build_classifier"`` (a file, or an importable module) names a factory
  called with ``num_classes``, ``in_channels`` and ``image_size``; its weights come from a state dict
  loaded with ``weights_only=True``. A real module: KD of every kind, pruning, fine-tuning and QAT apply.
* ``exported``: a self-contained ``torch.export`` program (``.pt2``); none of the user's code is
  needed to run it. It can teach (response KD, the ensemble) and be evaluated; what needs a module's
  internals (feature KD, pruning) is refused with a clear message (``internals``).
* ``onnx``: an ONNX classifier run by onnxruntime as a frozen teacher; its layout (NCHW/NHWC) and
  whether it normalizes itself are declared, and checked on a batch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edgecompress.dirs import file_sha256
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import check_pt2

FORMS = ("module", "exported", "onnx")
# dvc.yaml makes the stages that load a user's model depend on this directory, so that a changed file
# re-runs what follows; a file elsewhere would change behind dvc's back (and a checkpoint could name any).
USER_DIR = "user"
# How to fix a program exported for one batch size (its guards fail on any other).
DYNAMIC_BATCH = ("the program was exported for one fixed batch size: export it with a dynamic batch, "
                 "torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))")


def user_file(value: str, where: str) -> Path:
    """The file ``value`` names (``file.py:factory`` or a path), resolved (``..`` and symlinks) and required to
    lie inside this repository's ``user/`` (the working directory's): ``user/../x.py`` and links out are refused."""
    target = value.rsplit(":", 1)[0] if ":" in value else value
    resolved = (Path.cwd() / target).resolve()
    if not resolved.is_relative_to((Path.cwd() / USER_DIR).resolve()):
        raise EdgeCompressError(f"{where}: {target} is outside {USER_DIR}/; put your model files in {USER_DIR}/ "
                                f"(e.g. {USER_DIR}/{Path(target).name}) so that dvc tracks them and a change re-runs "
                                f"the chain")
    return resolved


@dataclass(frozen=True)
class UserModelSpec:
    """Where a user's classifier comes from; ``where`` names the params key in error messages."""

    form: str
    model: str  # module: "user/file.py:factory"; exported: .pt2; onnx: .onnx
    weights: str | None = None  # module only: a state dict (.pt)
    layout: str = "NCHW"  # onnx only: the input layout the graph expects
    normalized_input: bool = True  # onnx only: false = the graph takes x/255 and normalizes itself
    where: str = "train_teacher"

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise EdgeCompressError(f"{self.where}.source: {self.form!r} is not one of train, {', '.join(FORMS)}")
        if not isinstance(self.model, str) or not self.model:
            raise EdgeCompressError(f"{self.where}.model: give the {self.form} to load (e.g. "
                                    f"{'my_models.py:build_classifier' if self.form == 'module' else 'teacher.' + ('pt2' if self.form == 'exported' else 'onnx')})")
        if self.form == "module" and not self.weights:
            raise EdgeCompressError(f"{self.where}.weights: a module needs its trained weights (a state dict saved with "
                                    f"torch.save(model.state_dict(), path))")
        if self.layout not in ("NCHW", "NHWC"):
            raise EdgeCompressError(f"{self.where}.layout: {self.layout!r} is not NCHW or NHWC")

    def check_user_dir(self) -> None:
        """Every file this spec names lies inside ``user/`` (an installed package's factory is not a file)."""
        if self.form == "module" and not self.model.rsplit(":", 1)[0].endswith(".py"):
            raise EdgeCompressError(f"{self.where}.model: {self.model!r} names an installed package; a checkpoint may "
                                    f"name code only in user/: write user/<name>.py that imports the factory")
        user_file(self.model, f"{self.where}.model")
        if self.weights:
            user_file(self.weights, f"{self.where}.weights")


def load_factory(spec: str, where: str = "train_teacher.model") -> Callable[..., Any]:
    """``"path/to/file.py:name"`` or ``"package.module:name"`` -> the callable it names."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise EdgeCompressError(f"{where}: {spec!r} must be 'file.py:factory' or 'package.module:factory'")
    target, name = spec.split(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise EdgeCompressError(f"{where}: {path} not found (paths are relative to the repository root)")
            mod_name = f"edgecompress_user_{path.stem}"
            loader = importlib.util.spec_from_file_location(mod_name, path)
            assert loader is not None and loader.loader is not None
            module = importlib.util.module_from_spec(loader)
            sys.modules[mod_name] = module  # dataclasses and pickling look modules up by name
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except EdgeCompressError:
        raise
    except Exception as e:  # the user's file may raise anything while importing
        raise EdgeCompressError(f"{where}: importing {target} failed: {type(e).__name__}: {e}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise EdgeCompressError(f"{where}: {target} has no callable {name!r}")
    return factory


def build_module(spec: str, num_classes: int, in_channels: int, image_size: int,
                 where: str = "train_teacher.model") -> nn.Module:
    """Call the factory with the dataset's shape; it must return an ``nn.Module``."""
    factory = load_factory(spec, where)
    try:
        model = factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    except Exception as e:
        raise EdgeCompressError(f"{where}: {spec}(num_classes={num_classes}, in_channels={in_channels}, "
                                f"image_size={image_size}) failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise EdgeCompressError(f"{where}: {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str | Path, where: str = "train_teacher.weights") -> nn.Module:
    """Load a state dict (or ``{"state_dict": ...}``) strictly; a mismatch names the first tensors."""
    path = Path(path)
    if not path.is_file():
        raise EdgeCompressError(f"{where}: {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EdgeCompressError(f"{where}: {path} cannot be loaded with weights_only=True, which refuses files that "
                                f"would run code when loaded (a pickled model object, not a state dict): "
                                f"{type(e).__name__}: {str(e).splitlines()[0]}; save torch.save(model.state_dict(), "
                                f"path) instead") from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EdgeCompressError(f"{where}: {path} holds no state dict (name -> tensor)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}" for label, items in
                 (("missing from the file", missing), ("not in the model", unexpected),
                  ("shape (file vs model)", shapes)) if items]
        raise EdgeCompressError(f"{where}: {path} does not fit the architecture ({'; '.join(parts)}); the factory "
                                f"must build the network the weights were trained as")
    model.load_state_dict(state)
    return model.eval()


class OnnxClassifier(nn.Module):
    """An ONNX classifier as a frozen teacher: onnxruntime runs it; no gradient flows through it."""

    def __init__(self, path: str | Path, layout: str = "NCHW", normalized_input: bool = True,
                 mean: tuple[float, ...] = (), std: tuple[float, ...] = ()) -> None:
        super().__init__()
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise EdgeCompressError(f"train_teacher.model: {path} not found")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EdgeCompressError(f"train_teacher.model: onnxruntime cannot load {path}: {e}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise EdgeCompressError(f"train_teacher.model: {path} has {len(inputs)} graph inputs "
                                    f"({', '.join(i.name for i in inputs) or 'none'}); a classifier takes one, the image "
                                    f"batch (N, C, H, W or N, H, W, C): export it with that input")
        self.input_name = inputs[0].name
        # The graph's hash as a buffer: code that identifies a teacher by its tensors (stored soft
        # targets) tells two ONNX teachers apart.
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        self.parameter_count = sum(int(np.prod(t.dims)) for t in graph.initializer)  # read by count_params
        self.register_buffer("sha256", torch.tensor(list(bytes.fromhex(file_sha256(path))), dtype=torch.uint8))
        self.layout, self.normalized_input = layout, normalized_input
        self.mean = np.asarray(mean, np.float32).reshape(1, -1, 1, 1) if mean else None
        self.std = np.asarray(std, np.float32).reshape(1, -1, 1, 1) if std else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().cpu().float().numpy()
        if not self.normalized_input:  # the graph normalizes itself: hand it x/255 again
            if self.mean is None or self.std is None:
                raise EdgeCompressError("normalized_input: false needs the dataset's mean and std")
            a = a * self.std + self.mean
        if self.layout == "NHWC":
            a = a.transpose(0, 2, 3, 1)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(a)})[0]
        return torch.from_numpy(np.asarray(out, np.float32))


class ExportedClassifier(nn.Module):
    """A ``torch.export`` program as a module; its train/eval behaviour was fixed when it was exported."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> "ExportedClassifier":
        # An exported graph refuses train()/eval(); recording the flag lets code that freezes a teacher run.
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.program(x)
        except (AssertionError, RuntimeError) as e:
            if "Guard failed" in str(e) or "to be equal to" in str(e):  # a static batch met another batch size
                raise EdgeCompressError(f"the torch.export teacher cannot take a batch of {x.shape[0]}; "
                                        f"{DYNAMIC_BATCH}") from None
            raise


def load_exported(path: str | Path, where: str = "train_teacher.model") -> nn.Module:
    """A ``torch.export`` program (``.pt2``) as a module that runs without the user's code; an archive
    that could run code while loading (``check_pt2``) is refused before torch opens it."""
    path = Path(path)
    if not path.is_file():
        raise EdgeCompressError(f"{where}: {path} not found")
    check_pt2(path, where)
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise EdgeCompressError(f"{where}: {path} is not a torch.export program "
                                f"({type(e).__name__}: {e}); save one with torch.export.save(torch.export.export("
                                f"model, (example,)), path)") from None
    return ExportedClassifier(program.module())


def internals(model: nn.Module, what: str) -> None:
    """Refuse ``what`` (feature KD, pruning, ...) for a model whose layers are not reachable."""
    if isinstance(model, (OnnxClassifier, ExportedClassifier)):
        kind = "an ONNX graph" if isinstance(model, OnnxClassifier) else "a torch.export program"
        raise EdgeCompressError(f"{what} needs the model's layers, but this teacher is {kind}; bring it as "
                                f"source: module (code + weights) for that, or use response KD")


def check_classifier(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int,
                     where: str = "train_teacher") -> None:
    """Run batches of 2 and 3 zero images; the output must be (n, num_classes) logits. Two sizes, so that a
    model fixed to one batch size (a static torch.export program) fails here, not in the middle of training."""
    for n in (2, 3):
        x = torch.zeros(n, *input_shape)
        try:
            with torch.no_grad():  # the caller puts it in eval mode (an exported program has no train/eval switch)
                out = model(x)
        except EdgeCompressError:
            raise
        except Exception as e:
            raise EdgeCompressError(f"{where}: the model cannot take input of shape {tuple(x.shape)} (N, C, H, W, "
                                    f"normalized): {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, num_classes):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise EdgeCompressError(f"{where}: the model returned {got} for {n} images; a classifier for this "
                                    f"dataset must return ({n}, {num_classes}) logits ({num_classes} classes)")


def load_user_model(spec: UserModelSpec, input_shape: tuple[int, int, int], num_classes: int,
                    mean: tuple[float, ...] = (), std: tuple[float, ...] = ()) -> nn.Module:
    """The user's classifier in any of the three forms, checked on a batch, in eval mode."""
    c, h, _ = input_shape
    if spec.form == "module":
        model = build_module(spec.model, num_classes, c, h, f"{spec.where}.model")
        load_weights(model, spec.weights or "", f"{spec.where}.weights")
    else:
        model = load_exported(spec.model, f"{spec.where}.model") if spec.form == "exported" else \
            OnnxClassifier(spec.model, spec.layout, spec.normalized_input, mean, std)
    model.eval()
    try:
        check_classifier(model, input_shape, num_classes, spec.where)
    except EdgeCompressError as e:
        if spec.form == "exported" and DYNAMIC_BATCH in str(e):  # ExportedClassifier names a guard that failed
            raise EdgeCompressError(f"{spec.where}.model: {spec.model}: {DYNAMIC_BATCH}") from None
        raise
    return model


# Layer attributes that channel pruning changes; with them a fresh module from the factory can take a
# pruned module's weights (torch-pruning's own state_dict pickles whole modules, which weights_only refuses).
_SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                "num_channels")


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """JSON-able per-layer channel attributes of ``model`` (what a checkpoint stores beside the weights)."""
    out: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        attrs = {a: int(getattr(m, a)) for a in _SHAPE_ATTRS if isinstance(getattr(m, a, None), int)}
        if attrs:
            out[name] = attrs
    return out


def restore_pruned(model: nn.Module, shapes: dict[str, dict[str, int]], state: dict[str, torch.Tensor],
                   where: str = "checkpoint") -> nn.Module:
    """Reshape a freshly built ``model`` to ``shapes`` and load ``state`` into it (strictly).

    The factory builds the unpruned network; the layers' attributes and parameter shapes are then
    set to the pruned ones, so the saved weights fit and the forward pass sees the pruned channels.
    """
    modules = dict(model.named_modules())
    unknown = [n for n in shapes if n not in modules]
    if unknown:
        raise EdgeCompressError(f"{where}: layers {unknown[:3]} are not in the model the factory builds; the "
                                f"factory changed since this checkpoint was written")
    for name, attrs in shapes.items():
        for attr, value in attrs.items():
            setattr(modules[name], attr, value)
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        m = modules.get(owner)
        if m is None:
            continue  # load_state_dict below names it
        if leaf in m._parameters and m._parameters[leaf] is not None:
            m._parameters[leaf] = nn.Parameter(torch.empty_like(tensor), requires_grad=m._parameters[leaf].requires_grad)
        elif leaf in m._buffers and m._buffers[leaf] is not None:
            m._buffers[leaf] = torch.empty_like(tensor)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise EdgeCompressError(f"{where}: the weights do not fit the rebuilt model: {str(e).splitlines()[0]}") from None
    for m in model.modules():
        # Checkpoints from before layer_shapes kept num_channels: an affine GroupNorm is as wide as its weight.
        if isinstance(m, nn.GroupNorm) and m.affine:
            m.num_channels = int(m.weight.shape[0])
    return model


def user_arch(spec: UserModelSpec, model: nn.Module, input_shape: tuple[int, int, int], num_classes: int,
              mean: tuple[float, ...] = (), std: tuple[float, ...] = ()) -> dict[str, Any]:
    """The JSON arch a checkpoint stores for a user's model (kind ``user``): how to rebuild it.

    A module is rebuilt from its factory and its layer shapes (pruned or not) and takes the
    checkpoint's tensors; an exported program or ONNX graph is not copied: the arch names the file and
    its sha256, so a changed file is refused instead of silently teaching something else.
    """
    if spec.form == "module":
        return module_arch(spec.model, model, input_shape, num_classes)
    c, h, _ = input_shape
    arch: dict[str, Any] = {"kind": "user", "form": spec.form, "model": spec.model, "num_classes": num_classes,
                            "in_channels": c, "image_size": h}
    arch["sha256"] = file_sha256(spec.model)
    if spec.form == "onnx":
        arch.update(layout=spec.layout, normalized_input=spec.normalized_input, mean=list(mean), std=list(std))
    return arch


def module_arch(factory: str, model: nn.Module, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
    """The arch of a module built by the user's ``factory`` (a teacher brought in, or a student trained here)."""
    c, h, _ = input_shape
    arch: dict[str, Any] = {"kind": "user", "form": "module", "model": factory, "num_classes": num_classes,
                            "in_channels": c, "image_size": h, "layer_shapes": layer_shapes(model)}
    target = factory.rsplit(":", 1)[0]
    if target.endswith(".py"):  # what rebuild_user requires before it imports the file again
        arch["sha256"] = file_sha256(target)
    return arch


def rebuild_user(arch: dict[str, Any], state: dict[str, torch.Tensor], where: str = "checkpoint") -> nn.Module:
    """The model a ``user_arch`` describes, with ``state`` loaded (modules) or its file checked (the others)."""
    form = arch.get("form")
    if form not in FORMS:
        raise EdgeCompressError(f"{where}: user model form {form!r} is not one of {', '.join(FORMS)}")
    path = Path(str(arch.get("model")).rsplit(":", 1)[0] if form == "module" else str(arch.get("model")))
    if form == "module":
        # A checkpoint is data (weights_only), but importing the factory it names runs that file: only a file
        # inside user/ whose bytes match the sha256 recorded when the checkpoint was written.
        if path.suffix != ".py":
            raise EdgeCompressError(f"{where}: arch.model {arch.get('model')!r} is not a file in {USER_DIR}/; a "
                                    f"checkpoint may name only code in this repository's {USER_DIR}/ (copy the factory "
                                    f"there and re-run the stage that wrote the checkpoint)")
        user_file(str(path), f"{where}: arch.model")
    if not path.is_file():
        raise EdgeCompressError(f"{where}: the {form} model {path} it was made from is gone; restore it or re-run "
                                f"the stage that brought it in")
    if file_sha256(path) != arch.get("sha256"):
        raise EdgeCompressError(f"{where}: {path} changed since this checkpoint was written (or it recorded no "
                                f"sha256); re-run the stage that wrote it (dvc repro)")
    if form == "module":
        model = build_module(arch["model"], arch["num_classes"], arch["in_channels"], arch["image_size"],
                             f"{where}: arch.model")
        return restore_pruned(model, arch.get("layer_shapes") or {}, state, where).eval()
    if form == "exported":
        return load_exported(path, where).eval()
    return OnnxClassifier(path, arch.get("layout", "NCHW"), bool(arch.get("normalized_input", True)),
                          tuple(arch.get("mean") or ()), tuple(arch.get("std") or ())).eval()
