"""Prior-data fitted networks (Muller et al. 2022): a transformer trained on datasets drawn from a
prior learns to output the posterior predictive distribution in one forward pass.

A dataset is a context (x_i, y_i), i < k, and queries x_j, j >= k. Context tokens embed (x, y, 1),
query tokens (x, 0, 0). Every token attends to the context tokens only, and there are no position
embeddings, so the output is invariant to the order of the context and each query is predicted
independently. The head returns logits over the bins of a `BarDistribution`. Training minimises
the bar distribution's NLL of the queries' y, which is minimised by the posterior predictive.
"""
from __future__ import annotations

import torch
from torch import nn

from ptmlib.ensemble import EnsembleTransformer


def context_mask(k: int, total: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(total, total) boolean attention mask: every token may attend to the first k tokens only."""
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[:, :k] = True
    return mask


class PFN(nn.Module):
    """E PFNs side by side: x_ctx (E, B, k, D), y_ctx (E, B, k), x_q (E, B, m, D) -> logits (E, B, m, n_bars).

    Inputs without the member axis are shown to every member."""

    def __init__(self, E: int, x_dim: int, n_bars: int, width: int, n_layer: int, n_head: int) -> None:
        super().__init__()
        self.E = E
        self.net = EnsembleTransformer(E, x_dim + 2, n_bars, width, n_layer, n_head, max_len=0)

    def forward(self, x_ctx: torch.Tensor, y_ctx: torch.Tensor, x_q: torch.Tensor) -> torch.Tensor:
        if x_ctx.ndim == 3:
            x_ctx, y_ctx, x_q = (t.expand(self.E, *t.shape) for t in (x_ctx, y_ctx, x_q))
        k = x_ctx.shape[2]
        if k < 1:
            raise ValueError("a PFN needs at least one context point")
        ctx = torch.cat([x_ctx, y_ctx.unsqueeze(-1), torch.ones_like(y_ctx).unsqueeze(-1)], -1)  # (E, B, k, D + 2)
        qry = torch.cat([x_q, x_q.new_zeros(*x_q.shape[:-1], 2)], -1)  # (E, B, m, D + 2)
        z = torch.cat([ctx, qry], 2)
        return self.net(z, mask=context_mask(k, z.shape[2], z.device))[:, :, k:]
