"""A GPT-2 that reads regression prompts as sequences (Garg et al. 2022).

The prompt (x_1, y_1, ..., x_n, y_n) becomes 2n tokens of size d + 1: x-tokens (x_i, 0) and
y-tokens (0, ..., 0, y_i). A linear read-in maps them to the model width; the causal GPT-2 backbone
runs; a linear read-out at each x-token predicts y_i from the i - 1 earlier points.
"""
from __future__ import annotations

import torch
from torch import nn

from ptmlib.ensemble import EnsembleTransformer
from ptmlib.models import tiny_gpt2_backbone


def interleave(x: torch.Tensor, y: torch.Tensor, pair_tokens: bool = False) -> torch.Tensor:
    """x (B, n, d), y (B, n) -> tokens (B, 2n, d + 1): x_1, y_1, x_2, y_2, ...

    x-tokens are (x_i, 0). y-tokens are (0, y_i) as in Garg et al., or with `pair_tokens` the whole
    example (x_i, y_i), which spares the model the layer it would spend copying x_i next to y_i.
    """
    b, n, d = x.shape
    z = x.new_zeros(b, 2 * n, d + 1)
    z[:, 0::2, :d] = x
    if pair_tokens:
        z[:, 1::2, :d] = x
    z[:, 1::2, d] = y
    return z


class RegressionGPT(nn.Module):
    """Read-in, a GPT-2 backbone (from `transformers`), read-out."""

    def __init__(self, d: int, n_points: int, n_embd: int, n_layer: int, n_head: int,
                 pair_tokens: bool = False) -> None:
        super().__init__()
        self.pair_tokens = pair_tokens
        self.read_in = nn.Linear(d + 1, n_embd)
        self.backbone = tiny_gpt2_backbone(2 * n_points, n_embd, n_layer, n_head)
        self.read_out = nn.Linear(n_embd, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predictions of every y_i from the points before it: (B, n)."""
        h = self.backbone(inputs_embeds=self.read_in(interleave(x, y, self.pair_tokens))).last_hidden_state  # (B, 2n, C)
        return self.read_out(h[:, 0::2]).squeeze(-1)


def regression_loss(model: RegressionGPT, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean squared error of the predictions of every y_i in a batch of prompts (x (B, n, d), y (B, n))."""
    x, y = batch
    return ((model(x, y) - y) ** 2).mean()


class EnsembleRegressionGPT(nn.Module):
    """E regression transformers trained side by side (`ptmlib.ensemble`), each on its own prompts.

    Same prompt format and read-out as `RegressionGPT`: x (E, B, n, d), y (E, B, n) -> predictions
    (E, B, n) of every y_i from the i - 1 points before it. Prompts without the member axis,
    x (B, n, d) and y (B, n), are shown to every member.
    """

    def __init__(self, E: int, d: int, n_points: int, width: int, n_layer: int, n_head: int,
                 pair_tokens: bool = True) -> None:
        super().__init__()
        self.pair_tokens = pair_tokens
        self.net = EnsembleTransformer(E, d + 1, 1, width, n_layer, n_head, max_len=2 * n_points)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x, y = x.expand(self.net.E, *x.shape), y.expand(self.net.E, *y.shape)
        E, B, n, d = x.shape
        z = interleave(x.reshape(E * B, n, d), y.reshape(E * B, n), self.pair_tokens).reshape(E, B, 2 * n, d + 1)
        return self.net(z, causal=True)[:, :, 0::2, 0]  # read out at the x-tokens
