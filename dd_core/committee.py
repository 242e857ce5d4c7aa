"""A committee of networks as one network (CV-DD's committee vote): the vote-weighted mean of the
members' logits. Used by the committee teacher (teachers.py) and its label store."""
from __future__ import annotations

import torch
from torch import nn


class Committee(nn.Module):
    """Several trained networks as one: sum_m vote_m x logits_m, with the votes summing to 1."""

    def __init__(self, members: list[nn.Module], weights: torch.Tensor):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", weights / weights.sum())  # (m,) the votes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(w * net(x) for w, net in zip(self.weights, self.members))  # (n, classes)
