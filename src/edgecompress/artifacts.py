"""The artifact registry: every file the export stage can write, and what it is.

Export (what to write, in which order), the target profiles (which artifact a target runs), the
report (which artifacts to measure) and params validation all read this one table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Artifact:
    """One exported model file inside the export directory."""

    format: str  # onnx | tflite
    precision: str  # fp32 | int8 (static, calibrated) | fp16 (weights) | dynamic (int8 weights, runtime scales)

    @property
    def name(self) -> str:
        """File name inside the export directory, e.g. ``int8.tflite``."""
        return f"{self.precision}.{self.format}"

    @property
    def engine(self) -> str:
        """The runtime that runs it (deploy.runner's engine names)."""
        return ENGINE_FOR_FORMAT[self.format]


ENGINE_FOR_FORMAT = {"onnx": "onnxruntime", "tflite": "litert"}

# In writing order: derived artifacts come after the fp32 file of their format.
REGISTRY: dict[str, Artifact] = {a.name: a for a in (
    Artifact("onnx", "fp32"), Artifact("onnx", "int8"), Artifact("onnx", "fp16"), Artifact("onnx", "dynamic"),
    Artifact("tflite", "fp32"), Artifact("tflite", "int8"), Artifact("tflite", "fp16"))}
# export.formats' default: everything but dynamic.onnx (which ``export.dynamic: true`` adds).
DEFAULT_FORMATS = tuple(n for n in REGISTRY if n != "dynamic.onnx")
FORMATS = tuple(dict.fromkeys(a.format for a in REGISTRY.values()))
PRECISIONS = tuple(dict.fromkeys(a.precision for a in REGISTRY.values()))
# What a target's build may ship: dynamic int8 quantizes activations at run time per call, so its latency
# is not comparable with the static-int8 one and it is not offered.
BUILD_PRECISIONS = ("int8", "fp16", "fp32")
# A multi-head student also gets these: mean and per-head probabilities (not targets' artifacts).
HEAD_ARTIFACTS = ("heads.onnx", "heads.tflite")
# An early-exit cascade's manifest beside its segment files (compression.cascade; the runner's is_cascade).
CASCADE_SUFFIX = ".cascade.json"
