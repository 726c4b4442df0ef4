"""Scaling-law fits, Markov LM training, and schedule races on the Markov source."""

import numpy as np
import pytest
import torch

import ptmlib as ptm
from ptmlib.objectives import scaling as S
from ptmlib.markov import MarkovSource

N = np.repeat([3e3, 7e3, 1.2e4, 2.8e4], 4)
D = np.tile([2e4, 4e4, 8e4, 1.6e5], 4)
L = 1.5 + 40 / N ** 0.5 + 300 / D ** 0.45


def test_fit_recovers_a_known_law():
    fit = S.fit_scaling_law(N, D, L)
    assert fit.E == pytest.approx(1.5, abs=1e-4) and fit.alpha == pytest.approx(0.5, abs=1e-3)
    assert fit.beta == pytest.approx(0.45, abs=1e-3) and fit.A == pytest.approx(40, rel=1e-2)
    assert np.allclose(fit.predict(N, D), L, atol=1e-6)


def test_fit_with_a_fixed_floor_keeps_it_and_fits_the_rest():
    fit = S.fit_scaling_law(N, D, L, fix_E=1.5)
    assert fit.E == 1.5 and fit.B == pytest.approx(300, rel=1e-2)
    wrong = S.fit_scaling_law(N, D, L, fix_E=1.3)
    assert wrong.E == 1.3 and wrong.objective > fit.objective


def test_schedule_race_twins_agree_and_a_frozen_member_stays_untrained():
    P = ptm.setup("smoke", seed=0)
    src = MarkovSource(16, 3, seed=1)
    pool = src.sample(512, 24, torch.Generator().manual_seed(0))
    x = src.sample(64, 24, torch.Generator().manual_seed(1))
    curves = S.schedule_race(src, pool, x, {"a": lambda s: 1e-2, "twin": lambda s: 1e-2, "frozen": lambda s: 0.0},
                             steps=60, P=P, width=16, batch=8, eval_every=30)
    assert [s for s, _ in curves["a"]] == [0, 30, 60]  # the start, every eval_every steps
    assert curves["a"] == curves["twin"]  # same init, same data, same schedule: the same run
    assert curves["frozen"][0][1] == curves["frozen"][-1][1]
    assert curves["a"][-1][1] < curves["frozen"][-1][1] - 0.3
    assert all(v > src.entropy_rate for _, v in curves["a"])  # H + KL, and KL > 0


def test_train_markov_lm_learns_towards_the_entropy_rate():
    P = ptm.setup("smoke", seed=0)
    src = MarkovSource(16, 3, seed=1)
    pool = src.sample(1024, 24, torch.Generator().manual_seed(0))
    x = src.sample(64, 24, torch.Generator().manual_seed(1))
    short, n = S.train_markov_lm(src, pool, x, width=16, steps=10, P=P, batch=8)
    long, _ = S.train_markov_lm(src, pool, x, width=16, steps=150, P=P, batch=8)
    assert src.entropy_rate < long < short and n == 12 * 16 * 16 + 13 * 16  # one block: 12 C^2 + 13 C
