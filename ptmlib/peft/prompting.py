"""Adapting models that stay frozen: zeroth-order prompt optimisation for black boxes, choosing what
to label, mapping a new modality into a model's input space, and contrastive two-tower training.

- `spsa_gradient`: simultaneous-perturbation estimate of a gradient from two loss evaluations,
  g = (L(theta + c delta) - L(theta - c delta)) / (2c) * delta with delta in {-1, +1}^d (Spall 1992);
  BlackVIP's SPSA-GC adds a look-ahead (Nesterov) momentum on top (`spsa_minimise`).
- `select_uncertain`, `select_balanced`: pool-based active learning by predictive entropy, overall or
  per pseudo-class (the class-balancing idea of active prompt learning).
- `info_nce`, `recall_at_k`: the symmetric contrastive loss of two-tower (CLIP / Wukong) training and
  the retrieval metric it is judged by.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.metrics import entropy


def spsa_gradient(loss: Callable[[torch.Tensor], float], theta: torch.Tensor, c: float,
                  gen: torch.Generator, samples: int = 1) -> torch.Tensor:
    """Average of `samples` two-point SPSA estimates of d loss / d theta; 2 * samples loss calls."""
    grad = torch.zeros_like(theta)
    for _ in range(samples):
        delta = torch.randint(0, 2, theta.shape, generator=gen).to(theta) * 2 - 1
        grad += (loss(theta + c * delta) - loss(theta - c * delta)) / (2 * c) * delta
    return grad / samples


def spsa_minimise(loss: Callable[..., float], theta: torch.Tensor, steps: int, gen: torch.Generator, *,
                  batch_fn: Callable[[], Any] | None = None, lr: float = 0.05, c: float = 0.05, momentum: float = 0.9,
                  samples: int = 1) -> tuple[torch.Tensor, list[float]]:
    """Minimise a black-box loss by SPSA with look-ahead momentum (BlackVIP's SPSA-GC): the gradient is
    estimated at theta + momentum * velocity. With `batch_fn`, each step draws one minibatch and the loss
    is `loss(theta, batch)` for every query of that step (common random numbers: the two perturbed
    queries see the same data, so their difference measures the perturbation, not the sampling noise).
    Returns (theta, the loss on each step's minibatch after its update)."""
    theta, velocity, trace = theta.clone(), torch.zeros_like(theta), []
    for _ in range(steps):
        if batch_fn is None:
            f = loss
        else:
            batch = batch_fn()
            f = lambda t, b=batch: loss(t, b)  # noqa: E731 - bind this step's minibatch
        g = spsa_gradient(f, theta + momentum * velocity, c, gen, samples)
        velocity = momentum * velocity - lr * g
        theta = theta + velocity
        trace.append(f(theta))
    return theta, trace




def select_uncertain(probs: torch.Tensor, k: int, exclude: torch.Tensor) -> torch.Tensor:
    """Indices of the k most uncertain (highest-entropy) pool items not yet in `exclude` (bool (N,))."""
    score = entropy(probs).masked_fill(exclude, -1.0)
    return score.topk(k).indices


def select_balanced(probs: torch.Tensor, k: int, exclude: torch.Tensor) -> torch.Tensor:
    """k pool items spread over the predicted classes: round-robin over pseudo-labels, taking the most
    uncertain unlabelled item of each class in turn (so no class is starved of labels)."""
    pseudo = probs.argmax(-1)
    score = entropy(probs)
    taken = exclude.clone()
    chosen: list[int] = []
    classes = list(range(probs.shape[1]))
    while len(chosen) < k:
        progress = False
        for c in classes:
            if len(chosen) == k:
                break
            cand = (~taken & (pseudo == c)).nonzero().squeeze(1)
            if len(cand):
                best = int(cand[score[cand].argmax()])
                chosen.append(best)
                taken[best] = True
                progress = True
        if not progress:  # every pseudo-class exhausted: fall back to the most uncertain left
            rest = select_uncertain(probs, k - len(chosen), taken)
            chosen.extend(int(i) for i in rest)
    return torch.tensor(chosen)


def select_representative(features: torch.Tensor, k: int, exclude: torch.Tensor, gen: torch.Generator,
                          iters: int = 10) -> torch.Tensor:
    """k pool items that represent the pool: run k-means (k clusters, k-means++ start) on the features of
    the unlabelled items and take the item nearest to each centre (typical, diverse examples)."""
    pool = (~exclude).nonzero().squeeze(1)
    z = features[pool]
    centres = z[torch.randint(0, len(z), (1,), generator=gen)]
    for _ in range(k - 1):  # k-means++: next centre with probability proportional to squared distance
        d2 = torch.cdist(z, centres).min(1).values ** 2
        centres = torch.cat([centres, z[torch.multinomial(d2 / d2.sum(), 1, generator=gen)]])
    for _ in range(iters):
        assign = torch.cdist(z, centres).argmin(1)
        centres = torch.stack([z[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
    nearest = torch.cdist(centres, z).argmin(1)
    return pool[nearest.unique()]


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


STRATEGIES = ("random", "entropy", "balanced", "representative")


def active_learning_curve(pool_x: torch.Tensor, pool_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                          n_classes: int, strategy: str, gen: torch.Generator, *, start: int = 10, step: int = 10,
                          rounds: int = 5) -> list[float]:
    """Test accuracy of a softmax probe on frozen features after each labelling round: `start` random
    labels, then `rounds` rounds of `step` more chosen by `strategy` ("random" | "entropy" | "balanced")
    from the rest of the pool. Returns rounds + 1 accuracies (the label counts are start + i * step)."""
    from ptmlib.metrics import fit_softmax_probe

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    labelled = torch.zeros(len(pool_x), dtype=torch.bool)
    labelled[torch.randperm(len(pool_x), generator=gen)[:start]] = True
    accs = []
    for r in range(rounds + 1):
        proba = fit_softmax_probe(pool_x[labelled], pool_y[labelled], n_classes, l2=1e-2)
        accs.append(float((proba(test_x).argmax(-1) == test_y).float().mean()))
        if r == rounds:
            break
        if strategy == "random":
            rest = (~labelled).nonzero().squeeze(1)
            new = rest[torch.randperm(len(rest), generator=gen)[:step]]
        elif strategy == "representative":
            new = select_representative(pool_x, step, labelled, gen)
        elif strategy == "entropy":
            new = select_uncertain(proba(pool_x), step, labelled)
        else:
            new = select_balanced(proba(pool_x), step, labelled)
        labelled[new] = True
    return accs




def pixel_prompt(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-pixel affine visual prompt, theta (2d,) = (scale offsets a, shifts b):
    x -> x * (1 + a) + b. theta = 0 leaves the input unchanged."""
    d = x.shape[-1]
    return x * (1 + theta[:d]) + theta[d:]


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
    """renderer -> image model (frozen or not) -> the first `n_classes` logits. Input: (points, mask)."""

    def __init__(self, image_model: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.render, self.image_model, self.n_classes = PointRenderer(), image_model, n_classes

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.image_model(self.render(*batch))[:, :self.n_classes]


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
