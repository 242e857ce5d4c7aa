"""Distillery: an interactive lab for dataset distillation (Gradio app over dd_core).

Importing this module builds `demo` and nothing else: no server, no dataset, no training.
`python app.py` launches it; warm-ups (numba/UMAP compilation, the digits feature network)
run in a low-priority background process so the page is usable at once.
"""
from __future__ import annotations

from components import zerogpu  # noqa: F401 - first: on ZeroGPU, `spaces` must load before CUDA starts
from components import runtime  # noqa: E402

runtime.configure()  # threads and numba's cache folder, before anything computes

from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from components import api, distill_tab, evaluate_tab, feature_tab, jobs, labels_tab, learn_tab  # noqa: E402
from components import compare_tab, lessons, linked_views, links  # noqa: E402
from components.sessions import drop_session, forget_with_session, in_use_while, on_sweep, sweep_at_start  # noqa: E402

ASSETS = Path(__file__).resolve().parent / "assets"
# All compute-heavy events share one pool sized for the machine, one job per visitor at a time
# (see components/jobs.py).
COMPUTE = jobs.COMPUTE
INTRO = ("# ⚗️ Distillery\nCompress a dataset into a handful of synthetic images per class, watch them learn, "
         "and measure how well they train a fresh network. Press **Distill** to start; read how each method "
         "works under **Learn**.")


def build() -> gr.Blocks:
    with gr.Blocks(title="Distillery", delete_cache=(600, 1800)) as demo:
        current_set = gr.State(None)  # path of this session's current synthetic set (.safetensors)
        gr.Markdown(INTRO, elem_id="intro")
        current_tab = gr.State("distill")  # the open tab's id, for Copy link
        with gr.Tabs(elem_id="main-tabs") as tabs:
            with gr.Tab("Distill", id="distill") as distill_t:
                tab = distill_tab.build(current_set, COMPUTE)
            with gr.Tab("Compare", id="compare") as compare_t:
                compare = compare_tab.build(tab, COMPUTE)
            with gr.Tab("Feature space", id="features") as features_t:
                feature = feature_tab.build(features_t, COMPUTE)
                live_timer = feature.timer
            with gr.Tab("Evaluate", id="evaluate") as evaluate_t:
                evaluate_tab.build(current_set, COMPUTE)
            with gr.Tab("Learn", id="learn") as learn_t:
                learn_tab.build(tab.method.value)
            with gr.Tab("Labels & storage", id="labels") as labels_t:
                labels_tab.render(current_set)
            with gr.Tab("Lessons", id="lessons") as lessons_t:
                gr.Markdown(lessons.gallery_markdown(), elem_id="lessons")
        items = dict(distill=distill_t, compare=compare_t, features=features_t, evaluate=evaluate_t, learn=learn_t,
                     labels=labels_t, lessons=lessons_t)
        links.wire(demo, tab, tabs, items, current_tab, compare, page_js=linked_views.ATTACH_JS)
        linked_views.wire(tabs, tab.grid, tab.status, feature)
        for other in (distill_t, compare_t, evaluate_t, learn_t, labels_t, lessons_t):  # the live map only redraws while it is seen
            other.select(lambda: gr.Timer(active=False), outputs=live_timer, queue=False, api_visibility="private")
        gr.Markdown(f"<small>{runtime.device_note()}. {runtime.LIMITS.describe()} "
                    f"API: see “Use via API” below.</small>", elem_classes=["note"])
        api.attach(tab, COMPUTE)
        demo.unload(drop_session)  # and with it every table keyed by the session (forget_with_session)
    demo.queue(max_size=runtime.QUEUE_SIZE)
    return demo


demo = build()
# gradio keeps a SessionState per session (a copy of every component's config: about 0.8 MB for
# this page) until 10,000 sessions exist, and each plain-HTTP call without a session is a new one.
# Ours decide when a session ends (page closed, or idle), so gradio's goes with it; the capacity
# bounds what sessions that never computed (page views) leave.
STATE_SESSIONS = 1000


_orphans_seen: set[str] = set()


@forget_with_session
def forget_gradio_state(key: str) -> None:
    holder = getattr(getattr(demo, "server_app", None), "state_holder", None)
    if holder is not None:
        holder.session_data.pop(key, None)


@on_sweep
def forget_orphan_gradio_states(live: set[str]) -> None:
    """A plain-HTTP call without a session that is refused before it reaches a session of ours (bad
    input) still leaves gradio's state under its made-up key (an event id, never a page's or a
    client's key): such keys that no session of ours holds, seen at two sweeps running, are dropped."""
    holder = getattr(getattr(demo, "server_app", None), "state_holder", None)
    if holder is None:
        return
    orphans = {k for k in list(holder.session_data) if jobs.made_up(k) and k not in live}
    for key in orphans & _orphans_seen:
        holder.session_data.pop(key, None)
    _orphans_seen.clear()
    _orphans_seen.update(k for k in orphans if k in holder.session_data)  # seen once: dropped next time


@in_use_while
def gradio_holds_a_request(key: str) -> bool:
    """A request of this session waits in gradio's queue or runs there. gradio admits jobs.ADMITTED
    compute events at a time; in a busy classroom the next one waits minutes before a handler of
    ours sees it, with no job registered yet and, from gradio_client or a script, no page to ping."""
    queue = getattr(demo, "_queue", None)
    if queue is None:
        return False
    waiting = [event for line in list(queue.event_queue_per_concurrency_id.values()) for event in list(line.queue)]
    running = [event for batch in list(queue.active_jobs) if batch for event in batch]
    return any(event.session_hash == key and event.alive for event in waiting + running)


def launch(**kw):
    """Launch with the app's styling (gradio 6 takes css/theme at launch), after sweeping what a
    crashed run left behind; uploads above the app's limit are refused by gradio itself."""
    sweep_at_start()
    kw.setdefault("max_file_size", runtime.MAX_UPLOAD_BYTES)
    kw.setdefault("state_session_capacity", STATE_SESSIONS)
    return demo.launch(css_paths=[ASSETS / "app.css"], theme=gr.themes.Soft(), **kw)


if __name__ == "__main__":
    from components import warmup

    warmup.start()
    launch()
