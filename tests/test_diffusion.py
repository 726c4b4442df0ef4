"""Unit tests of ptmlib.objectives.diffusion: every sampler and metric against a closed form."""
import math

import torch
from torch import nn

from ptmlib.objectives import diffusion
from ptmlib.peft import spectral

RING = diffusion.Mixture.ring(8, radius=2.0, std=0.45, n_classes=2)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_schedule_preserves_variance_and_starts_clean():
    t = torch.linspace(0, 1, 11)
    a, s = diffusion.alpha_sigma(t)
    assert torch.allclose(a**2 + s**2, torch.ones(11), atol=1e-6)
    assert a[0] == 1 and s[0] == 0
    assert a[-1] < 0.01  # the prior at t = 1 is N(0, I) to within 1%


def test_exact_score_is_the_gradient_of_the_noised_log_density():
    x = torch.randn(64, 2, generator=gen()) * 2
    t = torch.rand(64, generator=gen(1))
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(RING.log_prob(xr, t).sum(), xr)
    assert torch.allclose(RING.score(x, t), g, atol=1e-4)


def test_log_prob_integrates_to_one():
    grid = torch.linspace(-5, 5, 301)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    mass = RING.log_prob(pts).exp().sum() * (grid[1] - grid[0]) ** 2
    assert abs(float(mass) - 1) < 1e-3


def test_class_posterior_is_normalised_and_sharp_at_the_modes():
    t = torch.zeros(8)
    logp = RING.class_log_posterior(RING.means, t)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(8), atol=1e-5)
    assert (logp.argmax(-1) == RING.labels).all()
    # at t = 1 the noised mixture is ~N(0, I) whatever the class: the posterior is the prior
    flat = RING.class_log_posterior(torch.randn(16, 2, generator=gen()), torch.ones(16)).exp()
    assert torch.allclose(flat, torch.full_like(flat, 0.5), atol=0.01)


def test_product_matches_the_pointwise_product_of_densities():
    a = diffusion.Mixture.ring(6, 2.0, 0.5)
    b = diffusion.Mixture(torch.tensor([[1.8, 0.9], [-1.2, -1.6]]), 0.5, torch.tensor([0.3, 0.7]), torch.arange(2))
    p = diffusion.product(a, b)
    x = torch.randn(100, 2, generator=gen()) * 2
    diff = a.log_prob(x) + b.log_prob(x) - p.log_prob(x)  # = log of the normalising constant: the same everywhere
    assert float(diff.std()) < 1e-4
    assert abs(float(p.weights.sum()) - 1) < 1e-6


def test_exact_guidance_at_scale_one_is_the_conditional_score():
    # Bayes: grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x)
    x = torch.randn(32, 2, generator=gen()) * 2
    t = torch.rand(32, generator=gen(2)) * 0.9 + 0.05
    guided = diffusion.guided_score(RING.score, diffusion.exact_class_grad(RING, 0), 1.0)(x, t)
    assert torch.allclose(guided, RING.conditional(0).score(x, t), atol=1e-4)
    assert torch.allclose(diffusion.guided_score(RING.score, diffusion.exact_class_grad(RING, 0), 0.0)(x, t), RING.score(x, t))


def test_sampler_with_exact_score_reproduces_the_mixture_and_a_wrong_score_does_not():
    truth = RING.sample(1500, gen(1))[0]
    good = diffusion.sample(RING.score, 1500, 100, gen(2))
    wrong = diffusion.sample(lambda x, t: -x, 1500, 100, gen(2))  # the score of N(0, I): no modes at all
    assert abs(diffusion.mmd2(good, truth)) < 0.003
    assert diffusion.mmd2(wrong, truth) > 0.05
    assert abs(diffusion.spread(good, RING) - RING.std) < 0.05


def test_model_score_and_denoised_of_the_bayes_optimal_eps():
    x0, _ = RING.sample(256, gen())
    t = torch.rand(256, generator=gen(1)) * 0.9 + 0.05
    eps = torch.randn(256, 2, generator=gen(2))
    a, s = diffusion.alpha_sigma(t)
    oracle = lambda x, tt: -diffusion.alpha_sigma(tt)[1][:, None] * RING.score(x, tt)
    xt = a[:, None] * x0 + s[:, None] * eps
    assert torch.allclose(diffusion.model_score(oracle)(xt, t), RING.score(xt, t), atol=1e-5)
    floor = diffusion.exact_denoising_loss(RING, x0, t, eps)
    assert abs(float(diffusion.denoising_loss(oracle, x0, t, eps)) - floor) < 1e-5
    assert float(diffusion.denoising_loss(lambda x, tt: torch.zeros_like(x), x0, t, eps)) > floor + 0.5
    # Tweedie at small noise returns (nearly) the clean point
    t0 = torch.full((256,), 1e-3)
    a0, s0 = diffusion.alpha_sigma(t0)
    assert (diffusion.denoised(oracle, a0[:, None] * x0 + s0[:, None] * eps, t0) - x0).abs().max() < 0.05


def test_fkc_corrects_naive_score_addition_for_a_product():
    a = diffusion.Mixture.ring(6, 2.0, 0.5)
    b = diffusion.Mixture(torch.tensor([[1.8, 0.9], [-1.2, -1.6], [0.0, 2.2]]), 0.5, torch.tensor([0.2, 0.4, 0.4]), torch.arange(3))
    target = diffusion.product(a, b).sample(3000, gen(9))[0]
    naive, none = diffusion.fkc_product_sample(a.score, b.score, 3000, 150, gen(1), resample=False)
    fkc, times = diffusion.fkc_product_sample(a.score, b.score, 3000, 150, gen(1), noise=2.0)
    assert none == [] and len(times) > 2 and 0.04 < min(times) <= 0.05
    assert diffusion.mmd2(naive, target) > 0.01
    assert diffusion.mmd2(fkc, target) < 0.3 * diffusion.mmd2(naive, target)


def test_fkc_weights_vanish_for_independent_directions():
    # s_a . s_b = 0 everywhere (two 1-D experts on orthogonal axes with zero-mean scores): no resampling needed
    sa = lambda x, t: torch.stack([-x[:, 0], torch.zeros(len(x))], 1)
    sb = lambda x, t: torch.stack([torch.zeros(len(x)), -x[:, 1]], 1)
    _, times = diffusion.fkc_product_sample(sa, sb, 500, 50, gen(), t_stop=0.5)
    assert len(times) == 1 and abs(times[0] - 0.5) < 0.03  # only the forced resampling at t_stop


def test_systematic_resampling_gives_floor_or_ceil_copies():
    w = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0])
    idx = diffusion.systematic_resample(w.clamp_min(1e-30).log(), gen(3))
    counts = torch.bincount(idx, minlength=5).float()
    expected = 5 * w
    assert ((counts - expected).abs() < 1).all() and counts[4] == 0 and counts.sum() == 5


def test_effective_sample_size_extremes():
    assert abs(diffusion.effective_sample_size(torch.zeros(100)) - 100) < 1e-3
    assert abs(diffusion.effective_sample_size(torch.tensor([0.0] + [-1e4] * 99)) - 1) < 1e-3


def test_mmd_is_zero_in_expectation_for_one_distribution_and_positive_for_two():
    a, b = RING.sample(2000, gen(1))[0], RING.sample(2000, gen(2))[0]
    assert abs(diffusion.mmd2(a, b)) < 0.002
    assert diffusion.mmd2(a, b + torch.tensor([0.3, 0.0])) > 0.005
    assert abs(diffusion.mmd2(a, b) - diffusion.mmd2(b, a)) < 1e-6


def test_sliced_wasserstein_of_a_shift():
    a = torch.randn(4000, 2, generator=gen())
    v = 0.5
    sw = diffusion.sliced_wasserstein(a, a + torch.tensor([v, 0.0]), gen(1), n_proj=2000)
    assert abs(sw - v / math.sqrt(2)) < 0.02  # sqrt(E cos^2) = 1 / sqrt(2)


def test_fit_temperature_recovers_a_known_temperature():
    logits = torch.randn(5000, 3, generator=gen()) * 2
    y = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen(1))[:, 0]
    assert abs(diffusion.fit_temperature(logits * 3, y) - 3) < 0.4


def test_classifier_grad_matches_finite_differences_and_chains_through_the_model():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    model = diffusion.ScoreNet(16, 2).double()
    x = torch.randn(4, 2, dtype=torch.float64, generator=gen())
    t = torch.full((4,), 0.3, dtype=torch.float64)
    for m in (None, model):
        g = diffusion.classifier_grad(clf, x, t, 1, model=m, temperature=2.0)
        f = lambda z: torch.log_softmax(diffusion.classifier_input(clf, z, t, m) / 2.0, -1)[:, 1]
        h = 1e-6
        fd = torch.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in torch.eye(2, dtype=torch.float64)], 1)
        assert torch.allclose(g, fd, atol=1e-6)
    temps = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)  # per-bin temperatures: t = 0.3 is in bin 0
    assert torch.allclose(diffusion.classifier_grad(clf, x, t, 1, temperature=temps), diffusion.classifier_grad(clf, x, t, 1))
    assert diffusion.time_bin(torch.tensor([0.0, 0.34, 0.999, 1.0]), 3).tolist() == [0, 1, 2, 2]


def test_calibrated_temperatures_grow_with_noise_for_a_clean_classifier():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
    x, comp = RING.sample(2000, gen())
    y = RING.labels[comp]
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    for _ in range(300):
        loss = nn.functional.cross_entropy(clf(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    temps = diffusion.calibrate_temperatures(clf, x, y, gen(1), n_bins=5)
    assert temps.shape == (5,)
    assert temps[0] < 3 and temps[-1] > 10 * temps[0]  # at high noise the clean classifier is overconfident


def test_graft_fits_the_operator_and_full_rank_is_nearly_exact():
    torch.manual_seed(0)
    model = diffusion.ScoreNet(32, 3)
    x = torch.randn(512, 2, generator=gen())
    t = torch.rand(512, generator=gen(1))
    # a full-rank operator from an unrelated random start: the regression alone must recover the layer
    hybrid, rel = diffusion.graft_operator(model, 1, spectral.low_rank(nn.Linear(32, 32), 32), x, t, steps=400)
    assert rel < 0.01
    assert (hybrid(x, t) - model(x, t)).abs().max() < 0.05
    assert isinstance(model.hidden[1], nn.Linear)  # the pretrained model is left alone
    # rank 2, started at the layer's Eckart-Young approximation: worse than full rank, and the regression
    # on the activations improves on the weight-space approximation it starts from
    _, rel_svd = diffusion.graft_operator(model, 1, spectral.low_rank(model.hidden[1], 2), x, t, steps=0)
    low, rel_low = diffusion.graft_operator(model, 1, spectral.low_rank(model.hidden[1], 2), x, t, steps=400)
    assert rel < rel_low < rel_svd
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(model) - count(low) == 32 * 32 + 32 - (2 * 32 + 2 * 32 + 32)


def test_replicas_run_each_member_on_its_rows_and_train_like_separate_runs():
    torch.manual_seed(0)
    reps = diffusion.Replicas([diffusion.ScoreNet(16, 2) for _ in range(3)])  # three different random inits
    branch = diffusion.Replicas([reps._base[0]] * 2)  # two copies of one network
    assert all(torch.equal(w[0], w[1]) for w in branch.weights)
    x, t = torch.randn(3 * 8, 2, generator=gen()), torch.rand(3 * 8, generator=gen(1))
    alone = [diffusion.ScoreNet(16, 2) for _ in range(3)]
    for r, m in enumerate(alone):
        m.load_state_dict(reps.member(r))
    assert torch.allclose(reps(x, t), torch.cat([m(x[8 * r:8 * r + 8], t[8 * r:8 * r + 8]) for r, m in enumerate(alone)]), atol=1e-5)
    # three Adam steps on the summed loss == three steps of each member on its own rows
    eps = torch.randn(3 * 8, 2, generator=gen(2))
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in alone]
    opt = torch.optim.Adam(reps.parameters(), lr=1e-2)
    for _ in range(3):
        loss = 3 * diffusion.denoising_loss(reps, x, t, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for r, (m, o) in enumerate(zip(alone, opts)):
            rows = slice(8 * r, 8 * r + 8)
            o.zero_grad()
            diffusion.denoising_loss(m, x[rows], t[rows], eps[rows]).backward()
            o.step()
    for r, m in enumerate(alone):
        for k, v in reps.member(r).items():
            assert torch.allclose(v, m.state_dict()[k], atol=1e-5), k
    assert not torch.allclose(reps.member(0)["out.weight"], reps.member(1)["out.weight"])


def test_class_accuracy_and_component_weights_of_exact_samples():
    x, _ = RING.conditional(1).sample(2000, gen())
    assert diffusion.class_accuracy(x, RING, 1) > 0.85
    w = diffusion.component_weights(x, RING)
    assert diffusion.total_variation(w, torch.tensor([0, 0.25] * 4)) < 0.12
