"""CV-DD: dataset distillation via committee voting (Cui et al., "Dataset Distillation via
Committee Voting", 2025)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import teachers as teacher_registry
from .base import METHODS, hp
from .bn_taps import recover_loss, tapped
from .recover import Recover


@METHODS.register("cvdd")
@dataclass
class CVDD(Recover):
    """SRe2L with a committee of teachers: every image must satisfy each member's batch-norm
    statistics and class, each member's loss weighted by its vote (a softmax of the members' test
    accuracies: the better teacher speaks louder), and the soft labels are the committee's
    weighted mean logits."""

    paper = "Cui et al., Dataset Distillation via Committee Voting, 2025"

    members: int = hp(2, "teachers in the committee", range=(1, 6))
    committee: str = hp("mixed", "who sits in it: 'mixed' alternates the teacher recipe and a width-16 ResNet-18 "
                                 "(different architectures, as in the paper); 'seeds' trains the teacher recipe with "
                                 "seeds 0, 1, ...", choices=("mixed", "seeds"))
    vote_temperature: float = hp(0.05, "softmax temperature over test accuracies (fractions) that sets the votes",
                                 range=(0.001, 10.0))

    def recipes(self) -> list[tuple[str, int]]:
        """(recipe, seed) of each member."""
        if self.committee == "seeds":
            return [(self.teacher, s) for s in range(self.members)]
        other = "resnet18_w16" if self.teacher != "resnet18_w16" else "convnet_bn"
        return [((self.teacher, other)[i % 2], i // 2) for i in range(self.members)]

    def load_teacher(self, real, device):
        self.members_ = []
        for recipe, seed in self.recipes():
            self.members_.append(teacher_registry.get_bn_teacher(real, recipe, seed=seed, device=device, stop=self.stop_))
        return teacher_registry.committee_teacher(real, self.members_, self.vote_temperature, device)

    def setup(self, real, syn, *, seed, device):
        super().setup(real, syn, seed=seed, device=device)
        self.votes_ = teacher_registry.committee_weights([t.test_accuracy for t in self.members_], self.vote_temperature)
        self.taps_ = [tapped(t.net) for t in self.members_]
        teacher_registry.record(syn, self.members_, self.vote_temperature)  # the members, to find them again

    def loss(self, x, y):
        total, stats = 0.0, {"ce": 0.0, "bn": 0.0, "teacher_acc": 0.0}
        for vote, (net, sink) in zip(self.votes_.tolist(), self.taps_):
            loss, part = recover_loss(net, sink, x, y, groups=self.ipc_, bn_weight=self.bn_weight,
                                      first_bn_multiplier=self.first_bn_multiplier)
            total = total + vote * loss
            stats = {k: stats[k] + vote * part[k] for k in stats}
        return total, stats

    def step(self):
        stats = super().step()
        stats["votes_max"] = float(torch.max(self.votes_))
        return stats
