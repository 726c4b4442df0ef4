"""Continual learning: task streams, the accuracy matrix and its metrics, a replay buffer, and EWC.

The accuracy matrix R (T, T) holds R[i, j] = accuracy on task j after training on tasks 0..i.
With T tasks (0-based):

    average accuracy      A   = (1/T) sum_j R[T-1, j]
    average forgetting    F   = 1/(T-1) sum_{j<T-1} max_{l<T-1} (R[l, j] - R[T-1, j])   (Chaudhry et al. 2018)
    backward transfer     BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])                 (Lopez-Paz & Ranzato 2017)
    forward transfer      FWT = 1/(T-1) sum_{j>0} (R[j-1, j] - b[j])                       (b: accuracy of an untrained model)

Forgetting is >= 0; backward transfer is negative when learning later tasks hurt earlier ones.

Training (`train_sequentially`) uses either a global loss (cross-entropy over all classes) or a local
one (over the current task's classes only; evaluation then chooses among the classes seen so far),
and takes hooks for parameter-efficient methods: LAE's online/offline experts (`LAE`) and rank-
selective LoRA (`adapters.GatedLoRALinear`). The methods beyond training: a nearest-class-mean
classifier, a discrete key-value bottleneck (with its Gaussian-rings toy), and `mixed_batches`, replay
of the old pretraining data during continued pretraining of a language model (`ptmlib.lm.race`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.data import index_batches
from ptmlib.metrics import accuracy


def class_incremental_tasks(classes: Sequence[int], n_tasks: int, gen: torch.Generator | None = None) -> list[tuple[int, ...]]:
    """Split `classes` into `n_tasks` disjoint groups of equal size, in the given order or in a random
    order drawn from `gen`. Raises if the classes do not divide evenly."""
    classes = list(classes)
    if len(classes) % n_tasks:
        raise ValueError(f"{len(classes)} classes do not split into {n_tasks} equal tasks")
    if gen is not None:
        classes = [classes[i] for i in torch.randperm(len(classes), generator=gen)]
    k = len(classes) // n_tasks
    return [tuple(classes[t * k:(t + 1) * k]) for t in range(n_tasks)]


def split_by_task(x: torch.Tensor, y: torch.Tensor, tasks: Sequence[tuple[int, ...]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The examples of each task's classes, in task order: [(x_t, y_t), ...] (labels unchanged)."""
    out = []
    for task in tasks:
        keep = torch.isin(y, torch.tensor(task, device=y.device))
        out.append((x[keep], y[keep]))
    return out


def domain_incremental(x: torch.Tensor, y: torch.Tensor, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                       gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Domain-incremental stream: a random disjoint share of the data per task, each seen through its
    own input transform (same label space throughout)."""
    order = torch.randperm(len(x), generator=gen)
    chunks = order.chunk(len(transforms))
    return [(t(x[idx]), y[idx]) for t, idx in zip(transforms, chunks)]


def average_accuracy(R: torch.Tensor) -> float:
    """Mean accuracy over all tasks after the last one: mean_j R[T-1, j]."""
    return float(R[-1].mean())


def average_forgetting(R: torch.Tensor) -> float:
    """Mean over the first T-1 tasks of the drop from their best earlier accuracy to the final one."""
    T = R.shape[0]
    if T < 2:
        return 0.0
    best = R[:-1, :-1].max(0).values  # best accuracy on task j before the last task
    return float((best - R[-1, :-1]).mean())


def backward_transfer(R: torch.Tensor) -> float:
    """Mean over the first T-1 tasks of (final accuracy - accuracy right after learning the task)."""
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float((R[-1, :-1] - R.diagonal()[:-1]).mean())


def forward_transfer(R: torch.Tensor, baseline: torch.Tensor) -> float:
    """Mean over tasks 1..T-1 of (accuracy before training on the task - an untrained model's)."""
    T = R.shape[0]
    if T < 2:
        return 0.0
    before = torch.stack([R[j - 1, j] for j in range(1, T)])
    return float((before - baseline[1:]).mean())


class ReservoirBuffer:
    """A fixed-size replay memory filled by reservoir sampling (Vitter's algorithm R): after n items
    have been offered, each of them is in the buffer with probability capacity / n."""

    def __init__(self, capacity: int, gen: torch.Generator) -> None:
        self.capacity, self.gen, self.seen, self._n = capacity, gen, 0, 0
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None

    def __len__(self) -> int:
        return self._n

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Offer a batch of examples x (B, ...), y (B,) one by one."""
        for xi, yi in zip(x, y):
            if self.x is None:
                self.x = torch.empty((self.capacity, *xi.shape), dtype=xi.dtype)
                self.y = torch.empty(self.capacity, dtype=yi.dtype)
            if self._n < self.capacity:
                self.x[self._n], self.y[self._n] = xi, yi
                self._n += 1
            else:
                j = int(torch.randint(0, self.seen + 1, (1,), generator=self.gen))
                if j < self.capacity:
                    self.x[j], self.y[j] = xi, yi
            self.seen += 1

    def sample(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k examples drawn uniformly with replacement from the buffer."""
        if self._n == 0:
            raise ValueError("the buffer is empty")
        idx = torch.randint(0, self._n, (k,), generator=self.gen)
        return self.x[idx], self.y[idx]


class EWC:
    """Elastic weight consolidation (Kirkpatrick et al. 2017): after a task, remember the weights
    theta* and the diagonal empirical Fisher F_i = E[(d log p(y|x) / d theta_i)^2]; later tasks add
    (lambda / 2) sum_i F_i (theta_i - theta*_i)^2 to their loss. Several tasks accumulate."""

    def __init__(self, strength: float) -> None:
        self.strength = strength
        self.terms: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def consolidate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1) -> None:
        """Add the Fisher and anchor of the task with data (x, y); per-example gradients when batch = 1."""
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        for i in range(0, len(x), batch):
            model.zero_grad()
            F.cross_entropy(model(x[i:i + batch]), y[i:i + batch], reduction="sum").backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach() ** 2
        model.zero_grad()
        self.terms.append(({n: f / len(x) for n, f in fisher.items()}, {n: p.detach().clone() for n, p in params.items()}))

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """(lambda / 2) sum over consolidated tasks of sum_i F_i (theta_i - theta*_i)^2."""
        params = dict(model.named_parameters())
        total = torch.zeros(())
        for fisher, anchor in self.terms:
            for n, f in fisher.items():
                total = total + (f * (params[n] - anchor[n]) ** 2).sum()
        return 0.5 * self.strength * total


class Rows:
    """Several tensors with the same first dimension, indexed together: rows[i] is Rows(t[i] for each t).
    Lets a model with several inputs, model(a, b, c), ride through `split_by_task` and `train_sequentially`."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        if len({len(t) for t in tensors}) != 1:
            raise ValueError(f"Rows needs tensors of equal length, got {[len(t) for t in tensors]}")
        self.tensors = tensors

    def __getitem__(self, i: torch.Tensor | slice | int) -> Rows:
        return Rows(*(t[i] for t in self.tensors))

    def __len__(self) -> int:
        return len(self.tensors[0])


class CosineClassifier(nn.Module):
    """body(*inputs) -> features (B, d) -> L2-normalised, times `scale` -> linear head (B, n_classes).
    Inputs are a tensor or `Rows`."""

    def __init__(self, body: nn.Module, dim: int, n_classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.body, self.scale = body, scale
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor | Rows) -> torch.Tensor:
        feats = self.body(*x.tensors) if isinstance(x, Rows) else self.body(x)
        return self.head(F.normalize(feats, dim=-1) * self.scale)


def restrict(logits: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    """Logits (N, C) with every class outside `classes` set to -inf (no change when classes is None)."""
    if classes is None:
        return logits
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[classes] = True
    return logits.masked_fill(~keep, float("-inf"))


@torch.no_grad()
def accuracy_row(model: Callable[[torch.Tensor], torch.Tensor], tests: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 classes: torch.Tensor | None = None) -> torch.Tensor:
    """Accuracy of model (x -> scores over all classes) on each task's test set: (T,); with `classes`,
    the prediction is chosen among those classes only (the classes seen so far)."""
    return torch.tensor([accuracy(restrict(model(x), classes), y) for x, y in tests])


def train_sequentially(model: nn.Module, stream: Sequence[tuple[torch.Tensor, torch.Tensor]],
                       tests: Sequence[tuple[torch.Tensor, torch.Tensor]], steps: int, gen: torch.Generator, *,
                       lr: float = 1e-3, batch: int = 32, optimizer: str = "adam",
                       replay: ReservoirBuffer | None = None, ewc: EWC | None = None, local: bool = False,
                       lr_by_suffix: Mapping[str, float] | None = None,
                       after_step: Callable[[nn.Module], None] | None = None,
                       after_task: Callable[[nn.Module, int], None] | None = None,
                       views: Mapping[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] | None = None,
                       ) -> torch.Tensor | dict[str, torch.Tensor]:
    """Train `model` on the tasks of `stream` one after another (one optimiser per task, no task
    identity at test time) and return the accuracy matrix R (T, T).

    The loss is cross-entropy over all classes (global), or with `local` over the current task's
    classes only - then the rows of earlier classes in the head get no gradient, and evaluation picks
    among the classes seen so far. With `replay`, every step adds a minibatch of the same size from the
    buffer, and each task's data is offered to the buffer after the task; with `ewc`, its penalty is
    added and each task is consolidated after training. `lr_by_suffix` gives parameters whose names end
    with a suffix their own learning rate; `after_step(model)` runs after every optimiser step,
    `after_task(model, t)` after each task's evaluation. With `views` (name -> f(x, seen classes) ->
    scores, e.g. LAE's experts), every view is evaluated too and a dict {"model": R, name: R, ...} is returned."""
    T = len(stream)
    R = {"model": torch.zeros(T, T), **{name: torch.zeros(T, T) for name in views or {}}}
    seen: list[int] = []
    for t, (x, y) in enumerate(stream):
        task = y.unique()
        seen += task.tolist()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        special = {sfx: [p for n, p in named if n.endswith(sfx)] for sfx in lr_by_suffix or {}}
        plain = [p for n, p in named if not any(n.endswith(sfx) for sfx in special)]
        groups = [{"params": plain}] + [{"params": ps, "lr": (lr_by_suffix or {})[sfx]} for sfx, ps in special.items() if ps]
        opt = torch.optim.Adam(groups, lr=lr) if optimizer == "adam" else torch.optim.SGD(groups, lr=lr)
        draw = index_batches(len(x), batch)
        for _ in range(steps):
            i = draw(gen)
            xb, yb = x[i], y[i]
            if replay is not None and len(replay):
                rx, ry = replay.sample(batch)
                xb, yb = torch.cat([xb, rx]), torch.cat([yb, ry])
            logits = model(xb)
            loss = F.cross_entropy(restrict(logits, task) if local else logits, yb)
            if ewc is not None and ewc.terms:
                loss = loss + ewc.penalty(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
        if replay is not None:
            replay.add(x, y)
        if ewc is not None:
            ewc.consolidate(model, x, y, batch=16)
        classes = torch.tensor(seen) if local else None
        R["model"][t] = accuracy_row(model, tests, classes)
        for name, view in (views or {}).items():
            R[name][t] = accuracy_row(lambda inp: view(inp, classes), tests, classes)
        if after_task is not None:
            after_task(model, t)
    return R if views else R["model"]


class LAE:
    """Learning-accumulation-ensemble (Gao et al., P90) around a model whose trainable parameters are a
    parameter-efficient module: the model itself is the *online* expert; the *offline* expert has the
    same frozen weights and an exponential moving average of the trainable ones, updated after every
    step (`accumulate`): offline <- m * offline + (1 - m) * online. `ensemble` takes, class by class,
    the larger of the two experts' probabilities."""

    def __init__(self, model: nn.Module, momentum: float) -> None:
        self.momentum = momentum
        self.offline = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def accumulate(self, model: nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.offline:
                self.offline[n].mul_(self.momentum).add_(p.detach(), alpha=1 - self.momentum)

    @contextmanager
    def offline_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block, `model` carries the offline expert's parameters; restored afterwards."""
        params = dict(model.named_parameters())
        online = {n: params[n].detach().clone() for n in self.offline}
        with torch.no_grad():
            for n, v in self.offline.items():
                params[n].copy_(v)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, v in online.items():
                    params[n].copy_(v)

    @torch.no_grad()
    def offline_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with self.offline_weights(model) as m:
            return m(x)

    @torch.no_grad()
    def ensemble(self, model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Class-wise max of the online and offline experts' probabilities over `classes` (N, C)."""
        online = restrict(model(x), classes).softmax(-1)
        offline = restrict(self.offline_logits(model, x), classes).softmax(-1)
        return torch.maximum(online, offline)


class NearestMean:
    """Nearest class mean on frozen features (cosine): the exemplar-free baseline of Janson et al.
    (P8). Learning a task only adds its class means, so earlier classes are never overwritten."""

    def __init__(self, n_classes: int, dim: int) -> None:
        self.means = torch.zeros(n_classes, dim)
        self.seen = torch.zeros(n_classes, dtype=torch.bool)

    def learn(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for c in y.unique():
            self.means[c] = F.normalize(x[y == c], dim=-1).mean(0)
            self.seen[c] = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N, n_classes): cosine to each class mean, -inf for classes not seen yet."""
        scores = F.normalize(x, dim=-1) @ F.normalize(self.means, dim=-1).T
        return scores.masked_fill(~self.seen, float("-inf"))


class KeyValueBottleneck(nn.Module):
    """Discrete key-value bottleneck (Traeuble et al., P99): the input is projected into `heads` low-
    dimensional queries by fixed random matrices; each query picks its nearest key (keys sampled from
    unlabeled data, then frozen) and reads that key's trainable value (n_classes,); the output is the
    mean of the read values. Only the selected values receive gradients, so learning one region of
    input space leaves the values of the others untouched. x (N, d) -> (N, n_classes)."""

    def __init__(self, unlabeled: torch.Tensor, n_classes: int, gen: torch.Generator, heads: int = 16,
                 keys: int = 64, key_dim: int = 2) -> None:
        super().__init__()
        d = unlabeled.shape[1]
        self.register_buffer("proj", torch.randn(heads, key_dim, d, generator=gen) / d ** 0.5)
        z = torch.einsum("hkd,nd->hnk", self.proj, unlabeled)
        pick = index_batches(len(unlabeled), heads * keys)(gen).view(heads, keys)  # the keys' data rows
        self.register_buffer("keys", torch.stack([z[h, pick[h]] for h in range(heads)]))
        self.values = nn.Parameter(torch.zeros(heads, keys, n_classes))

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest key per head: (heads, N)."""
        return torch.cdist(torch.einsum("hkd,nd->hnk", self.proj, x), self.keys).argmin(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sel = self.select(x)
        return torch.stack([self.values[h][sel[h]] for h in range(len(sel))]).mean(0)


def gaussian_rings(n: int, gen: torch.Generator, n_classes: int = 8, radius: float = 3.0,
                   noise: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The bottleneck paper's toy: n points in 2-D from n_classes Gaussian blobs evenly spaced on a
    circle of `radius` (std `noise`), with their class labels."""
    angle = 2 * torch.pi * torch.arange(n_classes) / n_classes
    centres = radius * torch.stack([angle.cos(), angle.sin()], 1)
    y = torch.randint(0, n_classes, (n,), generator=gen)
    return centres[y] + noise * torch.randn(n, 2, generator=gen), y


def mixed_batches(pool_new: torch.Tensor, pool_old: torch.Tensor, batch: int, replay: float) -> Callable[[torch.Generator], torch.Tensor]:
    """A batch function drawing round(replay * batch) sequences from the old source's pool and the
    rest from the new one's (replay of the pretraining data during continued pretraining): new rows first."""
    n_old = round(replay * batch)
    parts = [(pool, index_batches(len(pool), n)) for pool, n in ((pool_new, batch - n_old), (pool_old, n_old)) if n > 0]

    def draw(gen: torch.Generator) -> torch.Tensor:
        return torch.cat([pool[rows(gen)] for pool, rows in parts])

    return draw
