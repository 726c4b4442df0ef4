"""Serving a frozen model from another modality, or teaching a small model from a stronger one.

- `points_from_images`, `PointRenderer`, `RenderedClassifier`: P2P in miniature, a point cloud rendered
  into the image a frozen image model reads, with a tiny learned colouring.
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


class RenderedClassifier(nn.Module):
    """renderer -> image model (frozen or not) -> the first `n_classes` logits: points (N, P, 3), mask (N, P)
    -> (N, n_classes)."""

    def __init__(self, image_model: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.render, self.image_model, self.n_classes = PointRenderer(), image_model, n_classes

    def forward(self, points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.image_model(self.render(points, mask))[:, :self.n_classes]


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
