"""Tiny score-based diffusion models on 2-D Gaussian mixtures, where every target is known in closed form.

Shapes: points x (N, 2); diffusion time t (N,) in [T_MIN, 1]; mixture means (K, 2).

    Mixture             an isotropic Gaussian mixture: samples, labels, and the exact score and class
                        posterior of its noised version p_t (the forward process keeps it a mixture)
    product             the normalised product of two mixtures with one shared std: again a mixture
    alpha_sigma, beta   the variance-preserving (VP) noise schedule of Song et al., linear beta(t)
    ScoreNet            an MLP with a sinusoidal time embedding predicting the noise eps(x_t, t)
    denoising_loss      the DDPM objective |eps - eps_hat(alpha x0 + sigma eps, t)|^2
    sample              Euler-Maruyama on the reverse SDE for any score function (guidance = add a term)
    fkc_product_sample  Feynman-Kac corrector (Skreta et al.): naive score addition for a product of
                        experts plus SMC resampling with weights beta <s1, s2> dt
    classifier_grad     grad_x log p(y | .) of a classifier applied to x_t or to the denoised x0_hat
    Replicas            R independent copies of a network trained as one tensor program (vmap)
    graft_operator      grafting: a new operator fitted to a pretrained layer's activations
    mmd2                the chapter's sample-quality metric: unbiased MMD^2 between two point clouds
    sliced_wasserstein  another distance between two point clouds (sliced W2)

Every sampler takes a `score(x, t)` callable, so exact scores (the mixture's) and learned ones are
interchangeable: the tests hold the samplers to closed forms with the exact score.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ptmlib.metrics import accuracy

T_MIN = 1e-3  # smallest diffusion time: the reverse process stops here
BETA_MIN, BETA_MAX = 0.1, 20.0  # Song et al.'s VP schedule

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (N, 2), t (N,)) -> (N, 2)


# ----------------------------------------------------------------------------- the noise schedule

def beta(t: torch.Tensor) -> torch.Tensor:
    """VP noise rate beta(t) = BETA_MIN + t (BETA_MAX - BETA_MIN)."""
    return BETA_MIN + t * (BETA_MAX - BETA_MIN)


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = alpha(t) x_0 + sigma(t) eps with alpha^2 = exp(-int_0^t beta) and alpha^2 + sigma^2 = 1."""
    log_a2 = -(BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t**2)
    return torch.exp(0.5 * log_a2), torch.sqrt(-torch.expm1(log_a2))


# ----------------------------------------------------------------------------- the data: known mixtures

@dataclass
class Mixture:
    """sum_k weights[k] N(means[k], std^2 I) in 2-D; labels[k] is component k's class."""

    means: torch.Tensor  # (K, 2)
    std: float
    weights: torch.Tensor  # (K,), sums to 1
    labels: torch.Tensor  # (K,) int64

    @staticmethod
    def ring(k: int, radius: float, std: float, n_classes: int | None = None) -> "Mixture":
        """k equal components on a circle; component j has class j % n_classes (default: its own class)."""
        angle = 2 * math.pi * torch.arange(k) / k
        means = radius * torch.stack([angle.cos(), angle.sin()], 1)
        return Mixture(means, std, torch.full((k,), 1.0 / k), torch.arange(k) % (n_classes or k))

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (n, 2), component index (n,))."""
        dev = gen.device
        comp = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=gen)
        return self.means.to(dev)[comp] + self.std * torch.randn(n, 2, generator=gen, device=dev), comp

    def conditional(self, y: int) -> "Mixture":
        """p(x | class y): the components of class y, reweighted."""
        keep = self.labels == y
        return Mixture(self.means[keep], self.std, self.weights[keep] / self.weights[keep].sum(), self.labels[keep])

    def noised(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means (N, K, 2) and variances (N, 1) of p_t's components: alpha mu_k and alpha^2 std^2 + sigma^2."""
        a, s = alpha_sigma(t)
        return a[:, None, None] * self.means.to(t.device), (a**2 * self.std**2 + s**2)[:, None]

    def responsibilities(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p_t(component k | x_t) (N, K)."""
        mu, var = self.noised(t)
        logits = torch.log(self.weights.to(x.device)) - ((x[:, None] - mu) ** 2).sum(-1) / (2 * var)
        return torch.log_softmax(logits, -1)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """log p_t(x) (N,); t=None is the clean mixture."""
        t = torch.zeros(len(x), device=x.device) if t is None else t
        mu, var = self.noised(t)
        logits = torch.log(self.weights.to(x.device)) - ((x[:, None] - mu) ** 2).sum(-1) / (2 * var) - torch.log(2 * math.pi * var)
        return torch.logsumexp(logits, -1)

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact score grad_x log p_t(x) (N, 2): sum_k r_k (alpha mu_k - x) / var."""
        mu, var = self.noised(t)
        r = self.responsibilities(x, t).exp()
        return (r[..., None] * (mu - x[:, None])).sum(1) / var

    def class_log_posterior(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact noisy classifier log p_t(y | x_t) (N, n_classes)."""
        logr = self.responsibilities(x, t)
        onehot = F.one_hot(self.labels, self.n_classes).T.bool().to(x.device)  # (C, K)
        return torch.stack([torch.logsumexp(logr.masked_fill(~m, -math.inf), -1) for m in onehot], -1)


def product(a: Mixture, b: Mixture) -> Mixture:
    """The normalised product p_a(x) p_b(x) of two mixtures with the same std s: components (i, j) with
    mean (mu_i + nu_j) / 2, std s / sqrt(2) and weight proportional to w_i v_j N(mu_i; nu_j, 2 s^2 I)."""
    if abs(a.std - b.std) > 1e-12:
        raise ValueError("product() needs a shared std")
    d2 = ((a.means[:, None] - b.means[None]) ** 2).sum(-1)  # (Ka, Kb)
    logw = torch.log(a.weights)[:, None] + torch.log(b.weights)[None] - d2 / (4 * a.std**2)
    w = torch.softmax(logw.flatten(), 0)
    means = ((a.means[:, None] + b.means[None]) / 2).reshape(-1, 2)
    return Mixture(means, a.std / math.sqrt(2), w, torch.arange(len(w)))


# ----------------------------------------------------------------------------- the model

def time_embedding(t: torch.Tensor, dim: int = 32) -> torch.Tensor:
    """Sinusoidal features of t (N,) -> (N, dim), frequencies from 1 to 1000 (as in DDPM's embedding)."""
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), dim // 2, device=t.device))
    angles = t[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], -1)


class ScoreNet(nn.Module):
    """eps_hat(x_t, t): an MLP on [x_t, time_embedding(t)] with SiLU, `depth` hidden layers of `width`.
    (x (N, 2), t (N,)) -> (N, 2). Its score is -eps_hat / sigma(t)."""

    def __init__(self, width: int = 128, depth: int = 3, t_dim: int = 32) -> None:
        super().__init__()
        self.t_dim = t_dim
        dims = [2 + t_dim] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, time_embedding(t, self.t_dim)], -1)
        for layer in self.hidden:
            h = F.silu(layer(h))
        return self.out(h)


def model_score(model: nn.Module) -> Score:
    """The score of an eps-predicting model: s(x, t) = -eps_hat(x, t) / sigma(t)."""
    return lambda x, t: -model(x, t) / alpha_sigma(t)[1][:, None]


def denoised(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Tweedie's estimate x0_hat = (x_t - sigma eps_hat) / alpha (N, 2)."""
    a, s = alpha_sigma(t)
    return (x - s[:, None] * model(x, t)) / a[:, None]


def denoising_loss(model: nn.Module, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """DDPM's simple loss: mean over points of |eps - eps_hat(alpha x0 + sigma eps, t)|^2 (summed over 2 dims)."""
    a, s = alpha_sigma(t)
    return ((model(a[:, None] * x0 + s[:, None] * eps, t) - eps) ** 2).sum(-1).mean()


def exact_denoising_loss(mix: Mixture, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> float:
    """The same loss for the Bayes-optimal eps_hat = -sigma * exact score: the floor no model can beat
    (up to the sampling noise of x0, t, eps)."""
    a, s = alpha_sigma(t)
    xt = a[:, None] * x0 + s[:, None] * eps
    return float(((-s[:, None] * mix.score(xt, t) - eps) ** 2).sum(-1).mean())


# ----------------------------------------------------------------------------- sampling

def _times(steps: int, device: torch.device) -> torch.Tensor:
    return torch.linspace(1.0, T_MIN, steps + 1, device=device)


def sample(score: Score, n: int, steps: int, gen: torch.Generator, x: torch.Tensor | None = None) -> torch.Tensor:
    """Euler-Maruyama on the reverse VP SDE dx = [beta x / 2 + beta score] dt' + sqrt(beta) dW (t' = reverse
    time), from x ~ N(0, I) (or the given start) at t = 1 to t = T_MIN; the last step adds no noise. (n, 2),
    on the generator's device."""
    dev = gen.device
    x = torch.randn(n, 2, generator=gen, device=dev) if x is None else x
    ts = _times(steps, dev)
    for i in range(steps):
        t, dt = ts[i].expand(n), float(ts[i] - ts[i + 1])
        b = beta(t)[:, None]
        x = x + (0.5 * b * x + b * score(x, t)) * dt
        if i < steps - 1:
            x = x + (b * dt).sqrt() * torch.randn(n, 2, generator=gen, device=dev)
    return x


def effective_sample_size(logw: torch.Tensor) -> float:
    """(sum w)^2 / sum w^2 for log-weights (n,): n for equal weights, 1 when one particle holds all mass."""
    w = torch.softmax(logw, 0)
    return float(1.0 / (w**2).sum())


def systematic_resample(logw: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Indices (n,) of systematic resampling: one uniform offset u, particle i is copied once for every
    point (u + j) / n, j = 0..n-1, that falls in its slice of the cumulative weights. Each particle gets
    floor(n w_i) or ceil(n w_i) copies: less variance than n independent (multinomial) draws."""
    n = len(logw)
    cdf = torch.cumsum(torch.softmax(logw, 0), 0)
    u = (torch.rand(1, generator=gen, device=gen.device) + torch.arange(n, device=logw.device)) / n
    return torch.searchsorted(cdf, u).clamp_max(n - 1)


def fkc_product_sample(score_a: Score, score_b: Score, n: int, steps: int, gen: torch.Generator, *,
                       resample: bool = True, ess_frac: float = 0.5, t_stop: float = 0.05, noise: float = 1.0
                       ) -> tuple[torch.Tensor, list[float]]:
    """Sample the product p_a p_b from two pretrained scores (Skreta et al.'s Feynman-Kac corrector).

    Particles start from the product of the priors, N(0, I/2), and follow the reverse SDE with the summed
    score s_a + s_b ("naive score addition"). The path of unnormalised targets p_a,t p_b,t is not the
    marginal path of that SDE; the Feynman-Kac formula says the mismatch is exactly the weight
    d log w = beta(t) <s_a, s_b> dt' (derived in the chapter). With `resample`, particles are resampled
    (systematically) whenever the effective sample size falls below ess_frac * n, and a last time when t
    reaches t_stop; below t_stop the weights are no longer tracked, so that the last steps' noise can
    separate the copies that resampling made. Without `resample` (and noise=1) this is plain score addition.

    `noise` = kappa scales the SDE's noise variance to kappa beta and its score drift to (1 + kappa) / 2
    beta (s_a + s_b): for every kappa the Laplacian terms cancel and the weight stays beta <s_a, s_b> dt'
    (kappa = 1: the reverse SDE; kappa = 0: an ODE). A larger kappa keeps the proposal's spread closer to
    the target's at high noise, so fewer resamplings are needed. Returns (x (n, 2), the times t at which it resampled)."""
    dev = gen.device
    x = torch.randn(n, 2, generator=gen, device=dev) / math.sqrt(2)
    ts = _times(steps, dev)
    logw = torch.zeros(n, device=dev)
    resampled_at: list[float] = []
    for i in range(steps):
        t, dt = ts[i].expand(n), float(ts[i] - ts[i + 1])
        b = beta(t)[:, None]
        sa, sb = score_a(x, t), score_b(x, t)
        weighting = resample and float(ts[i]) > t_stop
        if weighting:
            logw = logw + (b[:, 0] * dt) * (sa * sb).sum(-1)
        x = x + (0.5 * b * x + 0.5 * (1 + noise) * b * (sa + sb)) * dt
        if i < steps - 1:
            x = x + (noise * b * dt).sqrt() * torch.randn(n, 2, generator=gen, device=dev)
        if weighting and (effective_sample_size(logw) < ess_frac * n or float(ts[i + 1]) <= t_stop):
            resampled_at.append(float(ts[i + 1]))
            x, logw = x[systematic_resample(logw, gen)], torch.zeros(n, device=dev)
    return x, resampled_at


# ----------------------------------------------------------------------------- guidance

def time_bin(t: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Index (N,) of t's bin among n_bins equal-width bins of [0, 1]."""
    return (t * n_bins).long().clamp(0, n_bins - 1)


def classifier_input(classifier: nn.Module, x: torch.Tensor, t: torch.Tensor,
                     model: nn.Module | None = None) -> torch.Tensor:
    """The classifier's logits (N, C) on x_t itself (model=None) or on the denoised x0_hat(x_t, t)."""
    return classifier(x if model is None else denoised(model, x, t))


def classifier_grad(classifier: nn.Module, x: torch.Tensor, t: torch.Tensor, y: int, *,
                    model: nn.Module | None = None, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """grad_x log softmax(classifier(input) / T)[y] (N, 2), with input = x_t itself (plain guidance with
    an off-the-shelf classifier) or, when `model` is given, the denoised x0_hat(x_t) (the gradient flows
    through the diffusion model: Ma et al.'s pre-conditioning). `temperature` is one T, or a tensor (B,)
    of temperatures for B equal-width bins of t (`calibrate_temperatures`)."""
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.to(t.device)[time_bin(t, len(temperature))][:, None]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logp = torch.log_softmax(classifier_input(classifier, x, t, model) / temperature, -1)[:, y]
        (g,) = torch.autograd.grad(logp.sum(), x)
    return g


def guided_score(score: Score, grad_log_p: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scale: float) -> Score:
    """Classifier guidance (Dhariwal & Nichol): s(x, t) + scale * grad_x log p(y | x, t)."""
    return lambda x, t: score(x, t) + scale * grad_log_p(x, t)


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, grid: torch.Tensor | None = None) -> float:
    """The temperature T minimising the mean NLL of softmax(logits / T) on labelled data (grid search on
    log T): the calibration step. logits (N, C), y (N,)."""
    grid = torch.logspace(-1, 3, 81, device=logits.device) if grid is None else grid
    nll = torch.stack([F.cross_entropy(logits / T, y) for T in grid])
    return float(grid[nll.argmin()])


def calibrate_temperatures(classifier: nn.Module, x0: torch.Tensor, y: torch.Tensor, gen: torch.Generator, *,
                           model: nn.Module | None = None, n_bins: int = 10) -> torch.Tensor:
    """Calibrate an off-the-shelf classifier on noised inputs, one temperature per bin of t (B,): for each
    bin, noise the labelled clean points x0 (N, 2), y (N,) to a random t in the bin and fit T on the
    classifier's logits on x_t (model=None) or on x0_hat(x_t). No classifier weight changes."""
    temps = []
    for b in range(n_bins):
        t = (b + torch.rand(len(x0), generator=gen, device=gen.device)) / n_bins
        t = t.clamp_min(T_MIN)
        a, s = alpha_sigma(t)
        xt = a[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=gen, device=gen.device)
        with torch.no_grad():
            temps.append(fit_temperature(classifier_input(classifier, xt, t, model), y))
    return torch.tensor(temps)


# ----------------------------------------------------------------------------- the metric

def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, gen: torch.Generator, n_proj: int = 128) -> float:
    """Sliced 2-Wasserstein distance between point clouds a, b (n, 2) of equal size: the root mean over
    random unit directions theta of W2^2 between the 1-D projections (sorted a.theta vs sorted b.theta)."""
    if a.shape != b.shape:
        raise ValueError(f"equal-size clouds needed, got {tuple(a.shape)} and {tuple(b.shape)}")
    angle = 2 * math.pi * torch.rand(n_proj, generator=gen, device=gen.device).to(a.device)
    theta = torch.stack([angle.cos(), angle.sin()], 0)  # (2, P)
    pa, pb = (a @ theta).sort(0).values, (b @ theta).sort(0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def component_weights(x: torch.Tensor, mix: Mixture) -> torch.Tensor:
    """Share of the points (n, 2) whose most likely component of `mix` is k (K,)."""
    k = mix.responsibilities(x, torch.zeros(len(x), device=x.device)).argmax(-1)
    return torch.bincount(k, minlength=len(mix.weights)).float().cpu() / len(x)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Total variation distance between two discrete distributions: half the L1 distance."""
    return float(0.5 * (p.cpu() - q.cpu()).abs().sum())


def spread(x: torch.Tensor, mix: Mixture) -> float:
    """Diversity within modes: the root mean squared distance (per coordinate) of each point (n, 2) to
    the mean of its most likely component; equals mix.std for exact samples (up to misassignment)."""
    k = mix.responsibilities(x, torch.zeros(len(x), device=x.device)).argmax(-1)
    return float(((x - mix.means.to(x.device)[k]) ** 2).mean().sqrt())


def class_accuracy(x: torch.Tensor, mix: Mixture, y: int) -> float:
    """Share of the points (n, 2) that the exact (clean) Bayes classifier of `mix` assigns to class y."""
    logp = mix.class_log_posterior(x, torch.zeros(len(x), device=x.device))
    return accuracy(logp, torch.full((len(x),), y, device=x.device))


def exact_class_grad(mix: Mixture, y: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The oracle guidance term grad_x log p_t(y | x_t) of the noised mixture (autograd of the closed form)."""
    def grad(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(mix.class_log_posterior(x, t)[:, y].sum(), x)
        return g
    return grad


# ----------------------------------------------------------------------------- replicate runs

class Replicas(nn.Module):
    """R independent networks of one architecture, trained and evaluated as one tensor program: member r
    starts from `modules[r]`'s parameters (pass [net] * R to branch R runs from one network; buffers are
    the first module's), the weights are stacked (R, ...) and `torch.func.vmap` runs the R forwards at once.
    Every input is the R members' batches concatenated, (R n, ...): rows [r n, (r + 1) n) go to member r,
    and the output (R n, ...) comes back in the same order. Members share nothing, so with a loss summed
    over members (R times a mean over all rows) and no global gradient clipping, each gets the update it
    would get alone."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.R = len(modules)
        self._base = [modules[0]]  # the architecture only (a list, so not a submodule); its weights are never used
        self.names = [k for k, _ in modules[0].named_parameters()]
        params = [dict(m.named_parameters()) for m in modules]
        self.weights = nn.ParameterList(nn.Parameter(torch.stack([p[k].detach() for p in params]).clone())
                                        for k in self.names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        split = [x.reshape(self.R, -1, *x.shape[1:]) for x in inputs]  # (R, n, ...)

        def one(weights: tuple[torch.Tensor, ...], *args: torch.Tensor) -> torch.Tensor:
            return functional_call(self._base[0], dict(zip(self.names, weights)), args)

        out = vmap(one)(tuple(self.weights), *split)  # (R, n, ...)
        return out.reshape(-1, *out.shape[2:])

    def member(self, r: int) -> dict[str, torch.Tensor]:
        """Member r's weights, as a state dict of the original module (copies)."""
        return {k: w[r].detach().clone() for k, w in zip(self.names, self.weights)}


# ----------------------------------------------------------------------------- grafting

def hidden_inputs(model: ScoreNet, x: torch.Tensor, t: torch.Tensor, index: int) -> torch.Tensor:
    """The activations (N, width) that enter hidden layer `index` of a ScoreNet on inputs (x_t, t)."""
    h = torch.cat([x, time_embedding(t, model.t_dim)], -1)
    for layer in model.hidden[:index]:
        h = F.silu(layer(h))
    return h


def graft_operator(model: ScoreNet, index: int, operator: nn.Module, x: torch.Tensor, t: torch.Tensor, *,
          steps: int = 300, lr: float = 1e-2) -> tuple[ScoreNet, float]:
    """Grafting (Chandrasegaran et al.), stage 1: a copy of `model` with hidden layer `index` replaced by
    `operator`, which is first trained (Adam, full batch) to reproduce the old layer's outputs on the
    activations the pretrained model feeds it at the given (x_t, t) (N, 2), (N,). Returns the hybrid and
    the operator's final relative squared error. A good start for a low-rank operator is the layer's own
    best low-rank approximation (`ptmlib.peft.spectral.low_rank`); the regression then fits what the layer
    does on the activations it actually sees. Stage 2, a brief end-to-end fine-tune, is the caller's."""
    import copy

    hybrid = copy.deepcopy(model)
    old = hybrid.hidden[index]
    with torch.no_grad():
        h = hidden_inputs(model, x, t, index)
        target = old(h)
    operator = operator.to(h.device)
    opt = torch.optim.Adam(operator.parameters(), lr=lr)
    for _ in range(steps):
        loss = ((operator(h) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        rel = float(((operator(h) - target) ** 2).sum() / (target**2).sum())
    hybrid.hidden[index] = operator
    return hybrid, rel


def mmd2(a: torch.Tensor, b: torch.Tensor, bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0),
         max_points: int = 1500) -> float:
    """Unbiased squared maximum mean discrepancy between point clouds a (n, 2) and b (m, 2) with a sum of
    Gaussian kernels exp(-|x - y|^2 / (2 h^2)): zero in expectation when both come from one distribution
    (so it can come out slightly negative), positive otherwise. Uses the first max_points of each."""
    a, b = a[:max_points], b[:max_points]

    def k(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(u, v) ** 2
        return sum(torch.exp(-d2 / (2 * h**2)) for h in bandwidths)

    n, m = len(a), len(b)
    kaa, kbb = k(a, a), k(b, b)
    within_a = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    within_b = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(within_a + within_b - 2 * k(a, b).mean())
