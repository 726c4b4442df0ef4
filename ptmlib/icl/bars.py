"""The bar distribution ("Riemann distribution") of prior-data fitted networks (Muller et al. 2022).

A PFN predicts a distribution over a real y by classifying it into K bins: logits (..., K) give bin
probabilities p_k, and the density is p_k / width_k inside bin k. The borders are quantiles of
y under the prior, so every bin holds the same prior mass. To give every real y a finite density
(full support), the first and last bins are replaced by half-normal tails that carry the same mass,
with scale equal to the bin's width: p(y) = p_0 * 2 phi((b_1 - y) / s_0) / s_0 for y < b_1, and
mirrored above b_{K-1}.
"""
from __future__ import annotations

import math

import torch


class BarDistribution:
    """Borders b_0 < ... < b_K (K bins); all methods take logits (..., K)."""

    def __init__(self, borders: torch.Tensor) -> None:
        if borders.ndim != 1 or len(borders) < 4 or not bool((borders.diff() > 0).all()):
            raise ValueError("borders must be a strictly increasing 1-D tensor of at least 4 values")
        self.borders = borders
        self.widths = borders.diff()  # (K,)

    @classmethod
    def from_samples(cls, samples: torch.Tensor, n_bars: int) -> "BarDistribution":
        """Borders at the quantiles of prior samples of y: bins of equal prior mass."""
        q = torch.linspace(0, 1, n_bars + 1, dtype=samples.dtype, device=samples.device)
        return cls(torch.quantile(samples.flatten(), q))

    @property
    def n_bars(self) -> int:
        return len(self.widths)

    def to(self, device: torch.device | str) -> "BarDistribution":
        return BarDistribution(self.borders.to(device))

    def log_density(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y) for y (...) and logits (..., K)."""
        logp, y = _broadcast(torch.log_softmax(logits.to(self.borders.dtype), -1), y)
        b, w = self.borders, self.widths
        k = (torch.searchsorted(b, y.contiguous(), right=True) - 1).clamp(0, self.n_bars - 1)
        inner = logp.gather(-1, k.unsqueeze(-1)).squeeze(-1) - torch.log(w[k])
        lo = logp[..., 0] + _log_half_normal(b[1] - y, w[0])
        hi = logp[..., -1] + _log_half_normal(y - b[-2], w[-1])
        return torch.where(y < b[1], lo, torch.where(y > b[-2], hi, inner))

    def nll(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-log p(y) in nats, elementwise: the PFN's training loss."""
        return -self.log_density(logits, y)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """E[y]: bin midpoints for inner bins, b_1 - s_0 sqrt(2/pi) and b_{K-1} + s_K sqrt(2/pi) for the tails."""
        b, w = self.borders, self.widths
        centers = (b[:-1] + b[1:]) / 2
        c = math.sqrt(2 / math.pi)
        centers = torch.cat([(b[1] - w[0] * c).view(1), centers[1:-1], (b[-2] + w[-1] * c).view(1)])
        return torch.softmax(logits.to(self.borders.dtype), -1) @ centers

    def cdf(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """P(Y <= y) for y (...)."""
        p, y = _broadcast(torch.softmax(logits.to(self.borders.dtype), -1), y)
        b, w = self.borders, self.widths
        cum = torch.cat([torch.zeros_like(p[..., :1]), p.cumsum(-1)], -1)  # (..., K + 1) mass below each border
        k = (torch.searchsorted(b, y.contiguous(), right=True) - 1).clamp(0, self.n_bars - 1)
        inner = cum.gather(-1, k.unsqueeze(-1)).squeeze(-1) + p.gather(-1, k.unsqueeze(-1)).squeeze(-1) * (y - b[k]) / w[k]
        normal = torch.distributions.Normal(0.0, 1.0)
        lo = p[..., 0] * 2 * (1 - normal.cdf((b[1] - y) / w[0]))
        hi = 1 - p[..., -1] * 2 * (1 - normal.cdf((y - b[-2]) / w[-1]))
        return torch.where(y < b[1], lo, torch.where(y > b[-2], hi, inner))

    def expected_improvement(self, logits: torch.Tensor, best: float) -> torch.Tensor:
        """E[max(best - Y, 0)] (improvement below `best`, for minimisation), exactly, bin by bin.

        Inner bin [a, b], uniform: 0 if best <= a; (best - a)^2 / (2 (b - a)) inside; best - (a + b)/2
        above. Tails Y = b_1 - s H and Y = b_{K-1} + s H with H half-normal, using
        E[(H - c)+] = 2 (phi(c) - c (1 - Phi(c))).
        """
        p = torch.softmax(logits.to(self.borders.dtype), -1)
        b, w = self.borders, self.widths
        a, hi = b[1:-2], b[2:-1]  # inner bins 1 .. K-2
        inner = torch.where(best <= a, torch.zeros_like(a),
                            torch.where(best >= hi, best - (a + hi) / 2, (best - a) ** 2 / (2 * (hi - a))))
        low = w[0] * _half_normal_excess((b[1] - best) / w[0]) if best < b[1] else best - (b[1] - w[0] * math.sqrt(2 / math.pi))
        c = (best - b[-2]) / w[-1]
        up = w[-1] * (c - math.sqrt(2 / math.pi) + _half_normal_excess(c)) if best > b[-2] else torch.zeros_like(w[-1])
        per_bin = torch.cat([torch.as_tensor(low, dtype=b.dtype).view(1), inner, torch.as_tensor(up, dtype=b.dtype).view(1)])
        return p @ per_bin

    def quantile(self, logits: torch.Tensor, q: float) -> torch.Tensor:
        """The q-quantile of every predicted distribution, by bisection on the cdf (60 halvings)."""
        span = float(self.widths[0] + self.widths[-1]) * 10
        lo = torch.full(logits.shape[:-1], float(self.borders[0]) - span, device=logits.device, dtype=self.borders.dtype)
        hi = torch.full_like(lo, float(self.borders[-1]) + span)
        for _ in range(60):
            mid = (lo + hi) / 2
            below = self.cdf(logits, mid) < q
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2


def _half_normal_excess(c: torch.Tensor | float) -> torch.Tensor:
    """E[(H - c)+] for H half-normal with unit scale and c >= 0."""
    c = torch.as_tensor(c)
    normal = torch.distributions.Normal(torch.zeros_like(c), torch.ones_like(c))
    return 2 * (torch.exp(normal.log_prob(c)) - c * (1 - normal.cdf(c)))


def _broadcast(p: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast per-distribution tensors p (..., K) against values y (...)."""
    shape = torch.broadcast_shapes(p.shape[:-1], y.shape)
    return p.expand(*shape, p.shape[-1]), y.expand(shape)


def _log_half_normal(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log of the half-normal density 2 phi(t / s) / s at t >= 0 (the tail bins)."""
    t = t.clamp(min=0)
    return math.log(2) - 0.5 * math.log(2 * math.pi) - torch.log(scale) - 0.5 * (t / scale) ** 2
