"""What to predict without labels: masked-patch choice (Selfie), alteration reconstruction (TERA), and
prediction by energy minimisation (Energy-Based Transformers), at the size of 8x8 digits and toy spectrograms.

Shapes: E ensemble members (models trained side by side as one computation, `ptmlib.ensemble`), B
examples, T tokens (patches or frames), C width, Q the query width of Selfie's choice, F frequency bins.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.ensemble import ELinear, EnsembleTransformer
from ptmlib.metrics import linear_probe


# --------------------------------------------------------------------------------------------------
# Patches and masks
# --------------------------------------------------------------------------------------------------

def patchify(x: torch.Tensor, side: int = 8, patch: int = 2) -> torch.Tensor:
    """Cut square images x (N, side*side) into non-overlapping patch x patch tiles, row-major:
    (N, (side/patch)^2, patch*patch)."""
    if side % patch:
        raise ValueError(f"patch {patch} does not divide the image side {side}")
    g = side // patch
    img = x.reshape(-1, g, patch, g, patch)  # (N, gy, py, gx, px)
    return img.permute(0, 1, 3, 2, 4).reshape(-1, g * g, patch * patch)


def unpatchify(p: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """The inverse of `patchify`: p (N, g*g, patch*patch) -> x (N, (g*patch)^2)."""
    g = round(p.shape[1] ** 0.5)
    img = p.reshape(-1, g, g, patch, patch).permute(0, 1, 3, 2, 4)
    return img.reshape(len(p), -1)


def random_mask(E: int, B: int, T: int, n_masked: int, gen: torch.Generator) -> torch.Tensor:
    """Positions to hide: (E, B, n_masked) distinct token indices per example, drawn uniformly."""
    scores = torch.rand(E, B, T, generator=gen, device=gen.device)
    return scores.argsort(-1)[..., :n_masked]


def hide(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Zero the tokens at idx and add a 0/1 "masked" flag channel: tokens (E, B, T, d), idx (E, B, M)
    -> (E, B, T, d + 1)."""
    flag = torch.zeros(tokens.shape[:3], device=tokens.device).scatter(-1, idx, 1.0)  # (E, B, T)
    return torch.cat([tokens * (1 - flag[..., None]), flag[..., None]], -1)


def gather_tokens(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (E, B, T, d) at positions idx (E, B, M) -> (E, B, M, d)."""
    return t.gather(2, idx[..., None].expand(*idx.shape, t.shape[-1]))


# --------------------------------------------------------------------------------------------------
# Selfie: choose the right patch among distractors, vs reconstruct its pixels
# --------------------------------------------------------------------------------------------------

class MaskedPatchModels(nn.Module):
    """2R small Selfie-style models trained side by side: members 0..R-1 learn Selfie's masked-patch
    *choice*, members R..2R-1 masked-patch *reconstruction* (same networks, a pixel head, squared error).

    Selfie (Trinh et al., 2019): a *patch network* embeds every patch; an attention network reads the
    embeddings of the visible patches (with position embeddings) and writes a query at each masked
    position; the loss is the cross-entropy of picking the right patch, embedded by the same patch
    network, among distractors, scored by a dot product. After pretraining, the patch network is what is
    reused downstream.
    """

    def __init__(self, R: int, d_patch: int, n_tokens: int, width: int, n_layer: int, n_head: int) -> None:
        super().__init__()
        self.R = R
        E = 2 * R
        self.patch_net = nn.Sequential(ELinear(E, d_patch, width, std=d_patch**-0.5), nn.GELU(),
                                       ELinear(E, width, width, std=width**-0.5))  # (E, N, d) -> (E, N, C)
        self.pool = EnsembleTransformer(E, width + 1, width, width, n_layer, n_head, max_len=n_tokens)
        self.pixel_head = ELinear(R, width, d_patch, std=width**-0.5)  # reconstruction members only

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch network on every patch of every image, for each member: tokens (B, T, d) -> (2R, B, T, C)."""
        B, T, d = tokens.shape
        E = 2 * self.R
        return self.patch_net(tokens.reshape(1, B * T, d).expand(E, B * T, d)).reshape(E, B, T, -1)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """What a downstream probe sees: the patch network's embeddings of all patches, concatenated
        (Selfie reuses the patch network). tokens (B, T, d) -> (2R, B, T*C)."""
        return self.embed(tokens).flatten(2)

    def scores(self, tokens: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens (B, T, d), idx (2R, B, M) masked positions -> (choice logits (R, B*M, B*M): every masked slot
        of the batch against every masked patch of the batch, pixel predictions (R, B, M, d), targets (R, B, M, d))."""
        R, (B, T, d), M = self.R, tokens.shape, idx.shape[-1]
        emb = self.embed(tokens)  # (2R, B, T, C)
        out = gather_tokens(self.pool(hide(emb, idx)), idx)  # (2R, B, M, C): the network's answer at each masked slot
        keys = gather_tokens(emb[:R], idx[:R]).reshape(R, B * M, -1)  # (R, B*M, C): the true patches, embedded
        logits = out[:R].reshape(R, B * M, -1) @ keys.transpose(-1, -2)
        pix = self.pixel_head(out[R:].reshape(R, B * M, -1)).reshape(R, B, M, d)
        target = gather_tokens(tokens.expand(R, B, T, d), idx[R:])
        return logits, pix, target

    def losses(self, tokens: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, d), idx (2R, B, M) -> (choice loss (R,), reconstruction loss (R,)). The right answer
        for slot i is candidate i; the other B*M - 1 masked patches of the batch are its distractors."""
        logits, pix, target = self.scores(tokens, idx)
        R, N = logits.shape[:2]
        labels = torch.arange(N, device=logits.device).repeat(R)
        choice = F.cross_entropy(logits.reshape(R * N, N), labels, reduction="none").reshape(R, N).mean(1)
        recon = (pix - target).pow(2).mean((1, 2, 3))
        return choice, recon

    def choice_accuracy(self, tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """How often each Selfie member picks the right patch among the batch's masked patches: (R,)."""
        logits = self.scores(tokens, idx)[0]
        return (logits.argmax(-1) == torch.arange(logits.shape[1], device=logits.device)).float().mean(1)


def few_label_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                    per_class: int, draws: int, gen: torch.Generator, l2: float = 1e-3, max_iter: int = 50) -> float:
    """Mean test accuracy of a linear probe fitted on `per_class` labelled examples of each class, over
    `draws` random labelled subsets (the same subsets for every representation that uses the same `gen`
    state). train_f (N, C), test_f (N', C). A few dozen L-BFGS iterations fit so few examples."""
    classes = train_y.unique()
    accs = []
    for _ in range(draws):
        pick = torch.cat([torch.nonzero(train_y == c).flatten()[torch.randperm(int((train_y == c).sum()),
                          generator=gen)[:per_class]] for c in classes])
        accs.append(linear_probe(train_f[pick], train_y[pick], test_f, test_y, len(classes), l2=l2, max_iter=max_iter))
    return sum(accs) / len(accs)


# --------------------------------------------------------------------------------------------------
# TERA: reconstruct frames from their altered version (time, frequency, magnitude)
# --------------------------------------------------------------------------------------------------

def toy_speech(n: int, T: int, F_bins: int, n_speakers: int, n_phones: int, seg_len: int,
               gen: torch.Generator, speaker_gain: float = 0.6, noise: float = 0.3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Toy log-spectrograms with two kinds of content, as in speech:
    - a *speaker*: a smooth spectral envelope over the F bins, constant over the utterance (global);
    - *phones*: segments of `seg_len` frames, each a random phone that adds a peak at its own two bins
      (local, changing in time).
    Plus Gaussian noise of std `noise`. Returns spec (n, T, F), phone per frame (n, T), speaker (n,).
    The speakers' envelopes and phones' peaks are fixed (seed 0), the draws come from `gen`."""
    fixed = torch.Generator().manual_seed(0)
    f = torch.linspace(0, 1, F_bins)
    centre = torch.rand(n_speakers, 2, generator=fixed)  # two formant-like bumps per speaker
    envelope = (torch.exp(-((f - centre[:, :1]) / 0.15) ** 2) + torch.exp(-((f - centre[:, 1:]) / 0.15) ** 2))
    peaks = torch.zeros(n_phones, F_bins)
    for p in range(n_phones):
        peaks[p, torch.randperm(F_bins, generator=fixed)[:2]] = 1.0
    dev = gen.device
    speaker = torch.randint(0, n_speakers, (n,), generator=gen, device=dev)
    n_seg = -(-T // seg_len)
    phone_seg = torch.randint(0, n_phones, (n, n_seg), generator=gen, device=dev)
    phone = phone_seg.repeat_interleave(seg_len, 1)[:, :T]  # (n, T)
    spec = speaker_gain * envelope.to(dev)[speaker][:, None, :] + peaks.to(dev)[phone]
    spec = spec + noise * torch.randn(n, T, F_bins, generator=gen, device=dev)
    return spec, phone, speaker


ALTERATIONS = ("time", "freq", "mag")


def alter(spec: torch.Tensor, kinds: tuple[str, ...], gen: torch.Generator, time_frac: float = 0.15,
          block: int = 3, max_freq: int = 4, noise_std: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """TERA's stochastic alteration of spec (B, T, F), along the axes named in `kinds`:
    - "time": hide blocks of `block` consecutive frames (starting at ~`time_frac`/`block` of positions), set to 0;
    - "freq": zero one band of w ~ U{0..max_freq} consecutive bins for the whole utterance;
    - "mag": add Gaussian noise of std `noise_std` to every entry.
    Returns (altered (B, T, F), weight (B, T, F): 1 where the loss counts, i.e. altered entries)."""
    B, T, Fb = spec.shape
    dev = spec.device
    out, weight = spec.clone(), torch.zeros_like(spec)
    if "time" in kinds:
        starts = torch.rand(B, T, generator=gen, device=dev) < time_frac / block  # (B, T)
        hit = F.max_pool1d(F.pad(starts.float()[:, None], (block - 1, 0)), block, 1)[:, 0]  # (B, T): a start in the last `block` frames
        hit = hit.bool()[..., None].expand(B, T, Fb)
        out, weight = out.masked_fill(hit, 0.0), weight.masked_fill(hit, 1.0)
    if "freq" in kinds:
        w = torch.randint(0, max_freq + 1, (B, 1), generator=gen, device=dev)
        lo = (torch.rand(B, 1, generator=gen, device=dev) * (Fb - w + 1)).long()
        f = torch.arange(Fb, device=dev)
        band = ((f >= lo) & (f < lo + w))[:, None, :].expand(B, T, Fb)  # (B, T, F)
        out, weight = out.masked_fill(band, 0.0), weight.masked_fill(band, 1.0)
    if "mag" in kinds:
        out = out + noise_std * torch.randn(out.shape, generator=gen, device=dev)
        weight = torch.ones_like(weight)
    return out, weight


class AlterationModels(nn.Module):
    """One frame transformer per alteration policy, trained side by side: member e reconstructs
    the original frames from the alteration `policies[e]` with TERA's L1 loss on the altered entries."""

    def __init__(self, policies: list[tuple[str, ...]], F_bins: int, T: int, width: int, n_layer: int,
                 n_head: int) -> None:
        super().__init__()
        self.policies = policies
        self.net = EnsembleTransformer(len(policies), F_bins, F_bins, width, n_layer, n_head, max_len=T)

    def loss(self, spec: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """spec (B, T, F) -> the sum over members of each member's mean L1 loss on its altered entries."""
        pairs = [alter(spec, kinds, gen) for kinds in self.policies]
        altered = torch.stack([a for a, _ in pairs])  # (E, B, T, F)
        weight = torch.stack([w for _, w in pairs])
        err = (self.net(altered) - spec).abs() * weight
        return (err.sum((1, 2, 3)) / weight.sum((1, 2, 3)).clamp_min(1)).sum()

    def features(self, spec: torch.Tensor) -> torch.Tensor:
        """Frame representations of unaltered input: the last hidden state (E, B, T, C)."""
        E = len(self.policies)
        return self.net.ln_f(self.net.hidden(spec.expand(E, *spec.shape))[-1].flatten(1, 2)).reshape(
            E, *spec.shape[:2], -1)


# --------------------------------------------------------------------------------------------------
# Energy-based prediction: y_hat = argmin_y E(x, y) by gradient descent, vs a feed-forward predictor
# --------------------------------------------------------------------------------------------------

class EnergyNet(nn.Module):
    """E(x, y) -> scalar: an MLP on the concatenation [x, y] (Energy-Based Transformers, Gladstone et
    al., 2025, use a transformer; the idea is the same). The prediction is the end point of `steps`
    gradient steps on y, from y0, with a learned step size: "thinking" is optimisation."""

    def __init__(self, d_x: int, d_y: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_x + d_y, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))
        self.log_step = nn.Parameter(torch.tensor(0.0))

    def energy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, d_x), y (B, d_y) -> (B,)."""
        return self.net(torch.cat([x, y], -1)).squeeze(-1)

    def predict(self, x: torch.Tensor, y0: torch.Tensor, steps: int, create_graph: bool = False) -> list[torch.Tensor]:
        """The trajectory [y0, y1, ..., y_steps] of y_{k+1} = y_k - alpha * grad_y E(x, y_k). With
        `create_graph` the trajectory is differentiable (training backpropagates through the optimisation)."""
        ys = [y0]
        y = y0
        with torch.enable_grad():
            for _ in range(steps):
                if not y.requires_grad:
                    y = y.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.energy(x, y).sum(), y, create_graph=create_graph)
                y = y - self.log_step.exp() * g
                ys.append(y if create_graph else y.detach())
        return ys


class FeedForwardNet(nn.Module):
    """The same MLP as `EnergyNet`, read out as a prediction y = f(x) in one pass."""

    def __init__(self, d_x: int, d_y: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_x, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, d_y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
