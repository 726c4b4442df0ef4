"""LEVI (Roh et al.): ensemble a frozen pretrained model, layer by layer, with a small model trained from
scratch on the new task, so that pretrained features that are wrong for the new domain can be outvoted.

`LayerwiseEnsemble` views a frozen MLP body (Linear/activation pairs) after each of its layers, gives each
view its own linear head, adds the small model's logits as one more view, and averages the logits with
learned softmax weights.
"""
from __future__ import annotations

import torch
from torch import nn


class LayerwiseEnsemble(nn.Module):
    """LEVI (Roh et al.): a frozen pretrained MLP body (Linear/activation pairs) viewed layer by layer,
    plus a small model trained from scratch on the raw input. Each view gets its own linear head and
    the logits are averaged with learned softmax weights: x (B, d) -> logits (B, n_classes)."""

    def __init__(self, body: nn.Sequential, small: nn.Module, width: int, n_classes: int) -> None:
        super().__init__()
        self.body = body.requires_grad_(False)
        self.small = small
        n_views = len(body) // 2
        self.heads = nn.ModuleList(nn.Linear(width, n_classes) for _ in range(n_views))
        self.weights = nn.Parameter(torch.zeros(n_views + 1))

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every view: (n_views + 1, B, n_classes), the small model's last."""
        outs, h = [], x
        for i, head in enumerate(self.heads):
            h = self.body[2 * i + 1](self.body[2 * i](h))
            outs.append(head(h))
        return torch.stack(outs + [self.small(x)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("v,vbc->bc", torch.softmax(self.weights, 0), self.views(x))
