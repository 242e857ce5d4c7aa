"""Label space: what each way of storing labels costs in bytes, and what accuracy it buys.

For one synthetic set, every label store is built and evaluated with the same protocol, on the
images as they would be stored (uint8, float16 or float32), on a random real subset of the
same size with the same store, and on the label-first baseline's pruned real subset (Xiao et al.
2025) with the same store: equal images and label bytes, so the labels' share of a gain shows. A point's bytes are its images plus its labels; each count comes
with the formula behind it. The whole training set (its bytes, its teacher's accuracy) is the
reference at the other end.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch

from .data import DatasetUnavailable, load_dataset
from .evaluate import EvalConfig, evaluate
from .evaluate import protocol as make_protocol
from .label_stores.base import LABEL_STORES, index_bytes
from .labels import LabelSpec, build_spec, parse_spec
from .methods.pca import keep_by_difficulty
from .transfer import refuse_unlabelled
from .registry import Registry, UnknownNameError
from .synthetic import SyntheticFileError, SyntheticSet
from .synthetic import random_subset as baseline_subset
from .teacher import get_teacher
from .teachers import teacher_of_set
from .device import default_device

# The protocols a trade-off runs under: replayed label stores (dynamic, distance) record DSA schedules.
LABEL_PROTOCOLS = ("fast", "paper", "soft")  # soft: the decoupled papers' recipe, dynamic labels on its crops + CutMix
# The stores every trade-off shows unless told otherwise: one or more of each family.
DEFAULT_STORES = ["hard", "soft:dtype=float32", "soft", "soft:dtype=int8", "soft:topk=1", "dynamic",
                  "dynamic-pruned:keep=0.1", "dynamic-pruned:keep=0.02", "dynamic-pruned:keep=0.02,fill=label",
                  "distance", "distance:per_view=1", "projector", "projector:rank=1,head_rank=2", "teacher"]
AIM_SHARE, AIM_FRACTION = 0.9, 0.02  # keep >= 90% of dynamic's gain over hard at <= 2% of its label bytes
IMAGE_FORMATS: Registry = Registry("image format")


@dataclass(frozen=True)
class ImageFormat:
    """How the images are kept on disk: the bytes per value and the round trip they go through."""

    name: str
    bytes_per_value: int
    note: str

    def roundtrip(self, images: torch.Tensor, mean, std) -> torch.Tensor:
        """(n, c, h, w) normalized images -> the same images after being stored and read back."""
        if self.name == "float32":
            return images.clone()
        if self.name == "float16":
            return images.half().float()
        m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        pixels = ((images * s + m).clamp(0, 1) * 255).round()  # 8-bit pixels, as a PNG would hold them
        return (pixels / 255 - m) / s

    def nbytes(self, images: torch.Tensor) -> int:
        return images.numel() * self.bytes_per_value

    def formula(self, images: torch.Tensor) -> str:
        n, c, h, w = images.shape
        return f"N x c x h x w x {self.bytes_per_value} B {self.name}; N = {n}, c x h x w = {c} x {h} x {w} ({self.note})"


for _fmt in (ImageFormat("uint8", 1, "pixels clipped to [0, 1], 256 levels"),
             ImageFormat("float16", 2, "normalized values, unclipped"),
             ImageFormat("float32", 4, "normalized values as distilled")):
    IMAGE_FORMATS.register(_fmt.name)(_fmt)


@dataclass
class Point:
    """One label store on one image set: its bytes (with formulas) and its accuracy."""

    labels: str  # the store's spec, e.g. "soft:dtype=int8"
    set: str  # "synthetic", "random" (a random real subset of the same size) or "pruned" (the label-first baseline's)
    image_format: str
    image_bytes: int
    label_bytes: int
    accuracy_mean: float
    accuracy_std: float
    accuracies: list[float]
    image_formula: str
    label_formula: str
    uncounted: str = ""
    teacher: str = ""
    protocol: str = ""
    seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        return self.image_bytes + self.label_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}


@dataclass
class Tradeoff:
    """Every store's point for a set and its random-subset twin, plus the whole-dataset reference."""

    dataset: str
    images: int
    protocol: str  # config.describe(): the recipe behind every accuracy
    points: list[Point] = field(default_factory=list)
    whole_image_bytes: int = 0  # the whole training set as uint8 pixels
    whole_label_bytes: int = 0  # and one class index per image
    whole_accuracy: float | None = None
    whole_note: str = ""
    errors: list[str] = field(default_factory=list)  # stores that could not be built, and why
    stopped: bool = False

    @property
    def whole_bytes(self) -> int:
        return self.whole_image_bytes + self.whole_label_bytes

    def of(self, kind: str) -> list[Point]:
        return [p for p in self.points if p.set == kind]

    def frontier(self, kind: str = "synthetic") -> list[Point]:
        """The Pareto frontier: points no other point beats on both fewer bytes and higher accuracy."""
        best, out = -1.0, []
        for p in sorted(self.of(kind), key=lambda p: (p.total_bytes, -p.accuracy_mean)):
            if p.accuracy_mean > best:
                out.append(p)
                best = p.accuracy_mean
        return out

    def gain_shares(self, kind: str = "synthetic") -> list[dict]:
        """Per store: the share of dynamic labels' accuracy gain over hard labels it keeps, at what
        fraction of dynamic's label bytes (and total bytes). Empty without both references."""
        by = {p.labels: p for p in self.of(kind)}
        hard, dyn = by.get("hard"), by.get("dynamic")
        if hard is None or dyn is None:
            return []
        gain = dyn.accuracy_mean - hard.accuracy_mean
        # Twice the spread of a difference of two networks' accuracies: a gain below it is not resolved.
        noise = 2 * (hard.accuracy_std ** 2 + dyn.accuracy_std ** 2) ** 0.5
        rows = []
        for p in self.of(kind):
            share = (p.accuracy_mean - hard.accuracy_mean) / gain if gain > 0 else float("nan")
            fraction = p.label_bytes / dyn.label_bytes
            rows.append({"labels": p.labels, "set": kind, "gain": gain, "noise": noise, "share": share,
                         "label_fraction": fraction,
                         "total_fraction": p.total_bytes / dyn.total_bytes,
                         "meets_aim": bool(gain > noise and share >= AIM_SHARE and fraction <= AIM_FRACTION)})
        return rows

    def as_rows(self) -> list[dict]:
        rows = [{"protocol": self.protocol, **p.as_dict()} for p in self.points]  # the recipe behind each number
        if self.whole_bytes:
            rows.append({"labels": "hard", "set": "whole", "image_format": "uint8",
                         "image_bytes": self.whole_image_bytes, "label_bytes": self.whole_label_bytes,
                         "total_bytes": self.whole_bytes, "accuracy_mean": self.whole_accuracy, "accuracy_std": 0.0,
                         "accuracies": [], "protocol": "teacher", "teacher": self.whole_note,
                         "image_formula": "whole training set: N x c x h x w x 1 B uint8",
                         "label_formula": "N x 1 B (one class index per image)", "uncounted": ""})
        return rows


def random_subset(syn, dataset):
    """The random-subset baseline (synthetic.random_subset, the one seed rule of the app and the
    CLI) at `syn`'s images per class, in `syn`'s provenance but without its labels."""
    base = baseline_subset(dataset, max(syn.ipc, 1))  # IPC as the set records it (the CLI's rule too)
    out = syn.clone()
    out.images, out.labels, out.method = base.images, base.labels, "random"
    out.extra, out.extra_meta = {}, {}
    return out


def get_teacher_or_reason(dataset, device, syn=None):
    """(teacher, '') or (None, why none could be had): training one can fail on odd data. The teacher a
    set records (the decoupled methods' own, teachers.py) comes first, so its labels are compared
    with the same teacher's other labels."""
    try:
        recorded = teacher_of_set(syn, dataset, device=device) if syn is not None else None
        return recorded or get_teacher(dataset, device=device), ""
    except Exception as err:  # noqa: BLE001  any failure becomes a message beside the stores that needed it
        return None, f"no teacher could be trained on {dataset.name} ({type(err).__name__}: {err})"


def pruned_subset(syn, dataset, teacher, device):
    """The label-first baseline's images (Xiao et al. 2025): per class, as many real training images as
    `syn` has, kept by PCA's prune rule (the easiest by EL2N of the teacher that makes the soft labels)."""
    counts = torch.bincount(syn.labels, minlength=dataset.num_classes).tolist()
    chosen = torch.cat([keep_by_difficulty(teacher.net, dataset, c, k, device=device) for c, k in enumerate(counts) if k])
    out = syn.clone()
    out.images, out.labels, out.method = dataset.x_train[chosen].clone(), dataset.y_train[chosen].clone(), "pca"
    out.extra, out.extra_meta = {}, {}
    return out


def run_tradeoff(syn, dataset, config: EvalConfig, stores: list[str | LabelSpec] | None = None, *, image_format: str = "uint8",
                 random_set: bool = True, pruned_set: bool = True, teacher=None, device=None,
                 progress: Callable[[float, str], None] | None = None,
                 on_point: Callable[[Tradeoff], None] | None = None,
                 stop: threading.Event | None = None) -> Tradeoff:
    """Build and evaluate every store in `stores` on `syn` (and a random real subset of the same size).
    `on_point` gets a copy of the result so far each time a point is measured, so a page can draw
    the plot as it fills in."""
    device = device or default_device()
    fmt = IMAGE_FORMATS.get(image_format)
    refuse_unlabelled(syn)  # label stores need class labels; a KRR-ST set is measured by transfer
    specs = [parse_spec(s) for s in stores or DEFAULT_STORES]  # once each; already parsed at the CLI or app
    stored = syn.clone()
    stored.images = fmt.roundtrip(syn.images.detach().cpu(), syn.mean, syn.std)
    sets = [("synthetic", stored)]
    if random_set:
        rnd = random_subset(syn, dataset)
        rnd.images = fmt.roundtrip(rnd.images, syn.mean, syn.std)
        sets.append(("random", rnd))
    reason = ""
    if teacher is None and (pruned_set or any(LABEL_STORES.get(s.name).needs_teacher for s in specs)):
        if progress:
            progress(0.0, "getting the teacher (trained once per dataset, then cached)")
        teacher, reason = get_teacher_or_reason(dataset, device, syn)
    n, c, h, w = dataset.x_train.shape
    result = Tradeoff(dataset.name, len(syn.images), config.describe(), whole_image_bytes=n * c * h * w,
                      whole_label_bytes=n * index_bytes(dataset.num_classes))
    if teacher is not None:
        result.whole_accuracy = teacher.test_accuracy
        result.whole_note = f"accuracy of the teacher, {teacher.describe()} (not the evaluation protocol)"
    skipped = ""
    if pruned_set and teacher is None:
        skipped = f"label-first baseline (pca): its images are chosen by a teacher's scores and {reason}"
    elif pruned_set:  # the label-first baseline: the same labels on pruned real images, equal images and label bytes
        pruned = pruned_subset(syn, dataset, teacher, device)
        pruned.images = fmt.roundtrip(pruned.images, syn.mean, syn.std)
        sets.append(("pruned", pruned))
    jobs = [(kind, s, spec) for kind, s in sets for spec in specs]
    for j, (kind, s, spec) in enumerate(jobs):
        if stop is not None and stop.is_set():
            result.stopped = True
            break
        if LABEL_STORES.get(spec.name).needs_teacher and teacher is None:
            if kind == "synthetic":
                result.errors.append(f"{spec}: needs a teacher network and {reason}")
            continue
        say = (lambda f, t, j=j, kind=kind, spec=spec:
               progress((j + f) / len(jobs), f"{kind} set, labels {spec}: {t}")) if progress else None
        if say:
            say(0.0, "building the labels")
        t0 = time.perf_counter()
        try:
            store = build_spec(spec, s, dataset, teacher, config)
        except ValueError as err:  # e.g. a top-k above the number of classes: said once, not per set
            if f"{spec}: {err}" not in result.errors:
                result.errors.append(f"{spec}: {err}")
            continue
        res = evaluate(s.images, store, dataset, config, device=device, progress=say, stop=stop)
        if res.stopped:
            result.stopped = True
            break
        result.points.append(Point(str(spec), kind, fmt.name, fmt.nbytes(s.images), store.nbytes(), res.mean, res.std,
                                   res.accuracies, fmt.formula(s.images), store.formula(), store.uncounted(),
                                   store.teacher_note, res.config.describe(), round(time.perf_counter() - t0, 2)))
        if on_point:
            on_point(replace(result, points=list(result.points), errors=list(result.errors)))
    if skipped:
        result.errors.append(skipped)
    if progress:
        progress(1.0, "stopped" if result.stopped else "done")
    return result


# -- presenting it -----------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} B"


def markdown(result: Tradeoff) -> str:
    """The points as a markdown table (synthetic, random subset and pruned subset side by side), then the
    gain shares. A column with nothing in any row (the shares, when no dynamic store was measured) is left out."""
    rnd = {p.labels: p for p in result.of("random")}
    pruned = {p.labels: p for p in result.of("pruned")}
    shares = {r["labels"]: r for r in result.gain_shares()}
    header = ["labels", "image bytes", "label bytes", "total", "synthetic acc", "random-subset acc",
              "label-first (pca) acc", "share of dynamic's gain", "label bytes / dynamic's", "label-byte formula"]
    rows = []
    for p in result.of("synthetic"):
        r, g = rnd.get(p.labels), shares.get(p.labels)
        share = "" if g is None or g["share"] != g["share"] else f"{g['share']:.0%}"
        frac = "" if g is None else f"{g['label_fraction']:.2%}"
        other = f"{r.accuracy_mean:.4f} ± {r.accuracy_std:.4f}" if r else "-"
        q = pruned.get(p.labels)
        first = f"{q.accuracy_mean:.4f} ± {q.accuracy_std:.4f}" if q else "-"
        rows.append([p.labels, f"{p.image_bytes:,}", f"{p.label_bytes:,}", human_bytes(p.total_bytes),
                     f"{p.accuracy_mean:.4f} ± {p.accuracy_std:.4f}", other, first, share, frac, p.label_formula])
    if result.whole_accuracy is not None:
        rows.append(["whole training set, hard", f"{result.whole_image_bytes:,}", f"{result.whole_label_bytes:,}",
                     human_bytes(result.whole_bytes), f"{result.whole_accuracy:.4f} (teacher)", "-", "-", "", "",
                     result.whole_note])
    keep = [j for j in range(len(header)) if any(row[j] not in ("", "-") for row in rows) or j < 5]
    lines = ["| " + " | ".join(header[j] for j in keep) + " |", "|" + " --- |" * len(keep)]
    lines += ["| " + " | ".join(row[j] for j in keep) + " |" for row in rows]
    return "\n".join(lines)


def summary(result: Tradeoff) -> str:
    """In words: which stores keep >= 90% of dynamic's gain at <= 2% of its label bytes, per set."""
    out = []
    for kind in ("synthetic", "random", "pruned"):
        rows = result.gain_shares(kind)
        if not rows:
            continue
        gain = rows[0]["gain"]
        if gain <= 0:
            out.append(f"{kind}: dynamic labels gain nothing over hard labels here ({gain:+.4f}), so shares are undefined")
            continue
        if gain <= rows[0]["noise"]:
            out.append(f"{kind}: dynamic gains {gain:+.4f} over hard, within twice the networks' spread "
                       f"({rows[0]['noise']:.4f}): shares are not resolved, no store is credited")
            continue
        hits = [r["labels"] for r in rows if r["meets_aim"]]
        out.append(f"{kind}: dynamic gains {gain:+.4f} over hard; "
                   + (f"keeping >= 90% of it at <= 2% of its label bytes: {', '.join(hits)}" if hits
                      else "no store keeps >= 90% of it at <= 2% of its label bytes"))
    return "\n".join(out)


def labels_command(path: str, protocol: str, stores: list[str] | None, num_models: int | None, as_json: bool, *,
                   epochs: int | None = None, image_format: str = "uint8", random_set: bool = True,
                   pruned_set: bool = True) -> int:
    """`python -m dd_core labels FILE`: print every store's bytes and accuracy; 0 on success, 2 on bad input."""
    try:
        syn = SyntheticSet.load(path)
        dataset = load_dataset(syn.dataset)
        overrides = {k: v for k, v in (("num_models", num_models), ("epochs", epochs)) if v}
        config = make_protocol(protocol, **overrides)
        specs = [parse_spec(spec) for spec in stores] if stores else None
        IMAGE_FORMATS.get(image_format)
    except (SyntheticFileError, DatasetUnavailable, ValueError, UnknownNameError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    last = [""]

    def progress(frac: float, text: str) -> None:
        if sys.stderr.isatty():  # one line redrawn in place
            print(f"\r[{frac:4.0%}] {text[:100]:100s}", end="", file=sys.stderr, flush=True)
        elif text.split(":")[0] != last[0]:  # a log: one line per store
            last[0] = text.split(":")[0]
            print(f"[{frac:4.0%}] {last[0]}", file=sys.stderr, flush=True)

    result = run_tradeoff(syn, dataset, config, specs, image_format=image_format, random_set=random_set,
                          pruned_set=pruned_set, progress=progress)
    print(file=sys.stderr)
    for err in result.errors:
        print(f"warning: {err}", file=sys.stderr)
    if as_json:
        print(json.dumps(result.as_rows()))
    else:
        print(f"{syn.method} on {dataset.name}, {len(syn.images)} images; {result.protocol}")
        print(markdown(result))
        print(summary(result))
    return 0 if result.points else 1

