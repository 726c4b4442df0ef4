"""Estimators for finite task pools and mixture priors, the task samplers, the regret formulas."""
import math

import numpy as np
import pytest
import torch

from ptmlib.icl import estimators
from ptmlib.icl.compare import prediction_gap
from ptmlib.icl.tasks import mixture_prior, mixture_prompts, pool_prompts, sparse_prior, task_pool


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_dmmse_is_the_softmax_posterior_over_the_pool_computed_by_hand():
    pool = task_pool(5, 3, gen(0)).double()
    x, y, _ = pool_prompts(pool, 4, 6, 3, 0.5, gen(1))
    xq = torch.randn(4, 3, dtype=torch.float64)
    for b in range(4):
        X, Y, W = x[b].numpy(), y[b].numpy(), pool.numpy()
        loglik = np.array([-np.sum((Y - X @ w) ** 2) / (2 * 0.25) for w in W])
        p = np.exp(loglik - loglik.max())
        p /= p.sum()
        assert estimators.dmmse(x, y, xq, pool, 0.25)[b].item() == pytest.approx(float((p @ W) @ xq[b].numpy()), rel=1e-9)


def test_dmmse_with_one_task_returns_that_task():
    pool = torch.tensor([[1.0, -2.0]])
    x, y, _ = pool_prompts(None, 8, 4, 2, 0.3, gen(2))
    xq = torch.randn(8, 2)
    assert torch.allclose(estimators.dmmse(x, y, xq, pool, 0.1), xq @ pool[0])


def test_dmmse_approaches_ridge_as_the_pool_grows():
    x, y, _ = pool_prompts(None, 512, 8, 2, 0.5, gen(3))
    xq = torch.randn(512, 2, generator=gen(4))
    ridge = estimators.ridge(x, y, xq, 0.25)
    gaps = [prediction_gap(estimators.dmmse(x, y, xq, task_pool(M, 2, gen(5)), 0.25), ridge, 2) for M in (4, 64, 4096)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02 * gaps[0]


def test_dmmse_prefix_equals_the_prefix_loop():
    pool = task_pool(7, 3, gen(6))
    x, y, _ = pool_prompts(pool, 16, 6, 3, 0.5, gen(7))
    fast = estimators.dmmse_prefix(x, y, pool, 0.25, chunk=7 * 6 * 3)  # forces several chunks
    slow = estimators.prefix_predictions(lambda a, b, q: estimators.dmmse(a, b, q, pool, 0.25), x, y)
    assert torch.allclose(fast[:, 1:], slow[:, 1:], atol=1e-5)
    assert torch.allclose(fast[:, 0], x[:, 0] @ pool.mean(0), atol=1e-6)  # no data: the pool's mean task


def test_mixture_posterior_mean_special_cases():
    d = 3
    x, y, _ = pool_prompts(None, 32, 5, d, 0.5, gen(8))
    x, y = x.double(), y.double()
    xq = torch.randn(32, d, dtype=torch.float64)
    one = lambda means, covs: estimators.mixture_posterior_mean(x, y, xq, means, covs, torch.ones(len(means), dtype=torch.float64) / len(means), 0.25)
    # a single standard Gaussian component is ridge
    assert torch.allclose(one(torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)[None]),
                          estimators.ridge(x, y, xq, 0.25), atol=1e-9)
    # point masses (zero covariance, tiny jitter for the Cholesky) at the pool's tasks are dMMSE
    pool = task_pool(6, d, gen(9)).double()
    assert torch.allclose(one(pool, 1e-12 * torch.eye(d, dtype=torch.float64).expand(6, d, d)),
                          estimators.dmmse(x, y, xq, pool, 0.25), atol=1e-6)


def test_sparse_posterior_matches_numerical_integration():
    # 1-sparse prior in d = 2: integrate the posterior over each axis on a grid
    means, covs, weights = sparse_prior(2)
    x, y, _ = pool_prompts(torch.tensor([[0.0, 1.3]]), 1, 4, 2, 0.5, gen(10))
    xq = torch.tensor([[0.7, -0.4]])
    z = torch.linspace(-12, 12, 200001, dtype=torch.float64)
    num, den = 0.0, 0.0
    for j in range(2):
        w = torch.zeros(len(z), 2, dtype=torch.float64)
        w[:, j] = z
        prior = torch.exp(-z**2 / (2 * 2)) / math.sqrt(2 * math.pi * 2) * 0.5  # variance d = 2
        lik = torch.exp(-((y.double() - w @ x[0].double().T) ** 2).sum(-1) / (2 * 0.25))
        num += torch.trapezoid(prior * lik * (w @ xq[0].double()), z)
        den += torch.trapezoid(prior * lik, z)
    got = estimators.mixture_posterior_mean(x.double(), y.double(), xq.double(), means.double(), covs.double(), weights.double(), 0.25)
    assert got.item() == pytest.approx(float(num / den), rel=1e-6)


def test_pool_and_mixture_samplers():
    pool = task_pool(3, 4, gen(11))
    x, y, w = pool_prompts(pool, 600, 5, 4, 0.0, gen(12))
    assert torch.allclose(y, torch.einsum("bnd,bd->bn", x, w))
    assert {tuple(r.tolist()) for r in w} == {tuple(r.tolist()) for r in pool}
    _, _, w = mixture_prompts(20000, 2, 4, 0.1, gen(13))
    nnz = (w != 0).sum(1)
    assert set(nnz.unique().tolist()) <= {1, 4}
    assert (nnz == 1).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert (w**2).sum(1)[nnz == 1].mean().item() == pytest.approx(4.0, rel=0.05)  # E||w||^2 = d in both classes
    means, covs, weights = mixture_prior(4)
    assert weights.sum().item() == pytest.approx(1.0) and covs.shape == (5, 4, 4)


def test_bayes_regret_against_direct_simulation_and_least_squares():
    d, k, s2 = 3, 24, 0.25
    exact = estimators.bayes_excess_risk(k, d, s2, gen(14), num_samples=20000)
    x, y, w = pool_prompts(None, 40000, k + 1, d, s2**0.5, gen(15))
    pred = estimators.ridge(x[:, :k], y[:, :k], x[:, k], s2)
    simulated = ((pred - torch.einsum("bd,bd->b", x[:, k], w)) ** 2).mean().item()
    assert simulated == pytest.approx(exact, rel=0.05)
    ls = estimators.least_squares_excess_risk(k, d, s2)
    assert ls == pytest.approx(0.25 * 3 / 20)
    assert exact < ls and exact > 0.85 * ls  # shrinkage helps a little at k = 8d
    with pytest.raises(ValueError):
        estimators.least_squares_excess_risk(4, 3, s2)
