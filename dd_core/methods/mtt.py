"""MTT: matching training trajectories (Cazenavette et al., "Dataset Distillation by Matching
Training Trajectories", CVPR 2022)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import METHODS
from .trajectory import TrajectoryMethod


@METHODS.register("mtt")
@dataclass
class MTT(TrajectoryMethod):
    """Trajectory matching: a student trained on the synthetic set for N steps lands where an expert
    trained on the real data lands after M epochs; the student's lr is learned too."""

    paper = "Cazenavette et al., Dataset Distillation by Matching Training Trajectories, CVPR 2022"
