"""The recover-and-relabel core of the decoupled methods (SRe2L, Yin, Xing & Shen, NeurIPS 2023).

Squeeze: a teacher with batch norm is trained on the real data (teachers.py). Recover: synthetic
pixels are optimised so that, on the teacher, (a) each batch-norm layer's *input* has the batch
mean and variance the layer saw in training (its running statistics) and (b) the teacher calls
each image its class. Relabel: the set carries the teacher, which labels every view a student is
trained on (the soft-label protocol in evaluate.py replays them).

The statistics come from the teacher's forward pass itself (`bn_taps.tapped`: folded, fused and
checked against the per-BN hook loop of SRe2L's script).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import teachers as teacher_registry
from ..labels import attach, images_digest
from ..committee import Committee
from ..data import dataset_facts
from ..label_stores.committee import CommitteeLabels
from ..label_stores.online import OnlineTeacher
from .base import Method, hp
from .bn_taps import recover_loss, tapped


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], flip: bool, g: torch.Generator) -> torch.Tensor:
    """One random-resized crop (area fraction in `scale`, aspect 3/4-4/3) and, if `flip`, one coin
    for a horizontal flip, applied to the whole batch, as SRe2L's recover loop does."""
    _, _, h, w = x.shape
    area = float(torch.empty(1).uniform_(scale[0], scale[1], generator=g)) * h * w
    ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)))
    ch = max(1, min(h, round(math.sqrt(area / ratio))))
    cw = max(1, min(w, round(math.sqrt(area * ratio))))
    top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
    out = x[:, :, top:top + ch, left:left + cw]
    if (ch, cw) != (h, w):
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    if flip and float(torch.rand(1, generator=g)) < 0.5:
        out = out.flip(3)
    return out


def slot_order(num_classes: int, ipc: int) -> torch.Tensor:
    """Indices that put a class-sorted set (class-major) into slot-major order: group j holds image j
    of every class, as SRe2L recovers one image per class per batch."""
    return torch.arange(num_classes * ipc).view(num_classes, ipc).t().reshape(-1)


def pixel_bounds(real, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalized values of pixel 0 and pixel 1 per channel, (1, c, 1, 1) each: recovered pixels are clipped to them."""
    mean = torch.tensor(real.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(real.std, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def cosine_lr(lr: float, step: int, horizon: int) -> float:
    """SRe2L's schedule: cosine from lr to 0 over `horizon` steps (no warm-up), then held at 0."""
    return 0.5 * lr * (1 + math.cos(math.pi * min(step, horizon) / horizon))


def teacher_field(default: str = "convnet_bn"):
    return hp(default, "teacher recipe (teachers.py): the batch-norm network trained once on the real data and cached; "
                       "convnet_bn_quick trains in seconds, resnet18 is the papers' CIFAR teacher (GPU scale)",
              choices=tuple(teacher_registry.TEACHERS.names()))


def label_temperature_field():
    return hp(0.0, "temperature of the teacher's labels the set carries; 0: the teacher's calibrated one, as every "
                   "label store (the soft protocol then softens labels and student alike by its own 20)",
              range=(0.0, 100.0))


def temperature_of_labels(teacher, real, temperature: float) -> tuple[float, str]:
    """The labels' temperature (0: the teacher's calibrated one) and the spec option that rebuilds it."""
    if temperature:
        return temperature, f":temperature={float(temperature)}"
    return round(teacher.calibrated_temperature(real), 4), ""


def attach_teacher_labels(syn, teacher, real, temperature: float) -> None:
    """Relabel: the set carries its teacher, which labels every view the student sees (FKD-style
    per-view soft labels, computed online instead of stored; the Labels & storage tab prices the
    stored alternatives)."""
    t, option = temperature_of_labels(teacher, real, temperature)
    if isinstance(teacher.net, Committee):
        store = CommitteeLabels.build(syn, None, teacher, None, temperature=t)
        store.spec = "committee" + (option or f":temperature={float(t)}")  # a committee has no calibrated default
    else:
        store = OnlineTeacher(copy.deepcopy(teacher.net).cpu().eval(), arch=teacher.arch, dtype="float32", temperature=t)
        store.spec = "teacher" + option
    store.teacher_note = teacher.describe()
    attach(syn, store)


def refresh_digest(syn, images: torch.Tensor) -> None:
    """The label store is tied to the images by a digest; keep it current as the images change."""
    if "label_store" in syn.extra_meta:
        syn.extra_meta["label_store.images"] = images_digest(images.detach().cpu())


@dataclass
class Recover(Method):
    """Shared fields and loop of SRe2L-style recovery; subclasses change the crop schedule, the
    teacher(s) or what is optimised."""

    family = "decoupled (recover and relabel)"

    teacher: str = teacher_field()
    lr: float = hp(0.25, "Adam learning rate of the pixels (betas 0.5, 0.9), cosine to 0 over `horizon` steps",
                   range=(1e-4, 10.0))
    horizon: int = hp(1000, "steps the cosine learning-rate schedule spans (the paper's 1000 iterations)",
                      range=(1, 100000))
    bn_weight: float = hp(0.01, "weight of the batch-norm statistics loss against the cross-entropy (SRe2L: 0.01)",
                          range=(0.0, 100.0))
    first_bn_multiplier: float = hp(10.0, "extra weight of the first BN layer's term (SRe2L: 10)", range=(0.0, 1000.0))
    crop_min: float = hp(0.08, "smallest random-resized-crop area fraction of the jitter (SRe2L: 0.08)",
                         range=(0.01, 1.0))
    flip: bool = hp(True, "random horizontal flip in the jitter (turned off where flips change the class)")
    init: str = hp("noise", "start from Gaussian noise (SRe2L) or from the real images the run starts with",
                   choices=("noise", "real"))
    label_temperature: float = label_temperature_field()

    @classmethod
    def preset(cls, name, *, dataset, ipc):
        facts = dataset_facts(dataset)
        out = {"flip": facts.flips}
        if name == "fast":  # a CPU: a cheap teacher and a short schedule; bigger crops keep 8-32 px images legible
            out.update(horizon=cls.default_steps("fast", dataset=dataset, ipc=ipc), crop_min=0.5)
        return out

    @classmethod
    def default_steps(cls, name, *, dataset, ipc):
        return 1000 if name == "paper" else 300

    # -- set-up ---------------------------------------------------------------------------------

    def load_teacher(self, real, device):
        return teacher_registry.get_bn_teacher(real, self.teacher, device=device, stop=self.stop_)

    def setup(self, real, syn, *, seed, device):
        self.gen_ = torch.Generator().manual_seed(seed)
        self.device_, self.real_ = device, real
        self.teacher_ = self.load_teacher(real, device)
        self.net_, self.sink_ = tapped(self.teacher_.net)
        self.ipc_ = len(syn.labels) // real.num_classes
        self.order_ = slot_order(real.num_classes, self.ipc_).to(device)  # class-major -> slot-major
        self.labels_ = syn.labels.to(device)
        self.low_, self.high_ = pixel_bounds(real, device)
        start = syn.images.to(device)
        if self.init == "noise":
            start = torch.randn(syn.images.shape, generator=self.gen_).to(device)
        self.start(start)
        self.opt_ = torch.optim.Adam(self.parameters(), lr=self.lr, betas=(0.5, 0.9), eps=1e-8)
        self.step_ = 0
        self.syn_ = syn
        teacher_registry.record(syn, [self.teacher_])
        self.relabel()

    def start(self, images: torch.Tensor) -> None:
        """Make the optimised variables from the starting images (n, c, h, w)."""
        self.images_ = images.clone().requires_grad_(True)

    def relabel(self) -> None:
        """Attach the set's labels: the teacher itself, labelling every view (INFER: static labels)."""
        attach_teacher_labels(self.syn_, self.teacher_, self.real_, self.label_temperature)
        refresh_digest(self.syn_, self.images())

    def parameters(self) -> list[torch.Tensor]:
        """What Adam optimises (the pixels; INFER optimises its compensators instead)."""
        return [self.images_]

    def batch(self) -> torch.Tensor:
        """The images as optimised, class-major (n, c, h, w)."""
        return self.images_

    # -- one step ---------------------------------------------------------------------------------

    def crop_scale(self) -> tuple[float, float]:
        return (self.crop_min, 1.0)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return recover_loss(self.net_, self.sink_, x, y, groups=self.ipc_, bn_weight=self.bn_weight,
                            first_bn_multiplier=self.first_bn_multiplier)

    def step(self):
        lr = cosine_lr(self.lr, self.step_, self.horizon)
        for group in self.opt_.param_groups:
            group["lr"] = lr
        x = random_resized_crop(self.batch()[self.order_], self.crop_scale(), self.flip, self.gen_)
        loss, stats = self.loss(x, self.labels_[self.order_])
        self.opt_.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_.step()
        self.clip()
        self.step_ += 1
        refresh_digest(self.syn_, self.images())
        return {"loss": loss.item() / self.ipc_, **stats, "lr": lr}

    def clip(self) -> None:
        with torch.no_grad():  # keep pixels displayable: SRe2L clips to [0, 1] after every step
            self.images_.copy_(torch.maximum(torch.minimum(self.images_, self.high_), self.low_))

    def images(self) -> torch.Tensor:
        return self.batch().detach()

    def restore(self, images: torch.Tensor) -> None:
        super().restore(images)
        refresh_digest(self.syn_, self.images())
