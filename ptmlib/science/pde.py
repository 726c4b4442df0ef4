"""A small pseudo-spectral PDE solver in torch: periodic 1D equations u_t = L u + N(u), solved with
exponential time differencing (ETDRK4, Cox & Matthews 2002, with Kassam & Trefethen's 2005 contour
integrals for its coefficients), batched over trajectories with one coefficient per trajectory.

On x in [0, length) with N points and wavenumbers k = 2 pi m / length:

    advection      u_t + c u_x = 0               L = -i c k            N = 0           (exact: shift by c t)
    heat           u_t = nu u_xx                 L = -nu k^2           N = 0           (mode m decays as exp(-nu k^2 t))
    burgers        u_t + u u_x = nu u_xx         L = -nu k^2           N = -(i k / 2) F[u^2]
    allen_cahn     u_t = eps u_xx + u - u^3      L = -eps k^2 + 1      N = -F[u^3]
    ks             u_t = -u_xx - u_xxxx - u u_x  L = k^2 - k^4         N = -(i k / 2) F[u^2]   (coefficient unused)

Nonlinear terms are de-aliased with the 2/3 rule. The linear part is integrated exactly, so advection
and heat are exact to rounding for any step. The same code runs on a periodic square (u0 (B, n, n)):
there k^2 is |k|^2 and the transport derivative is d/dx + d/dy (`Grid`). Arithmetic is in float64;
`solve` returns float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

EQUATIONS = ("advection", "heat", "burgers", "allen_cahn", "ks")


def wavenumbers(n: int, length: float = 1.0) -> torch.Tensor:
    """k (n,) in FFT order, float64: 2 pi m / length for m = 0, 1, ..., -1."""
    return 2 * math.pi / length * torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)


@dataclass(frozen=True)
class Grid:
    """Fourier symbols on a periodic grid of `dims` (1 or 2) dimensions with n points per side:
    d = symbol of the transport derivative (d/dx in 1D, d/dx + d/dy in 2D, without the i),
    k2 = |k|^2 (minus the Laplacian), and the 2/3-rule de-aliasing mask, each shaped (n,) or (n, n)."""

    dims: int
    d: torch.Tensor
    k2: torch.Tensor
    dealias: torch.Tensor

    @staticmethod
    def make(n: int, dims: int, length: float = 1.0, device: str | torch.device = "cpu") -> Grid:
        k = wavenumbers(n, length).to(device)
        keep = (k.abs() < (2 / 3) * k.abs().max()).to(torch.float64)
        if dims == 1:
            return Grid(1, k, k ** 2, keep)
        if dims == 2:
            kx, ky = k[:, None], k[None, :]
            return Grid(2, kx + ky, kx ** 2 + ky ** 2, keep[:, None] * keep[None, :])
        raise ValueError(f"only 1D and 2D grids are supported, got {dims} dimensions")

    def fft(self, u: torch.Tensor) -> torch.Tensor:
        return torch.fft.fftn(u, dim=tuple(range(-self.dims, 0)))

    def ifft(self, v: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifftn(v, dim=tuple(range(-self.dims, 0))).real


def linear_operator(eq: str, grid: Grid, coef: torch.Tensor) -> torch.Tensor:
    """The diagonal of L in Fourier space, (B, *grid) complex128, for coefficients coef (B,)."""
    if eq not in EQUATIONS:
        raise ValueError(f"unknown equation {eq!r}; allowed: {', '.join(EQUATIONS)}")
    c = coef.to(torch.float64).view(-1, *([1] * grid.dims))
    if eq == "advection":
        return -1j * c * grid.d
    if eq in ("heat", "burgers"):
        return (-c * grid.k2).to(torch.complex128)
    if eq == "allen_cahn":
        return (-c * grid.k2 + 1).to(torch.complex128)
    if grid.dims != 1:
        raise ValueError("ks is implemented in 1D only")
    return (grid.k2 - grid.k2 ** 2).expand(len(c), -1).to(torch.complex128)


def nonlinear(eq: str, v: torch.Tensor, grid: Grid) -> torch.Tensor:
    """N(u) in Fourier space for v = F[u] (B, *grid) complex128; zero for the linear equations.
    Burgers and KS use the conservative form -(1/2) d(u^2) (along x + y in 2D)."""
    if eq in ("advection", "heat"):
        return torch.zeros_like(v)
    u = grid.ifft(v)
    if eq == "allen_cahn":
        return -grid.fft(u ** 3) * grid.dealias
    return -0.5j * grid.d * grid.fft(u ** 2) * grid.dealias


def etdrk4_coefficients(L: torch.Tensor, h: float, contour: int = 64) -> tuple[torch.Tensor, ...]:
    """(E, E2, Q, f1, f2, f3) of ETDRK4 for the diagonal L (B, n), step h. The phi-functions are
    averaged over a circle of radius 1 around each h L (Kassam & Trefethen), which avoids the
    cancellation of the closed forms near h L = 0; the full circle also handles imaginary L."""
    r = torch.exp(2j * math.pi * (torch.arange(contour, dtype=torch.float64) + 0.5) / contour)
    LR = h * L[..., None] + r  # (B, n, M)
    eLR = torch.exp(LR)
    Q = h * ((torch.exp(LR / 2) - 1) / LR).mean(-1)
    f1 = h * ((-4 - LR + eLR * (4 - 3 * LR + LR ** 2)) / LR ** 3).mean(-1)
    f2 = h * ((2 + LR + eLR * (-2 + LR)) / LR ** 3).mean(-1)
    f3 = h * ((-4 - 3 * LR - LR ** 2 + eLR * (4 - LR)) / LR ** 3).mean(-1)
    return torch.exp(h * L), torch.exp(h * L / 2), Q, f1, f2, f3


def solve(eq: str, u0: torch.Tensor, coef: torch.Tensor, times: Sequence[float], dt: float,
          length: float = 1.0) -> torch.Tensor:
    """Solutions at `times` (increasing, >= 0, multiples of dt up to rounding) from u0, (B, n) in 1D
    or (B, n, n) in 2D: (B, len(times), *grid) float32. coef (B,) holds each trajectory's c, nu or eps
    (2D advection moves along the diagonal with velocity (c, c))."""
    B = u0.shape[0]
    if len(coef) != B:
        raise ValueError(f"need one coefficient per trajectory: {len(coef)} for {B}")
    grid = Grid.make(u0.shape[-1], u0.dim() - 1, length, u0.device)
    E, E2, Q, f1, f2, f3 = etdrk4_coefficients(linear_operator(eq, grid, coef.to(u0.device)), dt)
    v = grid.fft(u0.to(torch.float64))
    out, t_steps = [], 0
    for t in times:
        target = round(t / dt)
        if target < t_steps or abs(target * dt - t) > 1e-9 * max(1.0, abs(t)):
            raise ValueError(f"times must be increasing multiples of dt={dt}; got {t}")
        while t_steps < target:
            Nv = nonlinear(eq, v, grid)
            a = E2 * v + Q * Nv
            Na = nonlinear(eq, a, grid)
            b = E2 * v + Q * Na
            Nb = nonlinear(eq, b, grid)
            c = E2 * a + Q * (2 * Nb - Nv)
            Nc = nonlinear(eq, c, grid)
            v = E * v + Nv * f1 + 2 * (Na + Nb) * f2 + Nc * f3
            t_steps += 1
        out.append(grid.ifft(v))
    return torch.stack(out, 1).float()


def random_field(batch: int, n: int, gen: torch.Generator, modes: int = 4, decay: float = 1.0,
                 length: float = 1.0) -> torch.Tensor:
    """Smooth periodic random functions (batch, n): sum over m = 1..modes of a_m cos + b_m sin of
    2 pi m x / length, with a_m, b_m ~ N(0, 1) / m^decay; zero mean, scaled to max |u| = 1."""
    x = torch.arange(n, dtype=torch.float64) * length / n
    m = torch.arange(1, modes + 1, dtype=torch.float64)
    a, b = (torch.randn(2, batch, modes, generator=gen, dtype=torch.float64) / m ** decay).unbind(0)
    phase = 2 * math.pi * m[:, None] * x[None] / length  # (modes, n)
    u = a @ torch.cos(phase) + b @ torch.sin(phase)
    return (u / u.abs().amax(-1, keepdim=True)).float()


def bumps(batch: int, n: int, gen: torch.Generator, count: int = 2, width: float = 0.05) -> torch.Tensor:
    """Sums of `count` periodic Gaussian bumps of height 1 at random centres: (batch, n), >= 0."""
    x = torch.arange(n, dtype=torch.float64) / n
    centres = torch.rand(batch, count, 1, generator=gen, dtype=torch.float64)
    d = (x - centres + 0.5) % 1.0 - 0.5  # periodic distance in [-0.5, 0.5)
    return torch.exp(-0.5 * (d / width) ** 2).sum(1).float()
