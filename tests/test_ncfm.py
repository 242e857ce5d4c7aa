"""NCFM beyond the contract: the pool of pretrained networks (cached, with test accuracy, blended),
the calibration loss, one image update per class, the published sampling network and its ascent,
pixel bounds, and the bounds on its hyperparameters. Pools here are 1-2 networks of 2 epochs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from dd_core import load_dataset
from dd_core.distill import run_to_end
from dd_core.training import test_accuracy as accuracy_of
from dd_core.methods import make_method
from dd_core.methods import ncfm_pool
from dd_core.methods.ncfm import SampleNet, class_cf, cf_distance
from dd_core.models import build_model
from dd_core.synthetic import init_synthetic

CPU = torch.device("cpu")
SMALL = dict(model="convnet_d2", batch_real=16, num_freqs=64, pool_size=1, pool_epochs=2)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def ready(digits, ipc=1, seed=0, **overrides):
    """An NCFM set up on digits, ready to step."""
    method = make_method("ncfm", dataset="digits", ipc=ipc, **{**SMALL, **overrides})
    syn = init_synthetic(digits, ipc, seed=seed)
    method.setup(digits, syn, seed=seed, device=CPU)
    return method, syn


def test_pool_members_are_cached_as_safetensors_with_their_test_accuracy(digits, monkeypatch):
    pool = ncfm_pool.load_pool(digits, "convnet_d2", 2, 2, CPU)
    net = build_model("convnet_d2", channels=1, num_classes=10, image_size=(8, 8))
    for i, member in enumerate(pool):
        with safe_open(str(ncfm_pool.member_path(digits, "convnet_d2", 2, i)), framework="pt") as f:
            assert float(f.metadata()["test_accuracy"]) == member.test_accuracy
        trained = accuracy_of(ncfm_pool.blend(net, member, 0.0), digits, CPU)
        assert trained == member.test_accuracy, "the recorded accuracy is the trained weights' own"
        assert trained > accuracy_of(ncfm_pool.blend(net, member, 1.0), digits, CPU) + 0.2, "training taught it"
    assert not torch.equal(pool[0].init["classifier.weight"], pool[1].init["classifier.weight"]), "member i is seed i"

    def no_training(*args, **kwargs):
        raise AssertionError("a cached member was trained again")
    monkeypatch.setattr(ncfm_pool, "train_member", no_training)
    again = ncfm_pool.load_pool(digits, "convnet_d2", 2, 2, CPU)
    assert all(torch.equal(a.trained[k], b.trained[k]) for a, b in zip(pool, again) for k in a.trained)


def test_a_damaged_pool_file_is_rebuilt(digits):
    path = ncfm_pool.member_path(digits, "convnet_d2", 2, 1)
    ncfm_pool.load_pool(digits, "convnet_d2", 2, 2, CPU)
    path.write_bytes(b"not a safetensors file")
    member = ncfm_pool.load_pool(digits, "convnet_d2", 2, 2, CPU)[1]
    assert member.test_accuracy > 0.2
    with safe_open(str(path), framework="pt") as f:
        assert "test_accuracy" in f.metadata()


def test_blend_runs_from_the_trained_weights_to_the_initial_ones(digits):
    (member,) = ncfm_pool.load_pool(digits, "convnet_d2", 1, 2, CPU)
    method, _ = ready(digits)
    net = method.match_net_
    for l in (0.0, 1.0, 0.25):
        ncfm_pool.blend(net, member, l)
        for name, value in net.state_dict().items():
            assert torch.allclose(value, l * member.init[name] + (1 - l) * member.trained[name], atol=1e-6)


def test_set_records_its_pool(digits):
    _, syn = ready(digits)
    assert syn.extra_meta["ncfm_pool"].startswith("1 convnet_d2 trained 2 epochs on the training set")


def test_calibration_is_the_trained_networks_cross_entropy_on_the_synthetic_images(digits):
    method, _ = ready(digits, ipc=2, dsa=False, calib_weight=2.5)
    method.draw_networks()
    net = ncfm_pool.blend(build_model("convnet_d2", channels=1, num_classes=10, image_size=(8, 8)), method.pool_[0], 0.0)
    rows = method.labels_ == 3
    expected = 2.5 * F.cross_entropy(net(method.images_[rows]), method.labels_[rows])
    assert torch.allclose(method.calib_loss(3), expected)


def test_each_class_gets_its_own_image_update_and_calibration_adds_as_many(digits):
    for calib_iters, updates in ((0, 10), (1, 20), (2, 30)):
        method, _ = ready(digits, calib_iters=calib_iters)
        stats = method.step()
        assert int(method.opt_.state[method.images_]["step"]) == updates
        assert ("calib_loss" in stats) == (calib_iters > 0)


def test_match_loss_is_300_times_the_cf_distance_of_one_class(digits):
    method, _ = ready(digits, dsa=False, pool_size=0, calib_iters=0)
    method.draw_networks()
    t = torch.randn(64, method.match_net_.feat_dim, generator=torch.Generator().manual_seed(5))
    method.frequencies = lambda dim: t
    x_real = method.real_.batch(4, 16, torch.Generator().manual_seed(9))
    method.real_.batch = lambda c, n, g: x_real
    f_real = F.normalize(method.match_net_.embed(x_real), dim=1)
    f_syn = F.normalize(method.match_net_.embed(method.images_[method.labels_ == 4]), dim=1)
    zeros = lambda f: torch.zeros(len(f), dtype=torch.long)
    distance = cf_distance(class_cf(f_real, zeros(f_real), t, 1), class_cf(f_syn, zeros(f_syn), t, 1), alpha=0.5, beta=0.5)
    assert torch.allclose(method.match_loss(4), 300 * distance, rtol=1e-4)


def test_pixels_are_kept_in_the_valid_range(digits):
    method, _ = ready(digits, lr_img=1e-6, pool_size=0, calib_iters=0)
    with torch.no_grad():
        method.images_.mul_(50)  # far outside [0, 1] once denormalized
    method.step()
    pixels = method.images_.detach() * digits.std[0] + digits.mean[0]
    assert pixels.min() >= -1e-3 and pixels.max() <= 1 + 1e-3


def test_sample_net_is_the_published_shape():
    net = SampleNet(12, 100, 16, seed=0)
    z = torch.randn(net.distinct, 12, generator=torch.Generator().manual_seed(1))
    t = net(z)
    assert net.distinct == 7 and t.shape == (100, 12)  # ceil(100 / 16) distinct rows, repeated, cut to 100
    assert torch.equal(t[:7], t[7:14]) and t.abs().max() < 1  # repeats; Tanh bounds each coordinate
    layers = [type(m).__name__ for m in net.layers]
    assert layers == ["Linear", "BatchNorm1d", "LeakyReLU"] * 2 + ["Linear", "BatchNorm1d", "Tanh"]
    assert torch.equal(SampleNet(12, 100, 16, seed=0)(z), t), "same seed, same network"


def test_sampler_ascends_the_distance_the_images_descend(digits):
    method, _ = ready(digits, sampler=True, sampler_lr=0.05, pool_size=0, calib_iters=0, dsa=False)
    g = torch.Generator().manual_seed(3)
    real = F.normalize(torch.randn(40, method.match_net_.feat_dim, generator=g), dim=1)
    z = torch.randn(method.sampler_.distinct, real.shape[1], generator=g)
    project = torch.randn(64, real.shape[1], generator=g)  # 8x8 pixels -> features, fixed
    zeros = lambda f: torch.zeros(len(f), dtype=torch.long)

    def distance():
        t = method.sampler_(z)
        syn = F.normalize(method.images_[:2].flatten(1) @ project, dim=1)
        return cf_distance(class_cf(real, zeros(real), t, 1), class_cf(syn, zeros(syn), t, 1), alpha=0.5, beta=0.5)

    before_images, before = method.images_.detach().clone(), distance().item()
    for _ in range(10):
        method.update(distance(), ascend=True)
    assert distance().item() > before * 1.05, "the sampling network maximises the distance"
    assert not torch.equal(method.images_.detach(), before_images), "...while the pixels minimise it"


def test_min_max_run_is_finite_and_deterministic(digits):
    def run():
        method = make_method("ncfm", dataset="digits", ipc=1, sampler=True, **SMALL)
        return run_to_end(digits, method, method_name="ncfm", ipc=1, steps=2, seed=0, device=CPU)
    first, again = run(), run()
    assert first.status == "done", first.message
    assert all(math.isfinite(v) for s in first.history for v in s.values())
    assert torch.equal(first.synthetic.images, again.synthetic.images)


def test_bad_settings_say_what_to_do(digits):
    with pytest.raises(ValueError, match="num_freqs = 200000 is out of range; valid values are 1 to 16384"):
        make_method("ncfm", dataset="digits", ipc=1, num_freqs=200000)
    with pytest.raises(ValueError, match="set pool_size to 1 or more, or calib_iters to 0"):
        ready(digits, pool_size=0, calib_iters=1)
    with pytest.raises(ValueError, match="num_freqs .* must be at least 2 x sampler_repeat"):
        ready(digits, pool_size=0, calib_iters=0, sampler=True, num_freqs=16)


def test_presets_follow_the_headline_configs():
    paper = make_method("ncfm", preset="paper", dataset="mnist", ipc=10)
    assert (paper.pool_size, paper.pool_epochs, paper.calib_iters, paper.calib_weight) == (20, 60, 1, 1.0)
    assert (paper.num_freqs, paper.batch_real, paper.optimizer, paper.lr_img) == (4096, 1024, "adamw", 0.001)
    assert paper.sampler is False, "config/ipc*/ keep sampling_net off"
    fast = make_method("ncfm", preset="fast", dataset="mnist", ipc=10)
    assert fast.pool_size * fast.pool_epochs <= 10 and fast.model == "convnet_w32"


def test_memory_estimate_counts_frequencies_pool_and_sampler(digits):
    from dd_core.memory import estimate_bytes

    def estimate(**kw):
        return estimate_bytes(make_method("ncfm", preset="paper", dataset="digits", ipc=10, **kw), digits, 10)
    assert estimate(num_freqs=16384) > estimate(num_freqs=1024) + 3 * 1024 * 15360 * 4
    assert estimate(sampler=True) > estimate() + 9 * 2048 * 2048 * 4 - 1
    assert estimate(pool_size=100) > estimate(pool_size=0)
    assert estimate(num_freqs=16384, sampler=True, pool_size=100) < 2**30, "the largest settings stay under 1 GB"
