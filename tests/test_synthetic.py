"""The synthetic-set file: round trip, exports, and clear errors for files that are not ours."""
from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from dd_core.data import load_dataset
from dd_core.synthetic import SyntheticFileError, SyntheticSet, check_ipc, init_synthetic


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_round_trip_keeps_images_labels_and_provenance(digits, tmp_path):
    syn = init_synthetic(digits, 2, seed=3, method="dm")
    syn.images = syn.images * 3.0  # out of the [0, 1] pixel range: must not be clipped on save
    syn.config = {"lr_img": 1.0, "dsa": True}
    back = SyntheticSet.load(syn.save(tmp_path / "s.safetensors"))
    assert torch.equal(back.images, syn.images) and torch.equal(back.labels, syn.labels)
    assert back.images.dtype == torch.float32 and back.labels.dtype == torch.int64
    assert (back.dataset, back.classes, back.mean, back.std) == (syn.dataset, syn.classes, syn.mean, syn.std)
    assert (back.method, back.ipc, back.seed, back.config) == ("dm", 2, 3, {"lr_img": 1.0, "dsa": True})


def test_metadata_is_the_documented_strings(digits, tmp_path):
    from safetensors import safe_open

    path = init_synthetic(digits, 1).save(tmp_path / "s.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == {"images", "labels"}
    for key in ("dataset", "classes", "mean", "std", "method", "ipc", "seed", "steps", "config", "version"):
        assert isinstance(meta[key], str)
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]


def test_corrupt_and_foreign_files_get_clear_errors(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(SyntheticFileError, match="not a readable .safetensors"):
        SyntheticSet.load(bad)
    foreign = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    with pytest.raises(SyntheticFileError, match="not a Distillery synthetic set"):
        SyntheticSet.load(foreign)
    with pytest.raises(SyntheticFileError, match="does not exist"):
        SyntheticSet.load(tmp_path / "missing.safetensors")


def test_exports_grid_and_imagefolder(digits, tmp_path):
    syn = init_synthetic(digits, 3)
    img = syn.grid_image(upscale=1)
    assert img.size == (3 * 9 + 1, 10 * 9 + 1)  # 3 columns and 10 rows of 8x8 images with 1 px gaps
    with zipfile.ZipFile(io.BytesIO(syn.imagefolder_zip())) as zf:
        names = zf.namelist()
    assert len(names) == 30 and names[0].startswith("0/") and names[0].endswith(".png")


def test_ipc_limits(digits):
    with pytest.raises(ValueError, match="at least 1"):
        check_ipc(digits, 0)
    with pytest.raises(ValueError, match="at most 139"):
        check_ipc(digits, 140)
    check_ipc(digits, 139)


def test_a_saved_set_records_the_code_version_that_made_it(tmp_path, monkeypatch):
    from dd_core import synthetic

    syn = init_synthetic(load_dataset("digits"), 1, seed=0)
    monkeypatch.setattr(synthetic, "code_version", lambda: "abc1234")
    path = syn.save(tmp_path / "made.safetensors")
    loaded = SyntheticSet.load(path)
    assert loaded.extra_meta["code_version"] == "abc1234"
    monkeypatch.setattr(synthetic, "code_version", lambda: "def5678-dirty")  # re-saved by later code
    assert SyntheticSet.load(loaded.save(tmp_path / "again.safetensors")).extra_meta["code_version"] == "abc1234"


def test_code_version_without_git_falls_back_cleanly(tmp_path, monkeypatch):
    import subprocess

    from dd_core import version

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    exported = tmp_path / "VERSION"
    monkeypatch.setattr(version, "EXPORTED", exported)
    version.code_version.cache_clear()
    try:
        assert version.code_version() == "unknown"  # no git, no export file
        exported.write_text("$Format:%h$\n")  # the repository's unexpanded placeholder
        version.code_version.cache_clear()
        assert version.code_version() == "unknown"
        exported.write_text("1a2b3c4\n")  # as `git archive` writes it
        version.code_version.cache_clear()
        assert version.code_version() == "1a2b3c4"
    finally:
        version.code_version.cache_clear()
