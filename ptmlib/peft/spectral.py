"""Spectral and sparse adaptation of linear layers, and locating what fine-tuning changed.

Shapes: every wrapper takes a frozen `nn.Linear` with weight W (d_out, d_in) and maps x (..., d_in) to
(..., d_out).

    SVFit     W = U diag(s) V^T + W_rest; only the top-r singular values s (r,) train
    SaRA      W + M * D; D (d_out, d_in) trains only where the mask M marks the smallest-|W| entries,
              with a nuclear-norm penalty ||M * D||_* that keeps the update low-rank
    PELA      W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T): the layer replaced by two thin ones (compression)

`graft` implements skill localisation: keep the fine-tuned value only for the parameters that moved
most, the pretrained value everywhere else. `ece` is the expected calibration error.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn


class SVFitLinear(nn.Module):
    """A frozen linear layer whose top-`rank` singular values are trainable (SVFit, Sun et al.)."""

    def __init__(self, base: nn.Linear, rank: int | None = None) -> None:
        super().__init__()
        W = base.weight.detach()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        r = rank or len(S)
        self.register_buffer("U", U[:, :r].clone())
        self.register_buffer("Vh", Vh[:r].clone())
        self.register_buffer("rest", W - U[:, :r] @ torch.diag(S[:r]) @ Vh[:r])  # exactly 0 when r is full
        self.register_buffer("bias", None if base.bias is None else base.bias.detach().clone())
        self.s = nn.Parameter(S[:r].clone())

    def weight(self) -> torch.Tensor:
        return self.rest + (self.U * self.s) @ self.Vh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


def smallest_mask(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask (same shape) of the `fraction` of entries with the smallest |weight| (SaRA's
    "temporarily ineffective" parameters)."""
    k = max(1, int(round(fraction * weight.numel())))
    idx = weight.abs().flatten().argsort()[:k]
    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[idx] = True
    return mask.reshape(weight.shape)


class SaRALinear(nn.Module):
    """A frozen linear layer plus a trainable update restricted to its smallest-magnitude weights
    (SaRA, Hu et al.): W + M * D, stored as the k values of D on the mask (zero at initialisation)."""

    def __init__(self, base: nn.Linear, fraction: float = 0.1) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.register_buffer("index", smallest_mask(base.weight.detach(), fraction).flatten().nonzero().squeeze(1))
        self.values = nn.Parameter(torch.zeros(len(self.index)))

    def update(self) -> torch.Tensor:
        """M * D as a dense (d_out, d_in) matrix."""
        flat = torch.zeros(self.base.weight.numel(), device=self.values.device, dtype=self.values.dtype)
        return flat.index_put((self.index,), self.values).reshape(self.base.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.base.weight + self.update(), self.base.bias)

    def nuclear(self) -> torch.Tensor:
        """||M * D||_*, the sum of the update's singular values (SaRA's low-rank penalty)."""
        return torch.linalg.matrix_norm(self.update(), ord="nuc")


def low_rank(base: nn.Linear, rank: int) -> nn.Sequential:
    """The best rank-`rank` approximation of a linear layer (Eckart-Young), as two thin layers:
    x -> (sqrt(S) V^T) x -> (U sqrt(S)) (.) + b. Parameters: rank * (d_in + d_out) + d_out."""
    U, S, Vh = torch.linalg.svd(base.weight.detach(), full_matrices=False)
    root = S[:rank].sqrt()
    down = nn.Linear(base.in_features, rank, bias=False)
    up = nn.Linear(rank, base.out_features, bias=base.bias is not None)
    with torch.no_grad():
        down.weight.copy_(root[:, None] * Vh[:rank])
        up.weight.copy_(U[:, :rank] * root)
        if base.bias is not None:
            up.bias.copy_(base.bias)
    return nn.Sequential(down, up)


def rank_for_fraction(d_in: int, d_out: int, fraction: float) -> int:
    """The largest rank whose two thin layers hold at most `fraction` of the d_out x d_in weights."""
    return max(1, int(fraction * d_in * d_out / (d_in + d_out)))


def replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module], skip: tuple[str, ...] = ()) -> list[str]:
    """Replace every nn.Linear of `model` (not under a name in `skip`) by make(layer); returns the names."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith(skip)]
    for name in names:
        model.set_submodule(name, make(model.get_submodule(name)))
    return names


def graft(pretrained: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], fraction: float,
          always: tuple[str, ...] = (), gen: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """Skill localisation by grafting (Panigrahi et al.): the pretrained state with the fine-tuned values
    copied in for the `fraction` of floating-point parameters that moved most (|theta_ft - theta_pre|,
    ranked over the whole model). Entries whose names start with `always` (e.g. a new head) are copied
    whole and not counted. With `gen`, the same number of parameters is chosen uniformly at random
    instead (the control). Returns (state, number of grafted parameters)."""
    movable = [k for k, v in pretrained.items() if v.is_floating_point() and not k.startswith(always)]
    moved = torch.cat([(finetuned[k] - pretrained[k]).abs().flatten() for k in movable])
    k = max(1, int(round(fraction * moved.numel())))
    chosen = torch.zeros(moved.numel(), dtype=torch.bool)
    chosen[moved.topk(k).indices if gen is None else torch.randperm(moved.numel(), generator=gen)[:k]] = True
    out = {name: v.clone() for name, v in pretrained.items()}
    start = 0
    for name in movable:
        n = pretrained[name].numel()
        sel = chosen[start:start + n].reshape(pretrained[name].shape)
        out[name] = torch.where(sel, finetuned[name], pretrained[name])
        start += n
    for name in pretrained:
        if name.startswith(always):
            out[name] = finetuned[name].clone()
    return out, k




class KINDLinear(nn.Module):
    """A linear layer in KIND's factorised form (Xie et al.): W_c = U diag(s * g_c) V with r = n_common
    + n_classes * n_tailor components. The class gate g_c (r,) switches on the common components
    ("learngenes", shared by every class) and the n_tailor components of class c ("tailors").
    x (B, d_in), classes (B,) -> (B, d_out)."""

    def __init__(self, d_in: int, d_out: int, n_common: int, n_tailor: int, n_classes: int) -> None:
        super().__init__()
        r = n_common + n_tailor * n_classes
        self.U = nn.Parameter(torch.randn(d_out, r) / r ** 0.5)
        self.V = nn.Parameter(torch.randn(r, d_in) / d_in ** 0.5)
        self.s = nn.Parameter(torch.ones(r))
        self.b = nn.Parameter(torch.zeros(d_out))
        gate = torch.zeros(n_classes, r)
        gate[:, :n_common] = 1
        for c in range(n_classes):
            gate[c, n_common + c * n_tailor:n_common + (c + 1) * n_tailor] = 1
        self.register_buffer("gate", gate)
        self.n_common = n_common

    def forward(self, x: torch.Tensor, classes: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        g = self.gate[classes] if gate is None else gate
        return ((x @ self.V.T) * self.s * g) @ self.U.T + self.b

    def load_common(self, other: "KINDLinear") -> None:
        """Copy only the common components (and the bias) from a pretrained layer: KIND's transfer."""
        k = self.n_common
        with torch.no_grad():
            self.U[:, :k] = other.U[:, :k]
            self.V[:k] = other.V[:k]
            self.s[:k] = other.s[:k]
            self.b.copy_(other.b)


class KINDDenoiser(nn.Module):
    """A class-conditional denoiser of 8x8 digits with two KIND layers: (x (B, 64), classes (B,)) ->
    (B, 64). `part` = "all" | "common" | "tailor" evaluates with only those components switched on."""

    def __init__(self, n_common: int, n_tailor: int, n_classes: int, width: int = 128) -> None:
        super().__init__()
        self.l1 = KINDLinear(64, width, n_common, n_tailor, n_classes)
        self.l2 = KINDLinear(width, width, n_common, n_tailor, n_classes)
        self.out = nn.Linear(width, 64)

    def _gate(self, layer: KINDLinear, classes: torch.Tensor, part: str) -> torch.Tensor:
        g = layer.gate[classes].clone()
        if part == "common":
            g[:, layer.n_common:] = 0
        elif part == "tailor":
            g[:, :layer.n_common] = 0
        return g

    def forward(self, x: torch.Tensor, classes: torch.Tensor, part: str = "all") -> torch.Tensor:
        h = F.gelu(self.l1(x, classes, self._gate(self.l1, classes, part)))
        return self.out(F.gelu(self.l2(h, classes, self._gate(self.l2, classes, part))))


class ConditionalDenoiser(nn.Module):
    """The plain baseline: the same MLP with a learned class embedding added to the first hidden layer."""

    def __init__(self, n_classes: int, width: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_classes, width)
        self.l1, self.l2, self.out = nn.Linear(64, width), nn.Linear(width, width), nn.Linear(width, 64)

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.l2(F.gelu(self.l1(x) + self.embed(classes)))))
