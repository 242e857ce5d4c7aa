"""The label-space trade-off: points, frontier, gain shares, the CLI function and the tab's handlers
(called directly, no browser), on a tiny digits set with a quickly trained teacher."""
from __future__ import annotations

import json

import pytest
import torch

from dd_core import tradeoff
from dd_core.evaluate import protocol
from dd_core.synthetic import init_synthetic
from dd_core.tradeoff import IMAGE_FORMATS, Point, Tradeoff, labels_command, run_tradeoff
from test_labels import digits, teacher  # noqa: F401  shared fixtures: the digits and a quick teacher

REQUIRED = {"labels", "image_bytes", "label_bytes", "accuracy_mean", "accuracy_std"}


@pytest.fixture
def quick_teacher(monkeypatch, teacher):
    monkeypatch.setattr(tradeoff, "get_teacher_or_reason", lambda dataset, device, syn=None: (teacher, ""))
    return teacher


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("labels") / "tiny.safetensors"
    init_synthetic(digits, 1, seed=0).save(path)  # 10 images
    return path


def point(labels, total, acc, kind="synthetic"):
    return Point(labels, kind, "uint8", 0, total, acc, 0.0, [acc], "", "")


def test_image_bytes_follow_the_format(digits):
    images = digits.x_train[:10]  # (10, 1, 8, 8)
    assert [IMAGE_FORMATS.get(f).nbytes(images) for f in ("uint8", "float16", "float32")] == [640, 1280, 2560]
    back = IMAGE_FORMATS.get("uint8").roundtrip(images, digits.mean, digits.std)
    pixels = digits.denormalize(back) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)  # 256 levels survive the round trip


def test_frontier_and_gain_shares():
    result = Tradeoff("digits", 10, "p", points=[point("hard", 10, 0.80), point("soft", 100, 0.85),
                                                  point("dynamic", 10_000, 0.90), point("teacher", 50_000, 0.88),
                                                  point("distance", 150, 0.84)])
    assert [p.labels for p in result.frontier()] == ["hard", "soft", "dynamic"]
    shares = {r["labels"]: r for r in result.gain_shares()}
    assert shares["soft"]["share"] == pytest.approx(0.5) and shares["soft"]["label_fraction"] == pytest.approx(0.01)
    assert not shares["soft"]["meets_aim"]
    assert "no store keeps" in tradeoff.summary(result)


def test_run_tradeoff_gives_both_sets_and_the_reference(digits, teacher):
    syn = init_synthetic(digits, 1, seed=0)
    config = protocol("fast", epochs=2, num_models=1)
    result = run_tradeoff(syn, digits, config, ["hard", "soft:topk=2"], teacher=teacher, device="cpu")
    assert [(p.set, p.labels) for p in result.points] == [("synthetic", "hard"), ("synthetic", "soft:topk=2"),
                                                          ("random", "hard"), ("random", "soft:topk=2"),
                                                          ("pruned", "hard"), ("pruned", "soft:topk=2")]
    assert all(p.image_bytes == 10 * 64 for p in result.points)  # uint8 images
    assert result.points[1].label_bytes == 10 * 2 * 3
    assert result.whole_bytes == len(digits.x_train) * (64 + 1) and result.whole_accuracy == teacher.test_accuracy
    rows = result.as_rows()
    assert all(REQUIRED <= set(r) for r in rows) and rows[-1]["set"] == "whole"


def test_a_store_needing_a_missing_teacher_says_so_and_the_rest_runs(digits, monkeypatch):
    import dd_core.tradeoff

    def no_teacher(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(dd_core.tradeoff, "get_teacher", no_teacher)  # the trade-off's own reference
    result = run_tradeoff(init_synthetic(digits, 1, seed=0), digits, protocol("fast", epochs=1, num_models=1),
                          ["hard", "dynamic"], random_set=False, device="cpu")
    assert [p.labels for p in result.points] == ["hard"]
    assert "needs a teacher" in result.errors[0] and "out of memory" in result.errors[0]


def test_labels_command_prints_json(tiny_file, quick_teacher, capsys):
    assert labels_command(str(tiny_file), "fast", ["hard", "soft"], 1, True, epochs=2) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["labels"] for r in rows} == {"hard", "soft"} and all(REQUIRED <= set(r) for r in rows)
    assert {r["set"] for r in rows} == {"synthetic", "random", "pruned", "whole"}


@pytest.mark.parametrize("args, message", [
    (("missing.safetensors", "fast", None, 1, True), "does not exist"),
    (("TINY", "quick", None, 1, True), "unknown protocol"),
    (("TINY", "fast", ["soft:topk=x"], 1, True), "takes an integer"),
    (("TINY", "fast", ["fuzzy"], 1, True), "valid label stores are"),
])
def test_labels_command_refuses_bad_input(args, message, tiny_file, capsys):
    args = tuple(str(tiny_file) if a == "TINY" else a for a in args)
    assert labels_command(*args) == 2
    assert message in capsys.readouterr().err


def test_top_k_beyond_the_classes_is_reported(tiny_file, quick_teacher, capsys):
    assert labels_command(str(tiny_file), "fast", ["hard", "soft:topk=11"], 1, False, epochs=1) == 0
    assert capsys.readouterr().err.count("limit is k <= 10") == 1


def test_the_cli_passes_epochs_image_format_and_no_random(tiny_file, quick_teacher, capsys):
    from dd_core.cli import main

    assert main(["labels", str(tiny_file), "--stores", "hard", "--models", "1", "--epochs", "1",
                 "--image-format", "float16", "--no-random", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    synthetic = [r for r in rows if r["set"] == "synthetic"]
    assert {r["set"] for r in rows} == {"synthetic", "pruned", "whole"}  # no random subset
    assert synthetic[0]["image_bytes"] == 10 * 8 * 8 * 2  # float16 images
    assert "1 epochs" in synthetic[0]["protocol"]


def test_the_table_leaves_out_columns_no_row_fills_and_the_plot_keeps_labels_apart():
    from components.labels_tab import figure

    result = Tradeoff("digits", 10, "fast", points=[point("hard", 650, 0.70), point("soft:topk=1", 660, 0.71),
                                                    point("soft", 1050, 0.80)])
    table = tradeoff.markdown(result)
    header = table.splitlines()[0]
    assert "share of dynamic's gain" not in header and "random-subset acc" not in header  # nothing measured there
    assert "synthetic acc" in header and len(table.splitlines()[2].split("|")) == len(header.split("|"))
    fig = figure(result)
    points = [t for t in fig.data if t.mode == "markers" and t.legendgroup not in (None, "kinds")]
    named = {t.name: t for t in points if t.showlegend is not False}
    assert set(named) == {"hard", "soft:topk=1", "soft"}  # each store named in the legend, none over the points
    assert all(not t.text for t in points)
    assert len({t.marker.color for t in named.values()}) == 3  # a colour per store
    assert list(fig.layout.xaxis.ticktext)[:4] == ["100 B", "200 B", "500 B", "1 KB"]  # bytes, no bare minor digits
