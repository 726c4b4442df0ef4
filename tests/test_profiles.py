import pytest
import torch

from ptmlib.profiles import resolve_profile, setup

KNOBS = {"num_steps": {"smoke": 400, "full": 5000}, "width": {"smoke": 32, "full": 256},
         "lr": {"smoke": 1e-3, "full": 3e-4}, "pair": {"smoke": True, "full": False}}


def test_unknown_profile_names_the_allowed_values():
    with pytest.raises(ValueError, match="allowed: smoke, full, auto"):
        resolve_profile("fast")


def test_unknown_knob_names_the_allowed_knobs():
    with pytest.raises(ValueError, match="allowed: lr, num_steps, pair, width"):
        resolve_profile("smoke", knobs=KNOBS, overrides={"depth": 3})


@pytest.mark.parametrize("key,value", [("num_steps", 2.5), ("num_steps", "10"), ("num_steps", True),
                                       ("pair", 1), ("lr", "0.1")])
def test_wrong_knob_type_is_a_value_error(key, value):
    with pytest.raises(ValueError, match=f"knob '{key}' must be"):
        resolve_profile("smoke", knobs=KNOBS, overrides={key: value})


@pytest.mark.parametrize("bad", [{"seed": -1}, {"seed": 1.0}, {"budget": 0}, {"budget": "2"}])
def test_bad_seed_or_budget(bad):
    with pytest.raises(ValueError):
        resolve_profile("smoke", **bad)


def test_auto_picks_full_on_cuda_and_smoke_on_cpu():
    assert resolve_profile("auto", cuda_available=False).name == "smoke"
    full = resolve_profile("auto", cuda_available=True)
    assert full.name == "full" and full.device.type == "cuda" and full.autocast_dtype == torch.bfloat16
    smoke = resolve_profile("auto", cuda_available=False)
    assert smoke.device.type == "cpu" and smoke.autocast_dtype is None


def test_knobs_take_the_profile_value_and_overrides_win():
    prof = resolve_profile("smoke", knobs=KNOBS, overrides={"width": 48, "lr": None})
    assert (prof.num_steps, prof.width, prof.lr) == (400, 48, 1e-3)
    assert resolve_profile("full", knobs=KNOBS, cuda_available=False).width == 256
    assert resolve_profile("smoke", knobs=KNOBS, overrides={"lr": 1}).lr == 1.0  # int accepted for float


def test_budget_scales_training_lengths_but_not_explicit_overrides():
    prof = resolve_profile("smoke", budget=0.5, knobs=KNOBS, scaled=["num_steps"])
    assert prof.num_steps == 200 and prof.width == 32
    assert resolve_profile("smoke", budget=1e-6, knobs=KNOBS, scaled=["num_steps"]).num_steps == 1
    assert resolve_profile("smoke", budget=4, knobs=KNOBS, scaled=["num_steps"],
                           overrides={"num_steps": 7}).num_steps == 7


def test_every_knob_needs_both_profiles():
    with pytest.raises(ValueError, match="must give a value for each"):
        resolve_profile("smoke", knobs={"n": {"smoke": 1}})


def test_missing_knob_attribute_lists_knobs():
    prof = resolve_profile("smoke", knobs=KNOBS)
    with pytest.raises(AttributeError, match="knobs: "):
        prof.depth


def test_setup_makes_smoke_runs_bit_for_bit_repeatable():
    def run(seed: int) -> torch.Tensor:
        setup("smoke", seed=seed, quiet=True)
        model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(20):
            x = torch.randn(32, 5)
            loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_generator_offsets_are_independent_streams(smoke):
    a = torch.randn(4, generator=smoke.generator(0))
    assert torch.equal(a, torch.randn(4, generator=smoke.generator(0)))
    assert not torch.equal(a, torch.randn(4, generator=smoke.generator(1)))


def test_generator_device_override_keeps_the_seed(smoke):
    gen = smoke.generator(3, device="cpu")
    assert gen.device.type == "cpu" and gen.initial_seed() == smoke.seed + 3
    assert torch.equal(torch.randn(3, generator=gen), torch.randn(3, generator=smoke.generator(3)))


def test_cpu_bf16_switch_gives_the_full_profile_gpu_precision_on_a_cpu(monkeypatch):
    import torch

    from ptmlib.profiles import resolve_profile

    assert resolve_profile("full", cuda_available=False).autocast_dtype is None
    monkeypatch.setenv("PTM_CPU_BF16", "1")
    full = resolve_profile("full", cuda_available=False)
    assert full.device.type == "cpu" and full.autocast_dtype == torch.bfloat16
    with full.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert resolve_profile("smoke").autocast_dtype is None  # smoke stays float32, bit-for-bit
