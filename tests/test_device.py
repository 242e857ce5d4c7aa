"""Device choice: the CPU's fast kernels only on the CPU, the plain ones elsewhere; the process-wide
and per-block device; the CUDA switches (off the GPU they change nothing); and what a packed run
holds of its dataset (a reference, not the bytes). The tests marked `cuda` need a GPU and skip
without one (scripts/gpu_check.sh runs them)."""
from __future__ import annotations

import pickle

import pytest
import torch

from dd_core import device as dd_device
from dd_core import load_dataset
from dd_core.distill import Resume, run_to_end
from dd_core.methods import make_method
from dd_core.methods.sampling import RealSampler
from dd_core.models import build_model, fast_embed, fast_forward
from dd_core.run_state import RunState, capture, pack, unpack
from dd_core.synthetic import init_synthetic

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def convnet(device="cpu"):
    return build_model("convnet", channels=1, num_classes=10, image_size=(28, 28), seed=0, device=device)


def test_the_fast_cpu_kernels_are_chosen_only_on_the_cpu():
    cpu_net = convnet()
    assert fast_forward(cpu_net) == cpu_net.forward_fast and fast_embed(cpu_net) == cpu_net.embed_fast
    elsewhere = convnet("meta")  # any device that is not the CPU (no GPU needed to check the choice)
    assert fast_forward(elsewhere) is elsewhere and fast_embed(elsewhere) == elsewhere.embed


def test_prefer_and_using_set_the_default_device():
    natural = dd_device.default_device()
    try:
        dd_device.prefer("meta")
        assert dd_device.default_device() == torch.device("meta")
        with dd_device.using("cpu"):
            assert dd_device.default_device() == CPU
        assert dd_device.default_device() == torch.device("meta")
    finally:
        dd_device.prefer(None)
    assert dd_device.default_device() == natural


def test_cuda_switches_are_off_by_default_and_do_nothing_on_the_cpu(monkeypatch):
    for name in ("DD_AMP", "DD_COMPILE", "DD_CUDNN_BENCHMARK"):
        monkeypatch.delenv(name, raising=False)
    assert dd_device.amp_dtype() is None and not dd_device.compile_enabled() and dd_device.cudnn_benchmark()
    monkeypatch.setenv("DD_AMP", "bf16")
    monkeypatch.setenv("DD_COMPILE", "1")
    assert dd_device.amp_dtype() == torch.bfloat16 and dd_device.compile_enabled()
    net = convnet()
    assert dd_device.maybe_compile(net, CPU) is net
    with dd_device.autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setenv("DD_AMP", "fp8")
    with pytest.raises(ValueError, match="valid values are: bf16, off"):
        dd_device.amp_dtype()


def test_a_packed_run_holds_its_dataset_by_reference(digits):
    method = make_method("dm", dataset="digits", ipc=1, model="convnet_d2", batch_real=16)
    syn = init_synthetic(digits, 1, seed=0)
    method.setup(digits, syn, seed=0, device=CPU)
    method.view_ = digits.x_train[100:300]  # a view of the dataset: must travel as a reference too
    blob = pack(capture(method, Resume(0, syn), CPU), digits)
    dataset_bytes = digits.x_train.numel() * digits.x_train.element_size()
    assert len(blob) < dataset_bytes / 4, f"{len(blob)} bytes for a run on a {dataset_bytes}-byte training set"
    back = unpack(blob, digits)
    assert isinstance(back, RunState)
    assert back.method.real_.x is digits.x_train
    assert torch.equal(back.method.view_, digits.x_train[100:300])
    assert back.method.view_.untyped_storage().data_ptr() == digits.x_train.untyped_storage().data_ptr()
    assert back.method.opt_.param_groups[0]["params"][0] is back.method.images_, "the optimizer lost its images"
    with pytest.raises(TypeError, match="not a packed run"):
        unpack(pickle.dumps([1, 2]), digits)


def test_a_sampler_leaves_its_device_copy_out_of_a_pickle(digits):
    sampler = RealSampler(digits, CPU)
    sampler._x_device = torch.zeros(3)  # stands for the GPU copy
    assert pickle.loads(pickle.dumps(sampler))._x_device is None


# -- on a GPU -------------------------------------------------------------------------------------

CUDA = torch.device("cuda")


@pytest.mark.cuda
def test_dm_on_cuda_matches_the_cpu_loss_to_tf32_tolerance(digits):
    runs = {}
    for dev in (CPU, CUDA):
        method = make_method("dm", dataset="digits", ipc=2, model="convnet_d2", batch_real=32)
        runs[dev.type] = run_to_end(digits, method, method_name="dm", ipc=2, steps=5, seed=0, device=dev)
    cpu, gpu = ([h["loss"] for h in runs[k].history] for k in ("cpu", "cuda"))
    assert runs["cuda"].status == "done"
    for a, b in zip(cpu, gpu):  # cuDNN convolutions run in TF32 by default: about 1e-3 relative
        assert abs(a - b) <= 2e-2 * abs(a), (cpu, gpu)


@pytest.mark.cuda
def test_the_real_sampler_keeps_the_training_set_on_the_gpu(digits):
    sampler = RealSampler(digits, CUDA)
    x, groups = sampler.all_classes(4, torch.Generator().manual_seed(0))
    assert x.device.type == "cuda" and groups.device.type == "cuda"
    assert sampler.source().device.type == "cuda"
    again, _ = RealSampler(digits, CPU).all_classes(4, torch.Generator().manual_seed(0))
    assert torch.equal(x.cpu(), again), "the same draws on either device"


@pytest.mark.cuda
def test_bf16_autocast_keeps_the_dm_loss_close(digits, monkeypatch):
    losses = {}
    for amp in ("off", "bf16"):
        monkeypatch.setenv("DD_AMP", amp)
        method = make_method("dm", dataset="digits", ipc=2, model="convnet_d2", batch_real=32)
        losses[amp] = run_to_end(digits, method, method_name="dm", ipc=2, steps=3, seed=0, device=CUDA).history[0]["loss"]
    assert abs(losses["bf16"] - losses["off"]) <= 5e-2 * abs(losses["off"]), losses


@pytest.mark.cuda
def test_the_evaluator_trains_on_cuda_above_chance(digits):
    from dd_core.evaluate import evaluate, protocol

    result = evaluate(digits.x_train[:200], digits.y_train[:200], digits, protocol("fast", epochs=20, num_models=1),
                      device=CUDA)
    assert result.mean > 0.5, result.as_dict()
