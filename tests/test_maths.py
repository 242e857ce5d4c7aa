"""Maths checked against a reference: the soft cross-entropy, the DC matching gradient, the DC inner
loop's hands-off promise, DSA's Siamese property and differentiability, and the NCFM distance."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dd_core.augment import DSA, OPS, DSAParams
from dd_core.label_stores.base import soft_cross_entropy
from dd_core.methods.gradient_matching import matching_loss, train_on_synthetic
from dd_core.methods.ncfm import class_cf, cf_distance
from dd_core.models import ConvNet, _first_block, _foldable_first_block


def tiny_net(seed: int = 0, dtype=torch.float32) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet(channels=1, num_classes=3, image_size=(4, 4), width=4, depth=2).to(dtype)


def tiny_problem(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x_real = torch.randn(12, 1, 4, 4, generator=g, dtype=dtype)
    y_real = torch.arange(3).repeat_interleave(4)
    x_syn = torch.randn(6, 1, 4, 4, generator=g, dtype=dtype)
    y_syn = torch.arange(3).repeat_interleave(2)
    return x_real, y_real, x_syn, y_syn


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(7, (32,), generator=g)
    ours = soft_cross_entropy(logits, F.one_hot(labels, 7).double())
    reference = F.cross_entropy(logits, labels)
    assert torch.allclose(ours, reference)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, logits), torch.autograd.grad(reference, logits)
    assert torch.allclose(g_ours, g_ref)


def test_dc_matching_gradient_matches_finite_differences():
    net = tiny_net(dtype=torch.float64)
    x_real, y_real, x_syn, y_syn = tiny_problem(torch.float64)
    x_syn.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda xs: matching_loss(net, x_real, y_real, xs, y_syn, 3), (x_syn,),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


def test_matching_loss_only_reads_the_network():
    net = tiny_net()
    before = copy.deepcopy(net.state_dict())
    x_real, y_real, x_syn, y_syn = tiny_problem()
    x_syn.requires_grad_(True)
    loss = matching_loss(net, x_real, y_real, x_syn, y_syn, 3)
    assert all(p.grad is None for p in net.parameters()), "computing the loss must not touch .grad"
    loss.backward(inputs=[x_syn])  # as the method does: only the pixels learn
    assert x_syn.grad is not None and x_syn.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("augment", [None, DSA()], ids=["plain", "dsa"])
def test_dc_inner_loop_leaves_the_given_network_and_images_unchanged(augment):
    net = tiny_net()
    before = copy.deepcopy(net.state_dict())
    _, _, x_syn, y_syn = tiny_problem()
    x_syn.requires_grad_(True)
    images_before = x_syn.detach().clone()
    trained = train_on_synthetic(net, x_syn, y_syn, epochs=3, lr=0.1, batch_size=4,
                                 generator=torch.Generator().manual_seed(0), augment=augment)
    assert trained is not net
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "the given network changed"
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items()), "the copy did not train"
    assert torch.equal(x_syn.detach(), images_before) and x_syn.grad is None


def one_op(op: str, n_groups: int = 1) -> DSAParams:
    return DSAParams(op=[op] * n_groups, u=torch.rand(n_groups, 4, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("op", OPS)
def test_dsa_same_parameters_give_the_same_augmentation(op):
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    params = one_op(op)
    first, second = DSA().apply(x, params), DSA().apply(x.clone(), params)
    assert torch.equal(first, second)
    # Siamese: real and synthetic batches of one group see the very same transformation
    real, syn = x[:3], x[3:]
    both = DSA().apply(x, params)
    assert torch.equal(DSA().apply(real, params), both[:3]) and torch.equal(DSA().apply(syn, params), both[3:])


@pytest.mark.parametrize("op", OPS)
def test_dsa_is_differentiable(op):
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    (DSA().apply(x, one_op(op)) ** 2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_ncfm_distance_is_zero_for_equal_sets_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(40, 8, generator=g), dim=1)
    groups = torch.arange(2).repeat_interleave(20)
    t = torch.randn(256, 8, generator=g)
    same = cf_distance(class_cf(f, groups, t, 2), class_cf(f.clone(), groups, t, 2), alpha=0.5, beta=0.5)
    assert same.item() < 1e-4  # only the sqrt's epsilon is left
    near = cf_distance(class_cf(f, groups, t, 2), class_cf(f + 0.05, groups, t, 2), alpha=0.5, beta=0.5)
    far = cf_distance(class_cf(f, groups, t, 2), class_cf(f + 0.5, groups, t, 2), alpha=0.5, beta=0.5)
    assert 0 < near < far


def test_ncfm_phase_term_is_the_arctangent_form():
    """2 (|a||b| - Re(a conj b)) = 2 |a||b| (1 - cos(arg a - arg b)), as the paper writes it."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 50, dtype=torch.complex128, generator=g)
    ours = cf_distance((a.real[None], a.imag[None]), (b.real[None], b.imag[None]), alpha=0.0, beta=1.0)
    phase = 2 * a.abs() * b.abs() * (1 - torch.cos(a.angle() - b.angle()))
    assert torch.allclose(ours, torch.sqrt(phase + 1e-12).mean(), atol=1e-9)


def test_evaluation_draws_one_dsa_op_per_batch_like_the_reference():
    from dd_core.augment import NO_FLIP_OPS, DSA
    from dd_core.training import training_views

    dsa = DSA(NO_FLIP_OPS)
    params = dsa.sample_batch(6, torch.Generator().manual_seed(0))
    assert len(set(params.op)) == 1 and params.u.shape == (6, 4)
    assert len({tuple(row.tolist()) for row in params.u}) == 6  # each image its own numbers
    # The schedule is: a permutation per epoch, then per batch one op and per-image numbers.
    images = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ops_seen = set()
    g = torch.Generator().manual_seed(0)
    schedule = training_views(images, epochs=10, batch_size=5, augment=dsa, seed=0)
    for _epoch in range(10):
        perm = torch.randperm(12, generator=g)
        for start in range(0, 12, 5):
            expected_idx = perm[start:start + 5]
            p = dsa.sample_batch(len(expected_idx), g)
            ops_seen.add(p.op[0])
            _, idx, views = next(schedule)
            assert torch.equal(idx, expected_idx)
            assert torch.equal(views, dsa.apply(images[idx], p, torch.arange(len(idx))))
    assert len(ops_seen) > 1  # batches differ in op
    with pytest.raises(ValueError, match="batch, image"):
        list(training_views(images, epochs=1, batch_size=5, augment=dsa, seed=0, dsa_ops="pixel"))


def test_dc_evaluation_augmentation_does_what_the_dc_paper_describes():
    """The DC protocol's augmentation (MNIST only): one of crop (whole-pixel shifts in [-4, 3], padded
    with the batch's channel means), nearest-neighbour scale by [0.8, 1.2] and whole-degree rotation."""
    from dd_core.augment import DCAugment, dc_augment_for
    from dd_core.data import dataset_facts
    from dd_core.evaluate import augment_for, protocol

    aug = DCAugment()
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    params = aug.sample(16, torch.Generator().manual_seed(1))
    assert set(params.op) <= {"crop", "scale", "rotate"} and len(set(params.op)) > 1  # drawn per image

    def only(op, u):
        return DSAParams(op=[op] * len(u), u=u)

    u = torch.rand(16, 4, generator=torch.Generator().manual_seed(2))
    cropped = aug.apply(x, only("crop", u), torch.arange(16))
    fill = x.mean()
    for i in range(16):
        dy, dx = int(u[i, 0] * 8) - 4, int(u[i, 1] * 8) - 4
        assert -4 <= dy <= 3 and -4 <= dx <= 3
        expected = torch.full_like(x[i], fill.item())
        src = x[i, :, max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)]
        expected[:, max(-dy, 0):max(-dy, 0) + src.shape[1], max(-dx, 0):max(-dx, 0) + src.shape[2]] = src
        assert torch.allclose(cropped[i], expected, atol=1e-6)
    # u = 0.5 is a zero-degree rotation and a scale factor of exactly 1: the image comes back.
    half = torch.full((16, 4), 0.5)
    assert torch.allclose(aug.apply(x, only("rotate", half), torch.arange(16)), x, atol=1e-5)
    assert torch.equal(aug.apply(x, only("scale", half), torch.arange(16)), x)
    # Shrinking leaves a border of zeros (the mean pixel); scaling takes pixel values, never blends.
    shrunk = aug.apply(x, only("scale", torch.zeros(16, 4)), torch.arange(16))
    assert (shrunk[:, :, :2] == 0).all() and (shrunk[:, :, :, :2] == 0).all()
    assert torch.isin(shrunk[0], torch.cat([x[0].flatten(), torch.zeros(1)])).all()
    # Only MNIST is augmented under the DC protocol; DSA protocols ignore it.
    facts = {name: dataset_facts(name) for name in ("mnist", "fashion_mnist", "digits")}
    assert dc_augment_for(facts["fashion_mnist"]) is None and isinstance(dc_augment_for(facts["mnist"]), DCAugment)
    assert isinstance(augment_for(protocol("dc"), facts["mnist"]), DCAugment)
    assert augment_for(protocol("dc"), facts["digits"]) is None
    assert isinstance(augment_for(protocol("paper"), facts["mnist"]), DSA)
    assert "DC augmentation" in protocol("dc").describe()


def _dataset_like(name: str, n: int = 4):
    from dataclasses import asdict

    from dd_core.data import Dataset, dataset_facts

    x, y = torch.zeros(n, 1, 28, 28), torch.arange(n) % 2
    return Dataset(name=name, x_train=x, y_train=y, x_test=x, y_test=y, classes=("0", "1"), mean=(0.0,), std=(1.0,),
                   **asdict(dataset_facts(name)))


def test_dc_protocol_trains_1000_epochs_where_it_augments_and_300_elsewhere():
    """The DC code: 1000 evaluation epochs whenever an augmentation is on (MNIST), 300 without."""
    from dd_core.evaluate import for_dataset, protocol

    dc = protocol("dc")
    assert (dc.epochs, dc.epochs_augmented) == (300, 1000) and "1000 where it augments" in dc.describe()
    on_mnist = for_dataset(dc, _dataset_like("mnist"))
    assert on_mnist.epochs == 1000 and "1000 epochs" in on_mnist.describe() and on_mnist.model is not None
    assert for_dataset(dc, _dataset_like("fashion_mnist")).epochs == 300
    assert for_dataset(protocol("dc", epochs=50), _dataset_like("mnist")).epochs == 50  # a chosen number holds
    assert for_dataset(protocol("paper"), _dataset_like("mnist")).epochs == 1000
    assert for_dataset(protocol("fast"), _dataset_like("mnist")).epochs == 300


@pytest.mark.parametrize("op", ["scale", "rotate"])
def test_dsa_scale_and_rotate_resample_as_the_reference_code(op):
    """The reference DSA code calls affine_grid and grid_sample with their defaults: align_corners=False."""
    import math

    x = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    params = one_op(op, 5)
    u = params.u
    if op == "scale":
        sx, sy = u[:, 0] * (1.2 - 1 / 1.2) + 1 / 1.2, u[:, 1] * (1.2 - 1 / 1.2) + 1 / 1.2
        theta = torch.zeros(5, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    else:
        a = (u[:, 0] - 0.5) * 2 * 15.0 / 180 * math.pi
        theta = torch.stack([torch.stack([a.cos(), -a.sin(), torch.zeros(5)], 1),
                             torch.stack([a.sin(), a.cos(), torch.zeros(5)], 1)], 1)
    expected = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    assert torch.allclose(DSA().apply(x, params, torch.arange(5)), expected, atol=1e-6)


def test_dc_inner_training_draws_one_dsa_op_per_batch_like_the_reference(monkeypatch):
    """DC/DSA's inner training on the synthetic set augments as the reference and the evaluator do:
    one op per batch, with its own numbers per image."""

    seen = []
    real_apply = DSA.apply

    def spy(self, x, params, groups=None):
        seen.append((list(params.op), params.u.clone()))
        return real_apply(self, x, params, groups)

    monkeypatch.setattr(DSA, "apply", spy)
    net = ConvNet(channels=1, num_classes=2, image_size=(8, 8), width=4, depth=1)
    images, labels = torch.randn(40, 1, 8, 8), torch.arange(40) % 2
    train_on_synthetic(net, images, labels, epochs=3, lr=0.01, batch_size=20, generator=torch.Generator().manual_seed(0),
                       augment=DSA())
    assert len(seen) == 6
    for ops, u in seen:
        assert len(ops) == 20 and len(set(ops)) == 1  # one op for the batch
        assert len(torch.unique(u[:, 0])) == 20  # numbers per image
    assert len({ops[0] for ops, _ in seen}) > 1  # the op itself is drawn anew each batch


def test_dsa_matching_gives_a_class_the_same_op_and_numbers_on_both_sides(monkeypatch):
    """In DSA's matching step each class's real batch and synthetic images share one op and one
    parameter set (the reference reseeds DiffAugment identically for both)."""
    from dd_core.data import load_dataset
    from dd_core.methods import make_method
    from dd_core.synthetic import init_synthetic

    calls = []
    real_apply = DSA.apply

    def spy(self, x, params, groups=None):
        calls.append((params, None if groups is None else groups.clone()))
        return real_apply(self, x, params, groups)

    digits = load_dataset("digits")
    method = make_method("dsa", dataset="digits", ipc=1, outer_loop=1, inner_loop=1, batch_real=4, model="convnet_d2")
    method.setup(digits, init_synthetic(digits, 1, seed=0), seed=0, device=torch.device("cpu"))
    monkeypatch.setattr(DSA, "apply", spy)
    method.step()
    (p_real, g_real), (p_syn, g_syn) = calls[:2]
    assert p_real is p_syn and len(p_real.op) == 10  # one draw per class, given to both sides
    assert torch.equal(g_real.unique(), torch.arange(10)) and torch.equal(g_syn, torch.arange(10))


def test_chunks_fit_the_cache_and_change_nothing_but_rounding():
    from dd_core.methods.sampling import chunk_size, embed_chunked, embed_in_chunks
    from dd_core.models import MLP

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 28, 28, generator=g)
    wide = ConvNet(channels=1, num_classes=10, image_size=(28, 28))  # 128 x 32 x 32 floats: 512 KiB an image
    assert chunk_size(wide, x) == 16
    assert chunk_size(ConvNet(channels=1, num_classes=10, image_size=(28, 28), width=32), x) == 64
    assert chunk_size(MLP(channels=1, num_classes=10, image_size=(28, 28)), x) == 64
    torch.testing.assert_close(embed_chunked(wide, x), wide.embed(x).detach(), rtol=1e-5, atol=1e-6)
    # With gradients: the chunks' graphs give the whole batch's gradient. Compared in float64, where
    # the two paths agree to 1e-15: in float32 a ReLU input within rounding of 0 can fall on either
    # side of its kink in the two, and one such unit in millions moves a pixel's gradient.
    wide64, x64 = wide.double(), x.double()
    a, b = x64.clone().requires_grad_(True), x64.clone().requires_grad_(True)
    direction = torch.randn(40, wide.feat_dim, generator=g, dtype=torch.float64)
    assert embed_in_chunks(wide64, a).shape == (40, wide.feat_dim)
    (embed_in_chunks(wide64, a) * direction).sum().backward()
    (wide64.embed(b) * direction).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9 * float(b.grad.abs().max()))


def test_a_batch_norm_network_is_embedded_in_one_batch():
    """Batch statistics depend on the batch: chunks would change the function (the reference DM code
    embeds batch-norm networks in one batch of every class)."""
    from dd_core.methods.sampling import chunk_size, embed_chunked, embed_in_chunks

    x = torch.randn(40, 1, 28, 28)
    bn = ConvNet(channels=1, num_classes=10, image_size=(28, 28), norm="batchnorm")
    assert chunk_size(bn, x) == 40 and chunk_size(bn.eval(), x) == 16
    bn.train()
    torch.testing.assert_close(embed_chunked(bn, x), bn.embed(x).detach())
    torch.testing.assert_close(embed_in_chunks(bn, x), bn.embed(x))


@pytest.mark.parametrize("shape, width", [((1, 28, 28), 128), ((3, 32, 32), 32), ((1, 8, 8), 16)])
def test_the_fast_embedding_is_the_embedding(shape, width):
    g = torch.Generator().manual_seed(0)
    net = ConvNet(channels=shape[0], num_classes=10, image_size=shape[1:], width=width)
    x = torch.randn(12, *shape, generator=g)
    torch.testing.assert_close(net.embed_fast(x), net.embed(x), rtol=1e-5, atol=1e-5)
    # Gradients in float64 (see the chunk test for why not float32).
    net = net.double()
    a, b = x.double().requires_grad_(True), x.double().requires_grad_(True)
    fast, plain = net.embed_fast(a), net.embed(b)
    direction = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    (fast * direction).sum().backward()
    (plain * direction).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9 * float(b.grad.abs().max()))
    w_fast = torch.autograd.grad((net.embed_fast(a) * direction).sum(), net.features[0].weight)[0]
    w_plain = torch.autograd.grad((net.embed(b) * direction).sum(), net.features[0].weight)[0]
    torch.testing.assert_close(w_fast, w_plain, rtol=1e-9, atol=1e-9 * float(w_plain.abs().max()))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_the_first_block_folds_the_instance_norm_into_one_product(shape):
    # float64: on the blank image the plain norm divides float rounding by sqrt(eps), the fold does not.
    net = ConvNet(channels=shape[0], num_classes=10, image_size=shape[1:], width=16).double()
    with torch.no_grad():  # a non-trivial affine norm and bias, and one blank image (zero variance)
        net.features[1].weight.uniform_(0.5, 2.0), net.features[1].bias.uniform_(-1, 1), net.features[0].bias.uniform_(-1, 1)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(5, *shape, generator=g, dtype=torch.float64), torch.zeros(1, *shape, dtype=torch.float64)])
    layers = list(net.features)
    assert _foldable_first_block(layers, x)
    torch.testing.assert_close(_first_block(layers[0], layers[1], x), net.features[:4](x), rtol=1e-9, atol=1e-9)
    blank = _first_block(layers[0], layers[1], x[-1:])[0]
    torch.testing.assert_close(blank, net.features[1].bias.relu()[:, None, None].expand_as(blank))


def test_a_first_block_without_instance_norm_takes_the_plain_path():
    net = ConvNet(channels=1, num_classes=10, image_size=(28, 28), width=16, norm="batchnorm").eval()
    x = torch.randn(4, 1, 28, 28)
    assert not _foldable_first_block(list(net.features), x)
    torch.testing.assert_close(net.embed_fast(x), net.embed(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, power", [((1, 28, 28), 4.0), ((3, 32, 32), 1.0), ((1, 8, 8), 2.5)])
def test_datadam_attention_through_the_fast_path_is_the_plain_one(shape, power):
    from dd_core.methods.datadam import attention_features, block_activations, spatial_attention

    net = ConvNet(channels=shape[0], num_classes=10, image_size=shape[1:], width=16).double()  # float64: see the chunk test
    a = torch.randn(6, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)
    b = a.detach().clone().requires_grad_(True)
    fast = attention_features(net, a, power)
    acts, embedding = block_activations(net, b)
    plain = [F.normalize(act.abs().pow(power).mean(dim=1).flatten(1), dim=1) for act in acts[:-1]] + [embedding]
    assert [f.shape for f in fast] == [p.shape for p in plain]
    for f, p in zip(fast, plain):
        torch.testing.assert_close(f, p, rtol=1e-9, atol=1e-12)
    sum(((f - 0.1) ** 2).sum() for f in fast).backward()
    sum(((p - 0.1) ** 2).sum() for p in plain).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9 * float(b.grad.abs().max()))
    x = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]]]])  # one channel: the map is |x|^p, normalised
    torch.testing.assert_close(spatial_attention(x, power), F.normalize(x.abs().pow(power).flatten(1), dim=1))
