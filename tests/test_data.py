"""Dataset loaders: the offline default, torchvision formats (real files and files we write), folders."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from dd_core.data import DATASETS, DatasetUnavailable, _load_cached, load_dataset
from dd_core.folder import FolderError, load_folder
from dd_core.registry import UnknownNameError


def test_digits_split_is_the_documented_one():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.num_classes == 10 and ds.class_counts() == torch.bincount(ds.y_train).tolist()
    # normalized with train statistics: mean ~0, std ~1 on the train split
    assert abs(ds.x_train.mean().item()) < 1e-3 and abs(ds.x_train.std().item() - 1) < 1e-2
    shown = ds.denormalize(ds.x_train[:5])
    assert shown.min() >= 0 and shown.max() <= 1


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as err:
        load_dataset("imagenet-21k")
    assert "digits" in str(err.value) and "mnist" in str(err.value)


def _write_idx(path, array: np.ndarray, magic_type: int):
    header = struct.pack(">HBB", 0, magic_type, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") if str(path).endswith(".gz") else open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_loader_reads_idx_files_we_write(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 0x08)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, 0x08)
    ds = DATASETS.get("mnist")(tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert ds.y_train.tolist() == [i % 10 for i in range(30)]
    assert ds.mean == (0.1307,)


def test_missing_torchvision_files_say_where_to_put_them(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvd.MNIST, "download", offline)
    with pytest.raises(DatasetUnavailable) as err:
        DATASETS.get("mnist")(tmp_path / "empty")
    assert "MNIST/raw" in str(err.value) and "DD_DATA_ROOT" in str(err.value)


def test_cifar10_loader_reads_pickled_batches_we_write(tmp_path):
    import pickle

    import torchvision.datasets as tvd

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [n for n, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list]
    for name in names:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    # torchvision checks md5 sums of the official files; ours are stand-ins, so skip that check
    import unittest.mock as mock

    with mock.patch.object(tvd.CIFAR10, "_check_integrity", lambda self: True), \
            mock.patch("torchvision.datasets.cifar.check_integrity", lambda *a, **kw: True):
        ds = DATASETS.get("cifar10")(tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.classes[0] == "c0" and len(ds.mean) == 3


@pytest.mark.parametrize("name,train,test", [("mnist", 60000, 10000), ("fashion_mnist", 60000, 10000)])
def test_real_torchvision_data(real_data_root, name, train, test):
    ds = _load_cached(name, str(real_data_root))
    assert ds.x_train.shape == (train, 1, 28, 28) and ds.x_test.shape == (test, 1, 28, 28)
    assert ds.class_counts() == torch.bincount(ds.y_train, minlength=10).tolist() and min(ds.class_counts()) > 5000
    # the documented normalization gives roughly zero mean, unit std
    assert abs(ds.x_train[:5000].mean().item()) < 0.05 and abs(ds.x_train[:5000].std().item() - 1) < 0.05


def test_folder_dataset_on_real_cifar_jpegs(real_data_root):
    ds = load_folder(str(real_data_root / "cifar10-jpeg-mini"))
    assert ds.x_train.shape == (2000, 3, 32, 32) and ds.x_test.shape == (1000, 3, 32, 32)
    assert ds.classes[0] == "airplane" and ds.num_classes == 10
    assert "train/ and test/" in ds.split_note


def _png_folder(root, classes=("cat", "dog"), per_class=5, size=(12, 10)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_folder_dataset_split_by_fraction(tmp_path):
    _png_folder(tmp_path / "pets")
    ds = load_dataset(f"folder:{tmp_path / 'pets'}")
    assert ds.classes == ("cat", "dog")
    assert len(ds.x_train) == 8 and len(ds.x_test) == 2  # 20% of each class, stratified
    assert ds.x_train.shape[1:] == (3, 12, 12)  # resized to a common square


def test_folder_errors_say_what_to_fix(tmp_path):
    with pytest.raises(FolderError, match="does not exist"):
        load_folder(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(FolderError, match="no images"):
        load_folder(str(tmp_path / "empty"))


def test_dataset_facts_are_fields_known_before_loading():
    from dd_core.data import DatasetFacts, dataset_facts

    digits = load_dataset("digits")
    assert isinstance(digits, DatasetFacts) and not digits.flips and digits.small
    assert (digits.teacher_arch, digits.teacher_epochs) == (dataset_facts("digits").teacher_arch, 30)
    assert not dataset_facts("mnist").flips and dataset_facts("mnist").dc_augment
    assert dataset_facts("cifar10").flips and not dataset_facts("cifar10").dc_augment
    assert dataset_facts("folder:anything") == DatasetFacts()
    with pytest.raises(UnknownNameError, match="digits"):
        dataset_facts("imagenet-21k")


def _cifar_jpeg_copy(root, per_class=(3, 2)):
    """A stand-in for the JPEG copy: cifar10-jpeg/{train,test}/<class>/NNNN.jpg, 32x32 colour."""
    from PIL import Image

    from dd_core.data import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for c in CIFAR10_CLASSES:
            folder = root / "cifar10-jpeg" / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.jpg")


def test_cifar10_from_a_jpeg_copy_in_the_official_class_order_and_cached(tmp_path, caplog):
    from dd_core.cache import cache_dir
    from dd_core.data import CIFAR10_CLASSES

    _cifar_jpeg_copy(tmp_path)
    ds = DATASETS.get("cifar10")(tmp_path)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert ds.classes == CIFAR10_CLASSES and ds.y_train.tolist() == [c for c in range(10) for _ in range(3)]
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.flips and "JPEG" in ds.split_note
    cached = sorted((cache_dir() / "datasets").glob("cifar10-jpeg-*.safetensors"))
    assert len(cached) == 2  # train and test, decoded once
    again = DATASETS.get("cifar10")(tmp_path)  # read back from the cache
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)
    cached[0].write_bytes(b"truncated")  # a broken cache file is rebuilt, not fatal
    with caplog.at_level("WARNING", logger="distillery.cache"):
        assert torch.equal(DATASETS.get("cifar10")(tmp_path).x_train, ds.x_train)
    assert "unusable" in caplog.text


def test_cifar10_jpeg_copy_missing_a_class_says_which(tmp_path):
    from dd_core.jpeg_split import JpegSplitError

    _cifar_jpeg_copy(tmp_path)
    (tmp_path / "cifar10-jpeg" / "train" / "truck").rename(tmp_path / "cifar10-jpeg" / "train" / "lorry")
    with pytest.raises(JpegSplitError, match="truck"):
        DATASETS.get("cifar10")(tmp_path)


@pytest.mark.slow
def test_real_cifar10_jpeg_copy(real_data_root):
    if not (real_data_root / "cifar10-jpeg" / "train").is_dir():
        pytest.skip(f"no CIFAR-10 JPEG copy: put it at $DD_DATA_ROOT/cifar10-jpeg/{{train,test}}/<class>/*.jpg")
    ds = _load_cached("cifar10", str(real_data_root))  # about a minute the first time (decoding), seconds after
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert ds.class_counts() == [5000] * 10 and ds.classes[0] == "airplane" and ds.classes[-1] == "truck"
    assert abs(ds.x_train[:5000].mean().item()) < 0.05
