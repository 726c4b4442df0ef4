"""Neural operators for PDE foundation models (Poseidon, P16): data from `ptmlib.science.pde`, a 1D Fourier
neural operator with lead-time-conditioned normalisation, all2all training pairs, relative L1 error.
Training is `ptm.fit(model, (u, lead), target, cfg, P, loss=F.l1_loss)` on the pairs.

Shapes: a state u is (B, n) on a periodic grid of n points; a lead time is (B,).

    FNO1d(u, lead):  [u, sin 2 pi x, cos 2 pi x] -> lift (width) -> layers x
                     { v <- v + GELU(FiLM_lead(LayerNorm(SpectralConv(v) + W v))) } -> project -> u + delta

SpectralConv keeps the lowest `modes` Fourier modes and mixes channels there with learned complex
weights; FiLM scales and shifts the normalised features by functions of the lead time (scOT's
time-conditioned normalisation), so one model answers "what is u after time t" for any t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.science import pde


@dataclass(frozen=True)
class Family:
    """One PDE family of the data: its equation, coefficient range and kind of initial condition."""

    equation: str
    coef: tuple[float, float]
    initial: str  # "bumps" | "field:<modes>"


FAMILIES = {
    "advection": Family("advection", (0.8, 1.2), "bumps"),
    "heat": Family("heat", (0.003, 0.006), "field:8"),
    "burgers": Family("burgers", (0.01, 0.02), "field:2"),
    "allen_cahn": Family("allen_cahn", (0.001, 0.002), "field:4"),
}


def trajectories(family: str, count: int, gen: torch.Generator, times: Sequence[float], n: int = 128,
                 dt: float = 0.005, coef: tuple[float, float] | None = None, initial: str | None = None,
                 every: int = 1) -> torch.Tensor:
    """`count` solutions of a family at `times`: (count, len(times), n // every), with coefficients uniform in
    the family's range (or in `coef`, to widen or move it) and its kind of initial condition (or `initial`,
    "bumps" | "field:<modes>", to give the equation new initial data). The solver runs on n points; `every`
    keeps every `every`-th of them (solve fine, learn on a coarser grid)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    fam = FAMILIES[family]
    lo, hi = fam.coef if coef is None else coef
    if lo > hi:
        raise ValueError(f"coefficient range must have low <= high, got {coef}")
    if n % every:
        raise ValueError(f"every={every} must divide the grid size n={n}")
    kind = fam.initial if initial is None else initial
    if kind != "bumps" and not kind.startswith("field:"):
        raise ValueError(f"unknown initial condition {kind!r}; allowed: bumps, field:<modes>")
    coef = lo + (hi - lo) * torch.rand(count, generator=gen, dtype=torch.float64)
    if kind == "bumps":
        u0 = pde.bumps(count, n, gen)
    else:
        u0 = pde.random_field(count, n, gen, modes=int(kind.split(":")[1]))
    return pde.solve(fam.equation, u0, coef, times, dt)[..., ::every].contiguous()


def all_pairs(traj: torch.Tensor, times: Sequence[float], leads: Sequence[float] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Poseidon's all2all pairs: every (earlier, later) pair of snapshots of every trajectory.
    traj (B, S, n) -> inputs (P, n), targets (P, n), lead times (P,), P = B * #pairs; `leads` keeps only
    pairs whose lead time is (to 1e-9) in that list."""
    t = torch.tensor(list(times), dtype=torch.float64)
    pairs = [(i, j) for i in range(len(t)) for j in range(i + 1, len(t))
             if leads is None or any(abs(float(t[j] - t[i]) - d) < 1e-9 for d in leads)]
    i, j = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    lead = (t[j] - t[i]).float().repeat(len(traj))
    return traj[:, i].reshape(-1, traj.shape[-1]), traj[:, j].reshape(-1, traj.shape[-1]), lead


def relative_l1(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per-sample relative L1 error (B,): sum |pred - true| / sum |true|."""
    return (pred - true).abs().sum(-1) / true.abs().sum(-1).clamp(min=1e-12)


class SpectralConv1d(nn.Module):
    """(B, C, n) -> (B, C, n): multiply the lowest `modes` Fourier modes by learned complex (C, C) matrices."""

    def __init__(self, width: int, modes: int) -> None:
        super().__init__()
        self.modes = modes
        scale = 1 / width
        self.weight = nn.Parameter(scale * torch.randn(modes, width, width, 2))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        vh = torch.fft.rfft(v.float())  # (B, C, n // 2 + 1); FFTs run in float32 (no bf16 FFT under autocast)
        w = torch.view_as_complex(self.weight)
        out = torch.zeros_like(vh)
        out[..., :self.modes] = torch.einsum("bim,mio->bom", vh[..., :self.modes], w)
        return torch.fft.irfft(out, n=v.shape[-1])


class FNO1d(nn.Module):
    """A Fourier neural operator for u (B, n) and lead time (B,) -> u after that time (B, n)."""

    def __init__(self, width: int = 32, modes: int = 16, layers: int = 4) -> None:
        super().__init__()
        self.lift = nn.Linear(3, width)
        self.spectral = nn.ModuleList(SpectralConv1d(width, modes) for _ in range(layers))
        self.pointwise = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(width, elementwise_affine=False) for _ in range(layers))
        self.film = nn.Sequential(nn.Linear(1, 64), nn.GELU(), nn.Linear(64, 2 * width * layers))
        nn.init.zeros_(self.film[-1].weight)
        nn.init.zeros_(self.film[-1].bias)
        self.project = nn.Sequential(nn.Linear(width, 64), nn.GELU(), nn.Linear(64, 1))

    def forward(self, u: torch.Tensor, lead: torch.Tensor) -> torch.Tensor:
        B, n = u.shape
        x = torch.arange(n, device=u.device, dtype=u.dtype) * (2 * math.pi / n)
        grid = torch.stack([torch.sin(x), torch.cos(x)], -1).expand(B, n, 2)
        v = self.lift(torch.cat([u[..., None], grid], -1))  # (B, n, C)
        film = self.film(lead[:, None].to(u.dtype)).view(B, len(self.spectral), 2, 1, -1)
        for layer, (spec, point, norm) in enumerate(zip(self.spectral, self.pointwise, self.norms)):
            h = spec(v.transpose(1, 2)).transpose(1, 2) + point(v)
            h = norm(h) * (1 + film[:, layer, 0]) + film[:, layer, 1]
            v = v + F.gelu(h)
        return u + self.project(v).squeeze(-1)


@torch.no_grad()
def median_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lead: torch.Tensor, batch: int = 512) -> float:
    """Median relative L1 error of model on the pairs."""
    model.eval()
    dev = next(model.parameters()).device
    errs = [relative_l1(model(x[i:i + batch].to(dev), lead[i:i + batch].to(dev)).cpu(), y[i:i + batch])
            for i in range(0, len(x), batch)]
    model.train()
    return float(torch.cat(errs).median())
