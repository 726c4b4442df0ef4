"""Neural-operator pieces: all2all pairs, relative error, the spectral convolution, and that an FNO learns."""
import math

import pytest
import torch
import torch.nn.functional as F

import ptmlib as ptm
from ptmlib.science import operators
from ptmlib.train import TrainConfig

TIMES = [0.0, 0.1, 0.2, 0.3]


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_all_pairs_enumerates_every_earlier_later_pair():
    traj = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    x, y, lead = operators.all_pairs(traj, TIMES)
    assert len(x) == 2 * 6  # S (S - 1) / 2 = 6 pairs per trajectory
    assert torch.equal(x[0], traj[0, 0]) and torch.equal(y[0], traj[0, 1])
    assert torch.equal(x[6 + 5], traj[1, 2]) and torch.equal(y[6 + 5], traj[1, 3])
    assert torch.allclose(lead[:6], torch.tensor([0.1, 0.2, 0.3, 0.1, 0.2, 0.1]))
    x2, y2, lead2 = operators.all_pairs(traj, TIMES, leads=[0.2])
    assert len(x2) == 4 and torch.allclose(lead2, torch.full((4,), 0.2))


def test_relative_l1_closed_form():
    true = torch.tensor([[1.0, -2.0, 1.0]])
    assert torch.allclose(operators.relative_l1(true + torch.tensor([[0.5, 0.5, 0.0]]), true), torch.tensor([0.25]))
    assert float(operators.relative_l1(true, true)) == 0.0


def test_spectral_conv_with_identity_weights_keeps_the_low_modes_only():
    conv = operators.SpectralConv1d(width=2, modes=4)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[..., 0] = torch.eye(2)  # real identity for every kept mode
    x = torch.arange(32) * 2 * math.pi / 32
    low = torch.stack([torch.sin(x), torch.cos(3 * x)])[None]  # modes 1 and 3: kept
    high = torch.sin(9 * x).expand(1, 2, 32)  # mode 9: dropped
    assert torch.allclose(conv(low), low, atol=1e-5)
    assert torch.allclose(conv(low + high), low, atol=1e-5)


def test_trajectories_follow_their_family():
    with pytest.raises(ValueError, match="unknown family"):
        operators.trajectories("wave", 2, g(), TIMES)
    adv = operators.trajectories("advection", 3, g(1), TIMES, n=64)
    assert torch.allclose((adv ** 2).sum(-1), (adv[:, :1] ** 2).sum(-1).expand(3, 4), rtol=1e-4)  # a shift keeps the L2 norm
    heat = operators.trajectories("heat", 3, g(2), TIMES, n=64)
    energy = (heat ** 2).sum(-1)
    assert bool((energy[:, 1:] < energy[:, :-1]).all())


def test_trajectories_take_a_coefficient_range_override():
    right = operators.trajectories("advection", 2, g(4), [0.0, 0.25], n=64, coef=(1.0, 1.0))  # c = 1: shift by 16 points
    left = operators.trajectories("advection", 2, g(4), [0.0, 0.25], n=64, coef=(-1.0, -1.0))
    assert torch.equal(right[:, 0], left[:, 0])  # same initial conditions, only the speed differs
    assert torch.allclose(right[:, 1], torch.roll(right[:, 0], 16, -1), atol=1e-5)
    assert torch.allclose(left[:, 1], torch.roll(left[:, 0], -16, -1), atol=1e-5)
    with pytest.raises(ValueError, match="low <= high"):
        operators.trajectories("advection", 2, g(4), TIMES, coef=(1.2, -1.2))


def test_fno_keeps_the_state_shape_and_learns_the_heat_operator():
    torch.manual_seed(0)
    model = operators.FNO1d(width=16, modes=8, layers=2)
    u = torch.randn(4, 32)
    with torch.no_grad():
        assert model(u, torch.zeros(4)).shape == (4, 32)
    traj = operators.trajectories("heat", 32, g(3), TIMES, n=32)
    x, y, lead = operators.all_pairs(traj, TIMES)
    copy = float(operators.relative_l1(x, y).median())
    P = ptm.setup("smoke", seed=0)
    ptm.fit(model, (x, lead), y, TrainConfig(300, lr=3e-3, schedule="cosine"), P, loss=F.l1_loss)
    trained = operators.median_error(model, x, y, lead)
    assert trained < 0.5 * copy  # it learned the decay, not just the copy
    with torch.no_grad():  # and the lead time matters: asking for a longer lead changes the answer
        assert not torch.allclose(model(x[:4], torch.full((4,), 0.1)), model(x[:4], torch.full((4,), 0.3)), atol=1e-3)


def test_fno_trains_under_bf16_autocast():
    """The full profile runs under bf16 autocast; FFTs have no bf16 kernel (CPU or CUDA), so the spectral layer
    computes them in float32 (this failed on an H200 before: 'Unsupported dtype BFloat16')."""
    from ptmlib.science.operators import FNO1d

    torch.manual_seed(0)
    model = FNO1d(width=8, modes=4, layers=2)
    u = torch.randn(3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(u, torch.rand(3))
    out.float().pow(2).mean().backward()
    assert out.shape == (3, 32) and all(p.grad is not None for p in model.parameters())


def test_trajectories_take_new_initial_data_and_a_coarser_grid():
    fine = operators.trajectories("burgers", 3, g(5), TIMES, n=64, coef=(0.005, 0.01), initial="field:4")
    coarse = operators.trajectories("burgers", 3, g(5), TIMES, n=64, coef=(0.005, 0.01), initial="field:4", every=2)
    assert coarse.shape == (3, len(TIMES), 32) and torch.equal(coarse, fine[..., ::2])  # same draws, every 2nd point
    bumps = operators.trajectories("burgers", 3, g(5), TIMES, n=64, initial="bumps")
    assert bool((bumps[:, 0] > -1e-6).all()) and bool((fine[:, 0] < -0.1).any())  # bumps are >= 0, fields are not
    assert float(fine[:, 0].abs().amax(-1).min()) == pytest.approx(1.0)  # random fields scaled to max |u| = 1
    with pytest.raises(ValueError, match="unknown initial condition"):
        operators.trajectories("burgers", 2, g(5), TIMES, initial="steps")
    with pytest.raises(ValueError, match="must divide"):
        operators.trajectories("burgers", 2, g(5), TIMES, n=64, every=3)
