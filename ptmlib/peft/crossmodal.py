"""Serving a frozen model from another modality, or teaching a small model from a stronger one.

- `points_from_images`, `PointRenderer`, `RenderedClassifier`: P2P in miniature, a point cloud rendered
  into the image a frozen image model reads, with a tiny learned colouring.
- `sampled_clouds`, `SplatRenderer`: a lossy point-cloud modality (a few jittered points sampled from the
  ink, no intensities) and its renderer (Gaussian splats of learned width, then a learned colouring).
- `info_nce`, `recall_at_k`: the symmetric contrastive loss of two-tower (CLIP / Wukong) training and
  the retrieval metric it is judged by.
- `BagOfTokens`: a small text model, the student of GPT4Image-style distillation (a head for its own
  labels, a projection into the teacher's embedding space).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE of paired embeddings a, b (N, D): row i of a should match row i of b among all
    rows. Embeddings are L2-normalised here."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def recall_at_k(queries: torch.Tensor, keys: torch.Tensor, match: torch.Tensor, k: int = 1) -> float:
    """Fraction of queries (N, D) whose top-k keys (M, D) by cosine include a correct one;
    match (N, M) bool marks the correct keys."""
    sims = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T
    top = sims.topk(k, dim=-1).indices
    return float(match.gather(1, top).any(-1).float().mean())


def points_from_images(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A point-cloud view of 8x8 images x (N, 64): every pixel as a point (row, col, reading) in random
    order, with a sensor reading of 1 - intensity^2 (a different modality, not the pixel value); the mask
    (N, 64) marks the points with ink. Returns points (N, 64, 3), mask (N, 64)."""
    n = len(x)
    rows, cols = torch.arange(64) // 8, torch.arange(64) % 8
    pts = torch.stack([rows.expand(n, 64).float(), cols.expand(n, 64).float(), 1 - x ** 2], -1)
    perm = torch.argsort(torch.rand(n, 64, generator=gen), 1)
    return torch.gather(pts, 1, perm[..., None].expand(-1, -1, 3)), torch.gather(x > 0, 1, perm)


class PointRenderer(nn.Module):
    """P2P's projection in miniature: put each point at its (row, col) pixel (geometry kept, fixed) with a
    learned colour f(reading) from a tiny MLP (1 -> hidden -> 1): points (N, P, 3), mask (N, P) -> (N, 64)."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.colour = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        index = (points[..., 0] * 8 + points[..., 1]).long()
        value = self.colour(points[..., 2:]).squeeze(-1) * mask
        return torch.zeros(len(points), 64, device=points.device, dtype=value.dtype).scatter_add(1, index, value)


def sampled_clouds(x: torch.Tensor, gen: torch.Generator, n_points: int = 24, jitter: float = 0.5) -> torch.Tensor:
    """A lossy point-cloud view of 8x8 images x (N, 64): `n_points` points per image, each drawn from the
    image's ink (pixel chosen with probability proportional to its intensity, with replacement) and
    placed at the pixel centre plus uniform jitter in [-jitter, jitter]^2. Intensities are not kept:
    a cloud is an unordered set of 2-D positions, (N, n_points, 2) as (row, col); no renderer can
    recover the image exactly from it."""
    ink = x.clamp_min(0) + 1e-6
    pixel = torch.multinomial(ink / ink.sum(1, keepdim=True), n_points, replacement=True, generator=gen)
    pos = torch.stack([pixel // 8, pixel % 8], -1).float()
    return pos + jitter * (2 * torch.rand(pos.shape, generator=gen) - 1)


class SplatRenderer(nn.Module):
    """P2P's projection for `sampled_clouds`: each point becomes a Gaussian splat on the 8x8 pixel grid
    (geometry kept; the width is learned), the splats are summed into a density per pixel, and a tiny MLP
    (1 -> hidden -> 1) colours each pixel from its density: points (N, P, 2) -> image (N, 64)."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.log_width = nn.Parameter(torch.tensor(-0.5))
        self.colour = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        grid = torch.stack([torch.arange(64) // 8, torch.arange(64) % 8], -1).float()
        self.register_buffer("grid", grid)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        d2 = ((points[:, :, None, :] - self.grid[None, None]) ** 2).sum(-1)  # (N, P, 64)
        density = torch.exp(-d2 / (2 * self.log_width.exp() ** 2)).sum(1) / points.shape[1] * 8  # (N, 64)
        return self.colour(density[..., None]).squeeze(-1)


class RenderedClassifier(nn.Module):
    """renderer -> image model (frozen or not) -> the first `n_classes` logits: the renderer's inputs (for
    `PointRenderer`: points (N, P, 3), mask (N, P); for `SplatRenderer`: points (N, P, 2)) -> (N, n_classes)."""

    def __init__(self, image_model: nn.Module, n_classes: int, renderer: nn.Module | None = None) -> None:
        super().__init__()
        self.render = PointRenderer() if renderer is None else renderer
        self.image_model, self.n_classes = image_model, n_classes

    def forward(self, *cloud: torch.Tensor) -> torch.Tensor:
        return self.image_model(self.render(*cloud))[:, :self.n_classes]


class BagOfTokens(nn.Module):
    """A small text model: mean of token embeddings over non-pad ids (B, T) -> features (B, dim);
    `head` classifies, `to_teacher` projects into a teacher's embedding space for distillation."""

    def __init__(self, vocab: int, dim: int, n_classes: int, teacher_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.head = nn.Linear(dim, n_classes)
        self.to_teacher = nn.Linear(dim, teacher_dim)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).float()
        return torch.tanh((self.embed(ids) * mask).sum(1) / mask.sum(1).clamp(min=1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))
