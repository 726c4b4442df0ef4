"""Scaling laws and learning-rate schedules on a source with a known entropy rate.

`fit_scaling_law` fits Chinchilla's form L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al.):
Huber loss (delta 1e-3) between log L and the log of the prediction, written as a log-sum-exp of
(log E, log A - alpha log N, log B - beta log D), minimised by L-BFGS from a grid of starting points.
`train_markov_lm` trains one GPT on a `MarkovSource` and reports its loss as H + KL (exact, no test-set
noise); `schedule_race` trains E copies of one initialisation on identical batches, each with its own
learning-rate schedule (`ptmlib.schedules`, raced by `lm.race`), so schedules are compared on the same
data and initialisation.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ptmlib import lm
from ptmlib.data import index_batches
from ptmlib.ensemble import member_state, stack_members
from ptmlib.markov import MarkovSource, excess_eval
from ptmlib.objectives.denoising import causal_lm
from ptmlib.profiles import Profile
from ptmlib.train import TrainConfig, train


@dataclass(frozen=True)
class ScalingFit:
    """L(N, D) = E + A / N^alpha + B / D^beta, and the Huber objective it reached."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    objective: float

    def predict(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray:
        return self.E + self.A / np.power(N, self.alpha) + self.B / np.power(D, self.beta)


def fit_scaling_law(N: np.ndarray, D: np.ndarray, L: np.ndarray, delta: float = 1e-3,
                    grid: dict[str, list[float]] | None = None, polish: int = 2, fix_E: float | None = None) -> ScalingFit:
    """Fit Chinchilla's L(N, D) from every start in `grid` (keys e, a, alpha, b, beta; e, a, b are logs
    of E, A, B): all starts descend together with Adam (one batched computation), then the `polish`
    best are refined by L-BFGS; the lowest objective wins. `fix_E` holds E at a known value (the
    entropy rate of a synthetic source) and fits the other four parameters."""
    logN, logD, logL = (np.log(np.asarray(v, dtype=float)) for v in (N, D, L))
    grid = grid or {"e": [-1.0, 0.0, 0.5], "a": [0.0, 5.0], "alpha": [0.3, 1.0], "b": [0.0, 10.0], "beta": [0.3, 1.0]}
    if fix_E is not None:
        grid = {**grid, "e": [math.log(fix_E)]}
    starts = torch.tensor(list(itertools.product(*(grid[k] for k in ("e", "a", "alpha", "b", "beta")))),
                          dtype=torch.float64)
    free = torch.ones(5, dtype=torch.float64)
    if fix_E is not None:
        free[0] = 0.0  # E's gradient is masked: it stays at its start
    tN, tD, tL = (torch.from_numpy(v) for v in (logN, logD, logL))

    def objective(theta: torch.Tensor) -> torch.Tensor:  # (S, 5) -> (S,), scipy's huber / delta
        e, a, alpha, b, beta = theta.T[..., None]
        pred = torch.logsumexp(torch.stack([e.expand(-1, len(tN)), a - alpha * tN, b - beta * tD]), 0)
        return F.huber_loss(pred, tL.expand_as(pred), delta=delta, reduction="none").sum(1) / delta

    theta = starts.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        objective(theta).sum().backward()
        theta.grad *= free
        opt.step()
        with torch.no_grad():
            theta[:, [2, 4]] = theta[:, [2, 4]].clamp(0.0, 3.0)
    best, best_value = None, math.inf
    with torch.no_grad():
        order = objective(theta).argsort()[:polish].tolist()
    for i in order:  # polish: the starts are independent, so L-BFGS runs on each alone
        t = theta[i:i + 1].detach().clone().requires_grad_(True)
        lbfgs = torch.optim.LBFGS([t], max_iter=300, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

        def closure():
            lbfgs.zero_grad()
            value = objective(t).sum()
            value.backward()
            t.grad *= free
            return value

        lbfgs.step(closure)
        value = float(objective(t.detach()).sum()) * delta
        if value < best_value:
            best, best_value = t.detach()[0].numpy(), value
    e, a, alpha, b, beta = best
    return ScalingFit(math.exp(e), math.exp(a), alpha, math.exp(b), beta, best_value)


def train_markov_lm(source: MarkovSource, pool: torch.Tensor, eval_x: torch.Tensor, width: int, steps: int,
                    P: Profile, batch: int = 16, n_layer: int = 1, lr: float = 1e-2,
                    data_offset: int = 1000) -> tuple[float, int]:
    """Train one GPT of `width` for `steps` steps (cosine to 10%, 5% warmup) on sequences drawn from
    `pool` (N, T) (sampled from `source` once: drawing Markov chains step by step is slow).
    Returns (H + KL on `eval_x`, block parameters N)."""
    torch.manual_seed(P.seed * 1000 + width)
    model = lm.ensemble_lm(1, source.n, width, n_layer, n_head=2 if width % 2 == 0 else 1, max_len=pool.shape[1])
    gen = P.generator(data_offset, device="cpu")  # the pool stays on the CPU, so do its indices
    draw = index_batches(len(pool), batch)

    def batch_fn(_):
        return causal_lm(pool[draw(gen)])

    def loss_fn(m, b):
        return lm.scored_losses(m, b.inputs[None].to(P.device), b.targets[None].to(P.device), None, causal=True).sum()

    cfg = TrainConfig(num_steps=steps, lr=lr, schedule="cosine", warmup_steps=max(1, steps // 20), min_lr_ratio=0.1,
                      grad_clip=None, log_every=max(1, steps))
    train(model, batch_fn, loss_fn, cfg, P, examples_per_step=batch, tokens_per_step=batch * pool.shape[1],
          progress=False)
    return source.entropy_rate + float(excess_eval(model, source, eval_x)[0]), lm.block_params(model)


def schedule_race(source: MarkovSource, pool: torch.Tensor, eval_x: torch.Tensor,
                  schedules: dict[str, Callable[[int], float]], steps: int, P: Profile, width: int = 32,
                  batch: int = 16, n_layer: int = 1, eval_every: int = 50) -> dict[str, list[tuple[int, float]]]:
    """Train one model per schedule (schedule(step) -> learning rate) from the same initialisation on the
    same batches of `pool`, as one ensemble (`lm.race`). Returns, per schedule, [(step, H + KL)] at step 0,
    every `eval_every` steps and at the end. Members whose schedules agree up to a step are identical up to
    that step."""
    names = list(schedules)
    torch.manual_seed(P.seed)
    one = lm.ensemble_lm(1, source.n, width, n_layer, n_head=2, max_len=pool.shape[1])
    model = lm.ensemble_lm(len(names), source.n, width, n_layer, n_head=2, max_len=pool.shape[1])
    model.load_state_dict(stack_members([member_state(one, 0)] * len(names)))
    draw = index_batches(len(pool), batch)
    curves = lm.race(model, lambda gen: pool[draw(gen)], [schedules[n] for n in names], steps, P,
                     {"eval": (source, eval_x)}, eval_every)["eval"]
    return {n: [(step, float(losses[e])) for step, losses in curves] for e, n in enumerate(names)}
