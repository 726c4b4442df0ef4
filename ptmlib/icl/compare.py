"""Ways to say how close two in-context predictors are (von Oswald et al. 2023, Sec. 3)."""
from __future__ import annotations

from typing import Callable

import torch

QueryFn = Callable[[torch.Tensor], torch.Tensor]  # x_q (B, d) -> y_hat (B,), context held fixed


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||^2 / ||b||^2: the squared prediction gap relative to the size of b's predictions."""
    return float(((a - b) ** 2).sum() / (b**2).sum())


def sensitivity_cosine(f: QueryFn, g: QueryFn, x_q: torch.Tensor) -> float:
    """Mean over prompts of the cosine between d f / d x_q and d g / d x_q (each (B, d)).

    Two predictors that agree in this sense respond to a change of the query in the same direction,
    a stronger statement than equal predictions on one test set.
    """
    grads = []
    for fn in (f, g):
        xq = x_q.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(fn(xq).sum(), xq)  # prompts are independent: row b is d y_b / d x_q,b
        grads.append(grad)
    return float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=-1).mean())


def normalized_errors(pred: torch.Tensor, y: torch.Tensor, d: int) -> torch.Tensor:
    """Squared error per prompt position divided by the dimension d (Garg et al.): (B, n) -> (n,)."""
    return ((pred - y) ** 2).mean(0) / d


def prediction_gap(a: torch.Tensor, b: torch.Tensor, d: int) -> float:
    """Mean squared difference between two predictors' outputs divided by d (Raventos et al.'s
    Delta between a model and a reference estimator, averaged over prompts and positions)."""
    return float(((a - b) ** 2).mean()) / d
