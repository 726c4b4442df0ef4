"""ELECTRA-style replaced-token detection with the three embedding-sharing modes of DeBERTaV3.

A small generator G is trained with masked LM; its samples replace the masked tokens, and a
discriminator D learns to tell, at every position, whether the token is original or replaced.
Shapes: E pairs (one per sharing mode), B rows, T positions, V vocabulary, C width.

Embedding sharing between G and D (He et al., DeBERTaV3):
  NES  - no sharing: D has its own table E_D.
  ES   - shared: D reads G's table, E_D = E_G, so both losses pull on one table (the "tug of war").
  GDES - gradient-disentangled: E_D = sg(E_G) + E_delta; D's loss only trains the residual E_delta
         (initialised at zero), G's loss alone trains E_G.
`ElectraPairs` holds all three as two ensembles (G: E members, D: E members), so they train on the
same batches in one computation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.ensemble import EnsembleTransformer
from ptmlib.lm import ensemble_lm, pooled_features, scored_losses
from ptmlib.objectives.denoising import IGNORE, mlm, replace_tokens

MODES = ("NES", "ES", "GDES")


@dataclass
class RTDLosses:
    """Per-member losses (E,) of one step, and the fraction of positions the generator replaced."""

    generator: torch.Tensor
    discriminator: torch.Tensor
    replaced: torch.Tensor


class ElectraPairs(nn.Module):
    """E generator/discriminator pairs; member e shares embeddings according to modes[e]."""

    def __init__(self, modes: list[str], vocab_size: int, width: int, gen_layers: int, disc_layers: int,
                 n_head: int = 2) -> None:
        super().__init__()
        unknown = set(modes) - set(MODES)
        if unknown:
            raise ValueError(f"unknown sharing modes {sorted(unknown)}; allowed: {', '.join(MODES)}")
        self.modes = list(modes)
        E = len(modes)
        self.gen = EnsembleTransformer(E, 0, vocab_size, width, gen_layers, n_head, vocab_size=vocab_size, alibi=True)
        self.disc = EnsembleTransformer(E, 0, 1, width, disc_layers, n_head, vocab_size=vocab_size, alibi=True)
        with torch.no_grad():  # GDES: E_delta starts at zero, so D starts from G's embeddings
            for e, mode in enumerate(self.modes):
                if mode == "GDES":
                    self.disc.embed[e].zero_()

    def disc_table(self) -> torch.Tensor:
        """The embedding table each discriminator reads: (E, V, C)."""
        rows = []
        for e, mode in enumerate(self.modes):
            if mode == "NES":
                rows.append(self.disc.embed[e])
            elif mode == "ES":
                rows.append(self.gen.embed[e])
            else:
                rows.append(self.gen.embed[e].detach() + self.disc.embed[e])
        return torch.stack(rows)

    def losses(self, ids: torch.Tensor, gen: torch.Generator, mask_rate: float = 0.15) -> RTDLosses:
        """One ELECTRA step's losses for every member on the same text ids (B, T) (CPU generator)."""
        E = len(self.modes)
        V = self.gen.embed.shape[1]
        device = self.gen.embed.device
        b = mlm(ids, mask_rate, V, gen)
        chosen = (b.targets != IGNORE).to(device)
        inputs = b.inputs.to(device).expand(E, *ids.shape)
        h = self.gen.ln_f(self.gen.hidden(inputs)[-1].flatten(1, 2))  # (E, B*T, C), bidirectional
        flat = chosen.flatten()
        logits = torch.baddbmm(self.gen.read_out.bias, h[:, flat], self.gen.read_out.weight)  # (E, n, V)
        target = ids.to(device).flatten()[flat]
        g_loss = torch.stack([F.cross_entropy(logits[e], target) for e in range(E)])
        pairs = [replace_tokens(ids.to(device), chosen, logits[e], gen) for e in range(E)]
        corrupted, labels = torch.stack([c for c, _ in pairs]), torch.stack([r for _, r in pairs]).float()
        d_logits = self.disc(corrupted, table=self.disc_table()).squeeze(-1)  # (E, B, T)
        d_loss = F.binary_cross_entropy_with_logits(d_logits, labels, reduction="none").flatten(1).mean(1)
        return RTDLosses(g_loss, d_loss, labels.flatten(1).mean(1))

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean-pooled final discriminator states over non-PAD tokens (bidirectional): (E, N, C)."""
        with torch.no_grad():
            return pooled_features(self.disc, ids, [True] * len(self.modes), table=self.disc_table())


def gradient_cosine(model: ElectraPairs, losses: RTDLosses, member: int, weight: float) -> tuple[float, float]:
    """The "tug of war" on a shared table: cosine between the generator's gradient and the (weighted)
    discriminator's gradient on G's embedding table of one member, flattened over the whole table, and
    averaged over the rows (tokens) both gradients touch. Leaves .grad untouched."""
    table = model.gen.embed
    g = torch.autograd.grad(losses.generator[member], table, retain_graph=True)[0][member]
    d = torch.autograd.grad(weight * losses.discriminator[member], table, retain_graph=True)[0][member]
    flat = float(F.cosine_similarity(g.flatten(), d.flatten(), dim=0))
    both = (g.norm(dim=1) > 0) & (d.norm(dim=1) > 0)
    rows = float(F.cosine_similarity(g[both], d[both], dim=1).mean()) if both.any() else float("nan")
    return flat, rows


def mean_pairwise_cosine(table: torch.Tensor, ids: torch.Tensor) -> float:
    """Average cosine similarity between the embeddings of distinct tokens `ids`: table (V, C)."""
    x = F.normalize(table[ids].detach().float(), dim=1)
    sim = x @ x.T
    n = len(ids)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


class RTDExperiment(nn.Module):
    """The ELECTRA pairs plus a masked-LM baseline whose encoder is the same size as the discriminators,
    trained on the same text with the same masking rate. `loss(ids, gen)` is the summed training loss
    of all of them; every `tug_every` calls it also records the ES member's gradient cosines in `tug`
    (step, flattened cosine, row-averaged cosine) and the last per-member losses in `last`."""

    def __init__(self, vocab_size: int, width: int, gen_layers: int, disc_layers: int, rtd_weight: float = 50.0,
                 mask_rate: float = 0.15, tug_every: int = 10) -> None:
        super().__init__()
        self.pairs = ElectraPairs(list(MODES), vocab_size, width, gen_layers, disc_layers)
        self.mlm = ensemble_lm(1, vocab_size, width, disc_layers, n_head=2, alibi=True)
        self.rtd_weight, self.mask_rate, self.tug_every = rtd_weight, mask_rate, tug_every
        self.tug: list[tuple[int, float, float]] = []
        self.calls = 0
        self.last: dict[str, torch.Tensor] = {}

    def loss(self, ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        out = self.pairs.losses(ids, gen, self.mask_rate)
        if self.training and self.tug_every and self.calls % self.tug_every == 0:
            self.tug.append((self.calls, *gradient_cosine(self.pairs, out, MODES.index("ES"), self.rtd_weight)))
        self.calls += self.training
        b = mlm(ids, self.mask_rate, self.pairs.gen.embed.shape[1], gen)
        device = self.pairs.gen.embed.device
        mlm_loss = scored_losses(self.mlm, b.inputs[None].to(device), b.targets[None].to(device), None)
        self.last = {"generator": out.generator.detach(), "discriminator": out.discriminator.detach(),
                     "mlm": mlm_loss.detach()}
        return (out.generator + self.rtd_weight * out.discriminator).sum() + mlm_loss.sum()

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """Probe features (ids right-padded with PAD): the three discriminators, then the MLM baseline: (4, N, C)."""
        return torch.cat([self.pairs.features(ids), pooled_features(self.mlm, ids, [True])])
