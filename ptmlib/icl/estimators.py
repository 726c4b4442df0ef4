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


def dmmse(x: torch.Tensor, y: torch.Tensor, x_q: torch.Tensor, pool: torch.Tensor, noise_var: float) -> torch.Tensor:
    """Posterior mean under the uniform prior over a finite pool of M tasks (Raventos et al.'s dMMSE).

    With pool (M, d), p(w_m | context) is a softmax over the log-likelihoods
    -||y - X w_m||^2 / (2 sigma^2), and the prediction is (sum_m p_m w_m) . x_q.
    """
    resid = y.unsqueeze(1) - torch.einsum("bkd,md->bmk", x, pool)  # (B, M, k)
    post = torch.softmax(-(resid**2).sum(-1) / (2 * noise_var), dim=-1)  # (B, M)
    return ((post @ pool) * x_q).sum(-1)


def dmmse_prefix(x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, noise_var: float,
                 chunk: int = 2**22) -> torch.Tensor:
    """dMMSE's prediction of every y_k from the first k points, as `prefix_predictions(dmmse, ...)`
    but in one pass over the pool (cumulative log-likelihoods), chunked over the batch: (B, n)."""
    b, n, _ = x.shape
    rows = max(1, chunk // (pool.shape[0] * n))
    out = []
    for i in range(0, b, rows):
        xb, yb = x[i:i + rows], y[i:i + rows]
        sq = (yb.unsqueeze(1) - torch.einsum("bkd,md->bmk", xb, pool)) ** 2  # (b, M, n)
        loglik = -torch.cumsum(sq, -1) / (2 * noise_var)
        loglik = torch.cat([torch.zeros_like(loglik[..., :1]), loglik[..., :-1]], -1)  # first k points
        post = torch.softmax(loglik, dim=1)  # (b, M, n)
        w = torch.einsum("bmn,md->bnd", post, pool)  # (b, n, d)
        out.append((w * xb).sum(-1))
    return torch.cat(out)


def mixture_posterior_mean(x: torch.Tensor, y: torch.Tensor, x_q: torch.Tensor, means: torch.Tensor,
                           covs: torch.Tensor, weights: torch.Tensor, noise_var: float) -> torch.Tensor:
    """Bayes-optimal prediction under a Gaussian-mixture prior w ~ sum_c pi_c N(mu_c, S_c).

    means (K, d), covs (K, d, d), weights (K,). Each component is conjugate: under it
    y ~ N(X mu_c, X S_c X^T + sigma^2 I), and the component's posterior mean is
    mu_c + S_c X^T (X S_c X^T + sigma^2 I)^-1 (y - X mu_c). The prediction averages these with the
    posterior component probabilities (Bayesian model averaging). Special cases: one standard
    component = ridge; zero covariances at the pool's tasks = dMMSE; axis-aligned rank-one
    covariances = sparse regression.
    """
    b, k, _ = x.shape
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    cov_y = torch.einsum("bkd,cde,bje->bckj", x, covs, x) + noise_var * eye  # (B, K, k, k)
    resid = y.unsqueeze(1) - torch.einsum("bkd,cd->bck", x, means)  # (B, K, k)
    chol = torch.linalg.cholesky(cov_y)
    alpha = torch.cholesky_solve(resid.unsqueeze(-1), chol).squeeze(-1)  # (B, K, k)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (B, K)
    loglik = -0.5 * ((resid * alpha).sum(-1) + logdet)
    post = torch.softmax(loglik + torch.log(weights), dim=-1)  # (B, K)
    w = means + torch.einsum("cde,bke,bck->bcd", covs, x, alpha)  # (B, K, d)
    return ((post.unsqueeze(-1) * w).sum(1) * x_q).sum(-1)


def bayes_excess_risk(k: int, d: int, noise_var: float, gen: torch.Generator, num_samples: int = 4096) -> float:
    """Expected excess squared error of the posterior mean (ridge, lambda = sigma^2) over the oracle
    prediction w . x_q, after k examples, for w, x, x_q ~ N(0, I_d): E_X sigma^2 tr((X^T X + sigma^2 I)^-1),
    estimated over `num_samples` draws of X. This is the per-query regret of exact Bayesian model
    averaging (Zhang et al. 2023); for k > d + 1 it is below least squares' sigma^2 d / (k - d - 1)."""
    x = torch.randn(num_samples, k, d, generator=gen, device=gen.device)
    gram = x.transpose(1, 2) @ x + noise_var * torch.eye(d, device=gen.device)
    return float(noise_var * torch.linalg.inv(gram).diagonal(dim1=-2, dim2=-1).sum(-1).mean())


def least_squares_excess_risk(k: int, d: int, noise_var: float) -> float:
    """Closed form for least squares with k > d + 1 Gaussian examples: sigma^2 d / (k - d - 1)
    (since E (X^T X)^-1 = I / (k - d - 1) for the Wishart matrix X^T X)."""
    if k <= d + 1:
        raise ValueError(f"needs k > d + 1, got k={k}, d={d}")
    return noise_var * d / (k - d - 1)
