"""The headless CLI: distill then evaluate on digits, and clear errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dd_core.cli import main
from dd_core.synthetic import SyntheticSet

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dd_core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "DD_THREADS": "1"})


def test_distill_then_evaluate_round_trip(tmp_path):
    out = tmp_path / "dm.safetensors"
    done = run_cli("distill", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--steps", "5",
                   "--set", "batch_real=32", "--out", str(out), "--grid", str(tmp_path / "g.png"), "--quiet")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["steps"] == 5
    syn = SyntheticSet.load(out)
    assert syn.method == "dm" and syn.ipc == 1 and syn.steps == 5 and syn.config["batch_real"] == 32
    assert (tmp_path / "g.png").stat().st_size > 0
    ev = run_cli("evaluate", str(out), "--json", "--models", "2", "--epochs", "20")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["protocol"] == "fast" and len(result["accuracies"]) == 2
    assert 0.0 <= result["accuracy_std"] <= result["accuracy_mean"] <= 1.0


@pytest.mark.parametrize("args,message", [
    (["distill", "--method", "nope"], "valid methods are"),
    (["distill", "--dataset", "nope"], "valid datasets are"),
    (["distill", "--ipc", "500"], "at most 139"),
    (["distill", "--ipc", "0"], "at least 1"),
    (["distill", "--set", "bogus=1"], "valid ones are"),
    (["distill", "--minutes", "0"], "must be positive"),
])
def test_bad_input_exits_2_with_a_helpful_line(capsys, args, message):
    assert main(args + ["--quiet", "--out", "/dev/null"]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_rejects_a_foreign_file(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 16)
    assert main(["evaluate", str(bad)]) == 2
    assert "not a readable .safetensors file" in capsys.readouterr().err


def test_a_time_budget_stops_the_run_and_keeps_its_last_good_set(tmp_path, capsys):
    out = tmp_path / "budget.safetensors"
    assert main(["distill", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--steps", "1000000",
                 "--minutes", "0.05", "--quiet", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "stopped" and 0 < summary["steps"] < 1000000
    assert summary["seconds"] < 60  # setup counts against the budget, not in "seconds"
    assert SyntheticSet.load(out).steps == summary["steps"]


def test_evaluate_measures_the_whole_dataset_reference_and_scores(tmp_path, capsys):
    out = tmp_path / "r.safetensors"
    assert main(["distill", "--dataset", "digits", "--method", "random", "--ipc", "1", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--whole", "measure", "--models", "1", "--epochs", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.8 < result["whole_accuracy"] <= 1.0 and "trained 30 epochs on the whole training set" in result["whole_detail"]
    assert 0.0 <= result["random_mean"] <= 1.0  # --whole implies the random baseline that IOR needs
    assert result["IOR"] == pytest.approx(result["accuracy_mean"] - result["random_mean"])
    assert result["HLR"] == pytest.approx(result["whole_accuracy"] - result["hard_mean"])
    assert 0.0 <= result["LRS"] <= 1.0


@pytest.mark.parametrize("value", ["93", "-0.1", "most"])
def test_evaluate_rejects_a_whole_accuracy_that_is_not_a_fraction(tmp_path, capsys, value):
    assert main(["evaluate", str(tmp_path / "x.safetensors"), "--whole", value]) == 2
    assert "expected 'measure' or a fraction in [0, 1]" in capsys.readouterr().err
