"""ELECTRA-style replaced-token detection with the three embedding-sharing modes of DeBERTaV3.

A small generator G is trained with masked LM; its samples replace the masked tokens, and a
discriminator D learns to tell, at every position, whether the token is original or replaced.
Shapes: E pairs, B rows, T positions, V vocabulary, C the discriminator's width (and the token
tables'), Cg the generator's width.

As in ELECTRA, the generator may be narrower than the discriminator: it reads the C-wide token table
through a linear projection to its own width Cg (ELECTRA found generators 1/4 to 1/2 of the
discriminator's size best; a generator as strong as the discriminator makes its replacements too hard).

Embedding sharing between G and D (He et al., DeBERTaV3):
  NES  - no sharing: D has its own table E_D.
  ES   - shared: D reads G's table, E_D = E_G, so both losses pull on one table (the "tug of war").
  GDES - gradient-disentangled: E_D = sg(E_G) + E_delta; D's loss only trains the residual E_delta
         (initialised at zero), G's loss alone trains E_G.
`ElectraPairs` holds E pairs as two ensembles (G: E members, D: E members), so they train on the
same batches in one computation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.ensemble import EnsembleTransformer
from ptmlib.lm import pooled_features
from ptmlib.objectives.denoising import IGNORE, mlm, replace_tokens

MODES = ("NES", "ES", "GDES")


@dataclass
class RTDLosses:
    """Per-member losses (E,) of one step, and the fraction of positions the generator replaced."""

    generator: torch.Tensor
    discriminator: torch.Tensor
    replaced: torch.Tensor


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -p log p - (1 - p) log(1 - p) in nats, elementwise (0 at p = 0 and p = 1)."""
    p = p.double()
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def detection_gain(losses: RTDLosses) -> torch.Tensor:
    """What each discriminator learned beyond its label frequency (E,), nats: the entropy H(r) of its
    replaced fraction r (the loss of always answering 'replaced with probability r') minus its loss."""
    return binary_entropy(losses.replaced) - losses.discriminator.double()


class ElectraPairs(nn.Module):
    """E generator/discriminator pairs; member e shares embeddings according to modes[e]. The
    generators are `gen_width` wide and read the `width`-wide table E_G through a projection. Token ids
    below `first_token` (special tokens such as [MASK]) never occur in text: the generators never
    propose them (a replacement by [MASK] would be trivial to detect).

    With `same_start` every pair starts from the same weights (member 0's), and all members draw their
    samples with the same random numbers: pairs that differ only in how they share the embeddings then
    differ only because of it (under NES and GDES, whose generators never see the discriminator's loss,
    the generators stay identical)."""

    def __init__(self, modes: list[str], vocab_size: int, width: int, gen_width: int, gen_layers: int,
                 disc_layers: int, n_head: int = 2, first_token: int = 0, same_start: bool = True) -> None:
        super().__init__()
        unknown = set(modes) - set(MODES)
        if unknown:
            raise ValueError(f"unknown sharing modes {sorted(unknown)}; allowed: {', '.join(MODES)}")
        self.modes, self.first_token = list(modes), first_token
        E = len(modes)
        self.embed = nn.Parameter(torch.randn(E, vocab_size, width) * 0.02)  # E_G: (E, V, C)
        # the generator: C-wide embeddings -> linear projection to Cg -> blocks -> logits over V
        self.gen = EnsembleTransformer(E, width, vocab_size, gen_width, gen_layers, n_head, alibi=True)
        self.disc = EnsembleTransformer(E, 0, 1, width, disc_layers, n_head, vocab_size=vocab_size, alibi=True)
        with torch.no_grad():
            if same_start:  # every member starts as member 0
                for p in self.parameters():
                    p.copy_(p[:1].expand_as(p))
            for e, mode in enumerate(self.modes):  # GDES: E_delta starts at zero, so D starts from G's embeddings
                if mode == "GDES":
                    self.disc.embed[e].zero_()

    def disc_table(self) -> torch.Tensor:
        """The embedding table each discriminator reads: (E, V, C)."""
        rows = []
        for e, mode in enumerate(self.modes):
            if mode == "NES":
                rows.append(self.disc.embed[e])
            elif mode == "ES":
                rows.append(self.embed[e])
            else:
                rows.append(self.embed[e].detach() + self.disc.embed[e])
        return torch.stack(rows)

    def detect(self, corrupted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each discriminator's mean binary cross-entropy (E,) on corrupted ids (E, B, T) or (B, T)
        with labels is_replaced of the same shape."""
        E = len(self.modes)
        corrupted, labels = corrupted.expand(E, *corrupted.shape[-2:]), labels.expand(E, *labels.shape[-2:])
        d_logits = self.disc(corrupted, table=self.disc_table()).squeeze(-1)  # (E, B, T)
        return F.binary_cross_entropy_with_logits(d_logits, labels.float(), reduction="none").flatten(1).mean(1)

    def corrupt(self, ids: torch.Tensor, gen: torch.Generator, mask_rate: float = 0.15
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The generators' half of a step on text ids (B, T) (CPU generator): their masked-LM losses (E,),
        and the corrupted ids (E, B, T) with the labels is_replaced (E, B, T) for the discriminators."""
        E = len(self.modes)
        V = self.embed.shape[1]
        device = self.embed.device
        b = mlm(ids, mask_rate, V, gen)
        chosen = (b.targets != IGNORE).to(device)
        inputs = b.inputs.to(device).expand(E, *ids.shape)
        x = self.embed[torch.arange(E, device=device)[:, None, None], inputs]  # (E, B, T, C)
        h = self.gen.ln_f(self.gen.hidden(x)[-1].flatten(1, 2))  # (E, B*T, Cg), bidirectional
        flat = chosen.flatten()
        logits = torch.baddbmm(self.gen.read_out.bias, h[:, flat], self.gen.read_out.weight)  # (E, n, V)
        logits[..., :self.first_token] = float("-inf")  # special tokens never occur in text
        target = ids.to(device).flatten()[flat]
        g_loss = torch.stack([F.cross_entropy(logits[e], target) for e in range(E)])
        state, pairs = gen.get_state(), []
        for e in range(E):  # the same random numbers for every member: equal generators, equal corruptions
            gen.set_state(state)
            pairs.append(replace_tokens(ids.to(device), chosen, logits[e], gen))
        return g_loss, torch.stack([c for c, _ in pairs]), torch.stack([r for _, r in pairs])

    def losses(self, ids: torch.Tensor, gen: torch.Generator, mask_rate: float = 0.15) -> RTDLosses:
        """One ELECTRA step's losses for every member on the same text ids (B, T) (CPU generator)."""
        g_loss, corrupted, labels = self.corrupt(ids, gen, mask_rate)
        return RTDLosses(g_loss, self.detect(corrupted, labels), labels.float().flatten(1).mean(1))

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean-pooled final discriminator states over non-PAD tokens (bidirectional): (E, N, C)."""
        with torch.no_grad():
            return pooled_features(self.disc, ids, [True] * len(self.modes), table=self.disc_table())


def unigram_corruption(ids: torch.Tensor, mask_rate: float, symbols: torch.Tensor, probs: torch.Tensor,
                       gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A corruption that knows no context: at the positions masked language modelling would choose,
    put a token drawn from the frequencies `probs` over `symbols`. Returns corrupted ids (B, T) and the
    labels is_replaced (a draw equal to the original counts as original), as `replace_tokens`."""
    chosen = mlm(ids, mask_rate, int(symbols.max()) + 1, gen).targets != IGNORE
    logits = torch.full((int(chosen.sum()), int(symbols.max()) + 1), float("-inf"))
    logits[:, symbols] = probs.double().log().float()
    return replace_tokens(ids, chosen, logits, gen)


def gradient_cosine(model: ElectraPairs, losses: RTDLosses, member: int, weight: float) -> tuple[float, float]:
    """The "tug of war" on a shared table: cosine between the generator's gradient and the (weighted)
    discriminator's gradient on G's embedding table of one member, flattened over the whole table, and
    averaged over the rows (tokens) both gradients touch. Leaves .grad untouched."""
    table = model.embed
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
    """The three sharing modes with a `gen_width`-wide, `gen_layers`-deep generator (`pairs`), plus
    `n_strong` NES pairs whose generators have their discriminators' size (`strong`, the generator
    ELECTRA found too strong),
    all trained on the same text with the same masking rate. `loss(ids, gen)` is the summed training
    loss of all of them; every `tug_every` calls it also records the ES member's gradient cosines in
    `tug` (step, flattened cosine, row-averaged cosine) and the last per-member losses in `last`."""

    def __init__(self, vocab_size: int, width: int, gen_width: int, gen_layers: int, disc_layers: int,
                 rtd_weight: float = 50.0, mask_rate: float = 0.15, tug_every: int = 10, n_strong: int = 1,
                 first_token: int = 0) -> None:
        super().__init__()
        self.pairs = ElectraPairs(list(MODES), vocab_size, width, gen_width, gen_layers, disc_layers,
                                  first_token=first_token)
        self.strong = ElectraPairs(["NES"] * n_strong, vocab_size, width, width, disc_layers, disc_layers,
                                   first_token=first_token)
        self.rtd_weight, self.mask_rate, self.tug_every = rtd_weight, mask_rate, tug_every
        self.tug: list[tuple[int, float, float]] = []
        self.calls = 0
        self.last: dict[str, torch.Tensor] = {}

    def loss(self, ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        out = self.pairs.losses(ids, gen, self.mask_rate)
        if self.training and self.tug_every and self.calls % self.tug_every == 0:
            self.tug.append((self.calls, *gradient_cosine(self.pairs, out, MODES.index("ES"), self.rtd_weight)))
        self.calls += self.training
        strong = self.strong.losses(ids, gen, self.mask_rate)
        self.last = {"generator": out.generator.detach(), "discriminator": out.discriminator.detach(),
                     "strong_generator": strong.generator.detach(), "strong_discriminator": strong.discriminator.detach()}
        return (out.generator + self.rtd_weight * out.discriminator).sum() \
            + (strong.generator + self.rtd_weight * strong.discriminator).sum()
