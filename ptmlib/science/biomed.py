"""Biomedical pretraining in miniature: a simulated ECG with rhythm labels, JEPA vs reconstruction
pretraining on it, and graphs drawn from graphons for the question of when graph pretraining helps.

Shapes: N records (or graphs), L samples, K beats, T patches (tokens) of `patch` samples, E ensemble
members (models trained side by side as one computation, `ptmlib.ensemble`), R replicas per objective,
B a batch, C width, n nodes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.ensemble import ELinear, EnsembleTransformer
from ptmlib.objectives.selfsup import gather_tokens, hide, patchify

# --------------------------------------------------------------------------------------------------
# A McSharry-style ECG simulator: each beat is a sum of five Gaussian waves P, Q, R, S, T
# --------------------------------------------------------------------------------------------------

RHYTHMS = ("normal", "tachycardia", "atrial fibrillation", "ectopic beat")
# wave: (offset from the R peak in s, amplitude in mV, width in s); the T wave's offset scales with sqrt(RR)
WAVES = {"P": (-0.20, 0.15, 0.025), "Q": (-0.035, -0.12, 0.010), "R": (0.0, 1.0, 0.012),
         "S": (0.035, -0.25, 0.010), "T": (0.28, 0.30, 0.050)}
MAX_BEATS = 16


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def rr_intervals(labels: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """RR intervals in s for each record's rhythm: labels (N,) -> (rr (N, K), ectopic (N, K) bool).

    normal: 60-90 bpm with 3% beat-to-beat jitter; tachycardia: 110-150 bpm; atrial fibrillation:
    70-120 bpm with independent RR in [0.6, 1.4] x the mean (irregularly irregular); ectopic beat: a
    normal rhythm in which one beat comes at 0.6 x the mean RR, followed by a compensatory 1.4 x pause."""
    N, K = len(labels), MAX_BEATS
    lo = torch.tensor([60.0, 110.0, 70.0, 60.0])[labels]
    hi = torch.tensor([90.0, 150.0, 120.0, 90.0])[labels]
    mean_rr = 60.0 / (lo + (hi - lo) * torch.rand(N, generator=gen))  # (N,)
    jitter = 1 + 0.03 * torch.randn(N, K, generator=gen)
    irregular = 0.6 + 0.8 * torch.rand(N, K, generator=gen)
    rr = mean_rr[:, None] * torch.where((labels == 2)[:, None], irregular, jitter)
    ectopic = torch.zeros(N, K, dtype=torch.bool)
    which = torch.randint(2, 5, (N,), generator=gen)  # the premature beat lands inside a 4 s window
    rows = torch.nonzero(labels == 3).flatten()
    ectopic[rows, which[rows]] = True
    rr[rows, which[rows]] = 0.6 * mean_rr[rows]
    rr[rows, which[rows] + 1] = 1.4 * mean_rr[rows]
    return rr, ectopic


def beat_times(rr: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """R-peak times in s: a random phase before the window, then the cumulative RR: (N, K)."""
    start = -torch.rand(len(rr), generator=gen) * rr[:, 0]  # the first beat falls in [-RR, 0]
    return start[:, None] + torch.cumsum(rr, 1) - rr[:, :1]


def _waves(rr: torch.Tensor, beats: torch.Tensor, ectopic: torch.Tensor, labels: torch.Tensor, t: torch.Tensor
           ) -> torch.Tensor:
    """The noiseless sum of every beat's five waves: rr, beats, ectopic (N, K), labels (N,), t (L,) -> (N, L)."""
    x = torch.zeros(len(beats), len(t))
    no_p = (labels == 2)[:, None] | ectopic  # (N, K)
    for name, (offset, amp, width) in WAVES.items():
        if name == "T":
            offset = offset * rr.clamp(0.3, 1.5).sqrt()  # QT shortens as the heart rate rises (Bazett)
        a = torch.full_like(beats, amp)
        w = torch.full_like(beats, width)
        if name == "P":
            a = a.masked_fill(no_p, 0.0)
        if name in "QRS":
            w = torch.where(ectopic, 3 * w, w)
        if name == "R":
            a = torch.where(ectopic, 1.3 * a, a)
        if name == "T":
            a = torch.where(ectopic, -1.5 * a, a)
        centre = beats + offset  # (N, K)
        x += (a[..., None] * torch.exp(-0.5 * ((t - centre[..., None]) / w[..., None]) ** 2)).sum(1)
    return x


def simulate_ecg(labels: torch.Tensor, gen: torch.Generator, seconds: float = 4.0, fs: int = 100,
                 noise: float = 0.03, wander: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-lead ECGs for the rhythm labels (N,) (indices into RHYTHMS): (signals (N, L) in mV, R-peak
    times (N, K) in s). Each beat adds five Gaussian waves; an ectopic beat has no P wave, a QRS three
    times wider and an inverted T wave; atrial fibrillation has no P waves but 4-8 Hz fibrillatory waves.
    Nuisances: a gain in [0.7, 1.3], baseline wander (0.15-0.4 Hz, amplitude up to `wander`) and white
    noise of standard deviation `noise`. L = seconds * fs; K = MAX_BEATS (beats past the window add nothing)."""
    N = len(labels)
    rr, ectopic = rr_intervals(labels, gen)
    beats = beat_times(rr, gen)  # (N, K)
    t = torch.arange(int(seconds * fs)) / fs  # (L,)
    x = torch.cat([_waves(rr[i:i + 4096], beats[i:i + 4096], ectopic[i:i + 4096], labels[i:i + 4096], t)
                   for i in range(0, N, 4096)])  # in chunks, so that the (N, K, L) intermediates stay small
    af = (labels == 2).float()[:, None]
    f_rate, f_phase = _uniform(N, 4.0, 8.0, gen), _uniform(N, 0, 2 * math.pi, gen)
    x += af * 0.05 * torch.sin(2 * math.pi * f_rate[:, None] * t + f_phase[:, None])
    gain = _uniform(N, 0.7, 1.3, gen)[:, None]
    w_rate, w_phase, w_amp = _uniform(N, 0.15, 0.4, gen), _uniform(N, 0, 2 * math.pi, gen), _uniform(N, 0, wander, gen)
    x = gain * x + w_amp[:, None] * torch.sin(2 * math.pi * w_rate[:, None] * t + w_phase[:, None])
    return x + noise * torch.randn(x.shape, generator=gen), beats


def r_peaks(x: torch.Tensor, threshold: float = 0.6) -> list[torch.Tensor]:
    """A minimal R-peak detector: samples that exceed both neighbours and `threshold` times the record's
    largest sample (the R wave towers over P and T). x (N, L) -> a list of N index tensors."""
    mid = x[:, 1:-1]
    peak = (mid > threshold * x.amax(1, keepdim=True)) & (mid > x[:, :-2]) & (mid >= x[:, 2:])
    return [torch.nonzero(row).flatten() + 1 for row in peak]


def beats_in_window(beats: torch.Tensor, length: int, fs: int = 100) -> torch.Tensor:
    """How many R peaks a detector can see in each record: beats whose nearest sample is neither the first
    nor the last of the `length` samples (a peak needs a neighbour on each side). beats (N, K) -> (N,)."""
    nearest = (beats * fs).round()
    return ((nearest >= 1) & (nearest <= length - 2)).sum(1)


def ecg_dataset(n_per_class: int, gen: torch.Generator, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-balanced, shuffled set of simulated ECGs: (x (4 n_per_class, L), labels (4 n_per_class,))."""
    labels = torch.arange(len(RHYTHMS)).repeat_interleave(n_per_class)
    labels = labels[torch.randperm(len(labels), generator=gen)]
    return simulate_ecg(labels, gen, **kw)[0], labels


def to_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut signals x (N, L) into T = L / patch tokens of `patch` samples: (N, T, patch)."""
    if x.shape[-1] % patch:
        raise ValueError(f"patch {patch} does not divide the length {x.shape[-1]}")
    return x.reshape(len(x), -1, patch)


# --------------------------------------------------------------------------------------------------
# JEPA vs reconstruction: 2R encoders trained side by side
# --------------------------------------------------------------------------------------------------

class SignalPretrainers(nn.Module):
    """2R small transformer encoders over signal patches, trained as one computation: members 0..R-1 by
    JEPA (predict the target encoder's embeddings of the masked patches), members R..2R-1 by masked
    reconstruction (predict the masked patches' samples). Same encoder, same masks, same steps; only the
    prediction target differs.

    JEPA (Assran et al., 2023; Weimann and Conrad, 2024 for ECG): the *context* encoder sees the signal with
    some patches hidden; a predictor maps its outputs at the hidden positions to the *target* encoder's
    embeddings of the full signal at those positions. The target encoder is an exponential moving average
    (EMA) of the context encoder and gets no gradient; its outputs are layer-normalised (as in data2vec)."""

    def __init__(self, R: int, patch: int, n_tokens: int, width: int, n_layer: int, n_head: int) -> None:
        super().__init__()
        self.R = R
        self.encoder = EnsembleTransformer(2 * R, patch + 1, width, width, n_layer, n_head, max_len=n_tokens)
        self.predictor = nn.Sequential(ELinear(R, width, 2 * width, std=width**-0.5), nn.GELU(),
                                       ELinear(R, 2 * width, width, std=(2 * width) ** -0.5))
        self.pixel_head = nn.Sequential(ELinear(R, width, 2 * width, std=width**-0.5), nn.GELU(),
                                        ELinear(R, 2 * width, patch, std=(2 * width) ** -0.5))
        self.target = EnsembleTransformer(R, patch + 1, width, width, n_layer, n_head, max_len=n_tokens)
        self.target.load_state_dict({k: v[:R] for k, v in self.encoder.state_dict().items()})
        self.target.requires_grad_(False)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """What a probe sees: the mean and standard deviation over tokens of each member's encoder outputs on
        the full signal. tokens (B, T, patch) -> (2R, B, 2C)."""
        return pool_tokens(encode_unmasked(self.encoder, tokens))

    def losses(self, tokens: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, patch), idx (2R, B, M) masked positions -> (JEPA loss (R,), reconstruction loss (R,))."""
        R, (B, T, d) = self.R, tokens.shape
        E = 2 * R
        out = gather_tokens(self.encoder(hide(tokens.expand(E, B, T, d), idx)), idx)  # (2R, B, M, C)
        M = idx.shape[-1]
        with torch.no_grad():
            target = standardise_targets(encode_unmasked(self.target, tokens))  # (R, B, T, C)
            target = gather_tokens(target, idx[:R])
        pred = self.predictor(out[:R].reshape(R, B * M, -1)).reshape(R, B, M, -1)
        pix = self.pixel_head(out[R:].reshape(R, B * M, -1)).reshape(R, B, M, d)
        jepa = F.smooth_l1_loss(pred, target, reduction="none").mean((1, 2, 3))
        recon = (pix - gather_tokens(tokens.expand(R, B, T, d), idx[R:])).pow(2).mean((1, 2, 3))
        return jepa, recon

    @torch.no_grad()
    def update_target(self, decay: float) -> None:
        """target <- decay * target + (1 - decay) * context encoder (JEPA members only)."""
        for (name, t), s in zip(self.target.named_parameters(), self.encoder.parameters()):
            t.lerp_(s[: self.R], 1 - decay)


def standardise_targets(h: torch.Tensor) -> torch.Tensor:
    """JEPA's regression targets: layer-normalised outputs (data2vec), then centred and scaled over the batch
    at each position, so that what is predictable from the position alone (the position embedding) is
    not a target: h (E, B, T, C) -> (E, B, T, C)."""
    h = F.layer_norm(h, h.shape[-1:])
    return (h - h.mean(1, keepdim=True)) / (h.std(1, keepdim=True) + 1e-5)


def encode_unmasked(encoder: EnsembleTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Every member's outputs on the full (unmasked) signal: tokens (B, T, d) -> (E, B, T, C)."""
    E = encoder.E
    B, T, d = tokens.shape
    flag = torch.zeros(E, B, T, 1, device=tokens.device)
    return encoder(torch.cat([tokens.expand(E, B, T, d), flag], -1))


def block_mask(E: int, B: int, T: int, n_blocks: int, block: int, gen: torch.Generator) -> torch.Tensor:
    """JEPA-style contiguous masks: n_blocks runs of `block` tokens each (they may overlap, so fewer
    positions may be hidden) returned as (E, B, n_blocks * block) token indices; overlapping runs repeat
    indices, which hide and gather treat as one position hidden twice."""
    starts = torch.randint(0, T - block + 1, (E, B, n_blocks, 1), generator=gen, device=gen.device)
    return (starts + torch.arange(block, device=gen.device)).reshape(E, B, n_blocks * block)


# --------------------------------------------------------------------------------------------------
# Multi-contrast "MRI" phantoms: one anatomy, four modalities, a tumour grade
# --------------------------------------------------------------------------------------------------

MODALITIES = ("T1", "T1ce", "T2", "FLAIR")
GRADES = ("no tumour", "low grade", "high grade")
TISSUES = ("background", "skull", "CSF", "grey matter", "white matter", "oedema", "tumour core", "enhancing rim")
# intensity of each tissue (columns) in each modality (rows), on a 0-1 scale, after BraTS-like contrasts:
# T1 shows white matter bright; T1ce adds the contrast agent's enhancing rim; T2 shows fluid bright;
# FLAIR suppresses free fluid (CSF) so that oedema stands out.
CONTRAST = torch.tensor([
    [0.0, 0.9, 0.1, 0.5, 0.8, 0.45, 0.3, 0.3],   # T1
    [0.0, 0.9, 0.1, 0.5, 0.8, 0.45, 0.3, 1.0],   # T1ce
    [0.0, 0.3, 1.0, 0.6, 0.4, 0.8, 0.9, 0.7],    # T2
    [0.0, 0.4, 0.1, 0.5, 0.35, 1.0, 0.7, 0.8],   # FLAIR
])


def tissue_maps(labels: torch.Tensor, gen: torch.Generator, side: int = 16) -> torch.Tensor:
    """A tissue index (into TISSUES) for every pixel of N axial "slices": labels (N,) (indices into GRADES)
    -> (N, side, side) long. A random elliptical head with a skull, ventricles, a random grey/white-matter
    pattern and, for grades 1-2, a tumour core with surrounding oedema; high grade tumours have twice the
    oedema radius (relative to the core) and an enhancing rim."""
    N = len(labels)
    c = (torch.arange(side) + 0.5) / side * 2 - 1
    y, x = c[None, :, None], c[None, None, :]  # (1, side, 1), (1, 1, side)
    u = lambda lo, hi: _uniform(N, lo, hi, gen)[:, None, None]  # noqa: E731
    a, b = u(0.8, 0.95), u(0.85, 1.0)
    head = (x / a) ** 2 + (y / b) ** 2 < 1
    brain = (x / (0.82 * a)) ** 2 + (y / (0.82 * b)) ** 2 < 1
    ventricles = (x / u(0.2, 0.3)) ** 2 + (y / u(0.12, 0.2)) ** 2 < 1
    k = torch.randint(1, 4, (N, 2, 1, 1), generator=gen).float() * math.pi / 2
    field = torch.cos(k[:, 0] * x + u(0, 6.3)) + torch.cos(k[:, 1] * y + u(0, 6.3))
    t = torch.zeros(N, side, side, dtype=torch.long)
    t[head] = 1
    t[brain] = 3
    t[brain & (field > 0)] = 4
    t[brain & ventricles] = 2
    r = u(0.13, 0.22)
    angle, dist = u(0, 2 * math.pi), u(0.25, 0.5)
    d = ((x - dist * torch.cos(angle)) ** 2 + (y - dist * torch.sin(angle)) ** 2).sqrt()
    grade = labels[:, None, None]
    oedema = brain & (grade > 0) & (d < r * torch.where(grade == 2, 2.4, 1.4))
    t[oedema] = 5
    t[brain & (grade > 0) & (d < r)] = 6
    t[brain & (grade == 2) & ((d - r).abs() < 0.09)] = 7
    return t


def mri_phantoms(labels: torch.Tensor, gen: torch.Generator, side: int = 16, noise: float = 0.05) -> torch.Tensor:
    """Four co-registered modalities of each phantom: labels (N,) -> images (N, 4, side, side). Each
    modality gets its own random gain in [0.8, 1.2] (a scanner's calibration) and white noise."""
    t = tissue_maps(labels, gen, side)
    img = CONTRAST[:, t].transpose(0, 1)  # (N, 4, side, side)
    gain = 0.8 + 0.4 * torch.rand(len(t), 4, 1, 1, generator=gen)
    return gain * img + noise * torch.randn(img.shape, generator=gen)


def modality_tokens(img: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """One token per image location holding that patch in every modality: images (N, M, side, side) ->
    (N, T, M, patch^2) with T = (side/patch)^2 locations, row-major."""
    N, M, side, _ = img.shape
    return patchify(img.reshape(N * M, side * side), side, patch).reshape(N, M, -1, patch * patch).transpose(1, 2)


def pool_tokens(h: torch.Tensor) -> torch.Tensor:
    """A sequence's summary for a probe: mean and standard deviation over its tokens, (..., T, C) -> (..., 2C)."""
    return torch.cat([h.mean(-2), h.std(-2)], -1)


class MultimodalMAE(nn.Module):
    """E masked autoencoders over multi-modal images (BM-MAE's recipe at toy size). A token is one image
    location in all M modalities; each (location, modality) cell can be hidden - zeroed, with a 0/1 flag
    per modality - and a pixel head reconstructs the hidden cells. Pretraining hides random cells; a
    modality missing at test time is one whose cells are hidden everywhere, so one pretrained model
    serves every subset of modalities without a change of architecture."""

    def __init__(self, E: int, M: int, d: int, n_tokens: int, width: int, n_layer: int, n_head: int) -> None:
        super().__init__()
        self.M, self.d = M, d
        self.encoder = EnsembleTransformer(E, M * (d + 1), width, width, n_layer, n_head, max_len=n_tokens)
        self.pixel_head = ELinear(E, width, M * d, std=width**-0.5)

    def hidden_states(self, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """tokens (B, T, M, d), hidden (E, B, T, M) bool -> encoder outputs (E, B, T, C)."""
        E, B, T, M = hidden.shape
        x = tokens.expand(E, B, T, M, self.d) * ~hidden[..., None]
        return self.encoder(torch.cat([x, hidden[..., None].float()], -1).reshape(E, B, T, -1))

    def reconstruct(self, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Every cell as the model sees it: tokens (B, T, M, d), hidden (E, B, T, M) -> (E, B, T, M, d)."""
        E, B, T, M = hidden.shape
        h = self.hidden_states(tokens, hidden)
        return self.pixel_head(h.reshape(E, B * T, -1)).reshape(E, B, T, M, self.d)

    def loss(self, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the hidden cells, per member: (E,)."""
        err = (self.reconstruct(tokens, hidden) - tokens).pow(2).mean(-1)  # (E, B, T, M)
        return (err * hidden).sum((1, 2, 3)) / hidden.sum((1, 2, 3)).clamp_min(1)

    def features(self, tokens: torch.Tensor, missing: tuple[int, ...] = ()) -> torch.Tensor:
        """What a probe sees with the modalities `missing` absent: pooled encoder outputs, (B, T, M, d) -> (E, B, 2C)."""
        return pool_tokens(self.hidden_states(tokens, absent(self.encoder.E, tokens, missing)))


def absent(E: int, tokens: torch.Tensor, missing: tuple[int, ...]) -> torch.Tensor:
    """The hiding pattern of missing modalities: every cell of each listed modality, (E, B, T, M) bool."""
    B, T, M, _ = tokens.shape
    hidden = torch.zeros(E, B, T, M, dtype=torch.bool, device=tokens.device)
    hidden[..., list(missing)] = True
    return hidden


def r_squared(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - SSE / SST with SST around the per-feature mean of the target: 1 is perfect, 0 is no better
    than predicting the mean image. pred, target (..., N, D) with N examples of D features."""
    sse = (pred - target).pow(2).sum()
    sst = (target - target.mean(-2, keepdim=True)).pow(2).sum()
    return float(1 - sse / sst)
