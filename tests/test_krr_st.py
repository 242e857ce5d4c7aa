"""KRR-ST: the kernel ridge prediction against its closed form, the Barlow Twins loss, the saved
targets, and the transfer protocol (pre-train on the set, linear-probe on labels)."""
from __future__ import annotations

import torch

from dd_core import load_dataset
from dd_core.distill import run_to_end
from dd_core.methods import make_method
from dd_core.methods.krr_st import TARGETS, krr_predict
from dd_core.ssl import barlow_twins_loss
from dd_core.synthetic import SyntheticSet
from dd_core.transfer import TransferConfig, evaluate_transfer, linear_probe


def test_krr_prediction_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    f_s, y_s, f_t = (torch.randn(6, 9, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64),
                     torch.randn(5, 9, generator=g, dtype=torch.float64))
    k_ss = f_s @ f_s.T
    lam = 0.1 * k_ss.diagonal().mean() + 1e-8
    expected = f_t @ f_s.T @ torch.linalg.inv(k_ss + lam * torch.eye(6, dtype=torch.float64)) @ y_s
    assert torch.allclose(krr_predict(f_s, y_s, f_t, 0.1), expected)
    # with almost no ridge, the support points get their own targets back
    assert torch.allclose(krr_predict(f_s, y_s, f_s, 1e-12), y_s, atol=1e-6)


def test_barlow_twins_loss_is_low_for_agreeing_decorrelated_views_and_high_for_unrelated_ones():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(512, 8, generator=g) - 0.0)
    z = (q - q.mean(0)) * 512 ** 0.5  # uncorrelated columns
    assert barlow_twins_loss(z, z) < 0.05
    assert barlow_twins_loss(z, torch.randn(512, 8, generator=g)) > 4.0  # the 8 diagonal terms near 1 each


def test_a_krr_st_set_carries_its_learned_targets(tmp_path):
    digits = load_dataset("digits")
    method = make_method("krr_st", dataset="digits", ipc=1, model="convnet_d2", batch_real=16)
    snap = run_to_end(digits, method, method_name="krr_st", ipc=1, steps=3, seed=0, device=torch.device("cpu"))
    start = run_to_end(digits, make_method("krr_st", dataset="digits", ipc=1, model="convnet_d2", batch_real=16),
                       method_name="krr_st", ipc=1, steps=0, seed=0, device=torch.device("cpu")).synthetic
    syn = SyntheticSet.load(snap.synthetic.save(tmp_path / "krr.safetensors"))
    assert syn.extra[TARGETS].shape == (10, 512)  # convnet_d2 at width 128 on 8x8: 128 x 2 x 2
    assert not torch.equal(syn.extra[TARGETS], start.extra[TARGETS]), "the targets are learned"
    assert "never uses it" in syn.extra_meta["labels_meaning"] and "Barlow Twins" in syn.extra_meta["target_encoder"]


def test_transfer_pretrains_and_probes_deterministically():
    digits = load_dataset("digits")
    config = TransferConfig(model="convnet_d2", pretrain_epochs=2, probe_per_class=5, num_models=1)
    images, targets = digits.x_train[:20], torch.randn(20, 16, generator=torch.Generator().manual_seed(0))
    first = evaluate_transfer(images, targets, digits, config)
    again = evaluate_transfer(images, targets, digits, config)
    none = evaluate_transfer(None, None, digits, config)
    assert first.accuracies == again.accuracies and 0.0 <= first.mean <= 1.0
    assert none.what == "none" and first.what == "synthetic set"
    assert "5 labelled training images per class" in first.as_dict()["protocol_detail"]


def test_linear_probe_on_raw_pixels_of_digits():
    class Pixels(torch.nn.Module):
        def embed(self, x):
            return x.flatten(1)

    digits = load_dataset("digits")
    # every labelled image: digits are near linearly separable
    assert linear_probe(Pixels(), digits, TransferConfig(probe_per_class=0), seed=0, device="cpu") > 0.9


def test_cli_transfer_refuses_a_set_without_targets_and_runs_on_one(tmp_path, capsys):
    import json

    from dd_core.cli import main
    from dd_core.synthetic import init_synthetic

    digits = load_dataset("digits")
    plain = init_synthetic(digits, 1, seed=0).save(tmp_path / "plain.safetensors")
    assert main(["transfer", str(plain)]) == 2
    assert "distill --method krr_st" in capsys.readouterr().err
    snap = run_to_end(digits, make_method("krr_st", dataset="digits", ipc=1, model="convnet_d2", batch_real=16),
                      method_name="krr_st", ipc=1, steps=2, seed=0, device=torch.device("cpu"))
    path = snap.synthetic.save(tmp_path / "krr.safetensors")
    assert main(["transfer", str(path), "--epochs", "2", "--models", "1", "--probe-per-class", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["protocol"] == "transfer" and 0.0 <= out["accuracy_mean"] <= 1.0 and out["target_bytes"] == 10 * 512 * 4


def test_class_label_evaluations_refuse_a_set_of_targets_and_point_to_transfer(tmp_path, capsys):
    import pytest

    from dd_core.cli import main
    from dd_core.evaluate import protocol
    from dd_core.synthetic import init_synthetic
    from dd_core.tradeoff import run_tradeoff

    digits = load_dataset("digits")
    syn = init_synthetic(digits, 1, seed=0, method="krr_st")
    syn.extra[TARGETS] = torch.zeros(10, 4)
    with pytest.raises(ValueError, match="no class labels.*dd_core transfer"):
        run_tradeoff(syn, digits, protocol("fast", epochs=1, num_models=1), ["hard"], device="cpu")
    path = syn.save(tmp_path / "targets.safetensors")
    assert main(["evaluate", str(path), "--epochs", "1", "--models", "1"]) == 2
    assert "Evaluate it by transfer" in capsys.readouterr().err


def _targets_set():
    """One real digit a class carrying the cached encoder's targets: a KRR-ST set before any step."""
    from dd_core.synthetic import init_synthetic
    from dd_core.transfer import encoder_of

    digits = load_dataset("digits")
    syn = init_synthetic(digits, 1, seed=0, method="krr_st")
    syn.extra[TARGETS] = encoder_of(syn, digits).targets(digits, syn.images, "cpu")
    return syn


def test_the_evaluate_tab_evaluates_a_krr_st_set_by_transfer_beside_its_references(monkeypatch):
    from functools import partial
    from types import SimpleNamespace

    from components import evaluate_run, evaluate_tab, sessions

    # the tab's plumbing, not the protocol's length: 20 pre-training epochs instead of 300
    monkeypatch.setattr(evaluate_run, "TransferConfig", partial(TransferConfig, pretrain_epochs=20))
    request = SimpleNamespace(session_hash="krr-evaluate")
    session = sessions.session_for(request)
    try:
        syn = _targets_set()
        status, report = list(evaluate_tab.run_evaluation(session, syn, "fast", 1, None, compare=True))[-1]
        assert "Done" in status, status
        assert "evaluated by transfer" in report and "pre-trained 20 epochs" in report
        assert "10 labelled training images per class" in report  # all of them would saturate the probe
        for row in ("the krr_st set** (10 unlabelled images", "10 random real images carrying the encoder's targets",
                    "nothing (random weights", "the encoder itself"):
            assert row in report, row
        dims = syn.extra[TARGETS].shape[1]
        assert f"{10 * dims * 4:,} of targets" in report
        row = session.last_eval
        assert row["protocol"] == "transfer" and row["networks"] == 1 and 0.0 < row["accuracy"] <= 1.0
        assert row["bytes"] == syn.images.numel() * 4 + 10 * dims * 4
    finally:
        sessions.drop_session(request)


def test_the_labels_tab_shows_what_a_krr_st_set_stores_instead_of_label_stores(tmp_path):
    from components import labels_tab

    syn = _targets_set()
    path = syn.save(tmp_path / "krr.safetensors")
    outs = list(labels_tab.run_labels(labels_tab.SOURCES[1], str(path), None, ["hard"], "", "fast", 1, 1,
                                      labels_tab.SAME_ARCH, "uint8", False))
    assert len(outs) == 1  # nothing is trained: there are no label stores to compare
    status, _, table = outs[0]
    assert "no class labels" in status and "Evaluate" in status
    dims = syn.extra[TARGETS].shape[1]
    assert f"N x {dims} x 4 B | {10 * dims * 4:,}" in table
    assert f"| {syn.images.numel() * 4:,} " in table
