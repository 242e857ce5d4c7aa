"""CPU seconds per epoch of what a CIFAR-10 RDED row needs (BENCHMARKS 15c): the Conv3 observer's
training (recipe `convnet_bn_128`: BN ConvNet-3 width 128, SGD batch 128, 50 epochs on 50,000
images), RDED's scoring (300 candidates x 5 crops per class), and the soft protocol's student epochs
(ConvNet-3 width 128, batch 50, the teacher labelling every view) at IPC 10. Timed on a few batches
of random tensors of CIFAR's shape (speed does not depend on the pixels) and scaled to an epoch;
one thread.

    nice -n 10 python -m benchmarks.cifar_budget --batches 5 --out benchmarks/results/cifar_budget.jsonl
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from dd_core.models import build_model, fast_forward

from .decoupled import line


def cpu_seconds(fn, batches: int) -> float:
    fn()  # warm-up
    t0 = time.process_time()
    for _ in range(batches):
        fn()
    return (time.process_time() - t0) / batches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = dict(channels=3, num_classes=10, image_size=(32, 32))
    teacher = build_model("convnet_bn", seed=0, **shape)
    student = build_model("convnet", seed=0, **shape)
    opt = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9)
    x128, y128 = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    x50 = torch.randn(50, 3, 32, 32)

    def teacher_batch():  # one SGD step of the observer, batch 128
        teacher.train()
        loss = F.cross_entropy(teacher(x128), y128)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def score_batch():  # RDED: the observer scores 128 crops (no gradient)
        teacher.eval()
        with torch.no_grad():
            teacher(x128)

    s_opt = torch.optim.AdamW(student.parameters(), lr=0.001, weight_decay=0.01)
    forward = fast_forward(student)

    def student_batch():  # soft protocol: the teacher labels the 50 views, the student takes one AdamW step
        teacher.eval()
        with torch.no_grad():
            target = F.softmax(teacher(x50) / 20, dim=1)
        student.train()
        loss = F.kl_div(F.log_softmax(forward(x50) / 20, dim=1), target, reduction="batchmean")
        s_opt.zero_grad()
        loss.backward()
        s_opt.step()

    rows = {
        "teacher_epoch": (teacher_batch, 50000 / 128, "convnet_bn (ConvNet-3 w128 BN) SGD, batch 128, 50,000 images"),
        "rded_scoring": (score_batch, 10 * 300 * 5 / 128, "RDED: 10 classes x 300 candidates x 5 crops scored once"),
        "soft_epoch_ipc10": (student_batch, 100 / 50, "soft protocol student epoch at IPC 10 (100 images, batch 50)"),
        "soft_epoch_ipc50": (student_batch, 500 / 50, "soft protocol student epoch at IPC 50 (500 images, batch 50)"),
    }
    for name, (fn, per_epoch, what) in rows.items():
        per_batch = cpu_seconds(fn, args.batches)
        line(args.out, what=name, detail=what, cpu_s_per_batch=round(per_batch, 3), batches=round(per_epoch, 1),
             cpu_s=round(per_batch * per_epoch, 1), threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
