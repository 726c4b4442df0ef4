"""Pretraining distributions over regression tasks (Raventos et al. 2023; Panwar et al. 2024).

- a finite pool of M tasks w_1..w_M ~ N(0, I_d), drawn once; each prompt uses one of them uniformly
  (M = None means a fresh Gaussian task per prompt, the "M = infinity" limit);
- a mixture of function classes: with probability 1/2 a dense task w ~ N(0, I_d), otherwise a
  1-sparse task w = z sqrt(d) e_j (j uniform, z ~ N(0, 1)), so both classes have E||w||^2 = d.
Shapes as in `ptmlib.icl.data`: x (B, n, d), y (B, n), w (B, d).
"""
from __future__ import annotations

import torch


def task_pool(M: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """M tasks w_m ~ N(0, I_d): (M, d)."""
    return torch.randn(M, d, generator=gen, device=gen.device)


def pool_prompts(pool: torch.Tensor | None, batch: int, n: int, d: int, noise_std: float, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts whose task is drawn uniformly from `pool` (or fresh from N(0, I_d) when pool is None)."""
    if pool is None:
        w = torch.randn(batch, d, generator=gen, device=gen.device)
    else:
        w = pool[torch.randint(len(pool), (batch,), generator=gen, device=gen.device)]
    return _label(w, n, noise_std, gen)


def mixture_prompts(batch: int, n: int, d: int, noise_std: float, gen: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts from the dense/sparse mixture: half dense Gaussian tasks, half 1-sparse tasks."""
    w = torch.randn(batch, d, generator=gen, device=gen.device)
    j = torch.randint(d, (batch,), generator=gen, device=gen.device)
    sparse = torch.nn.functional.one_hot(j, d).to(w.dtype) * w[:, :1] * d**0.5
    is_sparse = torch.rand(batch, 1, generator=gen, device=gen.device) < 0.5
    return _label(torch.where(is_sparse, sparse, w), n, noise_std, gen)


def mixture_prior(d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dense/sparse mixture as Gaussian components for `estimators.mixture_posterior_mean`:
    means (1 + d, d), covariances (1 + d, d, d), weights (1 + d,). Component 0 is dense, j + 1 is sparse on j."""
    covs = torch.cat([torch.eye(d).unsqueeze(0), d * torch.diag_embed(torch.eye(d))])
    weights = torch.cat([torch.tensor([0.5]), torch.full((d,), 0.5 / d)])
    return torch.zeros(1 + d, d), covs, weights


def sparse_prior(d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sparse class alone (its Bayes predictor), in the same form as `mixture_prior`."""
    return torch.zeros(d, d), d * torch.diag_embed(torch.eye(d)), torch.full((d,), 1.0 / d)


def _label(w: torch.Tensor, n: int, noise_std: float, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(w.shape[0], n, w.shape[1], generator=gen, device=gen.device, dtype=w.dtype)
    y = torch.einsum("bnd,bd->bn", x, w) + noise_std * torch.randn(w.shape[0], n, generator=gen, device=gen.device, dtype=w.dtype)
    return x, y, w
