"""The Labels & storage tab's handlers, called as plain functions (no browser)."""
from __future__ import annotations

import pytest

pytest.importorskip("gradio")

from components import labels_tab  # noqa: E402
from dd_core import tradeoff  # noqa: E402
from dd_core.data import load_dataset  # noqa: E402
from dd_core.training import test_accuracy as accuracy_on_test  # noqa: E402
from dd_core.synthetic import init_synthetic  # noqa: E402
from dd_core.teacher import Teacher, train_on_real  # noqa: E402


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tab") / "tiny.safetensors"
    init_synthetic(load_dataset("digits"), 1, seed=0).save(path)
    return str(path)


@pytest.fixture
def quick_teacher(monkeypatch):
    digits = load_dataset("digits")
    net = train_on_real(digits, "convnet_d2", 1, 0, "cpu")
    teacher = Teacher(net, "convnet_d2", 1, accuracy_on_test(net, digits, "cpu"), 0.0)
    monkeypatch.setattr(tradeoff, "get_teacher_or_reason", lambda dataset, device, syn=None: (teacher, ""))


def run(**kw):
    args = dict(source=labels_tab.SOURCES[0], upload=None, current_path=None, ticked=["hard"], extra="",
                protocol="fast", epochs=1, networks=1, arch=labels_tab.SAME_ARCH, image_format="uint8",
                random_set=False)
    args.update(kw)
    return list(labels_tab.run_labels(*args.values()))


def test_the_tab_measures_and_draws(tiny_file, quick_teacher):
    outs = run(current_path=tiny_file, ticked=["hard", "soft"], extra="soft:topk=1", random_set=True)
    status, fig, report = outs[-1]
    assert status.startswith("✓ Done") and "9 points" in status  # 3 stores x synthetic, random, label-first
    assert any("label-first" in (t.name or "") for t in fig.data)
    assert fig.layout.xaxis.type == "log" and any("frontier" in (t.name or "") for t in fig.data)
    assert "| soft:topk=1 |" in report and "**Protocol** of every accuracy: fast" in report
    for store in ("hard", "soft", "soft:topk=1"):  # the store's points on every set share its colour and entry
        own = [t for t in fig.data if t.legendgroup == store]
        assert len(own) == 3 and len({t.marker.color for t in own}) == 1
        assert {t.marker.symbol for t in own} == {"circle", "circle-open", "diamond-open"}
    table = [line for line in report.splitlines() if line.startswith("|")]
    assert "formula" not in table[0] and "- **soft:topk=1**: " in report  # formulas listed under the table
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "1 epochs" in report  # the recipe behind the numbers is named
    assert not fig.layout.annotations and fig.layout.yaxis.range is None  # measured: autorange, no hint


def test_the_empty_plot_has_an_accuracy_frame_and_says_what_to_do():
    fig = labels_tab.figure(None)
    assert tuple(fig.layout.yaxis.range) == (0, 1) and fig.layout.xaxis.type == "log"
    assert "Measure bytes and accuracy" in fig.layout.annotations[0].text


def test_another_evaluation_network_is_named(tiny_file, quick_teacher):
    status, _, report = run(current_path=tiny_file, arch="convnet_w32")[-1]
    assert status.startswith("✓ Done") and "fast: convnet_w32" in report


@pytest.mark.parametrize("kw, message", [
    (dict(), "no synthetic set yet"),
    (dict(source=labels_tab.SOURCES[1]), "Upload a synthetic set"),
    (dict(current_path="TINY", ticked=[]), "Tick at least one"),
    (dict(current_path="TINY", extra="soft:topk=two"), "takes an integer"),
    (dict(current_path="TINY", networks=9), "between 1 and"),
    (dict(current_path="TINY", epochs=-3), "Epochs must be"),
    (dict(current_path="TINY", arch="vgg"), "Unknown architecture"),
])
def test_bad_input_gives_a_message_not_a_traceback(kw, message, tiny_file):
    kw = {k: tiny_file if v == "TINY" else v for k, v in kw.items()}
    outs = run(**kw)
    assert len(outs) == 1 and outs[0][0].startswith("⚠") and message in outs[0][0]


@pytest.mark.parametrize("how", ["stop", "close"])
def test_stop_and_closing_the_page_end_a_labels_run(tiny_file, quick_teacher, how):
    # The run is a job of its session: its Stop button and closing the page (which used to leave
    # a labels run going) both end it within a batch.
    from types import SimpleNamespace

    from components.sessions import drop_session

    request = SimpleNamespace(session_hash=f"labels-{how}")
    outs = labels_tab.run_labels(labels_tab.SOURCES[0], None, tiny_file, ["hard"], "", "fast", 2000, 1,
                                 labels_tab.SAME_ARCH, "uint8", False, request)
    assert next(outs)[0].startswith("…")  # running
    if how == "stop":
        assert labels_tab.stop_labels(request).startswith("■")
    else:
        drop_session(request)
    status = list(outs)[-1][0]
    assert status.startswith("■ Stopped")
    drop_session(request)


def test_the_plot_fills_in_as_each_store_is_measured(tiny_file, quick_teacher, monkeypatch):
    """A long measurement draws its points as they come, not all at the end."""
    import time

    import plotly.graph_objects as go

    sizes, real = [], labels_tab.run_tradeoff

    def slow(*args, on_point=None, **kw):
        def each(partial):
            sizes.append(len(partial.points))
            on_point(partial)
            time.sleep(0.3)  # long enough for the page's poll to see each point
        return real(*args, on_point=each, **kw)

    monkeypatch.setattr(labels_tab, "run_tradeoff", slow)
    monkeypatch.setattr(labels_tab, "POLL_SECONDS", 0.05)
    outs = run(current_path=tiny_file, ticked=["hard", "soft"], random_set=True)
    drawn = [sum(t.legendgroup in ("hard", "soft") for t in fig.data)
             for _, fig, _ in outs[:-1] if isinstance(fig, go.Figure)]
    assert sizes == list(range(1, 7))  # 2 stores x synthetic, random, label-first: a copy after each
    assert drawn and drawn == sorted(drawn) and drawn[0] < 6  # the plot grew while the run went on
    assert sum(t.legendgroup in ("hard", "soft") for t in outs[-1][1].data) == 6
