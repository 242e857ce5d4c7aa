"""The app's handlers called as plain functions: values in, values out, no server."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from components import distill_run, distill_tab, evaluate_tab, inputs, learn_tab, method_params
from components.runtime import LIMITS
from components.sessions import drop_session, session_for
from dd_core.methods import METHODS
from dd_core.synthetic import SyntheticSet

# gr.Warning outside a running app falls back to Python's warnings: expected here, not a problem.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def request(name: str):
    return SimpleNamespace(session_hash=name)  # what handlers read from a gr.Request


def run_all(session, req):
    return list(distill_tab.ui_updates(session, req))


def out(update: tuple, name: str):
    return update[distill_tab.OUTPUTS.index(name)]


@pytest.fixture
def session():
    s = session_for(request("handlers"))
    yield s
    drop_session(request("handlers"))


@pytest.mark.parametrize("args, fragment", [
    (("digits", "", "dm", 0, 10, 0), "at least 1"),
    (("digits", "", "dm", LIMITS.max_ipc + 1, 10, 0), "limit"),
    (("digits", "", "dm", 2.5, 10, 0), "whole number"),
    (("digits", "", "dm", 1, 0, 0), "Steps must be between"),
    (("digits", "", "dm", 1, LIMITS.max_steps + 1, 0), "Steps must be between"),
    (("digits", "", "dm", 1, None, 0), "whole number"),
    (("digits", "", "dm", 1, 10, -1), "Seed"),
    (("digits", "", "nonsense", 1, 10, 0), "Unknown method"),
    (("folder", "", "dm", 1, 10, 0), "path"),
    (("", "", "dm", 1, 10, 0), "Choose a dataset"),
])
def test_bad_request_is_a_message(args, fragment):
    with pytest.raises(inputs.UserError, match=fragment):
        distill_run.check_request(*args)


def test_distill_streams_grids_and_ends_with_files(session):
    req = distill_run.check_request("digits", "", "dm", 1, 4, 0)
    updates = run_all(session, req)
    grids = [out(u, "grid") for u in updates if isinstance(out(u, "grid"), Image.Image)]
    assert len(grids) >= 2  # the initial set, then at least the final one
    assert "Done" in out(updates[-1], "status")
    saved = out(updates[-1], "current_set")
    syn = SyntheticSet.load(saved)
    assert syn.method == "dm" and syn.steps == 4 and syn.images.shape == (10, 1, 8, 8)
    files = session.run.files
    assert {"safetensors", "png", "zip", "gif"} <= set(files) and all(p.is_file() for p in files.values())
    assert Image.open(files["gif"]).n_frames == len(session.run.kept) >= 2
    assert out(updates[-1], "dl_set")["visible"] is True


def test_stop_keeps_a_valid_set(session):
    req = distill_run.check_request("digits", "", "dm", 1, 2000, 0)
    updates = []
    for u in distill_tab.ui_updates(session, req):
        updates.append(u)
        if isinstance(out(u, "grid"), Image.Image):
            distill_tab.request_stop(request(session.key))
    assert "Stopped at step" in out(updates[-1], "status")
    syn = SyntheticSet.load(session.run.files["safetensors"])
    assert syn.steps < 2000 and syn.images.isfinite().all()


def test_a_stop_that_ends_the_run_leaves_the_runs_own_final_status_on_the_page(session):
    # Gradio drives the run in one thread and answers Stop in another, over a separate request
    # that can land after the run's last update: so Stop settles first and then says nothing.
    import threading

    req = distill_run.check_request("digits", "", "dm", 1, 3000, 0)
    updates, started = [], threading.Event()

    def drive():
        for u in distill_tab.ui_updates(session, req):
            updates.append(u)
            if isinstance(out(u, "grid"), Image.Image):
                started.set()

    thread = threading.Thread(target=drive)
    thread.start()
    assert started.wait(60)
    answer = distill_tab.request_stop(request(session.key))
    assert answer == {"__type__": "update"}  # gr.skip(): the run had ended, its status stands
    thread.join(30)
    assert "Stopped at step" in out(updates[-1], "status")


@pytest.mark.parametrize("dataset, folder, fragment", [
    ("folder", "/no/such/folder/anywhere", "does not exist"),
    ("mnist-typo", "", "valid datasets are"),
])
def test_bad_dataset_is_a_message(session, dataset, folder, fragment):
    req = distill_run.check_request(dataset, folder, "dm", 1, 3, 0)
    updates = run_all(session, req)
    assert fragment in out(updates[-1], "status")
    assert out(updates[-1], "distill_btn")["interactive"] is True


def test_folders_are_off_on_a_public_space(session, tmp_path, monkeypatch):
    from components import inputs, runtime

    monkeypatch.setattr(runtime, "FOLDERS_ALLOWED", False)
    assert "folder" not in inputs.dataset_choices()
    for choice, path in (("folder", str(tmp_path)), (f"folder:{tmp_path}", "")):
        with pytest.raises(inputs.UserError, match="turned off") as err:
            distill_run.check_request(choice, path, "dm", 1, 3, 0)
        assert "digits" in str(err.value) and "DISTILLERY_FOLDERS=1" in str(err.value)
    with pytest.raises(inputs.UserError, match="turned off"):
        inputs.open_dataset(f"folder:{tmp_path}")


def test_folder_without_images_is_a_message(session, tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
    updates = run_all(session, distill_run.check_request("folder", str(tmp_path), "dm", 1, 3, 0))
    assert "has no images" in out(updates[-1], "status")


def test_ipc_above_smallest_class_is_a_message(session, tmp_path):
    for name in ("cat", "dog"):  # four images per class: 3 train / 1 test after the split
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("L", (8, 8), color=40 * i).save(tmp_path / name / f"{i}.png")
    updates = run_all(session, distill_run.check_request("folder", str(tmp_path), "dm", 5, 3, 0))
    assert "smallest class" in out(updates[-1], "status")


def test_scrub_shows_an_earlier_step(session):
    run_all(session, distill_run.check_request("digits", "", "dm", 1, 4, 0))
    image, caption = distill_tab.scrub(0, request(session.key))
    assert isinstance(image, Image.Image) and "step **0**" in caption


def test_sessions_do_not_share_runs():
    a, b = session_for(request("alice")), session_for(request("bob"))
    try:
        run_all(a, distill_run.check_request("digits", "", "dm", 1, 2, 0))
        assert a.run is not None and b.run is None and a.folder != b.folder
    finally:
        drop_session(request("alice"))
        drop_session(request("bob"))
    assert not a.folder.exists()


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_has_widgets_and_an_explanation(method):
    text = learn_tab.method_markdown(method)
    assert method.lower() in text.lower() and "paper" in text.lower()
    cls = METHODS.get(method)
    values = method_params.preset_values(method, "fast", "digits", 10, _widgets_for(cls, method))
    assert len(values) == len(_widgets_for(cls, method))


def _widgets_for(cls, method):
    from dd_core.methods.base import hyperparameters
    return [method_params.ParamWidget(method, f.name, type(f.default), None) for f in hyperparameters(cls)]


def test_an_ipc_change_keeps_the_fields_the_user_changed():
    # MTT's paper preset depends on IPC (syn_steps 50 at IPC 1, 30 at IPC 10). A field the user set
    # keeps its value when the IPC moves; the others follow the preset to the new IPC.
    import gradio as gr

    from components.distill_tab import preset_key, settings_changed

    widgets = _widgets_for(METHODS.get("mtt"), "mtt")
    at_1 = method_params._preset_of("mtt", "paper", "digits", 1)
    current = [at_1[w.name] for w in widgets]
    names = [w.name for w in widgets]
    current[names.index("lr_img")] = 333.0  # the user's own value (the preset's is 100)
    current[names.index("lr_lr")] = 0.0000001  # as a Number widget gives the preset's 1e-7 back
    shown = preset_key("mtt", "paper", "digits", "", 1)
    out = settings_changed("mtt", "paper", "digits", "", 10, widgets, update_steps=False, shown=shown, current=current)
    updates = dict(zip(names, out[len(METHODS.names()):]))
    assert updates["syn_steps"]["value"] == 30 and updates["lr_lr"]["value"] == 1e-5  # followed the preset
    assert updates["lr_img"] == gr.skip()  # kept
    # A method, preset or dataset change (no `shown`), or widgets set from another preset, show the preset.
    for kept in ({}, {"shown": preset_key("mtt", "fast", "digits", "", 1), "current": current}):
        out = settings_changed("mtt", "paper", "digits", "", 10, widgets, update_steps=False, **kept)
        assert dict(zip(names, out[len(METHODS.names()):]))["lr_img"]["value"] == 100.0


def test_a_named_option_is_a_dropdown_of_its_valid_values():
    import gradio as gr
    from dd_core.methods.base import hyperparameters

    field = next(f for f in hyperparameters(METHODS.get("herding")) if f.name == "feature_layer")
    widget = method_params._widget(field, "embedding")
    assert isinstance(widget, gr.Dropdown) and [value for _, value in widget.choices] == ["embedding", "logits"]


def test_overrides_convert_and_check_types():
    widgets = [method_params.ParamWidget("dm", "lr_img", float, None), method_params.ParamWidget("dm", "dsa", bool, None),
               method_params.ParamWidget("dc", "lr_img", float, None)]
    assert method_params.overrides("dm", widgets, ["0.5", 0, "x"]) == {"lr_img": 0.5, "dsa": False}
    with pytest.raises(inputs.UserError, match="lr_img"):
        method_params.overrides("dm", widgets, ["fast", True, 1.0])


def test_evaluate_rejects_a_file_that_is_not_a_set(session, tmp_path):
    bogus = tmp_path / "notes.safetensors"
    bogus.write_text("hello")
    with pytest.raises(ValueError, match="not a readable"):
        evaluate_tab.pick_set(session, evaluate_tab.SOURCES[1], str(bogus))
    with pytest.raises(inputs.UserError, match="no synthetic set"):
        evaluate_tab.pick_set(session, evaluate_tab.SOURCES[0], None)


def test_evaluate_reports_and_pins(session):
    run_all(session, distill_run.check_request("digits", "", "dm", 1, 2, 0))
    steps = list(evaluate_tab.run_evaluation(session, session.current(), "fast", 1, "mlp", compare=False))
    status, report = steps[-1]
    assert "Done" in status and "± — (one network)" in report and "1 network." in report
    table, csv_file = evaluate_tab.pin(request(session.key))
    row = table["value"][0]
    assert row[:4] == ["dm", "digits", 1, "hard"] and 0 < row[5] <= 1
    assert csv_file["value"].endswith(".csv") and "accuracy" in open(csv_file["value"]).read()


def test_a_run_stops_at_the_time_cap(session, monkeypatch):
    from components.runtime import Limits

    monkeypatch.setattr(distill_run, "LIMITS", Limits(max_steps=3000, max_seconds=0.3, max_ipc=50))
    updates = run_all(session, distill_run.check_request("digits", "", "dm", 1, 3000, 0))
    status = out(updates[-1], "status")
    assert "limit" in status and "Everything made so far is kept" in status
    assert SyntheticSet.load(session.run.files["safetensors"]).steps < 3000


def test_the_time_cap_also_ends_a_long_setup(session, monkeypatch):
    # A feature network asked to train 1000 epochs (the most its range allows) would hold a compute slot
    # for a long time: the cap's timer stops it inside the training, and the page says so and keeps the set.
    from components.runtime import Limits

    monkeypatch.setattr(distill_run, "LIMITS", Limits(max_steps=3000, max_seconds=1.0, max_ipc=50))
    req = distill_run.check_request("digits", "", "herding", 2, 1, 0,
                                    overrides={"feature_model": "mlp", "feature_epochs": 1000})
    updates = run_all(session, req)
    status = out(updates[-1], "status")
    assert "limit" in status and "setting up" in status and "Everything made so far is kept" in status
    syn = SyntheticSet.load(session.run.files["safetensors"])
    assert syn.steps == 0 and syn.images.shape == (20, 1, 8, 8)


def test_heavy_events_share_one_pool_and_the_queue_is_bounded():
    import app
    from components import runtime

    from components import jobs

    heavy = {"on_distill", "distill_api", "evaluate_api", "on_evaluate", "draw", "run_labels", "map_api"}
    found = {}
    for fn in app.demo.fns.values():
        name = getattr(fn.fn, "__name__", "")
        if name in heavy:
            found[name] = (fn.concurrency_id, fn.concurrency_limit)
    assert set(found) == heavy
    # gradio lets them in; the job pool (runtime.POOL slots, one per visitor) decides who computes
    assert set(found.values()) == {("compute", jobs.ADMITTED)} and jobs.POOL.slots == runtime.POOL
    assert app.demo._queue.max_size == runtime.QUEUE_SIZE


def test_importing_the_app_starts_nothing():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import app, dd_core.data as d, dd_core.embed as e; "
            "assert d._load_cached.cache_info().currsize == 0, 'a dataset was loaded'; "
            "assert not app.demo.is_running, 'a server was started'; "
            "assert e.WORKER._proc is None, 'the UMAP worker was started'")
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True, timeout=120)


def test_a_soft_label_set_is_compared_like_with_like(session, monkeypatch):
    """IOR against a random subset with the same kind of labels; HLR from the set on hard labels."""
    from components import evaluate_run
    from dd_core.data import load_dataset
    from dd_core.evaluate import protocol
    from dd_core.training import test_accuracy
    from dd_core.labels import attach, build_spec
    from dd_core.synthetic import init_synthetic
    from dd_core.teacher import Teacher, train_on_real

    digits = load_dataset("digits")
    net = train_on_real(digits, "mlp", 3, 0, "cpu").requires_grad_(False)
    teacher = Teacher(net, "mlp", 3, test_accuracy(net, digits, "cpu"), 0.0)
    monkeypatch.setattr(evaluate_run, "get_teacher", lambda dataset: teacher)
    syn = init_synthetic(digits, 1, seed=3)
    attach(syn, build_spec("soft:dtype=int8", syn, digits, teacher, protocol("fast")))
    steps = list(evaluate_tab.run_evaluation(session, syn, "fast", 1, "mlp", compare=True))
    status, report = steps[-1]
    assert "Done" in status
    assert "random real images, IPC 1, soft:dtype=int8 labels" in report
    assert "synthetic on hard labels (for HLR)" in report and "**HLR**" in report
    assert session.last_eval["labels"] == "soft:dtype=int8"


def test_evaluate_offers_the_dc_protocol_and_names_the_valid_ones(session):
    run_all(session, distill_run.check_request("digits", "", "random", 1, 1, 0))
    status, report = list(evaluate_tab.run_evaluation(session, session.current(), "dc", 1, "mlp", compare=False))[-1]
    assert "Done" in status and "Protocol: dc: " in report and "300 epochs" in report
    with pytest.raises(inputs.UserError, match="choose one of: fast, paper, dc"):
        list(evaluate_tab.run_evaluation(session, session.current(), "dsa", 1, "mlp", compare=False))


def test_a_second_run_waits_and_each_run_keeps_its_own_cap_stop_and_file(session, monkeypatch):
    # Defect: a second /distill of the same session took over the first one's cap, stop and
    # file. Now the second waits for the first, which stops at its own cap with its own set.
    import threading

    from components.runtime import Limits

    monkeypatch.setattr(distill_run, "LIMITS", Limits(max_steps=3000, max_seconds=2.0, max_ipc=50))
    first = distill_run.run(session, distill_run.check_request("digits", "", "dm", 1, 3000, 0))
    next(t for t in first if t.snapshot is not None)
    second: list = []
    thread = threading.Thread(target=lambda: second.extend(
        distill_run.run(session, distill_run.check_request("digits", "", "random", 2, 1, 0))))
    thread.start()
    rest = list(first)
    thread.join(60)
    a, b = rest[-1], second[-1]
    assert a.phase == "stopped" and "limit" in a.text
    assert any(t.phase == "waiting" for t in second) and b.phase == "done"
    set_a, set_b = (SyntheticSet.load(t.record.files["safetensors"]) for t in (a, b))
    assert (set_a.method, set_b.method) == ("dm", "random") and set_a.steps < 3000 and len(set_b.images) == 20
    assert session.run is b.record and not session.jobs


def test_stop_ends_only_the_callers_own_run(session):
    other = session_for(request("someone-else"))
    try:
        mine = distill_run.run(session, distill_run.check_request("digits", "", "dm", 1, 3000, 0))
        theirs = distill_run.run(other, distill_run.check_request("digits", "", "dm", 1, 3000, 1))
        next(t for t in mine if t.snapshot is not None)
        next(t for t in theirs if t.snapshot is not None)
        distill_tab.request_stop(request(session.key))
        assert list(mine)[-1].phase == "stopped"
        assert next(theirs).phase in ("warming", "distilling")
        theirs.close()
    finally:
        drop_session(request("someone-else"))
