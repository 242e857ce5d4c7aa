"""The named API endpoints, for gradio_client and `curl`: /distill, /evaluate, /feature_map (and
/stop, wired in the Distill tab). They run in the same compute pool (one job per caller at a time,
components/jobs.py) and per-session state as the page.

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    job = client.submit("digits", "dm", 10, 200, 0, api_name="/distill")
    for progress, _ in job: print(progress["step"], progress["status"])
    progress, set_file = job.result()
    result = client.predict(handle_file(set_file), api_name="/evaluate")
    print(result["accuracy_mean"], result["accuracy_std"])
    result = client.predict(handle_file(set_file), "fast", 1, "", True, api_name="/evaluate")  # beside RS2
    print(result["accuracy_mean"], result["rs2"]["accuracy_mean"], result["rs2"]["seconds"])
"""
from __future__ import annotations

from typing import Iterator

import gradio as gr

from dd_core import defaults
from dd_core.embed import Stopped, TrainingStopped

from . import distill_run, evaluate_run, feature_view, inputs, jobs
from .runtime import LIMITS
from .sessions import KEEP_ALIVE_SECONDS, keep_alive, session_for


def _progress(tick: distill_run.Tick) -> dict:
    snap = tick.snapshot
    out = {"status": tick.phase, "message": tick.text.replace("**", "")}
    if snap is not None:
        out.update(step=snap.step, total_steps=snap.total_steps, elapsed=round(snap.elapsed, 3),
                   steps_per_second=round(snap.steps_per_second, 3), stats=snap.stats)
    return out


def distill_api(dataset: str, method: str, ipc, steps, seed, request: gr.Request = None) -> Iterator[tuple]:
    """Distill `dataset` ("digits", "mnist", ... or "folder:<path>") with `method`; streams a progress
    dict per update; the last update also carries the synthetic set as a .safetensors file."""
    try:
        req = distill_run.check_request(dataset, "", method, ipc, steps, seed)
    except inputs.UserError as err:
        raise gr.Error(str(err), print_exception=False) from None
    session = session_for(request)
    for tick in distill_run.run(session, req, jobs.owner_of(request)):
        if tick.phase == "error":
            raise gr.Error(tick.text, print_exception=False)
        files = tick.record.files if tick.finished and tick.record is not None else {}  # this run's own file
        yield _progress(tick), (str(files["safetensors"]) if "safetensors" in files else None)


def evaluate_api(set_file, protocol: str = "fast", num_models=1, model: str = "", rs2=False,
                 request: gr.Request = None) -> dict:
    """Train fresh networks on a synthetic set (.safetensors) and report mean/std test accuracy (fractions).
    With `rs2`, also RS2 at the set's size (fresh random real images each epoch, same epochs and
    recipe) under the key "rs2", each side with its seconds: is the set better than re-sampling?
    A KRR-ST set (target representations, no class labels) is evaluated by transfer instead: networks
    pre-trained on it, then linear-probed on the labelled training set ("protocol": "transfer")."""
    try:
        if not isinstance(rs2, bool):
            raise inputs.UserError(f"rs2 is true or false (got {inputs.echo(rs2)}).")
        syn = inputs.load_set(set_file)
        n = inputs.as_int(num_models, "Number of networks")
        session = session_for(request)

        if evaluate_run.targets_of(syn) is not None:  # KRR-ST: no class labels, evaluated by transfer
            if rs2:
                raise inputs.UserError("rs2 compares sets with class labels; this KRR-ST set has target "
                                       "representations instead and is evaluated by transfer (leave rs2 false).")
            config = evaluate_run.transfer_config(n, model or None)
            return jobs.run_blocking(
                session, "evaluate", jobs.owner_of(request), LIMITS.max_seconds,
                lambda job: evaluate_run.transfer_set(session, syn, config, stop=job.stop).as_dict())

        def work(job):
            result = evaluate_run.evaluate_set(session, syn, protocol=protocol, num_models=n, model=model or None,
                                               stop=job.stop)
            if not rs2 or result.stopped:
                return result.as_dict()
            # the same recipe as the set's own evaluation (protocol, networks, architecture, learned lr)
            again = evaluate_run.rs2(session, syn, result.config, stop=job.stop)
            return {**result.as_dict(), "rs2": again.as_dict()}

        return jobs.run_blocking(session, "evaluate", jobs.owner_of(request), LIMITS.max_seconds, work)
    except Exception as err:  # noqa: BLE001 - the client gets a message, never a traceback
        raise gr.Error(inputs.user_message(err), print_exception=False) from None


def map_api(kind: str = "trained", projection: str = "PCA", request: gr.Request = None) -> dict:
    """The feature-space map of the caller's latest set: where each synthetic image lands among the
    real ones (PCA or UMAP of a network's features) and how far it is from its nearest real image."""
    try:
        if kind not in ("trained", "random") or projection not in ("PCA", "UMAP"):
            raise inputs.UserError(f"Choose kind trained or random (got {inputs.echo(kind)}) and projection PCA or "
                                   f"UMAP (got {inputs.echo(projection)}).")
        session = session_for(request)
        if session.current() is None:
            raise inputs.UserError("This client has no synthetic set yet: call /distill first.")
        view = jobs.run_blocking(session, "map", jobs.owner_of(request), LIMITS.max_seconds,
                                 lambda job: feature_view.compute_view(session, kind, projection, paths=False,
                                                                       stop=job.stop))
    except TrainingStopped as err:  # only the cap stops an API map
        raise gr.Error(f"The map reached this machine's time cap of {LIMITS.max_seconds:.0f} s per job: {err}. "
                       f"Ask for kind random (no training), or for trained again when the machine is less busy.",
                       print_exception=False) from None
    except Stopped as err:
        raise gr.Error(f"The map reached this machine's time cap of {LIMITS.max_seconds:.0f} s per job ({err}). "
                       f"Ask for PCA (instant), or for UMAP again when the machine is less busy.",
                       print_exception=False) from None
    except Exception as err:  # noqa: BLE001 - the client gets a message, never a traceback
        raise gr.Error(inputs.user_message(err), print_exception=False) from None
    return {"projection": view.projection, "features": view.note, "step": view.step,
            "synthetic_xy": view.syn_xy.round(4).tolist(), "synthetic_labels": view.syn_labels.tolist(),
            "nearest_distance": view.nearest_dist.round(4).tolist()}


def whole_number(value, label: str) -> gr.Number:
    """A number box that hands the handler what the caller sent, unrounded: 2.5, True or "ten"
    get a plain message from inputs.as_int instead of being rounded or failing inside gradio.
    (An instance override: a gr.Number subclass would make gradio write a .pyi beside this file.)"""
    box = gr.Number(value, label=label, precision=0)
    box.preprocess = lambda payload: payload
    return box


def attach(tab, compute: dict) -> None:
    """Hidden components and the endpoints; dataset and method reuse the Distill tab's widgets."""
    with gr.Group(visible=False):
        ipc, steps, seed = (whole_number(value, name) for value, name in ((10, "ipc"), (200, "steps"), (0, "seed")))
        progress = gr.JSON(label="progress")
        set_out = gr.File(label="synthetic set (.safetensors)")
        set_in = gr.File(label="synthetic set (.safetensors)", file_types=[".safetensors"])
        protocol = gr.Radio(list(evaluate_run.PROTOCOLS), value=defaults.PROTOCOL, label="protocol", info=evaluate_run.PROTOCOL_HELP)
        num_models = whole_number(1, "networks")
        model = gr.Textbox("", label="architecture (empty: the protocol's)")
        rs2 = gr.Checkbox(False, label="also RS2 at the set's size")
        result = gr.JSON(label="result")
        go_distill, go_eval = gr.Button(), gr.Button()
    go_distill.click(distill_api, inputs=[tab.dataset, tab.method, ipc, steps, seed],
                     outputs=[progress, set_out], api_name="distill", **compute)
    go_eval.click(evaluate_api, inputs=[set_in, protocol, num_models, model, rs2], outputs=result, api_name="evaluate",
                  **compute)
    kind_in = gr.Textbox("trained", label="kind (trained or random)", visible=False)
    projection_in = gr.Textbox("PCA", label="projection (PCA or UMAP)", visible=False)
    map_out = gr.JSON(label="map", visible=False)
    gr.Button(visible=False).click(map_api, inputs=[kind_in, projection_in], outputs=map_out, api_name="feature_map",
                                   **compute)
    # An open page pings its session, so the idle sweep drops only sessions nobody is looking at.
    gr.Timer(KEEP_ALIVE_SECONDS).tick(keep_alive, queue=False, show_progress="hidden", api_visibility="private")
