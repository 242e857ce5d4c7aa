"""The Evaluate tab for a KRR-ST set: it carries target representations instead of class labels, so
it is evaluated by transfer (networks pre-trained on its images and targets, then a linear probe on
a few labelled images), beside random real images with the same encoder's targets, no pre-training
and the encoder itself."""
from __future__ import annotations

from typing import Callable, Iterator

from dd_core.methods.krr_st import TARGETS
from dd_core.synthetic import SyntheticSet
from dd_core.transfer import target_bytes

from . import evaluate_run
from .evaluate_run import accuracy_text as _acc
from .runtime import LIMITS
from .sessions import Session


def transfer_markdown(syn: SyntheticSet, result, refs) -> str:
    """The transfer protocol's results for an unlabelled (KRR-ST) set, beside its references."""
    n, dims = syn.extra[TARGETS].shape
    rows = ["| pre-trained on | linear-probe test accuracy (mean ± std) | networks |", "| --- | --- | --- |",
            f"| **the {syn.method} set** ({n} unlabelled images + {dims}-number targets) | **{_acc(result)}** "
            f"| {len(result.accuracies)} |"]
    if refs is not None:
        rows += [f"| {n} random real images carrying the encoder's targets | {_acc(refs.random)} "
                 f"| {len(refs.random.accuracies)} |",
                 f"| nothing (random weights, probed alike) | {_acc(refs.none)} | {len(refs.none.accuracies)} |"]
        if refs.encoder_probe is not None:
            rows.append(f"| all the unlabelled training images: the encoder itself ({refs.encoder}) "
                        f"| {refs.encoder_probe:.3f} | 1 |")
    images, targets = evaluate_run.image_bytes(syn), target_bytes(syn)
    lines = ["\n".join(rows), "",
             f"Protocol: {result.config.describe()}. This set has no class labels (KRR-ST keeps target "
             f"representations instead), so it is evaluated by transfer, its paper's protocol; the protocol "
             f"choice above applies to labelled sets. Set size: {images + targets:,} bytes "
             f"({images:,} of images, {targets:,} of targets)."]
    if result.stopped or (refs is not None and (refs.random.stopped or refs.none.stopped)):
        lines.append(f"\n■ Stopped early (Stop pressed or the {LIMITS.max_seconds / 60:.0f}-minute limit): "
                     f"only finished networks are counted.")
    return "\n".join(lines)


def run(session: Session, syn: SyntheticSet, num_models, arch: str | None, compare: bool,
        progress: Callable[[float, str], None], job) -> Iterator[tuple[str, str]]:
    """A KRR-ST set: pre-train fresh networks on its images and targets, probe them, and (compare)
    set that beside random real images with the same encoder's targets, no pre-training and the encoder."""
    config = evaluate_run.transfer_config(num_models, arch)
    stages = 2 if compare else 1
    yield "… Evaluating by transfer: pre-training fresh networks on the set, then a linear probe…", ""
    result = evaluate_run.transfer_set(session, syn, config, stop=job.stop,
                                       progress=lambda f, t: progress(f / stages, f"the set: {t}"))
    refs = None
    if compare and not result.stopped:
        yield "… Evaluating: the references (no pre-training, random real images, the encoder)…", \
            transfer_markdown(syn, result, refs)
        refs = evaluate_run.transfer_references(session, syn, config, stop=job.stop,
                                                progress=lambda f, t: progress((1 + f) / stages, t))
    session.last_eval = {"method": syn.method, "dataset": syn.dataset, "IPC": syn.ipc,
                         "labels": f"targets ({syn.extra[TARGETS].shape[1]} numbers)",
                         "bytes": evaluate_run.image_bytes(syn) + target_bytes(syn),
                         "accuracy": round(result.mean, 4) if result.accuracies else None,
                         "std": round(result.std, 4), "networks": len(result.accuracies), "protocol": "transfer",
                         "architecture": config.model, "steps": syn.steps,
                         **{k: None for k in ("IOR", "HLR", "LRS", "RS2")}}
    if job.stop.is_set():
        why = "reached this machine's time limit" if job.cap_reached.is_set() else "you pressed Stop"
        yield f"■ Stopped ({why}). What finished is shown; press **Pin** to keep it.", \
            transfer_markdown(syn, result, refs)
        return
    yield "✓ Done. Press **Pin** to add this run to the comparison table.", transfer_markdown(syn, result, refs)
