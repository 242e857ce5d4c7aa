"""DD-Ranking scores of a synthetic set, on accuracies given as fractions in [0, 1].

HLR (hard-label recovery) = Acc(whole real set) - Acc(synthetic, hard labels)   lower is better
IOR (improvement over random) = Acc(synthetic) - Acc(random real subset)        higher is better
  (same evaluation recipe and the same kind of labels on both sides of IOR)
alpha = w * IOR - (1 - w) * HLR;  LRS = (e^alpha - e^-1) / (e - e^-1)      in [0, 1]
"""
from __future__ import annotations

import math


def _fraction(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1] (got {value}); divide percentages by 100")
    return value


def hlr(acc_whole: float, acc_syn: float) -> float:
    return _fraction("acc_whole", acc_whole) - _fraction("acc_syn", acc_syn)


def ior(acc_syn: float, acc_random: float) -> float:
    return _fraction("acc_syn", acc_syn) - _fraction("acc_random", acc_random)


def lrs(ior_value: float, hlr_value: float, w: float = 0.5) -> float:
    alpha = w * ior_value - (1 - w) * hlr_value  # in [-1, 1] for fractions
    return (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))


def dd_ranking(acc_syn: float, acc_random: float, acc_whole: float, w: float = 0.5, *,
               acc_hard: float | None = None) -> dict[str, float]:
    """IOR from the set with its own labels against a random subset with the same kind of labels;
    HLR from the set trained on hard labels (`acc_hard`; the same as acc_syn for hard-label sets)."""
    i = ior(acc_syn, acc_random)
    h = hlr(acc_whole, acc_syn if acc_hard is None else acc_hard)
    return {"IOR": i, "HLR": h, "LRS": lrs(i, h, w)}
