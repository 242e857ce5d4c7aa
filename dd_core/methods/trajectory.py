"""The shared core of trajectory matching (MTT and its descendants TESLA, FTD, DATM, SeT): the
experts, the start/target draw, the learned lr and learned labels, and one outer step.

A student network, held as one flat parameter vector, starts from an expert's checkpoint at epoch
t, takes `syn_steps` SGD steps on the synthetic set with a learnable lr, and is compared with the
same expert at epoch t + expert_epochs. The unroll and its gradients live in `unroll.py`; a method
picks one (`constant_memory`, TESLA's `hessian_chain`) and this class does the rest.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..augment import dsa_for
from ..experts import ExpertRecipe, Trajectories, get_experts, read_experts
from ..label_stores.learned import LearnedLabels
from ..labels import PREFIX, attach, images_digest
from ..models import build_model, resolve_model
from ..zca import EPS as ZCA_EPS, fitted, record, whitened
from ..data import dataset_facts
from .base import Method, hp
from .unroll import Draws, FlatNet, backward_to, unroll_adjoint, unroll_autograd, unroll_truncated


@dataclass
class TrajectoryMethod(Method):
    """Base of the trajectory-matching family: experts, the start/target draw, the learned lr."""

    family = "trajectory matching"
    constant_memory: ClassVar[bool] = False  # True: unroll_adjoint (TESLA) instead of unroll_autograd
    expert_rho: ClassVar[float] = 0.0  # FTD: SAM-trained experts

    model: str = hp("auto", "student and expert network; auto = the DD ConvNet for the resolution (ConvNet-3 at 28-32 px)")
    num_experts: int = hp(100, "expert trajectories trained (cached) and drawn from; MTT uses 100 (with experts_dir, "
                                "every expert stored there is drawn from instead)", range=(1, 1000))
    expert_epochs: int = hp(2, "M: the target is this many expert epochs after the start", range=(1, 100))
    max_start_epoch: int = hp(20, "T+: the start epoch is drawn uniformly from [0, T+)", range=(1, 200))
    syn_steps: int = hp(30, "N: student SGD steps on the synthetic set per iteration", range=(1, 200))
    lr_img: float = hp(100.0, "SGD lr of the synthetic pixels (momentum 0.5)", range=(1e-3, 1e5))
    lr_lr: float = hp(1e-5, "SGD lr of the learned student lr (momentum 0.5)", range=(0.0, 1.0))
    lr_teacher: float = hp(0.01, "initial student lr (learned from there); the experts' own lr is 0.01", range=(1e-5, 1.0))
    batch_syn: int = hp(0, "synthetic images per student step; 0 = all of them", range=(0, 100000))
    dsa: bool = hp(True, "DSA augmentation of every student batch (and of the experts' training)")
    expert_seed: int = hp(0, "seed of the first expert (expert i uses seed + i)", range=(0, 2**31 - 1))
    experts_dir: str = hp("", "a folder written by `python -m dd_core experts` to use instead of the cached experts "
                              "(e.g. a 100 x 50-epoch buffer built with torchrun); empty = the cache")
    zca: bool = hp(False, "ZCA-whiten the data (eps 0.1), as MTT does on CIFAR-10 at IPC 1 and 10: experts, "
                          "student and saved images live in the whitened space; the set records the transform")

    @classmethod
    def default_steps(cls, name, *, dataset, ipc):
        return 5000 if name == "paper" else (200 if dataset_facts(dataset).small else 500)

    @classmethod
    def fast_preset(cls, dataset: str, ipc: int) -> dict:
        """Sized for a CPU: a few short experts, a short unroll, the start window of the early epochs.
        On digits one expert epoch is only 6 SGD steps (1,437 images, batch 256), so 10 student steps
        match 2 epochs; the lr's own lr is lower than MTT's CIFAR value, which halved it in one step."""
        if dataset_facts(dataset).small:
            return {"num_experts": 3, "expert_epochs": 2, "max_start_epoch": 2, "syn_steps": 10,
                    "lr_img": 100.0, "lr_lr": 1e-6, "lr_teacher": 0.01}
        return {"model": "convnet_w32", "num_experts": 5, "expert_epochs": 2, "max_start_epoch": 2, "syn_steps": 20,
                "lr_img": 100.0, "lr_lr": 1e-6, "lr_teacher": 0.01}

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        if name == "fast":
            return cls.fast_preset(dataset, ipc)
        # MTT's CIFAR-10 table (REFERENCE.md): (syn_steps, expert_epochs, max_start_epoch, lr_img, lr_lr, lr_teacher,
        # ZCA where the dataset's papers whiten it)
        table = {1: (50, 2, 2, 100.0, 1e-7, 0.01, True), 10: (30, 2, 20, 100.0, 1e-5, 0.001, True),
                 50: (30, 2, 40, 1000.0, 1e-5, 0.001, False)}
        n, m, t, lr_img, lr_lr, lr_t, zca = table[min(table, key=lambda k: abs(k - ipc))]
        return {"syn_steps": n, "expert_epochs": m, "max_start_epoch": t, "lr_img": lr_img, "lr_lr": lr_lr,
                "lr_teacher": lr_t, "num_experts": 100, "zca": zca and dataset_facts(dataset).trajectory_zca}

    # -- experts -----------------------------------------------------------------------------------

    def window_end(self) -> int:
        """T+, the start window's upper end (its largest over the run): starts are drawn from [0, T+)."""
        return self.max_start_epoch

    def window_field(self) -> str:
        return "max_start_epoch"

    def epochs_needed(self) -> int:
        """Stored epochs a run reads: the last start, T+ - 1, plus M (MTT's buffer index start + M; its
        buffer holds the start and every epoch after it)."""
        return self.window_end() - 1 + self.expert_epochs

    def labeller_epochs(self) -> int:
        """How far the first expert must be trained for the checkpoint whose logits label the images
        (0: as far as the window reads)."""
        return 0

    def recipe(self, dataset) -> ExpertRecipe:
        """The expert recipe this method needs: MTT's, trained only as far as the start window reaches."""
        return ExpertRecipe(model=self.model, epochs=self.epochs_needed(), dsa=self.dsa,
                            rho=self.expert_rho, zca=ZCA_EPS if self.zca else 0.0)

    def labeller_recipe(self, real, stored_epochs: int) -> ExpertRecipe | None:
        """The recipe of the one expert trained on past the window's `stored_epochs` to label the images
        (cached as a one-expert set of its own, so the window's experts stay shared with MTT); None
        where the window's experts label: `labeller_epochs` within them, or a folder from `experts_dir`."""
        wanted = self.labeller_epochs()
        if self.experts_dir or wanted <= stored_epochs:
            return None
        return dataclasses.replace(self.recipe(real), epochs=wanted)

    def load_labeller(self, real) -> torch.Tensor:
        """The flat parameters that label the images: the first expert's last checkpoint, as in DATM's
        code; where `labeller_recipe` asks for more epochs, that expert (same recipe and seed) trained on."""
        recipe = self.labeller_recipe(real, self.experts_.epochs)
        if recipe is None:
            return self.experts_.checkpoint(0, self.experts_.epochs)
        one = get_experts(real, recipe, 1, seed=self.expert_seed, stop=self.stop_)
        return one.checkpoint(0, one.epochs)

    def load_experts(self, real, device) -> Trajectories:
        if self.experts_dir:
            traj = read_experts(self.experts_dir)
            wanted = self.recipe(real).resolved(real)
            if traj.dataset != real.name or traj.recipe.model != wanted.model or traj.recipe.zca != wanted.zca:
                raise ValueError(f"the experts in {self.experts_dir} are {traj.recipe.model} on {traj.dataset}"
                                 f"{' (ZCA)' if traj.recipe.zca else ''}; this run needs {wanted.model} on {real.name}"
                                 f"{' (ZCA)' if wanted.zca else ''}")
        else:
            traj = get_experts(real, self.recipe(real), self.num_experts, seed=self.expert_seed, stop=self.stop_)
        needed, field = self.epochs_needed(), self.window_field()
        if traj.epochs < needed:
            raise ValueError(f"{field} {self.window_end()} (starts up to epoch {self.window_end() - 1}) + expert_epochs "
                             f"{self.expert_epochs} needs {needed} stored epochs, but the experts hold {traj.epochs}: "
                             f"lower {field} to at most {traj.epochs - self.expert_epochs + 1}, or train longer experts")
        return traj

    # -- setup / step ------------------------------------------------------------------------------

    def setup(self, real, syn, *, seed, device):
        self.gen_ = torch.Generator().manual_seed(seed)
        self.device_ = device
        self.experts_ = self.load_experts(real, device)
        self.labeller_ = self.load_labeller(real)  # before whitening: a labeller to train whitens by itself
        self.check_stop()
        if self.zca:  # from here on everything lives in the whitened space (the experts were trained in it)
            transform = fitted(real)
            real = whitened(real)
            syn.images = transform.whiten(syn.images)
            record(syn, transform)
        net = build_model(resolve_model(self.model, real), channels=real.channels, num_classes=real.num_classes,
                          image_size=real.image_size, seed=0, device=device)
        self.flat_ = FlatNet(net)
        self.augmenter_ = dsa_for(real) if self.dsa else None
        self.syn_ = syn
        syn.extra_meta["experts"] = self.experts_.describe()
        self.init_images(real, syn)
        self.images_ = syn.images.detach().to(device).clone().requires_grad_(True)
        self.labels_ = syn.labels.to(device)
        self.targets_ = F.one_hot(self.labels_, real.num_classes).float()  # (n, classes) hard targets
        self.syn_lr_ = torch.tensor(self.lr_teacher, device=device).requires_grad_(True)
        self.opt_ = torch.optim.SGD([self.images_], lr=self.lr_img, momentum=0.5)
        self.opt_lr_ = torch.optim.SGD([self.syn_lr_], lr=self.lr_lr, momentum=0.5)

    def init_images(self, real, syn) -> None:
        """Choose the initial synthetic images (default: the random real ones already in `syn`)."""

    def draw_start(self) -> tuple[int, int]:
        expert = int(torch.randint(self.experts_.num_experts, (1,), generator=self.gen_))
        start = int(torch.randint(self.max_start_epoch, (1,), generator=self.gen_))
        return expert, start

    def draws(self) -> Draws:
        """Batches without replacement, a fresh permutation when one runs out (as MTT), and DSA per step."""
        n = len(self.images_)
        size = self.batch_syn or n
        batches, order = [], torch.empty(0, dtype=torch.long)
        for _ in range(self.syn_steps):
            if len(order) < size:
                order = torch.cat([order, torch.randperm(n, generator=self.gen_)])
            batches.append(order[:size].to(self.device_))
            order = order[size:]
        augment = [self.augmenter_.sample_batch(size, self.gen_) if self.augmenter_ else None for _ in batches]
        return Draws(batches, augment)

    def start_and_target(self, expert: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.experts_.checkpoint(expert, start).to(self.device_),
                self.experts_.checkpoint(expert, start + self.expert_epochs).to(self.device_))

    def current_targets(self) -> torch.Tensor:
        """The student's training targets this step (n, classes): hard one-hot rows, or the softmax
        of the learned label logits."""
        if hasattr(self, "label_logits_"):
            return F.softmax(self.label_logits_, dim=1)
        return self.targets_

    # -- learned labels (TESLA's option, DATM) --------------------------------------------------------

    @torch.no_grad()
    def expert_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, classes) of the labelling checkpoint (`load_labeller`)."""
        theta = self.labeller_.to(self.device_)
        return torch.cat([self.flat_(theta, x[i:i + 256]) for i in range(0, len(x), 256)])

    def learn_labels(self, lr_y: float) -> None:
        """Start learned labels from the experts' logits on the initial images; SGD at lr_y."""
        self.label_logits_ = self.expert_logits(self.images_.detach()).clone().requires_grad_(True)
        self.opt_y_ = torch.optim.SGD([self.label_logits_], lr=lr_y, momentum=0.9)

    def match(self, start, target, draws):
        """The matching loss and the student's distance; fills the .grad of images_, syn_lr_ and of
        whatever parametrises the targets."""
        targets = self.current_targets()
        if self.constant_memory:
            unroll = unroll_adjoint if getattr(self, "hessian_chain", True) else unroll_truncated  # TESLA's option
            loss, dist, g_img, g_lr, g_y = unroll(self.flat_, start, target, self.images_, targets, self.syn_lr_, draws,
                                                  self.augmenter_)
            self.images_.grad, self.syn_lr_.grad = g_img, g_lr
            if g_y is not None:
                targets.backward(g_y)
            return loss, dist
        loss, dist = unroll_autograd(self.flat_, start, target, self.images_, targets, self.syn_lr_, draws,
                                     self.augmenter_)
        backward_to(loss, self.learned())
        return loss.detach(), dist

    def learned(self) -> list[torch.Tensor]:
        """The leaves an outer step updates: the pixels, the student lr, and learned label logits if any."""
        return [self.images_, self.syn_lr_] + ([self.label_logits_] if hasattr(self, "label_logits_") else [])

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_, self.opt_lr_] + ([self.opt_y_] if hasattr(self, "opt_y_") else [])

    def step(self):
        expert, start_epoch = self.draw_start()
        start, target = self.start_and_target(expert, start_epoch)
        for opt in self.optimizers():
            opt.zero_grad(set_to_none=True)
        loss, dist = self.match(start, target, self.draws())
        for opt in self.optimizers():
            opt.step()
        with torch.no_grad():
            self.syn_lr_.clamp_(min=1e-6)  # a negative lr would make the student climb its loss
        self.after_step()
        self.record()
        return {"loss": float(loss), "student_distance": float(dist.detach()),
                "start_distance": float((start - target).norm()), "syn_lr": self.syn_lr_.item(),
                "start_epoch": float(start_epoch)}

    def after_step(self) -> None:
        """Hook for per-step extras (an EMA, learned labels)."""

    def record(self) -> None:
        """Write what was learned besides the pixels into the set the loop snapshots (`syn`, whose
        copies the loop saves): the learned lr, which the 'learned_lr' evaluation protocol trains with,
        and learned labels as the set's label store."""
        self.syn_.extra_meta["learned_lr"] = f"{self.syn_lr_.item():.8g}"
        if hasattr(self, "label_logits_"):
            attach(self.syn_, LearnedLabels(F.softmax(self.label_logits_.detach(), dim=1)))
            self.syn_.extra_meta[PREFIX + "images"] = images_digest(self.images())  # the images saved with it
