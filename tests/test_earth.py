import math

import pytest
import torch
import torch.nn.functional as F

from ptmlib.science import earth


def _grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, dtype=torch.float64) * earth.LENGTH / n
    return x[None, :].expand(n, n), x[:, None].expand(n, n)  # (x, y) with x along the last axis


def test_spectral_symbols_are_the_wavenumbers_of_the_square():
    kx, ky, k2, dealias = earth.spectral_symbols(8)
    assert kx.shape == ky.shape == k2.shape == dealias.shape == (8, 8)
    assert kx[0, 1] == 1 and ky[1, 0] == 1 and kx[1, 0] == 0  # 2 pi-periodic: integer wavenumbers
    assert torch.allclose(k2, kx ** 2 + ky ** 2)
    assert dealias[0, 0] == 1 and dealias[0, 4] == 0  # the Nyquist mode is removed


def test_velocity_is_divergence_free_and_its_curl_is_the_vorticity():
    zeta = earth.random_vorticity(2, 16, torch.Generator().manual_seed(0))
    kx, ky, k2, _ = earth.spectral_symbols(16)
    z_hat = torch.fft.fft2(zeta)
    u_hat, v_hat = earth.velocity(z_hat, kx, ky, k2)
    assert torch.allclose(1j * kx * u_hat + 1j * ky * v_hat, torch.zeros_like(u_hat), atol=1e-9)
    assert torch.allclose(1j * kx * v_hat - 1j * ky * u_hat, z_hat, atol=1e-9)


def test_a_single_mode_is_an_exact_rossby_wave():
    """A plane wave does not advect itself (u . grad zeta = 0), so it travels with omega = -beta k_x / |k|^2."""
    x, y = _grid(16)
    zeta0 = torch.cos(2 * x + y)[None]
    beta, t = 3.0, 1.0
    out = earth.simulate(zeta0, torch.zeros_like(zeta0), [t], dt=0.05, beta=beta)[0, 0, 0]
    omega = -beta * 2 / 5
    assert torch.allclose(out, torch.cos(2 * x + y - omega * t), atol=1e-9)


def test_viscosity_and_diffusion_damp_each_mode_exactly():
    x, y = _grid(16)
    field = torch.sin(3 * y)[None]
    out = earth.simulate(field, field, [0.5], dt=0.1, beta=0.0, nu=0.01, kappa=0.02)[0, 0]
    assert torch.allclose(out[0], field[0] * math.exp(-0.01 * 9 * 0.5), atol=1e-9)
    assert torch.allclose(out[1], field[0] * math.exp(-0.02 * 9 * 0.5), atol=1e-9)


def test_inviscid_flow_conserves_energy_enstrophy_and_tracer_and_converges_at_fourth_order():
    zeta0 = earth.random_vorticity(3, 32, torch.Generator().manual_seed(1), rms=2.0)
    c0 = earth.band(32).expand(3, -1, -1)
    drift = {}
    for dt in (0.1, 0.05):
        out = earth.simulate(zeta0, c0, [0.0, 1.0], dt=dt, beta=5.0)
        inv = earth.invariants(out[:, :, 0], out[:, :, 1])
        drift[dt] = max(float(((v[:, 1] - v[:, 0]) / v[:, 0]).abs().max()) for v in inv.values())
        assert float((inv["tracer_mass"][:, 1] - inv["tracer_mass"][:, 0]).abs().max()) < 1e-12
    assert drift[0.05] < 1e-4
    assert drift[0.1] / drift[0.05] > 8  # fourth order would give 16
    moved = earth.simulate(zeta0, c0, [1.0], dt=0.05, beta=5.0)[:, 0, 0]
    assert (moved - zeta0).abs().max() > 0.1  # and the flow did evolve


def test_simulate_rejects_times_off_the_step():
    z = torch.zeros(1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError):
        earth.simulate(z, z, [0.13], dt=0.05)


def test_random_vorticity_has_zero_mean_the_requested_rms_and_no_aliased_modes():
    z = earth.random_vorticity(4, 32, torch.Generator().manual_seed(2), rms=1.5)
    assert z.shape == (4, 32, 32)
    assert z.mean((-2, -1)).abs().max() < 1e-10
    assert torch.allclose(z.pow(2).mean((-2, -1)).sqrt(), torch.full((4,), 1.5, dtype=torch.float64))
    _, _, _, dealias = earth.spectral_symbols(32)
    assert torch.fft.fft2(z)[:, dealias == 0].abs().max() < 1e-9


def test_band_and_rain():
    c = earth.band(8)
    assert c.shape == (8, 8) and c[0, 3] == 1.0 and c[4, 0].abs() < 1e-12  # max at y = 0, zero at y = pi
    zeta = torch.tensor([[-2.0, 0.5, 1.0, 3.0]])
    assert torch.equal(earth.rain(zeta, scale=1.0), torch.tensor([[0.0, 0.0, 0.0, 2.0]]))
    assert torch.equal(earth.rain(zeta, scale=2.0, threshold=0.0), torch.tensor([[0.0, 0.25, 0.5, 1.5]]))


def test_variables_stack_velocity_and_vorticity():
    zeta = earth.random_vorticity(5, 16, torch.Generator().manual_seed(3)).reshape(5, 1, 16, 16)
    v = earth.variables(zeta)
    assert v.shape == (5, 1, 3, 16, 16) and v.dtype == torch.float32
    assert torch.allclose(v[:, :, 2], zeta.float())
    assert v[:, :, 0].mean().abs() < 1e-5  # a velocity from a streamfunction has zero mean


def test_invariants_of_a_known_field():
    x, y = _grid(16)
    zeta = torch.cos(x)[None]  # psi = -cos x, v = sin x, u = 0: energy <sin^2>/2 = 1/4, enstrophy 1/4
    inv = earth.invariants(zeta, torch.ones_like(zeta))
    assert torch.allclose(inv["energy"], torch.tensor([0.25], dtype=torch.float64))
    assert torch.allclose(inv["enstrophy"], torch.tensor([0.25], dtype=torch.float64))
    assert inv["tracer_mass"].item() == 1.0 and abs(inv["tracer_variance"].item()) < 1e-12


def test_tokens_round_trip_and_patches_are_contiguous():
    x = torch.randn(2, 3, 8, 8)
    t = earth.to_tokens(x, 4)
    assert t.shape == (2, 4, 48)
    assert torch.equal(t[0, 1].reshape(3, 4, 4), x[0, :, :4, 4:])  # token 1 is the top-right patch
    assert torch.equal(earth.from_tokens(t, 3, 4), x)
    with pytest.raises(ValueError):
        earth.to_tokens(x, 3)


def test_token_mask_hides_the_requested_number():
    m = earth.token_mask(6, 16, 0.25, torch.Generator().manual_seed(0))
    assert m.dtype == torch.bool and m.sum(1).tolist() == [4] * 6
    assert not torch.equal(m[0], m[1])


def test_masked_tokens_do_not_reach_the_model():
    torch.manual_seed(0)
    model = earth.TinyPrithvi(8, channels=3, patch=4, dim=16, depth=1, heads=2, leads=2).eval()
    x = torch.randn(1, 3, 8, 8)
    mask = torch.tensor([[True, False, False, False]])  # hide the top-left patch
    changed = x.clone()
    changed[:, :, :4, :4] += 5.0
    lead = torch.tensor([1])
    with torch.no_grad():
        assert model(x, lead).shape == (1, 3, 8, 8)
        assert torch.allclose(model(x, lead, mask), model(changed, lead, mask), atol=1e-6)
        assert not torch.allclose(model(x, lead), model(changed, lead), atol=1e-3)
        assert not torch.allclose(model(x, lead), model(x, torch.tensor([0])), atol=1e-4)  # the lead matters


def test_light_decoder_trains_only_itself_when_frozen():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.randn(4, 8, 8)
    for frozen in (True, False):
        enc = earth.TinyPrithvi(8, dim=16, depth=1, heads=2)
        dec = earth.LightDecoder(enc, hidden=8, frozen=frozen, lead=1)
        out = dec(x)
        assert out.shape == (4, 8, 8)
        F.mse_loss(out, y).backward()
        assert all(p.grad is not None for p in dec.mlp.parameters())
        used = [p for name, p in enc.named_parameters() if name.split(".")[0] not in ("head", "mask_token")]  # unused without a mask
        assert all((p.grad is None) == frozen for p in used)
    trainable = sum(p.numel() for p in dec.mlp.parameters())
    assert trainable == 16 * 8 + 8 + 8 * 16 + 16


def test_pretraining_batches_pair_each_state_with_its_future():
    fields = torch.arange(5 * 4, dtype=torch.float32).reshape(5, 4, 1, 1, 1).expand(5, 4, 3, 8, 8).contiguous()
    draw = earth.pretraining_batches(fields, 64, 2, 0.5, 4)
    x, lead, mask, target = draw(torch.Generator().manual_seed(0))
    assert x.shape == target.shape == (64, 3, 8, 8) and mask.shape == (64, 4) and mask.sum(1).eq(2).all()
    assert torch.equal(target[:, 0, 0, 0] - x[:, 0, 0, 0], lead.float())  # the value encodes the snapshot index
    assert set(lead.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError):
        earth.pretraining_batches(fields, 8, 4, 0.5, 4)


def test_masked_forecast_loss_decreases_with_training():
    torch.manual_seed(0)
    fields = torch.randn(4, 3, 3, 8, 8)
    model = earth.TinyPrithvi(8, dim=16, depth=1, heads=2)
    batch = earth.pretraining_batches(fields, 16, 1, 0.25, 4)(torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = earth.masked_forecast_loss(model, batch).item()
    for _ in range(30):
        opt.zero_grad()
        earth.masked_forecast_loss(model, batch).backward()
        opt.step()
    assert earth.masked_forecast_loss(model, batch).item() < 0.7 * first


def test_relative_mse_is_zero_when_perfect_and_one_for_the_mean():
    y = torch.randn(100)
    assert earth.relative_mse(y, y) == 0.0
    assert abs(earth.relative_mse(torch.full_like(y, float(y.mean())), y) - 0.99) < 1e-4  # (n-1)/n


def test_band_trajectories_start_from_the_random_field_and_the_band():
    times = [0.0, 0.25, 0.5]
    traj = earth.band_trajectories(3, 16, torch.Generator().manual_seed(4), times, 0.0625, beta=10.0)
    assert traj.shape == (3, 3, 2, 16, 16) and traj.dtype == torch.float64
    zeta0 = earth.random_vorticity(3, 16, torch.Generator().manual_seed(4), peak=4.0, rms=1.5)
    assert torch.allclose(traj[:, 0, 0], zeta0, atol=1e-12)  # the field is within the 2/3 mask already
    assert torch.allclose(traj[:, 0, 1], earth.band(16).expand(3, -1, -1), atol=1e-12)
    assert (traj[:, 2, 0] - traj[:, 0, 0]).abs().max() > 0.01  # the flow evolves


def test_forecast_pairs_offset_states_by_the_lead_on_the_coarse_grid():
    traj = earth.band_trajectories(2, 16, torch.Generator().manual_seed(5), [0.25 * i for i in range(5)], 0.0625, 5.0)
    scale = torch.tensor([1.0, 2.0, 4.0]).reshape(1, 3, 1, 1)
    x, y = earth.forecast_pairs(traj, 2, 2, scale)
    assert x.shape == y.shape == (2 * 3, 3, 8, 8)
    assert torch.allclose(x[1, 2], traj[0, 1, 0, ::2, ::2].float() / 4)  # trajectory 0, snapshot 1 ...
    assert torch.allclose(y[1, 2], traj[0, 3, 0, ::2, ::2].float() / 4)  # ... and snapshot 1 + 2
    assert torch.equal(earth.forecast_pairs(traj, 0, 2, scale)[0], earth.forecast_pairs(traj, 0, 2, scale)[1])


def test_rain_pairs_pair_snapshots_two_to_five_with_the_next_rain():
    traj = earth.band_trajectories(2, 16, torch.Generator().manual_seed(6), [0.25 * i for i in range(8)], 0.0625, 5.0)
    x, r = earth.rain_pairs(traj, 2, torch.ones(1, 3, 1, 1), zeta_scale=0.5)
    assert x.shape == (8, 3, 8, 8) and r.shape == (8, 8, 8) and r.min() >= 0 and r.max() > 0
    assert torch.allclose(x[0, 2], traj[0, 2, 0, ::2, ::2].float())
    assert torch.equal(r[5], earth.rain(traj[1, 4, 0, ::2, ::2], 0.5))  # trajectory 1, snapshot 3 + 1 + 1


def test_forecast_error_and_forecaster_use_the_loaded_weights_and_lead():
    torch.manual_seed(0)
    state = earth.TinyPrithvi(8, dim=16, depth=1, heads=2).state_dict()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        f = earth.Forecaster(earth.TinyPrithvi(8, dim=16, depth=1, heads=2), state, lead=1)
        ref = earth.TinyPrithvi(8, dim=16, depth=1, heads=2)
        ref.load_state_dict(state)
        assert torch.equal(f(x), ref(x, torch.ones(5, dtype=torch.long)))
        err = earth.forecast_error(earth.TinyPrithvi(8, dim=16, depth=1, heads=2), state, x, f(x), lead=1)
    assert err == 0.0
    y = torch.randn(5, 3, 8, 8)
    assert earth.forecast_error(ref, state, x, y, 2) == earth.relative_mse(ref(x, torch.full((5,), 2)).detach(), y)
