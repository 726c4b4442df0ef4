"""Scaling laws and learning-rate schedules on a source with a known entropy rate.

`fit_scaling_law` fits Chinchilla's form L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al.):
Huber loss (delta 1e-3) between log L and the log of the prediction, written as a log-sum-exp of
(log E, log A - alpha log N, log B - beta log D), minimised by L-BFGS from a grid of starting points.
`train_markov_lm` trains one GPT on a `MarkovSource` and reports its loss as H + KL (exact, no test-set
noise); `schedule_race` trains E copies of one initialisation on identical batches, each with its own
learning-rate schedule (`lm.member_adamw_step`), so schedules are compared on the same data and init.
`power_schedule` is the Power scheduler (Shen et al.): lr = min(lr_max, a * batch * tokens^b).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from ptmlib import lm
from ptmlib.ensemble import member_state, stack_members
from ptmlib.markov import MarkovSource
from ptmlib.objectives.denoising import causal_lm
from ptmlib.profiles import Profile
from ptmlib.train import TrainConfig, lr_multiplier, train


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


def _objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, delta: float) -> float:
    e, a, alpha, b, beta = theta
    pred = logsumexp(np.stack([np.full_like(logN, e), a - alpha * logN, b - beta * logD]), axis=0)
    return float(huber(delta, pred - logL).sum())


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


def excess_eval(model: torch.nn.Module, source: MarkovSource, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Each member's mean KL to the true next-symbol law on sequences x (N, T): (E,). Loss = H + this."""
    device = next(model.parameters()).device
    E = model.E
    out = torch.zeros(E)
    with torch.no_grad():
        for rows in x.split(chunk):
            logits = model(rows.to(device).expand(E, *rows.shape), causal=True)  # (E, n, T, V)
            out += torch.stack([source.excess_loss(logits[e], rows.to(device)).cpu() for e in range(E)]) * len(rows)
    return out / len(x)


def train_markov_lm(source: MarkovSource, pool: torch.Tensor, eval_x: torch.Tensor, width: int, steps: int,
                    P: Profile, batch: int = 16, n_layer: int = 1, lr: float = 1e-2,
                    data_offset: int = 1000) -> tuple[float, int]:
    """Train one GPT of `width` for `steps` steps (cosine to 10%, 5% warmup) on sequences drawn from
    `pool` (N, T) (sampled from `source` once: drawing Markov chains step by step is slow).
    Returns (H + KL on `eval_x`, block parameters N)."""
    torch.manual_seed(P.seed * 1000 + width)
    model = lm.ensemble_lm(1, source.n, width, n_layer, n_head=2 if width % 2 == 0 else 1, max_len=pool.shape[1])
    gen = P.generator(data_offset, device="cpu")

    def batch_fn(_):
        return causal_lm(pool[torch.randint(0, len(pool), (batch,), generator=gen)])

    def loss_fn(m, b):
        return lm.scored_losses(m, b.inputs[None].to(P.device), b.targets[None].to(P.device), None, causal=True).sum()

    cfg = TrainConfig(num_steps=steps, lr=lr, schedule="cosine", warmup_steps=max(1, steps // 20), min_lr_ratio=0.1,
                      grad_clip=None, log_every=max(1, steps))
    train(model, batch_fn, loss_fn, cfg, P, examples_per_step=batch, tokens_per_step=batch * pool.shape[1],
          progress=False)
    return source.entropy_rate + float(excess_eval(model, source, eval_x)[0]), lm.block_params(model)


def power_schedule(lr_max: float, a: float, b: float, batch: int, tokens_per_step: int, total_steps: int,
                   warmup_steps: int = 0, decay_frac: float = 0.1) -> Callable[[int], float]:
    """The Power scheduler (Shen et al.): linear warmup, then lr = min(lr_max, a * batch * n^b) with n
    the tokens seen so far (b < 0: a power-law decay that needs no planned length), then a linear
    decay to 0 over the last `decay_frac` of steps. Returns step -> learning rate."""
    decay_start = total_steps - round(decay_frac * total_steps)

    def lr(step: int) -> float:
        if step < warmup_steps:
            return lr_max * (step + 1) / warmup_steps
        stable = min(lr_max, a * batch * ((step + 1) * tokens_per_step) ** b)
        if step < decay_start:
            return stable
        peak = min(lr_max, a * batch * (decay_start * tokens_per_step) ** b)
        return peak * (total_steps - 1 - step) / max(1, total_steps - 1 - decay_start)

    return lr


def schedule_race(source: MarkovSource, pool: torch.Tensor, eval_x: torch.Tensor,
                  schedules: dict[str, Callable[[int], float]], steps: int, P: Profile, width: int = 32,
                  batch: int = 16, n_layer: int = 1, eval_every: int = 50) -> dict[str, list[tuple[int, float]]]:
    """Train one model per schedule (schedule(step) -> learning rate) from the same initialisation on the
    same batches, as one ensemble. Returns, per schedule, [(step, H + KL)] every `eval_every` steps
    and at the end. Members whose schedules agree up to a step are identical up to that step."""
    names = list(schedules)
    torch.manual_seed(P.seed)
    one = lm.ensemble_lm(1, source.n, width, n_layer, n_head=2, max_len=pool.shape[1])
    model = lm.ensemble_lm(len(names), source.n, width, n_layer, n_head=2, max_len=pool.shape[1])
    model.load_state_dict(stack_members([member_state(one, 0)] * len(names)))
    model.to(P.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.0)
    gen = P.generator(1000, device="cpu")
    curves: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
    for step in range(steps):
        b = causal_lm(pool[torch.randint(0, len(pool), (batch,), generator=gen)])
        inputs, targets = (t.to(P.device).expand(len(names), *t.shape) for t in (b.inputs, b.targets))
        opt.zero_grad(set_to_none=True)
        lm.scored_losses(model, inputs, targets, None, causal=True).sum().backward()
        lm.member_adamw_step(opt, torch.tensor([schedules[n](step) for n in names]))
        if (step + 1) % eval_every == 0 or step == steps - 1:
            losses = excess_eval(model, source, eval_x) + source.entropy_rate
            for n, v in zip(names, losses.tolist()):
                curves[n].append((step + 1, v))
    return curves


def schedule(cfg: TrainConfig) -> Callable[[int], float]:
    """A TrainConfig's learning rate as a function of the step (for `schedule_race`)."""
    return lambda step: cfg.lr * lr_multiplier(step, cfg)
