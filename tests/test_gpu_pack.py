"""The CIFAR-10 pack that travels to a GPU machine (benchmarks/gpu_pack.py): unpacking gives back the
same bytes, and the engine decodes the same pixels from them as the manifest records."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import gpu_pack


def _jpeg_copy(root, per_class=(3, 2)):
    """A stand-in for the JPEG copy: cifar10-jpeg/{train,test}/<class>/NNNN.jpg, 32x32 colour."""
    from PIL import Image

    from dd_core.data import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    for split, n in zip(gpu_pack.SPLITS, per_class):
        for c in CIFAR10_CLASSES:
            folder = root / gpu_pack.FOLDER / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.jpg")


@pytest.fixture
def packed(tmp_path):
    _jpeg_copy(tmp_path / "src")
    manifest = gpu_pack.pack(tmp_path / "src", tmp_path / "pack", per_class=None, test_per_class=None)
    return tmp_path, manifest


def test_unpack_gives_back_the_bytes_and_the_pixels(packed):
    tmp_path, manifest = packed
    assert manifest["splits"]["train"]["files"] == 30 and manifest["splits"]["test"]["files"] == 20
    row = gpu_pack.unpack(tmp_path / "pack", tmp_path / "root")
    assert row["train_bytes_match"] and row["test_bytes_match"]
    for split in gpu_pack.SPLITS:
        src = gpu_pack.listing(tmp_path / "src" / gpu_pack.FOLDER / split)
        out = gpu_pack.listing(tmp_path / "root" / gpu_pack.FOLDER / split)
        assert [p.relative_to(tmp_path / "src") for p in src] == [p.relative_to(tmp_path / "root") for p in out]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(src, out))
        decoded = gpu_pack.pixels_digest(tmp_path / "root" / gpu_pack.FOLDER / split)
        assert decoded["pixels_sha256"] == manifest["splits"][split]["pixels_sha256"]


def test_same_files_same_pack_and_a_changed_file_is_noticed(packed):
    tmp_path, manifest = packed
    again = gpu_pack.pack(tmp_path / "src", tmp_path / "pack2", per_class=None, test_per_class=None)
    assert again["pack_sha256"] == manifest["pack_sha256"]  # sorted members, zeroed times: deterministic
    gpu_pack.unpack(tmp_path / "pack", tmp_path / "root")
    victim = gpu_pack.listing(tmp_path / "root" / gpu_pack.FOLDER / "test")[0]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    files = gpu_pack.listing(tmp_path / "root" / gpu_pack.FOLDER / "test")
    assert gpu_pack.files_digest(tmp_path / "root" / gpu_pack.FOLDER / "test", files) != \
        manifest["splits"]["test"]["files_sha256"]


def test_subset_pack_and_the_code_stamp(tmp_path):
    _jpeg_copy(tmp_path / "src")
    manifest = gpu_pack.pack(tmp_path / "src", tmp_path / "pack", per_class=1, test_per_class=1)
    assert manifest["splits"]["train"]["files"] == 10 and manifest["splits"]["test"]["images"] == 10
    stamp = json.loads((tmp_path / "pack" / gpu_pack.STAMP).read_text())
    assert gpu_pack.stamped_version(tmp_path / "pack") == stamp["code_version"]
    stamp["code_sha256"] = "0" * 64  # code that differs from what was stamped says so
    (tmp_path / "pack" / gpu_pack.STAMP).write_text(json.dumps(stamp))
    assert gpu_pack.stamped_version(tmp_path / "pack").endswith("+changed-after-stamp")
    assert gpu_pack.stamped_version(tmp_path / "nowhere") == "unknown"
