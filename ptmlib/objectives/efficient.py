"""Pretraining on a budget: one small LM, several ways to train its block matrices, side by side.

The E members of a language model `ptmlib.lm.ensemble_lm` share the architecture and are trained on the
same batches in one batched program; they differ only in how the four matrices of each block are
represented and optimised. The ensemble's block matrices (E, m, n) always hold each member's *effective*
weight W_e, the one its forward pass multiplies by. `MemberOptimizer` keeps, per member, the tensors its
method trains and the optimizer state it needs, pulls the gradient G = dL/dW_e back to those tensors by
the chain rule, takes an Adam step on them and writes the new W_e. Methods (`METHODS`):

- "full":    W trained as is (Adam, i.e. AdamW with weight decay 0); state: two (m, n) moments.
- "galore":  W trained as is, Adam on the projected gradient P^T G (r, n) with P (m, r) the top-r left
             singular vectors of G, refreshed every `gap` steps (GaLore; right ones for m > n);
             state: P and two (r, n) moments.
- "lowrank": W = U V, U (m, r) and V (r, n) trained (low-rank pretraining, LoRA without a frozen base);
             state: moments of U and V.
- "sparse":  W * M with a fixed 0/1 mask M (SPDF's sparse pretraining): the masked gradient G * M.

Binarisation is applied after training here: `binarize` replaces a matrix by alpha * sign(W) (one bit
per weight and a float32 scale per column), and `residual_estimate` adds the best rank-r approximation
of the residual W - alpha * sign(W) (its truncated SVD), a closed-form stand-in for BiPFT's learned
low-rank estimates of the binarisation error.

Every other tensor (embeddings, positions, LayerNorms, biases, read-out) gets plain Adam on the stacked
(E, ...) tensor, which is exact member by member because Adam is elementwise. Costs are measured, not
computed: `state_bytes` sums the bytes of the tensors a member's optimizer state holds, `packed_bytes`
the bytes of a binary matrix stored as packed signs, `measured_step_flops` a step's FLOPs counted by
PyTorch's FLOP counter.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ptmlib import lm
from ptmlib.ensemble import EnsembleTransformer
from ptmlib.metrics import count_params
from ptmlib.objectives.denoising import causal_lm
from ptmlib.objectives.elastic import counted_flops

METHODS = ("full", "galore", "lowrank", "sparse")
Tensors = dict[str, torch.Tensor]


def block_matrices(model: EnsembleTransformer) -> list[torch.nn.Parameter]:
    """The four stacked matrices (E, m, n) of every block: qkv, proj, fc, fc_out."""
    return [getattr(b, name).weight for b in model.blocks for name in ("qkv", "proj", "fc", "fc_out")]


def binarize(w: torch.Tensor) -> torch.Tensor:
    """alpha * sign(w) for w (m, n), alpha (1, n) the mean |w| of each column (the per-column scale that
    minimises the Frobenius error ||w - alpha * sign(w)||)."""
    return w.abs().mean(0, keepdim=True) * torch.where(w >= 0, 1.0, -1.0)


def residual_estimate(w: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-`rank` approximation (truncated SVD, Eckart-Young) of the binarisation residual
    w - binarize(w): (m, n). binarize(w) + residual_estimate(w, r) is the binary matrix corrected by r
    full-precision directions, r (m + n) extra numbers."""
    u, s, vh = torch.linalg.svd(w - binarize(w), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def adam_direction(g: torch.Tensor, moments: Tensors, key: str, t: int, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8) -> torch.Tensor:
    """Adam's bias-corrected step direction m_hat / (sqrt(v_hat) + eps) at step t (1-based) for gradient g;
    updates the moments `moments[key + ".m"]`, `moments[key + ".v"]` (created at zero) in place."""
    if key + ".m" not in moments:
        moments[key + ".m"], moments[key + ".v"] = torch.zeros_like(g), torch.zeros_like(g)
    m, v = moments[key + ".m"], moments[key + ".v"]
    m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
    v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
    return (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)


def galore_basis(g: torch.Tensor, rank: int) -> torch.Tensor:
    """GaLore's projection for a gradient g (m, n): the top-`rank` left singular vectors (m, r) if m <= n,
    else the top right singular vectors (n, r) - always the smaller side."""
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    return u[:, :rank].contiguous() if g.shape[0] <= g.shape[1] else vh[:rank].T.contiguous()


class MemberOptimizer:
    """Adam for an `ensemble_lm` whose member e trains its block matrices by `methods[e]` (module docstring).

    `lr` applies to the tensors that are not block matrices, `matrix_lr` to the tensors each method trains
    for the block matrices; `step(mult)` scales both by a schedule's multiplier. `masks` {e: [mask (m, n)
    per block matrix]} gives a sparse member its masks (`random_masks`). The constructor writes each
    member's initial effective weights into the model (a low-rank member's U V, a sparse member's masked W)."""

    def __init__(self, model: EnsembleTransformer, methods: list[str], lr: float, matrix_lr: float, rank: int = 8,
                 gap: int = 50, masks: dict[int, list[torch.Tensor]] | None = None,
                 gen: torch.Generator | None = None) -> None:
        unknown = set(methods) - set(METHODS)
        if unknown or len(methods) != model.E:
            raise ValueError(f"need {model.E} methods from {METHODS}, got {methods}")
        self.model, self.methods, self.lr, self.matrix_lr = model, list(methods), lr, matrix_lr
        self.rank, self.gap, self.t = rank, gap, 0
        self.matrices = block_matrices(model)
        matrix_ids = {id(w) for w in self.matrices}
        self.rest = [p for p in model.parameters() if id(p) not in matrix_ids]
        self.rest_moments: Tensors = {}
        masks = masks or {}
        self.masks = {e: [m.to(w.device, w.dtype) for m, w in zip(masks[e], self.matrices)] for e in masks}
        if any(self.methods[e] != "sparse" for e in self.masks) or any(
                k == "sparse" and e not in self.masks for e, k in enumerate(self.methods)):
            raise ValueError("give masks exactly for the sparse members")
        # trained[e][i]: the tensors member e trains for matrix i; moments[e][i]: its optimizer state
        self.trained: list[list[Tensors]] = [[{} for _ in self.matrices] for _ in methods]
        self.moments: list[list[Tensors]] = [[{} for _ in self.matrices] for _ in methods]
        with torch.no_grad():
            for e, method in enumerate(self.methods):
                for i, w in enumerate(self.matrices):
                    self.trained[e][i] = self._init(method, w[e].clone(), e, i, gen)
                    w[e] = self.effective(e, i)

    def _init(self, method: str, w: torch.Tensor, e: int, i: int, gen: torch.Generator | None) -> Tensors:
        m, n = w.shape
        std = float(w.std())
        r = self.rank

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen).to(w.device)

        if method == "lowrank":  # entries of U V have the std of the dense init
            return {"U": randn(m, r) / math.sqrt(m), "V": randn(r, n) * std * math.sqrt(m / r)}
        if method == "sparse":
            return {"W": w * self.masks[e][i]}
        return {"W": w}

    def effective(self, e: int, i: int) -> torch.Tensor:
        """Member e's effective weight (m, n) of block matrix i, from the tensors its method trains."""
        t, method = self.trained[e][i], self.methods[e]
        if method == "lowrank":
            return t["U"] @ t["V"]
        return t["W"]

    def gradients(self, e: int, i: int, g: torch.Tensor) -> Tensors:
        """The gradient of the loss with respect to each tensor member e trains for matrix i, given
        g = dL/dW_e (m, n): the chain rule through U V, or the mask."""
        t, method = self.trained[e][i], self.methods[e]
        if method == "lowrank":
            return {"U": g @ t["V"].T, "V": t["U"].T @ g}
        if method == "sparse":
            return {"W": g * self.masks[e][i]}
        return {"W": g}

    @torch.no_grad()
    def step(self, mult: float = 1.0) -> None:
        """One optimizer step for every member, at learning rates scaled by `mult`, from the gradients in
        the model's `.grad`; then the new effective weights are written into the model."""
        self.t += 1
        for k, p in enumerate(self.rest):
            if p.grad is not None:
                p.add_(adam_direction(p.grad, self.rest_moments, str(k), self.t), alpha=-self.lr * mult)
        for i, w in enumerate(self.matrices):
            if w.grad is None:
                continue
            for e, method in enumerate(self.methods):
                grads, moments = self.gradients(e, i, w.grad[e]), self.moments[e][i]
                for name, g in grads.items():
                    self.trained[e][i][name].add_(self._direction(method, g, moments, name), alpha=-self.matrix_lr * mult)
                w[e] = self.effective(e, i)

    def _direction(self, method: str, g: torch.Tensor, moments: Tensors, name: str) -> torch.Tensor:
        if method != "galore":
            return adam_direction(g, moments, name, self.t)
        if (self.t - 1) % self.gap == 0:
            moments["P"] = galore_basis(g, self.rank)
        P = moments["P"]
        if g.shape[0] <= g.shape[1]:  # left: Adam on P^T G (r, n), update P (.)
            return P @ adam_direction(P.T @ g, moments, name, self.t)
        return adam_direction(g @ P, moments, name, self.t) @ P.T  # right: Adam on G P (m, r)

    def state_bytes(self, e: int) -> int:
        """Bytes of every tensor member e's optimizer state holds: the moments (and GaLore's projections)
        of its block matrices, plus its slice of the moments of the other tensors."""
        own = sum(t.numel() * t.element_size() for slot in self.moments[e] for t in slot.values())
        shared = sum(t[e].numel() * t.element_size() for t in self.rest_moments.values())
        return own + shared


def adam_state_formula(model: EnsembleTransformer) -> int:
    """What one member's Adam state should take in float32: two moments per parameter, 4 bytes each."""
    return 8 * count_params(model) // model.E


def galore_state_formula(model: EnsembleTransformer, rank: int) -> int:
    """What one GaLore member's state should take in float32: for each block matrix (m, n), a projection
    of min(m, n) x r and two moments of r x max(m, n); two full moments for every other parameter."""
    shapes = [w.shape[1:] for w in block_matrices(model)]
    projected = sum(min(s) * rank + 2 * rank * max(s) for s in shapes)
    return adam_state_formula(model) + 4 * (projected - 2 * sum(s[0] * s[1] for s in shapes))


def random_masks(model: EnsembleTransformer, density: float, gen: torch.Generator) -> list[torch.Tensor]:
    """One fixed random 0/1 mask (m, n) per block matrix, each entry 1 with probability `density`."""
    return [(torch.rand(w.shape[1:], generator=gen) < density).float() for w in block_matrices(model)]


def train_members(model: EnsembleTransformer, opt: MemberOptimizer, batches: torch.Tensor,
                  lr_fn: Callable[[int], float]) -> torch.Tensor:
    """Train every member as a causal LM on the same batches (S, B, T) of token ids, one step per batch,
    learning rates scaled by `lr_fn(step)` (a `ptmlib.schedules` schedule). Returns the losses (S, E)."""
    losses = []
    for step, ids in enumerate(batches):
        b = causal_lm(ids)
        inputs, targets = (x.expand(model.E, *x.shape) for x in (b.inputs, b.targets))
        loss = lm.scored_losses(model, inputs, targets, None, causal=True)  # (E,)
        model.zero_grad(set_to_none=True)
        loss.sum().backward()  # member e's gradient is the one it would get alone
        opt.step(lr_fn(step))
        losses.append(loss.detach())
    return torch.stack(losses).cpu()


def held_out_losses(model: EnsembleTransformer, ids: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Each member's mean next-token cross-entropy (nats) on the rows of ids (N, T): (E,)."""
    total = torch.zeros(model.E)
    for rows in ids.split(chunk):
        total += lm.member_losses(model, [causal_lm(rows)] * model.E) * len(rows)
    return total / len(ids)


def measured_step_flops(model: EnsembleTransformer, ids: torch.Tensor) -> float:
    """FLOPs of one member's training step (forward and backward) on ids (B, T), counted by PyTorch's FLOP
    counter over the whole ensemble and divided by E (every member runs the same dense kernels: a matmul
    multiply-add counts 2, zeros included, because dense hardware does not skip them)."""
    b = causal_lm(ids)
    inputs, targets = (x.expand(model.E, *x.shape) for x in (b.inputs, b.targets))
    flops = counted_flops(lambda: lm.scored_losses(model, inputs, targets, None, causal=True).sum().backward())
    model.zero_grad(set_to_none=True)
    return flops / model.E


def nonzero_matrix_weights(model: EnsembleTransformer, e: int) -> int:
    """Nonzero entries of member e's block matrices, counted from the tensors."""
    return sum(int((w[e] != 0).sum()) for w in block_matrices(model))


def packed_bytes(w: torch.Tensor) -> int:
    """Bytes to store a binary matrix w = alpha * sign (m, n): its signs packed 8 to a byte
    (`numpy.packbits`) plus one float32 scale per column."""
    return np.packbits((w >= 0).cpu().numpy()).nbytes + 4 * w.shape[1]
