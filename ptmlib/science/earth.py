"""A toy atmosphere and a weather foundation model in miniature (Prithvi WxC, P31; Prithvi, P14;
lightweight decoders, P47).

The atmosphere is 2-D barotropic vorticity on a periodic beta-plane [0, 2 pi)^2 with a passive tracer c:

    zeta_t + u . grad zeta + beta v = nu lap zeta        zeta = lap psi,  (u, v) = (-psi_y, psi_x)
    c_t    + u . grad c             = kappa lap c

solved pseudo-spectrally with ETDRK4 (the coefficients of `ptmlib.science.pde`): the linear part
L = i beta k_x / |k|^2 - nu |k|^2 (the Rossby-wave term and viscosity) is integrated exactly, the advection
N = -u . grad f is computed on the grid and de-aliased with the 2/3 rule. Without viscosity the truncated
system conserves energy (1/2) <u^2 + v^2>, enstrophy (1/2) <zeta^2>, and the tracer's mean and variance.

Shapes: a flow state is (B, 2, n, n) = [zeta, c] on an n x n grid (axis -2 is y, axis -1 is x); the model's
variables are (B, 3, n, n) = [u, v, zeta]; tokens are (B, T, D) with T = (n / patch)^2.

    TinyPrithvi(x, lead, mask):  patches of [u, v, zeta] -> linear (D) + position + lead-time embedding,
                                 masked tokens replaced by a learned mask token -> transformer encoder
                                 -> linear head -> the variables at time t + lead (lead 0: reconstruction)
    LightDecoder(tokens):        a two-layer MLP per token -> one new variable on the grid
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.science import pde

LENGTH = 2 * math.pi  # the side of the periodic domain


# ----------------------------------------------------------------------------- the toy atmosphere
def spectral_symbols(n: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
    """(kx, ky, k2, dealias), each (n, n) float64 on the 2 pi-periodic square: kx varies along the last
    axis (x), ky along the first (y); k2 = kx^2 + ky^2; dealias is the 2/3-rule mask."""
    grid = pde.Grid.make(n, 2, LENGTH, device)
    k = pde.wavenumbers(n, LENGTH).to(device)
    kx, ky = k[None, :].expand(n, n), k[:, None].expand(n, n)
    return kx, ky, grid.k2, grid.dealias


def velocity(zeta_hat: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, k2: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fourier coefficients of (u, v) = (-psi_y, psi_x) from those of zeta = lap psi (psi_hat = -zeta_hat / k^2)."""
    psi_hat = -zeta_hat / torch.where(k2 == 0, 1.0, k2)
    return -1j * ky * psi_hat, 1j * kx * psi_hat


def advection(v_hat: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, k2: torch.Tensor,
              dealias: torch.Tensor) -> torch.Tensor:
    """N = -u . grad f for both fields f = [zeta, c], in Fourier space: v_hat (B, 2, n, n) -> (B, 2, n, n),
    the velocity coming from zeta; products on the grid, de-aliased with the 2/3 rule."""
    ifft = lambda a: torch.fft.ifft2(a).real  # noqa: E731
    u_hat, w_hat = velocity(v_hat[:, 0], kx, ky, k2)
    u, w = ifft(u_hat)[:, None], ifft(w_hat)[:, None]  # (B, 1, n, n): x- and y-velocity
    fx, fy = ifft(1j * kx * v_hat), ifft(1j * ky * v_hat)  # (B, 2, n, n) gradients of zeta and c
    return -torch.fft.fft2(u * fx + w * fy) * dealias


def linear_symbol(k2: torch.Tensor, kx: torch.Tensor, beta: float, nu: float, kappa: float) -> torch.Tensor:
    """The diagonal of L (2, n, n) complex128: i beta k_x / k^2 - nu k^2 for zeta, -kappa k^2 for c."""
    rossby = 1j * beta * kx / torch.where(k2 == 0, 1.0, k2)
    return torch.stack([rossby - nu * k2, (-kappa * k2).to(torch.complex128)])


def simulate(zeta0: torch.Tensor, c0: torch.Tensor, times: list[float], dt: float, beta: float = 1.0,
             nu: float = 0.0, kappa: float = 0.0) -> torch.Tensor:
    """[zeta, c] at `times` (increasing multiples of dt) from zeta0, c0 (B, n, n): (B, len(times), 2, n, n)
    float64. ETDRK4 (Cox & Matthews) with `pde.etdrk4_coefficients`; the same four stages as `pde.solve`,
    with the advection of this module as the nonlinear term."""
    n = zeta0.shape[-1]
    kx, ky, k2, dealias = spectral_symbols(n, zeta0.device)
    E, E2, Q, f1, f2, f3 = pde.etdrk4_coefficients(linear_symbol(k2, kx, beta, nu, kappa), dt)
    N = lambda a: advection(a, kx, ky, k2, dealias)  # noqa: E731
    v = torch.fft.fft2(torch.stack([zeta0, c0], 1).to(torch.float64)) * dealias
    out, steps = [], 0
    for t in times:
        target = round(t / dt)
        if target < steps or abs(target * dt - t) > 1e-9 * max(1.0, t):
            raise ValueError(f"times must be increasing multiples of dt={dt}; got {t}")
        for _ in range(target - steps):
            Nv = N(v)
            a = E2 * v + Q * Nv
            Na = N(a)
            b = E2 * v + Q * Na
            Nb = N(b)
            c = E2 * a + Q * (2 * Nb - Nv)
            v = E * v + Nv * f1 + 2 * (Na + Nb) * f2 + N(c) * f3
        steps = target
        out.append(torch.fft.ifft2(v).real)
    return torch.stack(out, 1)


def random_vorticity(batch: int, n: int, gen: torch.Generator, peak: float = 4.0, rms: float = 1.0) -> torch.Tensor:
    """Random vorticity fields (batch, n, n) float64 with an energy spectrum peaked at wavenumber `peak`
    (amplitude |k| exp(-(|k|/peak)^2), random phases), zero mean, root-mean-square `rms`, within the 2/3 mask."""
    kx, ky, k2, dealias = spectral_symbols(n)
    k = k2.sqrt()
    amp = k * torch.exp(-(k / peak) ** 2) * dealias
    noise = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    z = torch.fft.ifft2(torch.fft.fft2(noise) * amp).real
    return rms * z / z.pow(2).mean((-2, -1), keepdim=True).sqrt()


def band(n: int) -> torch.Tensor:
    """A tracer's initial condition (n, n): a smooth zonal band, (1 + cos y) / 2 - 'moisture' near y = 0."""
    y = torch.arange(n, dtype=torch.float64) * LENGTH / n
    return ((1 + torch.cos(y)) / 2)[:, None].expand(n, n).clone()


def invariants(zeta: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
    """Energy (1/2)<u^2 + v^2>, enstrophy (1/2)<zeta^2>, tracer mass <c> and variance <c^2> - <c>^2, each
    (...,) for fields (..., n, n); <.> is the mean over the grid."""
    kx, ky, k2, _ = spectral_symbols(zeta.shape[-1], zeta.device)
    u_hat, w_hat = velocity(torch.fft.fft2(zeta.to(torch.float64)), kx, ky, k2)
    speed2 = torch.fft.ifft2(u_hat).real ** 2 + torch.fft.ifft2(w_hat).real ** 2
    mean = lambda f: f.mean((-2, -1))  # noqa: E731
    return {"energy": 0.5 * mean(speed2), "enstrophy": 0.5 * mean(zeta ** 2), "tracer_mass": mean(c),
            "tracer_variance": mean(c ** 2) - mean(c) ** 2}


def variables(zeta: torch.Tensor) -> torch.Tensor:
    """The model's variables [u, v, zeta] (..., 3, n, n) float32 from vorticity (..., n, n)."""
    shape = zeta.shape
    z = zeta.reshape(-1, *shape[-2:]).to(torch.float64)
    kx, ky, k2, _ = spectral_symbols(shape[-1], zeta.device)
    u_hat, w_hat = velocity(torch.fft.fft2(z), kx, ky, k2)
    out = torch.stack([torch.fft.ifft2(u_hat).real, torch.fft.ifft2(w_hat).real, z], 1)
    return out.reshape(*shape[:-2], 3, *shape[-2:]).float()


def rain(zeta: torch.Tensor, scale: float, threshold: float = 1.0) -> torch.Tensor:
    """A toy precipitation (..., n, n) float32: max(0, zeta / scale - threshold). Ekman pumping lifts air in
    proportion to the vorticity (w ~ zeta), so it rains where cyclonic vorticity exceeds `threshold` scales."""
    return F.relu(zeta / scale - threshold).float()


# ----------------------------------------------------------------------------- the model
def to_tokens(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Fields (B, C, n, n) -> patch tokens (B, (n/patch)^2, C * patch^2), row-major over patches."""
    B, C, n, _ = x.shape
    if n % patch:
        raise ValueError(f"patch {patch} does not divide the grid side {n}")
    g = n // patch
    return x.reshape(B, C, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * patch * patch)


def from_tokens(t: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """The inverse of `to_tokens`: (B, g*g, C * patch^2) -> (B, C, g*patch, g*patch)."""
    B, T, _ = t.shape
    g = math.isqrt(T)
    x = t.reshape(B, g, g, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, channels, g * patch, g * patch)


def token_mask(batch: int, tokens: int, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """A boolean mask (batch, tokens) hiding round(ratio * tokens) random tokens per example."""
    hidden = round(ratio * tokens)
    order = torch.rand(batch, tokens, generator=gen, device=gen.device).argsort(-1)
    return order < hidden  # rank of each token's score: the `hidden` lowest are masked


class TinyPrithvi(nn.Module):
    """A Prithvi-WxC-style masked forecaster: variables at time t with some tokens masked, plus a lead time
    index (0 = reconstruct, 1..leads = forecast that many snapshots ahead) -> the variables at t + lead."""

    def __init__(self, n: int, channels: int = 3, patch: int = 4, dim: int = 64, depth: int = 3, heads: int = 4,
                 leads: int = 2):
        super().__init__()
        self.channels, self.patch = channels, patch
        tokens = (n // patch) ** 2
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.position = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        self.lead = nn.Embedding(leads + 1, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, channels * patch * patch)

    def encode(self, x: torch.Tensor, lead: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, n, n), lead (B,) long, mask (B, T) bool or None -> latent tokens (B, T, D)."""
        h = self.embed(to_tokens(x, self.patch))
        if mask is not None:
            h = torch.where(mask[..., None], self.mask_token.to(h.dtype), h)
        h = h + self.position + self.lead(lead)[:, None]
        return self.norm(self.encoder(h))

    def forward(self, x: torch.Tensor, lead: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The predicted variables at t + lead: (B, C, n, n)."""
        return from_tokens(self.head(self.encode(x, lead, mask)), self.channels, self.patch)


class LightDecoder(nn.Module):
    """A shallow decoder for a new variable on an encoder's latent tokens (P47): per token, a two-layer MLP
    D -> hidden -> patch^2 values, reassembled on the grid. `frozen=True` runs the encoder without gradients
    (only the decoder learns); otherwise the encoder is fine-tuned with it (full fine-tuning)."""

    def __init__(self, encoder: TinyPrithvi, hidden: int = 64, frozen: bool = True, lead: int = 0):
        super().__init__()
        self.encoder, self.frozen, self.lead = encoder, frozen, lead
        dim = encoder.head.in_features
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, encoder.patch ** 2))
        encoder.requires_grad_(not frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, n, n) variables at time t -> the new variable (B, n, n) at time t + lead (no mask)."""
        lead = torch.full((len(x),), self.lead, dtype=torch.long, device=x.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens = self.encoder.encode(x, lead)
        return from_tokens(self.mlp(tokens), 1, self.encoder.patch)[:, 0]


def pretraining_batches(fields: torch.Tensor, batch: int, leads: int, mask_ratio: float, patch: int
                        ) -> Callable[[torch.Generator], tuple[torch.Tensor, ...]]:
    """A `batch_fn` for `ptm.train` over trajectories `fields` (N, S, C, n, n): each example is a random
    trajectory, lead l in 0..leads and start s < S - l, returned as (x_s, l, mask, x_{s+l}) with a fraction
    `mask_ratio` of x_s's tokens masked - Prithvi WxC's mix of masked reconstruction (l = 0) and forecasting."""
    N, S, C, n, _ = fields.shape
    if leads >= S:
        raise ValueError(f"need more snapshots ({S}) than the longest lead ({leads})")

    def draw(gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        dev = gen.device
        i = torch.randint(0, N, (batch,), generator=gen, device=dev)
        lead = torch.randint(0, leads + 1, (batch,), generator=gen, device=dev)
        s = (torch.rand(batch, generator=gen, device=dev) * (S - lead)).long()
        mask = token_mask(batch, (n // patch) ** 2, mask_ratio, gen)
        i, s, lead_cpu = i.to(fields.device), s.to(fields.device), lead.to(fields.device)
        return fields[i, s], lead, mask, fields[i, s + lead_cpu]

    return draw


def masked_forecast_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean squared error over every grid point of the variables predicted from a masked input, for a batch
    (x, lead, mask, target) of `pretraining_batches`."""
    x, lead, mask, target = batch
    dev = next(model.parameters()).device
    return F.mse_loss(model(x.to(dev), lead.to(dev), mask.to(dev)), target.to(dev))


def relative_mse(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Mean squared error over a test set divided by the variance of the truth (0 = perfect, 1 = predicting
    the mean)."""
    return float(F.mse_loss(pred, true) / true.var())


# ----------------------------------------------------------------------------- the chapter's data and tasks
def band_trajectories(count: int, n: int, gen: torch.Generator, times: list[float], dt: float, beta: float,
                      nu: float = 1e-3, peak: float = 4.0, rms: float = 1.5) -> torch.Tensor:
    """`count` trajectories of [zeta, c] at `times` on an n x n grid: (count, len(times), 2, n, n) float64, each
    from `random_vorticity(count, n, gen, peak, rms)` and the tracer `band(n)`, run by `simulate`."""
    zeta0 = random_vorticity(count, n, gen, peak=peak, rms=rms)
    return simulate(zeta0, band(n).expand(count, -1, -1), times, dt, beta=beta, nu=nu)


def forecast_pairs(traj: torch.Tensor, lead: int, every: int, scale: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """All (x_t, x_{t+lead}) pairs of trajectories traj (N, S, 2, n, n): the variables on every `every`-th grid
    point divided by `scale` (1, 3, 1, 1), each (N * (S - lead), 3, n / every, n / every) float32."""
    x = variables(traj[:, :, 0])[..., ::every, ::every] / scale
    return x[:, : traj.shape[1] - lead].flatten(0, 1), x[:, lead:].flatten(0, 1)


def rain_pairs(traj: torch.Tensor, every: int, scale: torch.Tensor, zeta_scale: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """States at snapshots 2-5 of traj (N, S >= 7, 2, n, n), on every `every`-th point divided by `scale`
    (1, 3, 1, 1), and the `rain` (scale `zeta_scale`) one snapshot later: (4N, 3, m, m), (4N, m, m), m = n / every."""
    x = variables(traj[:, 2:6, 0])[..., ::every, ::every] / scale
    return x.flatten(0, 1), rain(traj[:, 3:7, 0], zeta_scale)[..., ::every, ::every].flatten(0, 1)


def forecast_error(net: TinyPrithvi, state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   lead: int) -> float:
    """`relative_mse` of `net` loaded with `state` forecasting x (B, C, m, m) `lead` snapshots ahead (no mask)
    against y (B, C, m, m)."""
    net.load_state_dict(state)
    with torch.no_grad():
        return relative_mse(net(x, torch.full((len(x),), lead)), y)


class Forecaster(nn.Module):
    """`net` loaded with `state`, answering the forecast `lead` snapshots ahead without a mask:
    x (B, C, m, m) -> (B, C, m, m)."""

    def __init__(self, net: TinyPrithvi, state: dict[str, torch.Tensor], lead: int = 1):
        super().__init__()
        self.net, self.lead = net, lead
        self.net.load_state_dict(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, torch.full((len(x),), self.lead, dtype=torch.long, device=x.device))
