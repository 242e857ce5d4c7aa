"""Small classroom fixes, without a browser: readable log-axis ticks, the words a run ends with, a
grid click mapped back to its image, the clock for long preparations, and a folder set's
evaluation saying what to pass."""
from __future__ import annotations

import time

import pytest
import torch

from components import linked_views, run_control, waiting
from components.figures import log_ticks, loss_figure
from dd_core import load_dataset
from dd_core.distill import Snapshot
from dd_core.synthetic import init_synthetic


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_log_ticks_are_labelled_values_never_bare_minor_digits():
    assert log_ticks(0.001, 50) == [0.001, 0.01, 0.1, 1.0, 10.0]  # many decades: powers of ten only
    assert log_ticks(0.3, 2.5) == [0.5, 1.0, 2.0]
    assert len(log_ticks(0.9, 0.95)) >= 2  # a narrow range still gets two ticks around it
    fig = loss_figure([{"step": s, "loss": 0.5 + 1 / s} for s in range(1, 50)])
    assert fig.layout.yaxis.type == "log"
    assert list(fig.layout.yaxis.ticktext) == [f"{t:g}" for t in fig.layout.yaxis.tickvals]


def test_a_run_ends_in_words_that_fit_it(digits):
    syn = init_synthetic(digits, 1)
    one = Snapshot(1, 1, syn, {}, 0.02, "done")
    assert run_control.done_text(one, learns_images=False) == "Done: selected 10 real images in 0.0 s."
    assert run_control.done_text(one, learns_images=True).startswith("Done: 1 step in")
    many = Snapshot(30, 30, syn, {}, 3.0, "done")
    assert run_control.done_text(many, learns_images=True) == "Done: 30 steps in 3.0 s (10.0 steps/s)."


def test_a_click_on_the_grid_finds_the_image_under_it(digits):
    syn = init_synthetic(digits, 3)  # 10 classes x 3 images, 8x8
    shown = linked_views.labelled_grid(syn)
    plain = syn.grid_image(upscale=1)
    scale = shown.size[1] // plain.size[1]
    margin = shown.size[0] - plain.size[0] * scale
    for cls, col in ((0, 0), (4, 2), (9, 1)):
        x = margin + scale * (1 + col * 9 + 4)  # the middle of the cell (1 px padding, 8 px images)
        y = scale * (1 + cls * 9 + 4)
        index = linked_views.grid_index(syn, x, y)
        assert int(syn.labels[index]) == cls and index == cls * 3 + col
    assert linked_views.grid_index(syn, 2, 2) is None  # the class-name margin
    assert linked_views.grid_index(syn, margin + scale * 9 + scale // 2, scale * 5) is None  # a gap


def test_the_clock_ticks_while_the_work_runs_and_hands_back_its_result():
    ticks = list(waiting.with_clock(lambda: time.sleep(0.35) or 42, every=0.1))
    assert ticks[-1] == ("done", 42) and len(ticks) >= 3 and all(isinstance(t, float) for t in ticks[:-1])
    with pytest.raises(ZeroDivisionError):
        list(waiting.with_clock(lambda: 1 / 0))
    assert "of about 80 s" in waiting.progress_text("x", 40, 80) and "so far" in waiting.progress_text("x", 3, None)
    assert 70 < waiting.features_estimate(60_000, 784) < 90


def test_evaluating_a_folder_set_says_to_pass_the_folder(digits, tmp_path, capsys):
    from dd_core.cli import main

    syn = init_synthetic(digits, 1)
    syn.dataset = "folder:holiday-photos"
    path = syn.save(tmp_path / "set.safetensors")
    assert main(["evaluate", str(path)]) != 0
    err = capsys.readouterr().err
    assert "holiday-photos" in err and "--dataset folder:<path" in err
    assert str(tmp_path) not in err.replace(str(path), "")  # no other path of this machine is shown


def _digit_folder(root, classes=("zero", "one"), per_class=4):
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(((torch.rand(8, 8) > 0.5).numpy() * 255).astype("uint8"), "L").save(root / name / f"{i}.png")
    return root


def test_a_folder_carries_its_facts_in_distillery_json(tmp_path):
    import json

    from dd_core.augment import dsa_for
    from dd_core.data import dataset_facts
    from dd_core.folder import FACTS_FILE, load_folder

    root = _digit_folder(tmp_path / "my-digits")
    plain = load_folder(str(root))
    assert plain.flips and not plain.small  # no file: the defaults, flips allowed
    (root / FACTS_FILE).write_text(json.dumps({"flips": False, "small": True, "teacher_epochs": 7}))
    ds = load_folder(str(root))  # the edited folder is read again, not served from the cache
    assert (ds.flips, ds.small, ds.teacher_epochs) == (False, True, 7)
    assert "flips=false" in ds.split_note and "teacher_epochs=7" in ds.split_note  # provenance says so
    assert "flip" not in dsa_for(ds).ops  # the augmentation of a flip-free folder never flips
    assert not dataset_facts(f"folder:{root}").flips  # read by path, without loading the images
    assert not dataset_facts("folder:my-digits").flips  # and by the name the loaded folder goes by


@pytest.mark.parametrize("content, words", [
    ('{"flip": false}', ["unknown key(s) 'flip'", "valid keys are: flips, small"]),
    ('{"flips": "no"}', ["'flips' must be true or false"]),
    ('{"teacher_epochs": 0}', ["from 1 to 1000"]),
    ('{"teacher_arch": "vgg99"}', ["not a network", "convnet"]),
    ('{"published_whole": 97}', ["fraction from 0 to 1"]),
    ('["flips"]', ["one JSON object"]),
    ('{"flips": fals', ["not readable JSON"]),
])
def test_a_bad_facts_file_is_refused_with_what_to_write(tmp_path, content, words):
    from dd_core.folder import FACTS_FILE, FolderError, load_folder

    root = _digit_folder(tmp_path / "d")
    (root / FACTS_FILE).write_text(content)
    with pytest.raises(FolderError) as err:
        load_folder(str(root))
    for w in words:
        assert w in str(err.value)


def test_the_evaluate_tab_takes_the_folder_an_uploaded_folder_set_came_from(tmp_path, monkeypatch):
    from components import evaluate_run, evaluate_tab, inputs, runtime
    from components.sessions import Session

    monkeypatch.setattr(runtime, "FOLDERS_ALLOWED", True)
    root = _digit_folder(tmp_path / "my-digits", per_class=5)
    syn = init_synthetic(load_dataset(f"folder:{root}"), 1)
    assert syn.dataset == "folder:my-digits"  # the file keeps the folder's name only
    upload = syn.save(tmp_path / "set.safetensors")
    session = Session("t", tmp_path)  # another session: it did not make the set
    loaded = evaluate_tab.pick_set(session, evaluate_tab.SOURCES[1], str(upload))
    with pytest.raises(inputs.UserError, match="give the folder's path in the box"):
        evaluate_run.dataset_of(session, loaded)
    assert evaluate_tab.folder_box(evaluate_tab.SOURCES[1], str(upload))["visible"] is True
    assert evaluate_tab.folder_box(evaluate_tab.SOURCES[0], str(upload))["visible"] is False
    with pytest.raises(inputs.UserError, match="named 'elsewhere'"):
        evaluate_tab.with_folder(loaded, str(tmp_path / "elsewhere"))
    pointed = evaluate_tab.with_folder(loaded, str(root))
    assert evaluate_run.dataset_of(session, pointed).classes == ("one", "zero")
    assert loaded.dataset == "folder:my-digits"  # the uploaded set itself is left as it was
    status, results = list(evaluate_tab.run_evaluation(session, pointed, "fast", 1, None, False))[-1]
    assert status.startswith("✓ Done") and "synthetic" in results


def test_a_public_space_never_asks_for_or_reads_a_folder_path(tmp_path, monkeypatch):
    from components import evaluate_run, evaluate_tab, inputs, runtime
    from components.sessions import Session

    monkeypatch.setattr(runtime, "FOLDERS_ALLOWED", True)
    root = _digit_folder(tmp_path / "my-digits")
    upload = init_synthetic(load_dataset(f"folder:{root}"), 1).save(tmp_path / "set.safetensors")
    monkeypatch.setattr(runtime, "FOLDERS_ALLOWED", False)
    loaded = inputs.load_set(str(upload))
    assert evaluate_tab.folder_box(evaluate_tab.SOURCES[1], str(upload))["visible"] is False
    with pytest.raises(inputs.UserError, match="turned off here"):
        evaluate_tab.with_folder(loaded, str(root))
    with pytest.raises(inputs.UserError) as err:
        evaluate_run.dataset_of(Session("t", tmp_path), loaded)
    assert "box" not in str(err.value)  # no path box is offered there


def test_the_evaluate_bar_is_updated_at_most_twice_a_second_and_at_the_end():
    from components import evaluate_tab

    calls = []
    bar = evaluate_tab.throttled(lambda frac, desc: calls.append((frac, desc)), every=0.5)
    for e in range(300):  # an evaluation reports every epoch, within a fraction of a second here
        bar(e / 300, f"epoch {e}")
    bar(1.0, "done")
    assert calls[0] == (0.0, "epoch 0") and calls[-1] == (1.0, "done") and len(calls) <= 4


def test_the_warm_up_caches_the_baseline_the_lessons_ask_for(digits, tmp_path, monkeypatch):
    """random-vs-dm (Compare) and ten-against-all (Evaluate) compare a DM set of IPC 1 with random
    real images under the fast protocol and one network: the warm-up fills exactly that entry."""
    import threading

    from components import compare_tab, evaluate_run, warmup
    from components.sessions import Session

    monkeypatch.setattr(evaluate_run, "_baselines", {})
    warmup.baselines(digits, ipcs=(1,))
    assert len(evaluate_run._baselines) == 1
    made = init_synthetic(digits, 1, method="dm")
    config = evaluate_run.config_for("fast", compare_tab.EVAL_NETWORKS, None)
    calls = []
    monkeypatch.setattr(evaluate_run, "evaluate", lambda *a, **k: calls.append(1))  # a cache miss would train
    cached = evaluate_run.baseline(Session("t", tmp_path), made, config, stop=threading.Event())
    assert not calls and cached is next(iter(evaluate_run._baselines.values()))


def test_step_pause_and_resume_leave_the_status_line_to_the_run():
    """Their answers come by plain HTTP, the run's by the queue: a late "One more step…" overwrote
    the "Paused at step 2" the step had already produced (seen in the browser test under load)."""
    from components.sessions import RunRecord, session_for

    session = session_for(None)
    assert run_control.step().startswith("Nothing is running")  # said where the status is, when it is news
    session.run = RunRecord("digits", "dm", 1, 10, 0)
    gate = run_control.new_gate(session, paused=True)
    try:
        for press in (run_control.step, run_control.pause, run_control.resume):
            assert not isinstance(press(), str)  # a skip: the status line is untouched
        assert not gate.paused  # and each did its work: resumed at the end
    finally:
        run_control.forget_key(session.key)
        session.run = None
