"""The trajectory benchmarks' own tools (benchmarks/trajectory.py): the table, expert-speed and compare."""
from __future__ import annotations

import json
import time

import pytest


def test_the_benchmark_table_pools_seeds_and_networks(tmp_path, capsys):
    from benchmarks.trajectory import main

    def row(seed, accs, lr_accs=None, lr_img=100.0):
        out = {"bench": "compare", "dataset": "digits", "method": "mtt", "ipc": 1, "seed": seed, "steps": 500,
               "hyperparameters": {"lr_img": lr_img, "syn_steps": 10},
               "eval": {"accuracies": accs, "protocol": "fast"}}
        return {**out, "eval_learned_lr": {"accuracies": lr_accs}} if lr_accs else out

    lines = [row(0, [0.90, 0.92], [0.80, 0.82]), row(1, [0.94, 0.94], [0.84, 0.84]), row(2, [0.5, 0.5], lr_img=1000.0),
             row(2, [0.6, 0.6], lr_img=1000.0)]  # seed 2 measured again: its last line counts
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    main(["table", str(path)])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| digits")]
    assert len(table) == 2  # lr_img differs between the rows, so it names two settings
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    assert cells[3] == "lr_img 100.0" and cells[5] == "0 1"
    # per-seed means 91.0 and 94.0: 1.5 across seeds; within-seed stds 1.0 and 0.0: mean 0.5
    assert cells[7:11] == ["91.0, 94.0", "1.5", "0.5", "92.5 ± 1.7 (4)"]
    assert cells[11:] == ["81.0, 84.0", "82.5 ± 1.7 (4)"]  # the learned_lr evaluation
    assert [c.strip() for c in table[1].strip("|").split("|")][7:] == ["60.0", "-", "0.0", "60.0 ± 0.0 (2)", "-", "-"]


def test_expert_speed_times_the_batches_of_a_zca_recipe_and_records_the_recipe_it_timed(tmp_path):
    from benchmarks.trajectory import main

    out = tmp_path / "speed.jsonl"
    main(["expert-speed", "--dataset", "digits", "--batches", "2", "--set", "zca=true", "--out", str(out)])
    row = json.loads(out.read_text().splitlines()[-1])
    assert row["recipe"]["zca"] == 0.1 and row["batches_timed"] == 2  # whitened outside the timing, still recorded
    assert 0 < row["cpu_seconds"] and row["cpu_seconds_per_epoch"] == pytest.approx(
        row["cpu_seconds"] * 1437 / 512, abs=0.06)  # 1,437 training digits, 512 timed; rounded to 0.1 s


def test_compare_writes_each_snapshot_line_as_the_run_goes_and_leaves_evaluation_out_of_its_time(tmp_path):
    from benchmarks import trajectory

    out = tmp_path / "rows.jsonl"
    yielded, reached_at_emit = [], []
    real_distill, real_emit, real_evaluate = trajectory.distill, trajectory._emit, trajectory.evaluate_synthetic

    def distill(*a, **kw):
        for snap in real_distill(*a, **kw):
            yielded.append(snap.step)
            yield snap

    def emit(row, path):  # how far the run had got when each line was written
        reached_at_emit.append(yielded[-1])
        real_emit(row, path)

    def slow_evaluate(*a, **kw):  # an evaluation that takes clearly longer than the tiny run's steps
        time.sleep(2.0)
        return real_evaluate(*a, **kw)

    trajectory.distill, trajectory._emit, trajectory.evaluate_synthetic = distill, emit, slow_evaluate
    try:
        trajectory.main(["compare", "--dataset", "digits", "--ipcs", "1", "--methods", "mtt", "--steps", "4",
                         "--eval-at", "2", "--models", "1", "--protocol", "fast", "--set", "model=\"convnet_d2\"",
                         "--set", "num_experts=2", "--set", "expert_epochs=1", "--set", "max_start_epoch=2",
                         "--set", "syn_steps=2", "--out", str(out)])
    finally:
        trajectory.distill, trajectory._emit, trajectory.evaluate_synthetic = real_distill, real_emit, real_evaluate
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["steps"] for r in rows] == [2, 4] and [r["status"] for r in rows] == ["running", "done"]
    assert reached_at_emit == [2, 4]  # step 2's line was written before step 3 ran
    # the 2 s evaluation of step 2 is not in step 4's distill time (two tiny steps take well under that)
    assert rows[1]["distill_seconds"] - rows[0]["distill_seconds"] < 2.0


def test_speed_times_ours_and_the_official_style_loop_on_the_same_draws():
    """`speed` (also the GPU script's step, with a device) times four kinds of iteration from the same
    start, batches and DSA draws: ours and the official-style loop must compute the same loss."""
    import argparse

    from benchmarks.trajectory import speed_row

    row = speed_row(argparse.Namespace(dataset="digits", method="mtt", ipc=1, preset="fast", set=["syn_steps=2"],
                                       repeats=1, untrained_experts=True, with_tesla=True, device="cpu"))
    assert row["device"] == "cpu" and row["hyperparameters"]["syn_steps"] == 2
    assert set(row["seconds_median"]) == {"ours", "reference", "tesla", "tesla_truncated"}
    assert all(len(v) == 1 and v[0] > 0 for v in row["seconds"].values())  # the warm-up round is not counted
    assert row["max_loss_difference"] < 1e-4
