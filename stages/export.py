"""DVC stage: export the ONNX and TFLite artifacts of ``export.formats``, each verified on the test set.

The accuracy-aware int8 ONNX check runs on the validation split (``calibrate.val_samples`` images),
never on the test set; QAT (``export.qat.enabled``) fine-tunes on the training split."""

import shutil
from pathlib import Path

import numpy as np

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint
from edgecompress.data import save_npz_split
from edgecompress.errors import EdgeCompressError, friendly_main
from edgecompress.export import ExportConfig, export_all
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
    ecfg = ExportConfig.from_dict(section(params, "export"), "params.yaml:export")
    model, meta = load_checkpoint(args.model)
    try:
        calib = np.load(args.calibration)["x"]
    except (OSError, KeyError, ValueError) as e:
        raise EdgeCompressError(f"calibration set {args.calibration} is missing or corrupt ({e}); "
                                f"re-run the calibrate stage (dvc repro calibrate)") from e
    ds = stage.data(params)
    out = Path(args.out)
    # Build everything in a scratch dir beside the output and swap it in at the end, so a failed
    # export never leaves a half-written artifact directory behind.
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    x_test = ds.normalize(ds.test.x)
    x_val, y_val = ds.normalize(ds.val.x[:cfg.val_samples]), ds.val.y[:cfg.val_samples]
    train = (ds.normalize(ds.train.x), ds.train.y) if ecfg.qat.enabled else None
    try:
        results = export_all(model, meta, tmp, calib, cfg, x_test, ds.test.y, args.model, meta["params_hash"],
                             export_cfg=ecfg, x_val=x_val, y_val=y_val, train=train)
        save_npz_split(tmp / "testset.npz", ds.test, ds.class_names)  # raw uint8 images for on-device checks
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(args.metrics, results)


if __name__ == "__main__":
    main()
