"""Measurements every part of the book takes: accuracy, parameter counts, calibration, entropy, probes.

One definition each; chapters and part modules call these instead of re-deriving the idioms.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose arg-max matches the label: logits (..., C), y (...) -> float in [0, 1].
    Probabilities work the same (the arg-max is unchanged)."""
    return float((logits.argmax(-1) == y).float().mean())


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once); `trainable_only` counts only those
    that receive gradients."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def ece(probs: torch.Tensor, y: torch.Tensor, bins: int = 10) -> float:
    """Expected calibration error: sum over confidence bins of (bin share) * |accuracy - confidence|,
    with equal-width bins of the top-class probability. probs (N, C), y (N,)."""
    conf, pred = probs.max(-1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += float(sel.float().mean() * (correct[sel].mean() - conf[sel].mean()).abs())
    return total


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy in nats of each row of probs (N, C): (N,)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def fit_softmax_probe(train_x: torch.Tensor, train_y: torch.Tensor, n_classes: int, l2: float = 1e-4,
                      max_iter: int = 200) -> Callable[[torch.Tensor], torch.Tensor]:
    """A multinomial logistic-regression probe on frozen features (standardised with the training
    statistics), fitted by L-BFGS; returns a function mapping features (N, d) to class probabilities (N, C)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    probe = nn.Linear(train_x.shape[1], n_classes).to(device=train_x.device, dtype=train_x.dtype)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe((train_x - mu) / sd), train_y) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)

    def predict_proba(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return probe((x - mu) / sd).softmax(-1)

    return predict_proba


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 n_classes: int, l2: float = 1e-4, max_iter: int = 200) -> float:
    """Test accuracy of a multinomial logistic-regression probe on frozen features (`fit_softmax_probe`):
    how linearly decodable the label is from the features."""
    proba = fit_softmax_probe(train_x, train_y, n_classes, l2, max_iter)
    return accuracy(proba(test_x), test_y)
