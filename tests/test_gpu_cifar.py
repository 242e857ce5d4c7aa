"""The GPU CIFAR-10 script's own pieces, on digits and a CPU: experts trained within a time budget
(ZCA applied once) are the experts the engine trains, and evaluation in rounds equals one call."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmarks import gpu_cifar
from benchmarks.budgeted import Budget, rounds
from dd_core import load_dataset
from dd_core.evaluate import evaluate, protocol
from dd_core.experts import ExpertRecipe, read_experts, train_expert
from dd_core.methods import make_method
from dd_core.distill import run_to_end
from dd_core.synthetic import random_subset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(autouse=True)
def _on_the_cpu(monkeypatch):
    monkeypatch.setattr(gpu_cifar, "DEVICE", torch.device("cpu"))


def test_budgeted_experts_are_the_engines_experts_and_mtt_reads_them(digits, tmp_path):
    recipe = ExpertRecipe(model="convnet_d2", epochs=2, zca=0.1).resolved(digits)
    built = gpu_cifar.experts_within(digits, recipe, tmp_path, Budget(600), until=600, most=1)
    assert built["experts"] == 1 and built["epochs"] == 2
    traj = read_experts(tmp_path)
    assert traj.recipe.zca == 0.1 and traj.seeds == [0]  # the index records the recipe as asked, ZCA included
    params, _ = train_expert(digits, recipe, 0)  # the engine whitening inside, as `experts` does
    assert torch.equal(traj.params[0], params)
    method = make_method("mtt", dataset="digits", ipc=1, model="convnet_d2", expert_epochs=1, max_start_epoch=1,
                         syn_steps=2, zca=True, experts_dir=str(tmp_path))
    snap = run_to_end(digits, method, method_name="mtt", ipc=1, steps=1, device=torch.device("cpu"))
    assert snap.status == "done"


def test_no_time_no_experts_and_no_index(digits, tmp_path):
    recipe = ExpertRecipe(model="convnet_d2", epochs=2).resolved(digits)
    built = gpu_cifar.experts_within(digits, recipe, tmp_path, Budget(600), until=0.0, most=2)
    assert built["experts"] == 0 and not (tmp_path / "index.json").exists()


def test_rounds_equal_one_evaluation_of_as_many_networks(digits):
    rows = []
    config = protocol("fast", epochs=3)
    rnd = random_subset(digits, 1)
    accs = rounds("check", [("random", rnd.images, rnd.labels, digits, config)], 2, Budget(600), {},
                  emit=lambda row: rows.append(row) or row, device=torch.device("cpu"))
    whole = evaluate(rnd.images, rnd.labels, digits, dataclasses.replace(config, num_models=2), device=torch.device("cpu"))
    assert accs["random"] == whole.accuracies
    assert [r.get("network") for r in rows] == [0, 1, None] and rows[-1]["networks"] == 2


def test_rounds_out_of_time_stop_without_counting_a_network(digits):
    rows = []
    rnd = random_subset(digits, 1)
    accs = rounds("check", [("random", rnd.images, rnd.labels, digits, protocol("fast", epochs=3))], 2, Budget(0),
                  {}, emit=lambda row: rows.append(row) or row, device=torch.device("cpu"))
    assert accs["random"] == [] and rows[-1]["networks"] == 0 and rows[-1]["accuracy_mean"] is None


def test_more_takes_method_ipc_pairs_and_names_what_it_takes():
    from benchmarks.gpu_cifar import MORE_RUNS, parse_runs

    assert parse_runs("rded:50 sre2l:10") == [("rded", 50), ("sre2l", 10)]
    assert parse_runs(MORE_RUNS)[0] == ("rded", 50)  # what the first GPU session left unmeasured comes first
    for bad in ("rded", "rded:0", "nosuch:10", "rded:ten"):
        with pytest.raises(SystemExit, match="METHOD:IPC pairs"):
            parse_runs(bad)
