"""Data every part shares: random minibatch indices, scikit-learn's 8x8 digits and two shifted domains.

Larger, topic-specific data (the text corpus, the Markov source, PDE trajectories, time-series priors)
live with their topic (`ptmlib.text`, `ptmlib.markov`, `ptmlib.science`, `ptmlib.icl`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def index_batches(n: int, batch: int) -> Callable[[torch.Generator], torch.Tensor]:
    """A `batch_fn` for `ptm.train`: `batch` indices drawn uniformly (with replacement) from range(n),
    on the generator's device: gen -> (batch,) int64."""
    if n < 1 or batch < 1:
        raise ValueError(f"index_batches needs n >= 1 and batch >= 1, got n={n}, batch={batch}")
    return lambda gen: torch.randint(0, n, (batch,), generator=gen, device=gen.device)


def digits(classes: tuple[int, ...] | None = None, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits, scaled to [0, 1]: x (N, 64), y (N,); a fixed 80/20 split of a seeded
    permutation; `classes` keeps only those labels."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; allowed: train, test")
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    cut = int(0.8 * len(order))
    idx = order[:cut] if split == "train" else order[cut:]
    x = torch.tensor(data.data[idx] / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target[idx], dtype=torch.int64)
    if classes is not None:
        keep = torch.isin(y, torch.tensor(classes))
        x, y = x[keep], y[keep]
    return x, y


def shift_digits(x: torch.Tensor, pixels: int = 1, noise: float = 0.15, seed: int = 7) -> torch.Tensor:
    """A distribution shift of digit images x (N, 64): every image moved `pixels` to the right
    (wrapping around) plus Gaussian pixel noise of standard deviation `noise` (fixed by `seed`)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.roll(x.reshape(-1, 8, 8), pixels, dims=2)
    return (img + noise * torch.randn(img.shape, generator=g)).reshape(-1, 64)


def contrast_shift(x: torch.Tensor, contrast: float = 0.3, strength: float = 0.7, seed: int = 42) -> torch.Tensor:
    """A new imaging domain for 8x8 digits x (N, 64): lower contrast plus a fixed random background
    pattern (the same for every image): contrast * x + strength * u, u ~ U(0, 1)^64 fixed by `seed`."""
    pattern = torch.rand(64, generator=torch.Generator().manual_seed(seed))
    return contrast * x + strength * pattern
