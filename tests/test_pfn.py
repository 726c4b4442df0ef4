"""Bar distribution, GP posterior, PFN symmetries, learning-curve prior and constrained BO."""
import math

import numpy as np
import pytest
import torch

from ptmlib.icl.bars import BarDistribution
from ptmlib.icl.bo import GPSurrogate, constrained_bo, gaussian_ei, sample_functions
from ptmlib.icl.curve_prior import fit_and_extrapolate, pow3, sample_curves
from ptmlib.icl.gp import gaussian_nll, gp_posterior, rbf_kernel, sample_gp
from ptmlib.icl.pfn import PFN, context_mask


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def bars():
    return BarDistribution.from_samples(torch.randn(50000, generator=gen(0), dtype=torch.float64), 20)


def test_bar_density_integrates_to_one_and_cdf_is_its_integral(bars):
    logits = torch.randn(3, 20, generator=gen(1), dtype=torch.float64)
    y = torch.linspace(-15, 15, 300001, dtype=torch.float64)
    dens = torch.exp(bars.log_density(logits.unsqueeze(1), y.expand(3, -1)))  # (3, G)
    assert torch.allclose(torch.trapezoid(dens, y, dim=-1), torch.ones(3, dtype=torch.float64), atol=1e-4)
    cum = torch.cumulative_trapezoid(dens, y, dim=-1)
    for v in (-2.5, -0.3, 0.0, 1.1, 3.0):
        i = int(torch.searchsorted(y, torch.tensor(v, dtype=torch.float64)))
        assert torch.allclose(bars.cdf(logits, torch.full((3,), y[i].item(), dtype=torch.float64)), cum[:, i - 1], atol=1e-4)
    mean_num = torch.trapezoid(dens * y, y, dim=-1)
    assert torch.allclose(bars.mean(logits).double(), mean_num, atol=1e-3)


def test_bar_borders_have_equal_prior_mass_and_quantile_inverts_cdf(bars):
    samples = torch.randn(50000, generator=gen(2), dtype=torch.float64)
    inner = ((samples[:, None] >= bars.borders[:-1]) & (samples[:, None] < bars.borders[1:])).double().mean(0)
    assert torch.allclose(inner[1:-1], torch.full((18,), 0.05, dtype=torch.float64), atol=0.006)
    logits = torch.randn(4, 20, generator=gen(3), dtype=torch.float64)
    for q in (0.05, 0.5, 0.9):
        assert torch.allclose(bars.cdf(logits, bars.quantile(logits, q)), torch.full((4,), q, dtype=torch.float64), atol=1e-6)


def test_bar_expected_improvement_matches_numerical_integral(bars):
    logits = torch.randn(2, 20, generator=gen(4), dtype=torch.float64)
    y = torch.linspace(-15, 15, 300001, dtype=torch.float64)
    dens = torch.exp(bars.log_density(logits.unsqueeze(1), y.expand(2, -1)))
    for best in (-9.0, -1.0, 0.4, float(bars.borders[1]) - 0.1, float(bars.borders[-2]) + 0.3, 8.0):
        exact = torch.trapezoid(dens * (best - y).clamp(min=0), y, dim=-1)
        assert torch.allclose(bars.expected_improvement(logits, best), exact, atol=3e-4)


def test_bar_nll_is_minimised_by_the_true_bin_masses(bars):
    y = torch.randn(100000, generator=gen(5), dtype=torch.float64) * 0.7 + 0.2
    cdf = torch.distributions.Normal(0.2, 0.7).cdf(bars.borders)
    mass = cdf.diff()
    mass[0] += cdf[0]
    mass[-1] += 1 - cdf[-1]
    good = bars.nll(mass.log().expand(len(y), -1), y).mean()
    flat = bars.nll(torch.zeros(len(y), 20, dtype=torch.float64), y).mean()
    assert good < flat
    with pytest.raises(ValueError):
        BarDistribution(torch.tensor([0.0, 1.0, 1.0, 2.0]))


def test_gp_posterior_matches_direct_linear_algebra():
    x, y = sample_gp(2, 7, gen(6), 0.3, 1.5, 0.05)
    xq = torch.rand(2, 5, 1, generator=gen(7))
    mean, var = gp_posterior(x.double(), y.double(), xq.double(), 0.3, 1.5, 0.05)
    for b in range(2):
        X, Y, Q = x[b, :, 0].double().numpy(), y[b].double().numpy(), xq[b, :, 0].double().numpy()
        k = lambda a, c: 1.5 * np.exp(-(a[:, None] - c[None]) ** 2 / (2 * 0.09))
        K = k(X, X) + 0.05 * np.eye(7)
        np.testing.assert_allclose(mean[b].numpy(), k(Q, X) @ np.linalg.solve(K, Y), rtol=1e-8)
        np.testing.assert_allclose(var[b].numpy(), np.diag(k(Q, Q) - k(Q, X) @ np.linalg.solve(K, k(X, Q))) + 0.05, rtol=1e-8)
    m0, v0 = gp_posterior(x[:, :0], y[:, :0], xq, 0.3, 1.5, 0.05)
    assert torch.all(m0 == 0) and torch.allclose(v0, torch.full_like(v0, 1.55))
    assert gaussian_nll(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0)).item() == pytest.approx(0.5 * math.log(2 * math.pi))


def test_gp_samples_have_the_kernel_covariance():
    x, y = sample_gp(200000, 3, gen(8), 0.5, 1.0, 0.1)
    # pairs of points at random places: E[y_i y_j | x] = k(x_i, x_j) + noise on the diagonal
    k01 = rbf_kernel(x[:, :1], x[:, 1:2], 0.5)[:, 0, 0]
    assert (y[:, 0] * y[:, 1] - k01).mean().item() == pytest.approx(0.0, abs=0.01)
    assert (y[:, 0] ** 2).mean().item() == pytest.approx(1.1, rel=0.03)


def test_pfn_ignores_context_order_and_queries_are_independent():
    torch.manual_seed(0)
    model = PFN(2, 1, 10, width=16, n_layer=2, n_head=2)
    xc, yc, xq = torch.rand(3, 5, 1), torch.randn(3, 5), torch.rand(3, 4, 1)
    out = model(xc, yc, xq)
    assert out.shape == (2, 3, 4, 10)
    perm = torch.tensor([3, 1, 4, 0, 2])
    assert torch.allclose(out, model(xc[:, perm], yc[:, perm], xq), atol=1e-5)
    xq2 = xq.clone()
    xq2[:, 0] = 0.9
    assert torch.allclose(out[:, :, 1:], model(xc, yc, xq2)[:, :, 1:], atol=1e-6)
    assert not torch.allclose(out[:, :, 0], model(xc, yc, xq2)[:, :, 0])
    assert context_mask(2, 4).sum().item() == 8
    with pytest.raises(ValueError):
        model(xc[:, :0], yc[:, :0], xq)


def test_curve_prior_and_curve_fitting():
    t, y = sample_curves(3000, 20, gen(9))
    assert y.shape == (3000, 20) and y.min() > -0.2 and y.max() < 1.2
    assert (y[:, -1] - y[:, 0]).mean() > 0.1  # curves improve on average
    tt = np.arange(1, 21, dtype=float)
    clean = pow3(tt, 0.9, 0.6, 0.7)
    np.testing.assert_allclose(fit_and_extrapolate(tt[:8], clean[:8], tt[8:]), clean[8:], atol=1e-4)


def test_gaussian_ei_matches_monte_carlo():
    mean, std = torch.tensor([0.3, -0.2]), torch.tensor([0.5, 1.2])
    z = torch.randn(400000, 2, generator=gen(10)) * std + mean
    mc = (0.1 - z).clamp(min=0).mean(0)
    assert torch.allclose(gaussian_ei(mean, std, 0.1), mc, atol=3e-3)


def test_constrained_bo_with_the_true_gp_finds_the_constrained_minimum():
    grid = torch.linspace(0, 1, 100).unsqueeze(-1)
    f = (grid[:, 0] - 0.7) ** 2  # unconstrained minimum at 0.7 is infeasible
    g = grid[:, 0] - 0.5  # feasible: x <= 0.5, so the constrained minimum is at 0.5
    res = constrained_bo(f, g, grid, GPSurrogate(0.3, 1e-4), n_init=3, n_iter=12, gen=gen(11))
    assert res.best_feasible[-1] - f[g <= 0].min().item() < 1e-3
    rnd = constrained_bo(f, g, grid, None, n_init=3, n_iter=12, gen=gen(11))
    vals = np.array(rnd.best_feasible)
    assert np.all(np.diff(vals[np.isfinite(vals)]) <= 0)
    fs = sample_functions(5, grid, 0.2, gen(12))
    assert fs.shape == (5, 100)


def test_tuned_mass_damper_reaches_den_hartogs_equal_peak_optimum():
    from ptmlib.icl.bo import tuned_mass_damper

    mu = 0.05
    zeta_opt = math.sqrt(3 * mu / (8 * (1 + mu) ** 3))
    amp, _ = tuned_mass_damper(torch.tensor([zeta_opt]), mu)
    assert amp.item() == pytest.approx(math.sqrt(1 + 2 / mu), rel=0.02)
    zetas = torch.logspace(-2, 0, 200)
    amp, stroke = tuned_mass_damper(zetas, mu)
    assert abs(zetas[amp.argmin()].item() - zeta_opt) < 0.03  # the best damping is near Den Hartog's
    assert amp[0] > 3 * amp.min() and amp[-1] > 2 * amp.min()  # too little and too much damping both hurt
    assert stroke[0] > stroke[100] > 0  # more damping, less stroke


def test_mean_regret_is_zero_for_an_oracle_start_and_ignores_infeasible_runs():
    from ptmlib.icl.bo import mean_regret

    grid = torch.linspace(0, 1, 50).unsqueeze(-1)
    f = (grid[:, 0] - 0.3) ** 2
    g = grid[:, 0] - 0.5
    curve, seconds = mean_regret([(f, g)], grid, None, n_init=50, n_iter=0, gens=[gen(0)])
    assert curve[-1] == pytest.approx(0.0) and seconds == 0.0
    # problem B is feasible at one grid point only, which its single random start misses: that run has no
    # feasible point yet and is left out, so the mean is problem A's regret alone
    first = int(torch.randperm(50, generator=gen(2))[0])
    g_b = torch.ones(50)
    g_b[(first + 1) % 50] = -1.0
    f_a, g_a = torch.full((50,), 0.5), -torch.ones(50)
    curve, _ = mean_regret([(f_a, g_a), (f, g_b)], grid, None, 1, 0, [gen(1), gen(2)])
    assert curve == [0.0]


def test_constrained_ei_is_feasibility_alone_until_a_feasible_point_is_seen():
    from ptmlib.icl.bo import constrained_ei

    sur = GPSurrogate(0.3, 1e-3)
    x = torch.tensor([[0.1], [0.5], [0.9]])
    cand = torch.linspace(0, 1, 11).unsqueeze(-1)
    f_obs = torch.tensor([1.0, 0.0, 2.0])
    g_infeasible = torch.tensor([1.0, 2.0, 0.5])
    g_std = g_infeasible.std()
    pof = sur.prob_below(x, (g_infeasible - g_infeasible.mean()) / g_std, cand, float(-g_infeasible.mean() / g_std))
    assert torch.allclose(constrained_ei(sur, x, f_obs, g_infeasible, cand), pof)
    g_mixed = torch.tensor([-1.0, 1.0, -0.5])  # points 0 and 2 feasible: the incumbent is f = 1.0
    fy = (f_obs - f_obs.mean()) / f_obs.std()
    gy = (g_mixed - g_mixed.mean()) / g_mixed.std()
    want = sur.prob_below(x, gy, cand, float(-g_mixed.mean() / g_mixed.std())) * sur.expected_improvement(x, fy, cand, float(fy[0]))
    assert torch.allclose(constrained_ei(sur, x, f_obs, g_mixed, cand), want)
