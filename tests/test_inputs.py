"""A public crowd's inputs: hyperparameter ranges and the memory budget, stops inside an epoch,
upload limits, malformed sets and folders, CLI counts, and what is echoed back (issue 16's defects).
Sessions, idle drops, exports and the feature map's caps are in test_sessions.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from components import distill_run, inputs, runtime
from dd_core.data import load_dataset
from dd_core.labels import HardLabels
from dd_core.methods import METHODS, make_method
from dd_core.methods.base import field_choices, field_range, hyperparameters
from dd_core.synthetic import SyntheticFileError, SyntheticSet, init_synthetic

ROOT = Path(__file__).resolve().parents[1]
OURS = ("dm", "datadam", "dc", "dsa", "random", "herding", "kcenter")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# -- 3. hyperparameter ranges and the memory budget ---------------------------------------------

@pytest.mark.parametrize("name", [m for m in OURS if m in METHODS])
def test_every_numeric_hyperparameter_declares_its_range(name):
    for f in hyperparameters(METHODS.get(name)):
        if isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            assert field_range(f) is not None, f"{name}.{f.name} has no range"
        elif isinstance(f.default, str) and f.name not in ("model", "feature_model"):
            assert field_choices(f) is not None, f"{name}.{f.name} has no choices"


def test_a_value_outside_the_range_is_refused_with_the_range(session):
    req = distill_run.check_request("digits", "", "dm", 1, 2, 0, overrides={"batch_real": 200_000})
    last = list(distill_run.run(session, req))[-1]
    assert last.phase == "error" and "batch_real" in last.text and "1 to 1024" in last.text


def test_a_run_above_the_memory_budget_is_refused(session, monkeypatch):
    monkeypatch.setattr(runtime, "MAX_MEMORY_BYTES", 2**20)  # 1 MB
    last = list(distill_run.run(session, distill_run.check_request("digits", "", "dm", 10, 2, 0)))[-1]
    assert last.phase == "error" and "memory" in last.text and "DISTILLERY_MAX_MEMORY_MB" in last.text


def test_the_memory_estimate_grows_with_ipc_and_batch(digits):
    from dd_core.memory import estimate_bytes

    small = estimate_bytes(make_method("dm", dataset="digits", ipc=1), digits, 1)
    more_ipc = estimate_bytes(make_method("dm", dataset="digits", ipc=10), digits, 10)
    more_real = estimate_bytes(make_method("dm", dataset="digits", ipc=1, batch_real=1024), digits, 1)
    assert 0 < small < more_ipc and small < more_real


# -- 4. evaluation stops inside an epoch; uploads have limits -----------------------------------

def test_evaluation_honours_a_stop_within_an_epoch(digits):
    from dd_core.evaluate import protocol, train_network

    stop = threading.Event()
    calls = []

    class Counting(HardLabels):
        def targets(self, idx, images=None, epoch=0):
            calls.append(len(idx))
            stop.set()  # the cap fires during the first batch
            return super().targets(idx, images, epoch)

    images = digits.x_train[:1024]  # 8 batches of 128 in one epoch
    config = protocol("fast", epochs=1, batch_size=128, model="mlp", dsa=False)
    train_network(images, Counting(digits.y_train[:1024], 10), digits, config, seed=0, device="cpu", stop=stop)
    assert len(calls) == 1


def test_an_upload_above_the_size_limit_is_refused_with_the_limit(tmp_path, digits, monkeypatch):
    path = init_synthetic(digits, 2).save(tmp_path / "set.safetensors")
    monkeypatch.setattr(runtime, "MAX_UPLOAD_BYTES", 1000)
    with pytest.raises(inputs.UserError, match="at most 0 MB|at most"):
        inputs.load_set(str(path))


def test_an_upload_with_too_many_images_per_class_is_refused(tmp_path, digits, monkeypatch):
    monkeypatch.setattr(inputs, "LIMITS", runtime.Limits(max_steps=10, max_seconds=10, max_ipc=3))
    path = init_synthetic(digits, 4).save(tmp_path / "set.safetensors")
    with pytest.raises(inputs.UserError, match="at most 3 per class"):
        inputs.load_set(str(path))


# -- 7. a set is validated once, on load ---------------------------------------------------------

def _variant(tmp_path, digits, **change) -> Path:
    syn = init_synthetic(digits, 1)
    for key, value in change.items():
        setattr(syn, key, value)
    return syn.save(tmp_path / "variant.safetensors")


@pytest.mark.parametrize("change, fragment", [
    (dict(images=torch.full((10, 1, 8, 8), float("nan"))), "NaN or infinite"),
    (dict(images=torch.zeros(10, 1, 8, 8).index_fill_(0, torch.tensor([3]), float("inf"))), "NaN or infinite"),
    (dict(images=torch.zeros(0, 1, 8, 8), labels=torch.zeros(0, dtype=torch.long)), "no images"),
    (dict(classes=tuple(str(i) for i in range(100_000))), "100,000 classes"),
    (dict(images=torch.zeros(10, 7, 8, 8), mean=(0.0,) * 7, std=(1.0,) * 7), "not images this app makes"),
    (dict(std=(0.0,)), "positive std"),
])
def test_a_malformed_set_is_refused_on_load_with_what_is_wrong(tmp_path, digits, change, fragment):
    path = _variant(tmp_path, digits, **change)
    with pytest.raises(SyntheticFileError, match=fragment):
        SyntheticSet.load(path)


def test_a_set_that_does_not_fit_its_dataset_is_a_message(tmp_path, digits, session):
    from components import evaluate_run

    syn = init_synthetic(digits, 1)
    syn.images = torch.zeros(10, 1, 16, 16)
    with pytest.raises(SyntheticFileError, match="does not fit"):
        evaluate_run.dataset_of(session, syn)


def test_a_label_store_named_but_absent_is_a_message(tmp_path, digits):
    syn = init_synthetic(digits, 1)
    syn.extra_meta["label_store"] = "soft"
    path = syn.save(tmp_path / "nolabels.safetensors")
    with pytest.raises(inputs.UserError, match="names a 'soft' label store but its saved parts are missing"):
        inputs.load_set(str(path))


# -- 8. the CLI refuses a negative step count; unreadable images are skipped ---------------------

@pytest.mark.parametrize("flag, value", [("--steps", "-5"), ("--steps", "0"), ("--ipc", "-1"), ("--minutes", "-2")])
def test_the_cli_refuses_non_positive_counts(tmp_path, flag, value, capsys):
    from dd_core.cli import main

    out = tmp_path / "x.safetensors"
    code = main(["distill", "--dataset", "digits", flag, value, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert f"argument {flag}" in err and ("at least 1" in err or "positive" in err)


def _folder_with_broken_files(root: Path) -> Path:
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), color=30 * i + (0 if name == "cat" else 100)).save(root / name / f"{i}.png")
        (root / name / "broken.png").write_bytes(b"\x89PNG not really")
        (root / name / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 10)
    return root


def test_a_folder_with_unreadable_files_skips_them_and_says_how_many(tmp_path):
    from dd_core.folder import load_folder

    dataset = load_folder(str(_folder_with_broken_files(tmp_path / "pets")))
    assert len(dataset.x_train) + len(dataset.x_test) == 12
    assert "skipped 4 unreadable file(s)" in dataset.split_note


def test_the_cli_distills_a_folder_with_unreadable_files(tmp_path):
    root = _folder_with_broken_files(tmp_path / "pets")
    out = tmp_path / "pets.safetensors"
    run = subprocess.run([sys.executable, "-m", "dd_core", "distill", "--dataset", f"folder:{root}", "--method",
                          "random", "--ipc", "1", "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, DD_THREADS="1"))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["status"] == "done" and out.is_file()


# -- 9. input conversion: no rounding, plain messages, short echoes, no server paths -------------

@pytest.mark.parametrize("ipc", [2.5, True, "ten", float("nan"), [1]])
def test_ipc_that_is_not_a_whole_number_is_refused(ipc):
    with pytest.raises(inputs.UserError, match="whole number"):
        distill_run.check_request("digits", "", "dm", ipc, 10, 0)


def test_echoed_input_is_cut_short():
    with pytest.raises(inputs.UserError) as err:
        distill_run.check_request("digits", "", "x" * 100_000, 1, 10, 0)
    assert len(str(err.value)) < 400 and "100,002 characters" in str(err.value)


def test_a_public_space_never_shows_server_paths(monkeypatch):
    monkeypatch.setattr(runtime, "PUBLIC", True)
    message = inputs.user_message(FileNotFoundError(2, "No such file", "/srv/private/data/MNIST/raw/train.gz"))
    assert "/srv/private" not in message and "train.gz" in message
