"""Time-series foundation models in miniature: a synthetic prior to pretrain on, real series shipped
with statsmodels, MASE over rolling forecast origins, classical baselines, and a TTM-style patch mixer.

Shapes: a batch of series is (B, L); a forecaster maps a context (C,) or (B, C) to a horizon (H,) or (B, H).

The prior (`prior`) sums a seasonality (period 4, 12 or 52, with a frequency label to match, or none
for "yearly"), a level and linear trend, an AR(1) process, a random walk, a level shift at a random
change point and noise, then applies a random offset and scale; `kernel_synth` draws Gaussian-process
samples from random sums and products of RBF, periodic, linear and white-noise kernels (KernelSynth,
Ansari et al. 2024). Trends and random walks can be switched off for ablations.

MASE (Hyndman & Koehler 2006) divides the forecast's mean absolute error by the in-sample mean absolute
error of the seasonal naive forecast on the history: below 1 beats that naive forecast on average.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.data import index_batches
from ptmlib.profiles import Profile
from ptmlib.train import History, TrainConfig, train

FREQUENCIES = ("yearly", "quarterly", "monthly", "weekly")
PERIODS = {"yearly": 0, "quarterly": 4, "monthly": 12, "weekly": 52}


# ----------------------------------------------------------------------------- synthetic data
def prior(batch: int, length: int, gen: torch.Generator, *, trends: bool = True, walks: bool = True,
          device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic series (batch, length) and their frequency ids (batch,) (indices into FREQUENCIES)."""
    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, device=gen.device).to(device)

    def n(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=gen.device).to(device)

    freq = torch.randint(0, len(FREQUENCIES), (batch,), generator=gen, device=gen.device).to(device)
    period = torch.tensor([PERIODS[f] for f in FREQUENCIES], dtype=torch.float32, device=device)[freq]
    t = torch.arange(length, dtype=torch.float32, device=device)
    has_season = (period > 0).float()[:, None]
    omega = 2 * math.pi * t[None] / period.clamp(min=1)[:, None]
    season = has_season * (u(batch, 1) * torch.sin(omega + 2 * math.pi * u(batch, 1))
                           + 0.5 * u(batch, 1) * torch.sin(2 * omega + 2 * math.pi * u(batch, 1)))
    x = season + 0.3 * n(batch, 1)
    if trends:
        x = x + 0.03 * n(batch, 1) * t[None]
    phi, sigma = 0.95 * u(batch, 1), 0.05 + 0.25 * u(batch, 1)
    eps = sigma * n(batch, length)
    lag = (t[:, None] - t[None]).clamp(min=0)  # (L, L): i - j below the diagonal
    weights = torch.tril(phi[:, :, None] ** lag)  # ar_i = sum_{j <= i} phi^(i - j) eps_j, so ar_0 = eps_0
    x = x + (weights @ eps[:, :, None]).squeeze(-1)
    if walks:
        walkers = (u(batch, 1) < 0.5).float()
        x = x + walkers * torch.cumsum(0.2 * u(batch, 1) * n(batch, length), 1)
    jump_at = (u(batch, 1) * length).long()
    jumps = (u(batch, 1) < 0.3).float() * n(batch, 1)
    x = x + jumps * (t[None] >= jump_at).float()
    x = x + 0.05 * u(batch, 1) * n(batch, length)
    scale = torch.exp(math.log(100) * (u(batch, 1) - 0.5))  # log-uniform in [0.1, 10]
    return 5 * n(batch, 1) + scale * x, freq


def kernel_matrix(kind: str, t: torch.Tensor, param: float) -> torch.Tensor:
    """One covariance kernel on times t (L,): (L, L). RBF (length scale), periodic (period),
    linear (offset) or white (variance)."""
    d = t[:, None] - t[None]
    if kind == "rbf":
        return torch.exp(-0.5 * (d / param) ** 2)
    if kind == "periodic":
        return torch.exp(-2 * torch.sin(math.pi * d.abs() / param) ** 2)
    if kind == "linear":
        return (t[:, None] - param) * (t[None] - param) / len(t) ** 2
    if kind == "white":
        return param * torch.eye(len(t), dtype=t.dtype)
    raise ValueError(f"unknown kernel {kind!r}; allowed: rbf, periodic, linear, white")


KERNEL_BANK = (("rbf", 0.1), ("rbf", 0.33), ("periodic", 4.0), ("periodic", 12.0), ("periodic", 52.0),
               ("linear", 0.0), ("white", 0.1))  # rbf length scales are fractions of the series length


def kernel_synth(batch: int, length: int, gen: torch.Generator, max_kernels: int = 3
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """KernelSynth-style Gaussian-process samples (batch, length) and frequency ids (batch,): each
    series draws 1..max_kernels kernels from KERNEL_BANK and combines them with random + or *; the
    frequency is that of the first periodic kernel drawn (period 4, 12, 52), else "yearly". A small
    jitter keeps K positive definite. Generated on the CPU (gen must be a CPU generator)."""
    t = torch.arange(length, dtype=torch.float64)
    mats, freqs = [], []
    for _ in range(batch):
        count = int(torch.randint(1, max_kernels + 1, (1,), generator=gen))
        picks = [KERNEL_BANK[int(i)] for i in torch.randint(0, len(KERNEL_BANK), (count,), generator=gen)]
        K = None
        for kind, param in picks:
            k = kernel_matrix(kind, t, param * length if kind == "rbf" else param)
            K = k if K is None else (K + k if torch.rand(1, generator=gen) < 0.5 else K * k)
        periods = [param for kind, param in picks if kind == "periodic"]
        freqs.append({4.0: 1, 12.0: 2, 52.0: 3}[periods[0]] if periods else 0)
        mats.append(K + 1e-6 * torch.eye(length, dtype=torch.float64))
    L = torch.linalg.cholesky(torch.stack(mats))
    z = torch.randn(batch, length, 1, generator=gen, dtype=torch.float64)
    return (L @ z).squeeze(-1).float(), torch.tensor(freqs)


def mixed_prior(batch: int, length: int, gen: torch.Generator, *, kernel_share: float = 0.25,
                pool: tuple[torch.Tensor, torch.Tensor] | None = None, trends: bool = True,
                walks: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch from `prior`, with the first round(kernel_share * batch) series replaced by KernelSynth
    samples (given a random offset and scale like the rest): drawn from `pool` (a fixed set from
    `kernel_synth`, as Chronos pregenerates its KernelSynth data) or generated fresh. CPU."""
    x, freq = prior(batch, length, gen, trends=trends, walks=walks)
    k = round(kernel_share * batch)
    if k:
        if pool is None:
            gp, gp_freq = kernel_synth(k, length, gen)
        else:
            pick = torch.randint(0, len(pool[0]), (k,), generator=gen)
            gp, gp_freq = pool[0][pick, :length], pool[1][pick]
        scale = torch.exp(math.log(100) * (torch.rand(k, 1, generator=gen) - 0.5))
        x[:k] = 5 * torch.randn(k, 1, generator=gen) + scale * gp
        freq[:k] = gp_freq
    return x, freq


# ----------------------------------------------------------------------------- real series
@dataclass(frozen=True)
class Series:
    """A real series: values (T,) float64 (NaN where imputed values must not be scored), its
    frequency (one of FREQUENCIES), seasonal period for MASE and seasonal naive (1: none), and where
    it comes from."""

    name: str
    values: np.ndarray
    frequency: str
    season: int
    source: str
    imputed: np.ndarray  # (T,) bool: True where a gap was filled by linear interpolation


def _series(name: str, values: np.ndarray, frequency: str, season: int, source: str) -> Series:
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    if missing.any():
        idx = np.arange(len(values))
        values = values.copy()
        values[missing] = np.interp(idx[missing], idx[~missing], values[~missing])
    return Series(name, values, frequency, season, source, missing)


def load_series(name: str) -> Series:
    """One of SERIES, offline from statsmodels' bundled datasets."""
    import statsmodels.api as sm
    from statsmodels.datasets import elec_equip

    if name == "co2":
        v = sm.datasets.co2.load_pandas().data["co2"].to_numpy()
        return _series(name, v, "weekly", 52, "Mauna Loa CO2, weekly 1958-2001 (59 gaps interpolated, never scored)")
    if name == "elnino":
        d = sm.datasets.elnino.load_pandas().data.drop(columns="YEAR").to_numpy().ravel()
        return _series(name, d, "monthly", 12, "El Nino sea-surface temperature, monthly 1950-2010")
    if name == "sunspots":
        v = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
        return _series(name, v, "yearly", 11, "yearly sunspot numbers 1700-2008 (season: the ~11-year cycle)")
    if name == "elec_equip":
        v = elec_equip.load_pandas().data.iloc[:, 0].to_numpy()
        return _series(name, v, "monthly", 12, "euro-area electrical equipment orders, monthly 1995-2016")
    if name == "nile":
        v = sm.datasets.nile.load_pandas().data["volume"].to_numpy()
        return _series(name, v, "yearly", 1, "Nile flow at Aswan, yearly 1871-1970")
    if name in ("realgdp", "tbilrate"):
        v = sm.datasets.macrodata.load_pandas().data[name].to_numpy()
        what = "US real GDP" if name == "realgdp" else "US 3-month T-bill rate"
        return _series(name, v, "quarterly", 4, f"{what}, quarterly 1959-2009")
    raise ValueError(f"unknown series {name!r}; allowed: {', '.join(SERIES)}")


SERIES = ("co2", "elnino", "sunspots", "elec_equip", "nile", "realgdp", "tbilrate")


# ----------------------------------------------------------------------------- evaluation
def mase(actual: np.ndarray, forecast: np.ndarray, history: np.ndarray, season: int) -> float:
    """Mean absolute scaled error: mean |actual - forecast| / mean |h_t - h_{t - m}| over the history."""
    m = max(1, season)
    scale = np.mean(np.abs(history[m:] - history[:-m]))
    return float(np.mean(np.abs(actual - forecast)) / scale)


def rolling_origins(length: int, context: int, horizon: int, count: int, start: float = 0.75) -> list[int]:
    """`count` forecast origins o, evenly spaced over the last (1 - start) of the series, with at
    least `context` points before o and `horizon` after it."""
    lo = max(context, int(start * length))
    hi = length - horizon
    if hi < lo:
        raise ValueError(f"series of length {length} too short for context {context} + horizon {horizon}")
    return sorted(set(np.linspace(lo, hi, count).round().astype(int).tolist()))


Forecaster = Callable[[np.ndarray, int, int], np.ndarray]  # (history (T,), horizon, season) -> (H,)


def evaluate_mase(forecaster: Forecaster, series: Series, origins: Sequence[int], horizon: int) -> float:
    """Mean MASE over the origins whose targets contain no imputed value (forecasts see the full history)."""
    scores = []
    for o in origins:
        if series.imputed[o:o + horizon].any():
            continue
        history = series.values[:o]
        scores.append(mase(series.values[o:o + horizon], forecaster(history, horizon, series.season), history, series.season))
    return float(np.mean(scores))


def last_value(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    return np.full(horizon, history[-1])


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    m = max(1, season)
    return np.array([history[len(history) - m + (h % m)] for h in range(horizon)])


def drift(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    slope = (history[-1] - history[0]) / max(1, len(history) - 1)
    return history[-1] + slope * np.arange(1, horizon + 1)


def one_blas_thread() -> Any:
    """A context in which NumPy's BLAS uses one thread. statsmodels' fits multiply tiny matrices; with the
    default thread pool on a shared CPU they run several times slower (threads wait for each other), with the
    same result."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def arima(history: np.ndarray, horizon: int, season: int, window: int = 120) -> np.ndarray:
    """ARIMA(2, 1, 1) with drift on the last `window` points (statsmodels); no seasonal terms."""
    from statsmodels.tsa.arima.model import ARIMA

    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore")
        fit = ARIMA(history[-window:], order=(2, 1, 1), trend="t").fit()
    return np.asarray(fit.forecast(horizon))


def ets(history: np.ndarray, horizon: int, season: int, window: int = 120) -> np.ndarray:
    """Holt-Winters exponential smoothing (additive damped trend, additive season when there is one)."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    h = history[-window:]
    seasonal = "add" if season > 1 and len(h) >= 2 * season + 2 else None
    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore")
        fit = ExponentialSmoothing(h, trend="add", damped_trend=True, seasonal=seasonal,
                                   seasonal_periods=season if seasonal else None).fit()
    return np.asarray(fit.forecast(horizon))


BASELINES: dict[str, Forecaster] = {"last value": last_value, "seasonal naive": seasonal_naive, "drift": drift,
                                    "ARIMA": arima, "ETS": ets}


# ----------------------------------------------------------------------------- the model
class Experts(nn.Module):
    """Time-MoE's sparse feed-forward layer on tokens (..., W): a router scores E experts (two-layer
    MLPs), each token goes to its top-1 expert, whose output is scaled by the router probability.
    After each forward, `aux` holds the load-balancing loss E * sum_e f_e P_e (f_e: fraction of tokens
    sent to expert e, P_e: its mean router probability; 1 when perfectly balanced), `counts` the
    tokens per expert and `choice` each token's expert (h.shape[:-1]). At this size every expert is
    evaluated on every token as one batched matmul and the chosen output is gathered - the same
    function and gradients as sparse dispatch, fewer kernels."""

    def __init__(self, width: int, experts: int, hidden: int) -> None:
        super().__init__()
        self.router = nn.Linear(width, experts)
        self.w1 = nn.Parameter(torch.randn(experts, width, hidden) / math.sqrt(width))
        self.b1 = nn.Parameter(torch.zeros(experts, 1, hidden))
        self.w2 = nn.Parameter(torch.randn(experts, hidden, width) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(experts, 1, width))
        self.aux = torch.zeros(())
        self.counts = torch.zeros(experts)
        self.choice = torch.zeros(0, dtype=torch.int64)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e alone on tokens x (N, W) -> (N, W)."""
        return F.gelu(x @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        flat = h.reshape(-1, h.shape[-1])
        probs = self.router(flat).softmax(-1)  # (N, E)
        choice = probs.argmax(-1)
        every = F.gelu(torch.einsum("nw,ewh->enh", flat, self.w1) + self.b1)
        every = torch.einsum("enh,ehw->enw", every, self.w2) + self.b2  # (E, N, W)
        rows = torch.arange(len(flat), device=flat.device)
        out = every[choice, rows] * probs[rows, choice][:, None]
        counts = torch.bincount(choice, minlength=len(self.w1))
        self.aux = len(self.w1) * (counts.float() / len(flat) * probs.mean(0)).sum()
        self.counts = counts.detach().cpu()
        self.choice = choice.view(h.shape[:-1]).cpu()
        return out.view_as(h)


class MixerBlock(nn.Module):
    """TSMixer block on (B, P, W): an MLP across the P patches, then an MLP across the W features
    (or, with experts > 0, a top-1 mixture of that many experts of the same size)."""

    def __init__(self, patches: int, width: int, experts: int = 0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.time = nn.Sequential(nn.Linear(patches, 2 * patches), nn.GELU(), nn.Linear(2 * patches, patches))
        self.feat = Experts(width, experts, 2 * width) if experts else \
            nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.time(self.norm1(h).transpose(1, 2)).transpose(1, 2)
        return h + self.feat(self.norm2(h))


class PatchMixer(nn.Module):
    """TTM-style forecaster: context (B, C) and frequency ids (B,) -> forecast (B, H).
    Instance normalisation (RevIN without affine: subtract the context mean, divide by its std, undo
    after the head), non-overlapping patches of length `patch` embedded to `width`, a learned
    frequency prefix token, mixer blocks, a linear head. `normalise=False` is the ablation."""

    def __init__(self, context: int = 64, horizon: int = 12, patch: int = 8, width: int = 48, blocks: int = 3,
                 normalise: bool = True, experts: int = 0) -> None:
        super().__init__()
        if context % patch:
            raise ValueError(f"context {context} is not a multiple of patch {patch}")
        self.context, self.horizon, self.patch, self.normalise = context, horizon, patch, normalise
        n_tokens = context // patch + 1
        self.embed = nn.Linear(patch, width)
        self.freq = nn.Embedding(len(FREQUENCIES), width)
        self.blocks = nn.Sequential(*[MixerBlock(n_tokens, width, experts) for _ in range(blocks)])
        self.head = nn.Linear(n_tokens * width, horizon)

    def scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale (B, 1) used to normalise a context x (B, C)."""
        if not self.normalise:
            return torch.zeros_like(x[:, :1]), torch.ones_like(x[:, :1])
        return x.mean(1, keepdim=True), x.std(1, keepdim=True) + 1e-5

    def aux_loss(self) -> torch.Tensor:
        """Sum of the mixture-of-experts load-balancing losses of the last forward (0 without experts)."""
        return sum((b.feat.aux for b in self.blocks if isinstance(b.feat, Experts)), torch.zeros(()))

    def forward(self, x: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
        mu, sd = self.scale(x)
        z = (x - mu) / sd
        tokens = self.embed(z.view(len(z), -1, self.patch))  # (B, C / patch, W)
        h = torch.cat([self.freq(freq)[:, None], tokens], 1)
        return self.head(self.blocks(h).flatten(1)) * sd + mu


def forecast_loss(model: PatchMixer, window: torch.Tensor, freq: torch.Tensor, aux_weight: float = 0.01) -> torch.Tensor:
    """L1 error of the forecast of window[:, C:] from window[:, :C], measured in the context's
    normalised units (so every series counts alike; raw units when the model does not normalise),
    plus aux_weight times the experts' load-balancing loss."""
    x, y = window[:, :model.context], window[:, model.context:model.context + model.horizon]
    mu, sd = model.scale(x)
    loss = F.l1_loss((model(x, freq) - mu) / sd, (y - mu) / sd)
    return loss + aux_weight * model.aux_loss().to(loss.device) if aux_weight else loss


@torch.no_grad()
def rollout(model: PatchMixer, x: torch.Tensor, freq: torch.Tensor, horizon: int) -> torch.Tensor:
    """Autoregressive forecast (GPHT's decoding): predict model.horizon steps, append them to the
    context, repeat until `horizon` steps: (B, C) -> (B, horizon). One model serves every horizon."""
    out = []
    while sum(o.shape[1] for o in out) < horizon:
        step = model(x, freq)
        out.append(step)
        x = torch.cat([x, step], 1)[:, -model.context:]
    return torch.cat(out, 1)[:, :horizon]


def model_forecaster(model: PatchMixer, frequency: str) -> Forecaster:
    """Wrap a trained model as a Forecaster (uses the last `context` points of the history)."""
    fid = torch.tensor([FREQUENCIES.index(frequency)])

    @torch.no_grad()
    def forecast(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
        model.eval()
        x = torch.tensor(history[-model.context:], dtype=torch.float32)[None]
        dev = next(model.parameters()).device
        return rollout(model, x.to(dev), fid.to(dev), horizon)[0].cpu().double().numpy()

    return forecast


def windows(series: Series, end: int, length: int) -> torch.Tensor:
    """All windows of `length` consecutive points of series.values[:end]: (N, length) float32, N = 0
    when the history is shorter than one window."""
    v = torch.tensor(series.values[:end], dtype=torch.float32)
    if len(v) < length:
        return torch.zeros(0, length)
    return v.unfold(0, length, 1).contiguous()


def pretrain(model: PatchMixer, cfg: TrainConfig, profile: Profile, *, batch: int = 64, kernel_share: float = 0.25,
             pool_size: int = 1024, trends: bool = True, walks: bool = True, aux_weight: float = 0.01,
             data_seed_offset: int = 3000) -> History:
    """Train on fresh `mixed_prior` batches of length context + horizon (KernelSynth samples drawn
    from a pool of `pool_size`, generated once); returns the History. A different `data_seed_offset`
    draws a different stream of prior batches (a pretraining replica)."""
    length = model.context + model.horizon
    dev = profile.device
    pool = kernel_synth(pool_size, length, profile.generator(2999, device="cpu")) if kernel_share else None

    def batch_fn(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, f = mixed_prior(batch, length, g, kernel_share=kernel_share, pool=pool, trends=trends, walks=walks)
        return x.to(dev), f.to(dev)

    return train(model, batch_fn, lambda m, b: forecast_loss(m, *b, aux_weight=aux_weight), cfg, profile,
                 examples_per_step=batch, progress=False, data_seed_offset=data_seed_offset, data_device="cpu")


def fine_tune(model: PatchMixer, series: Series, end: int, cfg: TrainConfig, profile: Profile, *,
              batch: int = 32) -> History | None:
    """Train on the windows of series.values[:end] (context + horizon long; see `windows`). Returns the
    History, or None (model untouched) when the history holds fewer than `batch` windows."""
    w = windows(series, end, model.context + model.horizon)
    if len(w) < batch:
        return None
    dev = profile.device
    w = w.to(dev)
    fid = torch.full((len(w),), FREQUENCIES.index(series.frequency), device=dev)
    return train(model, index_batches(len(w), batch), lambda m, i: forecast_loss(m, w[i], fid[i]), cfg, profile,
                 examples_per_step=batch, progress=False, data_seed_offset=4000)
