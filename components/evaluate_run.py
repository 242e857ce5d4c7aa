"""Evaluating a synthetic set for a session: fresh networks, the random-subset baseline at the same
IPC, the whole-dataset reference, and the DD-Ranking scores; with a stop signal and the CPU cap.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from dd_core import metrics
from dd_core.label_stores.base import HardLabels, LabelStore
from dd_core.labels import load_store, same_kind
from dd_core.evaluate import PROTOCOLS, EvalConfig, EvalResult, dataset_for, for_set, protocol_help
from dd_core.evaluate import protocol as make_protocol
from dd_core.models import MODELS
from dd_core.synthetic import SyntheticSet, check_fits, random_subset
from dd_core.teachers import teacher_of_set
from dd_core.device import default_device
from dd_core.transfer import References, TransferConfig, TransferResult, evaluate_transfer, references, \
    refuse_unlabelled, targets_of

from . import inputs, runtime
from .sessions import Session
# The engine's evaluator and teacher; on a ZeroGPU Space they run in GPU calls of their own.
from .zerogpu import evaluate, get_teacher, whole_reference as teacher_whole_reference

MAX_MODELS = 5
SAME_ARCH = "the protocol's (ConvNet for the resolution)"  # the architecture choice meaning "no override"
_baselines: dict[tuple, EvalResult] = {}  # read-only once computed: derived from real data only
_baseline_lock = threading.Lock()


@dataclass
class Report:
    """Everything the Evaluate tab shows for one evaluation."""

    synthetic: EvalResult
    baseline: EvalResult | None
    whole: float | None  # test accuracy of a network trained on the whole training set
    whole_note: str
    scores: dict[str, float] | None  # IOR, HLR, LRS when baseline and whole exist
    hard: EvalResult | None = None  # the set on hard labels, for HLR, when it carries other labels
    rs2: EvalResult | None = None  # RS2 at the set's per-epoch image budget, when asked for
    label_first: EvalResult | None = None  # pca's pruned real images with the set's soft labels


# What each protocol is, in one line, for the Evaluate tab and the API: from the protocols themselves.
PROTOCOL_HELP = protocol_help()


def accuracy_text(result) -> str:
    """'mean ± std' of a result's accuracies, for the tab's tables ('—' when none finished)."""
    if result is None or not result.accuracies:
        return "—"
    if len(result.accuracies) == 1:
        return f"{result.mean:.3f} ± — (one network)"  # a spread needs two or more
    return f"{result.mean:.3f} ± {result.std:.3f}"


def _networks(num_models) -> int:
    n = inputs.as_int(num_models, "Number of networks")
    if not 1 <= n <= MAX_MODELS:
        raise inputs.UserError(f"Number of networks must be between 1 and {MAX_MODELS} (got {n}).")
    return n


def _architecture(model: str | None) -> str | None:
    if model and model not in MODELS:
        raise inputs.UserError(f"Unknown architecture {model!r}; choose one of: {', '.join(MODELS.names())}.")
    return model or None


def config_for(protocol: str, num_models, model: str | None) -> EvalConfig:
    if protocol not in PROTOCOLS:
        raise inputs.UserError(f"Unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}.")
    overrides = {"num_models": _networks(num_models)}
    if _architecture(model):
        overrides["model"] = model
    return make_protocol(protocol, **overrides)


def dataset_of(session: Session, syn: SyntheticSet):
    """The real dataset a set was distilled from (a folder set needs the session that made it)."""
    name = syn.dataset
    run = session.run
    if name.startswith("folder:"):
        if run is not None and run.dataset_name == name:
            name = run.dataset
        elif "/" not in name and "\\" not in name:  # only the folder's name: a path (the Evaluate tab's box) is read
            where = (" or give the folder's path in the box that appears under the upload" if runtime.FOLDERS_ALLOWED
                     else "")
            raise inputs.UserError(f"This set was distilled from the image folder {name[7:]!r}; evaluate it in the "
                                   f"session that made it{where} (the folder's full path is not stored in the "
                                   f"file).")
    dataset = inputs.open_dataset(name)
    check_fits(syn, dataset)
    return dataset_for(syn, dataset)  # whitened like the set, if it was distilled with ZCA


def labels_of(syn: SyntheticSet) -> LabelStore:
    """The set's label store (soft labels and the like) when its file carries one, else its hard labels."""
    try:
        return load_store(syn)
    except ValueError as e:  # e.g. a store made for images that changed afterwards
        raise inputs.UserError(str(e)) from None


def image_bytes(syn: SyntheticSet) -> int:
    """Bytes of the set's images as stored."""
    return syn.images.numel() * syn.images.element_size()


def set_bytes(syn: SyntheticSet, store) -> int:
    """Bytes to reproduce training on the set: the images as stored plus everything its labels need."""
    return image_bytes(syn) + int(store.nbytes())


def evaluate_set(session: Session, syn: SyntheticSet, *, stop: threading.Event, protocol: str = "fast",
                 num_models=1, model: str | None = None, progress: Callable[[float, str], None] | None = None,
                 hard: bool = False) -> EvalResult:
    """Train fresh networks on `syn` alone, with its own labels (or its hard labels if `hard`);
    honours `stop`, the calling job's stop (its Stop button and its time cap)."""
    try:
        refuse_unlabelled(syn)  # a KRR-ST set has no class labels: it is evaluated by transfer
        config = for_set(config_for(protocol, num_models, model), syn)  # learned_lr: the set's own lr
    except ValueError as e:
        raise inputs.UserError(str(e)) from None
    dataset = dataset_of(session, syn)
    store = HardLabels(syn.labels, syn.num_classes) if hard else labels_of(syn)
    return evaluate(syn.images, store, dataset, config, progress=progress, stop=stop)


def baseline(session: Session, syn: SyntheticSet, config: EvalConfig, *, stop: threading.Event,
             progress: Callable[[float, str], None] | None = None) -> EvalResult:
    """Random real images at the same IPC with the same kind of labels as `syn` (DD-Ranking's IOR
    compares like with like), evaluated with the same recipe; cached for everyone."""
    dataset = dataset_of(session, syn)
    store = labels_of(syn)
    ipc = max(1, len(syn.labels) // max(1, syn.num_classes))
    key = (dataset.name, dataset.split_note, ipc, config, store.spec, syn.extra_meta.get("teachers", ""))
    with _baseline_lock:
        if key in _baselines:
            return _baselines[key]
    subset = random_subset(dataset, ipc)
    # the same teacher as the set's labels: the one the set records (decoupled methods), else the default
    teacher = (teacher_of_set(syn, dataset) or get_teacher(dataset)) if store.needs_teacher else None
    labels = same_kind(store, subset, dataset, teacher, config)
    result = evaluate(subset.images, labels, dataset, config, progress=progress, stop=stop)
    if not result.stopped:
        with _baseline_lock:
            _baselines[key] = result
    return result


def label_first(session: Session, syn: SyntheticSet, config: EvalConfig, *, stop: threading.Event,
                progress: Callable[[float, str], None] | None = None) -> EvalResult:
    """The label-first baseline (Xiao et al. 2025) for a set with teacher-made labels: as many real
    images as the set holds, kept by pca's prune rule, with the same kind of labels from the same
    teacher; equal images and label bytes. Cached for everyone like the random baseline."""
    from dd_core.teachers import teacher_of_set
    from dd_core.tradeoff import pruned_subset

    dataset = dataset_of(session, syn)
    store = labels_of(syn)
    key = ("label-first", dataset.name, dataset.split_note, len(syn.images), config, store.spec,
           syn.extra_meta.get("teachers", ""))
    with _baseline_lock:
        if key in _baselines:
            return _baselines[key]
    teacher = teacher_of_set(syn, dataset) or get_teacher(dataset)
    pruned = pruned_subset(syn, dataset, teacher, None)
    result = evaluate(pruned.images, same_kind(store, pruned, dataset, teacher, config), dataset, config,
                      progress=progress, stop=stop)
    if not result.stopped:
        with _baseline_lock:
            _baselines[key] = result
    return result


def rs2(session: Session, syn: SyntheticSet, config: EvalConfig, *, stop: threading.Event,
        progress: Callable[[float, str], None] | None = None) -> EvalResult:
    """RS2 (Okanovic et al. 2023): as many fresh random real training images each epoch as the set
    holds, for the same epochs and recipe, hard labels; cached for everyone like the random
    baseline (its seconds are those of the run that measured it)."""
    from dd_core.rs2 import evaluate_rs2

    dataset = dataset_of(session, syn)
    key = ("rs2", dataset.name, dataset.split_note, len(syn.images), config)
    with _baseline_lock:
        if key in _baselines:
            return _baselines[key]
    result = evaluate_rs2(dataset, config, len(syn.images), progress=progress, stop=stop)
    if not result.stopped:
        with _baseline_lock:
            _baselines[key] = result
    return result


def transfer_config(num_models, model: str | None) -> TransferConfig:
    """The transfer protocol (KRR-ST sets) with the tab's networks and architecture."""
    return TransferConfig(model=_architecture(model), num_models=_networks(num_models))


def transfer_set(session: Session, syn: SyntheticSet, config: TransferConfig, *, stop: threading.Event,
                 progress: Callable[[float, str], None] | None = None) -> TransferResult:
    """A KRR-ST set evaluated by transfer: networks pre-trained on its images and targets, then
    linear-probed on the labelled training set."""
    return evaluate_transfer(syn.images, targets_of(syn), dataset_of(session, syn), config, device=default_device(),
                             stop=stop, progress=progress)


def transfer_references(session: Session, syn: SyntheticSet, config: TransferConfig, *, stop: threading.Event,
                        progress: Callable[[float, str], None] | None = None) -> References:
    """No pre-training, random real images with the encoder's targets, and the encoder itself."""
    return references(syn, dataset_of(session, syn), config, device=default_device(), stop=stop, progress=progress)


def whole_reference(session: Session, syn: SyntheticSet, stop: threading.Event | None = None) -> tuple[float, str]:
    """Test accuracy of the cached network trained on the whole training set, and what it is."""
    return teacher_whole_reference(dataset_of(session, syn), stop=stop)


def scores(synthetic: EvalResult, base: EvalResult | None, whole: float | None,
           hard: EvalResult | None = None) -> dict[str, float] | None:
    """DD-Ranking scores; `hard` is the set on hard labels when it carries other labels (for HLR)."""
    if base is None or whole is None or not synthetic.accuracies or not base.accuracies:
        return None
    if hard is not None and not hard.accuracies:
        return None
    return metrics.dd_ranking(synthetic.mean, base.mean, whole, acc_hard=None if hard is None else hard.mean)
