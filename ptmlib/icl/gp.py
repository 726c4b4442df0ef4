"""Gaussian-process regression: the prior a PFN is trained on, and the exact posterior it should learn.

Inputs x (B, n, D) in [0, 1]^D, outputs y (B, n). The RBF kernel
k(a, b) = s^2 exp(-||a - b||^2 / (2 l^2)) with observation noise sigma^2 (Rasmussen & Williams, ch. 2).
"""
from __future__ import annotations

import math

import torch


def rbf_kernel(a: torch.Tensor, b: torch.Tensor, lengthscale: float, outputscale: float = 1.0) -> torch.Tensor:
    """k(a_i, b_j) for a (B, n, D), b (B, m, D) -> (B, n, m)."""
    return outputscale * torch.exp(-torch.cdist(a, b) ** 2 / (2 * lengthscale**2))


def sample_gp(batch: int, n: int, gen: torch.Generator, lengthscale: float, outputscale: float = 1.0,
              noise_var: float = 0.01, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Datasets from the GP prior: x ~ U[0, 1]^D, y ~ N(0, K + sigma^2 I). Returns x (B, n, D), y (B, n)."""
    x = torch.rand(batch, n, dim, generator=gen, device=gen.device)
    cov = rbf_kernel(x, x, lengthscale, outputscale) + noise_var * torch.eye(n, device=gen.device)
    eps = torch.randn(batch, n, 1, generator=gen, device=gen.device)
    return x, (torch.linalg.cholesky(cov) @ eps).squeeze(-1)


def gp_posterior(x: torch.Tensor, y: torch.Tensor, x_q: torch.Tensor, lengthscale: float, outputscale: float = 1.0,
                 noise_var: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior predictive of y at x_q (B, m, D) given the context (x, y): mean and variance (B, m).

    mean = K_q^T (K + sigma^2 I)^-1 y, var = k(x_q, x_q) - K_q^T (K + sigma^2 I)^-1 K_q + sigma^2
    (the variance of a noisy observation, which is what a PFN predicts). With no context the
    prior: mean 0, variance s^2 + sigma^2.
    """
    b, m = x_q.shape[:2]
    prior_var = torch.full((b, m), outputscale + noise_var, dtype=x_q.dtype, device=x_q.device)
    if x.shape[1] == 0:
        return torch.zeros_like(prior_var), prior_var
    cov = rbf_kernel(x, x, lengthscale, outputscale) + noise_var * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    chol = torch.linalg.cholesky(cov)  # (B, n, n)
    k_q = rbf_kernel(x, x_q, lengthscale, outputscale)  # (B, n, m)
    v = torch.linalg.solve_triangular(chol, k_q, upper=False)  # L^-1 K_q
    mean = (k_q * torch.cholesky_solve(y.unsqueeze(-1), chol)).sum(1)
    return mean, prior_var - (v**2).sum(1)


def gaussian_nll(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """-log N(y; mean, var), elementwise, in nats."""
    return 0.5 * (torch.log(2 * math.pi * var) + (y - mean) ** 2 / var)
