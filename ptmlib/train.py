"""One training loop for the whole book.

`train(model, batch_fn, loss_fn, cfg, profile)` runs `cfg.num_steps` optimizer steps:
batch_fn(gen) draws a batch from a seeded generator, loss_fn(model, batch) returns a scalar loss.
It handles the optimizer, the LR schedule (constant, cosine, warmup-stable-decay), gradient
clipping, bf16 autocast and optional `torch.compile` on CUDA, evaluation hooks, a progress bar,
throughput (and MFU on CUDA), and checkpoints that let an interrupted run resume where it stopped.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ptmlib import schedules
from ptmlib.checkpoint import load_checkpoint, save_checkpoint
from ptmlib.data import index_batches
from ptmlib.metrics import count_params
from ptmlib.paths import cache_dir
from ptmlib.profiles import Profile

SCHEDULES = ("constant", "cosine", "wsd")  # the `ptmlib.schedules` a TrainConfig can name
OPTIMIZERS = ("adamw", "adam", "sgd")
# Dense bf16 peak FLOP/s, for the MFU estimate (vendor datasheets).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run except the model and the data."""

    num_steps: int
    lr: float = 1e-3
    schedule: str = "constant"  # constant | cosine | wsd
    warmup_steps: int = 0
    decay_frac: float = 0.2  # wsd: the last fraction of steps decays to min_lr_ratio
    decay_shape: str = "linear"  # wsd: "linear", or "sqrt" (1 - sqrt(progress), Hagele et al.'s choice)
    min_lr_ratio: float = 0.0  # cosine and wsd end at lr * min_lr_ratio
    optimizer: str = "adamw"  # adamw | adam | sgd
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0  # max global grad norm; None disables clipping
    log_every: int = 50  # record the mean training loss every this many steps
    eval_every: int = 0  # run the eval hooks every this many steps (0: only at the end)
    checkpoint_every: int = 0  # 0: checkpoint only for the full profile, every ~10% of the run
    compile: bool = False  # torch.compile the model (CUDA only)
    autocast: bool = True  # bf16 autocast where the profile has it (CUDA); off for precision-critical runs

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if self.decay_shape not in ("linear", "sqrt"):
            raise ValueError(f"unknown decay_shape {self.decay_shape!r}; allowed: linear, sqrt")
        if not 0 <= self.decay_frac <= 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("decay_frac and min_lr_ratio must lie in [0, 1]")


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Factor applied to `cfg.lr` at optimizer step `step` (0-based): the `ptmlib.schedules` schedule
    that `cfg.schedule` names (constant, cosine, or warmup-stable-decay), after `cfg.warmup_steps` of
    linear warmup; cosine and WSD end at `cfg.min_lr_ratio` at the last step."""
    if cfg.schedule == "cosine":
        return schedules.cosine(cfg.num_steps, cfg.warmup_steps, cfg.min_lr_ratio)(step)
    if cfg.schedule == "wsd":
        return schedules.wsd(cfg.num_steps, cfg.warmup_steps, cfg.decay_frac, cfg.min_lr_ratio, cfg.decay_shape)(step)
    return schedules.constant(cfg.warmup_steps)(step)


def decays(module: torch.nn.Module, name: str, p: torch.Tensor) -> bool:
    """Whether AdamW's weight decay applies to parameter `name` of `module`: matrices and embedding tables
    (>= 2 dims) do; biases, norm gains and shifts (also an ensemble's stacked (E, 1, C) ones) and scalars do not."""
    return p.dim() >= 2 and not name.endswith("bias") and "norm" not in type(module).__name__.lower()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters of `model` as AdamW groups: those `decays` picks get `weight_decay`, the rest 0."""
    decay, plain, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:  # a tied weight is listed once
                seen.add(id(p))
                (decay if decays(module, name, p) else plain).append(p)
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0})
            if g["params"]]


def make_optimizer(params: torch.nn.Module | Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named in `cfg`. Given a model, weight decay (when `cfg.weight_decay` > 0) goes to its
    matrices only (`param_groups`); given a list of tensors, to those with >= 2 dims. AdamW and Adam use
    PyTorch's fused kernel when every parameter is a floating-point CUDA tensor."""
    if isinstance(params, torch.nn.Module):
        groups: list[Any] = (param_groups(params, cfg.weight_decay) if cfg.weight_decay
                             else [p for p in params.parameters() if p.requires_grad])
    else:
        tensors = list(params)
        groups = tensors if not cfg.weight_decay else [g for g in (
            {"params": [p for p in tensors if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in tensors if p.dim() < 2], "weight_decay": 0.0}) if g["params"]]
    flat = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    fused = bool(flat) and all(p.is_cuda and p.is_floating_point() for p in flat)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused or None)


@dataclass
class History:
    """What a run recorded. `loss` is the mean training loss over each logging window."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    evals: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    wall_s: float = 0.0
    steps_run: int = 0  # optimizer steps this process ran (0 when a finished checkpoint was loaded)
    examples_per_s: float = 0.0
    tokens_per_s: float | None = None
    mfu: float | None = None  # model FLOPs utilisation (CUDA only; 6 * params * tokens estimate)

    def final(self, name: str) -> float:
        """The last recorded value of eval `name`."""
        return self.evals[name][-1][1]

    def throughput(self) -> str:
        """One line: examples/s (and tokens/s, MFU where known)."""
        if self.steps_run == 0:
            return "loaded from a finished checkpoint"
        parts = [f"{self.examples_per_s:,.0f} examples/s"]
        if self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:,.0f} tokens/s")
        if self.mfu is not None:
            parts.append(f"MFU {100 * self.mfu:.1f}%")
        return ", ".join(parts)


def train(
    model: torch.nn.Module,
    batch_fn: Callable[[torch.Generator], Any],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    cfg: TrainConfig,
    profile: Profile,
    *,
    examples_per_step: int,
    tokens_per_step: int | None = None,
    evals: Mapping[str, Callable[[], float]] | None = None,
    run_name: str | None = None,
    progress: bool | None = None,
    data_seed_offset: int = 1000,
    data_device: str | torch.device | None = None,
) -> History:
    """Train `model` in place for `cfg.num_steps` steps and return its `History`.

    Batches come from `batch_fn(gen)` with `gen = profile.generator(data_seed_offset)`, so the data
    stream is fixed by the seed; the generator lives on the profile's device (data is drawn where the model
    runs) unless `data_device` says otherwise (`"cpu"` for data only the CPU can generate). With `run_name` set and the full profile (or `cfg.checkpoint_every`
    > 0), checkpoints go to the cache keyed by the run name, config, seed and parameter shapes; a rerun
    resumes from the latest one, and a finished run is loaded instead of retrained.
    `progress=None` shows a bar for the full profile only; `PTM_PROGRESS=0/1` overrides.

    Launched by `torchrun` (WORLD_SIZE > 1) it trains data-parallel: the model is wrapped in DDP, every rank
    draws the same global batch and keeps its 1/world slice (`shard`), gradients are averaged, so the run
    matches one process with the same global batch; only rank 0 shows progress, saves checkpoints and logs.
    """
    rank, world = distributed()
    model.to(profile.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, cfg))
    gen = profile.generator(data_seed_offset, device=data_device)
    hist = History()
    evals = dict(evals or {})

    folder = _checkpoint_folder(model, cfg, profile, run_name, (batch_fn, loss_fn)) if rank == 0 else None
    every = cfg.checkpoint_every or max(1, cfg.num_steps // 10)
    start = 0
    if folder is not None and (ckpt := load_checkpoint(folder, model)) is not None:
        start, done, state = ckpt
        _restore(state, opt, sched, gen, hist)
        if done:
            model.eval()
            return hist

    fwd = torch.compile(model) if cfg.compile and profile.is_cuda else model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        fwd = DistributedDataParallel(fwd, device_ids=[profile.device.index or 0] if profile.is_cuda else None)
    show = _progress_enabled(progress, profile) and rank == 0
    bar = tqdm(total=cfg.num_steps, initial=start, disable=not show, desc=run_name or "train", leave=True)
    running = torch.zeros((), device=profile.device)
    window = 0
    t0 = time.perf_counter()
    for step in range(start, cfg.num_steps):
        batch = batch_fn(gen) if world == 1 else shard(batch_fn(gen), rank, world)
        with profile.autocast() if cfg.autocast else contextlib.nullcontext():
            loss = loss_fn(fwd, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        running += loss.detach()
        window += 1
        bar.update(1)
        last = step == cfg.num_steps - 1
        if (step + 1) % cfg.log_every == 0 or last:
            hist.step.append(step + 1)
            if world > 1:  # the global batch's mean loss: the mean of the ranks' shard means
                torch.distributed.all_reduce(running)
                running /= world
            hist.loss.append(running.item() / window)
            hist.lr.append(opt.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{hist.loss[-1]:.4f}")
            running.zero_()
            window = 0
        if evals and (last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0)):
            _run_evals(model, evals, step + 1, hist)
        if folder is not None and ((step + 1) % every == 0 or last):
            wall = hist.wall_s + time.perf_counter() - t0
            save_checkpoint(folder, model, _state(opt, sched, gen, hist, wall), step + 1, done=last)
    bar.close()
    if profile.is_cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    _record_speed(hist, cfg.num_steps - start, elapsed, examples_per_step, tokens_per_step, model, profile)
    if (path := os.environ.get("PTM_TRAIN_LOG")) and rank == 0:
        log_run(Path(path), run_name, hist, count_params(model))
    model.eval()
    return hist


def log_run(path: Path, run_name: str | None, hist: History, n_params: int) -> None:
    """Append one JSON line about a finished `train` call to `path` (set `PTM_TRAIN_LOG` to collect a chapter's
    training runs: `ptm gpu-check` sums their steps, time and throughput per chapter)."""
    row = {"run": run_name, "params": n_params, "steps": hist.steps_run, "wall_s": round(hist.wall_s, 3),
           "examples_per_s": hist.examples_per_s, "tokens_per_s": hist.tokens_per_s, "mfu": hist.mfu}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def fit(
    model: torch.nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    targets: torch.Tensor,
    cfg: TrainConfig,
    profile: Profile,
    *,
    batch: int = 32,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    evals: Mapping[str, Callable[[], float]] | None = None,
    data_seed_offset: int = 1000,
    run_name: str | None = None,
) -> History:
    """`train` on arrays: each step draws `batch` random rows (with replacement) of `inputs` (N, ...) or of
    a tuple of such tensors, and minimises `loss(model(*rows), targets[rows])` (cross-entropy by default).
    `transform` maps the first input's rows before the model (e.g. augmentation noise). Rows move to the
    profile's device one batch at a time, so the arrays may stay on the CPU."""
    xs = inputs if isinstance(inputs, tuple) else (inputs,)
    n = len(targets)
    if any(len(x) != n for x in xs):
        raise ValueError(f"inputs and targets differ in length: {[len(x) for x in xs]} vs {n}")
    dev = profile.device

    def loss_fn(m: torch.nn.Module, i: torch.Tensor) -> torch.Tensor:
        rows = [x[i.to(x.device)] for x in xs]  # indices come on the generator's device, arrays may be elsewhere
        if transform is not None:
            rows[0] = transform(rows[0])
        return loss(m(*(r.to(dev) for r in rows)), targets[i.to(targets.device)].to(dev))

    return train(model, index_batches(n, batch), loss_fn, cfg, profile, examples_per_step=batch, evals=evals,
                 run_name=run_name, progress=False, data_seed_offset=data_seed_offset)


def _run_evals(model: torch.nn.Module, evals: Mapping[str, Callable[[], float]], step: int, hist: History) -> None:
    model.eval()
    with torch.no_grad():
        for name, fn in evals.items():
            hist.evals.setdefault(name, []).append((step, float(fn())))
    model.train()


def _record_speed(hist: History, steps: int, elapsed: float, examples: int, tokens: int | None,
                  model: torch.nn.Module, profile: Profile) -> None:
    hist.steps_run = steps
    hist.wall_s += elapsed
    if steps == 0 or elapsed <= 0:
        return
    hist.examples_per_s = steps * examples / elapsed
    hist.tokens_per_s = steps * tokens / elapsed if tokens else None
    if profile.is_cuda and hist.tokens_per_s:
        name = torch.cuda.get_device_name(profile.device)
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        n_params = count_params(model)
        hist.mfu = 6 * n_params * hist.tokens_per_s / peak if peak else None


def distributed() -> tuple[int, int]:
    """(rank, world size): under `torchrun` (WORLD_SIZE > 1) the process group is set up on first use (NCCL on
    CUDA, with this process on GPU LOCAL_RANK; gloo on CPU); (0, 1) in a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def shard(batch: Any, rank: int, world: int) -> Any:
    """Rank `rank`'s slice of a global batch: every tensor split along dim 0 into `world` equal parts (also
    inside tuples, lists, dicts and dataclasses). ValueError when the batch does not divide evenly."""
    if isinstance(batch, torch.Tensor):
        if len(batch) % world:
            raise ValueError(f"a global batch of {len(batch)} does not split over {world} ranks")
        n = len(batch) // world
        return batch[rank * n:(rank + 1) * n]
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard(b, rank, world) for b in batch)
    if isinstance(batch, dict):
        return {k: shard(v, rank, world) for k, v in batch.items()}
    if is_dataclass(batch):
        return replace(batch, **{f.name: shard(getattr(batch, f.name), rank, world) for f in fields(batch)})
    return batch  # a scalar or a flag: the same on every rank


def _progress_enabled(progress: bool | None, profile: Profile) -> bool:
    env = os.environ.get("PTM_PROGRESS")
    if env in ("0", "1"):
        return env == "1"
    return profile.name == "full" if progress is None else progress


def _checkpoint_folder(model: torch.nn.Module, cfg: TrainConfig, profile: Profile, run_name: str | None,
                       fns: tuple[Callable[..., Any], ...]) -> Path | None:
    if run_name is None or not (profile.name == "full" or cfg.checkpoint_every > 0):
        return None
    shapes = [(n, tuple(p.shape)) for n, p in model.state_dict().items()]
    key = json.dumps([asdict(cfg), profile.seed, shapes, code_version(fns)], sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "checkpoints" / f"{run_name}-{digest}"


PACKAGE_DIR = Path(__file__).resolve().parent
TOOLING = "book"  # ptmlib/book: the CLI, runner, report, site check; no computation depends on it


def source_digest(package: Path | None = None) -> str:
    """sha256 over the library's sources that computations depend on: every `.py` under `ptmlib/` except
    the book tooling (`ptmlib/book/`), so editing the report or the site check keeps every cache key."""
    package = PACKAGE_DIR if package is None else package
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if rel.parts[0] == TOOLING:
            continue
        h.update(rel.as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def code_version(fns: tuple[Callable[..., Any], ...], package: Path | None = None) -> str:
    """A digest of the library's sources (`source_digest`) and of the chapter's data and loss functions'
    bytecode, so a checkpoint written by other code is never resumed or loaded."""
    h = hashlib.sha256(source_digest(package).encode())
    for fn in fns:
        code = getattr(fn, "__code__", None)
        if code is not None:
            h.update(code.co_code)
            h.update(repr(code.co_names).encode())
            h.update(repr([c for c in code.co_consts if not hasattr(c, "co_code")]).encode())
    return h.hexdigest()


def _state(opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator, hist: History, wall_s: float
           ) -> dict[str, Any]:
    state = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "data_rng": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": {"step": hist.step, "loss": hist.loss, "lr": hist.lr,
                    "evals": {k: [list(x) for x in v] for k, v in hist.evals.items()}, "wall_s": wall_s},
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _restore(state: dict[str, Any], opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator, hist: History) -> None:
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    h = state["history"]
    hist.step, hist.loss, hist.lr, hist.wall_s = list(h["step"]), list(h["loss"]), list(h["lr"]), h["wall_s"]
    hist.evals = {k: [(int(s), float(v)) for s, v in vals] for k, vals in h["evals"].items()}
