"""Spectral and sparse adaptation of linear layers, and locating what fine-tuning changed.

Shapes: every wrapper takes a frozen `nn.Linear` with weight W (d_out, d_in) and maps x (..., d_in) to
(..., d_out).

    SVFit     W = U diag(s) V^T + W_rest; only the top-r singular values s (r,) train
    SaRA      W + M * D; D (d_out, d_in) trains only where the mask M marks the smallest-|W| entries,
              with a nuclear-norm penalty ||M * D||_* that keeps the update low-rank
    PELA      W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T): the layer replaced by two thin ones (compression)

`distil_hidden_states` is PELA's repair: train the compressed model to match the original's hidden
states. `graft` implements skill localisation: keep the fine-tuned value only for the parameters that
moved most, the pretrained value everywhere else. Layers are swapped with `adapters.replace_linears`.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.profiles import Profile
from ptmlib.train import History, TrainConfig, train


class SVFitLinear(nn.Module):
    """A frozen linear layer whose top-`rank` singular values are trainable (SVFit, Sun et al.)."""

    def __init__(self, base: nn.Linear, rank: int | None = None) -> None:
        super().__init__()
        W = base.weight.detach()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        r = rank or len(S)
        self.register_buffer("U", U[:, :r].clone())
        self.register_buffer("Vh", Vh[:r].clone())
        self.register_buffer("rest", W - U[:, :r] @ torch.diag(S[:r]) @ Vh[:r])  # exactly 0 when r is full
        self.register_buffer("bias", None if base.bias is None else base.bias.detach().clone())
        self.s = nn.Parameter(S[:r].clone())

    def weight(self) -> torch.Tensor:
        return self.rest + (self.U * self.s) @ self.Vh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


def smallest_mask(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask (same shape) of the `fraction` of entries with the smallest |weight| (SaRA's
    "temporarily ineffective" parameters)."""
    k = max(1, int(round(fraction * weight.numel())))
    idx = weight.abs().flatten().argsort()[:k]
    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[idx] = True
    return mask.reshape(weight.shape)


class SaRALinear(nn.Module):
    """A frozen linear layer plus a trainable update restricted to its smallest-magnitude weights
    (SaRA, Hu et al.): W + M * D, stored as the k values of D on the mask (zero at initialisation)."""

    def __init__(self, base: nn.Linear, fraction: float = 0.1) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.register_buffer("index", smallest_mask(base.weight.detach(), fraction).flatten().nonzero().squeeze(1))
        self.values = nn.Parameter(torch.zeros(len(self.index)))

    def update(self) -> torch.Tensor:
        """M * D as a dense (d_out, d_in) matrix."""
        flat = torch.zeros(self.base.weight.numel(), device=self.values.device, dtype=self.values.dtype)
        return flat.index_put((self.index,), self.values).reshape(self.base.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.base.weight + self.update(), self.base.bias)

    def nuclear(self) -> torch.Tensor:
        """||M * D||_*, the sum of the update's singular values (SaRA's low-rank penalty)."""
        return torch.linalg.matrix_norm(self.update(), ord="nuc")


def low_rank(base: nn.Linear, rank: int) -> nn.Sequential:
    """The best rank-`rank` approximation of a linear layer (Eckart-Young), as two thin layers:
    x -> (sqrt(S) V^T) x -> (U sqrt(S)) (.) + b. Parameters: rank * (d_in + d_out) + d_out."""
    U, S, Vh = torch.linalg.svd(base.weight.detach(), full_matrices=False)
    root = S[:rank].sqrt()
    where = {"device": base.weight.device, "dtype": base.weight.dtype}  # a GPU layer stays on the GPU
    down = nn.Linear(base.in_features, rank, bias=False, **where)
    up = nn.Linear(rank, base.out_features, bias=base.bias is not None, **where)
    with torch.no_grad():
        down.weight.copy_(root[:, None] * Vh[:rank])
        up.weight.copy_(U[:, :rank] * root)
        if base.bias is not None:
            up.bias.copy_(base.bias)
    return nn.Sequential(down, up)


def rank_for_fraction(d_in: int, d_out: int, fraction: float) -> int:
    """The largest rank whose two thin layers hold at most `fraction` of the d_out x d_in weights."""
    return max(1, int(fraction * d_in * d_out / (d_in + d_out)))


def graft(pretrained: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], fraction: float,
          always: tuple[str, ...] = (), gen: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """Skill localisation by grafting (Panigrahi et al.): the pretrained state with the fine-tuned values
    copied in for the `fraction` of floating-point parameters that moved most (|theta_ft - theta_pre|,
    ranked over the whole model). Entries whose names start with `always` (e.g. a new head) are copied
    whole and not counted. With `gen`, the same number of parameters is chosen uniformly at random
    instead (the control). Returns (state, number of grafted parameters)."""
    movable = [k for k, v in pretrained.items() if v.is_floating_point() and not k.startswith(always)]
    moved = torch.cat([(finetuned[k] - pretrained[k]).abs().flatten() for k in movable])
    k = max(1, int(round(fraction * moved.numel())))
    chosen = torch.zeros(moved.numel(), dtype=torch.bool)
    chosen[moved.topk(k).indices if gen is None else torch.randperm(moved.numel(), generator=gen)[:k]] = True
    out = {name: v.clone() for name, v in pretrained.items()}
    start = 0
    for name in movable:
        n = pretrained[name].numel()
        sel = chosen[start:start + n].reshape(pretrained[name].shape)
        out[name] = torch.where(sel, finetuned[name], pretrained[name])
        start += n
    for name in pretrained:
        if name.startswith(always):
            out[name] = finetuned[name].clone()
    return out, k


def distil_hidden_states(student: nn.Module, teacher: nn.Module, batch_fn: Callable[[torch.Generator], dict],
                         cfg: TrainConfig, profile: Profile, *, batch: int = 16) -> History:
    """Feature distillation (PELA's intermediate stage): train the student's trainable weights so that
    every layer's hidden state matches the frozen teacher's, sum of per-layer mean squared errors.
    `batch_fn(gen)` returns a dict of encoder inputs (input_ids, attention_mask)."""
    teacher.eval()

    def loss_fn(m: nn.Module, enc: dict) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(**enc, output_hidden_states=True).hidden_states
        got = m(**enc, output_hidden_states=True).hidden_states
        return sum(F.mse_loss(a, b) for a, b in zip(got[1:], target[1:]))

    return train(student, batch_fn, loss_fn, cfg, profile, examples_per_step=batch, progress=False)
