"""The label-first baseline's prune rule: difficulty scores against known values, and which end is kept."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dd_core import load_dataset
from dd_core.distill import run_to_end
from dd_core.methods import make_method
from dd_core.methods.pca import difficulty
from dd_core.teacher import get_teacher, logits


def test_el2n_of_known_predictions():
    big = 50.0
    scores = torch.tensor([[big, 0.0], [0.0, 0.0], [0.0, big]])  # sure and right, unsure, sure and wrong
    el2n = difficulty(scores, torch.tensor([0, 0, 0]), "el2n")
    assert el2n[0] == pytest.approx(0.0, abs=1e-6)
    assert el2n[1] == pytest.approx(math.sqrt(0.5))  # (0.5 - 1, 0.5 - 0)
    assert el2n[2] == pytest.approx(math.sqrt(2.0), abs=1e-6)


def test_loss_score_is_the_cross_entropy():
    scores = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    assert torch.allclose(difficulty(scores, labels, "loss"), F.cross_entropy(scores, labels, reduction="none"))
    with pytest.raises(ValueError, match="valid scores are: el2n, loss"):
        difficulty(scores, labels, "margin")


@pytest.mark.parametrize("keep", ["easy", "hard"])
def test_keeps_the_chosen_end_of_each_class(keep):
    digits = load_dataset("digits")
    method = make_method("pca", dataset="digits", ipc=3, score_model="mlp", score_epochs=1, keep=keep)
    syn = run_to_end(digits, method, method_name="pca", ipc=3, steps=1, device=torch.device("cpu")).synthetic
    assert syn.extra_meta["features"].startswith("el2n of mlp trained 1 epochs")
    net = get_teacher(digits, arch="mlp", epochs=1).net
    idx = digits.indices_of(4)
    d = difficulty(logits(net, digits.x_train[idx], torch.device("cpu")), digits.y_train[idx], "el2n")
    kept = difficulty(logits(net, syn.images[syn.labels == 4], torch.device("cpu")), torch.full((3,), 4), "el2n")
    bound = d.sort(descending=keep == "hard").values[2]
    assert (kept <= bound + 1e-6).all() if keep == "easy" else (kept >= bound - 1e-6).all()


def test_soft_labels_are_set_beside_the_label_first_baseline_at_equal_bytes():
    from dd_core.evaluate import protocol
    from dd_core.synthetic import init_synthetic
    from dd_core.tradeoff import markdown, run_tradeoff

    digits = load_dataset("digits")
    teacher = get_teacher(digits, arch="mlp", epochs=1)
    syn = init_synthetic(digits, 2, seed=0)
    result = run_tradeoff(syn, digits, protocol("fast", epochs=1, num_models=1), ["hard", "soft"],
                          random_set=False, teacher=teacher, device="cpu")
    by = {(p.set, p.labels): p for p in result.points}
    for labels in ("hard", "soft"):
        mine, base = by[("synthetic", labels)], by[("pruned", labels)]
        assert (base.image_bytes, base.label_bytes) == (mine.image_bytes, mine.label_bytes)
    assert "label-first (pca) acc" in markdown(result)
    none = run_tradeoff(syn, digits, protocol("fast", epochs=1, num_models=1), ["hard"], random_set=False,
                        pruned_set=False, teacher=teacher, device="cpu")
    assert {p.set for p in none.points} == {"synthetic"}


def test_the_evaluate_tab_sets_a_soft_label_set_beside_the_label_first_baseline(monkeypatch):
    import threading
    from types import SimpleNamespace

    from components import evaluate_run, evaluate_tab
    from components.sessions import drop_session, session_for
    from dd_core.evaluate import protocol
    from dd_core.labels import attach, build_spec
    from dd_core.synthetic import init_synthetic
    from dd_core.tradeoff import pruned_subset

    digits = load_dataset("digits")
    teacher = get_teacher(digits, arch="mlp", epochs=1)
    monkeypatch.setattr(evaluate_run, "get_teacher", lambda dataset: teacher)
    syn = init_synthetic(digits, 1, seed=3)
    attach(syn, build_spec("soft", syn, digits, teacher, protocol("fast")))
    req = SimpleNamespace(session_hash="label-first")
    session = session_for(req)
    try:
        config = protocol("fast", epochs=1, num_models=1, model="mlp")
        first = evaluate_run.label_first(session, syn, config, stop=threading.Event())
        assert len(first.accuracies) == 1 and 0 <= first.mean <= 1
        pruned = pruned_subset(syn, digits, teacher, "cpu")  # what it trained on: the easiest image of each class
        assert torch.equal(pruned.labels, syn.labels)
        rep = evaluate_run.Report(first, None, None, "", None, label_first=first)
        report = evaluate_tab.report_markdown(syn, rep, 1000, "soft")
        assert "| label-first baseline: the easiest real images (pca), IPC 1, soft labels, same label bytes |" in report
    finally:
        drop_session(req)
