"""Unit tests of ptmlib.orientation.transfer (the zoo and measurements of orientation/what_transfers)."""
import math

import pytest
import torch
import torch.nn.functional as F

from ptmlib.orientation import transfer as T


def test_stacked_cnn_members_are_independent_networks():
    zoo = T.StackedCNN([3, 4, 3], width=4, dim=5)
    x = torch.rand(6, 64)
    z = zoo(x)
    assert z.shape == (3, 6, 5)
    torch.testing.assert_close(z[0], z[2])  # the same seed gives the same member
    assert not torch.allclose(z[0], z[1])
    solo = T.StackedCNN([4], width=4, dim=5)  # member 1 alone computes the same features
    torch.testing.assert_close(solo(x)[0], z[1])
    z[1].sum().backward()  # a loss on member 1 leaves the others' weights without gradient
    g = zoo.w3.grad
    assert g[1].abs().sum() > 0 and g[0].abs().sum() == 0 and g[2].abs().sum() == 0
    assert zoo.filters().shape == (3, 4, 9)


def test_stacked_cross_entropy_matches_per_member():
    logits, y = torch.randn(2, 7, 3), torch.randint(0, 3, (7,))
    per = T.stacked_cross_entropy(logits, y)
    torch.testing.assert_close(per, torch.stack([F.cross_entropy(logits[e], y) for e in range(2)]))


def test_look_loss_on_a_hand_made_batch():
    # four points on a line; labels a a b b; with k = 1 each point's nearest neighbour decides
    z = torch.tensor([[[1.0, 0.0], [0.95, 0.31], [0.0, 1.0], [-0.31, 0.95]]])
    y = torch.tensor([0, 0, 1, 1])
    assert T.look_loss(z, y, k=1).item() == pytest.approx(0.0, abs=1e-6)  # every nearest neighbour agrees
    # k = 3: all other points; loss_i = -log(w_same / w_all) with w = exp(cos / tau)
    tau = 0.5
    zn = F.normalize(z[0], dim=-1)
    sim = zn @ zn.T / tau
    expected = []
    for i in range(4):
        others = [j for j in range(4) if j != i]
        same = [j for j in others if y[j] == y[i]]
        expected.append(-(torch.logsumexp(sim[i, same], 0) - torch.logsumexp(sim[i, others], 0)))
    assert T.look_loss(z, y, k=3, tau=tau).item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    # a point whose k neighbours all disagree is left out (no finite loss), not counted as zero
    y_odd = torch.tensor([0, 1, 1, 1])
    loss = T.look_loss(z, y_odd, k=1)
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_look_loss_allows_two_modes_that_cross_entropy_would_merge():
    # class 0 has two well-separated modes; LOOK with k = 1 is already satisfied
    z = torch.tensor([[[1.0, 0.0], [0.99, 0.1], [-1.0, 0.0], [-0.99, -0.1], [0.0, 1.0], [0.1, 0.99]]])
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    assert T.look_loss(z, y, k=1, tau=0.1).item() < 1e-3
    mixed = torch.tensor([0, 1, 0, 1, 0, 1])  # neighbours now disagree: a large loss
    assert T.look_loss(z, mixed, k=1, tau=0.1).item() == 0.0  # ... but nobody has an agreeing neighbour: left out
    assert T.look_loss(z, mixed, k=3, tau=0.1).item() > 2.0


def test_info_nce_prefers_matching_views():
    z1 = torch.randn(1, 16, 8)
    aligned = T.simclr_loss(z1, z1 + 0.01 * torch.randn(1, 16, 8)).item()
    shuffled = T.simclr_loss(z1, z1[:, torch.randperm(16)]).item()
    assert aligned < shuffled - 1.0


def test_augment_shifts_by_at_most_one_pixel():
    x = torch.zeros(50, 64)
    x[:, 3 * 8 + 3] = 1.0  # one bright pixel at (3, 3)
    v = T.augment(x, torch.Generator().manual_seed(0), noise=0.0)
    pos = v.argmax(1)
    r, c = pos // 8, pos % 8
    assert ((r - 3).abs() <= 1).all() and ((c - 3).abs() <= 1).all()
    assert len(set(pos.tolist())) > 3  # several shifts occur
    assert (v.max(1).values >= 0.6 - 1e-6).all() and (v.max(1).values <= 1.0 + 1e-6).all()


def test_flip_labels_rate_and_never_keeps_a_flipped_label():
    y = torch.randint(0, 3, (20000,))
    noisy = T.flip_labels(y, 0.3, 3, torch.Generator().manual_seed(0))
    assert (noisy != y).float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert noisy.min() >= 0 and noisy.max() <= 2
    assert (T.flip_labels(y, 0.0, 3, torch.Generator()) == y).all()


def test_ridge_probe_separable_vs_random_features():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (200,), generator=g)
    good = F.one_hot(y, 4).float() + 0.1 * torch.randn(200, 4, generator=g)
    bad = torch.randn(200, 4, generator=g)
    f = torch.stack([good, bad])
    acc = T.ridge_probe(f[:, :150], y[:150], f[:, 150:], y[150:], 4)
    assert acc[0].item() == 1.0 and acc[1].item() < 0.5


def test_cross_validated_probe_scores_every_example_once():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (203,), generator=g)
    good = F.one_hot(y, 4).float() + 0.1 * torch.randn(203, 4, generator=g)
    bad = torch.randn(203, 4, generator=g)
    acc = T.cross_validated_probe(torch.stack([good, bad]), y, 4)
    assert acc[0].item() == 1.0 and acc[1].item() < 0.5
    # one bad example is scored once: 202 of 203 right, whatever fold it falls in
    flipped = good.clone()
    flipped[7] = F.one_hot((y[7] + 1) % 4, 4).float()
    assert T.cross_validated_probe(flipped[None], y, 4).item() == pytest.approx(202 / 203)
    # the folds partition the examples: with as many folds as examples it is leave-one-out
    assert T.cross_validated_probe(flipped[None, :20], y[:20], 4, folds=20).item() == pytest.approx(19 / 20)


def test_within_class_share_collapsed_and_mixed():
    y = torch.tensor([0, 0, 1, 1])
    collapsed = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    assert T.within_class_share(collapsed, y).item() == pytest.approx(0.0, abs=1e-6)
    mixed = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    assert T.within_class_share(mixed, y).item() == pytest.approx(1.0, abs=1e-6)


def test_logme_prefers_features_that_encode_the_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    good = F.one_hot(y, 3).float() @ torch.randn(3, 8, generator=g) + 0.1 * torch.randn(300, 8, generator=g)
    noise = torch.randn(300, 8, generator=g)
    assert T.logme(good, y, 3) > T.logme(noise, y, 3) + 0.5
    # the evidence of a 1-d perfect predictor is finite and large
    assert math.isfinite(T.logme(F.one_hot(y, 3).float() + 1e-3 * torch.randn(300, 3, generator=g), y, 3))


def test_potential_energy_step_pushes_classes_apart_keeping_within_class_offsets():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * 20 + [1] * 20)
    f = torch.randn(40, 4, generator=g) + 0.5 * y[:, None]
    moved = T.potential_energy_step(f, y, steps=5)
    std = (f - f.mean(0)) / f.std(0)

    def gap(v):
        return (v[y == 0].mean(0) - v[y == 1].mean(0)).norm().item()

    assert gap(moved) > gap(std) * 1.5
    torch.testing.assert_close(moved[y == 0] - moved[y == 0].mean(0), std[y == 0] - std[y == 0].mean(0))


def test_kendall_tau_known_answers_with_ties():
    # a = [1, 1, 2, 3], b = [1, 2, 3, 4]: of 6 pairs one is tied in a, the other 5 concordant -> 5 / sqrt(5 * 6)
    assert T.kendall_tau([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / 30 ** 0.5)
    assert T.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert T.kendall_tau(torch.tensor([1.0, 2, 3, 4]), [1, 2, 3, 4]) == pytest.approx(1.0)
    assert T.kendall_tau([2, 2, 2], [1, 2, 3]) == 0.0  # undefined for a constant list: reported as no correlation


def test_variance_entropy_random_vs_one_shape():
    g = torch.Generator().manual_seed(0)
    assert T.variance_entropy(torch.randn(2000, 9, generator=g)) > 0.98
    shape = torch.randn(9, generator=g)
    one = torch.randn(100, 1, generator=g) * shape + 1e-4 * torch.randn(100, 9, generator=g)
    assert T.variance_entropy(one) < 0.05
