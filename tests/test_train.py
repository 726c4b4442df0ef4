import math

import pytest
import torch

from ptmlib.train import History, TrainConfig, lr_multiplier, train


def test_constant_schedule_with_linear_warmup():
    cfg = TrainConfig(num_steps=100, warmup_steps=10)
    assert [lr_multiplier(s, cfg) for s in (0, 4, 9, 10, 99)] == [0.1, 0.5, 1.0, 1.0, 1.0]


def test_cosine_schedule_closed_form():
    cfg = TrainConfig(num_steps=101, schedule="cosine", min_lr_ratio=0.1)
    assert lr_multiplier(0, cfg) == pytest.approx(1.0)
    assert lr_multiplier(50, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: cos(pi/2) = 0
    assert lr_multiplier(25, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_multiplier(100, cfg) == pytest.approx(0.1)


def test_wsd_schedule_is_flat_then_decays_linearly_to_the_floor():
    cfg = TrainConfig(num_steps=101, schedule="wsd", warmup_steps=10, decay_frac=0.2, min_lr_ratio=0.0)
    values = [lr_multiplier(s, cfg) for s in range(101)]
    assert values[9] == 1.0 and values[10:81] == [1.0] * 71  # decay starts at step 100 - 20 = 80
    assert values[90] == pytest.approx(0.5) and values[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values[80:], values[81:]))


def test_bad_config_is_a_value_error():
    with pytest.raises(ValueError, match="allowed: constant, cosine, wsd"):
        TrainConfig(num_steps=10, schedule="linear")
    with pytest.raises(ValueError, match="allowed: adamw, adam, sgd"):
        TrainConfig(num_steps=10, optimizer="lion")
    with pytest.raises(ValueError):
        TrainConfig(num_steps=0)


def _linear_problem(d: int = 4, batch: int = 64):
    w_true = torch.arange(1.0, d + 1)

    def batch_fn(gen: torch.Generator):
        x = torch.randn(batch, d, generator=gen)
        return x, x @ w_true

    def loss_fn(model, b):
        x, y = b
        return (model(x).squeeze(-1) - y).pow(2).mean()

    return w_true, batch_fn, loss_fn


def test_train_recovers_the_least_squares_solution(smoke):
    w_true, batch_fn, loss_fn = _linear_problem()
    model = torch.nn.Linear(4, 1, bias=False)
    hist = train(model, batch_fn, loss_fn, TrainConfig(num_steps=300, lr=0.05, optimizer="sgd", grad_clip=None,
                                                        log_every=100), smoke, examples_per_step=64)
    assert torch.allclose(model.weight.detach()[0], w_true, atol=1e-3)
    assert hist.step == [100, 200, 300] and hist.loss[-1] < 1e-4 < hist.loss[0]
    assert hist.examples_per_s > 0 and hist.mfu is None


def test_grad_clipping_bounds_each_sgd_update(smoke):
    w_true, batch_fn, loss_fn = _linear_problem()
    model = torch.nn.Linear(4, 1, bias=False)
    before = model.weight.detach().clone()
    train(model, batch_fn, loss_fn, TrainConfig(num_steps=1, lr=0.1, optimizer="sgd", grad_clip=0.01),
          smoke, examples_per_step=64)
    assert (model.weight.detach() - before).norm() == pytest.approx(0.1 * 0.01, rel=1e-4)


def test_eval_hooks_run_on_schedule_in_eval_mode(smoke):
    _, batch_fn, loss_fn = _linear_problem()
    model = torch.nn.Linear(4, 1, bias=False)
    seen = []

    def probe() -> float:
        seen.append((model.training, torch.is_grad_enabled()))
        return 1.0

    hist = train(model, batch_fn, loss_fn, TrainConfig(num_steps=25, eval_every=10), smoke,
                 examples_per_step=64, evals={"probe": probe})
    assert [s for s, _ in hist.evals["probe"]] == [10, 20, 25]
    assert set(seen) == {(False, False)} and hist.final("probe") == 1.0


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_weights(smoke):
    full = resolve_full_cpu(smoke)
    _, batch_fn, loss_fn = _linear_problem()
    cfg = TrainConfig(num_steps=40, lr=0.01, schedule="cosine", checkpoint_every=10, log_every=10)

    torch.manual_seed(0)
    straight = torch.nn.Linear(4, 1)
    h_straight = train(straight, batch_fn, loss_fn, cfg, full, examples_per_step=64, run_name="straight")

    calls = {"n": 0}

    def flaky(gen):
        calls["n"] += 1
        if calls["n"] == 26:  # dies during step 26: steps 1-20 are checkpointed
            raise Interrupt
        return batch_fn(gen)

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    with pytest.raises(Interrupt):
        train(model, flaky, loss_fn, cfg, full, examples_per_step=64, run_name="resumable")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    h = train(model, flaky, loss_fn, cfg, full, examples_per_step=64, run_name="resumable")
    assert h.steps_run == 20  # resumed from step 20
    assert torch.equal(model.weight, straight.weight) and torch.equal(model.bias, straight.bias)
    assert h.loss == h_straight.loss

    again = torch.nn.Linear(4, 1)
    h_done = train(again, flaky, loss_fn, cfg, full, examples_per_step=64, run_name="resumable")
    assert h_done.steps_run == 0 and torch.equal(again.weight, straight.weight)  # loaded, not retrained
    assert h_done.wall_s > 0 and h_done.loss == h_straight.loss


def resolve_full_cpu(smoke):
    from ptmlib.profiles import resolve_profile

    return resolve_profile("full", cuda_available=False, seed=smoke.seed)


def test_smoke_runs_do_not_checkpoint(smoke, tmp_path):
    from ptmlib.paths import cache_dir

    _, batch_fn, loss_fn = _linear_problem()
    train(torch.nn.Linear(4, 1), batch_fn, loss_fn, TrainConfig(num_steps=5), smoke, examples_per_step=64,
          run_name="smoke-run")
    assert not (cache_dir() / "checkpoints").exists()


def test_history_throughput_line():
    h = History(examples_per_s=1234.0, tokens_per_s=5000.0, mfu=0.25, steps_run=10)
    assert h.throughput() == "1,234 examples/s, 5,000 tokens/s, MFU 25.0%"
    assert History().throughput() == "loaded from a finished checkpoint"


def test_autocast_follows_the_profile_and_can_be_switched_off(smoke):
    from dataclasses import replace

    bf16 = replace(smoke, autocast_dtype=torch.bfloat16)  # CPU autocast stands in for CUDA's here
    _, batch_fn, _ = _linear_problem()
    seen = []

    def loss_fn(model, b):
        out = model(b[0])
        seen.append(out.dtype)
        return out.float().pow(2).mean()

    train(torch.nn.Linear(4, 1), batch_fn, loss_fn, TrainConfig(num_steps=1), bf16, examples_per_step=64)
    train(torch.nn.Linear(4, 1), batch_fn, loss_fn, TrainConfig(num_steps=1, autocast=False), bf16,
          examples_per_step=64)
    train(torch.nn.Linear(4, 1), batch_fn, loss_fn, TrainConfig(num_steps=1), smoke, examples_per_step=64)
    assert seen == [torch.bfloat16, torch.float32, torch.float32]


def test_checkpoints_of_other_code_are_not_reused(smoke):
    full = resolve_full_cpu(smoke)
    w_true, batch_fn, loss_fn = _linear_problem()
    cfg = TrainConfig(num_steps=5, checkpoint_every=5)
    train(torch.nn.Linear(4, 1), batch_fn, loss_fn, cfg, full, examples_per_step=64, run_name="run")

    def other_loss(model, b):  # a changed loss: the finished checkpoint must not be loaded
        x, y = b
        return (model(x).squeeze(-1) - 2 * y).pow(2).mean()

    h = train(torch.nn.Linear(4, 1), batch_fn, other_loss, cfg, full, examples_per_step=64, run_name="run")
    assert h.steps_run == 5
    h = train(torch.nn.Linear(4, 1), batch_fn, loss_fn, cfg, full, examples_per_step=64, run_name="run")
    assert h.steps_run == 0  # same code, same config: loaded


def test_wsd_sqrt_decay_and_bad_shape():
    cfg = TrainConfig(num_steps=11, schedule="wsd", decay_frac=0.5, decay_shape="sqrt")
    # decay starts at step 10 - round(5.5) = 4 and reaches 0 at step 10
    assert lr_multiplier(4, cfg) == 1.0 and lr_multiplier(10, cfg) == 0.0
    assert lr_multiplier(5, cfg) == pytest.approx(1 - (1 / 6) ** 0.5)
    with pytest.raises(ValueError, match="decay_shape"):
        TrainConfig(num_steps=5, decay_shape="cubic")


def test_code_digest_ignores_the_book_tooling_and_sees_a_changed_loss(tmp_path, monkeypatch):
    import shutil

    import importlib
    from ptmlib import zoo

    train_module = importlib.import_module("ptmlib.train")  # the module, not ptm.train the function
    pkg = tmp_path / "ptmlib"
    shutil.copytree(train_module.PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(train_module, "PACKAGE_DIR", pkg)
    monkeypatch.setattr(zoo, "code_version", train_module.code_version)
    spec = zoo.SPECS["digits-mlp"]
    before_digest, before_key = train_module.source_digest(), zoo.key(spec)
    assert before_digest == train_module.source_digest(pkg)
    for tool in ("report.py", "sitecheck.py", "cli.py"):  # editing the tooling keeps every key
        (pkg / "book" / tool).write_text((pkg / "book" / tool).read_text() + "\n# edited\n")
    assert train_module.source_digest() == before_digest and zoo.key(spec) == before_key
    loss = pkg / "objectives" / "denoising.py"  # editing a loss changes them
    loss.write_text(loss.read_text().replace("ignore_index=IGNORE", "ignore_index=IGNORE, label_smoothing=0.1", 1))
    assert train_module.source_digest() != before_digest and zoo.key(spec) != before_key


def test_weight_decay_reaches_matrices_only():
    """AdamW's decay goes to weights and embeddings, never to biases, norm gains or an ensemble's stacked biases."""
    from torch import nn

    from ptmlib.ensemble import EnsembleTransformer
    from ptmlib.train import make_optimizer

    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    opt = make_optimizer(model, TrainConfig(num_steps=1, weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[1].weight), id(model[3].weight)}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))

    ens = EnsembleTransformer(E=3, d_in=2, d_out=1, width=8, n_layer=1, n_head=2)
    opt = make_optimizer(ens, TrainConfig(num_steps=1, weight_decay=0.1))
    names = {id(p): n for n, p in ens.named_parameters()}
    decayed = sorted(names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"])
    assert decayed == sorted(n for n in names.values() if n.endswith("weight") and ".ln" not in n and "ln_f" not in n)


def test_decay_follows_adamw_on_a_bias_free_step():
    """One AdamW step with lr=0.1, wd=0.5 and a zero gradient: matrices shrink by lr * wd, biases do not move."""
    from torch import nn

    from ptmlib.train import make_optimizer

    lin = nn.Linear(3, 2)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    opt = make_optimizer(lin, TrainConfig(num_steps=1, lr=0.1, weight_decay=0.5))
    lin.weight.grad, lin.bias.grad = torch.zeros_like(lin.weight), torch.zeros_like(lin.bias)
    opt.step()
    assert torch.allclose(lin.weight, w0 * (1 - 0.1 * 0.5))
    assert torch.equal(lin.bias, b0)


def test_no_decay_keeps_a_single_group_and_the_old_parameter_order():
    """With weight_decay = 0 (every chapter) the optimizer is exactly the one before groups existed."""
    from torch import nn

    from ptmlib.train import make_optimizer

    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    opt = make_optimizer(model, TrainConfig(num_steps=1))
    assert len(opt.param_groups) == 1
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    assert not opt.defaults.get("fused")  # CPU tensors: no fused kernel


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused AdamW needs CUDA")
def test_fused_adamw_on_cuda():
    from torch import nn

    from ptmlib.train import make_optimizer

    opt = make_optimizer(nn.Linear(3, 2).cuda(), TrainConfig(num_steps=1))
    assert opt.defaults["fused"] is True


def test_train_log_gets_one_line_per_run(tmp_path, monkeypatch):
    import json

    from ptmlib.profiles import resolve_profile

    monkeypatch.setenv("PTM_TRAIN_LOG", str(tmp_path / "train.jsonl"))
    P = resolve_profile("smoke")
    model = torch.nn.Linear(2, 1)
    for steps in (3, 5):
        train(model, lambda g: torch.randn(4, 2, generator=g), lambda m, x: m(x).pow(2).mean(),
              TrainConfig(num_steps=steps), P, examples_per_step=4)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in rows] == [3, 5] and all(r["params"] == 3 for r in rows)
    assert all(r["examples_per_s"] > 0 and r["mfu"] is None for r in rows)  # no MFU without CUDA


def test_data_device_puts_the_generator_where_the_data_is_made():
    """A batch_fn sees a generator on the profile's device, or on `data_device` when given (CPU-only data)."""
    from ptmlib.profiles import resolve_profile

    P = resolve_profile("smoke")
    seen = []

    def batch_fn(gen):
        seen.append(gen.device.type)
        return torch.randn(4, 2, generator=gen)

    for data_device in (None, "cpu"):
        train(torch.nn.Linear(2, 1), batch_fn, lambda m, x: m(x).pow(2).mean(), TrainConfig(num_steps=2), P,
              examples_per_step=4, data_device=data_device)
    assert seen == ["cpu"] * 4
