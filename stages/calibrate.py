"""DVC stage: choose and save the int8 calibration set every export uses."""

import numpy as np

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint
from edgecompress.errors import friendly_main
from edgecompress.fileio import atomic_path, write_json
from edgecompress.params import section
from edgecompress.quantize import CalibrationConfig, embeddings, select_calibration
from edgecompress.train import from_dict


@friendly_main
def main() -> None:
    args, params = stage.setup("Select the calibration set.", [
        ("--model", "model checkpoint to be quantized"), ("--out", "calibration .npz"), ("--metrics", "metrics JSON")])
    cfg = from_dict(CalibrationConfig, section(params, "calibrate"), "params.yaml:calibrate")
    model, meta = load_checkpoint(args.model)  # fail early on a missing/corrupt parent
    ds = stage.data(params)
    emb = None
    if cfg.selection == "kcenter":
        # Diversity is measured on what the fp32 model sees: its pooled features of every training image.
        emb = embeddings(model, ds.normalize(ds.train.x))
    idx = select_calibration(ds.train.y, cfg, emb)
    x = ds.normalize(ds.train.x[idx])
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, x=x, y=ds.train.y[idx], indices=idx, config=np.array(str(cfg.__dict__)))
    counts = np.bincount(ds.train.y[idx], minlength=ds.num_classes)
    write_json(args.metrics, {"samples": int(len(idx)), "method": cfg.method, "per_channel": cfg.per_channel,
                              "selection": cfg.selection, "per_class": counts.tolist(),
                              "input_range": [float(x.min()), float(x.max())], "parent": args.model})


if __name__ == "__main__":
    main()
