"""The pseudo-spectral solver against exact solutions, conservation laws and its order of accuracy."""
import math

import pytest
import torch

from ptmlib.science import pde


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_advection_is_an_exact_shift():
    u0 = pde.random_field(3, 64, g(), modes=5)
    coef = torch.tensor([0.5, 0.25, -0.5])
    out = pde.solve("advection", u0, coef, [0.0, 0.25], dt=0.05)
    assert torch.allclose(out[:, 0], u0, atol=1e-6)
    for i, shift in enumerate((8, 4, -8)):  # c t n grid points: u(x, t) = u0(x - c t)
        assert torch.allclose(out[i, 1], torch.roll(u0[i], shift), atol=1e-5)
    assert torch.allclose((out[:, 1] ** 2).sum(-1), (u0 ** 2).sum(-1), rtol=1e-5)  # L2 norm conserved


def test_heat_decays_each_fourier_mode_exactly():
    n, nu, t = 64, 0.01, 0.3
    x = torch.arange(n, dtype=torch.float64) / n
    u0 = (torch.sin(2 * math.pi * x) + 0.5 * torch.cos(2 * math.pi * 3 * x)).float()[None]
    out = pde.solve("heat", u0, torch.tensor([nu]), [t], dt=0.1)[0, 0]
    expect = math.exp(-nu * (2 * math.pi) ** 2 * t) * torch.sin(2 * math.pi * x) \
        + 0.5 * math.exp(-nu * (6 * math.pi) ** 2 * t) * torch.cos(2 * math.pi * 3 * x)
    assert torch.allclose(out.double(), expect, atol=1e-6)


def test_allen_cahn_constant_state_follows_the_logistic_ode():
    # u independent of x: u' = u - u^3, solved by u(t) = a e^t / sqrt(1 - a^2 + a^2 e^{2t})
    a = torch.tensor([0.1, -0.5, 0.9])
    u0 = a[:, None].expand(3, 32).clone()
    out = pde.solve("allen_cahn", u0, torch.full((3,), 1e-3), [1.0], dt=0.05)[:, 0, 0].double()
    t = 1.0
    exact = a.double() * math.exp(t) / torch.sqrt(1 - a.double() ** 2 + a.double() ** 2 * math.exp(2 * t))
    assert torch.allclose(out, exact, atol=1e-6)


def _burgers(dt):
    u0 = torch.sin(2 * math.pi * torch.arange(128, dtype=torch.float64) / 128).float()[None]
    return pde.solve("burgers", u0, torch.tensor([0.02]), [0.2], dt=dt)[0, 0].double()


def test_burgers_is_fourth_order_and_conserves_the_mean():
    ref = _burgers(0.2 / 160)
    e1 = (_burgers(0.2 / 10) - ref).abs().max()
    e2 = (_burgers(0.2 / 20) - ref).abs().max()
    assert 10 < float(e1 / e2) < 24  # 2^4 = 16 for a fourth-order method
    u0 = pde.random_field(4, 128, g(1), modes=3)
    out = pde.solve("burgers", u0, torch.full((4,), 0.01), [0.1, 0.2, 0.3], dt=0.01)
    assert torch.allclose(out.mean(-1), u0.mean(-1, keepdim=True).expand(4, 3), atol=1e-6)
    energy = (out ** 2).sum(-1)
    assert bool((energy[:, 1:] < energy[:, :-1]).all())  # viscosity dissipates energy


def test_ks_stays_bounded_and_keeps_its_mean():
    u0 = 0.1 * pde.random_field(2, 64, g(2), modes=4, length=32 * math.pi)
    out = pde.solve("ks", u0, torch.zeros(2), [10.0, 20.0], dt=0.1, length=32 * math.pi)
    assert bool(torch.isfinite(out).all()) and float(out.abs().max()) < 5
    assert torch.allclose(out.mean(-1), u0.mean(-1, keepdim=True).expand(2, 2), atol=1e-5)


def test_bad_arguments_are_rejected():
    u0 = torch.zeros(2, 16)
    with pytest.raises(ValueError, match="unknown equation"):
        pde.solve("wave", u0, torch.ones(2), [0.1], dt=0.1)
    with pytest.raises(ValueError, match="multiples of dt"):
        pde.solve("heat", u0, torch.ones(2), [0.15], dt=0.1)
    with pytest.raises(ValueError, match="one coefficient per trajectory"):
        pde.solve("heat", u0, torch.ones(3), [0.1], dt=0.1)


def test_random_fields_and_bumps_have_their_shapes():
    u = pde.random_field(5, 64, g(3), modes=4)
    assert torch.allclose(u.abs().amax(-1), torch.ones(5)) and torch.allclose(u.mean(-1), torch.zeros(5), atol=1e-6)
    spectrum = torch.fft.rfft(u.double()).abs()
    assert float(spectrum[:, 5:].max()) < 1e-4  # band-limited to 4 modes
    b = pde.bumps(5, 64, g(4), count=2, width=0.05)
    assert float(b.min()) >= 0 and float(b.max()) >= 0.99
    assert torch.equal(pde.bumps(5, 64, g(4)), b)  # seeded


def test_2d_advection_shifts_along_the_diagonal_and_heat_decays_each_mode():
    n = 32
    u0 = torch.randn(2, n, n, generator=g(5), dtype=torch.float64)
    u0 = torch.fft.ifftn(torch.fft.fftn(u0, dim=(-2, -1)) * (torch.fft.fftfreq(n).abs() < 0.2)[:, None]
                         * (torch.fft.fftfreq(n).abs() < 0.2)[None], dim=(-2, -1)).real.float()  # band-limited
    out = pde.solve("advection", u0, torch.tensor([0.5, -0.25]), [0.25], dt=0.05)[:, 0]
    assert torch.allclose(out[0], torch.roll(u0[0], (4, 4), (0, 1)), atol=1e-5)  # c t n = 4 cells in x and y
    assert torch.allclose(out[1], torch.roll(u0[1], (-2, -2), (0, 1)), atol=1e-5)
    x = torch.arange(n, dtype=torch.float64) / n
    mode = (torch.sin(2 * math.pi * x)[:, None] * torch.cos(2 * math.pi * 2 * x)[None]).float()[None]
    heat = pde.solve("heat", mode, torch.tensor([0.01]), [0.4], dt=0.1)[0, 0]
    decay = math.exp(-0.01 * (2 * math.pi) ** 2 * (1 + 4) * 0.4)  # |k|^2 = (2 pi)^2 (1^2 + 2^2)
    assert torch.allclose(heat.double(), decay * mode[0].double(), atol=1e-6)


def test_2d_nonlinear_equations_keep_their_invariants():
    a = torch.tensor([0.3, -0.6])
    flat = a[:, None, None].expand(2, 16, 16).clone()
    out = pde.solve("allen_cahn", flat, torch.full((2,), 1e-3), [1.0], dt=0.05)[:, 0, 0, 0].double()
    exact = a.double() * math.exp(1) / torch.sqrt(1 - a.double() ** 2 + a.double() ** 2 * math.exp(2))
    assert torch.allclose(out, exact, atol=1e-6)
    u0 = torch.randn(2, 32, 32, generator=g(6))
    burgers = pde.solve("burgers", 0.3 * u0, torch.full((2,), 0.02), [0.1, 0.2], dt=0.01)
    assert torch.allclose(burgers.mean((-2, -1)), (0.3 * u0).mean((-2, -1))[:, None].expand(2, 2), atol=1e-6)
    energy = (burgers ** 2).sum((-2, -1))
    assert bool((energy[:, 1] < energy[:, 0]).all())
    with pytest.raises(ValueError, match="1D only"):
        pde.solve("ks", u0, torch.zeros(2), [0.1], dt=0.1)
