"""Continual-learning toolkit: metrics on hand-computed matrices, reservoir uniformity, EWC's Fisher."""
import pytest
import torch
from torch import nn

from ptmlib.continual import learning as CL

# R[i, j]: accuracy on task j after training tasks 0..i (3 tasks)
R = torch.tensor([[0.9, 0.1, 0.2],
                  [0.6, 0.8, 0.3],
                  [0.5, 0.7, 0.9]])


def test_metrics_on_a_hand_computed_matrix():
    assert CL.average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    # forgetting: task 0 best 0.9 -> 0.5 (0.4), task 1 best 0.8 -> 0.7 (0.1)
    assert CL.average_forgetting(R) == pytest.approx(0.25)
    # backward transfer: (0.5 - 0.9 + 0.7 - 0.8) / 2
    assert CL.backward_transfer(R) == pytest.approx(-0.25)
    # forward transfer: (R[0,1] - b1 + R[1,2] - b2) / 2 with b = 0.1 each
    assert CL.forward_transfer(R, torch.tensor([0.1, 0.1, 0.1])) == pytest.approx((0.0 + 0.2) / 2)
    perfect = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert CL.average_forgetting(perfect) == 0.0 and CL.backward_transfer(perfect) == 0.0


def test_forgetting_uses_the_best_earlier_accuracy_not_the_diagonal():
    late_peak = torch.tensor([[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.6, 0.8, 0.9]])
    assert CL.average_forgetting(late_peak) == pytest.approx((0.3 + 0.0) / 2)
    assert CL.backward_transfer(late_peak) == pytest.approx((0.1 + 0.0) / 2)  # transfer can be positive


def test_class_incremental_split_is_a_partition():
    tasks = CL.class_incremental_tasks(range(10), 5)
    assert tasks == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    shuffled = CL.class_incremental_tasks(range(10), 5, torch.Generator().manual_seed(0))
    assert sorted(c for t in shuffled for c in t) == list(range(10))
    with pytest.raises(ValueError):
        CL.class_incremental_tasks(range(10), 3)
    y = torch.tensor([0, 1, 2, 3, 1])
    parts = CL.split_by_task(torch.arange(5.0)[:, None], y, [(0, 1), (2, 3)])
    assert parts[0][1].tolist() == [0, 1, 1] and parts[1][1].tolist() == [2, 3]


def test_domain_incremental_partitions_the_data_and_applies_each_transform():
    x, y = torch.ones(9, 2), torch.arange(9)
    stream = CL.domain_incremental(x, y, [lambda v: v, lambda v: 2 * v, lambda v: -v], torch.Generator().manual_seed(0))
    assert sorted(int(i) for _, ys in stream for i in ys) == list(range(9))
    assert [float(xs[0, 0]) for xs, _ in stream] == [1.0, 2.0, -1.0]


def test_reservoir_keeps_every_item_with_equal_probability():
    counts = torch.zeros(20)
    for seed in range(600):
        buf = CL.ReservoirBuffer(5, torch.Generator().manual_seed(seed))
        for start in range(0, 20, 4):  # offered in batches
            buf.add(torch.arange(start, start + 4.0)[:, None], torch.arange(start, start + 4))
        assert len(buf) == 5
        counts[buf.y] += 1
    freq = counts / 600  # each item kept with probability 5 / 20
    assert torch.allclose(freq, torch.full((20,), 0.25), atol=0.06)
    x, y = buf.sample(7)
    assert x.shape == (7, 1) and torch.equal(x[:, 0].long(), y)
    with pytest.raises(ValueError):
        CL.ReservoirBuffer(3, torch.Generator()).sample(1)


def test_ewc_fisher_is_the_mean_squared_gradient_and_the_penalty_is_quadratic():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    ewc = CL.EWC(strength=2.0)
    ewc.consolidate(model, x, y)
    manual = torch.zeros_like(model.weight)
    for i in range(6):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        manual += model.weight.grad ** 2
    fisher, anchor = ewc.terms[0]
    assert torch.allclose(fisher["weight"], manual / 6, atol=1e-6)
    assert float(ewc.penalty(model).detach()) == 0.0
    with torch.no_grad():
        model.weight.add_(0.1)
    expected = 0.5 * 2.0 * float((fisher["weight"] * 0.01).sum())
    assert float(ewc.penalty(model).detach()) == pytest.approx(expected, rel=1e-5)


def test_nearest_mean_learns_class_means_and_ignores_unseen_classes():
    nm = CL.NearestMean(3, 2)
    x = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    nm.learn(x, y)
    scores = nm(torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    assert scores.argmax(-1).tolist() == [0, 1] and torch.isinf(scores[:, 2]).all()


def test_key_value_bottleneck_updates_only_the_selected_values():
    g = torch.Generator().manual_seed(0)
    unlabeled = torch.randn(100, 4, generator=g)
    model = CL.KeyValueBottleneck(unlabeled, 3, g, heads=5, keys=7, key_dim=2)
    x = torch.randn(2, 4, generator=g)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    used = torch.zeros(5, 7, dtype=torch.bool)
    sel = model.select(x)
    for h in range(5):
        used[h, sel[h]] = True
    touched = model.values.grad.abs().sum(-1) > 0
    assert torch.equal(touched, used)
    with torch.no_grad():
        model.values[:] = torch.randn(5, 7, 3, generator=g)
    manual = torch.stack([model.values[h][sel[h]] for h in range(5)]).mean(0)
    assert torch.allclose(model(x), manual)


def test_train_sequentially_fills_the_accuracy_matrix_and_naive_training_forgets():
    g = torch.Generator().manual_seed(0)
    x, y = CL.gaussian_rings(2000, g, n_classes=4)
    assert x.shape == (2000, 2) and set(y.tolist()) == {0, 1, 2, 3}
    stream = CL.split_by_task(x, y, [(0, 1), (2, 3)])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 4))
    R = CL.train_sequentially(model, stream, stream, 200, g, lr=1e-2)
    assert R.shape == (2, 2) and R[0, 0] > 0.9 and R[1, 1] > 0.9 and R[1, 0] < R[0, 0] - 0.15  # learned, then lost
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 4))
    R_replay = CL.train_sequentially(model, stream, stream, 200, g, lr=1e-2, replay=CL.ReservoirBuffer(50, g))
    assert R_replay[1, 0] > R[1, 0] + 0.1


def test_mixed_batches_draw_the_replay_share_from_the_old_pool():
    new, old = torch.zeros(50, 4, dtype=torch.long), torch.ones(50, 4, dtype=torch.long)
    ids = CL.mixed_batches(new, old, 16, 0.25)(torch.Generator().manual_seed(0))
    assert ids.shape == (16, 4) and int(ids[:, 0].sum()) == 4
    assert int(CL.mixed_batches(new, old, 16, 0.0)(torch.Generator())[:, 0].sum()) == 0


def test_markov_mixture_interpolates_the_transition_matrices():
    from ptmlib import markov

    a, b = markov.MarkovSource(6, 2, 0.5, seed=0), markov.MarkovSource(6, 2, 0.5, seed=1)
    m = markov.MarkovSource.mixture(a, b, 0.25)
    assert torch.allclose(m.P, 0.75 * a.P + 0.25 * b.P)
    assert torch.allclose(m.pi @ m.P, m.pi, atol=1e-6)
    assert (m.row_entropy >= 0.75 * a.row_entropy + 0.25 * b.row_entropy - 1e-9).all()  # entropy is concave
    with pytest.raises(ValueError):
        markov.MarkovSource.mixture(a, markov.MarkovSource(5, 2, 0.5), 0.5)


def test_rows_index_every_tensor_together_and_reject_ragged_input():
    a, b = torch.arange(5), torch.arange(10).view(5, 2)
    rows = CL.Rows(a, b)
    sub = rows[torch.tensor([True, False, True, False, False])]
    assert len(sub) == 2 and sub.tensors[0].tolist() == [0, 2] and sub.tensors[1].tolist() == [[0, 1], [4, 5]]
    with pytest.raises(ValueError, match="equal length"):
        CL.Rows(a, torch.arange(4))


def test_cosine_classifier_ignores_the_feature_scale_and_takes_rows():
    torch.manual_seed(0)
    clf = CL.CosineClassifier(nn.Linear(3, 4), 4, 2, scale=5.0)
    x = torch.randn(6, 3)
    twice = CL.CosineClassifier(nn.Linear(3, 4), 4, 2, scale=5.0)
    twice.load_state_dict(clf.state_dict())
    with torch.no_grad():
        twice.body.weight.mul_(2)
        twice.body.bias.mul_(2)
    assert torch.allclose(clf(x), twice(x), atol=1e-5)
    assert torch.allclose(clf(CL.Rows(x)), clf(x))
    feats = torch.nn.functional.normalize(clf.body(x), dim=-1) * 5.0
    assert torch.allclose(clf(x), feats @ clf.head.weight.T + clf.head.bias, atol=1e-5)


def test_accuracy_row_restricted_to_seen_classes():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.9]])
    tests = [(scores, torch.tensor([0, 0]))]
    assert CL.accuracy_row(lambda s: s, tests).tolist() == [0.0]
    assert CL.accuracy_row(lambda s: s, tests, torch.tensor([0])).tolist() == [1.0]
    assert torch.equal(CL.restrict(scores, torch.tensor([1]))[0], torch.tensor([float("-inf"), 0.9, float("-inf")]))


def _stream():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=g)
    y = torch.arange(4).repeat(30)
    x = x + 3 * torch.nn.functional.one_hot(y, 4).float()
    tasks = [(0, 1), (2, 3)]
    return CL.split_by_task(x, y, tasks), CL.split_by_task(x, y, tasks)


def test_local_loss_leaves_earlier_classes_head_rows_untouched_and_hooks_run():
    stream, tests = _stream()
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    rows_before = model.weight.detach().clone()
    calls = {"step": 0, "task": []}
    snapshots = []

    def after_task(m, t):
        calls["task"].append(t)
        snapshots.append(m.weight.detach().clone())

    R = CL.train_sequentially(model, stream, tests, 20, torch.Generator().manual_seed(1), lr=0.05, local=True,
                              after_step=lambda m: calls.__setitem__("step", calls["step"] + 1), after_task=after_task)
    assert calls["step"] == 40 and calls["task"] == [0, 1]
    assert torch.equal(snapshots[0][2:], rows_before[2:])  # task 0 never touched classes 2, 3
    assert torch.equal(snapshots[1][:2], snapshots[0][:2])  # task 1 never touched classes 0, 1
    assert R[0, 1] == 0.0 and R[0, 0] > 0.9  # after task 0 only classes 0, 1 can be predicted


def test_lr_by_suffix_and_views():
    stream, tests = _stream()
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    bias = model.bias.detach().clone()
    out = CL.train_sequentially(model, stream, tests, 10, torch.Generator().manual_seed(1), lr=0.05,
                                lr_by_suffix={"bias": 0.0}, views={"same": lambda x, c: model(x)})
    assert torch.equal(model.bias, bias)  # learning rate 0 for the bias
    assert set(out) == {"model", "same"} and torch.equal(out["model"], out["same"])


def test_lae_offline_expert_is_the_moving_average_and_the_ensemble_a_max():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    lae = CL.LAE(model, momentum=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    lae.accumulate(model)
    assert torch.allclose(lae.offline["weight"], w0 + 0.1)  # 0.9 * w0 + 0.1 * (w0 + 1)
    x = torch.randn(5, 3)
    online = model(x).detach()
    with lae.offline_weights(model) as m:
        assert torch.allclose(m.weight, w0 + 0.1)
    assert torch.allclose(model(x), online)  # restored
    expect = torch.maximum(online.softmax(-1), lae.offline_logits(model, x).softmax(-1))
    assert torch.allclose(lae.ensemble(model, x), expect)
    only0 = lae.ensemble(model, x, torch.tensor([0]))
    assert torch.allclose(only0, torch.tensor([[1.0, 0.0]]).expand(5, 2))
