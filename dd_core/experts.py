"""Expert trajectories (Cazenavette et al., MTT, CVPR 2022): networks trained on the real training
set whose parameters are saved at the start and after every epoch. Trajectory-matching methods
start a student at one checkpoint and match a later one.

On disk an expert set is a folder: one `expert_NNN.safetensors` per expert, holding `params`
(epochs + 1, P) in float32 or float16 and `test_accuracy` (epochs + 1,), and an `index.json` that
records the dataset, network, recipe, seeds, per-epoch test accuracies, bytes and code version.
The index is written last, so a folder with an index is complete. `building.json`, written first,
names the dataset, recipe, seed and dtype, so that a build that was interrupted can be resumed: the
expert files it finished are checked and kept, and only the rest are trained. Under `torchrun` each
rank trains its share of the experts and rank 0 writes the index. The app and methods find experts by a key of
dataset, network and recipe in the one cache (cache.py); an unusable file is rebuilt with a note.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .augment import dsa_for
from .cache import atomic_write, cache_path, load_or_build
from .data import Dataset
from .distributed import launched, share
from .training import test_accuracy
from .convert import fields_from_text
from .version import code_version
from .interrupt import check
from .models import fast_forward, model_for, resolve_model
from .zca import whitened
from .expert_files import (BUILDING, FORMAT_VERSION, INDEX, ExpertFileError, building_record, expert_file, expert_usable,
                           images_digest, same_build, write_expert)



@dataclass(frozen=True)
class ExpertRecipe:
    """How experts are trained: MTT's buffer recipe, with FTD's sharpness-aware option and SeT's
    smoothing options (both off by default)."""

    model: str = "auto"  # auto = the dataset's DD ConvNet, as everywhere else
    epochs: int = 50  # MTT trains 50; a run reads up to epoch max_start_epoch - 1 + expert_epochs
    lr: float = 0.01  # SGD, per batch of `batch_size`
    momentum: float = 0.0  # MTT: none
    weight_decay: float = 0.0  # MTT: none
    batch_size: int = 256
    dsa: bool = True  # DSA on every training batch (one op per batch, per-image numbers)
    rho: float = 0.0  # FTD: SAM neighbourhood radius (0 = plain SGD; FTD's buffers use 0.01)
    clip: float = 0.0  # SeT: largest gradient norm per step (0 = no clipping); see assets/set.md
    grad_penalty: float = 0.0  # SeT: weight of the squared gradient norm added to the loss
    zca: float = 0.0  # ZCA whitening of the data with this eps (MTT on CIFAR: 0.1); 0 = none

    def __post_init__(self):
        checks = {"epochs": self.epochs >= 1, "lr": self.lr > 0, "batch_size": self.batch_size >= 1,
                  "momentum": 0 <= self.momentum < 1, "weight_decay": self.weight_decay >= 0,
                  "rho": self.rho >= 0, "clip": self.clip >= 0, "grad_penalty": self.grad_penalty >= 0,
                  "zca": self.zca >= 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"expert recipe: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)} out of range "
                             f"(epochs and batch_size at least 1, lr > 0, momentum in [0, 1), the rest >= 0)")

    def resolved(self, dataset: Dataset) -> "ExpertRecipe":
        return dataclasses.replace(self, model=resolve_model(self.model, dataset))

    def describe(self) -> str:
        extra = [f"SAM rho {self.rho}" if self.rho else "", f"grad clip {self.clip}" if self.clip else "",
                 f"grad penalty {self.grad_penalty}" if self.grad_penalty else "", f"ZCA eps {self.zca}" if self.zca else ""]
        return (f"{self.model}, SGD lr {self.lr} mom {self.momentum} wd {self.weight_decay}, batch {self.batch_size}, "
                f"{self.epochs} epochs, {'DSA' if self.dsa else 'no augmentation'}"
                + "".join(f", {e}" for e in extra if e))


def recipe_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(ExpertRecipe)}


@dataclass
class Trajectories:
    """A set of expert trajectories: per expert, its flat parameters at every epoch."""

    dataset: str
    recipe: ExpertRecipe
    params: list[torch.Tensor]  # per expert (epochs + 1, P), float32 or float16
    test_accuracy: list[list[float]]  # per expert, per epoch (epoch 0 = the initial network)
    seeds: list[int]
    names: list[str]  # parameter names in flat order, with their shapes below
    shapes: list[list[int]]
    code_version: str = "unknown"
    seconds: float = 0.0

    @property
    def num_experts(self) -> int:
        return len(self.params)

    @property
    def epochs(self) -> int:
        return self.params[0].shape[0] - 1

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)

    def checkpoint(self, expert: int, epoch: int) -> torch.Tensor:
        """Expert `expert`'s flat parameters after `epoch` epochs, float32 (P,)."""
        return self.params[expert][epoch].float()

    def describe(self) -> str:
        final = sum(a[-1] for a in self.test_accuracy) / self.num_experts
        return (f"{self.num_experts} experts x {self.epochs} epochs on {self.dataset} ({self.recipe.describe()}; "
                f"mean final test accuracy {final:.3f}; {self.nbytes / 2**20:.1f} MiB)")


# -- training one expert ---------------------------------------------------------------------------


def flat_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).cpu()  # (P,)


def _gradients(net, loss_of, recipe: ExpertRecipe) -> list[torch.Tensor]:
    """The step's gradients: plain, with SeT's gradient penalty, and with SAM's ascent (FTD)."""
    params = list(net.parameters())

    def grads_at_current():
        loss = loss_of()
        if recipe.grad_penalty:  # loss + lambda ||dL/dtheta||^2, differentiated through (double backward)
            g = torch.autograd.grad(loss, params, create_graph=True)
            loss = loss + recipe.grad_penalty * sum((gi ** 2).sum() for gi in g)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        # the folded first block leaves out the conv bias, which instance norm cancels: its gradient is 0
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    grads = grads_at_current()
    if recipe.rho:  # SAM: the gradient at the worst point within rho of theta, applied at theta
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads)) + 1e-12
        eps = [recipe.rho * g / norm for g in grads]
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.add_(e)
        grads = grads_at_current()
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
    if recipe.clip:
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        scale = min(1.0, recipe.clip / (float(norm) + 1e-12))
        grads = [g * scale for g in grads]
    return list(grads)


def train_expert(dataset: Dataset, recipe: ExpertRecipe, seed: int, *, device=None,
                 stop: threading.Event | None = None,
                 on_epoch: Callable[[int], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """Train one expert; returns its flat parameters at every epoch (epochs + 1, P) float32 and its
    test accuracy (fraction) at every epoch. Raises `Interrupted` between batches once `stop` is set."""
    device = device or torch.device("cpu")
    recipe = recipe.resolved(dataset)
    if recipe.zca:
        dataset = whitened(dataset, recipe.zca)
    net = model_for(dataset, recipe.model, seed=seed, device=device)
    opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    g = torch.Generator().manual_seed(seed)
    augment = dsa_for(dataset) if recipe.dsa else None
    snapshots, accuracy = [flat_params(net)], [test_accuracy(net, dataset, device)]
    # SeT's gradient penalty differentiates twice: through the plain forward (fast_forward is first-order)
    forward = net if recipe.grad_penalty else fast_forward(net)
    n = len(dataset.x_train)
    net.train()
    for epoch in range(recipe.epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, recipe.batch_size):
            check(stop)
            idx = perm[i:i + recipe.batch_size]
            x, y = dataset.x_train[idx].to(device), dataset.y_train[idx].to(device)
            if augment is not None:
                x = augment.apply(x, augment.sample_batch(len(idx), g), torch.arange(len(idx)))
            grads = _gradients(net, lambda: F.cross_entropy(forward(x), y), recipe)
            for p, gr in zip(net.parameters(), grads):
                p.grad = gr
            opt.step()
        snapshots.append(flat_params(net))
        accuracy.append(test_accuracy(net, dataset, device))
        if on_epoch:
            on_epoch(epoch + 1)
    return torch.stack(snapshots), accuracy  # (epochs + 1, P)


# -- files -------------------------------------------------------------------------------------------


def index_record(dataset: Dataset, recipe: ExpertRecipe, folder: Path, seeds: list[int], *, dtype: str,
                 seconds: float) -> dict:
    """What index.json holds: enough to rebuild the experts, and each one's accuracy per epoch."""
    from safetensors import safe_open

    net = model_for(dataset, recipe.model)
    experts = []
    for i, seed in enumerate(seeds):
        path = folder / expert_file(i)
        with safe_open(str(path), "pt") as f:
            acc = f.get_tensor("test_accuracy").tolist()  # a small tensor; the map closes with the file
        experts.append({"file": path.name, "seed": seed, "bytes": path.stat().st_size, "test_accuracy": acc})
    return {"format": FORMAT_VERSION, "dataset": dataset.name, "model": recipe.model,
            "recipe": dataclasses.asdict(recipe), "dtype": dtype, "num_experts": len(seeds),
            "epochs": recipe.epochs, "num_params": sum(p.numel() for p in net.parameters()),
            "names": [n for n, _ in net.named_parameters()], "shapes": [list(p.shape) for p in net.parameters()],
            "experts": experts, "bytes": sum(e["bytes"] for e in experts), "seconds": round(seconds, 2),
            "code_version": code_version(), "built": time.strftime("%Y-%m-%d %H:%M:%S")}


def read_experts(folder: str | Path) -> Trajectories:
    """Load and check an expert folder; raises ExpertFileError naming the file and the fix."""
    from safetensors.torch import load

    folder = Path(folder)
    fix = "delete the folder and build the experts again (python -m dd_core experts ...)"
    try:
        index = json.loads((folder / INDEX).read_text())
        recipe = ExpertRecipe(**index["recipe"])
        names, shapes, entries = index["names"], index["shapes"], index["experts"]
        num_params, epochs = int(index["num_params"]), int(index["epochs"])
    except FileNotFoundError:
        raise ExpertFileError(f"{folder} holds no {INDEX}: not a complete expert folder; {fix}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ExpertFileError(f"{folder / INDEX} is unreadable ({type(err).__name__}: {err}); {fix}") from None
    params, accuracy, seeds = [], [], []
    for entry in entries:
        path = folder / entry["file"]
        try:
            tensors = load(path.read_bytes())  # a copy, not a memory map: a file changed later cannot crash us
        except FileNotFoundError:
            raise ExpertFileError(f"expert file {path.name} is missing from {folder}; {fix}") from None
        except Exception as err:  # noqa: BLE001  safetensors raises several kinds on a bad file
            raise ExpertFileError(f"expert file {path.name} in {folder} is corrupt ({err}); {fix}") from None
        p = tensors.get("params")
        if p is None or tuple(p.shape) != (epochs + 1, num_params) or not torch.isfinite(p).all():
            got = None if p is None else tuple(p.shape)
            raise ExpertFileError(f"expert file {path.name} in {folder} holds params of shape {got}, expected "
                                  f"{(epochs + 1, num_params)} and finite; {fix}")
        params.append(p)
        accuracy.append([float(a) for a in tensors["test_accuracy"].tolist()])
        seeds.append(int(entry["seed"]))
    if not params:
        raise ExpertFileError(f"{folder / INDEX} lists no experts; {fix}")
    return Trajectories(index["dataset"], recipe, params, accuracy, seeds, names, shapes,
                        index.get("code_version", "unknown"), float(index.get("seconds", 0.0)))


def build_experts(dataset: Dataset, recipe: ExpertRecipe, num_experts: int, folder: str | Path, *, seed: int = 0,
                  dtype: str = "float32", device=None, stop: threading.Event | None = None,
                  progress: Callable[[float, str], None] | None = None, write_index: bool = True,
                  resume: bool = False) -> list[int]:
    """Train `num_experts` experts into `folder` (expert i has seed `seed + i`). Under
    torch.distributed each rank trains experts rank, rank + world, ... and rank 0 writes the index
    after a barrier, so K processes write the same experts as one. With `resume`, expert files that
    an interrupted build of the same dataset, recipe, seed and dtype left in `folder` are kept
    (checked first) and only the others are trained. Returns the seeds."""
    import torch.distributed as dist

    if num_experts < 1:
        raise ValueError(f"the number of experts must be at least 1 (got {num_experts})")
    recipe = recipe.resolved(dataset)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    mine = share(num_experts, rank, world)
    wanted = building_record(dataset, recipe, seed, dtype)
    reusable = resume and same_build(folder, wanted)
    if rank == 0:
        atomic_write(folder / BUILDING, lambda tmp: tmp.write_text(json.dumps(wanted, indent=1)))
    shape = None  # what a kept expert file must hold: only a resumed build builds the network to count
    if reusable:
        shape = (recipe.epochs + 1, sum(p.numel() for p in model_for(dataset, recipe.model).parameters()))
    t0 = time.perf_counter()
    for done, i in enumerate(mine):
        if reusable and expert_usable(folder / expert_file(i), seed=seed + i, shape=shape, dtype=dtype):
            if progress:
                progress((done + 1) / len(mine), f"expert {i + 1}/{num_experts} kept from the interrupted build")
            continue
        def on_epoch(e, done=done, i=i):
            if progress:
                frac = (done + e / recipe.epochs) / len(mine)
                elapsed = time.perf_counter() - t0
                left = elapsed / frac * (1 - frac) if frac > 0 else float("nan")
                progress(frac, f"expert {i + 1}/{num_experts}, epoch {e}/{recipe.epochs}, about {left:.0f} s left")
        params, acc = train_expert(dataset, recipe, seed + i, device=device, stop=stop, on_epoch=on_epoch)
        write_expert(folder / expert_file(i), params, acc, seed=seed + i, dtype=dtype)
    seeds = [seed + i for i in range(num_experts)]
    if distributed:
        dist.barrier()  # every rank's files are written before rank 0 reads them for the index
    if write_index and rank == 0:
        record = index_record(dataset, recipe, folder, seeds, dtype=dtype, seconds=time.perf_counter() - t0)
        atomic_write(folder / INDEX, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    return seeds


# -- the cache -----------------------------------------------------------------------------------------

_memory: dict[str, Trajectories] = {}


def cache_key(dataset: Dataset, recipe: ExpertRecipe, num_experts: int, seed: int, dtype: str) -> str:
    """dataset (and a digest of its images: folder datasets share names), network, recipe, count, seed."""
    recipe = recipe.resolved(dataset)
    digest = images_digest(dataset)
    spec = json.dumps(dataclasses.asdict(recipe), sort_keys=True)
    recipe_id = hashlib.sha1(spec.encode()).hexdigest()[:10]
    name = dataset.name.replace(":", "_").replace("/", "_")
    return f"{name}-{recipe.model}-e{recipe.epochs}-r{recipe_id}-n{num_experts}-s{seed}-{dtype}-{digest}"


def expert_folder(dataset: Dataset, recipe: ExpertRecipe, num_experts: int, seed: int = 0, dtype: str = "float32") -> Path:
    return cache_path("experts", cache_key(dataset, recipe, num_experts, seed, dtype), "")


def get_experts(dataset: Dataset, recipe: ExpertRecipe, num_experts: int, *, seed: int = 0, dtype: str = "float32",
                device=None, stop: threading.Event | None = None,
                progress: Callable[[float, str], None] | None = None) -> Trajectories:
    """The cached experts for this dataset, network and recipe, trained now if missing. A missing
    or corrupt file is logged, discarded and rebuilt (cache.load_or_build)."""
    folder = expert_folder(dataset, recipe, num_experts, seed, dtype)
    if str(folder) in _memory:
        return _memory[str(folder)]

    def build():
        t0 = time.perf_counter()
        seeds = build_experts(dataset, recipe, num_experts, folder, seed=seed, dtype=dtype, device=device, stop=stop,
                              progress=progress, write_index=False, resume=True)  # a stopped warm-up goes on
        return seeds, time.perf_counter() - t0

    def save(built, tmp):
        seeds, seconds = built
        record = index_record(dataset, recipe.resolved(dataset), folder, seeds, dtype=dtype, seconds=seconds)
        tmp.write_text(json.dumps(record, indent=1))

    loaded, cached = load_or_build(folder / INDEX, load=lambda p: read_experts(p.parent), build=build, save=save)
    trajectories = loaded if cached else read_experts(folder)
    _memory[str(folder)] = trajectories
    return trajectories


# -- the command line: python -m dd_core experts ... (also under torchrun) ------------------------------


def parse_recipe(model: str | None, epochs: int, settings: list[str]) -> ExpertRecipe:
    """An ExpertRecipe from --model, --epochs and --set FIELD=VALUE items; unknown fields are named."""
    defaults = {f.name: f.default for f in dataclasses.fields(ExpertRecipe) if f.name not in ("model", "epochs")}
    values = fields_from_text(settings, defaults, "--set")  # --model and --epochs have their own flags
    return ExpertRecipe(model=model or "auto", epochs=epochs, **values)


def experts_command(args) -> int:
    """Train experts into args.out. Under torchrun (WORLD_SIZE > 1) each rank trains its share:
    gloo on CPUs, nccl on GPUs (one per local rank); rank 0 writes the index and prints the summary."""
    from .data import load_dataset

    recipe = parse_recipe(args.model, args.epochs, args.set)
    dataset = load_dataset(args.dataset)
    t0 = time.perf_counter()
    with launched() as place:
        def progress(frac, text):
            if not args.quiet:
                print(f"[rank {place.rank}] {100 * frac:5.1f}% {text}", file=sys.stderr, flush=True)

        build_experts(dataset, recipe, args.experts, args.out, seed=args.seed,
                      dtype="float16" if args.fp16 else "float32", device=place.device, progress=progress,
                      resume=args.resume)
    if place.is_main:
        traj = read_experts(args.out)
        print(json.dumps({"out": str(args.out), "experts": traj.num_experts, "epochs": traj.epochs,
                          "bytes": traj.nbytes, "seconds": round(time.perf_counter() - t0, 2), "processes": place.world,
                          "recipe": traj.recipe.describe(),
                          "final_test_accuracy": [round(a[-1], 4) for a in traj.test_accuracy]}))
    return 0
