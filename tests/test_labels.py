"""Label stores: the maths of the one loss, byte counts against hand formulas, valid targets,
replayed views, and the file round trip of every registered store (on the offline digits)."""
from __future__ import annotations

import dataclasses
import importlib
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dd_core.data import load_dataset
from dd_core.evaluate import evaluate, protocol
from dd_core.training import test_accuracy as accuracy_on_test
from dd_core.label_stores.base import (AUG_RECORD_BYTES, LABEL_STORES, HardLabels, LabelStore, TeacherRequired,
                                      soft_cross_entropy)
from dd_core.labels import attach, build, build_spec, load_store, parse_spec, same_kind
from dd_core.label_stores.distance import distances, reconstruct
from dd_core.label_stores.dynamic import AugRecord
from dd_core.label_stores.soft import RowCodec
from dd_core.models import num_parameters
from dd_core.synthetic import SyntheticSet, init_synthetic
from dd_core.teacher import Teacher, probabilities, train_on_real

C = 10  # digits classes
QUICK = {"projector": {"steps": 5, "arch": "convnet_w32"}}  # a fit of a few steps is enough for the round trip


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def teacher(digits):
    # A quickly trained teacher (2 epochs) stands in for the cached one: these tests check plumbing.
    net = train_on_real(digits, "convnet_d2", 2, 0, "cpu")
    for p in net.parameters():
        p.requires_grad_(False)
    return Teacher(net, "convnet_d2", 2, accuracy_on_test(net, digits, "cpu"), 0.0)


@pytest.fixture(scope="module")
def syn(digits):
    return init_synthetic(digits, 2, seed=0)  # 20 images


@pytest.fixture(scope="module")
def config():
    return protocol("fast", epochs=3, num_models=1, batch_size=8)  # 3 batches per epoch


def views_of(syn, record: AugRecord):
    return list(record.views(syn.images, syn.dataset))


# -- the one loss --------------------------------------------------------------------------------


def test_hard_labels_through_soft_loss_equal_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(32, C, generator=g, dtype=torch.float64), torch.randint(C, (32,), generator=g)
    targets = HardLabels(labels, C).targets(torch.arange(32)).double()
    assert torch.allclose(soft_cross_entropy(logits, targets), F.cross_entropy(logits, labels))


# -- byte counts against hand-computed formulas ----------------------------------------------------


def test_byte_counts_match_hand_formulas(syn, digits, teacher, config):
    n, e = len(syn.images), config.epochs
    expected = {
        "hard": n * 1,
        "soft": n * C * 2,  # float16
        "soft:dtype=float32": n * C * 4,
        "soft:dtype=int8": n * C * 1,
        "soft:topk=3": n * 3 * (2 + 1),  # float16 value + uint8 index
        "dynamic": e * n * C * 2 + 16,
        "dynamic:dtype=int8,topk=2": e * n * 2 * (1 + 1) + 16,
        "dynamic-pruned:keep=0.34": 1 * n * C * 2 + 16 + 8,  # round(0.34 * 3) = 1 kept label per image
        "distance": n * 2 * 2 + n * 1 + C * C * 2,
        "distance:per_view=1": e * n * 2 * 2 + n * 1 + C * C * 2 + 16,
        "teacher": num_parameters(teacher.net) * 4 + 4,  # GroupNorm nets have no buffers; + float32 T
        "teacher:dtype=float16": num_parameters(teacher.net) * 2 + 4,
    }
    for spec, nbytes in expected.items():
        assert build_spec(spec, syn, digits, teacher, config).nbytes() == nbytes, spec


def test_projector_counts_only_updates_head_and_seed(syn, digits, teacher, config):
    store = build("projector", syn, digits, teacher, config, **QUICK["projector"])
    # convnet_w32 on 8x8 with depth 3: convs 1->32, 32->32, 32->32 (3x3); head 32 x 10 + 10; rank 4
    lora = 4 * (32 + 1 * 9) + 2 * 4 * (32 + 32 * 9)
    head = 32 * C + C
    assert store.nbytes() == (lora + head) * 2 + 8
    assert "not counted" in store.uncounted() and "regenerated from seed" in store.uncounted()
    light = build("projector", syn, digits, teacher, config, head_rank=2, rank=1, **QUICK["projector"])
    assert light.nbytes() == (1 * (32 + 9) + 2 * 1 * (32 + 288) + 2 * (C + 32) + C) * 2 + 8


def test_pruned_fills_cost_what_they_say(syn, digits, teacher, config):
    n = len(syn.images)
    for fill, extra in (("view", 0), ("label", 0), ("hard", n * 1)):
        store = build_spec(f"dynamic-pruned:keep=0.34,fill={fill}", syn, digits, teacher, config)
        assert store.nbytes() == n * C * 2 + 16 + 8 + extra
    with pytest.raises(ValueError, match="valid fills are"):
        build_spec("dynamic-pruned:fill=zero", syn, digits, teacher, config)


# -- valid targets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["soft:dtype=int8", "soft:topk=1", "soft:topk=3", "soft:dtype=int8,topk=2",
                                  "dynamic:dtype=int8,topk=2", "distance", "distance:per_view=1",
                                  "dynamic-pruned:keep=0.34,fill=hard"])
def test_compressed_targets_are_distributions(spec, syn, digits, teacher, config):
    store = build_spec(spec, syn, digits, teacher, config)
    for epoch in range(config.epochs):
        t = store.targets(torch.arange(len(syn.images)), syn.images, epoch)
        assert t.shape == (len(syn.images), C)
        assert (t >= 0).all() and torch.allclose(t.sum(1), torch.ones(len(t)), atol=1e-5)


def test_row_codec_keeps_the_top_classes():
    p = F.softmax(torch.randn(50, C, generator=torch.Generator().manual_seed(1)) * 3, 1)
    codec = RowCodec(C, "float16", 2)
    q = codec.decode(*codec.encode(p))
    assert torch.equal(q.argmax(1), p.argmax(1))
    top2 = p.topk(2, 1).indices
    assert torch.allclose(q.gather(1, top2), p.gather(1, top2), atol=2e-3)


def test_distance_targets_have_the_stored_distances():
    g = torch.Generator().manual_seed(2)
    p = F.softmax(torch.randn(64, C, generator=g) * 2, 1)
    y = torch.randint(C, (64,), generator=g)
    relation = F.softmax(torch.randn(C, C, generator=g), 1)
    t = reconstruct(y, distances(p, y), relation)
    assert torch.allclose(distances(t, y), distances(p, y), atol=1e-3)


# -- dynamic labels replay the very views they labelled ----------------------------------------------------


class Recording(LabelStore):
    """Wraps a store and records every (epoch, idx, views) the evaluator asks it about."""

    def __init__(self, store):
        super().__init__(store.num_classes)
        self.store, self.calls, self.name = store, [], store.name

    def inputs(self, idx, views, epoch):
        return self.store.inputs(idx, views, epoch)

    def targets(self, idx, views, epoch):
        self.calls.append((epoch, idx.clone(), views.detach().clone()))
        return self.store.targets(idx, views, epoch)

    def view_seed(self, default):
        return self.store.view_seed(default)

    def check_config(self, config, dataset):
        self.store.check_config(config, dataset)


@pytest.mark.parametrize("spec", ["dynamic:dtype=float32", "dynamic-pruned:dtype=float32,keep=1.0"])
def test_dynamic_labels_are_for_the_views_trained_on(spec, syn, digits, teacher, config):
    store = build_spec(spec, syn, digits, teacher, config)
    labelled = views_of(syn, store.record)  # what the store labelled: (epoch, idx, views)
    rec = Recording(store)
    evaluate(syn.images, rec, digits, dataclasses.replace(config, num_models=2), device="cpu")
    assert len(rec.calls) == 2 * len(labelled)  # both networks replay the one recorded schedule
    for k in range(2):
        for (epoch, idx, views), (e0, i0, v0) in zip(rec.calls[k * len(labelled):], labelled):
            assert epoch == e0 and torch.equal(idx, i0) and torch.equal(views, v0)  # same seed, same crops
            again = probabilities(teacher.net, views, "cpu", store.temperature)
            assert torch.allclose(store.targets(idx, views, epoch), again, atol=1e-5)


def test_pruned_labels_train_only_on_labelled_views(syn, digits, teacher):
    config = protocol("fast", epochs=10, num_models=1, batch_size=8)
    store = build_spec("dynamic-pruned:dtype=float32,keep=0.2", syn, digits, teacher, config)
    replayed = {}  # (epoch, image) -> the scheduled view
    for epoch, idx, views in views_of(syn, store.record):
        replayed.update({(epoch, int(i)): v for i, v in zip(idx, views)})
    rec = Recording(store)
    evaluate(syn.images, rec, digits, config, device="cpu")
    shown = 0
    for epoch, idx, views in rec.calls:
        again = probabilities(teacher.net, views, "cpu", store.temperature)
        assert torch.allclose(store.targets(idx, views, epoch), again, atol=1e-5)  # each view has its own label
        for i, v in zip(idx.tolist(), views):
            kept_epoch = int(store.kept_[store.slot_[epoch, i], i])
            assert torch.equal(v, replayed[(kept_epoch, i)])  # the kept view of the nearest kept epoch
            shown += kept_epoch != epoch
    assert shown > 0  # pruned (epoch, image) pairs were shown another epoch's labelled view


def test_pruned_labels_fall_back_to_the_nearest_kept_epoch(syn, digits, teacher):
    config = protocol("fast", epochs=10, num_models=1, batch_size=8)
    store = build_spec("dynamic-pruned:keep=0.2", syn, digits, teacher, config)
    assert store.values.shape[:2] == (2, len(syn.images))  # 2 of 10 epochs kept per image
    full = build_spec("dynamic", syn, digits, teacher, config)
    from dd_core.label_stores.dynamic import kept_epochs

    kept = kept_epochs(10, len(syn.images), 2, 0)  # (2, N)
    for i in range(len(syn.images)):
        for e in range(10):
            nearest = kept[(kept[:, i] - e).abs().argmin(), i]
            got = store.targets(torch.tensor([i]), None, e)
            assert torch.allclose(got, full.targets(torch.tensor([i]), None, int(nearest)), atol=1e-6)


def test_dynamic_labels_refuse_another_schedule(syn, digits, teacher, config):
    store = build_spec("dynamic", syn, digits, teacher, config)
    with pytest.raises(ValueError, match="made for 3 epochs"):
        evaluate(syn.images, store, digits, dataclasses.replace(config, epochs=5), device="cpu")
    with pytest.raises(ValueError, match="not 'dc'"):
        evaluate(syn.images, store, digits, dataclasses.replace(config, dsa=False, dc_aug=True), device="cpu")


# -- the projector learns the teacher ----------------------------------------------------------------------


def test_projector_reproduces_the_teacher_better_than_chance(syn, digits, teacher, config):
    store = build("projector", syn, digits, teacher, config, arch="convnet_w32", steps=60)
    x = digits.x_test[:300]
    agree = (store.targets(torch.arange(len(x)), x, 0).argmax(1) == teacher.net(x).argmax(1)).float().mean()
    assert agree > 0.5  # chance is 1/10


# -- every store round-trips through the synthetic-set file ----------------------------------------------------


# 'committee' needs several teachers (CV-DD makes them): its round trip is in test_decoupled.py.
VARIANTS = [(name, QUICK.get(name, {})) for name in LABEL_STORES.names() if name != "committee"] + [
    ("soft", {"topk": 2, "dtype": "int8"}), ("dynamic-pruned", {"fill": "hard", "keep": 0.5}),
    ("distance", {"per_view": True}), ("projector", {**QUICK["projector"], "head_rank": 2})]


@pytest.mark.parametrize("name, options", VARIANTS, ids=[f"{n}{o}" for n, o in VARIANTS])
def test_every_store_round_trips_through_the_file(name, options, syn, digits, teacher, config):
    store = build(name, syn, digits, teacher, config, **options)
    holder = syn.clone()
    attach(holder, store)
    assert holder.extra_meta["label_store"] == name
    assert all(k.startswith("label_store.") for k in holder.extra)
    loaded = load_store(SyntheticSet.from_bytes(holder.to_bytes()))
    assert type(loaded) is type(store) and loaded.nbytes() == store.nbytes() and loaded.formula() == store.formula()
    g = torch.Generator().manual_seed(3)
    for epoch in range(config.epochs):
        idx = torch.randperm(len(syn.images), generator=g)[:7]
        views = syn.images[idx] + 0.1 * torch.randn(7, *syn.images.shape[1:], generator=g)
        assert torch.allclose(loaded.targets(idx, views, epoch), store.targets(idx, views, epoch), atol=1e-6)


def test_the_spec_survives_the_file_and_rebuilds_the_same_kind(syn, digits, teacher, config):
    holder = syn.clone()
    attach(holder, build_spec("soft:dtype=int8,topk=2", holder, digits, teacher, config))
    loaded = load_store(SyntheticSet.from_bytes(holder.to_bytes()))
    assert loaded.spec == "soft:dtype=int8,topk=2"
    other = init_synthetic(digits, 2, seed=5)  # a random subset: the IOR baseline's images
    twin = same_kind(loaded, other, digits, teacher, config)
    assert type(twin) is type(loaded) and twin.spec == loaded.spec and twin.nbytes() == loaded.nbytes()
    assert tuple(twin.indices.shape) == (len(other.images), 2) and twin.values.dtype == torch.uint8, "same options"
    hard = same_kind(HardLabels(syn.labels, C), other, digits, None, config)
    assert isinstance(hard, HardLabels) and torch.equal(hard.labels, other.labels)


def test_evaluate_synthetic_trains_on_the_attached_store(syn, digits, teacher, config, monkeypatch):
    ev = importlib.import_module("dd_core.evaluate")  # the module (dd_core.evaluate is also a function)

    seen = []
    monkeypatch.setattr(ev, "evaluate", lambda images, labels, *a, **k: seen.append(labels))
    holder = syn.clone()
    attach(holder, build("soft", holder, digits, teacher, config))
    ev.evaluate_synthetic(SyntheticSet.from_bytes(holder.to_bytes()), digits, config)
    ev.evaluate_synthetic(syn, digits, config)
    assert [s.name for s in seen] == ["soft", "hard"]


def test_a_set_without_a_store_loads_hard_labels(syn):
    store = load_store(syn)
    assert isinstance(store, HardLabels) and torch.equal(store.labels, syn.labels)


def test_a_store_for_other_images_is_refused(syn, digits, teacher, config):
    holder = syn.clone()
    attach(holder, build("soft", holder, digits, teacher, config))
    holder.images = holder.images + 1
    with pytest.raises(ValueError, match="made for other images"):
        load_store(holder)


# -- bad input says what to do ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in LABEL_STORES.names() if LABEL_STORES.get(n).needs_teacher])
def test_a_store_needing_a_teacher_says_so(name, syn, digits, config):
    with pytest.raises(TeacherRequired, match="needs a teacher"):
        build(name, syn, digits, None, config)


def test_top_k_beyond_the_classes_says_the_limit(syn, digits, teacher, config):
    with pytest.raises(ValueError, match="limit is k <= 10"):
        build_spec("soft:topk=11", syn, digits, teacher, config)


def test_specs_are_parsed_and_checked():
    assert parse_spec("soft:dtype=int8,topk=2") == ("soft", {"dtype": "int8", "topk": 2})
    assert parse_spec("distance:per_view=1") == ("distance", {"per_view": True})
    with pytest.raises(ValueError, match="its options are"):
        parse_spec("soft:colour=red")
    with pytest.raises(ValueError, match="takes an integer"):
        parse_spec("soft:topk=two")
    with pytest.raises(KeyError, match="valid label stores are"):
        parse_spec("fuzzy")


def test_aug_record_costs_what_it_says():
    assert AUG_RECORD_BYTES == 8 + 4 + 4


def test_an_old_record_replays_one_op_per_image(syn, digits, teacher, config):
    record = AugRecord.for_config(config)
    assert record.dsa_ops == "batch" and record.meta()["dsa_ops"] == "batch"
    old = {k: v for k, v in record.meta().items() if k != "dsa_ops"}  # a file from before the field
    assert AugRecord.from_meta(old).dsa_ops == "image"
    with pytest.raises(ValueError, match="one op per image"):
        AugRecord.from_meta(old).check(config, "dynamic")


def test_a_cached_teacher_is_validated_and_a_broken_file_rebuilt(digits, caplog):
    import dd_core.teacher as teacher_module
    from dd_core.cache import cache_path

    first = teacher_module.get_teacher(digits, arch="mlp", epochs=1, seed=5, device="cpu")
    key = teacher_module._key(digits, "mlp", 1, 5)
    path = cache_path("teachers", key, ".safetensors")
    assert path.is_file()  # one .safetensors file under the teacher's key
    teacher_module._memory.pop(key)
    again = teacher_module.get_teacher(digits, arch="mlp", epochs=1, seed=5, device="cpu")  # from the file
    assert again.test_accuracy == first.test_accuracy
    path.write_bytes(b"not a safetensors file")
    teacher_module._memory.pop(key)
    with caplog.at_level("WARNING", logger="distillery.cache"):
        rebuilt = teacher_module.get_teacher(digits, arch="mlp", epochs=1, seed=5, device="cpu")
    assert "unusable" in caplog.text and rebuilt.test_accuracy == first.test_accuracy  # same seed, same network


def test_the_online_teacher_labels_in_channels_last_what_nchw_labels():
    """The store keeps its teacher's weights in channels-last on a CPU (faster convolutions); the labels
    are the plain NCHW network's, to float rounding, and the file keeps them as they were."""
    from dd_core.label_stores.online import OnlineTeacher, network_for

    syn32 = SimpleNamespace(images=torch.rand(6, 3, 32, 32), num_classes=3)  # what network_for reads
    net = network_for(syn32, "convnet_bn", seed=0).eval()
    reference = {k: v.clone() for k, v in net.state_dict().items()}
    store = OnlineTeacher(net, arch="convnet_bn", dtype="float32", temperature=2.0)
    assert store.net.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = network_for(syn32, "convnet_bn").eval()
    plain.load_state_dict(reference)
    views = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = F.softmax(plain(views) / 2.0, dim=1)
    torch.testing.assert_close(store.targets(torch.arange(6), views), expected, rtol=1e-5, atol=1e-6)
    tensors, meta = store.state()
    again = OnlineTeacher.from_state({k: v.contiguous() for k, v in tensors.items()}, meta, syn32)
    torch.testing.assert_close(again.targets(torch.arange(6), views), expected, rtol=1e-5, atol=1e-6)
