"""A synthetic language with a known entropy rate: a stationary first-order Markov source.

Each of `n_symbols` states has `n_successors` possible next symbols, chosen at random, with
Dirichlet(`alpha`) weights. The entropy rate is exact:

    H = -sum_i pi_i sum_j P_ij log P_ij        (nats per symbol)

with pi the stationary distribution (pi P = pi). Sequences start from pi, so every position is
stationary. A model's cross-entropy on this source is H plus its mean KL divergence to the true
next-symbol distribution; `excess_loss` computes that KL exactly from the model's logits, which
measures what the model has left to learn without the sampling noise of a finite test set.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class MarkovSource:
    """Transition matrix `P` (n, n), stationary distribution `pi` (n,), exact `entropy_rate` (nats)."""

    def __init__(self, n_symbols: int = 64, n_successors: int = 8, alpha: float = 0.5, seed: int = 0) -> None:
        if not 1 <= n_successors <= n_symbols:
            raise ValueError(f"need 1 <= n_successors <= n_symbols, got {n_successors}, {n_symbols}")
        rng = np.random.default_rng(seed)
        P = np.zeros((n_symbols, n_symbols))
        for i in range(n_symbols):
            P[i, rng.permutation(n_symbols)[:n_successors]] = rng.dirichlet(np.full(n_successors, alpha))
        self._set_matrix(torch.from_numpy(P))

    @classmethod
    def mixture(cls, a: "MarkovSource", b: "MarkovSource", weight: float) -> "MarkovSource":
        """The source with transition matrix (1 - weight) P_a + weight P_b: a language that shares part
        of its structure with `a` (a distribution shift of controllable size)."""
        if a.n != b.n:
            raise ValueError(f"sources have {a.n} and {b.n} symbols")
        out = cls.__new__(cls)
        out._set_matrix((1 - weight) * a.P + weight * b.P)
        return out

    def _set_matrix(self, P: torch.Tensor) -> None:
        self.P = P
        self.n = P.shape[0]
        evals, evecs = torch.linalg.eig(P.T)
        k = int(torch.argmin((evals - 1).abs()))
        pi = evecs[:, k].real
        self.pi = pi / pi.sum()
        logP = torch.where(P > 0, P.log(), torch.zeros_like(P))
        self.row_entropy = -(P * logP).sum(1)  # (n,) entropy of the next symbol from each state
        self.entropy_rate = float(self.pi @ self.row_entropy)
        self._cdf = P.cumsum(1).float()

    def sample(self, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
        """(batch, length) int64 sequences; the first symbol is drawn from pi (inverse-CDF sampling)."""
        u = torch.rand(length, batch, 1, generator=gen, device=gen.device)  # u[t] is (batch, 1), contiguous
        cdf = self._cdf.to(u.device)
        x = torch.empty(batch, length, dtype=torch.int64, device=u.device)
        x[:, 0] = torch.searchsorted(self.pi.float().cumsum(0).to(u.device), u[0]).squeeze(1)
        for t in range(1, length):
            x[:, t] = torch.searchsorted(cdf[x[:, t - 1]], u[t]).squeeze(1)
        return x.clamp_(max=self.n - 1)

    def excess_loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean KL(true next-symbol law || model) over positions 0..T-2 of x (B, T); logits (B, T, n).

        Cross-entropy on this source = entropy_rate + this, in expectation over x.
        """
        P = self.P.to(logits.device, torch.float32)[x[:, :-1]]  # (B, T-1, n)
        logq = F.log_softmax(logits[:, :-1].float(), dim=-1)
        logp = torch.where(P > 0, P.log(), torch.zeros_like(P))
        return (P * (logp - logq)).sum(-1).mean()


def excess_eval(model: torch.nn.Module, source: MarkovSource, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Each member's mean KL to `source`'s true next-symbol law on sequences x (N, T), for an ensemble
    of E causal language models (`ptmlib.lm.ensemble_lm`): (E,). Its cross-entropy is entropy_rate + this."""
    device = next(model.parameters()).device
    E = model.E
    out = torch.zeros(E)
    with torch.no_grad():
        for rows in x.split(chunk):
            logits = model(rows.to(device).expand(E, *rows.shape), causal=True)  # (E, n, T, V)
            out += torch.stack([source.excess_loss(logits[e], rows.to(device)).cpu() for e in range(E)]) * len(rows)
    return out / len(x)
