"""Small classical learners for the theory of pretraining: generative vs discriminative classifiers
(Ng & Jordan 2001; Zheng et al. 2023) and representations learned without labels (Ge et al. 2024).

Shapes: features x (n, d), binary labels y (n,) in {0, 1}; predictions are labels (n,).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class GaussianNaiveBayes:
    """Class-conditional Gaussians with a diagonal covariance shared by both classes: p(x | y) =
    prod_j N(x_j; mu_yj, s_j^2). Its decision rule is linear, like logistic regression's, but its
    parameters are fitted generatively (means and variances), not by maximising p(y | x)."""

    means: torch.Tensor  # (2, d)
    var: torch.Tensor  # (d,)
    log_prior: torch.Tensor  # (2,)

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, var_floor: float = 1e-3) -> "GaussianNaiveBayes":
        """Maximum-likelihood means and variances; Laplace-smoothed class priors; a class missing from the
        sample gets the overall mean."""
        means = torch.stack([x[y == c].mean(0) if (y == c).any() else x.mean(0) for c in (0, 1)])
        resid = x - means[y.long()]
        counts = torch.stack([(y == c).sum() for c in (0, 1)]).to(x.dtype)
        return cls(means, resid.pow(2).mean(0).clamp_min(var_floor), torch.log((counts + 1) / (len(y) + 2)))

    def log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x, y = c) up to a constant shared by the classes: (n, 2)."""
        return -0.5 * ((x.unsqueeze(1) - self.means) ** 2 / self.var).sum(-1) + self.log_prior

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_joint(x).argmax(-1)


def logistic_regression(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, max_iter: int = 100) -> torch.Tensor:
    """Weights (d + 1,) (bias last) minimising mean log-loss + (l2 / 2) ||w||^2 (bias not penalised), by L-BFGS."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
    w = torch.zeros(xb.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = logistic_loss(w, xb, y, l2)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def logistic_loss(w: torch.Tensor, xb: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """Mean log-loss of weights w on features with a bias column xb, plus the ridge penalty."""
    return torch.nn.functional.binary_cross_entropy_with_logits(xb @ w, y.to(xb.dtype)) + 0.5 * l2 * w[:-1].pow(2).sum()


def logistic_predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return ((x @ w[:-1] + w[-1]) > 0).long()


def logistic_classifier(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2,
                        max_iter: int = 100) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fit `logistic_regression` (at most `max_iter` L-BFGS iterations) and return its predict function
    (a learner for `learning_curves`)."""
    w = logistic_regression(x, y, l2, max_iter)
    return lambda x_new: logistic_predict(w, x_new)


def redundant_feature_classes(n: int, gen: torch.Generator, copies: int = 3, independent: int = 60,
                              signal: float = 1.0, weak: float = 0.3, copy_noise: float = 0.3
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary classes where naive Bayes' independence assumption is mildly wrong.

    One informative feature s | y ~ N(+-signal/2, 1) is observed `copies` times with small noise,
    next to `independent` weak features v_j | y ~ N(+-weak/2, 1). Naive Bayes counts the copies as
    independent evidence and over-weights s, so its asymptotic error exceeds logistic regression's;
    but it estimates only means and variances, so it converges after far fewer samples.
    Returns x (n, copies + independent), y (n,).
    """
    dev = gen.device
    y = torch.randint(2, (n,), generator=gen, device=dev)
    sign = (2 * y - 1).float().unsqueeze(1)
    s = sign * signal / 2 + torch.randn(n, 1, generator=gen, device=dev)
    u = s + copy_noise * torch.randn(n, copies, generator=gen, device=dev)
    v = sign * weak / 2 + torch.randn(n, independent, generator=gen, device=dev)
    return torch.cat([u, v], 1), y


def latent_factor_data(n: int, loadings: torch.Tensor, beta: torch.Tensor, gen: torch.Generator, noise: float = 1.0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """x = A z + noise eps (d dims) with z ~ N(0, I_r), and a label y = 1[beta . z + 0.3 xi > 0] that
    depends on the latent factors only: the setting of Ge et al. (2024). loadings A (d, r), beta (r,)."""
    dev = gen.device
    z = torch.randn(n, loadings.shape[1], generator=gen, device=dev)
    x = z @ loadings.T + noise * torch.randn(n, loadings.shape[0], generator=gen, device=dev)
    y = ((z @ beta + 0.3 * torch.randn(n, generator=gen, device=dev)) > 0).long()
    return x, y


def pca(x: torch.Tensor, r: int) -> torch.Tensor:
    """The top-r principal directions of x (n, d), as columns (d, r): unsupervised pretraining of a linear
    representation."""
    xc = x - x.mean(0)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    return vh[:r].T






def samples_to_reach(ns: list[int], errors: list[float], target: float) -> float:
    """The smallest sample size at which an error curve first reaches `target`, interpolated linearly in
    log n between the grid points that bracket the crossing (inf if it never does)."""
    for i, (n, e) in enumerate(zip(ns, errors)):
        if e <= target:
            if i == 0:
                return float(n)
            n0, e0 = ns[i - 1], errors[i - 1]
            frac = (e0 - target) / (e0 - e)
            return float(math.exp(math.log(n0) + frac * (math.log(n) - math.log(n0))))
    return math.inf


Learner = Callable[[torch.Tensor, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def learning_curves(sample: Callable[[int], tuple[torch.Tensor, torch.Tensor]], learners: dict[str, Learner],
                    sizes: list[int], repeats: int, x_test: torch.Tensor, y_test: torch.Tensor) -> dict[str, list[float]]:
    """Mean test error of each learner against the training-set size: for every n, `repeats` training
    sets drawn by `sample(n)`, each shared by all learners. A learner maps (x, y) to a predict function."""
    errors: dict[str, list[float]] = {name: [] for name in learners}
    for n in sizes:
        runs: dict[str, list[float]] = {name: [] for name in learners}
        for _ in range(repeats):
            x, y = sample(n)
            for name, fit in learners.items():
                runs[name].append(float((fit(x, y)(x_test) != y_test).float().mean()))
        for name in learners:
            errors[name].append(sum(runs[name]) / repeats)
    return errors
