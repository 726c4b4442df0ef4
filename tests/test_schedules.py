"""Learning-rate schedules: closed-form values at warmup, endpoints and midpoints, and the
TrainConfig dispatch (`lr_multiplier`) equal to the schedules, float for float."""
import math

import pytest

import ptmlib as ptm
from ptmlib import schedules
from ptmlib.train import lr_multiplier


def test_warmup_is_linear_from_peak_over_warmup_to_peak():
    assert [schedules.warmup(s, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedules.warmup(1, 10, peak=3.0) == pytest.approx(0.6)


def test_cosine_decay_runs_from_one_to_the_floor():
    assert schedules.cosine_decay(0.0, 0.2) == 1.0 and schedules.cosine_decay(1.0, 0.2) == pytest.approx(0.2)
    assert schedules.cosine_decay(0.5, 0.2) == pytest.approx(0.6)  # half-way: the mean of 1 and the floor


def test_constant_after_warmup():
    f = schedules.constant(10, peak=2.0)
    assert f(0) == pytest.approx(0.2) and f(9) == 2.0 and f(10) == f(10 ** 6) == 2.0
    assert schedules.constant()(0) == 1.0


def test_cosine_endpoints_midpoint_and_floor():
    f = schedules.cosine(101, 0, floor=0.1)  # last step 100
    assert f(0) == 1.0 and f(100) == pytest.approx(0.1)
    assert f(50) == pytest.approx(0.1 + 0.9 * 0.5)  # cos(pi / 2) = 0
    assert f(25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    g = schedules.cosine(21, 10, peak=4.0)  # warmup 10, then cosine over steps 10..20
    assert g(4) == pytest.approx(2.0) and g(10) == 4.0 and g(15) == pytest.approx(2.0) and g(20) == pytest.approx(0.0)
    assert schedules.cosine(4, 3)(3) == 1.0  # nothing left to decay after the warmup


def test_wsd_is_flat_then_decays_over_its_last_fraction():
    f = schedules.wsd(101, 0, decay_frac=0.2, floor=0.0)  # decay starts at 100 - round(20.2) = 80
    assert f(0) == f(80) == 1.0
    assert f(90) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    g = schedules.wsd(11, 0, decay_frac=0.5, shape="sqrt")  # decay from step 4 (10 - round(5.5)) to 10
    assert g(4) == 1.0 and g(5) == pytest.approx(1 - (1 / 6) ** 0.5) and g(10) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        schedules.wsd(10, shape="cubic")


def test_rewarm_cosine_reaches_its_floor_at_steps_and_stays():
    f = schedules.rewarm_cosine(1.0, 10, 110, floor=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert schedules.rewarm_cosine(3e-3, 10, 110)(10) == pytest.approx(3e-3)


def test_infinite_warms_cools_holds_and_anneals():
    f = schedules.infinite(1.0, 10, 20, 0.3, anneal_start=100, anneal=10, floor=0.0)
    assert f(9) == pytest.approx(1.0) and f(20) == pytest.approx(0.3 + 0.7 * 0.5)  # half-way down the cooldown
    assert f(30) == pytest.approx(0.3) and f(99) == pytest.approx(0.3)
    assert f(105) == pytest.approx(0.15) and f(200) == pytest.approx(0.0)
    assert schedules.infinite(1.0, 10, 20, 0.3, None, 0)(10 ** 6) == pytest.approx(0.3)


def test_power_warms_follows_the_power_law_capped_and_decays():
    f = schedules.power(1e-2, a=0.5, b=-0.5, batch=4, tokens_per_step=100, steps=100, warmup_steps=5, decay_frac=0.1)
    assert f(0) == pytest.approx(1e-2 / 5)
    assert f(49) == pytest.approx(1e-2)  # 0.5 * 4 * (50 * 100) ** -0.5 = 0.028: capped at the peak
    g = schedules.power(1.0, a=0.5, b=-0.5, batch=4, tokens_per_step=100, steps=100)
    assert g(49) == pytest.approx(2 / math.sqrt(5000)) and g(99) == 0.0
    assert g(90) == pytest.approx(2 / math.sqrt(9000))  # the decay starts at step 90 from the law's value
    assert g(89) > g(95) > g(99)


@pytest.mark.parametrize("kind", ["constant", "cosine", "wsd"])
@pytest.mark.parametrize("steps,warmup", [(1, 0), (7, 0), (50, 5), (200, 10)])
def test_lr_multiplier_is_the_schedule_and_lr_times_it_is_the_peaked_schedule(kind, steps, warmup):
    cfg = ptm.TrainConfig(num_steps=steps, lr=1e-2, schedule=kind, warmup_steps=warmup, min_lr_ratio=0.1,
                          decay_frac=0.2, decay_shape="sqrt")
    unit, peaked = {
        "constant": (schedules.constant(warmup), schedules.constant(warmup, peak=1e-2)),
        "cosine": (schedules.cosine(steps, warmup, 0.1), schedules.cosine(steps, warmup, 0.1, peak=1e-2)),
        "wsd": (schedules.wsd(steps, warmup, 0.2, 0.1, "sqrt"), schedules.wsd(steps, warmup, 0.2, 0.1, "sqrt", peak=1e-2)),
    }[kind]
    for s in range(steps):
        assert lr_multiplier(s, cfg) == unit(s)  # exactly, not approximately
        assert peaked(s) == cfg.lr * lr_multiplier(s, cfg)
