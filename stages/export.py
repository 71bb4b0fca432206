"""DVC stage: export the ONNX and TFLite artifacts of ``export.formats``, each verified on the test set."""

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint
from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.export import ExportConfig, export_directory, load_calibration
from edgecompress.config import read
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json


@friendly_main
def main() -> str:
    args, params = stage.setup("Export and verify artifacts.", [
        ("--model", "model checkpoint"), ("--calibration", "calibration .npz from the calibrate stage"),
        ("--out", "artifact directory"), ("--metrics", "metrics JSON")])
    cfg = read(params, "calibrate", CalibrationConfig)
    export_cfg = read(params, "export", ExportConfig)
    model, meta = load_checkpoint(args.model)
    calib = load_calibration(args.calibration)
    results = export_directory(model, meta, args.model, stage.data(params), calib, cfg, export_cfg, args.out)
    write_json(args.metrics, results)
    return ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in results.items() if k != "pytorch" and "accuracy" in v)


if __name__ == "__main__":
    main()
