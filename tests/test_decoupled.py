"""The decoupled family beyond the registry-wide contract: the soft-label protocol's loss, the
teacher cache, the recover loss against a hook-based reference, RDED's selection, stopping."""
from __future__ import annotations

import logging
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dd_core import load_dataset
from dd_core.distill import distill
from dd_core.evaluate import evaluate, evaluate_synthetic, for_set, protocol
from dd_core.labels import build, load_store
from dd_core.label_stores.base import HardLabels
from dd_core.label_stores.soft import RowCodec, SoftLabels
from dd_core.methods import make_method
from dd_core.methods import tap_kernels
from dd_core.methods.bn_taps import BNTap, FoldedBasicBlock, FoldedConvBN, recover_loss, tapped
from dd_core.methods.tap_kernels import WinogradConv, winograd_weight
from dd_core.models import build_model
from dd_core.soft_protocol import kl_to_targets, mixed_targets, soft_views
from dd_core.synthetic import SyntheticSet, init_synthetic
from dd_core import teachers

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def teacher(digits):
    return teachers.get_bn_teacher(digits, "convnet_bn_quick", device=CPU)


def test_soft_loss_is_kl_to_the_given_labels_and_mixes_per_image_labels_by_area(digits):
    syn = init_synthetic(digits, 2, seed=0)  # 20 images
    p = torch.softmax(torch.randn(20, 10, generator=torch.Generator().manual_seed(1)) * 3, 1)
    codec = RowCodec(10, "float32", 0)
    store = SoftLabels(*codec.encode(p), codec=codec, temperature=1.0)
    views_seq = soft_views(syn.images, epochs=1, batch_size=8, seed=3, crop_min=0.5, flips=False, cutmix_alpha=1.0)
    _, idx, views, mix = next(views_seq)
    assert mix is not None and 0 <= mix.lam <= 1
    logits = torch.randn(len(idx), 10, dtype=torch.float64)
    targets = mixed_targets(store, idx, views, 0, mix)
    expected_t = mix.lam * p[idx] + (1 - mix.lam) * p[idx][mix.perm]  # per-image labels mixed by area
    torch.testing.assert_close(targets, expected_t.to(targets.dtype))
    for t in (1.0, 20.0):  # both sides at temperature t: the targets' logits are log p
        q = torch.log_softmax(logits / t, 1)
        p_t = torch.softmax(expected_t.double().log() / t, 1)
        kl = (p_t * (p_t.log() - q)).sum(1).mean()
        torch.testing.assert_close(kl_to_targets(logits, expected_t.double(), t), kl)
    # hard labels under KL are cross-entropy at T = 1
    hard = HardLabels(syn.labels, 10)
    one_hot = mixed_targets(hard, idx, views, 0, None)
    torch.testing.assert_close(kl_to_targets(logits, one_hot.double(), 1.0), F.cross_entropy(logits, syn.labels[idx]))
    # the same seed replays the same views and mixes
    again = next(soft_views(syn.images, epochs=1, batch_size=8, seed=3, crop_min=0.5, flips=False, cutmix_alpha=1.0))
    assert torch.equal(again[2], views) and torch.equal(again[3].perm, mix.perm)


def test_per_view_labels_are_not_mixed_and_dynamic_labels_replay_the_soft_views(digits, teacher):
    syn = init_synthetic(digits, 1, seed=0)
    config = protocol("soft", epochs=2, num_models=1)
    online = build("teacher", syn, digits, teacher, config, temperature=4.0)
    dynamic = build("dynamic", syn, digits, teacher, config, dtype="float32", temperature=0.0)
    assert online.labels_views() and dynamic.labels_views()
    seq = soft_views(syn.images, epochs=2, batch_size=0, seed=dynamic.view_seed(0), crop_min=0.08,
                     flips=digits.flips, cutmix_alpha=1.0)
    for epoch, idx, views, mix in seq:
        torch.testing.assert_close(mixed_targets(online, idx, views, epoch, mix),
                                   torch.softmax(teacher.net(views) / 4.0, 1))
        p = torch.softmax(teacher.net(views) / dynamic.temperature, 1)
        torch.testing.assert_close(mixed_targets(dynamic, idx, views, epoch, mix), p, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="soft protocol's crops and CutMix"):
        dynamic.check_config(protocol("fast", epochs=2), digits)


def test_teacher_is_trained_once_then_reused_and_a_corrupt_cache_file_is_rebuilt_with_a_note(digits, monkeypatch,
                                                                                             caplog):
    first = teachers.get_bn_teacher(digits, "convnet_bn_quick", seed=5, device=CPU)
    assert teachers.get_bn_teacher(digits, "convnet_bn_quick", seed=5, device=CPU) is first  # memory
    assert not first.net.training, "a teacher's batch norm must use its running statistics"
    teachers._memory.clear()
    trained = []
    real_train = teachers.train_teacher
    monkeypatch.setattr(teachers, "train_teacher", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    again = teachers.get_bn_teacher(digits, "convnet_bn_quick", seed=5, device=CPU)  # from the file
    assert not trained and again.test_accuracy == first.test_accuracy
    for a, b in zip(again.net.state_dict().values(), first.net.state_dict().values()):
        assert torch.equal(a, b)
    path = next(p for p in (teachers.cache_path("teachers", "x", "").parent).glob("*s5-*.safetensors"))
    path.write_bytes(b"not a safetensors file")
    teachers._memory.clear()
    with caplog.at_level(logging.WARNING, logger="distillery.cache"):
        rebuilt = teachers.get_bn_teacher(digits, "convnet_bn_quick", seed=5, device=CPU)
    assert trained == [1], "the unusable file is retrained"
    assert "is unusable" in caplog.text and "discarding it and rebuilding" in caplog.text and path.name in caplog.text
    assert rebuilt.test_accuracy == first.test_accuracy  # the same seed trains the same network


@pytest.mark.parametrize("channels,channels_last", [(1, False), (1, True), (3, True)])
def test_tapped_loss_equals_the_per_bn_hook_reference(channels, channels_last):
    # SRe2L's reference: a forward hook per BN layer, statistics from the channel-major copy of its input
    net = build_model("resnet18_w16", channels=channels, num_classes=10, image_size=(8, 8), seed=0).eval()
    for m in net.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(12, channels, 8, 8, requires_grad=True)
    y = torch.arange(12) % 10
    terms = []

    def hook(module, inputs, _):
        a = inputs[0]
        nch = a.shape[1]
        mean = a.mean([0, 2, 3])
        var = a.permute(1, 0, 2, 3).contiguous().view(nch, -1).var(1, unbiased=False)
        terms.append(torch.norm(module.running_var - var, 2) + torch.norm(module.running_mean - mean, 2))
    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    ce = F.cross_entropy(net(x), y)
    ref = ce + 0.01 * (10 * terms[0] + sum(terms[1:]))
    for h in handles:
        h.remove()
    ref_grad, = torch.autograd.grad(ref, x)
    for fold in (False, True):  # BN layers tapped, or folded into the conv before them where they can be
        tnet, sink = tapped(net, fold=fold, channels_last=channels_last)
        layouts = []  # the memory order each tap's statistics are read in
        handles = [m.register_forward_hook(lambda m, i, o: layouts.append(i[0].is_contiguous() if isinstance(m, BNTap) else
                                                                          o.is_contiguous()))
                   for m in tnet.modules() if isinstance(m, (BNTap, FoldedConvBN))]
        ours, _ = recover_loss(tnet, sink, x, y, groups=1, bn_weight=0.01, first_bn_multiplier=10.0)
        for h in handles:
            h.remove()
        our_grad, = torch.autograd.grad(ours, x)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(our_grad, ref_grad, rtol=1e-4, atol=1e-6)
        # the first stage's activations (8x8, several channels) are NCHW or channels-last, not both
        assert sum(not plain for plain in layouts) >= 4 if channels_last else all(layouts)
    assert any(isinstance(m, FoldedConvBN) for m in tnet.modules()), "the stem and shortcuts fold"
    assert not any(isinstance(m, BNTap) for m in tnet.modules()), "so do the blocks' conv1/bn1 and conv2/bn2"
    assert sum(isinstance(m, FoldedBasicBlock) for m in tnet.modules()) == 8, "each block with its ReLUs and residual add"
    assert not any(isinstance(m, nn.ReLU) for m in tnet.modules()), "the stem's ReLU joins its fold"
    # two groups in one pass: the sum of the two batches' losses, and of their gradients
    halves = [recover_loss(tnet, sink, x[i:i + 6], y[i:i + 6], groups=1, bn_weight=0.01, first_bn_multiplier=10.0)[0]
              for i in (0, 6)]
    both, _ = recover_loss(tnet, sink, x, y, groups=2, bn_weight=0.01, first_bn_multiplier=10.0)
    torch.testing.assert_close(both, halves[0] + halves[1])
    half_grads = [torch.autograd.grad(h, x)[0] for h in halves]
    torch.testing.assert_close(torch.autograd.grad(both, x)[0], half_grads[0] + half_grads[1], rtol=1e-4, atol=1e-6)


def _hook_reference_loss(net, x, y):
    """SRe2L's recover loss: a forward hook per BN layer, the variance of a channel-major copy of its input."""
    terms = []

    def hook(module, inputs, _):
        a = inputs[0]
        var = a.permute(1, 0, 2, 3).contiguous().view(a.shape[1], -1).var(1, unbiased=False)
        terms.append(torch.norm(module.running_var - var, 2) + torch.norm(module.running_mean - a.mean([0, 2, 3]), 2))
    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    loss = F.cross_entropy(net(x), y) + 0.01 * (10 * terms[0] + sum(terms[1:]))
    for h in handles:
        h.remove()
    return loss


@pytest.mark.parametrize("model,channels,side", [
    ("convnet_bn_d2", 1, 8),  # one input channel (im2col conv), narrow rows (the pooling kernel's backward)
    ("convnet_bn_w32", 3, 32),  # wide rows (the broadcast backward)
    ("convnet_bn_w32", 3, 30),  # an odd size after the first pool: plain ReLU and pooling
])
def test_convnet_blocks_fused_with_their_relu_and_pool_keep_the_hook_references_loss(model, channels, side):
    net = build_model(model, channels=channels, num_classes=10, image_size=(side, side), seed=0).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(8, channels, side, side, requires_grad=True)
    y = torch.arange(8) % 10
    ref = _hook_reference_loss(net, x, y)
    ref_grad, = torch.autograd.grad(ref, x)
    for fold, channels_last in ((False, None), (True, True), (True, None)):  # forced channels-last: the plain pool path
        tnet, sink = tapped(net, fold=fold, channels_last=channels_last)
        ours, _ = recover_loss(tnet, sink, x, y, groups=1, bn_weight=0.01, first_bn_multiplier=10.0)
        our_grad, = torch.autograd.grad(ours, x)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(our_grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert sink.memory_format == torch.contiguous_format, "a ConvNet with fused ReLU + pool blocks stays NCHW"
    assert all(m.pool for m in tnet.modules() if isinstance(m, FoldedConvBN)), "every block's ReLU and pool joined its fold"
    assert not any(isinstance(m, (nn.ReLU, nn.AvgPool2d)) for m in tnet.modules())
    halves = [recover_loss(tnet, sink, x[i:i + 4], y[i:i + 4], groups=1, bn_weight=0.01, first_bn_multiplier=10.0)[0]
              for i in (0, 4)]
    both, _ = recover_loss(tnet, sink, x, y, groups=2, bn_weight=0.01, first_bn_multiplier=10.0)
    torch.testing.assert_close(both, halves[0] + halves[1])
    half_grads = [torch.autograd.grad(h, x)[0] for h in halves]
    torch.testing.assert_close(torch.autograd.grad(both, x)[0], half_grads[0] + half_grads[1], rtol=1e-4, atol=1e-6)


def test_a_teacher_without_batch_norm_is_refused_with_the_recipes_to_use_instead():
    net = build_model("convnet", channels=1, num_classes=10, image_size=(8, 8), seed=0)  # instance norm, no BN
    with pytest.raises(ValueError, match="no BatchNorm2d layer; use a batch-norm teacher recipe") as err:
        tapped(net)
    assert all(name in str(err.value) for name in teachers.TEACHERS.names())


def test_winograd_convolution_equals_conv2d_and_its_input_gradient():
    # float64 so that a wrong transform shows (float32 agrees to rounding); odd channel counts, a non-square image
    x = torch.randn(2, 3, 6, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w, bias = torch.randn(5, 3, 3, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    u, u_back = winograd_weight(w), winograd_weight(w.transpose(0, 1).flip(2, 3))
    torch.testing.assert_close(WinogradConv.apply(x, u, u_back, bias), F.conv2d(x, w, bias, padding=1), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: WinogradConv.apply(t, u, u_back, bias), (x,))


def test_resnet_with_winograd_on_its_wide_convs_keeps_the_hook_references_loss(monkeypatch):
    monkeypatch.setattr(tap_kernels, "WINOGRAD_MIN_CHANNELS", 32)  # resnet18_w16's last two stages (32-128 channels)
    net = build_model("resnet18_w16", channels=3, num_classes=10, image_size=(16, 16), seed=0).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(6, 3, 16, 16, requires_grad=True)
    y = torch.arange(6) % 10
    ref = _hook_reference_loss(net, x, y)
    ref_grad, = torch.autograd.grad(ref, x)
    tnet, sink = tapped(net)
    wide = [m for m in tnet.modules() if isinstance(m, FoldedConvBN) and m.winograd_u is not None]
    assert len(wide) == 9, "the stride-1 3x3 convs of the last three stages"
    calls, apply = [], WinogradConv.apply
    monkeypatch.setattr(WinogradConv, "apply", lambda *a: calls.append(a[0].shape) or apply(*a))
    ours, _ = recover_loss(tnet, sink, x, y, groups=1, bn_weight=0.01, first_bn_multiplier=10.0)
    our_grad, = torch.autograd.grad(ours, x)
    assert len(calls) == 9, "each takes it (8x8, 4x4 and 2x2 are even sizes)"
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_channels_last_is_chosen_for_a_resnet_and_not_for_a_convnet_with_fused_pools():
    resnet = build_model("resnet18_w16", channels=3, num_classes=10, image_size=(8, 8), seed=0).eval()
    tnet, sink = tapped(resnet)
    assert sink.memory_format == torch.channels_last
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in tnet.modules() if isinstance(m, nn.Conv2d))
    assert resnet.stem[0].weight.is_contiguous(), "the teacher itself is left as it was"
    for fold in (True, False):  # folded blocks, or the plain ReLU -> pool pairs joined as ReluPool2
        convnet = build_model("convnet_bn_w32", channels=3, num_classes=10, image_size=(8, 8), seed=0).eval()
        assert tapped(convnet, fold=fold)[1].memory_format == torch.contiguous_format
    assert tapped(resnet, channels_last=False)[1].memory_format == torch.contiguous_format


def test_rded_keeps_the_most_confident_crops_and_shows_its_choice(digits):
    method = make_method("rded", dataset="digits", ipc=2, teacher="convnet_bn_quick", candidates=20, factor=2)
    stats_before = [b.clone() for b in teachers.get_bn_teacher(digits, "convnet_bn_quick", device=CPU).net.buffers()]
    run = list(distill(digits, method, method_name="rded", ipc=2, steps=3, seed=0, device=CPU, snapshot_every=1))
    assert run[-1].status == "done"
    assert all(torch.equal(a, b) for a, b in zip(stats_before, method.teacher_.net.buffers())), "scoring moved BN stats"
    shown = method.selection()
    assert shown["class"] == 2 and shown["candidates"].shape == (20, 1, 4, 4)
    pool_worst = shown["pool_scores"].max()
    assert (shown["scores"][shown["chosen"]] <= pool_worst + 1e-6).all()
    beat = ~shown["chosen"] & (shown["scores"] < pool_worst - 1e-6)  # only a second crop of a kept image may
    assert all(s in shown["pool_sources"] for s in shown["sources"][beat].tolist()), "a rejected crop beat a kept one"
    assert torch.equal(shown["pool_scores"], shown["pool_scores"].sort().values)
    losses = [s["loss"] for s in run[-1].history]
    assert losses == sorted(losses, reverse=True), "keeping the best of old and new never raises the pool's loss"
    # RDED's own student views crop no smaller than one stitched patch (1/factor of the area), not 0.08
    syn = run[-1].synthetic
    soft = for_set(protocol("soft"), syn)
    assert soft.crop_min == 0.5 and "area >= 0.5" in soft.describe()
    assert for_set(protocol("fast"), syn) == protocol("fast")
    assert for_set(protocol("soft"), init_synthetic(digits, 1, seed=0)).crop_min == 0.08


def test_rded_keeps_one_crop_per_real_image(digits):
    # Whole-image crops (area 1, one per image) and three rounds of 60 of a class's ~144 images (the
    # set starts from 4 of them): the most confident images come again, and a pool ranked by score
    # alone kept them twice.
    method = make_method("rded", dataset="digits", ipc=4, teacher="convnet_bn_quick", candidates=60, crops=1,
                         crop_min=1.0, classes_per_step=10)
    list(distill(digits, method, method_name="rded", ipc=4, steps=3, seed=0, device=CPU))
    twice = [c for c in range(digits.num_classes)
             if (torch.cdist(method.pool_[c].flatten(1), method.pool_[c].flatten(1)) < 1e-4).sum() > 4]
    assert not twice, f"classes {twice}: the pool holds the same image twice"
    for sources in method.sources_:
        assert len(sources.unique()) == len(sources) and (sources >= 0).all(), "each kept crop knows its image"
    shown = method.selection()
    rejected_better = shown["chosen"].logical_not() & (shown["scores"] < shown["pool_scores"].max())
    assert all(s in shown["pool_sources"] for s in shown["sources"][rejected_better].tolist()), \
        "a crop better than the pool's worst was left out though its image was not in the pool"


@pytest.mark.parametrize("name", ["sre2l", "rded", "infer"])
def test_stopping_keeps_a_valid_set_with_its_labels(name, digits, tmp_path):
    stop = threading.Event()
    method = make_method(name, dataset="digits", ipc=1, teacher="convnet_bn_quick", **({"candidates": 8} if name == "rded" else {}))
    last = None
    for last in distill(digits, method, method_name=name, ipc=1, steps=50, seed=0, device=CPU, snapshot_every=1, stop=stop):
        if last.step >= 2:
            stop.set()
    assert last.status == "stopped" and last.step == 2, last.message
    path = last.synthetic.save(tmp_path / "set.safetensors")
    syn = SyntheticSet.load(path)
    assert torch.isfinite(syn.images).all()
    store = load_store(syn)  # the digest matches the kept images
    assert store.name == ("soft" if name == "infer" else "teacher")
    assert teachers.teacher_of_set(syn, digits).arch == "convnet_bn_w32"
    result = evaluate_synthetic(syn, digits, protocol("soft", epochs=1, num_models=1), device=CPU)
    assert 0 <= result.mean <= 1 and result.label_store == store.name


def test_committee_labels_round_trip_and_record_every_member(digits, tmp_path):
    method = make_method("cvdd", dataset="digits", ipc=1, teacher="convnet_bn_quick", committee="seeds", members=2)
    last = None
    for last in distill(digits, method, method_name="cvdd", ipc=1, steps=2, seed=0, device=CPU):
        pass
    syn = SyntheticSet.load(last.synthetic.save(tmp_path / "cv.safetensors"))
    store = load_store(syn)
    assert store.name == "committee" and store.labels_views()
    committee = teachers.teacher_of_set(syn, digits)
    x = syn.images[:4]
    torch.testing.assert_close(store.targets(torch.arange(4), x, 0), torch.softmax(committee.net(x) / store.temperature, 1))
    result = evaluate(syn.images, store, digits, protocol("soft", epochs=1, num_models=1), device=CPU)
    assert 0 <= result.mean <= 1


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_app_shows_rded_candidates_and_kept_crops():
    # The Distill tab's handler (no server): an RDED run on digits streams the selection image
    # (tests/test_app_browser.py takes such a set on to an evaluation in a real browser).
    from types import SimpleNamespace

    from PIL import Image

    from components import distill_run, distill_tab
    from components.sessions import drop_session, session_for

    who = SimpleNamespace(session_hash="rded")
    session = session_for(who)
    try:
        overrides = {"teacher": "convnet_bn_quick", "candidates": 12, "classes_per_step": 1}
        req = distill_run.check_request("digits", "", "rded", 1, 3, 0, "fast", overrides)
        updates = list(distill_tab.ui_updates(session, req))
        shown = [u[distill_tab.OUTPUTS.index("selection")] for u in updates]
        shown = [s for s in shown if isinstance(s, dict) and s.get("visible") and s.get("value") is not None]
        assert shown, "the selection image never appeared"
        assert isinstance(shown[-1]["value"], Image.Image) and shown[-1]["value"].width > 100
        syn = session.current()
        assert syn.extra_meta["label_store"] == "teacher"  # the teacher labels the views the student sees
    finally:
        drop_session(who)


def test_which_stores_label_the_view_and_which_are_mixed_by_area(digits, teacher):
    syn = init_synthetic(digits, 1, seed=0)
    config = protocol("soft", epochs=1)
    per_view = {"teacher": {}, "dynamic": {}, "projector": {}, "distance": {"per_view": True}}
    per_image = {"soft": {}, "distance": {}}
    for name, options in per_view.items():
        assert build(name, syn, digits, teacher, config, **options).labels_views(), name
    for name, options in per_image.items():
        assert not build(name, syn, digits, teacher, config, **options).labels_views(), name
    assert not HardLabels(syn.labels, 10).labels_views()


def test_benchmark_set_items_reach_only_the_methods_they_name():
    from benchmarks.decoupled import overrides_for

    items = ["rded.teacher=convnet_bn_quick", "sre2l.teacher=resnet18", "candidates=40"]
    assert overrides_for("rded", items) == {"teacher": "convnet_bn_quick", "candidates": 40}  # typed by the default
    assert overrides_for("sre2l", items[:2]) == {"teacher": "resnet18"}
    assert overrides_for("dm", items[:2]) == {}


def test_rded_paper_preset_observes_with_its_papers_conv3_on_cifar():
    """RDED's paper preset on CIFAR takes the paper's observer (a BN ConvNet-3 width 128 at its accuracy),
    not the CPU-sized default teacher; where the paper names none (digits) the default stays."""
    cifar = make_method("rded", preset="paper", dataset="cifar10", ipc=10)
    assert cifar.teacher == "convnet_bn_128_cpu"
    assert teachers.TEACHERS.get(cifar.teacher)  # a registered recipe
    assert make_method("rded", preset="paper", dataset="digits", ipc=10).teacher == "convnet_bn"
    assert make_method("rded", preset="fast", dataset="cifar10", ipc=10).teacher == "convnet_bn"
