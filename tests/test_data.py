"""Dataset loading on tiny synthetic files of every supported format (no real dataset needed)."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from edgecompress.data import DataConfig, Dataset, Split, load_dataset, save_npz_split
from edgecompress.data.formats import FASHION_MNIST_CLASSES
from edgecompress.errors import EdgeCompressError
from edgecompress.config import from_dict

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Distinct random uint8 images; pixel 0 encodes the index so splits can be told apart."""
    x = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    x.reshape(n, -1)[:, 0] = np.arange(n) % 256
    return x


def _write_idx(path: Path, arr: np.ndarray, magic: int, gz: bool) -> None:
    data = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_idx(root: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, classes: int = 10) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte", _images(n, (28, 28), seed), 0x803, gz)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % classes, 0x801, gz)
    return root


# ---- formats -----------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_idx_gz_and_plain(tmp_path: Path, gz: bool) -> None:
    root = make_idx(tmp_path / "fashion", gz=gz)
    ds = load_dataset(DataConfig(path=str(root), val_fraction=0.1))
    assert ds.train.x.shape == (54, 1, 28, 28) and ds.val.x.shape == (6, 1, 28, 28)
    assert ds.test.x.shape == (20, 1, 28, 28)
    assert ds.train.x.dtype == np.uint8 and ds.train.y.dtype == np.int64
    assert ds.class_names == FASHION_MNIST_CLASSES  # 10 classes + "fashion" in the path
    assert ds.num_classes == 10 and ds.channels == 1 and ds.image_size == 28 and ds.input_shape == (1, 28, 28)
    # The test split is untouched and in file order.
    np.testing.assert_array_equal(ds.test.y, np.arange(20) % 10)
    # train + val together are exactly the original train set.
    both = np.concatenate([ds.train.x, ds.val.x])[:, 0, 0, 0]
    assert sorted(both.tolist()) == list(range(60))


def test_idx_names_generic_and_classes_txt(tmp_path: Path) -> None:
    root = make_idx(tmp_path / "digits", classes=3)
    assert load_dataset(DataConfig(path=str(root))).class_names == ["0", "1", "2"]
    (root / "classes.txt").write_text("cat\ndog\n\nbird\n")
    assert load_dataset(DataConfig(path=str(root))).class_names == ["cat", "dog", "bird"]


def test_imagefolder_gray_rgb_and_resize(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def write(root: Path, mode: str, size: tuple[int, int] = (8, 6)) -> None:
        for split, n in (("train", 4), ("test", 2)):
            for cls in ("b_cls", "a_cls"):
                (root / split / cls).mkdir(parents=True)
                for i in range(n):
                    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
                    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / split / cls / f"{i}.png")

    write(tmp_path / "gray", "L")
    ds = load_dataset(DataConfig(format="imagefolder", path=str(tmp_path / "gray"), val_fraction=0.25))
    assert ds.class_names == ["a_cls", "b_cls"]
    assert ds.input_shape == (1, 6, 8) and len(ds.train) == 6 and len(ds.val) == 2 and len(ds.test) == 4
    assert sorted(ds.test.y.tolist()) == [0, 0, 1, 1]

    write(tmp_path / "rgb", "RGB")
    ds = load_dataset(DataConfig(format="imagefolder", path=str(tmp_path / "rgb"), image_size=5))
    assert ds.input_shape == (3, 5, 5)
    ds = load_dataset(DataConfig(format="imagefolder", path=str(tmp_path / "gray"), grayscale=False))
    assert ds.channels == 3  # forced RGB

    # Mixed sizes without image_size: a clear error naming data.image_size.
    Image.fromarray(np.zeros((9, 9), np.uint8), "L").save(tmp_path / "gray" / "test" / "a_cls" / "odd.png")
    with pytest.raises(EdgeCompressError, match=r"odd\.png is 9x9.*data\.image_size"):
        load_dataset(DataConfig(format="imagefolder", path=str(tmp_path / "gray")))


def test_imagefolder_errors(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a").mkdir(parents=True)
    cfg = DataConfig(format="imagefolder", path=str(tmp_path))
    with pytest.raises(EdgeCompressError, match=r"train/a has no images"):
        load_dataset(cfg)
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(EdgeCompressError, match=r"same class folders.*missing: \['b'\]"):
        load_dataset(cfg)


@pytest.mark.parametrize("side", [12, 20], ids=["over-limit-warning", "over-twice-limit-error"])
def test_imagefolder_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int) -> None:
    # Pillow warns above MAX_IMAGE_PIXELS and raises DecompressionBombError above twice that; both stop loading.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / split / "a" / "ok.png")  # 64 pixels: fine
    Image.new("L", (side, side)).save(tmp_path / "train" / "a" / "big.png")
    with pytest.raises(EdgeCompressError, match=rf"big\.png is {side * side} pixels, over Pillow's "
                                                rf"decompression-bomb limit of 100 pixels.*resize the images") as info:
        load_dataset(DataConfig(format="imagefolder", path=str(tmp_path)))
    assert "\n" not in str(info.value)


CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def make_cifar(root: Path, per_batch: int = 6, label_max: int = 10, protocol: int = pickle.DEFAULT_PROTOCOL,
               old_numpy: bool = False) -> Path:
    """CIFAR-10 python batches pickled by the installed numpy; ``old_numpy`` renames numpy._core to numpy.core
    the way numpy 1.x (and the real, Python 2 pickled CIFAR-10) writes it."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(obj: object) -> bytes:
        raw = pickle.dumps(obj, protocol=protocol)
        if old_numpy:  # protocol <= 2 names globals as text lines, so the module can be renamed in place
            assert protocol <= 2
            raw = raw.replace(b"numpy._core.", b"numpy.core.")
        return raw

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"training batch", b"filenames": [b"img.png"] * per_batch,
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, label_max, per_batch)],
                 b"num": np.int64(per_batch)}  # a numpy scalar, which pickles through multiarray.scalar
        (root / name).write_bytes(dump(batch))
        assert (b"numpy.core.multiarray" if old_numpy else b"numpy._core.multiarray") in (root / name).read_bytes()
    (root / "batches.meta").write_bytes(dump({b"label_names": CIFAR_NAMES, b"num_vis": 3072}))
    return root


CIFAR_PICKLES = {"protocol-2": (2, False), "default-protocol": (pickle.DEFAULT_PROTOCOL, False),
                 "protocol-5": (5, False), "numpy.core-protocol-2": (2, True)}


@pytest.mark.parametrize("case", CIFAR_PICKLES, ids=list(CIFAR_PICKLES))
def test_cifar10(tmp_path: Path, case: str) -> None:
    protocol, old_numpy = CIFAR_PICKLES[case]
    root = make_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol, old_numpy=old_numpy)
    ds = load_dataset(DataConfig(format="cifar10", path=str(root), val_fraction=0.2))
    assert ds.train.x.shape == (24, 3, 32, 32) and len(ds.val) == 6 and ds.test.x.shape == (6, 3, 32, 32)
    assert ds.class_names[0] == "airplane" and ds.num_classes == 10
    # The parent folder (where the tarball was extracted) works too.
    assert len(load_dataset(DataConfig(format="cifar10", path=str(tmp_path))).test) == 6
    # Pixel layout: row-major R plane, then G, then B.
    raw = pickle.loads((root / "test_batch").read_bytes())[b"data"]
    np.testing.assert_array_equal(ds.test.x.reshape(6, -1), raw)


def test_cifar10_bad_labels(tmp_path: Path) -> None:
    root = make_cifar(tmp_path / "c", label_max=12)
    with pytest.raises(EdgeCompressError, match=r"labels range 0\.\.1[01] but there are 10 classes"):
        load_dataset(DataConfig(format="cifar10", path=str(root)))


class _Payload:
    """Pickles as a call to ``func(*args)``: what a crafted dataset file would run on a plain pickle.load."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
@pytest.mark.parametrize("func", ["os.system", "builtins.exec"])
def test_cifar10_malicious_pickle_is_refused(tmp_path: Path, protocol: int, func: str) -> None:
    import os

    root = make_cifar(tmp_path / "c")
    marker = tmp_path / "pwned"
    payload = (_Payload(os.system, f"touch {marker}") if func == "os.system"
               else _Payload(exec, f"open({str(marker)!r}, 'w').close()"))
    # A real-looking batch with the payload in one entry: the numpy array before it still loads fine.
    batch = {b"data": np.zeros((6, 3072), np.uint8), b"labels": [0] * 6, b"batch_label": payload}
    (root / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
    # Protocol 2 spells builtins the Python 2 way, __builtin__.
    qualname = {"os.system": rf"{os.system.__module__}\.system", "builtins.exec": r"(builtins|__builtin__)\.exec"}[func]
    with pytest.raises(EdgeCompressError, match=rf"data_batch_1 refers to {qualname}, which a CIFAR-10 batch "
                                                rf"never contains; refusing to load it") as info:
        load_dataset(DataConfig(format="cifar10", path=str(root)))
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_cifar10_codecs_only_decode_bytes(tmp_path: Path) -> None:
    import codecs

    # Protocol 2 pickles bytes as _codecs.encode(text, "latin1"); any other codec is not a bytes object.
    root = make_cifar(tmp_path / "c")
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": _Payload(codecs.encode, "abc", "rot13")}))
    with pytest.raises(EdgeCompressError, match=r"batches\.meta is not a CIFAR-10 python pickle \(ValueError: "
                                                r"_codecs\.encode\(str, 'rot13'\)"):
        load_dataset(DataConfig(format="cifar10", path=str(root)))


def test_npz_directory_nhwc_and_float(tmp_path: Path) -> None:
    x = _images(30, (7, 7, 3), 0)  # NHWC
    np.savez(tmp_path / "train.npz", x=x, y=np.arange(30) % 3, class_names=np.array(["a", "b", "c"]))
    np.savez(tmp_path / "test.npz", x=x[:10].astype(np.float32) / 255.0, y=np.arange(10) % 3)
    ds = load_dataset(DataConfig(format="npz", path=str(tmp_path), val_fraction=0.0))
    assert ds.input_shape == (3, 7, 7) and len(ds.val) == 0 and ds.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.train.x, x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds.test.x, x[:10].transpose(0, 3, 1, 2))  # float round-trips exactly


def test_npz_single_file_and_save_roundtrip(tmp_path: Path) -> None:
    f = tmp_path / "mnistlike.npz"
    np.savez(f, x_train=_images(40, (12, 12), 0), y_train=np.arange(40) % 4,
             x_test=_images(12, (12, 12), 1), y_test=np.arange(12) % 4)
    ds = load_dataset(DataConfig(format="npz", path=str(f)))
    assert ds.input_shape == (1, 12, 12) and ds.class_names == ["0", "1", "2", "3"]

    # save_npz_split writes the directory layout's train/test files; the name needs no .npz suffix.
    out = tmp_path / "out"
    save_npz_split(out / "train.npz", ds.train, ds.class_names)
    save_npz_split(out / "test.npz", ds.test, ["w", "x", "y", "z"])
    save_npz_split(out / "plain_name", ds.test, ds.class_names)
    assert sorted(p.name for p in out.iterdir()) == ["plain_name", "test.npz", "train.npz"]  # no temp files left
    back = load_dataset(DataConfig(format="npz", path=str(out), val_fraction=0.0))
    np.testing.assert_array_equal(back.train.x, ds.train.x)
    np.testing.assert_array_equal(back.test.y, ds.test.y)
    assert back.class_names == ["0", "1", "2", "3"]


# ---- split, limit, statistics ------------------------------------------------------------------

def _val_ids(ds: Dataset) -> list[int]:
    return ds.val.x[:, 0, 0, 0].tolist()


def test_val_split_is_seeded(tmp_path: Path) -> None:
    root = make_idx(tmp_path / "d", n_train=200)
    a, b = (load_dataset(DataConfig(path=str(root), seed=3)) for _ in range(2))
    c = load_dataset(DataConfig(path=str(root), seed=4))
    assert _val_ids(a) == _val_ids(b) and len(a.val) == 20
    assert _val_ids(a) != _val_ids(c)
    assert not set(_val_ids(a)) & set(a.train.x[:, 0, 0, 0].tolist())


def test_limit(tmp_path: Path) -> None:
    root = make_idx(tmp_path / "d", n_train=100, n_test=40)
    cfg = DataConfig(path=str(root), limit=30, val_fraction=0.2)
    ds = load_dataset(cfg)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 30)
    assert _val_ids(ds) == _val_ids(load_dataset(cfg))
    assert ds.test.x[:, 0, 0, 0].tolist() != list(range(30))  # a random subset, not the first 30
    assert len(load_dataset(DataConfig(path=str(root), limit=1000)).test) == 40  # limit > N keeps all
    m = ds.meta()
    assert m["sizes"] == {"train": 24, "val": 6, "test": 30} and m["limit"] == 30 and m["seed"] == 0
    assert m["format"] == "idx" and m["input_shape"] == [1, 28, 28] and m["path"] == str(root)
    json.dumps(m)  # JSON-able


def test_stats_on_train_only_and_normalize(tmp_path: Path) -> None:
    # Train is all 0 and 255 (mean 0.5, std 0.5); a bright test set must not move the stats.
    x = np.zeros((20, 3, 4, 4), np.uint8)
    x[:10] = 255
    x[:, 1] = 51  # a constant channel: std falls back to 1 instead of dividing by zero
    np.savez(tmp_path / "train.npz", x=x, y=np.arange(20) % 2)
    np.savez(tmp_path / "test.npz", x=np.full((5, 3, 4, 4), 255, np.uint8), y=np.zeros(5, np.int64))
    ds = load_dataset(DataConfig(format="npz", path=str(tmp_path), val_fraction=0.0))
    assert ds.mean == pytest.approx((0.5, 0.2, 0.5)) and ds.std == pytest.approx((0.5, 1.0, 0.5))
    z = ds.normalize(ds.train.x)
    assert z.dtype == np.float32 and z.shape == ds.train.x.shape
    assert z[:, 0].mean() == pytest.approx(0.0, abs=1e-6) and z[:, 0].std() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(ds.normalize(ds.test.x)[:, 0], 1.0, atol=1e-6)  # (1 - 0.5) / 0.5
    t = ds.to_tensor(ds.test.x)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (5, 3, 4, 4)


def test_split_and_dataset_validate() -> None:
    with pytest.raises(EdgeCompressError, match="uint8"):
        Split(np.zeros((2, 1, 3, 3), np.float32), np.zeros(2, np.int64))
    with pytest.raises(EdgeCompressError, match="int64"):
        Split(np.zeros((2, 1, 3, 3), np.uint8), np.zeros(3, np.int64))
    s = Split(np.zeros((2, 1, 3, 3), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(EdgeCompressError, match="one value per channel"):
        Dataset(s, s, s, ["a"], mean=(0.1, 0.2), std=(1.0, 1.0))


# ---- config and error messages -----------------------------------------------------------------

def test_from_dict() -> None:
    cfg = from_dict(DataConfig, {"format": "npz", "path": "/d", "val_fraction": 0, "limit": 50, "seed": 2})
    assert cfg == DataConfig(format="npz", path="/d", val_fraction=0.0, limit=50, seed=2)
    assert from_dict(DataConfig, {}) == DataConfig()
    assert from_dict(DataConfig, None) == DataConfig()


def _truncated(tmp_path: Path) -> DataConfig:
    root = make_idx(tmp_path / "d", gz=False)
    p = root / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    return DataConfig(path=str(root))


def _bad_magic(tmp_path: Path) -> DataConfig:
    root = make_idx(tmp_path / "d")
    _write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(20, np.uint8), 0x803, gz=True)
    return DataConfig(path=str(root))


def _missing_file(tmp_path: Path) -> DataConfig:
    root = make_idx(tmp_path / "d")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    return DataConfig(path=str(root))


def _count_mismatch(tmp_path: Path) -> DataConfig:
    root = make_idx(tmp_path / "d")
    _write_idx(root / "train-labels-idx1-ubyte", np.zeros(59, np.uint8), 0x801, gz=True)
    return DataConfig(path=str(root))


def _too_few_names(tmp_path: Path) -> DataConfig:
    root = make_idx(tmp_path / "d")
    (root / "classes.txt").write_text("a\nb\n")
    return DataConfig(path=str(root))


def _bad_png(tmp_path: Path) -> DataConfig:
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("P", (4, 4)).save(tmp_path / split / "a" / "ok.png")  # palette images are converted
    (tmp_path / "test" / "a" / "broken.png").write_bytes(b"not a png")
    return DataConfig(format="imagefolder", path=str(tmp_path), image_size=3)


def _png_text_bomb(tmp_path: Path) -> DataConfig:
    cfg = _bad_png(tmp_path)
    (tmp_path / "test" / "a" / "broken.png").unlink()
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)  # a few kB on disk
    Image.new("L", (4, 4)).save(tmp_path / "train" / "a" / "text.png", pnginfo=info)
    return cfg


def _npz_file(tmp_path: Path, **arrays: np.ndarray) -> DataConfig:
    base = {"x_train": np.zeros((12, 4, 4), np.uint8), "y_train": np.zeros(12, np.int64),
            "x_test": np.zeros((3, 4, 4), np.uint8), "y_test": np.zeros(3, np.int64)}
    np.savez(tmp_path / "d.npz", **{k: v for k, v in {**base, **arrays}.items() if v is not None})  # None drops
    return DataConfig(format="npz", path=str(tmp_path / "d.npz"))


def _corrupt_npz(tmp_path: Path) -> DataConfig:
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04 garbage")
    return DataConfig(format="npz", path=str(tmp_path / "d.npz"))


def _npy_named_npz(tmp_path: Path) -> DataConfig:
    with open(tmp_path / "d.npz", "wb") as f:
        np.save(f, np.zeros(3))
    return DataConfig(format="npz", path=str(tmp_path / "d.npz"))


LOAD_ERRORS = {
    "missing dir": (lambda t: DataConfig(path=str(t / "nope")),
                    r"data path .*nope does not exist.*apt-get install dataset-fashion-mnist"),
    "missing file": (_missing_file, r"missing file .*t10k-labels-idx1-ubyte\[\.gz\]"),
    "bad magic": (_bad_magic, r"t10k-labels-idx1-ubyte\.gz is not an IDX label file: magic number 0x00000803.*swapped"),
    "truncated": (_truncated, r"train-images-idx3-ubyte is truncated: header says 60 x 28 x 28"),
    "count mismatch": (_count_mismatch, r"has 59 labels but .* has 60 images"),
    "classes.txt short": (_too_few_names, r"labels go up to 9 but .*classes\.txt names only 2"),
    "npz missing": (lambda t: DataConfig(format="npz", path=str(t)), r"missing file .*train\.npz"),
    "bad image": (_bad_png, r"cannot read image .*broken\.png"),
    "png text bomb": (_png_text_bomb, r"cannot read image .*text\.png: Decompressed data too large"),
    "npz float range": (lambda t: _npz_file(t, x_test=np.full((3, 4, 4), 2.0)), r"d\.npz:x_test is float but not in \[0, 1\]"),
    "npz bad shape": (lambda t: _npz_file(t, x_train=np.zeros((12, 4, 4, 5), np.uint8)), r"x_train has shape \(12, 4, 4, 5\)"),
    "npz negative label": (lambda t: _npz_file(t, y_train=np.full(12, -1)), r"train labels range -1\.\.-1"),
    "npz missing key": (lambda t: _npz_file(t, x_test=None), r"lacks arrays \['x_test'\]"),
    "npz corrupt": (_corrupt_npz, r"cannot read .*d\.npz as npz"),
    "npy not npz": (_npy_named_npz, r"d\.npz is a single \.npy array"),
}


@pytest.mark.parametrize("case", LOAD_ERRORS, ids=list(LOAD_ERRORS))
def test_load_errors(tmp_path: Path, case: str) -> None:
    make_cfg, pattern = LOAD_ERRORS[case]
    with pytest.raises(EdgeCompressError, match=pattern) as info:
        load_dataset(make_cfg(tmp_path))
    assert "\n" not in str(info.value)  # one line for friendly_main


CONFIG_ERRORS = {
    "unknown format": ({"format": "tfrecord"}, r"format='tfrecord' is not supported; allowed: idx, imagefolder, cifar10, npz"),
    "val_fraction high": ({"val_fraction": 0.7}, r"params\.yaml:data: val_fraction=0\.7 .*\[0, 0\.5\]"),
    "val_fraction str": ({"val_fraction": "0.1"}, r"val_fraction='0\.1'"),
    "unknown key": ({"val_frac": 0.1}, r"params\.yaml:data: unknown key 'val_frac' \(did you mean 'val_fraction'\?\); allowed keys: format, path"),
    "limit small": ({"limit": 5}, r"limit=5 .*>= 10"),
    "limit float": ({"limit": 100.0}, r"limit=100\.0"),
    "no default path": ({"format": "npz"}, r"path is required for format 'npz'"),
    "image_size on idx": ({"image_size": 32}, r"image_size only applies to format 'imagefolder'"),
    "grayscale type": ({"format": "imagefolder", "path": "/x", "grayscale": "yes"}, r"grayscale='yes'.*true, false or null"),
    "not a mapping": ([1, 2], r"params\.yaml:data must be a mapping"),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS, ids=list(CONFIG_ERRORS))
def test_config_errors(case: str) -> None:
    d, pattern = CONFIG_ERRORS[case]
    with pytest.raises(EdgeCompressError, match=pattern):
        from_dict(DataConfig, d, "params.yaml:data")  # type: ignore[arg-type]


def test_direct_construction_errors_say_dataconfig() -> None:
    with pytest.raises(EdgeCompressError, match=r"DataConfig: val_fraction=-0\.1"):
        DataConfig(val_fraction=-0.1)


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    ds = load_dataset(DataConfig(limit=500))
    assert ds.train.x.shape[1:] == (1, 28, 28) and len(ds.train) + len(ds.val) == 500 and len(ds.test) == 500
    assert ds.num_classes == 10 and ds.class_names == FASHION_MNIST_CLASSES
    assert 0.2 < ds.mean[0] < 0.4 and 0.25 < ds.std[0] < 0.45
