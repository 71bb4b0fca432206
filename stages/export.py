"""DVC stage: export ONNX fp32/int8 and TFLite fp32/int8, each verified on the test set."""

from pathlib import Path

import numpy as np

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint
from edgecompress.errors import EdgeCompressError, friendly_main
from edgecompress.export import export_all
from edgecompress.fileio import write_json
from edgecompress.params import section
from edgecompress.quantize import CalibrationConfig
from edgecompress.train import from_dict


@friendly_main
def main() -> None:
    args, params = stage.setup("Export and verify artifacts.", [
        ("--model", "model checkpoint"), ("--calibration", "calibration .npz from the calibrate stage"),
        ("--out", "artifact directory"), ("--metrics", "metrics JSON")])
    cfg = from_dict(CalibrationConfig, section(params, "calibrate"), "params.yaml:calibrate")
    model, meta = load_checkpoint(args.model)
    try:
        calib = np.load(args.calibration)["x"]
    except (OSError, KeyError, ValueError) as e:
        raise EdgeCompressError(f"calibration set {args.calibration} is missing or corrupt ({e}); "
                                f"re-run the calibrate stage (dvc repro calibrate)") from e
    ds = stage.data(params)
    out = Path(args.out)
    x_test = ds.normalize(ds.test.x)
    results = export_all(model, meta, out, calib, cfg, x_test, ds.test.y, args.model, meta["params_hash"])
    from edgecompress.data import save_npz_split
    save_npz_split(out / "testset.npz", ds.test, ds.class_names)  # raw uint8 images for on-device checks
    write_json(args.metrics, results)


if __name__ == "__main__":
    main()
