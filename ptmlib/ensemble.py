"""A batched ensemble of small pre-LN transformers: E independent models evaluated as one computation.

Experiments that train the same architecture on E different data distributions (task diversity for
M = 2, 8, 32, ... tasks; a PFN per prior) are E training runs. At the sizes of this book each run is
too small to keep a CPU or GPU busy, so Python overhead dominates; stacking the E models' weights
into (E, ...) tensors runs all of them with the same number of kernel launches as one. Members share
nothing: each has its own weights, sees its own batch, and (with a summed loss and Adam) gets exactly
the update it would get alone.

Shapes: E members, B sequences each, T tokens, C = width, H heads. Inputs (E, B, T, d_in) ->
outputs (E, B, T, d_out). The block is GPT-2's: x + attn(ln_1(x)), then x + mlp(ln_2(x)), GELU MLP
(tanh form, GPT-2's `gelu_new`) of width 4C, a final LayerNorm, learned positions (optional: a PFN must not see positions).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ELinear(nn.Module):
    """E independent linear maps: (E, N, fan_in) -> (E, N, fan_out)."""

    def __init__(self, E: int, fan_in: int, fan_out: int, std: float = 0.02) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(E, fan_in, fan_out) * std)
        self.bias = nn.Parameter(torch.zeros(E, 1, fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class ELayerNorm(nn.Module):
    """E independent LayerNorms over the last dimension: (E, N, C) -> (E, N, C)."""

    def __init__(self, E: int, C: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(E, 1, C))
        self.bias = nn.Parameter(torch.zeros(E, 1, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class EBlock(nn.Module):
    """One pre-LN transformer block for E members; x is (E, B, T, C)."""

    def __init__(self, E: int, C: int, H: int, n_layer: int) -> None:
        super().__init__()
        self.H = H
        proj_std = 0.02 / math.sqrt(2 * n_layer)  # GPT-2's scaled init of residual projections
        self.ln_1, self.ln_2 = ELayerNorm(E, C), ELayerNorm(E, C)
        self.qkv = ELinear(E, C, 3 * C)
        self.proj = ELinear(E, C, C, std=proj_std)
        self.fc = ELinear(E, C, 4 * C)
        self.fc_out = ELinear(E, 4 * C, C, std=proj_std)

    def attn(self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        E, B, T, C = x.shape
        q, k, v = self.qkv(x.reshape(E, B * T, C)).split(C, dim=-1)  # each (E, B*T, C)
        q, k, v = (t.reshape(E * B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))  # (E*B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # (E*B, H, T, hd)
        y = y.transpose(1, 2).reshape(E, B * T, C)
        return self.proj(y).reshape(E, B, T, C)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        E, B, T, C = x.shape
        x = x + self.attn(self.ln_1(x.reshape(E, B * T, C)).reshape(E, B, T, C), mask, causal)
        h = self.ln_2(x.reshape(E, B * T, C))
        return x + self.fc_out(F.gelu(self.fc(h), approximate="tanh")).reshape(E, B, T, C)


class EnsembleTransformer(nn.Module):
    """E transformers with a linear read-in and read-out: (E, B, T, d_in) -> (E, B, T, d_out).

    `max_len` > 0 adds learned position embeddings (a sequence model); `max_len` = 0 leaves the
    model permutation-equivariant (a set model, as a PFN needs). `forward` takes either
    `causal=True` or a boolean `mask` (T, T) where True means "may attend" (or (E*B, 1, T, T): one
    mask per sequence, member-major). With `vocab_size` > 0 the input is token ids (E, B, T) read
    through an embedding table (d_in is then ignored). `alibi=True` replaces position embeddings by
    ALiBi's distance penalty on the attention scores.
    """

    def __init__(self, E: int, d_in: int, d_out: int, width: int, n_layer: int, n_head: int,
                 max_len: int = 0, vocab_size: int = 0, alibi: bool = False) -> None:
        super().__init__()
        if width % n_head:
            raise ValueError(f"width {width} is not divisible by n_head {n_head}")
        self.E = E
        # a language model reads token ids (E, B, T) through an embedding table instead of a linear read-in
        self.embed = nn.Parameter(torch.randn(E, vocab_size, width) * 0.02) if vocab_size else None
        self.read_in = None if vocab_size else ELinear(E, d_in, width)
        self.pos = nn.Parameter(torch.randn(E, 1, max_len, width) * 0.01) if max_len else None
        # ALiBi (MosaicBERT's choice): no position embeddings; head h adds -slope_h * |i - j| to its scores
        self.register_buffer("slopes", alibi_slopes(n_head) if alibi else None)
        self.blocks = nn.ModuleList(EBlock(E, width, n_head, n_layer) for _ in range(n_layer))
        self.ln_f = ELayerNorm(E, width)
        self.read_out = ELinear(E, width, d_out)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
                table: torch.Tensor | None = None) -> torch.Tensor:
        E, B, T = z.shape[:3]
        x = self.hidden(z, mask, causal, table)[-1]  # (E, B, T, C)
        return self.read_out(self.ln_f(x.reshape(E, B * T, -1))).reshape(E, B, T, -1)

    def hidden(self, z: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
               table: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The residual stream after the read-in and after every block: n_layer + 1 tensors (E, B, T, C).
        `table` (E, V, C) replaces the model's own embedding table (for embeddings shared between models)."""
        E, B, T = z.shape[:3]
        if self.embed is not None:
            emb = self.embed if table is None else table
            x = emb[torch.arange(E, device=z.device)[:, None, None], z]  # (E, B, T, C)
        else:
            x = self.read_in(z.reshape(E, B * T, -1)).reshape(E, B, T, -1)
        if self.pos is not None:
            x = x + self.pos[:, :, :T]
        if self.slopes is not None:
            mask, causal = alibi_mask(self.slopes, T, mask, causal, x.device), False
        states = [x]
        for block in self.blocks:
            x = block(x, mask, causal)
            states.append(x)
        return states


def alibi_slopes(n_head: int) -> torch.Tensor:
    """ALiBi's head slopes (n_head,): the geometric sequence 2^(-8h/H) of Press et al. for H >= 8 heads.
    With fewer than 8 heads we keep the first H slopes of the 8-head sequence (1/2, 1/4, ...), the most
    local ones: 2^(-8h/H) itself would give two heads the slopes 1/16 and 1/256, so flat on 64 tokens
    that no head could find a token's neighbours by position."""
    return 2.0 ** (-8.0 * torch.arange(1, n_head + 1) / max(n_head, 8))


def alibi_mask(slopes: torch.Tensor, T: int, mask: torch.Tensor | None, causal: bool,
               device: torch.device) -> torch.Tensor:
    """ALiBi's additive attention bias -slope_h * |i - j| (H, T, T), combined with a boolean or causal
    mask into one float mask: (1, H, T, T), or (N, H, T, T) for a per-sequence mask (N, 1, T, T)."""
    i = torch.arange(T, device=device)
    bias = -slopes.to(device)[:, None, None] * (i[None, :] - i[:, None]).abs()[None].float()  # (H, T, T)
    if causal:
        mask = (i[None, :] <= i[:, None])
    if mask is None:
        return bias[None]
    return bias[None] + torch.zeros(mask.shape, device=device).masked_fill(~mask, float("-inf"))


def member_state(model: nn.Module, e: int) -> dict[str, torch.Tensor]:
    """The weights of member e, shaped like those of an ensemble of one (for saving or comparison)."""
    return {k: v[e:e + 1].clone() for k, v in model.state_dict().items()}


def stack_members(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The inverse of `member_state`: the state of an ensemble whose member e has the weights states[e]
    (each shaped like an ensemble of one)."""
    return {k: torch.cat([s[k] for s in states]) for k in states[0]}


def tile_members(model: EnsembleTransformer, R: int) -> None:
    """Give member e the weights of member e % R, in place: with 2R members, replica r of the second arm
    starts from exactly the weights of replica r of the first (paired comparisons from one initialisation)."""
    model.load_state_dict(stack_members([member_state(model, e % R) for e in range(model.E)]))
