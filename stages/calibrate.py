"""DVC stage: choose and save the int8 calibration set every export uses."""

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint
from edgecompress.compression.calibrate import CalibrationConfig, build_calibration_set
from edgecompress.config import read
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json


@friendly_main
def main() -> str:
    args, params = stage.setup("Select the calibration set.", [
        ("--model", "model checkpoint to be quantized"), ("--out", "calibration .npz"), ("--metrics", "metrics JSON")])
    cfg = read(params, "calibrate", CalibrationConfig)
    model, _ = load_checkpoint(args.model)  # fail early on a missing/corrupt parent
    metrics = build_calibration_set(model, stage.data(params), cfg, args.out)
    write_json(args.metrics, {**metrics, "parent": args.model})
    return f"{metrics['samples']} calibration images ({cfg.selection})"


if __name__ == "__main__":
    main()
