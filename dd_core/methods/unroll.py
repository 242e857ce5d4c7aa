"""The math of trajectory matching, apart from any method: the student as a function of one flat
parameter vector, its unrolled SGD steps on the synthetic set, and three ways to differentiate them.

    loss = ||theta_student - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2

`unroll_autograd` keeps the graph of every step (MTT; memory grows with syn_steps), `unroll_adjoint`
walks it backward one step at a time with Hessian-vector products (TESLA; one step's graph at a time):
the same gradient. `unroll_truncated` is the gradient TESLA's public code takes instead: each step's
batch reaches the loss only through its own gradient, not through the later steps it moves (a
different, cheaper gradient; TESLA's `hessian_chain=False`). Every random draw of an outer step
(batches, augmentation) is made before the unroll, so all three see the same ones.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.func import functional_call

from ..augment import DSAParams
from ..label_stores.base import soft_cross_entropy
from ..models import fast_forward


class FlatNet:
    """A network as a function of one flat parameter vector: f(theta, x) via functional_call.

    On a CPU the student runs the network's faster forward where it has one (ConvNet.forward_fast:
    the first conv, instance norm, ReLU and pool folded into one matrix product per image, pools as
    strided sums). It is the same function to float rounding, and its second derivatives too (a
    float64 test checks the unrolled gradient against the plain forward); it cuts the passes over
    the widest activation, which the unroll otherwise makes in the forward, the gradient and the
    backward through that gradient (BENCHMARKS.md, "Trajectory matching", speed)."""

    def __init__(self, net: torch.nn.Module, *, fast: bool = True):
        self.net = net
        self.student = _Forward(net, fast=fast)
        self.names = ["net." + n for n, _ in net.named_parameters()]  # as functional_call sees them through `student`
        self.shapes = [p.shape for p in net.parameters()]
        self.numels = [p.numel() for p in net.parameters()]

    def module_at(self, theta: torch.Tensor) -> torch.nn.Module:
        """A copy of the network holding `theta`, for work without gradients (embeddings, choosing images)."""
        net = copy.deepcopy(self.net)
        torch.nn.utils.vector_to_parameters(theta.detach(), net.parameters())
        return net.eval()

    def __call__(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        views = [t.view(s) for t, s in zip(theta.split(self.numels), self.shapes)]
        return functional_call(self.student, dict(zip(self.names, views)), (x,))


class _Forward(torch.nn.Module):
    """The network's fast CPU forward (models.fast_forward) as a module's forward, for functional_call."""

    def __init__(self, net: torch.nn.Module, *, fast: bool):
        super().__init__()
        self.net, self.fast = net, fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_forward(self.net)(x) if self.fast else self.net(x)


def backward_to(loss: torch.Tensor, leaves: list[torch.Tensor]) -> None:
    """loss.backward(), restricted to the leaves that learn: the expert's start needs no gradient, and
    leaving it out spares the backward through the first student step's Hessian."""
    for leaf, grad in zip(leaves, torch.autograd.grad(loss, leaves)):
        leaf.grad = grad


@dataclass
class Draws:
    """What one outer step samples before its unroll: per inner step, a batch and its augmentation."""

    batches: list[torch.Tensor]  # per inner step, indices into the synthetic set
    augment: list[DSAParams | None]


def inner_loss(f: FlatNet, theta, images, targets, idx, aug, augmenter) -> torch.Tensor:
    """The student's training loss on one synthetic batch, as the student sees it (augmented)."""
    x = images[idx]
    if aug is not None:
        x = augmenter.apply(x, aug, torch.arange(len(idx)))
    return soft_cross_entropy(f(theta, x), targets[idx])


def unroll_autograd(f: FlatNet, start, target, images, targets, lr, draws: Draws, augmenter, *,
                    checkpoints: dict[int, torch.Tensor] | None = None):
    """MTT: the unrolled student with its whole graph kept; returns (loss, student distance), and
    with `checkpoints` ({inner step k: expert parameters}) also the students at those steps (SeT)."""
    theta = start.clone().requires_grad_(True)
    seen = {}
    for k, (idx, aug) in enumerate(zip(draws.batches, draws.augment), start=1):
        g = torch.autograd.grad(inner_loss(f, theta, images, targets, idx, aug, augmenter), theta, create_graph=True)[0]
        theta = theta - lr * g
        if checkpoints and k in checkpoints:
            seen[k] = theta
    out = matching_loss(theta, start, target), (theta - target).norm().detach()
    return (*out, seen) if checkpoints else out


def matching_loss(theta, start, target) -> torch.Tensor:
    return ((theta - target) ** 2).sum() / ((start - target) ** 2).sum()


def walk_forward(f: FlatNet, start, images, targets, lr, draws: Draws, augmenter):
    """The student's steps without graphs: the flat thetas theta_0..theta_N (P floats each) and the
    sum of the gradients taken, for the constant-memory unrolls."""
    thetas, g_sum = [start], torch.zeros_like(start)
    theta = start
    for idx, aug in zip(draws.batches, draws.augment):
        theta = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            g = torch.autograd.grad(inner_loss(f, theta, images.detach(), targets.detach(), idx, aug, augmenter), theta)[0]
        g_sum += g
        theta = (theta - lr.detach() * g).detach()
        thetas.append(theta)
    return thetas, g_sum


def end_loss(final, start, target):
    """The matching loss at the walk's end and its gradient there, dL/dtheta_N."""
    final = final.detach().requires_grad_(True)
    loss = matching_loss(final, start, target)
    return loss, torch.autograd.grad(loss, final)[0]


def unroll_adjoint(f: FlatNet, start, target, images, targets, lr, draws: Draws, augmenter):
    """TESLA: the same gradient as `unroll_autograd`, with one inner step's graph alive at a time.

    Forward, without graphs: theta_{i+1} = theta_i - lr g_i, keeping only the flat thetas (P floats
    each). Backward, with a = dL/dtheta_{i+1}: dL/dlr -= a . g_i; the images and labels receive
    -lr (dg_i/dX)^T a; and a becomes a - lr H_i a. The last two come from one backward pass of the
    scalar g_i . a, so each step costs one double backward, as in MTT, plus one plain gradient.
    Returns (loss value, student distance, grad of images, grad of lr, grad of targets or None)."""
    thetas, _ = walk_forward(f, start, images, targets, lr, draws, augmenter)
    loss, a = end_loss(thetas[-1], start, target)  # a = dL/dtheta_N
    leaves = [images] + ([targets] if targets.requires_grad else [])
    grads = [torch.zeros_like(t) for t in leaves]
    grad_lr = torch.zeros_like(lr)
    for i in reversed(range(len(draws.batches))):
        theta = thetas[i].detach().requires_grad_(True)
        g = torch.autograd.grad(inner_loss(f, theta, images, targets, draws.batches[i], draws.augment[i], augmenter),
                                theta, create_graph=True)[0]
        grad_lr -= (a * g.detach()).sum()
        hv, *leaf_grads = torch.autograd.grad((g * a).sum(), [theta, *leaves], allow_unused=True)
        for acc, lg in zip(grads, leaf_grads):
            if lg is not None:
                acc -= lr.detach() * lg
        a = a - lr.detach() * hv
    student_distance = (thetas[-1].detach() - target).norm()
    return loss.detach(), student_distance, grads[0], grad_lr, (grads[1] if len(grads) > 1 else None)


def unroll_truncated(f: FlatNet, start, target, images, targets, lr, draws: Draws, augmenter):
    """The gradient of TESLA's public code (justincui03/tesla, `distill.py`), with constant memory.

    theta_N = theta_0 - lr sum_i g_i, and each g_i is differentiated as a function of its own batch
    X_i only, at a fixed theta_i: the terms through which X_i moves the later thetas (the Hessian
    chain that `unroll_adjoint` carries in `a`) are dropped, and so is the lr's effect on the later
    g_j. With v = dL/dtheta_N: X_i receives -lr (dg_i/dX_i)^T v, the lr -v . sum_i g_i. It equals
    autograd through an unroll whose every gradient is taken at a detached theta_i (a test checks
    that), and differs from MTT's gradient (cosine about 0.8 on the test's small case). Per step it
    spares `unroll_adjoint` the Hessian-vector product with respect to theta.
    Returns what `unroll_adjoint` returns."""
    thetas, g_sum = walk_forward(f, start, images, targets, lr, draws, augmenter)
    loss, v = end_loss(thetas[-1], start, target)  # v = dL/dtheta_N, the same for every step here
    leaves = [images] + ([targets] if targets.requires_grad else [])
    grads = [torch.zeros_like(t) for t in leaves]
    for i in range(len(draws.batches)):
        theta = thetas[i].detach().requires_grad_(True)
        g = torch.autograd.grad(inner_loss(f, theta, images, targets, draws.batches[i], draws.augment[i], augmenter),
                                theta, create_graph=True)[0]
        for acc, lg in zip(grads, torch.autograd.grad((g * v).sum(), leaves, allow_unused=True)):
            if lg is not None:
                acc -= lr.detach() * lg
    student_distance = (thetas[-1].detach() - target).norm()
    return loss.detach(), student_distance, grads[0], -(v * g_sum).sum(), (grads[1] if len(grads) > 1 else None)
