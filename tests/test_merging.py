"""Weight and logit arithmetic: closed forms on hand-made states."""
import pytest
import torch

import ptmlib as ptm
from ptmlib.peft import merging


def st(a, b=0.0):
    return {"w": torch.tensor([a, b]), "steps": torch.tensor(3)}


def test_combine_and_uniform_soup_average_floats_and_copy_integers():
    soup = merging.uniform_soup([st(1.0, 2.0), st(3.0, 6.0)])
    assert torch.equal(soup["w"], torch.tensor([2.0, 4.0])) and int(soup["steps"]) == 3
    assert torch.equal(merging.combine([st(1.0), st(2.0)], [2.0, -1.0])["w"], torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError):
        merging.combine([st(1.0)], [0.5, 0.5])


def test_greedy_soup_keeps_only_ingredients_that_do_not_hurt():
    # score = -|w0 - 1|: states at 1.2 and 0.8 average to the optimum; 5.0 would ruin the soup
    states = [st(1.2), st(5.0), st(0.8)]
    soup, kept = merging.greedy_soup(states, lambda s: -abs(float(s["w"][0]) - 1.0))
    assert sorted(kept) == [0, 2] and float(soup["w"][0]) == pytest.approx(1.0)


def test_barrier_is_zero_for_convex_paths_and_measures_a_bump():
    ts, losses = merging.interpolation_path(st(0.0), st(2.0), lambda s: float(s["w"][0]) ** 2)  # convex in t
    assert merging.barrier(ts, losses) == pytest.approx(0.0, abs=1e-9)
    ts, losses = merging.interpolation_path(st(-1.0), st(1.0), lambda s: 1 - float(s["w"][0]) ** 2)  # peak 1 at t = 0.5
    assert merging.barrier(ts, losses) == pytest.approx(1.0)


def test_lines_scales_the_task_vector_linearly_with_depth():
    pre = {"a": torch.zeros(2), "b": torch.zeros(2), "c": torch.zeros(2)}
    tuned = {k: torch.ones(2) for k in pre}
    out = merging.lines(pre, tuned, {"a": 0, "b": 1, "c": 2}, 3, alpha=0.2, beta=1.0)
    assert [float(out[k][0]) for k in "abc"] == pytest.approx([0.2, 0.6, 1.0])
    assert torch.equal(merging.task_vector(tuned, pre)["a"], torch.ones(2))


def test_ema_weights_sum_to_one_and_follow_the_recursion():
    states = [st(float(i)) for i in range(4)]
    e = float(states[0]["w"][0])
    for s in states[1:]:
        e = 0.7 * e + 0.3 * float(s["w"][0])
    assert float(merging.ema(states, 0.7)["w"][0]) == pytest.approx(e)


def test_lcsc_search_finds_a_better_combination_and_never_returns_a_worse_one():
    states = [st(0.0), st(1.0), st(3.0)]  # last checkpoint at 3; the optimum 1.5 needs a combination
    score = lambda s: -abs(float(s["w"][0]) - 1.5)
    w, best = merging.lcsc_search(states, score, torch.Generator().manual_seed(0), iters=40)
    assert best >= score(states[-1]) and best > -0.2 and float(w.sum()) == pytest.approx(1.0)


def test_eft_renormalises_and_reduces_to_the_large_model_without_fine_tuning():
    g = torch.Generator().manual_seed(0)
    large, small = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    lp = merging.eft_logprobs(large, small, small)
    assert torch.allclose(lp, torch.log_softmax(large, -1), atol=1e-6)
    tuned = small + torch.randn(2, 5, 7, generator=g)
    assert torch.allclose(merging.eft_logprobs(large, tuned, small).exp().sum(-1), torch.ones(2, 5), atol=1e-6)


def test_accuracy_and_loss_restricted_classes_and_token_nll():
    model = torch.nn.Linear(2, 4, bias=False)
    state = {"weight": torch.tensor([[1.0, 0], [0, 1.0], [2.0, 0], [0, 0]])}
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    acc, _ = merging.accuracy_and_loss(model, state, x, torch.tensor([0, 1]))
    assert acc == 0.5  # row 0 prefers class 2
    acc, _ = merging.accuracy_and_loss(model, state, x, torch.tensor([0, 1]), classes=(0, 1))
    assert acc == 1.0
    uniform = torch.log_softmax(torch.zeros(1, 3, 5), -1)
    assert merging.token_nll(uniform, torch.tensor([[1, 2, 3]])) == pytest.approx(torch.log(torch.tensor(5.0)).item())


def test_fine_tune_learns_and_snapshots_the_trajectory():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(5, 2)
    P = ptm.resolve_profile("smoke", seed=0, cuda_available=False)
    snaps = merging.fine_tune_arrays(model, x, y, ptm.TrainConfig(num_steps=60, lr=0.1, log_every=60), P,
                             batch=16, noise=0.1, snapshot_every=20)
    assert len(snaps) == 3 and torch.equal(snaps[-1]["weight"], model.weight)
    assert not torch.equal(snaps[0]["weight"], snaps[-1]["weight"])
    assert ptm.metrics.accuracy(model(x), y) > 0.9
