"""Lesson links without a browser: a URL's query checked into settings (bad values ignored with a
note), settings written back as a query, every lesson file valid, and what a page opened with a
link shows (controls set, hidden, the tab chosen, the run started)."""
from __future__ import annotations

import json
from urllib.parse import parse_qsl

import pytest

from components import lessons, links, url_state
from dd_core.methods import METHODS
from dd_core.methods.base import hyperparameters


def test_a_full_link_is_read_back_exactly():
    state = url_state.parse({"dataset": "digits", "method": "dm", "ipc": "3", "steps": "40", "seed": "7",
                             "preset": "paper", "from": "noise", "lr_img": "10", "dsa": "0", "tab": "features",
                             "hide": "seed,params,learn", "autorun": "1", "paused": "1"})
    assert state.notes == []
    assert state.values == {"dataset": "digits", "method": "dm", "ipc": 3, "steps": 40, "seed": 7, "preset": "paper",
                            "from": "noise"}
    assert state.params == {"lr_img": 10.0, "dsa": False}
    assert (state.tab, state.hide, state.autorun, state.paused) == ("features", ("seed", "params", "learn"), True, True)


def test_bad_values_are_ignored_each_with_a_note_that_says_what_is_valid():
    state = url_state.parse({"dataset": "nope", "method": "dm", "ipc": "0", "steps": "ten", "preset": "slow",
                             "lr_img": "1e9", "momentum": "x", "colour": "red", "tab": "nowhere", "hide": "ipc,moon",
                             "autorun": "maybe", "compare": "dm"})
    assert state.values == {"method": "dm"}  # only the good value survives
    assert state.params == {}
    assert state.hide == ("ipc",) and state.tab is None and state.autorun is False and state.compare is None
    text = " ".join(state.notes)
    for expected in ("not offered here; valid ones are:", "at least 1", "whole number", "fast, paper", "outside its range",
                     "must be a number", "has no hyperparameter 'colour'", "tabs: distill", "'moon' cannot be hidden",
                     "autorun must be 1 or 0", "two methods"):
        assert expected in text, expected
    assert state.note_markdown().startswith("⚠")


def test_a_folder_is_never_taken_from_a_link():
    state = url_state.parse({"dataset": "folder:/home/someone/photos"})
    assert "dataset" not in state.values and "not offered here" in state.notes[0]


def test_hyperparameters_need_a_method_and_are_checked_against_its_fields():
    assert "needs method=" in url_state.parse({"lr_img": "2"}).notes[0]
    with pytest.raises(url_state.inputs.UserError, match="hyperparameters are"):
        url_state.param_value("dm", "nope", "1")


def test_no_method_field_is_shadowed_by_a_link_key():
    reserved = set(url_state.CORE) | set(url_state.OTHER)
    for name in METHODS.names():
        clash = {f.name for f in hyperparameters(METHODS.get(name))} & reserved
        assert not clash, f"{name} has hyperparameters named like link keys: {clash}"


def test_settings_written_as_a_query_parse_back_to_the_same_settings():
    values = {"dataset": "digits", "method": "dm", "ipc": 2, "steps": 30, "seed": 1, "preset": "fast", "from": "noise"}
    query = links.link_query(values, {"lr_img": 5.0, "momentum": 0.5, "batch_real": 256}, "compare",
                             ["seed", "params"], True, ("random", "dm"))
    pairs = dict(parse_qsl(query))
    assert "momentum" not in pairs  # equal to the preset's value: left out of the link
    state = url_state.parse(pairs)
    assert state.notes == [] and state.values == values and state.params == {"lr_img": 5.0}
    assert (state.tab, state.hide, state.autorun, state.compare) == ("compare", ("seed", "params"), True,
                                                                       ("random", "dm"))


def test_a_link_never_carries_a_folder_path():
    query = links.link_query({"dataset": "folder", "method": "dm", "ipc": 1}, {}, None, [], False)
    assert "dataset" not in query and "folder" not in query


def test_every_lesson_file_is_valid_and_its_link_opens_it_without_notes():
    found = lessons.ordered()
    assert 5 <= len(found) <= 8
    for lesson in found:
        assert lesson.title and len(lesson.notice.split(". ")) >= 2 and lesson.striking
        state = url_state.parse(dict(parse_qsl(lesson.query())))
        assert state.notes == [], (lesson.name, state.notes)
        assert state.autorun, lesson.name  # a lesson shows something without a click
        short = url_state.parse({"lesson": lesson.name}, lessons.settings_by_name())
        assert (short.values, short.params, short.hide) == (state.values, state.params, state.hide)


def test_a_broken_lesson_file_is_left_out_with_a_reason(tmp_path, caplog):
    (tmp_path / "good.json").write_text(json.dumps({"title": "t", "notice": "n. m.", "settings": {"ipc": 2}}))
    (tmp_path / "bad.json").write_text(json.dumps({"title": "t", "notice": "n", "settings": {"ipc": -1}}))
    (tmp_path / "torn.json").write_text("{")
    registry = lessons.load_lessons(tmp_path)
    assert registry.names() == ["good"]
    assert "bad.json" in caplog.text and "torn.json" in caplog.text
    with pytest.raises(lessons.LessonError, match="missing notice, settings"):
        (tmp_path / "short.json").write_text(json.dumps({"title": "t"}))
        lessons.read_lesson(tmp_path / "short.json")


def test_an_unknown_lesson_is_a_note_listing_the_lessons():
    state = url_state.parse({"lesson": "nope", "ipc": "2"}, lessons.settings_by_name())
    assert "digits-from-noise" in state.notes[0] and state.values == {"ipc": 2}


def test_the_gallery_links_every_lesson():
    text = lessons.gallery_markdown()
    for lesson in lessons.ordered():
        assert f"(?{lesson.query()})" in text and lesson.title in text


def test_compare_runs_the_distill_tabs_hyperparameters_on_the_side_with_that_method(tmp_path, monkeypatch):
    """A lesson link's hyperparameters (here DM's batch_real and lr_img) reach Compare's DM side;
    the other side keeps its preset."""
    import threading
    from contextlib import nullcontext

    from components import compare_tab, distill_run
    from components.sessions import Session

    made = []
    real_make = compare_tab.make_method
    monkeypatch.setattr(compare_tab, "make_method", lambda name, **kw: made.append((name, kw)) or real_make(name, **kw))
    job = type("J", (), {"stop": threading.Event(), "capped": lambda self, s: nullcontext()})()
    req = distill_run.Request("digits", "random", 1, 1, 0)
    out = list(compare_tab._compare(Session("t", tmp_path), req, "dm", False, job, ("dm", {"batch_real": 8, "lr_img": 3.0})))
    assert out[-1][0].startswith("✓ Both runs done")
    (_, kw_a), (_, kw_b) = made
    assert "batch_real" not in kw_a and (kw_b["batch_real"], kw_b["lr_img"]) == (8, 3.0)
