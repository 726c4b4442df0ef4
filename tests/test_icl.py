import numpy as np
import pytest
import torch

from ptmlib.icl import estimators
from ptmlib.icl.data import regression_prompts
from ptmlib.icl.lsa import LinearSelfAttention, effective_step, lsa_predict, prompt_tokens
from ptmlib.icl.transformer import RegressionGPT, interleave


def prompts(b=64, n=12, d=4, noise=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return regression_prompts(b, n, d, noise, gen)


def test_regression_prompts_follow_the_linear_model():
    x, y, w = prompts(noise=0.0)
    assert x.shape == (64, 12, 4) and y.shape == (64, 12) and w.shape == (64, 4)
    assert torch.allclose(y, torch.einsum("bnd,bd->bn", x, w))
    x2, y2, _ = prompts(b=20000, n=1, noise=0.5)
    assert (y2 - torch.einsum("bnd,bd->bn", x2, _)).var().item() == pytest.approx(0.25, rel=0.05)


def test_ridge_is_the_gaussian_posterior_mean():
    x, y, _ = prompts(b=3, n=5, d=4)
    xq = torch.randn(3, 4)
    lam = 0.25
    for b in range(3):  # posterior mean of w under N(0, I) prior and noise variance lam, in NumPy
        X, Y = x[b].double().numpy(), y[b].double().numpy()
        mean = np.linalg.solve(X.T @ X / lam + np.eye(4), X.T @ Y / lam)
        assert estimators.ridge(x, y, xq, lam)[b].item() == pytest.approx(float(mean @ xq[b].double().numpy()), rel=1e-4)


def test_least_squares_interpolates_and_is_ridge_without_penalty():
    x, y, _ = prompts(n=8, d=4, noise=0.0)
    ls = estimators.least_squares(x, y, x[:, 0])
    assert torch.allclose(ls, y[:, 0], atol=1e-4)  # noiseless, k > d: recovers w exactly
    x, y, _ = prompts(n=10, d=4, noise=0.3)
    xq = torch.randn(64, 4)
    assert torch.allclose(estimators.least_squares(x, y, xq), estimators.ridge(x, y, xq, 1e-9), atol=1e-3)
    # with fewer points than dimensions the min-norm solution fits the context exactly
    few = estimators.least_squares(x[:, :2], y[:, :2], x[:, 1])
    assert torch.allclose(few, y[:, 1], atol=1e-4)


def test_knn_and_averaging():
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    y = torch.tensor([[1.0, 3.0, 100.0]])
    xq = torch.tensor([[0.9, 0.0]])
    assert estimators.knn(x, y, xq, k=1).item() == 3.0 and estimators.knn(x, y, xq, k=2).item() == 2.0
    assert estimators.knn(x, y, xq, k=10).item() == pytest.approx(104 / 3)
    # averaging: w = mean(y_i x_i) = (3*[1,0] + 100*[5,5]) / 3
    assert estimators.averaging(x, y, xq).item() == pytest.approx(0.9 * (3 + 500) / 3)
    assert torch.equal(estimators.averaging(x, y, xq), estimators.gd_step(x, y, xq, eta=1.0))


def test_preconditioned_gd_step():
    x, y, _ = prompts(b=4, n=6, d=3)
    xq = torch.randn(4, 3)
    gamma = torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.3, 0.0, 0.1]])
    g = (y.unsqueeze(-1) * x).mean(1)
    expected = 0.7 * torch.einsum("bi,ji,bj->b", g, gamma, xq)  # eta * g^T Gamma^T x_q
    assert torch.allclose(estimators.gd_step(x, y, xq, 0.7, gamma), expected, atol=1e-6)
    assert torch.allclose(estimators.gd_step(x, y, xq, 0.7, torch.eye(3)), estimators.gd_step(x, y, xq, 0.7))


def test_optimal_step_minimises_the_closed_form_risk_and_matches_monte_carlo():
    n, d, s2 = 10, 5, 0.25
    eta = estimators.optimal_gd_step(n, d, s2)
    assert eta == pytest.approx(10 / 16.25)
    risk = lambda e: estimators.gd_step_risk(e, n, d, s2)  # noqa: E731
    assert risk(eta) < min(risk(eta - 1e-3), risk(eta + 1e-3))
    gen = torch.Generator().manual_seed(0)
    x, y, _ = regression_prompts(400_000, n + 1, d, s2**0.5, gen)
    pred = estimators.gd_step(x[:, :n].double(), y[:, :n].double(), x[:, n].double(), eta)
    mc = ((pred - y[:, n].double()) ** 2).mean().item()
    assert mc == pytest.approx(risk(eta), rel=0.01)


def test_prefix_predictions_use_only_earlier_points():
    x, y, _ = prompts(b=8, n=6, d=3)
    out = estimators.prefix_predictions(estimators.least_squares, x, y)
    assert out.shape == (8, 6) and torch.equal(out[:, 0], torch.zeros(8))
    y2 = y.clone()
    y2[:, 4:] += 10
    out2 = estimators.prefix_predictions(estimators.least_squares, x, y2)
    assert torch.allclose(out[:, :5], out2[:, :5])
    assert torch.allclose(out[:, 3], estimators.least_squares(x[:, :3], y[:, :3], x[:, 3]))


def gd_lsa(d: int, eta: float) -> LinearSelfAttention:
    """The von Oswald et al. construction: an LSA layer whose query output is one GD step."""
    D = d + 1
    lsa = LinearSelfAttention(D)
    with torch.no_grad():
        eye_x = torch.zeros(D, D)
        eye_x[:d, :d] = torch.eye(d)
        lsa.W_K.copy_(eye_x)
        lsa.W_Q.copy_(eye_x)
        lsa.W_V.zero_()
        lsa.W_V[d, d] = 1.0
        lsa.P.copy_(eta * torch.eye(D))
    return lsa


def test_lsa_with_the_construction_weights_is_one_gd_step():
    d, eta = 4, 0.37
    x, y, _ = prompts(b=16, n=9, d=d)
    xq = torch.randn(16, d)
    with torch.no_grad():
        pred = lsa_predict(gd_lsa(d, eta), x, y, xq)
    assert torch.allclose(pred, estimators.gd_step(x, y, xq, eta), atol=1e-5)
    gamma, step = effective_step(gd_lsa(d, eta), d)
    assert step == pytest.approx(eta) and torch.allclose(gamma, eta * torch.eye(d))


def test_effective_step_reproduces_the_y_linear_part_of_any_layer():
    d = 3
    torch.manual_seed(0)
    lsa = LinearSelfAttention(d + 1, init_std=0.5)
    x, y, _ = prompts(b=32, n=7, d=d)
    xq = torch.randn(32, d)
    gamma, _ = effective_step(lsa, d)
    with torch.no_grad():  # the part linear in y: (f(y) - f(-y)) / 2 removes the y-free and y^2 terms
        odd = (lsa_predict(lsa, x, y, xq) - lsa_predict(lsa, x, -y, xq)) / 2
    assert torch.allclose(odd, estimators.gd_step(x, y, xq, 1.0, gamma), atol=1e-4)


def test_prompt_tokens_layout():
    x, y, _ = prompts(b=2, n=3, d=2)
    xq = torch.randn(2, 2)
    z = prompt_tokens(x, y, xq)
    assert z.shape == (2, 4, 3) and torch.equal(z[:, :3, 2], y) and torch.equal(z[:, 3], torch.cat([xq, torch.zeros(2, 1)], -1))


def test_interleave_layouts():
    x, y, _ = prompts(b=1, n=2, d=2)
    z = interleave(x, y)
    assert torch.equal(z[0, 0], torch.cat([x[0, 0], torch.zeros(1)]))
    assert torch.equal(z[0, 1], torch.tensor([0.0, 0.0, y[0, 0].item()]))
    assert torch.equal(interleave(x, y, pair_tokens=True)[0, 3], torch.cat([x[0, 1], y[0, 1:2]]))


@pytest.mark.parametrize("pair_tokens", [False, True])
def test_regression_gpt_predicts_y_i_from_earlier_points_only(pair_tokens):
    torch.manual_seed(0)
    model = RegressionGPT(d=3, n_points=6, n_embd=16, n_layer=2, n_head=2, pair_tokens=pair_tokens).eval()
    x, y, _ = prompts(b=4, n=6, d=3)
    y2 = y.clone()
    y2[:, 3] += 5.0  # y_3 may only influence predictions of y_4, y_5
    with torch.no_grad():
        a, b = model(x, y), model(x, y2)
    assert a.shape == (4, 6)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6) and not torch.allclose(a[:, 4:], b[:, 4:])


def test_relative_difference_and_normalized_errors():
    from ptmlib.icl.compare import normalized_errors, relative_difference

    b = torch.tensor([1.0, 2.0, 2.0])
    assert relative_difference(b * 1.1, b) == pytest.approx(0.01)
    pred = torch.zeros(2, 3)
    y = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    assert torch.allclose(normalized_errors(pred, y, d=2), torch.tensor([2.5, 1.0, 0.0]))


def test_sensitivity_cosine_of_linear_predictors():
    from ptmlib.icl.compare import sensitivity_cosine

    u, v = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    xq = torch.randn(5, 2)
    assert sensitivity_cosine(lambda q: q @ u, lambda q: 3 * q @ u, xq) == pytest.approx(1.0)
    assert sensitivity_cosine(lambda q: q @ u, lambda q: q @ v, xq) == pytest.approx(2**-0.5)
    assert sensitivity_cosine(lambda q: q @ u, lambda q: -(q @ u), xq) == pytest.approx(-1.0)


def test_regression_loss_is_the_mean_squared_error_over_all_positions():
    from ptmlib.icl.transformer import regression_loss

    torch.manual_seed(0)
    model = RegressionGPT(d=2, n_points=4, n_embd=8, n_layer=1, n_head=2)
    x, y, _ = prompts(b=3, n=4, d=2)
    with torch.no_grad():
        expected = torch.stack([(model(x, y)[b] - y[b]).pow(2) for b in range(3)]).mean()
        assert torch.allclose(regression_loss(model, (x, y)), expected)
