"""What transfers: a zoo of small CNN backbones trained side by side, the pretraining losses that tell
them apart (cross-entropy, LOOK's leave-one-out kNN loss, an augmentation-invariance loss), and the
measurements of the chapter `orientation/what_transfers`: linear probes, intra-class diversity,
transferability scores (LogME and a potential-energy variant), Kendall's tau, filter statistics.

Shapes: E members of the zoo, B examples, D feature dimensions, C classes.
"""
from __future__ import annotations

import math

import torch
from scipy.stats import kendalltau
import torch.nn.functional as F
from torch import nn


class StackedCNN(nn.Module):
    """E independent small CNNs on 8x8 images, evaluated side by side (grouped convolutions, batched
    matmuls): x (B, 64) -> features (E, B, dim). Member e's weights are drawn from `seeds[e]`, so two
    zoos built with the same seeds start from identical weights."""

    def __init__(self, seeds: list[int], width: int = 16, dim: int = 32) -> None:
        super().__init__()
        self.members, self.c1, self.c2, self.dim = len(seeds), width, 2 * width, dim
        shapes = {"w1": (width, 1, 3, 3), "b1": (width,), "w2": (2 * width, width, 3, 3), "b2": (2 * width,),
                  "w3": (2 * width * 16, dim), "b3": (1, dim)}
        fan_in = {"w1": 9, "b1": 9, "w2": 9 * width, "b2": 9 * width, "w3": 32 * width, "b3": 32 * width}
        per_member = []
        for s in seeds:  # PyTorch's default uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), one generator per member
            g = torch.Generator().manual_seed(s)
            per_member.append({k: (2 * torch.rand(v, generator=g) - 1) / math.sqrt(fan_in[k]) for k, v in shapes.items()})
        self.w1 = nn.Parameter(torch.cat([m["w1"] for m in per_member]))  # (E*c1, 1, 3, 3)
        self.b1 = nn.Parameter(torch.cat([m["b1"] for m in per_member]))  # (E*c1,)
        self.w2 = nn.Parameter(torch.cat([m["w2"] for m in per_member]))  # (E*c2, c1, 3, 3)
        self.b2 = nn.Parameter(torch.cat([m["b2"] for m in per_member]))  # (E*c2,)
        self.w3 = nn.Parameter(torch.stack([m["w3"] for m in per_member]))  # (E, c2*16, dim)
        self.b3 = nn.Parameter(torch.stack([m["b3"] for m in per_member]))  # (E, 1, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, 64) -> (E, B, dim)
        e, b = self.members, len(x)
        h = x.reshape(b, 1, 8, 8).expand(b, e, 8, 8)
        h = F.relu(F.conv2d(h, self.w1, self.b1, padding=1, groups=e))  # (B, E*c1, 8, 8)
        h = F.relu(F.conv2d(h, self.w2, self.b2, stride=2, padding=1, groups=e))  # (B, E*c2, 4, 4)
        h = h.reshape(b, e, self.c2 * 16).transpose(0, 1)  # (E, B, c2*16)
        return torch.baddbmm(self.b3, h, self.w3)  # (E, B, dim)

    def filters(self) -> torch.Tensor:
        """First-layer 3x3 filters: (E, c1, 9)."""
        return self.w1.detach().reshape(self.members, self.c1, 9)


class StackedLinear(nn.Module):
    """E independent linear heads: z (E, B, D) -> logits (E, B, C)."""

    def __init__(self, members: int, dim: int, classes: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter((2 * torch.rand(members, dim, classes, generator=g) - 1) / math.sqrt(dim))
        self.b = nn.Parameter(torch.zeros(members, 1, classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.b, z, self.w)


def stacked_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each member: logits (E, B, C), y (B,) or (E, B) -> (E,)."""
    y = y.expand(logits.shape[:2])
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)


def look_loss(z: torch.Tensor, y: torch.Tensor, k: int, tau: float = 0.1) -> torch.Tensor:
    """LOOK's leave-one-out kNN loss (Feng et al. 2022), per member: z (E, B, D), y (B,) -> (E,).
    Each example is classified by its k nearest neighbours in the batch (cosine similarity, itself left
    out), weighted by exp(sim / tau): loss_i = -log sum_{j in kNN(i), y_j = y_i} w_ij / sum_{j in kNN(i)} w_ij.
    Only the k nearest neighbours must share the label, so a class may keep several modes. Examples
    with no same-label neighbour among the k have zero probability and are left out of the mean."""
    z = F.normalize(z, dim=-1)
    sim = z @ z.transpose(1, 2) / tau  # (E, B, B)
    eye = torch.eye(len(y), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    top, idx = sim.topk(k, dim=-1)  # (E, B, k)
    same = y[idx] == y[None, :, None]  # (E, B, k)
    log_all = top.logsumexp(-1)  # (E, B)
    log_same = top.masked_fill(~same, float("-inf")).logsumexp(-1)  # (E, B), -inf when none agrees
    ok = same.any(-1)
    loss = torch.where(ok, log_all - log_same, torch.zeros_like(log_all))
    return loss.sum(1) / ok.sum(1).clamp(min=1)


def simclr_loss(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """SimCLR's augmentation-invariance loss per member: two views z1, z2 (E, B, D) of the same B images;
    each view must pick its partner out of the other 2B - 1 views. -> (E,)."""
    z = F.normalize(torch.cat([z1, z2], 1), dim=-1)  # (E, 2B, D)
    n = z1.shape[1]
    sim = (z @ z.transpose(1, 2) / tau).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)  # (2B,)
    return F.cross_entropy(sim.transpose(1, 2), partner.expand(z.shape[0], -1), reduction="none").mean(1)


def augment(x: torch.Tensor, gen: torch.Generator, noise: float = 0.1) -> torch.Tensor:
    """A random view of 8x8 images x (B, 64): shifted by up to one pixel in each direction (zero fill),
    intensity scaled by U(0.6, 1), plus Gaussian noise. -> (B, 64)."""
    b = len(x)
    img = F.pad(x.reshape(b, 1, 8, 8), (1, 1, 1, 1))  # (B, 1, 10, 10)
    dx, dy = (torch.randint(0, 3, (b,), generator=gen, device=gen.device).to(x.device) for _ in range(2))
    rows = (dy[:, None] + torch.arange(8, device=x.device))[:, :, None]  # (B, 8, 1)
    cols = (dx[:, None] + torch.arange(8, device=x.device))[:, None, :]  # (B, 1, 8)
    crop = img[torch.arange(b, device=x.device)[:, None, None], 0, rows, cols]  # (B, 8, 8)
    scale = 0.6 + 0.4 * torch.rand(b, 1, generator=gen, device=gen.device).to(x.device)
    eps = torch.randn(b, 64, generator=gen, device=gen.device).to(x.device)
    return crop.reshape(b, 64) * scale + noise * eps


def flip_labels(y: torch.Tensor, rate: float, classes: int, gen: torch.Generator) -> torch.Tensor:
    """Symmetric label noise: each label is replaced, with probability `rate`, by a different class
    drawn uniformly. y (N,) -> (N,)."""
    flip = torch.rand(len(y), generator=gen) < rate
    other = (y + torch.randint(1, classes, (len(y),), generator=gen)) % classes
    return torch.where(flip, other, y)


def ridge_probe(train: torch.Tensor, y: torch.Tensor, test: torch.Tensor, y_test: torch.Tensor, classes: int,
                l2: float = 1e-2) -> torch.Tensor:
    """Linear-probe accuracy of every member: a ridge regression onto one-hot labels on standardised
    features. train (E, N, D), test (E, M, D) -> accuracy (E,)."""
    mu, sd = train.mean(1, keepdim=True), train.std(1, keepdim=True) + 1e-6
    a, t = (train - mu) / sd, (test - mu) / sd
    a = F.pad(a, (0, 1), value=1.0).double()  # (E, N, D+1), a bias column
    t = F.pad(t, (0, 1), value=1.0).double()
    onehot = F.one_hot(y, classes).double().expand(a.shape[0], -1, -1)  # (E, N, C)
    gram = a.transpose(1, 2) @ a + l2 * len(y) * torch.eye(a.shape[-1], dtype=torch.float64)
    w = torch.linalg.solve(gram, a.transpose(1, 2) @ onehot)  # (E, D+1, C)
    return ((t @ w).argmax(-1) == y_test).double().mean(1).float()


def cross_validated_probe(f: torch.Tensor, y: torch.Tensor, classes: int, folds: int = 5, seed: int = 0) -> torch.Tensor:
    """Linear-probe accuracy of every member scored on *every* example once: the examples are split into
    `folds` parts (a fixed permutation drawn from `seed`), and each part is scored by a `ridge_probe`
    fitted on the others. Uses all N examples as test data, which makes the accuracy less noisy than
    one held-out split. f (E, N, D), y (N,) -> accuracy (E,)."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    correct = torch.zeros(f.shape[0], dtype=torch.float64)
    for k in range(folds):
        test = order[k::folds]  # every folds-th example of the permutation
        train = torch.ones(len(y), dtype=torch.bool)
        train[test] = False
        correct += ridge_probe(f[:, train], y[train], f[:, test], y[test], classes).double() * len(test)
    return (correct / len(y)).float()


def within_class_share(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Intra-class diversity: the share of the feature variance that lies within classes,
    tr(S_within) / tr(S_total), on unit-normalised features. 0: every class collapsed to a point;
    near 1: the classes are not separated at all. z (E, N, D), y (N,) -> (E,)."""
    z = F.normalize(z, dim=-1)
    total = (z - z.mean(1, keepdim=True)).pow(2).sum((1, 2))
    within = torch.zeros_like(total)
    for c in y.unique():
        zc = z[:, y == c]
        within = within + (zc - zc.mean(1, keepdim=True)).pow(2).sum((1, 2))
    return within / total


def logme(f: torch.Tensor, y: torch.Tensor, classes: int, iters: int = 50) -> float:
    """LogME (You et al. 2021): the log marginal evidence per example of a Bayesian linear regression
    of each one-hot label column on the features, with the prior precision alpha and the noise
    precision beta set by evidence maximisation (MacKay's fixed point), averaged over classes.
    f (N, D), y (N,) -> float. Higher: the labels are a simpler linear function of the features."""
    f = f.double()
    n, d = f.shape
    u, s, _ = torch.linalg.svd(f, full_matrices=False)  # f = u diag(s) v^T
    sig = s**2  # eigenvalues of f^T f
    evidences = []
    for c in range(classes):
        t = (y == c).double()
        proj = u.T @ t  # (r,) coordinates of t in f's column space
        resid0 = (t @ t - proj @ proj).clamp(min=0)  # the part of t no linear map of f can fit
        alpha, beta = 1.0, 1.0
        for _ in range(iters):
            gamma = (beta * sig / (alpha + beta * sig)).sum()
            m2 = (beta**2 * sig * proj**2 / (alpha + beta * sig) ** 2).sum()  # ||m||^2
            res2 = ((alpha / (alpha + beta * sig)) ** 2 * proj**2).sum() + resid0  # ||f m - t||^2
            alpha, beta = (gamma / m2).item(), ((n - gamma) / res2).item()
        gamma = (beta * sig / (alpha + beta * sig)).sum()
        m2 = (beta**2 * sig * proj**2 / (alpha + beta * sig) ** 2).sum()
        res2 = ((alpha / (alpha + beta * sig)) ** 2 * proj**2).sum() + resid0
        logdet = torch.log(alpha + beta * sig).sum() + (d - len(sig)) * math.log(alpha)
        ev = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
              - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2)
        evidences.append(ev.item() / n)
    return sum(evidences) / classes


def potential_energy_step(f: torch.Tensor, y: torch.Tensor, steps: int = 10, step_size: float = 0.1) -> torch.Tensor:
    """A simplified version of PED's dynamics (Li et al. 2023): standardised features are charged
    particles; class centres repel each other with an inverse-square force, and every example moves
    with its class centre, as fine-tuning would pull the classes apart. f (N, D), y (N,) -> (N, D)."""
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    classes = y.unique()
    onehot = (y[:, None] == classes[None]).float()  # (N, K)
    for _ in range(steps):
        centres = onehot.T @ f / onehot.sum(0)[:, None]  # (K, D)
        diff = centres[:, None] - centres[None]  # (K, K, D)
        dist = diff.norm(dim=-1, keepdim=True).clamp(min=1e-3)
        force = (diff / dist**3).sum(1)  # (K, D), the diagonal term is 0
        scale = centres.norm(dim=-1).mean() * step_size / force.norm(dim=-1).mean().clamp(min=1e-12)
        f = f + onehot @ (scale * force)
    return f


def kendall_tau(a: torch.Tensor | list[float], b: torch.Tensor | list[float]) -> float:
    """Kendall's tau-b rank correlation of two score lists of equal length (scipy's, ties handled);
    0 when either list is constant (tau is undefined there)."""
    tau = kendalltau(torch.as_tensor(a, dtype=torch.float64).numpy(), torch.as_tensor(b, dtype=torch.float64).numpy()).statistic
    return 0.0 if math.isnan(tau) else float(tau)


def variance_entropy(filters: torch.Tensor) -> float:
    """CNN Filter DB's diversity measure of a set of 3x3 filters (Gavrikov & Keuper 2022): the entropy of
    the normalised singular-value spectrum (explained variance) of the filters, divided by log(9).
    1: variance spread evenly over all 9 directions (as random filters); 0: one filter shape only.
    filters (n, 9) -> float."""
    s = torch.linalg.svdvals(filters.double() - filters.double().mean(0))
    p = s**2 / (s**2).sum()
    return float(-(p * torch.log(p.clamp(min=1e-300))).sum() / math.log(filters.shape[1]))
