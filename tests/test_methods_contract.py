"""The contract every registered method keeps, checked over the whole registry on 8x8 digits.

A method added with one decorator is tested here the moment it is registered: finite stats,
images that learn (or, for coresets, real images), untouched real data, determinism for a seed,
a loss that falls on a tiny problem, and a synthetic set that survives a save and a load.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch

from dd_core import load_dataset
from dd_core.distill import run_to_end
from dd_core.methods import METHODS, hyperparameters, make_method
from dd_core.registry import UnknownNameError
from dd_core.synthetic import SyntheticSet, init_synthetic

# Small settings, applied to whichever method has the field: a 2-block ConvNet, 16 real images a
# class, few frequencies, a pool of one network trained 2 epochs. Everything else stays at the
# method's fast preset.
TINY = {"model": "convnet_d2", "batch_real": 16, "num_freqs": 64, "inner_loop": 1,
        "num_experts": 1, "expert_epochs": 1, "max_start_epoch": 1, "syn_steps": 5, "label_epochs": 1,  # trajectory
        "pool_size": 1, "pool_epochs": 2,  # NCFM
        # the decoupled family: a teacher trained in seconds, a committee of two such teachers, few candidates
        "teacher": "convnet_bn_quick", "committee": "seeds", "candidates": 16, "subset": 32}


def tiny_method(name: str, ipc: int, **extra):
    fields = {f.name for f in hyperparameters(METHODS.get(name))}
    overrides = {k: v for k, v in {**TINY, **extra}.items() if k in fields}
    return make_method(name, preset="fast", dataset="digits", ipc=ipc, **overrides)


@functools.lru_cache(maxsize=None)
def distilled(name: str, ipc: int, steps: int, seed: int = 0):
    """The final snapshot of a tiny run (cached: several tests look at the same run)."""
    return run_to_end(load_dataset("digits"), tiny_method(name, ipc), method_name=name, ipc=ipc, steps=steps,
                      seed=seed, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("ipc", [1, 2])
@pytest.mark.parametrize("name", METHODS.names())
def test_steps_give_finite_stats_and_learn_or_select(name, ipc, digits):
    before = {k: getattr(digits, k).clone() for k in ("x_train", "y_train", "x_test", "y_test")}
    snap = distilled(name, ipc, 3)
    assert snap.status == "done", snap.message
    assert snap.history, "a run records the stats of each step"
    for stats in snap.history:
        for key, value in stats.items():
            assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)
    syn = snap.synthetic
    assert syn.images.shape == (10 * ipc, *digits.x_train.shape[1:])
    assert torch.equal(syn.labels, torch.arange(10).repeat_interleave(ipc))
    initial = init_synthetic(digits, ipc, seed=0).images
    if METHODS.get(name).learns_images:
        assert not torch.equal(syn.images, initial), "a distillation method must change the images"
    else:  # a coreset keeps real training images of the right classes
        for image, label in zip(syn.images, syn.labels):
            same = (digits.x_train == image).flatten(1).all(dim=1)
            assert same.any(), "a coreset image is not a training image"
            assert (digits.y_train[same] == label).any()
    for key, tensor in before.items():
        assert torch.equal(getattr(digits, key), tensor), f"distilling changed the dataset's {key}"


@pytest.mark.cuda
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_runs_on_cuda(name, digits):
    """The same tiny run on the GPU: every tensor a step touches must live where the run does (RDED's
    first GPU run indexed its CPU-side sources with the GPU's ranking)."""
    snap = run_to_end(digits, tiny_method(name, 2), method_name=name, ipc=2, steps=3, seed=0,
                      device=torch.device("cuda"))
    assert snap.status == "done", snap.message
    assert snap.step == (3 if METHODS.get(name).learns_images else 1)  # a coreset is chosen in one step
    for stats in snap.history:
        assert all(math.isfinite(v) for v in stats.values()), stats
    assert torch.isfinite(snap.synthetic.images).all()


@pytest.mark.parametrize("name", METHODS.names())
def test_same_seed_gives_the_same_images(name):
    first = distilled(name, 1, 3).synthetic.images
    again = run_to_end(load_dataset("digits"), tiny_method(name, 1), method_name=name, ipc=1, steps=3, seed=0,
                       device=torch.device("cpu")).synthetic.images
    assert torch.equal(first, again)


@pytest.mark.parametrize("name", METHODS.names())
def test_loss_falls_on_a_tiny_problem(name):
    if not METHODS.get(name).learns_images:
        pytest.skip(f"{name} selects real images and has no loss to lower")
    steps = 40
    snap = distilled(name, 1, steps)
    losses = [s["loss"] for s in snap.history]
    assert len(losses) == steps
    # each step draws a fresh network, so single losses are noisy; compare the first and last tenths
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, f"{name}: mean loss of the first 5 steps {first:.4g}, of the last 5 {last:.4g}"


@pytest.mark.parametrize("name", METHODS.names())
def test_final_set_round_trips_through_safetensors(name, tmp_path):
    syn = distilled(name, 1, 3).synthetic
    path = syn.save(tmp_path / f"{name}.safetensors")
    back = SyntheticSet.load(path)
    assert torch.equal(back.images, syn.images)
    assert torch.equal(back.labels, syn.labels)
    assert back.metadata() == syn.metadata()
    assert back.method == name and back.config == syn.config
    # the recorded configuration is the method's hyperparameters, so a run can be rebuilt from it
    assert set(back.config) == {f.name for f in dataclasses.fields(METHODS.get(name)) if not f.name.endswith("_")}


@pytest.mark.parametrize("name", ["herding", "kcenter"])
def test_feature_coreset_uses_the_named_network_and_records_it(name, digits, tmp_path):
    # The features a coreset was chosen in move its accuracy (REFERENCE.md): the chosen network and
    # its training length are hyperparameters, and the set says which was used, also after a reload.
    runs = {}
    for epochs in (1, 2):
        method = make_method(name, dataset="digits", ipc=3, feature_model="mlp", feature_epochs=epochs)
        runs[epochs] = run_to_end(digits, method, method_name=name, ipc=3, steps=1, device=torch.device("cpu")).synthetic
        assert runs[epochs].extra_meta["features"].startswith(f"mlp trained {epochs} epochs on the whole training set")
    assert not torch.equal(runs[1].images, runs[2].images), "other features must choose other images"
    runs[1].save(tmp_path / "set.safetensors")
    assert SyntheticSet.load(tmp_path / "set.safetensors").extra_meta["features"] == runs[1].extra_meta["features"]


def test_feature_coreset_can_select_on_the_logits(digits):
    method = make_method("herding", dataset="digits", ipc=3, feature_model="mlp", feature_epochs=2, feature_layer="logits")
    syn = run_to_end(digits, method, method_name="herding", ipc=3, steps=1, device=torch.device("cpu")).synthetic
    assert syn.extra_meta["features"].endswith(", its logits")
    embedding = make_method("herding", dataset="digits", ipc=3, feature_model="mlp", feature_epochs=2)
    other = run_to_end(digits, embedding, method_name="herding", ipc=3, steps=1, device=torch.device("cpu")).synthetic
    assert not torch.equal(syn.images, other.images), "10 class scores and the 128-d embedding choose alike"
    with pytest.raises(ValueError, match="unknown feature_layer 'pixels'; valid ones are: embedding, logits"):
        make_method("herding", dataset="digits", ipc=1, feature_layer="pixels")


def test_herding_nearest_mean_rule_takes_the_images_nearest_the_class_mean(digits):
    runs = {}
    for rule in ("argmin", "nearest-mean"):
        method = make_method("herding", dataset="digits", ipc=5, feature_model="mlp", feature_epochs=2, rule=rule)
        runs[rule] = run_to_end(digits, method, method_name="herding", ipc=5, steps=1, device=torch.device("cpu")).synthetic
    idx, f = method.class_features(digits, 0, torch.device("cpu"))
    nearest = idx[(f - f.mean(0)).norm(dim=1).argsort()[:5]]
    assert torch.equal(runs["nearest-mean"].images[runs["nearest-mean"].labels == 0], digits.x_train[nearest])
    first = runs["argmin"].labels == 0
    assert torch.equal(runs["argmin"].images[first][0], runs["nearest-mean"].images[first][0]), "both start at the nearest"
    assert not torch.equal(runs["argmin"].images, runs["nearest-mean"].images), "herding is not the nearest-mean shortcut"


def test_feature_coreset_rejects_an_unknown_network(digits):
    method = make_method("herding", dataset="digits", ipc=1, feature_model="nope")
    with pytest.raises(UnknownNameError, match="valid models are: .*convnet"):
        run_to_end(digits, method, method_name="herding", ipc=1, steps=1, device=torch.device("cpu"))
