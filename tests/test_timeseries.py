"""Time-series toolkit: MASE and baselines on known answers, the prior's components, KernelSynth's
covariance, the real series, and the patch mixer's normalisation."""
import numpy as np
import pytest
import torch

from ptmlib.science import timeseries


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_mase_closed_form_and_naive_forecasts():
    history = np.array([1.0, 2.0, 4.0, 7.0])  # |diffs| = 1, 2, 3 -> scale 2 (season 1)
    assert timeseries.mase(np.array([8.0, 9.0]), np.array([7.0, 7.0]), history, 1) == pytest.approx((1 + 2) / 2 / 2)
    assert timeseries.last_value(history, 3, 1).tolist() == [7.0, 7.0, 7.0]
    assert timeseries.drift(history, 2, 1).tolist() == [9.0, 11.0]  # slope (7 - 1) / 3
    seasonal = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    assert timeseries.seasonal_naive(seasonal, 4, 3).tolist() == [10.0, 20.0, 30.0, 10.0]


def test_arima_and_ets_follow_a_clean_seasonal_trend():
    t = np.arange(150, dtype=float)
    y = 0.5 * t + 3 * np.sin(2 * np.pi * t / 12)
    future = 0.5 * (150 + np.arange(12)) + 3 * np.sin(2 * np.pi * (150 + np.arange(12)) / 12)
    assert np.abs(timeseries.ets(y, 12, 12) - future).max() < 0.5  # Holt-Winters recovers trend + season
    assert np.abs(timeseries.arima(0.5 * t + np.random.default_rng(0).normal(0, 0.1, 150), 12, 1) - 0.5 * (150 + np.arange(12))).max() < 1.5


def test_rolling_origins_leave_room_for_context_and_horizon():
    o = timeseries.rolling_origins(100, 64, 12, 5)
    assert o[0] >= 75 and o[-1] == 88 and len(o) == 5
    with pytest.raises(ValueError, match="too short"):
        timeseries.rolling_origins(70, 64, 12, 5)


def test_evaluate_mase_never_scores_imputed_targets():
    values = np.arange(40, dtype=float)
    imputed = np.zeros(40, dtype=bool)
    imputed[30] = True
    s = timeseries.Series("toy", values, "yearly", 1, "test", imputed)
    seen = []

    def spy(history, horizon, season):
        seen.append(len(history))
        return timeseries.drift(history, horizon, season)

    assert timeseries.evaluate_mase(spy, s, [20, 28, 33], 4) == pytest.approx(0.0, abs=1e-12)  # drift is exact on a line
    assert seen == [20, 33]  # origin 28 would score the imputed point 30


def test_series_load_offline_with_gaps_marked():
    co2 = timeseries.load_series("co2")
    assert co2.frequency == "weekly" and co2.season == 52 and len(co2.values) == 2284
    assert int(co2.imputed.sum()) == 59 and not np.isnan(co2.values).any()
    for name in timeseries.SERIES:
        s = timeseries.load_series(name)
        assert s.frequency in timeseries.FREQUENCIES and len(s.values) >= 100 and np.isfinite(s.values).all()
    with pytest.raises(ValueError, match="unknown series"):
        timeseries.load_series("goog")


def test_prior_components_switch_off():
    x, f = timeseries.prior(512, 76, g(1))
    assert x.shape == (512, 76) and set(f.tolist()) <= {0, 1, 2, 3}
    # without trends and walks the series are stationary around their level: the second half's mean
    # moves less from the first half's, relative to the scale, than with them
    def drift(batch):
        z = (batch - batch.mean(1, keepdim=True)) / batch.std(1, keepdim=True)
        return float((z[:, 38:].mean(1) - z[:, :38].mean(1)).abs().mean())
    flat, _ = timeseries.prior(512, 76, g(1), trends=False, walks=False)
    assert drift(flat) < 0.7 * drift(x)


def test_kernel_synth_covariance_matches_its_kernel():
    torch.manual_seed(0)
    t = torch.arange(24, dtype=torch.float64)
    K = timeseries.kernel_matrix("periodic", t, 12.0)
    assert torch.allclose(K[0], K[12]) and float(torch.linalg.eigvalsh(K + 1e-9 * torch.eye(24)).min()) > -1e-8
    with pytest.raises(ValueError, match="unknown kernel"):
        timeseries.kernel_matrix("matern", t, 1.0)
    x, f = timeseries.kernel_synth(64, 24, g(2))
    assert x.shape == (64, 24) and f.shape == (64,)
    # a series drawn with a periodic kernel of period 4 alone repeats every 4 steps: check via a pool
    # entry whose label is quarterly and whose autocorrelation at lag 4 is high
    xs, fs = timeseries.kernel_synth(400, 48, g(3), max_kernels=1)
    quarterly = xs[fs == 1]
    lag4 = torch.nn.functional.cosine_similarity(quarterly[:, 4:] - quarterly.mean(1, keepdim=True),
                                                 quarterly[:, :-4] - quarterly.mean(1, keepdim=True), dim=1)
    assert len(quarterly) > 20 and float(lag4.mean()) > 0.95


def test_patch_mixer_is_equivariant_to_level_and_scale():
    torch.manual_seed(0)
    model = timeseries.PatchMixer(context=16, horizon=4, patch=4, width=8, blocks=1).eval()
    x, f = torch.randn(3, 16), torch.tensor([0, 1, 2])
    with torch.no_grad():
        base = model(x, f)
        assert torch.allclose(model(5.0 + 3.0 * x, f), 5.0 + 3.0 * base, atol=1e-4)  # instance normalisation
        raw = timeseries.PatchMixer(context=16, horizon=4, patch=4, width=8, blocks=1, normalise=False).eval()
        assert not torch.allclose(raw(5.0 + 3.0 * x, f), 5.0 + 3.0 * raw(x, f), atol=1e-2)
    with pytest.raises(ValueError, match="multiple of patch"):
        timeseries.PatchMixer(context=15, patch=4)


def test_pretraining_on_the_prior_beats_the_last_value_on_a_seasonal_series():
    import ptmlib as ptm
    from ptmlib.train import TrainConfig

    P = ptm.setup("smoke", seed=0)
    model = timeseries.PatchMixer(context=32, horizon=8, patch=8, width=16, blocks=1)
    timeseries.pretrain(model, TrainConfig(150, lr=3e-3), P, pool_size=64)
    t = np.arange(200, dtype=float)
    s = timeseries.Series("sine", 10 + 0.05 * t + np.sin(2 * np.pi * t / 12), "monthly", 12, "test", np.zeros(200, dtype=bool))
    origins = timeseries.rolling_origins(200, 32, 8, 4)
    learned = timeseries.evaluate_mase(timeseries.model_forecaster(model, "monthly"), s, origins, 8)
    assert learned < 0.5 * timeseries.evaluate_mase(timeseries.last_value, s, origins, 8)
    w = timeseries.windows(s, 50, 40)
    assert w.shape == (11, 40) and torch.equal(w[3], torch.tensor(s.values[3:43], dtype=torch.float32))
    assert len(timeseries.windows(s, 30, 40)) == 0


def test_experts_route_each_token_once_and_balance_loss_is_one_when_uniform():
    torch.manual_seed(0)
    layer = timeseries.Experts(width=6, experts=3, hidden=8)
    h = torch.randn(2, 5, 6)
    out = layer(h)
    assert out.shape == h.shape and int(layer.counts.sum()) == 10
    probs = layer.router(h.reshape(-1, 6)).softmax(-1)
    choice = probs.argmax(-1)
    assert torch.equal(layer.choice, choice.view(2, 5))  # each token's expert, in the tokens' shape
    assert torch.equal(torch.bincount(layer.choice.flatten(), minlength=3), layer.counts)
    for i in range(10):  # each token: its top-1 expert's output times that expert's probability
        e = int(choice[i])
        assert torch.allclose(out.reshape(-1, 6)[i], layer.expert(e, h.reshape(-1, 6)[i:i + 1])[0] * probs[i, e], atol=1e-6)
    with torch.no_grad():  # a router that scores every expert alike: f_e = (ties -> expert 0) but P_e uniform
        layer.router.weight.zero_()
        layer.router.bias.copy_(torch.tensor([0.0, 0.0, 0.0]))
    layer(h)
    assert float(layer.aux.detach()) == pytest.approx(1.0)  # E * (1 * 1/3) with every token on expert 0
    with torch.no_grad():
        layer.router.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    layer(h)
    assert float(layer.aux.detach()) > 2.5  # collapsed and confident: E * P_0 close to 3


def test_mixer_with_experts_reports_its_aux_loss_and_rollout_extends_the_horizon():
    torch.manual_seed(0)
    model = timeseries.PatchMixer(context=16, horizon=4, patch=4, width=8, blocks=2, experts=2)
    x, f = torch.randn(3, 20), torch.tensor([0, 1, 2])
    loss = timeseries.forecast_loss(model, x, f, aux_weight=0.5)
    plain = timeseries.forecast_loss(model, x, f, aux_weight=0.0)
    assert float((loss - plain).detach()) == pytest.approx(0.5 * float(model.aux_loss().detach()), rel=1e-5)
    with torch.no_grad():
        long = timeseries.rollout(model, x[:, :16], f, 10)
        first = model(x[:, :16], f)
        second = model(torch.cat([x[:, 4:16], first], 1), f)
    assert long.shape == (3, 10)
    assert torch.allclose(long[:, :4], first) and torch.allclose(long[:, 4:8], second, atol=1e-5)


def test_pretraining_replicas_differ_by_their_data_seed_and_repeat_with_it():
    import ptmlib as ptm
    from ptmlib.train import TrainConfig

    P = ptm.setup("smoke", seed=0)
    losses = []
    for offset in (3000, 3000, 4000):
        torch.manual_seed(0)
        model = timeseries.PatchMixer(context=16, horizon=4, patch=4, width=8, blocks=1)
        losses.append(timeseries.pretrain(model, TrainConfig(3, lr=1e-3), P, pool_size=8, data_seed_offset=offset).loss)
    assert losses[0] == losses[1] and losses[0] != losses[2]  # same data seed, same run; another, other batches


def test_one_blas_thread_limits_blas_inside_and_restores_it_after():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    with timeseries.one_blas_thread():
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before
