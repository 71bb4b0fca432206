"""edgecompress: train, distill, prune, quantize and export image classifiers for edge targets."""

__version__ = "0.1.0"
