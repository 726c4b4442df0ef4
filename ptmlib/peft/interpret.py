"""Interpretable adaptation: B-cos layers and B-cosification of a pretrained MLP, contribution maps,
and a concept bottleneck with energy-based inference and concept interventions.

B-cos (Boehle et al.): a unit with unit-norm weight w_hat computes |cos(x, w_hat)|^(B - 1) * (w_hat . x),
so its output is large only when the input is aligned with the weight. Without biases, a B-cos network
is dynamic linear: y(x) = W(x) x exactly, and the contribution map W(x)[c] * x sums to the logit y_c.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def encode(x: torch.Tensor) -> torch.Tensor:
    """B-cos input encoding [x, 1 - x] (..., 2d): every pixel has a direction, dark and bright alike."""
    return torch.cat([x, 1 - x], -1)


class BcosLinear(nn.Module):
    """x (..., d_in) -> (..., d_out) = |cos(x, w_hat)|^(B - 1) * (w_hat x), no bias. With `detach` set,
    the scaling factor is treated as a constant by autograd (for exact contribution maps)."""

    def __init__(self, d_in: int, d_out: int, b: float = 2.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / d_in ** 0.5)
        self.b = b
        self.detach = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.weight, dim=1)
        lin = x @ w.T
        if self.b == 1:
            return lin
        cos = lin / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        scale = cos.abs().pow(self.b - 1)
        return lin * (scale.detach() if self.detach else scale)


class BcosMLP(nn.Module):
    """B-cos MLP on encoded inputs: layers of BcosLinear with no other nonlinearity; logits (B, C)."""

    def __init__(self, sizes: list[int], b: float = 2.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(BcosLinear(i, o, b) for i, o in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def set_b(self, b: float) -> None:
        for layer in self.layers:
            layer.b = b


def bcosify(body: nn.Sequential, head: nn.Linear, b: float = 2.0) -> BcosMLP:
    """B-cosification (Arya et al.) of a pretrained MLP (Linear, activation, ..., head): copy its
    weights into a bias-free B-cos MLP on encoded inputs; the first layer reads x with its pretrained
    weights and 1 - x with zeros. Fine-tune the result briefly."""
    linears = [m for m in body if isinstance(m, nn.Linear)] + [head]
    sizes = [2 * linears[0].in_features] + [m.out_features for m in linears]
    model = BcosMLP(sizes, b)
    with torch.no_grad():
        for new, old in zip(model.layers, linears):
            w = old.weight.detach()
            if new is model.layers[0]:
                w = torch.cat([w, torch.zeros_like(w)], 1)
            new.weight.copy_(w)
    return model


def effective_weights(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """W(x)[target] (B, d): the gradient of the target logit with respect to the input, with every
    B-cos scaling factor treated as a constant - for a B-cos network the exact dynamic linear map,
    for any other network its input gradient."""
    bcos = [m for m in model.modules() if isinstance(m, BcosLinear)]
    for m in bcos:
        m.detach = True
    try:
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            logit = model(x).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(logit, x)
    finally:
        for m in bcos:
            m.detach = False
    return grad.detach()


def contributions(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Input contributions (B, d) to the target logit: W(x)[target] * x. For a bias-free B-cos network
    they sum exactly to the logit."""
    return effective_weights(model, x, target) * x


def alignment(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """cos(W(x)[target], x) per example (B,): how much the model's effective linear map for the class
    points along the input itself."""
    return F.cosine_similarity(effective_weights(model, x, target), x, dim=-1)


# Concepts of the ten digits, as a class-level annotation (like CUB's attributes): one row per digit.
CONCEPTS = ("closed loop", "two loops", "vertical stroke", "top bar", "diagonal stroke", "curved bottom",
            "open left side")
DIGIT_CONCEPTS = torch.tensor([
    # loop, two loops, vertical, top bar, diagonal, curved bottom, open left
    [1, 0, 0, 0, 0, 1, 0],  # 0
    [0, 0, 1, 0, 0, 0, 0],  # 1
    [0, 0, 0, 0, 1, 0, 0],  # 2
    [0, 0, 0, 0, 0, 1, 1],  # 3
    [1, 0, 1, 0, 1, 0, 0],  # 4
    [0, 0, 1, 1, 0, 1, 1],  # 5
    [1, 0, 0, 0, 1, 1, 0],  # 6
    [0, 0, 0, 1, 1, 0, 0],  # 7
    [1, 1, 0, 0, 0, 1, 0],  # 8
    [1, 0, 1, 0, 0, 0, 1],  # 9
], dtype=torch.float32)


class ConceptModel(nn.Module):
    """Three heads on frozen features f (B, d): concept logits (B, K), class logits from concepts
    g(c) (B, C), and class logits straight from the features h(f) (B, C). Each is an energy term of
    the energy-based concept bottleneck (ECBM, Xu et al.):

        E(f, c, y) = BCE(concept_logits(f), c) + CE(g(c), y) + lam * CE(h(f), y).
    """

    def __init__(self, d: int, n_concepts: int, n_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.concepts = nn.Linear(d, n_concepts)
        self.from_concepts = nn.Sequential(nn.Linear(n_concepts, hidden), nn.GELU(), nn.Linear(hidden, n_classes))
        self.direct = nn.Linear(d, n_classes)

    def loss(self, f: torch.Tensor, c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training: each energy term fitted to the annotations (concepts and labels)."""
        return (F.binary_cross_entropy_with_logits(self.concepts(f), c) + F.cross_entropy(self.from_concepts(c), y)
                + F.cross_entropy(self.direct(f), y))

    def cbm_predict(self, f: torch.Tensor, known: torch.Tensor | None = None,
                    values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A plain concept bottleneck: threshold the predicted concepts, overwrite the intervened ones
        (known (B, K) bool, values (B, K)), classify from the concepts. Returns (concepts, classes)."""
        c = (self.concepts(f) > 0).float()
        if known is not None:
            c = torch.where(known, values, c)
        return c, self.from_concepts(c).argmax(-1)

    def energy_predict(self, f: torch.Tensor, known: torch.Tensor | None = None, values: torch.Tensor | None = None,
                       lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint minimum-energy inference over all 2^K concept vectors and all classes (exact
        enumeration), with intervened concepts clamped: an intervention also moves the other concepts
        and the class. Returns (concepts (B, K), classes (B,))."""
        K = self.concepts.out_features
        grid = torch.tensor([[(i >> k) & 1 for k in range(K)] for i in range(2 ** K)], dtype=f.dtype)  # (2^K, K)
        logit = self.concepts(f)  # (B, K)
        e_concept = (F.softplus(logit)[:, None] - grid[None] * logit[:, None]).sum(-1)  # BCE summed, (B, 2^K)
        e_class = -self.from_concepts(grid).log_softmax(-1)  # (2^K, C)
        e_direct = -self.direct(f).log_softmax(-1)  # (B, C)
        energy = e_concept[:, :, None] + e_class[None] + lam * e_direct[:, None, :]  # (B, 2^K, C)
        if known is not None:
            clash = ((grid[None] != values[:, None]) & known[:, None]).any(-1)  # (B, 2^K)
            energy = energy.masked_fill(clash[:, :, None], float("inf"))
        best = energy.flatten(1).argmin(1)
        return grid[best // energy.shape[2]], best % energy.shape[2]
