"""RS2: fresh random subsets each epoch, without replacement, at a given per-epoch budget."""
from __future__ import annotations

import math

import pytest
import torch

from dd_core import load_dataset
from dd_core.evaluate import protocol
from dd_core.rs2 import describe_rs2, evaluate_rs2, rs2_subsets


def test_subsets_see_every_image_once_before_any_twice():
    subsets = list(rs2_subsets(30, 10, 6, torch.Generator().manual_seed(0)))
    assert [len(s) for s in subsets] == [10] * 6
    assert sorted(torch.cat(subsets[:3]).tolist()) == list(range(30))
    assert sorted(torch.cat(subsets[3:]).tolist()) == list(range(30))
    assert not torch.equal(torch.cat(subsets[:3]), torch.cat(subsets[3:])), "a new order after a full pass"


def test_subsets_straddling_a_pass_take_the_rest_then_a_new_order():
    subsets = list(rs2_subsets(25, 10, 3, torch.Generator().manual_seed(1)))
    first_pass = torch.cat(subsets)[:25]
    assert sorted(first_pass.tolist()) == list(range(25))
    assert all(len(set(s.tolist())) == len(s) == 10 for s in subsets[:2])


def test_subsets_reject_a_budget_larger_than_the_data():
    with pytest.raises(ValueError, match="between 1 and 30 images per epoch"):
        next(rs2_subsets(30, 31, 1, torch.Generator()))


def test_rs2_trains_and_is_deterministic_for_a_seed():
    digits = load_dataset("digits")
    config = protocol("fast", epochs=3, num_models=1, model="convnet_d2")
    first = evaluate_rs2(digits, config, 20, device=torch.device("cpu"))
    again = evaluate_rs2(digits, config, 20, device=torch.device("cpu"))
    assert first.label_store == "rs2" and len(first.accuracies) == 1
    assert 0.0 <= first.mean <= 1.0 and math.isfinite(first.seconds)
    assert first.accuracies == again.accuracies
    assert "20 of the 1437 real training images" in describe_rs2(20, digits, config)


def test_cli_evaluate_rs2_reports_both_sides_and_their_wall_times(tmp_path, capsys):
    import json

    from dd_core.cli import main
    from dd_core.synthetic import init_synthetic

    path = init_synthetic(load_dataset("digits"), 2, seed=0).save(tmp_path / "set.safetensors")
    assert main(["evaluate", str(path), "--rs2", "--epochs", "2", "--models", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 <= out["rs2_mean"] <= 1.0 and len(out["rs2_accuracies"]) == 1
    assert out["rs2_seconds"] > 0 and out["seconds"] > 0
    assert "20 of the 1437" in out["rs2_detail"] and "2 epochs" in out["rs2_detail"]


def test_the_evaluate_tab_sets_rs2_beside_the_set_with_both_wall_times():
    from types import SimpleNamespace

    from components import evaluate_tab
    from components.sessions import drop_session, session_for
    from dd_core.synthetic import init_synthetic

    req = SimpleNamespace(session_hash="rs2-tab")
    session = session_for(req)
    try:
        syn = init_synthetic(load_dataset("digits"), 1, seed=0)
        status, report = list(evaluate_tab.run_evaluation(session, syn, "fast", 1, "mlp", compare=False, rs2=True))[-1]
        assert "Done" in status
        assert "| RS2: 10 fresh random real images each epoch, hard labels |" in report
        assert "Wall time, same epochs and images per epoch: training on the set" in report and "; RS2 " in report
        assert session.last_eval["RS2"] is not None and 0 <= session.last_eval["RS2"] <= 1
    finally:
        drop_session(req)


def test_rs2_has_a_learn_page_beside_the_methods():
    from components import learn_tab

    assert "rs2" in learn_tab.BASELINES
    assert "Okanovic" in learn_tab.method_markdown("rs2") and "without replacement" in learn_tab.method_markdown("rs2")
