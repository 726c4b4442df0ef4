"""One layer of linear self-attention (LSA) on regression prompts (von Oswald et al. 2023; P51).

Tokens are e_i = (x_i, y_i) for the n context points and e_q = (x_q, 0) for the query; D = d + 1.
The layer updates every token with unnormalised attention over the context tokens only:

    e_j <- e_j + P W_V E^T E W_K^T W_Q e_j / n,    E = context tokens (n, D)

and the prediction is the last coordinate of the updated query token.
"""
from __future__ import annotations

import torch
from torch import nn


class LinearSelfAttention(nn.Module):
    """Single-head linear self-attention with a residual connection; all matrices (D, D)."""

    def __init__(self, dim: int, init_std: float = 0.1) -> None:
        super().__init__()
        self.W_Q = nn.Parameter(init_std * torch.randn(dim, dim))
        self.W_K = nn.Parameter(init_std * torch.randn(dim, dim))
        self.W_V = nn.Parameter(init_std * torch.randn(dim, dim))
        self.P = nn.Parameter(init_std * torch.randn(dim, dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, n + 1, D), the query last -> updated tokens (B, n + 1, D)."""
        ctx = z[:, :-1]  # (B, n, D): keys and values come from the context only
        q = z @ self.W_Q.T  # (B, n+1, D)
        k = ctx @ self.W_K.T  # (B, n, D)
        v = ctx @ self.W_V.T  # (B, n, D)
        scores = q @ k.transpose(1, 2) / ctx.shape[1]  # (B, n+1, n), no softmax
        return z + (scores @ v) @ self.P.T


def prompt_tokens(x: torch.Tensor, y: torch.Tensor, x_q: torch.Tensor) -> torch.Tensor:
    """Stack context tokens (x_i, y_i) and the query token (x_q, 0): (B, n + 1, d + 1)."""
    ctx = torch.cat([x, y.unsqueeze(-1)], -1)  # (B, n, d+1)
    query = torch.cat([x_q, torch.zeros_like(x_q[:, :1])], -1).unsqueeze(1)  # (B, 1, d+1)
    return torch.cat([ctx, query], 1)


def lsa_predict(model: LinearSelfAttention, x: torch.Tensor, y: torch.Tensor, x_q: torch.Tensor) -> torch.Tensor:
    """The LSA layer's prediction for the query: (B,)."""
    return model(prompt_tokens(x, y, x_q))[:, -1, -1]


def effective_step(model: LinearSelfAttention, d: int) -> tuple[torch.Tensor, float]:
    """Read off the preconditioner the trained layer applies: y_hat = g^T Gamma x_q with g = mean y_i x_i.

    With A = P W_V and M = W_K^T W_Q, the query's output is (1/n) sum_i (A e_i)[d] (e_i^T M e_q). Its
    terms linear in y_i are g^T G x_q with G = A[d, d] M[:d, :d] + A[d, :d]^T M[d, :d] (outer product);
    the other terms (free of y, or in y_i^2) vanish in a layer that implements gradient descent.
    Returns Gamma = G^T (so that `gd_step(..., eta=1, precond=Gamma)` reproduces those terms) and the
    mean diagonal of Gamma (the scalar step size when Gamma ~ eta I).
    """
    a = model.P @ model.W_V  # (D, D)
    m = model.W_K.T @ model.W_Q  # (D, D)
    g = a[d, d] * m[:d, :d] + torch.outer(a[d, :d], m[d, :d])  # (d, d)
    gamma = g.T.detach()
    return gamma, float(gamma.diagonal().mean())
