"""Dataset Quantization: GraphCut bins partition a class, favour diversity, and are re-sampled for a
new budget without being rebuilt."""
from __future__ import annotations

import torch

from dd_core import load_dataset
from dd_core.distill import run_to_end
from dd_core.methods import make_method
from dd_core.methods.dq import cosine_similarity01, graphcut_bins, sample_bins


def test_bins_partition_the_items_evenly():
    f = torch.randn(53, 8, generator=torch.Generator().manual_seed(0))
    assign = graphcut_bins(cosine_similarity01(f), 5)
    assert assign.min() == 0 and assign.max() == 4
    assert sorted(torch.bincount(assign).tolist()) == [10, 10, 11, 11, 11]


def test_a_bin_takes_from_both_of_two_clusters_before_repeating_one():
    # two tight, opposite clusters of 4: every bin of 2 must hold one image of each (diversity)
    g = torch.Generator().manual_seed(1)
    a = torch.tensor([1.0, 0.0]) + 0.01 * torch.randn(4, 2, generator=g)
    b = torch.tensor([-1.0, 0.0]) + 0.01 * torch.randn(4, 2, generator=g)
    assign = graphcut_bins(cosine_similarity01(torch.cat([a, b])), 4)
    for k in range(4):
        members = torch.nonzero(assign == k).flatten()
        assert sorted((members >= 4).tolist()) == [False, True], f"bin {k} holds {members.tolist()}"


def test_first_pick_is_the_item_most_similar_to_all():
    f = torch.randn(30, 4, generator=torch.Generator().manual_seed(2))
    sim = cosine_similarity01(f)
    assign = graphcut_bins(sim, 30)  # one item per bin: bin 0 is the greedy first pick
    assert int(torch.nonzero(assign == 0)) == int(sim.sum(1).argmax())


def test_sampling_draws_from_every_bin():
    assign = torch.arange(40) % 10  # 10 bins of 4
    g = torch.Generator().manual_seed(0)
    for ipc in (10, 20):
        chosen = sample_bins(assign, ipc, g)
        assert len(set(chosen.tolist())) == ipc
        assert torch.bincount(assign[chosen], minlength=10).tolist() == [ipc // 10] * 10
    few = sample_bins(assign, 3, g)
    assert len(set(assign[few].tolist())) == 3, "a budget under the number of bins takes from distinct bins"


def test_a_new_budget_reuses_the_cached_bins(tmp_path, monkeypatch):
    monkeypatch.setenv("DD_CACHE_DIR", str(tmp_path))
    digits = load_dataset("digits")
    sets = {}
    for ipc in (2, 6):
        method = make_method("dq", dataset="digits", ipc=ipc, feature_model="mlp", feature_epochs=1, bins=3)
        sets[ipc] = run_to_end(digits, method, method_name="dq", ipc=ipc, steps=1, device=torch.device("cpu"))
        assert sets[ipc].status == "done", sets[ipc].message
        assert method.bins_cached_ is (ipc == 6), "the second budget must reuse the first one's bins"
    assert len(list((tmp_path / "dq_bins").glob("*.safetensors"))) == 10  # one file per class
    assert sets[6].history[-1]["image_bytes"] == 60 * 1 * 8 * 8
