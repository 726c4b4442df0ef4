"""The Markov source: a valid chain, its exact entropy rate matches sampling, KL bookkeeping is exact."""
import math

import torch

from ptmlib.markov import MarkovSource


def test_chain_is_stochastic_sparse_and_stationary():
    m = MarkovSource(32, 5, seed=3)
    assert torch.allclose(m.P.sum(1), torch.ones(32, dtype=torch.float64))
    assert ((m.P > 0).sum(1) == 5).all()
    assert torch.allclose(m.pi @ m.P, m.pi, atol=1e-12) and (m.pi > 0).all()


def test_entropy_rate_matches_monte_carlo():
    m = MarkovSource(64, 8, alpha=0.5, seed=0)
    x = m.sample(2000, 300, torch.Generator().manual_seed(1))
    nll = -torch.log(m.P[x[:, :-1], x[:, 1:]])
    se = float(nll.std()) / math.sqrt(nll.numel() / 10)  # generous: positions are correlated
    assert abs(float(nll.mean()) - m.entropy_rate) < 4 * se
    first = torch.bincount(x[:, 0], minlength=64).double() / 2000
    assert (first - m.pi).abs().max() < 0.03  # sequences start in the stationary law


def test_excess_loss_is_zero_for_the_truth_and_closed_form_for_uniform():
    m = MarkovSource(16, 4, seed=2)
    x = m.sample(50, 40, torch.Generator().manual_seed(0))
    true_logits = torch.where(m.P > 0, m.P.log(), torch.full_like(m.P, -1e9)).float()[x]
    assert abs(float(m.excess_loss(true_logits, x))) < 1e-5
    uniform = torch.zeros(50, 40, 16)
    expected = (math.log(16) - m.row_entropy[x[:, :-1]]).mean()  # KL(P_i || uniform) = log n - H_i
    assert abs(float(m.excess_loss(uniform, x)) - float(expected)) < 1e-5


def test_same_seed_same_chain_and_samples():
    a, b = MarkovSource(seed=5), MarkovSource(seed=5)
    assert torch.equal(a.P, b.P)
    assert torch.equal(a.sample(4, 10, torch.Generator().manual_seed(0)), b.sample(4, 10, torch.Generator().manual_seed(0)))


def test_excess_eval_is_each_members_mean_kl():
    from ptmlib import lm
    from ptmlib.markov import excess_eval

    m = MarkovSource(8, 3, seed=0)
    x = m.sample(10, 6, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = lm.ensemble_lm(2, 8, 8, 1, n_head=2, max_len=6)
    kl = excess_eval(model, m, x, chunk=3)  # chunks of 3, 3, 3, 1 rows: weighted by their sizes
    with torch.no_grad():
        logits = model(x.expand(2, *x.shape), causal=True)
    assert kl.shape == (2,) and (kl > 0).all()
    assert torch.allclose(kl, torch.stack([m.excess_loss(logits[e], x) for e in range(2)]), atol=1e-6)
