"""Constrained Bayesian optimisation on [0, 1] with a GP or a PFN surrogate (Picard & Ahmed 2024).

Minimise f(x) subject to g(x) <= 0, both black boxes, over a grid of candidates. Each step fits the
surrogate to the observations of f and of g and evaluates the candidate that maximises constrained
expected improvement, EI_f(x) * P(g(x) <= 0) (Gardner et al. 2014); until a feasible point is found
it maximises the probability of feasibility alone. Observations are standardised before they reach
the surrogate, which was built for a zero-mean, unit-scale prior.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ptmlib.icl.bars import BarDistribution
from ptmlib.icl.gp import gp_posterior


class Surrogate(Protocol):
    """A predictive model fitted to standardised data x (k, 1), y (k,), queried at candidates x_q (m, 1)."""

    def expected_improvement(self, x: torch.Tensor, y: torch.Tensor, x_q: torch.Tensor, best: float) -> torch.Tensor:
        """E[max(best - y(x_q), 0)]: (m,)."""
        ...

    def prob_below(self, x: torch.Tensor, y: torch.Tensor, x_q: torch.Tensor, threshold: float) -> torch.Tensor:
        """P(y(x_q) <= threshold): (m,)."""
        ...


def gaussian_ei(mean: torch.Tensor, std: torch.Tensor, best: float) -> torch.Tensor:
    """Closed-form E[max(best - Y, 0)] for Y ~ N(mean, std^2)."""
    z = (best - mean) / std
    normal = torch.distributions.Normal(0.0, 1.0)
    return (best - mean) * normal.cdf(z) + std * torch.exp(normal.log_prob(z))


@dataclass
class GPSurrogate:
    lengthscale: float
    noise_var: float

    def _predict(self, x, y, x_q):
        mean, var = gp_posterior(x[None], y[None], x_q[None], self.lengthscale, 1.0, self.noise_var)
        return mean[0], var[0].clamp_min(1e-12).sqrt()

    def expected_improvement(self, x, y, x_q, best):
        return gaussian_ei(*self._predict(x, y, x_q), best)

    def prob_below(self, x, y, x_q, threshold):
        mean, std = self._predict(x, y, x_q)
        return torch.distributions.Normal(mean, std).cdf(torch.tensor(threshold, device=std.device))


@dataclass
class PFNSurrogate:
    model: torch.nn.Module  # a PFN of one member (or `member` selects one)
    bars: BarDistribution
    member: int = 0

    @torch.no_grad()
    def _logits(self, x, y, x_q):
        return self.model(x[None], y[None], x_q[None])[self.member, 0].float()  # (m, K)

    def expected_improvement(self, x, y, x_q, best):
        return self.bars.expected_improvement(self._logits(x, y, x_q), best)

    def prob_below(self, x, y, x_q, threshold):
        return self.bars.cdf(self._logits(x, y, x_q), torch.full((len(x_q),), threshold, device=x_q.device))


def constrained_ei(surrogate: Surrogate, x: torch.Tensor, f_obs: torch.Tensor, g_obs: torch.Tensor,
                   candidates: torch.Tensor) -> torch.Tensor:
    """EI_f(x) * P(g(x) <= 0) at the candidates, from standardised observations; P(g(x) <= 0) alone while
    no feasible point is known."""
    gy, g_mean, g_std = _standardise(g_obs)
    score = surrogate.prob_below(x, gy, candidates, -g_mean / g_std)
    feasible = g_obs <= 0
    if feasible.any():
        fy, _, _ = _standardise(f_obs)
        score = score * surrogate.expected_improvement(x, fy, candidates, float(fy[feasible].min()))
    return score


@dataclass
class BOResult:
    best_feasible: list[float] = field(default_factory=list)  # best feasible f after each evaluation (inf if none)
    seconds: float = 0.0  # time spent in the surrogate and the acquisition


def _standardise(v: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    mu, sd = float(v.mean()), float(v.std()) if len(v) > 1 else 1.0
    sd = sd if sd > 1e-6 else 1.0
    return (v - mu) / sd, mu, sd


def constrained_bo(f: torch.Tensor, g: torch.Tensor, grid: torch.Tensor, surrogate: Surrogate | None,
                   n_init: int, n_iter: int, gen: torch.Generator) -> BOResult:
    """Run BO on tabulated black boxes f, g (m,) over grid (m, 1); `surrogate=None` is random search."""
    chosen = torch.randperm(len(grid), generator=gen, device=gen.device)[:n_init].tolist()
    res = BOResult()
    for step in range(n_init + n_iter):
        if step >= n_init:
            t0 = time.perf_counter()
            idx = torch.tensor(chosen, device=grid.device)
            if surrogate is None:
                free = torch.ones(len(grid), dtype=torch.bool, device=grid.device)
                free[idx] = False
                cand = free.nonzero().squeeze(1)
                pick = int(cand[torch.randint(len(cand), (1,), generator=gen, device=gen.device)])
            else:
                score = constrained_ei(surrogate, grid[idx], f[idx], g[idx], grid)
                score[idx] = -1.0  # never re-evaluate
                pick = int(score.argmax())
            res.seconds += time.perf_counter() - t0
            chosen.append(pick)
        seen = torch.tensor(chosen[: step + 1], device=f.device)
        fs, gs = f[seen], g[seen]
        ok = gs <= 0
        res.best_feasible.append(float(fs[ok].min()) if ok.any() else math.inf)
    return res


def sample_functions(n: int, grid: torch.Tensor, lengthscale: float, gen: torch.Generator) -> torch.Tensor:
    """n noiseless functions from the GP prior tabulated on grid (m, 1): (n, m)."""
    from ptmlib.icl.gp import rbf_kernel

    cov = rbf_kernel(grid[None], grid[None], lengthscale)[0] + 1e-5 * torch.eye(len(grid), device=grid.device)
    return (torch.linalg.cholesky(cov) @ torch.randn(len(grid), n, generator=gen, device=gen.device)).T


def mean_regret(problems: list[tuple[torch.Tensor, torch.Tensor]], grid: torch.Tensor, surrogate: Surrogate | None,
                n_init: int, n_iter: int, gens: list[torch.Generator]) -> tuple[list[float], float]:
    """Mean regret after each evaluation (best feasible f found minus the true constrained minimum, over
    the runs that have found a feasible point) across problems (f, g), and the total surrogate time in s."""
    runs, seconds = [], 0.0
    for (f, g), gen in zip(problems, gens):
        res = constrained_bo(f, g, grid, surrogate, n_init, n_iter, gen)
        best = f[g <= 0].min().item()
        runs.append([v - best if math.isfinite(v) else math.nan for v in res.best_feasible])
        seconds += res.seconds
    table = torch.tensor(runs, dtype=torch.float64)  # (problems, evaluations)
    return torch.nanmean(table, 0).tolist(), seconds


def tuned_mass_damper(zeta: torch.Tensor, mass_ratio: float = 0.05, n_freq: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """A toy engineering design: a tuned mass damper (Den Hartog 1956) on an undamped unit oscillator.

    The damper (mass mu, tuned to the optimal frequency ratio 1 / (1 + mu), damping ratio `zeta`) is
    attached to the main mass; a harmonic force drives the main mass. Returns, for each zeta, the peak
    dynamic amplification of the main mass and the peak stroke of the damper (relative displacement),
    both over forcing frequencies 0.5..1.6 (per unit static deflection). Too little damping leaves two
    resonant peaks; too much locks the damper to the mass; the optimum (Den Hartog) has a peak
    amplification of about sqrt(1 + 2 / mu).
    """
    w = torch.linspace(0.5, 1.6, n_freq, dtype=torch.float64, device=zeta.device)  # forcing frequency / natural frequency
    mu, tune = mass_ratio, 1 / (1 + mass_ratio)
    spring_damper = mu * tune**2 + 2j * zeta.double().unsqueeze(-1) * mu * tune * w  # (n, F) complex stiffness of the damper link
    a11 = 1.0 + spring_damper - w**2
    a22 = spring_damper - mu * w**2
    det = a11 * a22 - spring_damper**2
    x_main, x_damper = a22 / det, spring_damper / det
    return x_main.abs().amax(-1), (x_main - x_damper).abs().amax(-1)
