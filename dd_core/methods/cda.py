"""CDA: curriculum data augmentation during recovery (Yin & Shen, "Dataset Distillation via
Curriculum Data Synthesis in Large Data Era", TMLR 2024)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .base import METHODS, hp
from .recover import Recover


@METHODS.register("cda")
@dataclass
class CDA(Recover):
    """SRe2L whose random-resized-crop jitter goes from easy to hard: the smallest crop area starts
    at the whole image (global structure first) and shrinks to `crop_min` (local detail) along a
    cosine over the first `milestone` of the schedule, then stays there."""

    paper = "Yin & Shen, Dataset Distillation via Curriculum Data Synthesis in Large Data Era, TMLR 2024"

    milestone: float = hp(0.5, "fraction of `horizon` over which the smallest crop area falls from 1 to crop_min",
                          range=(0.01, 1.0))

    def crop_scale(self):
        t = min(1.0, self.step_ / max(1.0, self.milestone * self.horizon))
        low = self.crop_min + (1.0 - self.crop_min) * 0.5 * (1 + math.cos(math.pi * t))
        return (min(low, 1.0), 1.0)

    def step(self):
        low = self.crop_scale()[0]  # the bound this step's crop is drawn with
        return {**super().step(), "crop_min_now": low}
