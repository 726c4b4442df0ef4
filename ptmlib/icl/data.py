"""In-context linear regression prompts (Garg et al. 2022; von Oswald et al. 2023).

A task is a weight vector w ~ N(0, I_d); a prompt holds n points x_i ~ N(0, I_d) with
y_i = w . x_i + noise_std * eps_i, eps_i ~ N(0, 1).
"""
from __future__ import annotations

import torch


def regression_prompts(batch: int, n_points: int, d: int, noise_std: float, gen: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample `batch` prompts on `gen`'s device: x (B, n, d), y (B, n), w (B, d)."""
    device = gen.device
    x = torch.randn(batch, n_points, d, generator=gen, device=device)
    w = torch.randn(batch, d, generator=gen, device=device)
    noise = torch.randn(batch, n_points, generator=gen, device=device)
    y = torch.einsum("bnd,bd->bn", x, w) + noise_std * noise
    return x, y, w
