"""Naive Bayes, logistic regression, latent factors + PCA, probes, and the counting task."""
import math

import numpy as np
import pytest
import torch

from ptmlib.icl.procedural import count_accuracy, count_features, count_logits, counting_batch
from ptmlib.metrics import linear_probe
from ptmlib.icl.theory import (GaussianNaiveBayes, latent_factor_data, logistic_classifier, logistic_loss, logistic_predict,
                           logistic_regression, pca, redundant_feature_classes, samples_to_reach)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_naive_bayes_fit_and_rule_match_a_direct_computation():
    x, y = redundant_feature_classes(300, gen(0), copies=2, independent=3)
    nb = GaussianNaiveBayes.fit(x, y)
    X, Y = x.double().numpy(), y.numpy()
    mu = np.stack([X[Y == c].mean(0) for c in (0, 1)])
    var = ((X - mu[Y]) ** 2).mean(0)
    np.testing.assert_allclose(nb.means.numpy(), mu, rtol=1e-5)
    np.testing.assert_allclose(nb.var.numpy(), var, rtol=1e-4)
    prior = np.log([(np.sum(Y == c) + 1) / (len(Y) + 2) for c in (0, 1)])
    logp = np.stack([-0.5 * np.sum((X - mu[c]) ** 2 / var + np.log(2 * np.pi * var), 1) + prior[c] for c in (0, 1)], 1)
    assert np.array_equal(nb.predict(x).numpy(), logp.argmax(1))


def test_logistic_regression_reaches_the_regularised_optimum():
    x, y = redundant_feature_classes(200, gen(1), copies=2, independent=4)
    x = x.double()
    w = logistic_regression(x, y, l2=0.1).requires_grad_(True)
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    (grad,) = torch.autograd.grad(logistic_loss(w, xb, y, 0.1), w)
    assert grad.abs().max() < 1e-6  # stationary point of a strictly convex objective = the optimum
    # and it classifies as well as the Bayes rule would on this easy problem
    assert (logistic_predict(w.detach(), x) == y).float().mean() > 0.7
    assert torch.equal(logistic_classifier(x, y, l2=0.1)(x), logistic_predict(w.detach(), x))


def test_logistic_regression_iteration_budget():
    """max_iter=1 is one line search along the gradient at 0: the weights point along sum_i (y_i - 1/2) x_i,
    and the loss sits above the converged fit's (the chapter's cut_to_1pct control relies on both)."""
    x, y = redundant_feature_classes(400, gen(3), copies=3, independent=10)
    x = x.double()
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    w1, w100 = logistic_regression(x, y, l2=1e-4, max_iter=1), logistic_regression(x, y, l2=1e-4, max_iter=100)
    direction = xb.T @ (y.double() - 0.5)
    assert torch.nn.functional.cosine_similarity(w1, direction, dim=0) > 0.999
    assert logistic_loss(w1, xb, y, 1e-4) > logistic_loss(w100, xb, y, 1e-4) + 1e-3
    assert torch.equal(logistic_classifier(x, y, l2=1e-4, max_iter=1)(x), logistic_predict(w1, x))


def test_naive_bayes_beats_logistic_regression_early_and_loses_late():
    xt, yt = redundant_feature_classes(4000, gen(2))
    err = lambda p: (p != yt).float().mean().item()
    def mean_errors(n, reps=6):
        g = gen(3 + n)
        nb, lr = [], []
        for _ in range(reps):
            x, y = redundant_feature_classes(n, g)
            nb.append(err(GaussianNaiveBayes.fit(x, y).predict(xt)))
            lr.append(err(logistic_predict(logistic_regression(x, y, l2=1e-4), xt)))
        return np.mean(nb), np.mean(lr)
    nb_small, lr_small = mean_errors(32)
    nb_large, lr_large = mean_errors(4096, reps=2)
    assert nb_small < lr_small and lr_large < nb_large


def test_pca_recovers_the_factor_subspace():
    g = gen(4)
    A, beta = torch.randn(30, 2, generator=g), torch.randn(2, generator=g)
    x, y = latent_factor_data(20000, A, beta, g, noise=0.5)
    basis, _ = torch.linalg.qr(A)
    cosines = torch.linalg.svdvals(basis.T @ pca(x, 2))
    assert cosines.min() > 0.999
    assert y.float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_linear_probe_reads_linear_information_and_not_noise():
    g = gen(5)
    feats = torch.randn(2000, 5, generator=g)
    labels = (feats @ torch.randn(5, 3, generator=g)).argmax(-1)  # 3 linearly separable classes
    acc = linear_probe(feats[:1000], labels[:1000], feats[1000:], labels[1000:], 3)
    assert acc > 0.95
    noise = torch.randint(3, (2000,), generator=g)
    assert linear_probe(feats[:1000], noise[:1000], feats[1000:], noise[1000:], 3) < 0.42


def test_samples_to_reach_interpolates_in_log_n():
    assert samples_to_reach([10, 100], [0.4, 0.2], 0.3) == pytest.approx(math.sqrt(1000))
    assert samples_to_reach([10, 100], [0.2, 0.1], 0.3) == 10
    assert samples_to_reach([10, 100], [0.5, 0.4], 0.3) == math.inf


class _PerfectCounter(torch.nn.Module):
    def __init__(self, token, length):
        super().__init__()
        self.token, self.length = token, length

    def forward(self, x):  # (E, B, T, V) -> (E, B, T, T + 1): every position outputs the one-hot true count
        counts = x[..., self.token].sum(-1).long()
        return torch.nn.functional.one_hot(counts, self.length + 1).float().unsqueeze(2).expand(-1, -1, x.shape[2], -1)


def test_counting_batches_and_accuracy():
    x, y = counting_batch(gen(6), 2, 50, 10, 4, [0, 3])
    assert x.shape == (2, 50, 10, 4) and torch.all(x.sum(-1) == 1)
    assert torch.equal(y[0], x[0, ..., 0].sum(-1).long()) and torch.equal(y[1], x[1, ..., 3].sum(-1).long())
    x, y = counting_batch(gen(7), 1, 200, 10, 4, 2)
    assert count_accuracy(_PerfectCounter(2, 10), x, y).item() == 1.0
    assert count_accuracy(_PerfectCounter(1, 10), x, y).item() < 0.5
    assert count_logits(_PerfectCounter(2, 10), x).shape == (1, 200, 11)


def test_count_features_average_the_last_hidden_state_over_positions():
    from ptmlib.ensemble import EnsembleTransformer

    torch.manual_seed(0)
    model = EnsembleTransformer(2, 4, 11, 8, n_layer=2, n_head=2, max_len=10)
    x, _ = counting_batch(gen(8), 2, 5, 10, 4, 0)
    feats = count_features(model, x)
    assert feats.shape == (2, 5, 8)
    assert torch.allclose(feats, model.hidden(x)[-1].mean(2))


def test_learning_curves_share_training_sets_and_average_errors():
    from ptmlib.icl.theory import learning_curves

    x_test = torch.arange(10.0).unsqueeze(1)
    y_test = (x_test[:, 0] >= 5).long()
    seen = []

    def sample(n):
        seen.append(n)
        return torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)

    learners = {"right": lambda x, y: (lambda q: (q[:, 0] >= 5).long()),
                "always 0": lambda x, y: (lambda q: torch.zeros(len(q), dtype=torch.long)),
                "size-aware": lambda x, y: (lambda q: (q[:, 0] >= len(x)).long())}
    curves = learning_curves(sample, learners, [3, 5], 2, x_test, y_test)
    assert seen == [3, 3, 5, 5]  # one draw per repeat, shared by the learners
    assert curves == {"right": [0.0, 0.0], "always 0": [0.5, 0.5], "size-aware": [pytest.approx(0.2), 0.0]}


def test_fit_softmax_probe_returns_probabilities_that_separate_separable_classes():
    from ptmlib.metrics import fit_softmax_probe

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, 3, generator=g) + 4 * torch.eye(3)[c] for c in range(3)])
    y = torch.arange(3).repeat_interleave(30)
    proba = fit_softmax_probe(x, y, 3, l2=1e-3)(x)
    assert torch.allclose(proba.sum(-1), torch.ones(90), atol=1e-5)
    assert float((proba.argmax(-1) == y).float().mean()) > 0.95
