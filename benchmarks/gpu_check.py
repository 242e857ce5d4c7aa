"""The GPU check's measurements, one JSON line each (scripts/gpu_check.sh runs them in turn).

    python -m benchmarks.gpu_check speed  [--steps 30]     # DM CIFAR-10 IPC 10, paper settings, vs the original-style loop
    python -m benchmarks.gpu_check mnist  [--steps 2000]   # DM MNIST IPC 10, then the paper's evaluation
    python -m benchmarks.gpu_check compile                 # the evaluator without and with torch.compile
    python -m benchmarks.gpu_check app    [--steps 200]    # the app headless through gradio_client

`speed` times on random tensors shaped like CIFAR-10's training set (50,000 x 3 x 32 x 32) unless
the real files are under DD_DATA_ROOT: a step's arithmetic does not depend on the pixel values,
and the full JPEG set cannot travel to a GPU machine with the code. Each row names which it used.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from dd_core import device as dd_device
from dd_core.data import Dataset, DatasetUnavailable, dataset_facts, load_dataset
from dd_core.version import code_version

from .dm_speed import REFERENCES, make, one_step

# written by `mnist`, read by `compile` (separate processes): the system temp folder unless DD_GPU_CHECK_DIR names one
SET_PATH = os.path.join(os.environ.get("DD_GPU_CHECK_DIR") or tempfile.gettempdir(),
                        "dd_gpu_check_mnist_dm10.safetensors")
DEVICE = torch.device("cuda")  # --device cpu runs the same code as a smoke test (tiny settings)


def emit(row: dict) -> None:
    row = {**row, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
           "torch": torch.__version__, "code_version": code_version()}
    print(json.dumps(row), flush=True)


def cifar10_or_stand_in() -> tuple[Dataset, str]:
    """CIFAR-10 if its files are there, else random tensors of its shapes with its facts."""
    try:
        return load_dataset("cifar10"), "cifar10 (real files)"
    except (DatasetUnavailable, OSError):
        g = torch.Generator().manual_seed(0)
        facts = dataclasses.asdict(dataset_facts("cifar10"))
        stand_in = Dataset(name="cifar10", x_train=torch.randn(50_000, 3, 32, 32, generator=g),
                           y_train=torch.arange(10).repeat(5_000), x_test=torch.randn(1_000, 3, 32, 32, generator=g),
                           y_test=torch.arange(10).repeat(100), classes=tuple(f"class {i}" for i in range(10)),
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), split_note="random stand-in", **facts)
        return stand_in, "random tensors shaped like CIFAR-10 (50,000 x 3 x 32 x 32)"


def time_variant(dataset, steps: int, seed: int = 0) -> dict:
    """Median seconds per step of ours and of the original-style loop, stepped alternately from the
    same seed (same draws), on the GPU, under this process's DD_AMP / DD_CUDNN_BENCHMARK."""
    dd_device.configure(DEVICE)
    ref, ours = (make(dataset, "paper", 10, seed, "dm", "convnet", device=DEVICE) for _ in range(2))
    t_ref, t_new, l_ref, l_new = [], [], [], []
    for _ in range(steps + 3):  # the first three are warm-up (cuDNN autotuning, allocator growth)
        with dd_device.autocast(DEVICE):
            t, l_ = one_step(ref, REFERENCES["dm"])
        t_ref.append(t), l_ref.append(l_)
        with dd_device.autocast(DEVICE):
            t, l_ = one_step(ours)
        t_new.append(t), l_new.append(l_)
    r, n = statistics.median(t_ref[3:]), statistics.median(t_new[3:])
    return {"reference_s_per_step": round(r, 5), "ours_s_per_step": round(n, 5), "speedup": round(r / n, 2),
            "projected_20000_steps_min": round(20_000 * n / 60, 2), "batch_real": ours.batch_real,
            "max_rel_loss_diff": max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(l_ref, l_new)),
            "switches": dd_device.describe(DEVICE)}


def speed(args) -> None:
    dataset, data_note = cifar10_or_stand_in()
    for amp, autotune in (("off", "1"), ("bf16", "1"), ("off", "0")):
        os.environ["DD_AMP"], os.environ["DD_CUDNN_BENCHMARK"] = amp, autotune
        emit({"check": "dm_speed", "dataset": "cifar10", "ipc": 10, "preset": "paper", "model": "convnet",
              "data": data_note, "steps_timed": args.steps, **time_variant(dataset, args.steps)})
    os.environ["DD_AMP"], os.environ["DD_CUDNN_BENCHMARK"] = "off", "1"


def mnist(args) -> None:
    from dd_core.distill import run_to_end
    from dd_core.evaluate import evaluate, protocol
    from dd_core.methods import make_method

    dataset = load_dataset("mnist")
    method = make_method("dm", preset="paper", dataset="mnist", ipc=10)
    t0 = time.perf_counter()
    snap = run_to_end(dataset, method, method_name="dm", ipc=10, steps=args.steps, seed=0, device=DEVICE)
    distill_s = time.perf_counter() - t0
    config = protocol("paper", **({"epochs": args.eval_epochs, "num_models": 1} if args.eval_epochs else {}))
    t0 = time.perf_counter()
    result = evaluate(snap.synthetic.images, snap.synthetic.labels, dataset, config, device=DEVICE)
    snap.synthetic.save(SET_PATH)  # for the torch.compile check that follows
    emit({"check": "mnist_dm_ipc10", "steps": snap.step, "status": snap.status, "distill_seconds": round(distill_s, 1),
          "s_per_step": round(distill_s / max(1, snap.step), 5), "config": method.config(), **result.as_dict(),
          "evaluate_seconds": round(time.perf_counter() - t0, 1), "published_dm_mnist_ipc10": 0.975,
          "switches": dd_device.describe(DEVICE)})


def compile_check(args) -> None:
    """One evaluation network (fast protocol, 300 epochs) on the MNIST set, without and with
    DD_COMPILE=1: seconds and accuracy of each (compile time included in the second)."""
    from dd_core.evaluate import evaluate, protocol
    from dd_core.synthetic import SyntheticSet

    dataset, syn = load_dataset("mnist"), SyntheticSet.load(SET_PATH)
    config = protocol("fast", num_models=1, **({"epochs": args.eval_epochs} if args.eval_epochs else {}))
    for flag in ("0", "1"):
        os.environ["DD_COMPILE"] = flag
        t0 = time.perf_counter()
        result = evaluate(syn.images, syn.labels, dataset, config, device=DEVICE)
        emit({"check": "evaluator_compile", "compile": flag == "1", "seconds": round(time.perf_counter() - t0, 1),
              "accuracy": result.mean, "protocol_detail": result.config.describe()})
    os.environ["DD_COMPILE"] = "0"


def app(args) -> None:
    import socket

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("DISTILLERY_WARMUP", "0")
    from gradio_client import Client, handle_file

    import app as distillery
    from components import runtime

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    distillery.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        t0 = time.perf_counter()
        job = client.submit(args.dataset, "dm", 10, args.steps, 0, api_name="/distill")
        updates = [p for p, _ in job]
        progress, set_file = job.result()
        distill_s = time.perf_counter() - t0
        result = client.predict(handle_file(set_file), "fast", 1, "", api_name="/evaluate")
        emit({"check": "app_gradio_client", "dataset": args.dataset, "device_note": runtime.device_note(), "cuda": runtime.CUDA,
              "status": progress.get("status"), "step": progress.get("step"), "updates": len(updates),
              "steps_per_second": progress.get("steps_per_second"), "distill_seconds": round(distill_s, 1),
              "evaluate": {k: result.get(k) for k in ("accuracy_mean", "protocol", "seconds")}})
    finally:
        distillery.demo.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("check", choices=["speed", "mnist", "compile", "app"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (give small --steps)")
    p.add_argument("--dataset", default="mnist", help="app: the dataset of its run (digits works offline)")
    p.add_argument("--eval-epochs", type=int, default=0, help="mnist: one network of this many epochs (smoke test)")
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        emit({"check": args.check, "status": "skipped", "reason": "no CUDA GPU"})
        return 0
    args.steps = args.steps or {"speed": 30, "mnist": 2000, "compile": 0, "app": 200}[args.check]
    {"speed": speed, "mnist": mnist, "compile": compile_check, "app": app}[args.check](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
