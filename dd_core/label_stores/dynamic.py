"""Dynamic soft labels (SRe2L, Yin et al. NeurIPS 2023; FKD, Shen & Xing ECCV 2022): a teacher
vector for every augmented view of every image in every evaluation epoch, with the augmentation
replayed from a stored seed, and their randomly pruned variant (LPLD, Xiao & He NeurIPS 2024)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..augment import dsa_for
from ..data import dataset_facts
from ..teacher import probabilities
from ..training import training_views
from .base import AUG_RECORD_BYTES, LABEL_STORES, SEED_BYTES, LabelStore, index_bytes
from ..soft_protocol import soft_views
from .soft import SOFTEN, VALUE_DTYPE, RowCodec, teacher_device, teacher_temperature


@dataclass(frozen=True)
class AugRecord:
    """Everything needed to replay the evaluator's augmented views: the schedule's seed and shape."""

    seed: int  # the seed of `training_views`; network 0 of an evaluation uses config.seed + 1
    epochs: int
    batch_size: int
    dsa: bool  # with the dataset's DSA ops, or no augmentation
    dsa_ops: str = "batch"  # the op drawn once per batch or once per image (EvalConfig.dsa_ops)
    # The soft-label protocol's views (soft_protocol.py) instead: random-resized crops down to
    # `crop_min` of the area, flips where they keep the class, CutMix with Beta(cutmix, cutmix).
    recipe: str = "sgd"
    crop_min: float = 0.08
    cutmix: float = 0.0

    @classmethod
    def for_config(cls, config) -> "AugRecord":
        soft = getattr(config, "recipe", "sgd") == "soft"
        return cls(config.seed + 1, config.epochs, config.batch_size, config.dsa, config.dsa_ops,
                   *((config.recipe, config.crop_min, config.cutmix) if soft else ()))

    def meta(self) -> dict[str, str]:
        soft = {"recipe": self.recipe, "crop_min": repr(self.crop_min), "cutmix": repr(self.cutmix)}
        return {"seed": str(self.seed), "epochs": str(self.epochs), "batch_size": str(self.batch_size),
                "dsa": str(int(self.dsa)), "dsa_ops": self.dsa_ops, **(soft if self.recipe == "soft" else {})}

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> "AugRecord":
        # files written before dsa_ops was recorded drew one op per image
        return cls(int(meta["seed"]), int(meta["epochs"]), int(meta["batch_size"]), meta["dsa"] == "1",
                   meta.get("dsa_ops", "image"), meta.get("recipe", "sgd"), float(meta.get("crop_min", 0.08)),
                   float(meta.get("cutmix", 0.0)))

    def views(self, images: torch.Tensor, dataset_name: str):
        """The (epoch, indices, views) sequence an evaluation network replaying this record sees."""
        if self.recipe == "soft":  # crops + CutMix: the labels are made for the mixed views themselves
            views = soft_views(images, epochs=self.epochs, batch_size=self.batch_size, seed=self.seed,
                               crop_min=self.crop_min, flips=dataset_facts(dataset_name).flips, cutmix_alpha=self.cutmix)
            return ((epoch, idx, batch) for epoch, idx, batch, _ in views)
        augment = dsa_for(dataset_facts(dataset_name)) if self.dsa else None
        return training_views(images, epochs=self.epochs, batch_size=self.batch_size, augment=augment, seed=self.seed,
                              dsa_ops=self.dsa_ops)

    def check(self, config, store: str) -> None:
        if not config.dsa and config.dc_aug:
            raise ValueError(f"the {store!r} labels replay DSA or unaugmented schedules only; evaluate them "
                             "with the 'paper' or 'fast' protocol, not 'dc'")
        soft = getattr(config, "recipe", "sgd") == "soft"
        if soft != (self.recipe == "soft"):
            made, asked = ("the soft protocol's crops and CutMix", "another protocol's") if not soft else \
                ("another protocol's views", "the soft protocol's crops and CutMix")
            raise ValueError(f"the {store!r} labels were made for {made}; the evaluation trains on {asked}. "
                             "Rebuild the labels for this protocol, or evaluate with the one they were made for.")
        if soft and (config.crop_min, config.cutmix) != (self.crop_min, self.cutmix):
            raise ValueError(f"the {store!r} labels were made for crops down to {self.crop_min:g} and CutMix "
                             f"{self.cutmix:g}; the evaluation asks for {config.crop_min:g} and {config.cutmix:g}. "
                             "Rebuild the labels for it.")
        wanted = (config.epochs, config.batch_size, config.dsa, config.dsa and config.dsa_ops)
        if wanted != (self.epochs, self.batch_size, self.dsa, self.dsa and self.dsa_ops):
            def aug(dsa, ops):
                return f"DSA with one op per {ops}" if dsa else "no augmentation"
            raise ValueError(f"the {store!r} labels were made for {self.epochs} epochs, batch {self.batch_size}, "
                             f"{aug(self.dsa, self.dsa_ops)}; the evaluation asks for "
                             f"{config.epochs} epochs, batch {config.batch_size}, "
                             f"{aug(config.dsa, config.dsa_ops)}. Rebuild the labels for it.")


def schedule_probabilities(syn, teacher, record: AugRecord, temperature: float) -> torch.Tensor:
    """The teacher's probabilities for every view of the replayed schedule: (epochs, N, C)."""
    device = teacher_device(teacher)
    images = syn.images
    out = torch.empty(record.epochs, len(images), syn.num_classes)
    for epoch, idx, views in record.views(images.to(device), syn.dataset):
        out[epoch, idx.cpu()] = probabilities(teacher.net, views, device, temperature)
    return out


@LABEL_STORES.register("dynamic")
class DynamicLabels(LabelStore):
    """A teacher vector per image per epoch, for exactly the augmented view the student sees."""

    name = "dynamic"
    needs_teacher = True
    OPTIONS = {"dtype": VALUE_DTYPE,
               "topk": (0, "keep only the k largest probabilities per view (0 keeps all)"),
               "soften": SOFTEN,
               "temperature": (0.0, "the labels' temperature as given (0: the teacher's calibrated one x soften)")}

    def __init__(self, values, indices, *, codec: RowCodec, record: AugRecord, temperature: float):
        super().__init__(codec.num_classes)
        self.values, self.indices = values, indices  # (E, N, k) stored type; (E, N, k) class ids or None
        self.codec, self.record, self.temperature = codec, record, temperature

    def rows(self, epoch: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the labels of (epoch, images idx) sit in `values`: (row, column) index tensors."""
        return torch.full_like(idx, epoch), idx

    def targets(self, idx, views=None, epoch=0):
        if not 0 <= epoch < self.record.epochs:
            raise ValueError(f"{self.name!r} labels cover epochs 0..{self.record.epochs - 1}; asked for epoch {epoch}")
        r, c = self.rows(epoch, idx.cpu())
        return self.codec.decode(self.values[r, c], None if self.indices is None else self.indices[r, c])

    def view_seed(self, default):
        return self.record.seed  # every evaluation network replays the labelled views

    def check_config(self, config, dataset):
        self.record.check(config, self.name)
        if len(self.values[0]) == 0:
            raise ValueError(f"{self.name!r} labels are empty")

    def labelled_rows(self) -> int:
        return self.values.shape[0] * self.values.shape[1]

    def nbytes(self):
        return self.labelled_rows() * self.codec.bytes_per_row() + AUG_RECORD_BYTES

    def formula(self):
        e, n = self.record.epochs, self.values.shape[1]
        return (f"E x N x {self.codec.row_formula()} + {AUG_RECORD_BYTES} B augmentation record "
                f"(seed, epochs, batch size); E = {e}, N = {n}, T = {self.temperature:g}")

    def state(self):
        tensors = {"values": self.values}
        if self.indices is not None:
            tensors["indices"] = self.indices
        meta = {"dtype": self.codec.dtype, "topk": str(self.codec.topk), "temperature": str(self.temperature)}
        return tensors, {**meta, **self.record.meta()}

    @classmethod
    def from_state(cls, tensors, meta, syn):
        codec = RowCodec(syn.num_classes, meta["dtype"], int(meta["topk"]))
        return cls(tensors["values"], tensors.get("indices"), codec=codec, record=AugRecord.from_meta(meta),
                   temperature=float(meta["temperature"]))

    @classmethod
    def build(cls, syn, dataset, teacher, config, *, dtype="float16", topk=0, soften=1.0, temperature=0.0):
        temperature = temperature or teacher_temperature(teacher, dataset, soften)
        codec, record = RowCodec(syn.num_classes, dtype, topk), AugRecord.for_config(config)
        values, indices = codec.encode(schedule_probabilities(syn, teacher, record, temperature))
        return cls(values, indices, codec=codec, record=record, temperature=temperature)


def kept_epochs(epochs: int, n: int, keep: int, seed: int) -> torch.Tensor:
    """(keep, N): for each image, the sorted epochs whose labels are kept, drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(epochs, generator=g)[:keep].sort().values for _ in range(n)], 1)


@LABEL_STORES.register("dynamic-pruned")
class PrunedDynamicLabels(DynamicLabels):
    """Dynamic labels with only a random fraction kept per image (LPLD-style label pruning).

    The schedule is replayed as for `dynamic`. What a pruned (epoch, image) trains on is `fill`:
    "view" (LPLD: the student trains only on labelled views; the image's kept view from the
    nearest epoch is shown, with its label; kept views are re-made from the images and the seed,
    no pixels are stored), "label" (the scheduled view with the nearest kept label, made for
    another view) or "hard" (the scheduled view with its one-hot label; costs N hard labels)."""

    name = "dynamic-pruned"
    FILLS = ("view", "label", "hard")
    OPTIONS = {**DynamicLabels.OPTIONS, "keep": (0.1, "fraction of the E x N labels kept (at least one per image)"),
               "prune_seed": (0, "seed of the random choice of kept labels"),
               "fill": ("view", "what a pruned view trains on: view (LPLD), label or hard")}

    def __init__(self, values, indices, *, codec, record, temperature, prune_seed: int, syn, fill: str = "view"):
        super().__init__(values, indices, codec=codec, record=record, temperature=temperature)
        if fill not in self.FILLS:
            raise ValueError(f"unknown fill {fill!r}; valid fills are: {', '.join(self.FILLS)}")
        self.prune_seed, self.fill, self.labels = prune_seed, fill, syn.labels  # values: (K, N, k) kept labels
        self.kept_ = kept_epochs(record.epochs, values.shape[1], values.shape[0], prune_seed)  # (K, N)
        dist = (torch.arange(record.epochs).view(-1, 1, 1) - self.kept_.unsqueeze(0)).abs()  # (E, K, N)
        self.slot_ = dist.argmin(1)  # (E, N): which kept (view, label) each (epoch, image) trains on
        self.images, self.dataset_name = syn.images.detach().cpu(), syn.dataset
        self.views_: torch.Tensor | None = None  # (K, N, c, h, w) kept views, made on first use

    def rows(self, epoch, idx):
        return self.slot_[epoch, idx], idx

    def kept_views(self) -> torch.Tensor:
        """Replay the schedule once and keep the views whose labels were kept."""
        if self.views_ is None:
            k, n = self.kept_.shape
            views = torch.empty(k, n, *self.images.shape[1:])
            slot_of = torch.full((self.record.epochs, n), -1, dtype=torch.long)  # (E, N) kept slot or -1
            slot_of[self.kept_, torch.arange(n).expand(k, n)] = torch.arange(k).view(-1, 1).expand(k, n)
            for epoch, idx, batch in self.record.views(self.images, self.dataset_name):
                slot = slot_of[epoch, idx]
                mine = slot >= 0
                views[slot[mine], idx[mine]] = batch[mine]
            self.views_ = views
        return self.views_

    def inputs(self, idx, views, epoch):
        if self.fill != "view":
            return views
        slot, i = self.rows(epoch, idx.cpu())
        return self.kept_views()[slot, i].to(views.device)

    def targets(self, idx, views=None, epoch=0):
        out = super().targets(idx, views, epoch)
        if self.fill == "hard":  # where this epoch's label was pruned: the one-hot label
            i = idx.cpu()
            pruned = self.kept_[self.slot_[epoch, i], i] != epoch  # (n,)
            out[pruned] = F.one_hot(self.labels[i][pruned], self.num_classes).float()
        return out

    def nbytes(self):
        hard = len(self.labels) * index_bytes(self.num_classes) if self.fill == "hard" else 0
        return super().nbytes() + SEED_BYTES + hard

    def formula(self):
        k, n = self.values.shape[:2]
        hard = f" + N x {index_bytes(self.num_classes)} B hard labels" if self.fill == "hard" else ""
        return (f"K x N x {self.codec.row_formula()} + {AUG_RECORD_BYTES} B augmentation record + "
                f"{SEED_BYTES} B pruning seed{hard}; K = {k} of E = {self.record.epochs} labels kept per image, "
                f"N = {n}, T = {self.temperature:g}, pruned views: {self.fill}")

    def state(self):
        tensors, meta = super().state()
        return tensors, {**meta, "prune_seed": str(self.prune_seed), "fill": self.fill}

    @classmethod
    def from_state(cls, tensors, meta, syn):
        codec = RowCodec(syn.num_classes, meta["dtype"], int(meta["topk"]))
        return cls(tensors["values"], tensors.get("indices"), codec=codec, record=AugRecord.from_meta(meta),
                   temperature=float(meta["temperature"]), prune_seed=int(meta["prune_seed"]), syn=syn,
                   fill=meta["fill"])

    @classmethod
    def build(cls, syn, dataset, teacher, config, *, dtype="float16", topk=0, soften=1.0,
              keep=0.1, prune_seed=0, fill="view", temperature=0.0):
        temperature = temperature or teacher_temperature(teacher, dataset, soften)
        if fill not in cls.FILLS:
            raise ValueError(f"unknown fill {fill!r}; valid fills are: {', '.join(cls.FILLS)}")
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be a fraction in (0, 1]; got {keep}")
        codec, record = RowCodec(syn.num_classes, dtype, topk), AugRecord.for_config(config)
        full = schedule_probabilities(syn, teacher, record, temperature)  # (E, N, C)
        per_image = max(1, round(keep * record.epochs))
        kept = kept_epochs(record.epochs, len(syn.images), per_image, prune_seed)  # (K, N)
        values, indices = codec.encode(full[kept, torch.arange(len(syn.images)).expand_as(kept)])  # (K, N, k)
        return cls(values, indices, codec=codec, record=record, temperature=temperature, prune_seed=prune_seed,
                   syn=syn, fill=fill)
