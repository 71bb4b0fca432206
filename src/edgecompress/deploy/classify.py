"""Classify an image on the device with the installed release: the class name and its probability.

Every release holds this file beside runner.py, the model and its sidecar, so an application runs

    python /opt/edgecompress/current/classify.py image.npy        # prints {"class": "Sneaker", ...}

or imports it (``sys.path.insert(0, "/opt/edgecompress/current"); from classify import Classifier``).
The image is a uint8 .npy in (C, H, W), (H, W, C) or (H, W) for one channel, as the model's sidecar
sizes it; the sidecar's normalization, layout and quantization are applied by the runner's own
``preprocess``, so the device feeds the model exactly as the check and the smoke test did. Standard
library and numpy only at module level, like runner.py (loaded from beside this file).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def _runner() -> Any:
    """runner.py from this file's folder (the release's own copy; in the package, the one beside it)."""
    spec = importlib.util.spec_from_file_location("edgecompress_runner", HERE / "runner.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


class Classifier:
    """The release's model, loaded once; ``classify`` one image at a time."""

    def __init__(self, release: str | Path = HERE, threads: int | None = None, runner: Any = None) -> None:
        release = Path(release)
        self.runner = runner or _runner()
        model = json.loads((release / "MANIFEST.json").read_text())["model"]
        self.sidecar = self.runner.read_sidecar(release / f"{model}.json")
        self.session = self.runner.load_session(release / model, threads=threads, batch=1)
        self.names = self.sidecar.get("class_names")

    def to_chw(self, image: np.ndarray) -> np.ndarray:
        """A uint8 image as (C, H, W) for the sidecar's channel count."""
        shape = list(self.sidecar["input_shape"])
        c = shape[1] if self.sidecar["layout"] == "NCHW" else shape[3]
        if image.dtype != np.uint8:
            raise self.runner.RunnerError(f"the image is {image.dtype}; give uint8 pixels (0-255)")
        if image.ndim == 2 and c == 1:
            image = image[None]
        elif image.ndim == 3 and image.shape[0] != c and image.shape[-1] == c:
            image = image.transpose(2, 0, 1)
        if image.ndim != 3 or image.shape[0] != c:
            raise self.runner.RunnerError(f"the image has shape {list(image.shape)}; the model wants {c} channel(s) "
                                          f"as (C, H, W), (H, W, C) or, for one channel, (H, W)")
        return image

    def classify(self, image: np.ndarray, top: int = 1) -> dict[str, Any]:
        """``{"class": name, "probability": p, "top": [[name, p], ...]}`` for one uint8 image."""
        x = self.runner.preprocess(self.to_chw(image)[None], self.sidecar)
        self.runner._check_shape(x, self.sidecar)
        logits = self.runner.postprocess(self.session.run(x), self.sidecar)[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        order = np.argsort(-p)[:max(1, top)]
        name = (lambda k: self.names[k] if self.names else str(k))
        return {"class": name(int(order[0])), "index": int(order[0]), "probability": round(float(p[order[0]]), 6),
                "top": [[name(int(k)), round(float(p[k]), 6)] for k in order]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="classify.py", description=__doc__.split("\n")[0])
    ap.add_argument("image", help="uint8 .npy image")
    ap.add_argument("--release", default=str(HERE), help="release folder (default: this file's)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--top", type=int, default=1, help="also list the N most likely classes")
    args = ap.parse_args(argv)
    runner = _runner()
    try:
        clf = Classifier(args.release, args.threads, runner)
        image = np.load(args.image, allow_pickle=False)
        print(json.dumps(clf.classify(image, args.top)))
    except runner.RunnerError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    except (OSError, ValueError, KeyError) as e:  # no such image or release, not an .npy, no MANIFEST.json
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
