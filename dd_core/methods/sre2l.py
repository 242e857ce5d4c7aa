"""SRe2L: squeeze, recover, relabel (Yin, Xing & Shen, "Squeeze, Recover and Relabel: Dataset
Condensation at ImageNet Scale From A New Perspective", NeurIPS 2023)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import METHODS
from .recover import Recover


@METHODS.register("sre2l")
@dataclass
class SRe2L(Recover):
    """Recover images from a batch-norm teacher's statistics and class logits; relabel with the teacher."""

    paper = "Yin, Xing & Shen, Squeeze, Recover and Relabel: Dataset Condensation at ImageNet Scale, NeurIPS 2023"
