"""KIND (Xie et al.): class-conditional networks whose layers split their SVD-like components into a part
shared by every class ("learngenes", transferred to new classes) and class-specific "tailors".

Shapes: digits are x (B, 64) in [0, 1], classes (B,) int64.

    KINDLinear          W_c = U diag(s * g_c) V; the gate g_c switches on the common and class c's components
    KINDDenoiser        two KIND layers and a linear output: (noisy x, classes) -> clean x
    ConditionalDenoiser the plain baseline: the same MLP with a learned class embedding

`fit_denoiser` trains either with the mean squared error on x + noise * eps (`ptm.fit` with a noise
transform); `denoising_error` scores it on a fixed noise draw.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.profiles import Profile
from ptmlib.train import History, TrainConfig, fit


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


def fit_denoiser(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, cfg: TrainConfig, profile: Profile, *,
                 noise: float = 0.5, batch: int = 32, data_seed_offset: int = 1000) -> History:
    """Train a class-conditional denoiser model(x + noise * eps, classes) -> x with the mean squared error
    (`ptm.fit`; eps from its own CPU generator, offset data_seed_offset + 1). Leaves the model on the CPU."""
    eps_gen = profile.generator(data_seed_offset + 1, device="cpu")
    hist = fit(model, (x, classes), x, cfg, profile, batch=batch, loss=F.mse_loss, data_seed_offset=data_seed_offset,
               transform=lambda clean: clean + noise * torch.randn(clean.shape, generator=eps_gen))
    model.cpu()
    return hist


@torch.no_grad()
def denoising_error(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, noise: float = 0.5, seed: int = 99,
                    **kwargs) -> float:
    """Mean squared error of the denoised x on a fixed noise draw (the same for every model)."""
    g = torch.Generator().manual_seed(seed)
    return float(F.mse_loss(model(x + noise * torch.randn(x.shape, generator=g), classes, **kwargs), x))
