"""Classical in-context predictors: given a prompt's context (x, y) and a query x_q, predict y_q.

Shapes: x (B, k, d), y (B, k), x_q (B, d) -> prediction (B,). With k = 0 context points every
predictor returns the prior mean 0.
"""
from __future__ import annotations

from typing import Callable

import torch

Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def least_squares(x: torch.Tensor, y: torch.Tensor, x_q: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares: w = pinv(X) y (the interpolating solution when k < d)."""
    w = torch.linalg.pinv(x) @ y.unsqueeze(-1)  # (B, d, 1)
    return (x_q.unsqueeze(1) @ w)[:, 0, 0]


def ridge(x: torch.Tensor, y: torch.Tensor, x_q: torch.Tensor, lam: float) -> torch.Tensor:
    """Ridge regression, w = (X^T X + lam I)^-1 X^T y. With w ~ N(0, I) and noise variance lam this is
    the posterior mean, hence the Bayes-optimal predictor under squared error."""
    d = x.shape[-1]
    gram = x.transpose(1, 2) @ x + lam * torch.eye(d, dtype=x.dtype, device=x.device)  # (B, d, d)
    w = torch.linalg.solve(gram, x.transpose(1, 2) @ y.unsqueeze(-1))  # (B, d, 1)
    return (x_q.unsqueeze(1) @ w)[:, 0, 0]


def knn(x: torch.Tensor, y: torch.Tensor, x_q: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Mean label of the k nearest context points in Euclidean distance (all of them if fewer)."""
    dist = ((x - x_q.unsqueeze(1)) ** 2).sum(-1)  # (B, n)
    idx = dist.topk(min(k, x.shape[1]), largest=False).indices
    return y.gather(1, idx).mean(1)


def averaging(x: torch.Tensor, y: torch.Tensor, x_q: torch.Tensor) -> torch.Tensor:
    """w = mean_i y_i x_i (unbiased for isotropic x); equal to one GD step with step size 1."""
    return gd_step(x, y, x_q, eta=1.0)


def gd_step(x: torch.Tensor, y: torch.Tensor, x_q: torch.Tensor, eta: float,
            precond: torch.Tensor | None = None) -> torch.Tensor:
    """One step of (preconditioned) gradient descent from w0 = 0 on L(w) = 1/(2k) sum_i (w.x_i - y_i)^2.

    w1 = eta * Gamma (1/k) sum_i y_i x_i, with Gamma = `precond` (d, d) or the identity.
    """
    g = (y.unsqueeze(-1) * x).mean(1)  # (B, d) = -grad L(0)
    if precond is not None:
        g = g @ precond.T
    return eta * (g * x_q).sum(-1)


def optimal_gd_step(n: int, d: int, noise_var: float) -> float:
    """The risk-minimising step for one GD step from zero, for x ~ N(0, I_d), w ~ N(0, I_d):
    eta* = n / (n + d + 1 + sigma^2) (derived in the chapter icl/linear_regression)."""
    return n / (n + d + 1 + noise_var)


def gd_step_risk(eta: float, n: int, d: int, noise_var: float) -> float:
    """Expected squared error of the one-step GD predictor on a fresh query (closed form):
    R(eta) = eta^2 (d/n)(n + d + 1 + sigma^2) - 2 eta d + d + sigma^2."""
    return eta**2 * (d / n) * (n + d + 1 + noise_var) - 2 * eta * d + d + noise_var


def prefix_predictions(predict: Predictor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Predict each y_k from the first k points of its prompt: (B, n) predictions, k = 0 .. n-1."""
    cols = [torch.zeros_like(y[:, 0])]
    cols += [predict(x[:, :k], y[:, :k], x[:, k]) for k in range(1, x.shape[1])]
    return torch.stack(cols, 1)
