"""Arithmetic on weights and logits: model soups, loss barriers, task vectors scaled by layer (LiNeS),
checkpoint combinations (LCSC, EMA) and emulated fine-tuning; `fine_tune` produces the ingredients
(runs and their checkpoints) and `accuracy_and_loss` scores a state.

Models are handled as state dicts {name: tensor}; every function returns new tensors and leaves its
inputs alone. Only floating-point entries are combined (integer buffers are copied from the first).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ptmlib.metrics import accuracy
from ptmlib.profiles import Profile
from ptmlib.train import TrainConfig, fit

State = Mapping[str, torch.Tensor]


def combine(states: Sequence[State], weights: Sequence[float] | torch.Tensor) -> dict[str, torch.Tensor]:
    """sum_k weights[k] * states[k], entry by entry."""
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    out = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            out[name] = sum(w * s[name] for w, s in zip(weights, states))
        else:
            out[name] = first.clone()
    return out


def uniform_soup(states: Sequence[State]) -> dict[str, torch.Tensor]:
    """The plain average of the states (Wortsman et al.'s uniform soup)."""
    return combine(states, [1.0 / len(states)] * len(states))


def greedy_soup(states: Sequence[State], score: Callable[[State], float]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Wortsman et al.'s greedy soup: visit the states from the best held-out `score` down, and keep each
    one in the average only if the average's score does not drop. Returns the soup and the kept indices."""
    order = sorted(range(len(states)), key=lambda i: -score(states[i]))
    kept = [order[0]]
    best = score(states[order[0]])
    for i in order[1:]:
        trial = uniform_soup([states[j] for j in kept + [i]])
        if (s := score(trial)) >= best:
            kept, best = kept + [i], s
    return uniform_soup([states[j] for j in kept]), kept


def interpolation_path(a: State, b: State, loss: Callable[[State], float], n: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss along the straight line (1 - t) a + t b for n values of t in [0, 1]: (ts, losses)."""
    ts = torch.linspace(0, 1, n)
    return ts, torch.tensor([loss(combine([a, b], [1 - float(t), float(t)])) for t in ts])


def barrier(ts: torch.Tensor, losses: torch.Tensor) -> float:
    """Loss barrier of a path: max over t of loss(t) minus the straight line between its endpoints
    (Frankle et al.); 0 for a convex path, large when the midpoint leaves the basin."""
    line = (1 - ts) * losses[0] + ts * losses[-1]
    return float((losses - line).max())


def task_vector(finetuned: State, pretrained: State) -> dict[str, torch.Tensor]:
    """tau = theta_ft - theta_pre for the floating-point entries."""
    return {k: finetuned[k] - pretrained[k] for k, v in pretrained.items() if v.is_floating_point()}


def lines(pretrained: State, finetuned: State, depth: Mapping[str, int], n_layers: int,
          alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """LiNeS (Wang et al.): theta_pre + lambda(l) tau, with lambda growing linearly with depth,
    lambda(l) = alpha + (beta - alpha) * l / (n_layers - 1) for layer l = depth[name] in 0..n_layers-1.
    Shallow layers (general features) keep little of the update, deep layers keep most of it."""
    tau = task_vector(finetuned, pretrained)
    out = {k: v.clone() for k, v in pretrained.items()}
    for name, t in tau.items():
        scale = alpha + (beta - alpha) * depth[name] / max(1, n_layers - 1)
        out[name] = pretrained[name] + scale * t
    return out


def ema(states: Sequence[State], decay: float) -> dict[str, torch.Tensor]:
    """Exponential moving average over a sequence of checkpoints, oldest first:
    e_k = decay * e_{k-1} + (1 - decay) * s_k, e_0 = s_0."""
    k = len(states)
    weights = [(1 - decay) * decay ** (k - 1 - i) for i in range(k)]
    weights[0] = decay ** (k - 1)
    return combine(states, weights)


def lcsc_search(states: Sequence[State], score: Callable[[State], float], gen: torch.Generator,
                iters: int = 30, population: int = 8, sigma: float = 0.1) -> tuple[torch.Tensor, float]:
    """LCSC (Liu et al.): search the coefficients of a linear combination of saved checkpoints for the
    best held-out `score`, by a simple evolution strategy. Starts at the last checkpoint (weights
    (0, ..., 0, 1)); each generation perturbs the best coefficients with Gaussian noise (std `sigma`),
    renormalises them to sum to 1 and keeps a candidate only if it scores higher. Returns (weights, score)."""
    k = len(states)
    best = torch.zeros(k)
    best[-1] = 1.0
    best_score = score(combine(states, best))
    for _ in range(iters):
        for _ in range(population):
            cand = best + sigma * torch.randn(k, generator=gen)
            cand = cand / cand.sum()
            if (s := score(combine(states, cand))) > best_score:
                best, best_score = cand, s
    return best, best_score


def eft_logprobs(large_base: torch.Tensor, small_tuned: torch.Tensor, small_base: torch.Tensor) -> torch.Tensor:
    """Emulated fine-tuning (Mitchell et al.): log p(x) = log p_large_base + log p_small_tuned -
    log p_small_base, renormalised over the last axis. Inputs are logits (..., V); returns log-probs."""
    ls = torch.log_softmax
    return ls(ls(large_base, -1) + ls(small_tuned, -1) - ls(small_base, -1), -1)


@torch.no_grad()
def accuracy_and_loss(model: nn.Module, state: State, x: torch.Tensor, y: torch.Tensor,
                      classes: Sequence[int] | None = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` run with the weights `state` on x, y (same device).
    `classes` restricts the prediction to those output columns (y must hold their original labels)."""
    logits = functional_call(model, dict(state), (x,))
    if classes is not None:
        idx = torch.tensor(classes, device=logits.device)
        logits, y = logits[:, idx], torch.searchsorted(idx, y)
    return accuracy(logits, y), float(F.cross_entropy(logits, y))




def fine_tune_arrays(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, profile: Profile, *,
              batch: int = 32, noise: float = 0.0, data_seed_offset: int = 1000,
              snapshot_every: int = 0) -> list[dict[str, torch.Tensor]]:
    """Fine-tune a classifier on arrays x (N, d), y (N,) with `ptm.fit` (cross-entropy on random minibatches),
    adding Gaussian input noise of std `noise` (augmentation; its own CPU generator, offset
    data_seed_offset + 1). Returns CPU copies of the state dict taken every `snapshot_every` steps (empty
    when 0): the checkpoints that soups, EMA and LCSC combine. Leaves the model on the CPU."""
    snaps: list[dict[str, torch.Tensor]] = []
    noise_gen = profile.generator(data_seed_offset + 1, device="cpu")

    def snapshot() -> float:
        snaps.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        return 0.0

    if snapshot_every:
        cfg = replace(cfg, eval_every=snapshot_every)
    fit(model, x, y, cfg, profile, batch=batch, data_seed_offset=data_seed_offset,
        transform=(lambda rows: rows + noise * torch.randn(rows.shape, generator=noise_gen)) if noise else None,
        evals={"snapshot": snapshot} if snapshot_every else None)
    model.cpu()
    return snaps


def token_nll(logprobs: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean negative log-likelihood of the next tokens: logprobs (B, T, V) predict ids[:, 1:] from
    positions 0..T-2."""
    lp = logprobs[:, :-1]
    return float(F.nll_loss(lp.reshape(-1, lp.shape[-1]), ids[:, 1:].reshape(-1)))
