"""Prompting a model that stays frozen and may be a black box: a learned change of its input.

- `pixel_prompt`: a per-pixel affine visual prompt, x -> x * (1 + a) + b, theta = (a, b); `PromptedModel`
  puts one (a trainable theta) in front of a frozen model, for white-box training with gradients.
- `camera_shift`: a new imaging domain for the 8x8 digits that no per-pixel prompt can undo exactly
  (blur, a saturating response, low contrast, a fixed background and per-image sensor noise).
- `spsa_gradient`: simultaneous-perturbation estimate of a gradient from two loss evaluations,
  g = (L(theta + c delta) - L(theta - c delta)) / (2c) * delta with delta in {-1, +1}^d (Spall 1992);
  BlackVIP's SPSA-GC adds a look-ahead (Nesterov) momentum on top (`spsa_minimise`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


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


def pixel_prompt(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-pixel affine visual prompt, theta (2d,) = (scale offsets a, shifts b):
    x -> x * (1 + a) + b. theta = 0 leaves the input unchanged."""
    d = x.shape[-1]
    return x * (1 + theta[:d]) + theta[d:]


class PromptedModel(nn.Module):
    """A frozen model behind a trainable pixel prompt: x (B, d) -> model(pixel_prompt(theta, x)), theta (2d,)
    starting at zero (the unchanged input)."""

    def __init__(self, model: nn.Module, d: int) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.theta = nn.Parameter(torch.zeros(2 * d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_prompt(self.theta, x))


def camera_shift(x: torch.Tensor, contrast: float = 0.3, strength: float = 0.7, blur: float = 0.5,
                 noise: float = 0.1, seed: int = 42, noise_seed: int = 0) -> torch.Tensor:
    """A new imaging domain for 8x8 digits x (N, 64) that a per-pixel prompt cannot invert: each pixel mixed
    with its four neighbours (weight `blur` on their mean; spatial mixing), a saturating response sqrt(.)
    (nonlinear), low `contrast`, a fixed background pattern u ~ U(0, 1)^64 (the camera's, from `seed`)
    times `strength`, and Gaussian sensor noise of standard deviation `noise`, fresh for every image
    (from `noise_seed`; no fixed map removes it)."""
    pattern = torch.rand(64, generator=torch.Generator().manual_seed(seed))
    img = x.reshape(-1, 1, 8, 8)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).reshape(1, 1, 3, 3) / 4
    neighbours = torch.nn.functional.conv2d(img, kernel, padding=1)
    mixed = ((1 - blur) * img + blur * neighbours).reshape(-1, 64)
    sensor = torch.randn(mixed.shape, generator=torch.Generator().manual_seed(noise_seed))
    return contrast * mixed.clamp_min(0).sqrt() + strength * pattern + noise * sensor
