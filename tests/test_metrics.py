"""DD-Ranking scores against values worked out by hand (accuracies as fractions)."""
from __future__ import annotations

import math

import pytest

from dd_core import metrics

E = math.e


def test_ior_and_hlr_are_plain_differences():
    assert metrics.ior(0.90, 0.80) == pytest.approx(0.10)
    assert metrics.hlr(0.99, 0.90) == pytest.approx(0.09)
    assert metrics.ior(0.5, 0.6) == pytest.approx(-0.1)  # worse than random is negative


@pytest.mark.parametrize("ior, hlr, expected", [
    (0.0, 0.0, (1 - 1 / E) / (E - 1 / E)),  # alpha 0: 0.26894...
    (1.0, -1.0, 1.0),  # alpha 1, the best case
    (-1.0, 1.0, 0.0),  # alpha -1, the worst case
])
def test_lrs_known_values(ior, hlr, expected):
    assert metrics.lrs(ior, hlr) == pytest.approx(expected, abs=1e-12)


def test_lrs_of_alpha_zero_is_0_2689():
    assert metrics.lrs(0.0, 0.0) == pytest.approx(0.268941, abs=1e-6)


def test_dd_ranking_worked_example():
    # syn 0.90, random 0.80, whole 0.99: IOR 0.10, HLR 0.09, alpha 0.5*0.10 - 0.5*0.09 = 0.005
    out = metrics.dd_ranking(0.90, 0.80, 0.99)
    assert out["IOR"] == pytest.approx(0.10) and out["HLR"] == pytest.approx(0.09)
    assert out["LRS"] == pytest.approx((math.exp(0.005) - 1 / E) / (E - 1 / E))
    assert out["LRS"] == pytest.approx(0.271074, abs=1e-6)


def test_hlr_uses_the_hard_label_accuracy_when_given():
    # soft labels lift the set to 0.95, but on hard labels it reaches 0.90: HLR is 0.99 - 0.90
    out = metrics.dd_ranking(0.95, 0.85, 0.99, acc_hard=0.90)
    assert out["IOR"] == pytest.approx(0.10) and out["HLR"] == pytest.approx(0.09)


def test_weight_moves_the_balance():
    # w = 1 counts only IOR: alpha = IOR = 0.1
    assert metrics.lrs(0.1, 0.5, w=1.0) == pytest.approx((math.exp(0.1) - 1 / E) / (E - 1 / E))


def test_percentages_are_refused():
    with pytest.raises(ValueError, match="fraction"):
        metrics.ior(90.0, 80.0)
    with pytest.raises(ValueError, match="fraction"):
        metrics.dd_ranking(0.9, 0.8, 99.0)
