"""Datasets: file formats (``formats``) and the splits every stage trains and evaluates on (``datasets``)."""

from edgecompress.data.datasets import (DataConfig, Dataset, Split, load_dataset, load_npz_split, normalize_images,
                                        save_npz_split)

__all__ = ["DataConfig", "Dataset", "Split", "load_dataset", "load_npz_split", "normalize_images", "save_npz_split"]
