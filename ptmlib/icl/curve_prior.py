"""A prior over learning curves for LC-PFN (Adriaensen et al. 2023), and least-squares curve fitting.

A curve is one of three parametric families over epochs t = 1..T (performance in [0, 1], higher is
better), plus Gaussian noise; curves whose noiseless values leave [0, 1] are rejected:
  pow3:       c - a t^(-alpha)
  ilog2:      c - a / log(t + 1)
  janoschek:  alpha - (alpha - beta) exp(-kappa t^delta)
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

FAMILIES = ("pow3", "ilog2", "janoschek")


def pow3(t, c, a, alpha):
    return c - a * t ** (-alpha)


def ilog2(t, c, a):
    return c - a / np.log(t + 1) if isinstance(t, np.ndarray) else c - a / torch.log(t + 1)


def janoschek(t, alpha, beta, kappa, delta):
    exp = np.exp if isinstance(t, np.ndarray) else torch.exp
    return alpha - (alpha - beta) * exp(-kappa * t**delta)


def sample_curves(batch: int, n_epochs: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` noisy curves from the prior: t (B, T) = 1..T and y (B, T); a third of each family, shuffled."""
    dev = gen.device
    u = lambda lo, hi, n: lo + (hi - lo) * torch.rand(n, 1, generator=gen, device=dev)
    logu = lambda lo, hi, n: torch.exp(u(math.log(lo), math.log(hi), n))
    t = torch.arange(1, n_epochs + 1, dtype=torch.float32, device=dev)
    out = []
    while sum(len(c) for c in out) < batch:
        n = 2 * batch
        c = u(0.4, 1.0, n)
        fam = torch.randint(3, (n, 1), generator=gen, device=dev)
        y = torch.where(fam == 0, pow3(t, c, c * u(0.0, 1.0, n), u(0.2, 2.0, n)),
                        torch.where(fam == 1, ilog2(t, c, c * math.log(2) * u(0.0, 1.0, n)),
                                    janoschek(t, c, c * u(0.0, 1.0, n), logu(0.01, 1.0, n), u(0.5, 1.5, n))))
        ok = ((y >= 0) & (y <= 1)).all(1)
        y = y + logu(0.001, 0.03, n) * torch.randn(n, n_epochs, generator=gen, device=dev)
        out.append(y[ok])
    y = torch.cat(out)[:batch]
    return t.expand(batch, n_epochs), y


def fit_and_extrapolate(t_obs: np.ndarray, y_obs: np.ndarray, t_new: np.ndarray) -> np.ndarray:
    """Least-squares fit of every family to the observed prefix (scipy's `curve_fit`); the family with
    the smallest residual extrapolates. Falls back to the last observed value if every fit fails."""
    from scipy.optimize import curve_fit

    starts = {pow3: [y_obs[-1], 0.5, 0.5], ilog2: [y_obs[-1], 0.2], janoschek: [y_obs[-1], y_obs[0], 0.1, 1.0]}
    best, best_sse = np.full(len(t_new), y_obs[-1]), np.inf
    for fn, p0 in starts.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = curve_fit(fn, t_obs, y_obs, p0=p0, maxfev=2000)
            sse = float(np.sum((fn(t_obs, *params) - y_obs) ** 2))
            pred = fn(t_new, *params)
        except (RuntimeError, ValueError, FloatingPointError):
            continue
        if sse < best_sse and np.all(np.isfinite(pred)):
            best, best_sse = pred, sse
    return best
