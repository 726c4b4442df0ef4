"""Procedurally defined tasks for studying what pretraining and fine-tuning change inside a model
(Jain et al. 2024): sequences of random tokens, labelled by how often a given token occurs.

Inputs are one-hot (E, B, T, V) so that they feed `ptmlib.ensemble.EnsembleTransformer` directly;
labels are counts in 0..T.
"""
from __future__ import annotations

import torch

from ptmlib.metrics import accuracy


def counting_batch(gen: torch.Generator, members: int, batch: int, length: int, vocab: int, token: int | list[int]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """`members` independent batches of uniform random sequences; member e's label counts token[e]
    (one token for all members if an int). Returns one-hot x (E, B, T, V) and counts y (E, B)."""
    tokens = torch.randint(vocab, (members, batch, length), generator=gen, device=gen.device)
    target = torch.as_tensor(token, device=gen.device).reshape(-1, 1, 1).expand(members, 1, 1)
    return torch.nn.functional.one_hot(tokens, vocab).float(), (tokens == target).sum(-1)


def count_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class logits (E, B, T + 1) of a sequence model: its per-position outputs averaged over positions."""
    return model(x).mean(2)


def count_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last block's residual stream averaged over positions: (E, B, C), the features a probe reads."""
    return model.hidden(x)[-1].mean(2)


def count_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of every member: (E,)."""
    with torch.no_grad():
        logits = count_logits(model, x)
    return torch.tensor([accuracy(lg, t) for lg, t in zip(logits, y)])
