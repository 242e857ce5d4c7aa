"""Trajectory matching: experts as a cached artefact, the shared unroll, TESLA's gradient, bad settings."""
from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from dd_core import experts, load_dataset
from dd_core.distill import run_to_end
from dd_core.experts import ExpertFileError, ExpertRecipe, get_experts, read_experts
from dd_core.methods import make_method
from dd_core.methods.unroll import (Draws, FlatNet, inner_loss, matching_loss, unroll_adjoint, unroll_autograd,
                                    unroll_truncated)
from dd_core.augment import dsa_for
from dd_core.models import build_model, fast_forward
from dd_core.synthetic import SyntheticSet, init_synthetic

TINY_RECIPE = ExpertRecipe(model="convnet_d2", epochs=2)  # what MTT with max_start_epoch 2, expert_epochs 1 needs
ONE_EPOCH = ExpertRecipe(model="convnet_d2", epochs=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_trajectory_round_trips_through_its_files(digits, tmp_path):
    seeds = experts.build_experts(digits, ONE_EPOCH, 2, tmp_path, seed=5, dtype="float16")
    back = read_experts(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    assert seeds == back.seeds == [5, 6]
    assert back.epochs == 1 and back.num_experts == 2 and back.params[0].dtype == torch.float16
    assert index["bytes"] == sum(p.stat().st_size for p in tmp_path.glob("expert_*.safetensors"))
    assert index["recipe"]["lr"] == 0.01 and index["recipe"]["momentum"] == 0.0 and index["code_version"]
    assert len(index["experts"][0]["test_accuracy"]) == 2  # the start and every epoch
    # the stored checkpoints are the expert's parameters: retraining the same seed gives them again
    params, acc = experts.train_expert(digits, ONE_EPOCH, 5)
    assert torch.allclose(back.checkpoint(0, 1), params[1], atol=1e-3)  # float16 storage
    assert back.test_accuracy[0] == pytest.approx(acc, abs=1e-6)


def test_missing_or_corrupt_expert_file_is_reported_and_rebuilt(digits, caplog):
    first = get_experts(digits, ONE_EPOCH, 2)
    folder = experts.expert_folder(digits, ONE_EPOCH, 2)
    (folder / "expert_001.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ExpertFileError, match="expert_001.safetensors .* is corrupt.*build the experts again"):
        read_experts(folder)
    experts._memory.clear()
    with caplog.at_level(logging.WARNING, logger="distillery.cache"):
        again = get_experts(digits, ONE_EPOCH, 2)
    assert "unusable" in caplog.text and "rebuilding" in caplog.text
    assert torch.equal(again.params[1], first.params[1])
    (folder / "expert_000.safetensors").unlink()
    with pytest.raises(ExpertFileError, match="expert_000.safetensors is missing"):
        read_experts(folder)
    experts._memory.clear()
    assert get_experts(digits, ONE_EPOCH, 2).num_experts == 2


def test_an_interrupted_build_resumes_keeping_the_experts_it_finished(digits, tmp_path, monkeypatch, capsys):
    from dd_core.cli import main

    args = ["experts", "--dataset", "digits", "--model", "convnet_d2", "--experts", "3", "--epochs", "1", "--quiet",
            "--out", str(tmp_path)]
    assert main(args) == 0
    whole = read_experts(tmp_path)
    # as a build stopped while training expert 2 leaves it: no index, expert 2 half-written, 0 and 1 done
    (tmp_path / "index.json").unlink()
    (tmp_path / "expert_002.safetensors").write_bytes(b"cut short")
    trained = []
    real_train = experts.train_expert
    monkeypatch.setattr(experts, "train_expert", lambda *a, **k: trained.append(a[2]) or real_train(*a, **k))
    assert main(args + ["--resume"]) == 0
    assert trained == [2]  # the seed of expert 2 only; experts 0 and 1 were checked and kept
    again = read_experts(tmp_path)
    for a, b in zip(whole.params, again.params):
        assert torch.equal(a, b)
    # a folder of another recipe is not mixed in: the message says what differs
    capsys.readouterr()
    assert main(args[:-2] + ["--set", "lr=0.02", "--out", str(tmp_path), "--resume"]) == 2
    assert "holds part of another expert build (recipe not as in this one)" in capsys.readouterr().err
    assert trained == [2]  # nothing trained for it
    trained.clear()
    assert main(args) == 0 and trained == [0, 1, 2]  # without --resume everything is trained again


def _small_case(seed=0, soft=False):
    torch.manual_seed(seed)
    net = build_model("convnet_d2", channels=1, num_classes=3, image_size=(8, 8), seed=seed).double()
    f = FlatNet(net)
    start = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    target = start + 0.01 * torch.randn(len(start), dtype=torch.float64)
    images = torch.randn(6, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(seed)
    dsa = dsa_for(load_dataset("digits"))
    batches = [torch.randperm(6, generator=g)[:4] for _ in range(4)]
    draws = Draws(batches, [dsa.sample_batch(4, g) for _ in batches])
    return f, start, target, images, logits, lr, draws, dsa


def test_tesla_gradient_equals_mtt_autograd():
    # The constant-memory adjoint and autograd through the kept unroll give the same gradient of the
    # images, the lr and the (soft) labels, in float64.
    f, start, target, images, logits, lr, draws, dsa = _small_case()
    targets = torch.softmax(logits, 1)
    loss, _ = unroll_autograd(f, start, target, images, targets, lr, draws, dsa)
    g_img, g_lr, g_y = torch.autograd.grad(loss, [images, lr, logits])
    loss2, _, a_img, a_lr, a_targets = unroll_adjoint(f, start, target, images, torch.softmax(logits, 1), lr, draws, dsa)
    (a_y,) = torch.autograd.grad(torch.softmax(logits, 1), logits, a_targets)
    assert loss2.item() == pytest.approx(loss.detach().item(), rel=1e-10)
    assert g_img.abs().max() > 0 and g_lr.abs() > 0
    torch.testing.assert_close(a_img, g_img, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(a_lr, g_lr, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(a_y, g_y, rtol=1e-7, atol=1e-10)


def test_teslas_published_gradient_drops_the_hessian_chain():
    # TESLA's public code differentiates each step's gradient as a function of its own batch only, at
    # a fixed student: the same as autograd through an unroll whose every gradient is taken at a
    # detached theta_i. That is not MTT's gradient (the exact adjoint above is).
    f, start, target, images, logits, lr, draws, dsa = _small_case()
    loss, _, t_img, t_lr, t_targets = unroll_truncated(f, start, target, images, torch.softmax(logits, 1), lr, draws, dsa)
    (t_y,) = torch.autograd.grad(torch.softmax(logits, 1), logits, t_targets)
    theta, targets = start, torch.softmax(logits, 1)
    for idx, aug in zip(draws.batches, draws.augment):
        at = theta.detach().requires_grad_(True)
        theta = theta - lr * torch.autograd.grad(inner_loss(f, at, images, targets, idx, aug, dsa), at, create_graph=True)[0]
    want = torch.autograd.grad(matching_loss(theta, start, target), [images, lr, logits])
    for got, ref in zip((t_img, t_lr, t_y), want):
        assert ref.abs().max() > 0
        torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-10)
    exact_img, exact_lr = torch.autograd.grad(unroll_autograd(f, start, target, images, torch.softmax(logits, 1), lr,
                                                              draws, dsa)[0], [images, lr])
    assert loss.item() == pytest.approx(matching_loss(theta, start, target).item(), rel=1e-10)
    assert torch.nn.functional.cosine_similarity(t_img.flatten(), exact_img.flatten(), dim=0) < 0.99
    assert abs(t_lr - exact_lr) > 1e-3 * abs(exact_lr)


def test_tesla_without_the_hessian_chain_runs_the_published_gradient(digits):
    method = make_method("tesla", dataset="digits", ipc=1, model="convnet_d2", num_experts=2, expert_epochs=1,
                         max_start_epoch=1, hessian_chain=False)  # the experts of the stopping test below
    method.setup(digits, init_synthetic(digits, 1, seed=0), seed=0, device=torch.device("cpu"))
    before = method.images_.detach().clone()
    out = method.step()
    assert math.isfinite(out["loss"]) and not torch.equal(method.images_.detach(), before)


def test_the_students_fast_forward_gives_the_plain_networks_unrolled_gradient():
    # The student runs ConvNet's folded CPU forward (first block as one product per image, strided
    # pools); unrolled and differentiated twice it must give what the plain forward, the official
    # code's network, gives: the loss and the gradients of the images, the lr and the labels, in float64.
    f, start, target, images, logits, lr, draws, dsa = _small_case()
    assert fast_forward(f.net) == f.net.forward_fast  # the folded path is the one under test (8x8, one channel)
    plain = FlatNet(f.net, fast=False)
    got, want = ([*torch.autograd.grad(unroll_autograd(g, start, target, images, torch.softmax(logits, 1), lr, draws,
                                                     dsa)[0], [images, lr, logits])] for g in (f, plain))
    assert want[0].abs().max() > 0 and want[1].abs() > 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_an_expert_step_through_the_fast_forward_takes_the_plain_networks_gradient():
    # Experts train through ConvNet's folded CPU forward, which leaves out the first conv's bias (instance
    # norm cancels it): every gradient must be the plain forward's, the bias's zero, in float64.
    torch.manual_seed(0)
    net = build_model("convnet", channels=3, num_classes=10, image_size=(32, 32), seed=0).double()
    x, y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.arange(6) % 10
    assert fast_forward(net) == net.forward_fast
    fast = experts._gradients(net, lambda: torch.nn.functional.cross_entropy(net.forward_fast(x), y), ExpertRecipe())
    plain = torch.autograd.grad(torch.nn.functional.cross_entropy(net(x), y), list(net.parameters()))
    assert len(fast) == len(plain) and fast[1].abs().max() == 0 and plain[1].abs().max() < 1e-12
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_set_balanced_inner_loss_weights_late_starts_more_and_equals_a_scaled_student_loss():
    import math

    from dd_core.label_stores.base import soft_cross_entropy

    method = make_method("set", dataset="digits", ipc=1, max_start_epoch=20)
    weights = [method.inner_weight(t) for t in range(20)]
    assert weights[10] == pytest.approx(math.log(8, 5)) and weights[9] == pytest.approx(1 / math.log(9, 5))
    assert all(a < b for a, b in zip(weights, weights[1:]))  # rises with the start epoch
    assert make_method("set", dataset="digits", ipc=1, balanced_inner=False).inner_weight(0) == 1.0
    # SeT steps at lr x w; that is the student training on its loss scaled by w, stepped at lr.
    f, start, target, images, logits, lr, draws, dsa = _small_case()
    targets, w = torch.softmax(logits, 1), weights[3]
    theta = start.clone().requires_grad_(True)
    for idx, aug in zip(draws.batches, draws.augment):
        x = dsa.apply(images[idx], aug, torch.arange(len(idx)))
        theta = theta - lr * torch.autograd.grad(w * soft_cross_entropy(f(theta, x), targets[idx]), theta,
                                                 create_graph=True)[0]
    want = torch.autograd.grad(((theta - target) ** 2).sum() / ((start - target) ** 2).sum(), [images, lr])
    got = torch.autograd.grad(unroll_autograd(f, start, target, images, targets, lr * w, draws, dsa)[0], [images, lr])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_unroll_leaves_the_start_unchanged():
    f, start, target, images, logits, lr, draws, dsa = _small_case()
    before = start.clone()
    unroll_autograd(f, start, target, images, torch.softmax(logits, 1), lr, draws, dsa)[0].backward()
    unroll_adjoint(f, start, target, images, torch.softmax(logits, 1), lr, draws, dsa)
    assert torch.equal(start, before)


def test_bad_settings_name_their_limits(digits):
    with pytest.raises(ValueError, match="syn_steps = 0 is out of range; valid values are 1 to"):
        make_method("mtt", dataset="digits", ipc=1, syn_steps=0)
    # Starts are drawn from [0, T+) and the target is M epochs later, as in MTT's buffer: T+ 1 and M 1
    # read epochs 0 and 1, one trained epoch; T+ 2 reads up to epoch 2.
    one = make_method("mtt", dataset="digits", ipc=1, model="convnet_d2", max_start_epoch=1, expert_epochs=1)
    assert one.recipe(digits) == ONE_EPOCH
    method = make_method("mtt", dataset="digits", ipc=1, model="convnet_d2", num_experts=2, max_start_epoch=2,
                         expert_epochs=1)
    assert method.recipe(digits) == TINY_RECIPE  # the cached experts of the other tests: 2 epochs
    datm = make_method("datm", dataset="digits", ipc=1, model="convnet_d2", max_start_epoch=1, max_start_epoch_final=3,
                       expert_epochs=2, label_epochs=0)
    assert datm.recipe(digits).epochs == 4  # the grown window's last start (2) + M
    assert make_method("datm", preset="fast", dataset="digits", ipc=1).label_epochs == 30
    assert make_method("datm", preset="paper", dataset="cifar10", ipc=10).label_epochs == 100
    for name in ("mtt", "tesla", "ftd", "datm", "set"):  # MTT whitens CIFAR-10 at IPC 1 and 10, not at 50
        zca = {(d, ipc): make_method(name, preset="paper", dataset=d, ipc=ipc).zca
               for d in ("cifar10", "mnist") for ipc in (1, 10, 50)}
        assert zca == {("cifar10", 1): True, ("cifar10", 10): True, ("cifar10", 50): False,
                       ("mnist", 1): False, ("mnist", 10): False, ("mnist", 50): False}, name
    too_far = make_method("mtt", dataset="digits", ipc=1, model="convnet_d2", num_experts=2, max_start_epoch=5,
                          expert_epochs=1)
    too_far.recipe = lambda dataset: method.recipe(dataset)  # pretend they are the stored experts
    snap_error = None
    try:
        run_to_end(digits, too_far, method_name="mtt", ipc=1, steps=1, device=torch.device("cpu"))
    except ValueError as err:
        snap_error = str(err)
    assert snap_error and "needs 5 stored epochs, but the experts hold 2" in snap_error and "at most 2" in snap_error
    from components import distill_run, inputs
    from components.runtime import LIMITS

    with pytest.raises(inputs.UserError, match="limit"):  # the app's cap on IPC names it
        distill_run.check_request("digits", "", "mtt", LIMITS.max_ipc + 1, 10, 0)


def test_stopping_mid_run_keeps_a_valid_set(digits, tmp_path):
    import threading

    stop = threading.Event()
    method = make_method("mtt", dataset="digits", ipc=1, model="convnet_d2", num_experts=2, expert_epochs=1,
                         max_start_epoch=1)
    last = None
    from dd_core.distill import distill

    for last in distill(digits, method, method_name="mtt", ipc=1, steps=50, stop=stop, snapshot_every=1,
                        device=torch.device("cpu")):
        if last.step == 2:
            stop.set()
    assert last.status == "stopped" and last.step == 2
    back = SyntheticSet.load(last.synthetic.save(tmp_path / "mtt.safetensors"))
    assert torch.isfinite(back.images).all() and float(back.extra_meta["learned_lr"]) > 0


def test_learned_labels_become_the_label_store(digits, tmp_path):
    from dd_core.labels import load_store

    method = make_method("tesla", dataset="digits", ipc=1, model="convnet_d2", num_experts=2, expert_epochs=1,
                         max_start_epoch=1, soft_labels=True)
    snap = run_to_end(digits, method, method_name="tesla", ipc=1, steps=2, device=torch.device("cpu"))
    back = SyntheticSet.load(snap.synthetic.save(tmp_path / "t.safetensors"))
    store = load_store(back)
    assert store.name == "learned" and store.nbytes() == 10 * 10 * 4
    rows = store.targets(torch.arange(10))
    assert torch.allclose(rows.sum(1), torch.ones(10)) and not torch.equal(rows, torch.eye(10))


def test_datm_labels_with_the_first_expert_trained_on_to_label_epochs(digits):
    import dataclasses

    method = make_method("datm", dataset="digits", ipc=1, model="convnet_d2", num_experts=2, expert_epochs=1,
                         max_start_epoch=2, max_start_epoch_final=0, label_epochs=3)
    assert method.recipe(digits) == TINY_RECIPE  # the window's experts: the shared 2-epoch ones
    method.setup(digits, init_synthetic(digits, 1, seed=0), seed=0, device=torch.device("cpu"))
    assert method.experts_.epochs == 2
    longer = get_experts(digits, dataclasses.replace(TINY_RECIPE, epochs=3), 1)
    torch.testing.assert_close(method.labeller_, longer.checkpoint(0, 3))
    # it is the first expert trained on: the same seed and recipe give the same first two epochs
    torch.testing.assert_close(longer.checkpoint(0, 2), method.experts_.checkpoint(0, 2))
    start = make_method("datm", dataset="digits", ipc=1, model="convnet_d2", num_experts=2, expert_epochs=1,
                        max_start_epoch=2, max_start_epoch_final=0, label_epochs=0)
    start.setup(digits, init_synthetic(digits, 1, seed=0), seed=0, device=torch.device("cpu"))
    torch.testing.assert_close(start.labeller_, start.experts_.checkpoint(0, 2))  # 0: the window's last
    # what the app's warm-up trains ahead of the first DATM run on digits: this same labelling expert
    assert method.labeller_recipe(digits, 2) == dataclasses.replace(TINY_RECIPE, epochs=3)
    assert method.labeller_recipe(digits, 3) is None and start.labeller_recipe(digits, 2) is None


def _experts_cli(tmp_path, name, launcher):
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / name
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "DD_THREADS": "1"}
    cmd = [*launcher, "-m", "dd_core", "experts", "--dataset", "digits", "--model", "convnet_d2", "--experts", "3",
           "--epochs", "1", "--quiet", "--out", str(out)]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_torchrun_two_processes_write_the_same_experts_as_one(tmp_path):
    import shutil
    import sys

    torchrun = shutil.which("torchrun", path=str(__import__("pathlib").Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    one, summary_one = _experts_cli(tmp_path, "one", [sys.executable])
    two, summary_two = _experts_cli(tmp_path, "two", [torchrun, "--standalone", "--nproc_per_node", "2"])
    assert summary_two["processes"] == 2 and summary_one["processes"] == 1
    a, b = read_experts(one), read_experts(two)
    assert a.num_experts == b.num_experts == 3 and a.seeds == b.seeds
    for pa, pb in zip(a.params, b.params):  # each expert is trained from its own seed, whichever rank trains it
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


def test_experts_command_rejects_an_unknown_recipe_field(tmp_path, capsys):
    from dd_core.cli import main

    assert main(["experts", "--dataset", "digits", "--experts", "1", "--epochs", "1", "--set", "lr_img=3",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "lr_img" in err and "batch_size" in err and "rho" in err


@pytest.mark.slow
def test_app_shows_the_matching_plot_and_evaluates_at_the_learned_lr():
    # The Distill tab's handler (no server): an MTT run on digits streams the matching plot (the
    # student's distance to the target beside the expert's own step); the set then evaluates under
    # the learned_lr protocol at the lr it learned, and a DM set is told that protocol is not for it.
    from types import SimpleNamespace

    from components import distill_run, distill_tab, evaluate_tab, inputs
    from components.sessions import drop_session, session_for

    who = SimpleNamespace(session_hash="trajectory")
    session = session_for(who)
    try:
        overrides = {"model": "convnet_d2", "num_experts": 1, "expert_epochs": 1, "max_start_epoch": 1, "syn_steps": 3}
        req = distill_run.check_request("digits", "", "mtt", 1, 3, 0, "fast", overrides)
        updates = list(distill_tab.ui_updates(session, req))
        figures = [u[distill_tab.OUTPUTS.index("matching")] for u in updates]
        shown = [f for f in figures if isinstance(f, dict) and f.get("visible") and f.get("value") is not None]
        assert shown, "the matching plot never appeared"
        names = [t.name for t in shown[-1]["value"].data]
        assert any(n.startswith("student") for n in names) and any(n.startswith("expert") for n in names)
        assert len(shown[-1]["value"].data[0].x) == 3  # one point per step
        syn = session.current()
        status, report = list(evaluate_tab.run_evaluation(session, syn, "learned_lr", 1, "mlp", compare=False))[-1]
        assert "Done" in status and f"lr {float(syn.extra_meta['learned_lr'])}" in report
        list(distill_tab.ui_updates(session, distill_run.check_request("digits", "", "dm", 1, 1, 0)))
        with pytest.raises(inputs.UserError, match="learned_lr protocol .* has none; use fast or paper"):
            list(evaluate_tab.run_evaluation(session, session.current(), "learned_lr", 1, "mlp", compare=False))
    finally:
        drop_session(who)


def test_zca_run_records_the_transform_and_shows_the_images_unwhitened(digits, tmp_path):
    from dd_core.distill import distill
    from dd_core.evaluate import dataset_for, evaluate_synthetic, protocol
    from dd_core.synthetic import init_synthetic
    from dd_core.zca import fitted

    zca = fitted(digits)
    x = digits.x_train[:50]
    torch.testing.assert_close(zca.unwhiten(zca.whiten(x)), x, atol=1e-4, rtol=1e-4)
    method = make_method("mtt", dataset="digits", ipc=1, model="convnet_d2", num_experts=1, expert_epochs=1,
                         max_start_epoch=1, syn_steps=2, zca=True)
    snaps = list(distill(digits, method, method_name="mtt", ipc=1, steps=2, device=torch.device("cpu")))
    first, last = snaps[0], snaps[-1]
    assert last.status == "done" and last.synthetic.extra_meta["zca"] == "0.1"
    initial = init_synthetic(digits, 1, seed=0)
    assert not torch.allclose(first.synthetic.images, initial.images, atol=1e-2)  # stored whitened
    torch.testing.assert_close(first.synthetic.denormalized(), initial.denormalized(), atol=1e-4, rtol=0)
    back = SyntheticSet.load(last.synthetic.save(tmp_path / "zca.safetensors"))
    torch.testing.assert_close(back.denormalized(), last.synthetic.denormalized())
    seen = dataset_for(back, digits)  # the evaluator trains and tests on whitened data, like the set
    torch.testing.assert_close(seen.x_test, zca.whiten(digits.x_test))
    result = evaluate_synthetic(back, digits, protocol("fast", epochs=5, num_models=1, model="mlp"))
    assert 0.0 <= result.mean <= 1.0


def test_zca_fits_a_slice_from_the_start_on_the_slice_not_the_whole_set(digits):
    import dataclasses

    from dd_core.zca import fitted

    part = dataclasses.replace(digits, x_train=digits.x_train[:100])  # same data pointer as the whole set
    whole, first = fitted(digits), fitted(part)
    assert part.x_train.data_ptr() == digits.x_train.data_ptr()
    assert first is not whole
    torch.testing.assert_close(first.mean, digits.x_train[:100].flatten(1).mean(0))


def test_a_folder_from_the_experts_command_can_be_used(digits, tmp_path):
    get_experts(digits, TINY_RECIPE, 2)  # a complete expert folder (the cache's, shared with other tests)
    folder = str(experts.expert_folder(digits, TINY_RECIPE, 2))
    method = make_method("mtt", dataset="digits", ipc=1, model="convnet_d2", expert_epochs=1, max_start_epoch=1,
                         num_experts=50, syn_steps=2, experts_dir=folder)  # num_experts: the folder decides
    snap = run_to_end(digits, method, method_name="mtt", ipc=1, steps=1, device=torch.device("cpu"))
    assert snap.status == "done" and "2 experts x 2 epochs" in snap.synthetic.extra_meta["experts"]
    wrong = make_method("mtt", dataset="digits", ipc=1, model="mlp", experts_dir=folder)
    with pytest.raises(ValueError, match="are convnet_d2 on digits; this run needs mlp on digits"):
        run_to_end(digits, wrong, method_name="mtt", ipc=1, steps=1, device=torch.device("cpu"))
