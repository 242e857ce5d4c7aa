"""Evaluate tab: train fresh networks on the current synthetic set (or an uploaded one), compare it
with random real images at the same IPC and with the whole dataset, and pin runs to a table."""
from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr

from dd_core import defaults
from dd_core.interrupt import Interrupted
from dd_core.models import MODELS
from dd_core.synthetic import SyntheticSet

from . import evaluate_run, evaluate_transfer, inputs, jobs, runtime
from .evaluate_run import accuracy_text as _acc
from .runtime import LIMITS
from .sessions import Session, session_for

SOURCES = ("this session's set", "an uploaded file")
SAME_ARCH = evaluate_run.SAME_ARCH
TABLE_COLUMNS = ["method", "dataset", "IPC", "labels", "bytes", "accuracy", "std", "networks", "protocol",
                 "architecture", "steps", "IOR", "HLR", "LRS", "RS2"]


def report_markdown(syn: SyntheticSet, rep: evaluate_run.Report, bytes_: int, labels: str) -> str:
    s, b = rep.synthetic, rep.baseline
    ipc = len(syn.labels) // max(1, syn.num_classes)
    rows = ["| | test accuracy (mean ± std) | networks |", "| --- | --- | --- |",
            f"| **synthetic** ({syn.method}, IPC {ipc}, {labels} labels) | **{_acc(s)}** | {len(s.accuracies)} |"]
    if b is not None:
        rows.append(f"| random real images, IPC {ipc}, {labels} labels | {_acc(b)} | {len(b.accuracies)} |")
    if rep.label_first is not None:
        rows.append(f"| label-first baseline: the easiest real images (pca), IPC {ipc}, {labels} labels, same "
                    f"label bytes | {_acc(rep.label_first)} | {len(rep.label_first.accuracies)} |")
    if rep.rs2 is not None:
        rows.append(f"| RS2: {len(syn.images)} fresh random real images each epoch, hard labels | {_acc(rep.rs2)} "
                    f"| {len(rep.rs2.accuracies)} |")
    if rep.hard is not None:
        rows.append(f"| synthetic on hard labels (for HLR) | {_acc(rep.hard)} | {len(rep.hard.accuracies)} |")
    if rep.whole is not None:
        rows.append(f"| whole training set | {rep.whole:.3f} | 1 ({rep.whole_note}) |")
    lines = ["\n".join(rows), "", f"Protocol: {s.config.describe()}. Accuracies are fractions of the test set; "
             f"the final epoch is reported. Set size: {bytes_:,} bytes."]
    if rep.rs2 is not None:
        made = syn.extra_meta.get("seconds")
        lines.append(f"\nWall time, same epochs and images per epoch: training on the set {s.seconds:.1f} s"
                     + (f" (after {float(made):.0f} s of distillation)" if made else "")
                     + f"; RS2 {rep.rs2.seconds:.1f} s. RS2 needs the whole training set at hand; the set does not.")
    if rep.scores:
        sc = rep.scores
        lines.append(f"\n**IOR** {sc['IOR']:+.3f} (improvement over random, higher is better) · "
                     f"**HLR** {sc['HLR']:+.3f} (gap to the whole set, lower is better) · "
                     f"**LRS** {sc['LRS']:.3f} (DD-Ranking score in [0, 1], higher is better)")
    if s.stopped or any(r is not None and r.stopped for r in (b, rep.hard, rep.rs2, rep.label_first)):
        lines.append(f"\n■ Stopped early (Stop pressed or the {LIMITS.max_seconds / 60:.0f}-minute limit): "
                     f"only finished networks are counted.")
    return "\n".join(lines)


def table_row(syn: SyntheticSet, rep: evaluate_run.Report, bytes_: int, labels: str) -> dict:
    s, sc = rep.synthetic, rep.scores or {}
    return {"method": syn.method, "dataset": syn.dataset, "IPC": len(syn.labels) // max(1, syn.num_classes),
            "labels": labels, "bytes": bytes_, "accuracy": round(s.mean, 4) if s.accuracies else None,
            "std": round(s.std, 4), "networks": len(s.accuracies), "protocol": s.config.protocol,
            "architecture": s.config.model, "steps": syn.steps,
            **{k: round(sc[k], 4) if k in sc else None for k in ("IOR", "HLR", "LRS")},
            "RS2": round(rep.rs2.mean, 4) if rep.rs2 is not None and rep.rs2.accuracies else None}


def run_evaluation(session: Session, syn: SyntheticSet, protocol: str, num_models, arch: str | None, compare: bool,
                   progress: Callable[[float, str], None] | None = None,
                   owner: str | None = None, rs2: bool = False) -> Iterator[tuple[str, str]]:
    """Yield (status, results markdown) while evaluating, as one job of the session (its own Stop
    and time cap, a compute slot shared fairly); a plain generator."""
    icons = {"error": "⚠", "waiting": "⏳", "stopped": "■"}
    yield from jobs.guarded(session, "evaluate", owner,
                            lambda job: _evaluation(session, syn, protocol, num_models, arch, compare, progress, job,
                                                    rs2),
                            say=lambda phase, text: (f"{icons[phase]} {text}", gr.skip()), seconds=LIMITS.max_seconds)


def _evaluation(session, syn, protocol, num_models, arch, compare, progress, job,
                rs2: bool = False) -> Iterator[tuple[str, str]]:
    progress = progress or (lambda frac, text: None)
    if evaluate_run.targets_of(syn) is not None:
        yield from evaluate_transfer.run(session, syn, num_models, arch, compare, progress, job)
        return
    store = evaluate_run.labels_of(syn)
    soft = store.name != "hard"  # HLR needs the set on hard labels too
    stages = ((3 if soft else 2) if compare else 1) + rs2

    def stage(i: int, name: str):
        # One scale: the bar's percentage is the whole evaluation's, so the line names the part, not
        # the part's own epoch count (which read as "epoch 223/300 - 37.2%").
        return lambda frac, text: progress((i + frac) / stages, f"{name} (part {i + 1} of {stages})")

    yield "… Evaluating: training fresh networks on the synthetic images…", ""
    result = evaluate_run.evaluate_set(session, syn, protocol=protocol, num_models=num_models, model=arch,
                                       progress=stage(0, "synthetic set"), stop=job.stop)
    labels, bytes_ = store.spec, evaluate_run.set_bytes(syn, store)
    rep = evaluate_run.Report(result, None, None, "", None)
    yield "… Evaluating: the random-subset baseline…" if compare else "✓ Done.", report_markdown(syn, rep, bytes_, labels)
    if compare and not result.stopped:
        try:
            rep.baseline = evaluate_run.baseline(session, syn, result.config, progress=stage(1, "random baseline"),
                                                 stop=job.stop)
            if store.needs_teacher and not rep.baseline.stopped:
                yield "… Evaluating: the label-first baseline (pruned real images, same labels)…", \
                    report_markdown(syn, rep, bytes_, labels)
                rep.label_first = evaluate_run.label_first(session, syn, result.config, stop=job.stop,
                                                           progress=stage(1, "label-first baseline"))
            if soft and not rep.baseline.stopped:
                yield "… Evaluating: the set on hard labels (for HLR)…", report_markdown(syn, rep, bytes_, labels)
                rep.hard = evaluate_run.evaluate_set(session, syn, protocol=protocol, num_models=num_models,
                                                     model=arch, progress=stage(2, "hard labels"), hard=True,
                                                     stop=job.stop)
            if not job.stop.is_set():
                yield "… Evaluating: the whole-dataset reference…", report_markdown(syn, rep, bytes_, labels)
                rep.whole, rep.whole_note = evaluate_run.whole_reference(session, syn, stop=job.stop)
        except Interrupted:  # the teacher behind soft labels or the reference was still training
            pass
        rep.scores = evaluate_run.scores(rep.synthetic, rep.baseline, rep.whole, rep.hard)
    if rs2 and not job.stop.is_set():
        yield "… Evaluating: RS2 (fresh random real images each epoch)…", report_markdown(syn, rep, bytes_, labels)
        rep.rs2 = evaluate_run.rs2(session, syn, result.config, progress=stage(stages - 1, "RS2"), stop=job.stop)
    session.last_eval = table_row(syn, rep, bytes_, labels)
    if job.stop.is_set():
        why = "reached this machine's time limit" if job.cap_reached.is_set() else "you pressed Stop"
        yield f"■ Stopped ({why}). What finished is shown; press **Pin** to keep it.", \
            report_markdown(syn, rep, bytes_, labels)
        return
    yield "✓ Done. Press **Pin** to add this run to the comparison table.", report_markdown(syn, rep, bytes_, labels)


def pick_set(session: Session, source: str, upload) -> SyntheticSet:
    if source == SOURCES[1]:
        if not upload:
            raise inputs.UserError("Upload a synthetic set (.safetensors) first, or evaluate this session's set.")
        return inputs.load_set(upload)
    syn = session.current()
    if syn is None:
        raise inputs.UserError("This session has no synthetic set yet: distill one in the Distill tab, "
                               "or upload a .safetensors file.")
    return syn


def with_folder(syn: SyntheticSet, folder: str | None) -> SyntheticSet:
    """A set distilled from an image folder, pointed at that folder on this machine (the file keeps
    only the folder's name). Unchanged for other sets or an empty box; refused where the server's
    folders are turned off (a public Space) or when the folder's name is not the one the set records."""
    text = (folder or "").strip()
    if not syn.dataset.startswith("folder:") or not text:
        return syn
    if not runtime.FOLDERS_ALLOWED:
        raise inputs.UserError("Image folders on the server's disk are turned off here (a public Space): a set "
                               "distilled from a folder is evaluated in the session that made it, or with "
                               "`python -m dd_core evaluate SET --dataset folder:<path>` on your own machine.")
    path = Path(text[len("folder:"):] if text.startswith("folder:") else text).expanduser()
    recorded = syn.dataset[len("folder:"):]
    if path.name != recorded:
        raise inputs.UserError(f"This set was distilled from a folder named {recorded!r}, but the folder given is "
                               f"named {path.name!r}; give the path of the folder the set was made from.")
    return dataclasses.replace(syn, dataset=f"folder:{path.resolve()}")


def folder_box(source: str, upload) -> dict:
    """The folder box: shown for an uploaded set that was distilled from an image folder, where
    this server reads folders; hidden otherwise (a public Space never asks for a path)."""
    show = False
    if source == SOURCES[1] and upload and runtime.FOLDERS_ALLOWED:
        try:
            show = inputs.load_set(upload).dataset.startswith("folder:")
        except Exception:  # noqa: BLE001 - a bad file is reported when Evaluate is pressed
            show = False
    return gr.update(visible=show)


def throttled(progress, every: float = 0.5) -> Callable[[float, str], None]:
    """The bar's update at most every `every` seconds: the evaluator reports every epoch, and each
    gr.Progress call is a message to the page (300 of them made a 5 s evaluation take over a
    minute on a loaded 2-core machine)."""
    last = [float("-inf")]

    def call(frac: float, text: str) -> None:
        now = time.monotonic()
        if now - last[0] >= every or frac >= 1:
            last[0] = now
            progress(frac, desc=text)
    return call


def pin(request: gr.Request = None):
    """Add the latest evaluation to the session's comparison table; returns the table and its CSV."""
    session = session_for(request)
    if session.last_eval is None:
        gr.Warning("Evaluate a set first; then pin it.")
        return gr.skip(), gr.skip()
    session.pinned.append(session.last_eval)
    session.last_eval = None
    path = session.new_file("comparison", ".csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(session.pinned)
    rows = [[r[c] for c in TABLE_COLUMNS] for r in session.pinned]
    return gr.update(value=rows), gr.update(value=str(path), visible=True)


def stop_evaluation(request: gr.Request = None):
    busy = jobs.stop(session_for(request), "evaluate", jobs.owner_of(request), settle=jobs.STOP_SETTLE)
    return "■ Stopping after the current batch…" if busy else gr.skip()


def build(current_set: gr.State, compute: dict) -> None:
    """The Evaluate tab's widgets, inside the caller's gr.Tab."""
    gr.Markdown("Train fresh networks on the synthetic images alone and test them on the real test set. "
                "A good set beats random real images at the same IPC and comes close to the whole dataset.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Evaluate", elem_id="eval-source")
            upload = gr.File(label="Synthetic set (.safetensors)", file_types=[".safetensors"], visible=False,
                             elem_id="eval-upload")
            folder = gr.Textbox(label="Image folder this set was distilled from", visible=False, elem_id="eval-folder",
                                placeholder="the folder's path on this machine, e.g. ~/pictures/my-digits",
                                info="the file keeps only the folder's name; its images are the real data the set "
                                     "is compared with")
            protocol = gr.Radio(list(evaluate_run.PROTOCOLS), value=defaults.PROTOCOL, label="Protocol",
                                info=evaluate_run.PROTOCOL_HELP)
            num_models = gr.Slider(1, evaluate_run.MAX_MODELS, value=1, step=1, label="Networks",
                                   info="mean and std over this many fresh networks")
            arch = gr.Dropdown([SAME_ARCH] + MODELS.names(), value=SAME_ARCH, label="Architecture", elem_id="eval-arch",
                               info="another architecture tests how well the set transfers")
            compare = gr.Checkbox(True, label="Compare with random real images and the whole dataset",
                                  info="the random baseline is computed once per dataset and IPC, then cached")
            rs2_box = gr.Checkbox(False, label="Compare with RS2: fresh random real images each epoch",
                                  info="RS2 (Okanovic et al. 2023): as many real images per epoch as the set holds, "
                                       "the same epochs; with the wall time of each side")
            with gr.Row():
                go = gr.Button("Evaluate", variant="primary", elem_id="eval-btn")
                stop = gr.Button("Stop", variant="stop", elem_id="eval-stop")
        with gr.Column(scale=3, min_width=360):
            status = gr.Markdown("", elem_id="eval-status")
            bar = gr.Markdown("", elem_id="eval-progress")  # the progress bar draws here, not over the text
            results = gr.Markdown("", elem_id="eval-results")
            pin_btn = gr.Button("Pin to comparison table", size="sm", elem_id="pin-btn")
    table = gr.Dataframe(headers=TABLE_COLUMNS, value=[], label="Comparison table (this session)",
                         interactive=False, elem_id="comparison", wrap=True)
    csv_btn = gr.DownloadButton("Download the table (CSV)", visible=False, size="sm", elem_id="comparison-csv")

    def on_evaluate(source_v, upload_v, folder_v, protocol_v, n_v, arch_v, compare_v, rs2_v, _current,
                    request: gr.Request = None, progress=gr.Progress()):
        session = session_for(request)
        try:
            syn = pick_set(session, source_v, upload_v)
            if source_v == SOURCES[1]:
                syn = with_folder(syn, folder_v)
            yield from run_evaluation(session, syn, protocol_v, n_v, None if arch_v == SAME_ARCH else arch_v,
                                      bool(compare_v), progress=throttled(progress),
                                      owner=jobs.owner_of(request), rs2=bool(rs2_v))
        except Exception as err:  # noqa: BLE001 - shown in the page, never as a traceback
            message = inputs.user_message(err)
            gr.Warning(message)
            yield f"⚠ {message}", gr.skip()

    source.change(lambda s: gr.update(visible=s == SOURCES[1]), inputs=source, outputs=upload, queue=False,
                  api_visibility="private")
    for event in (source.change, upload.change):
        event(folder_box, inputs=[source, upload], outputs=folder, queue=False, api_visibility="private")
    go.click(on_evaluate, inputs=[source, upload, folder, protocol, num_models, arch, compare, rs2_box, current_set],
             outputs=[status, results], show_progress_on=[bar], api_visibility="private", **compute)
    stop.click(stop_evaluation, outputs=status, queue=False, api_visibility="private")
    pin_btn.click(pin, outputs=[table, csv_btn], queue=False, api_visibility="private")
