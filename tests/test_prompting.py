"""Black-box optimisation, active selection, modality rendering and contrastive losses: known answers."""
import math

import pytest
import torch

import ptmlib as ptm

from ptmlib.peft import active, blackbox, crossmodal


def test_spsa_gradient_is_exact_in_expectation_for_a_linear_loss():
    """For L(theta) = w . theta the two-point estimate is (w . delta) delta, whose mean over the signs is w."""
    w = torch.tensor([1.0, -2.0, 0.5])
    est = blackbox.spsa_gradient(lambda t: float(w @ t), torch.zeros(3), c=0.1, gen=torch.Generator().manual_seed(0), samples=4000)
    assert torch.allclose(est, w, atol=0.1)


def test_spsa_minimise_solves_a_quadratic_and_uses_common_batches():
    target = torch.tensor([1.0, -1.0, 2.0, 0.0])
    theta, trace = blackbox.spsa_minimise(lambda t: float(((t - target) ** 2).sum()), torch.zeros(4), 300,
                                    torch.Generator().manual_seed(0), lr=0.01, c=0.01, samples=2)
    assert torch.allclose(theta, target, atol=0.05) and trace[-1] < 1e-2
    seen = []
    batches = iter(range(1000))

    def loss(t, b):
        seen.append(b)
        return float(((t - target) ** 2).sum())

    blackbox.spsa_minimise(loss, torch.zeros(4), 3, torch.Generator().manual_seed(0), batch_fn=lambda: next(batches), samples=2)
    assert seen == [0] * 5 + [1] * 5 + [2] * 5  # 2 x 2 queries + the trace, all on the step's own batch


def test_entropy_and_uncertain_selection():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1], [0.6, 0.4]])
    assert ptm.metrics.entropy(probs)[1] == pytest.approx(math.log(2)) and ptm.metrics.entropy(probs)[0] == pytest.approx(0.0)
    exclude = torch.tensor([False, True, False, False])
    assert active.select_uncertain(probs, 2, exclude).tolist() == [3, 2]


def test_balanced_selection_covers_every_pseudo_class():
    probs = torch.tensor([[0.55, 0.45, 0.0]] * 6 + [[0.0, 0.2, 0.8]] * 2)
    chosen = active.select_balanced(probs, 3, torch.zeros(8, dtype=torch.bool))
    assert len(set(chosen.tolist())) == 3
    assert {int(probs[i].argmax()) for i in chosen} == {0, 2}  # class 1 is never predicted: fall back


def test_representative_selection_picks_one_item_per_cluster():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    feats = torch.cat([c + 0.1 * torch.randn(20, 2, generator=g) for c in centres])
    picked = active.select_representative(feats, 3, torch.zeros(60, dtype=torch.bool), torch.Generator().manual_seed(1))
    assert sorted(int(i) // 20 for i in picked) == [0, 1, 2]


def test_active_learning_curve_shapes_and_rejects_unknown_strategies():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] > 0).long()
    accs = active.active_learning_curve(x, y, x, y, 2, "random", g, start=6, step=4, rounds=2)
    assert len(accs) == 3 and accs[-1] > 0.8
    with pytest.raises(ValueError, match="unknown strategy"):
        active.active_learning_curve(x, y, x, y, 2, "oracle", g)


def test_info_nce_and_recall():
    a = torch.eye(4)
    assert float(crossmodal.info_nce(a, a, temperature=0.01)) < 1e-3  # perfectly matched pairs
    assert float(crossmodal.info_nce(a, a.flip(0), temperature=0.01)) > 10  # every pair mismatched
    match = torch.eye(4, dtype=torch.bool)
    assert crossmodal.recall_at_k(a, a, match, 1) == 1.0 and crossmodal.recall_at_k(a, a.flip(0), match, 1) == 0.0


def test_prompt_shift_and_point_rendering():
    x = torch.rand(3, 64)
    assert torch.equal(blackbox.pixel_prompt(torch.zeros(128), x), x)
    assert torch.allclose(ptm.data.contrast_shift(x, 1.0, 0.0), x)
    points, mask = crossmodal.points_from_images(x, torch.Generator().manual_seed(0))
    assert points.shape == (3, 64, 3) and torch.equal(mask.sum(1), (x > 0).sum(1))
    render = crossmodal.PointRenderer()
    with torch.no_grad():  # a zero colour network paints nothing
        for p in render.colour.parameters():
            p.zero_()
    img = render(points, mask)
    assert torch.allclose(img, torch.zeros(3, 64))
    # geometry: a colour of 1 everywhere puts 1 exactly at every ink pixel
    render.colour = torch.nn.Sequential(torch.nn.Linear(1, 1))
    with torch.no_grad():
        render.colour[0].weight.zero_()
        render.colour[0].bias.fill_(1.0)
    assert torch.equal(render(points, mask), (x > 0).float())


def test_bag_of_tokens_ignores_padding():
    torch.manual_seed(0)
    model = crossmodal.BagOfTokens(10, 4, 3, 6)
    a = torch.tensor([[3, 4, 0, 0]])
    b = torch.tensor([[3, 4, 0, 0, 0, 0]])
    assert torch.allclose(model.features(a), model.features(b)) and model(a).shape == (1, 3)


def test_prompted_model_starts_as_the_frozen_model_and_trains_only_its_prompt():
    torch.manual_seed(0)
    frozen = torch.nn.Linear(4, 3)
    model = blackbox.PromptedModel(frozen, 4)
    x = torch.rand(5, 4)
    assert torch.equal(model(x), frozen(x))  # theta = 0: the unchanged input
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["theta"]
    with torch.no_grad():
        model.theta[4:] = 1.0  # shift every pixel by one
    assert torch.allclose(model(x), frozen(x + 1))


def test_rendered_classifier_reads_the_first_logits_of_the_rendered_image():
    torch.manual_seed(0)
    image_model = torch.nn.Linear(64, 10)
    model = crossmodal.RenderedClassifier(image_model, 5)
    points, mask = crossmodal.points_from_images(torch.rand(2, 64), torch.Generator().manual_seed(0))
    assert torch.equal(model(points, mask), image_model(model.render(points, mask))[:, :5])


def test_camera_shift_is_not_a_per_pixel_affine_map_of_the_input():
    """Blur, a square root and fresh noise: the best per-pixel affine fit leaves a clear residual, the
    background pattern is shared by every image, and the noise differs between noise seeds."""
    x, _ = ptm.data.digits((0, 1, 2, 3, 4), "train")
    shifted = blackbox.camera_shift(x)
    clean = blackbox.camera_shift(x, noise=0.0)
    assert torch.allclose(blackbox.camera_shift(x[:1], noise=0.0), clean[:1])  # the camera is deterministic
    xc, sc = x - x.mean(0), shifted - shifted.mean(0)
    slope = (xc * sc).sum(0) / xc.pow(2).sum(0).clamp_min(1e-9)
    residual = (sc - slope * xc).pow(2).mean() / sc.pow(2).mean()
    assert residual > 0.2  # a per-pixel affine map explains well under 80% of the variance
    assert not torch.allclose(blackbox.camera_shift(x, noise_seed=1), shifted)


def test_sampled_clouds_sample_the_ink_and_differ_between_draws():
    x = torch.zeros(2, 64)
    x[0, 9] = 1.0  # one inked pixel at (1, 1)
    x[1, [0, 63]] = 1.0  # two inked corners
    g = torch.Generator().manual_seed(0)
    a, b = crossmodal.sampled_clouds(x, g, n_points=50), crossmodal.sampled_clouds(x, g, n_points=50)
    assert a.shape == (2, 50, 2) and not torch.equal(a, b)
    assert ((a[0] - 1).abs() <= 0.5).all()  # every point within its pixel's jitter box
    near_origin = (a[1].norm(dim=-1) < 1).float().mean()
    assert 0.2 < near_origin < 0.8  # both corners drawn


def test_splat_renderer_puts_density_where_the_points_are():
    r = crossmodal.SplatRenderer()
    with torch.no_grad():
        r.colour[0].weight.fill_(1.0), r.colour[0].bias.zero_(), r.colour[2].weight.fill_(1.0), r.colour[2].bias.zero_()
        img = r(torch.tensor([[[2.0, 5.0]] * 4]))
    assert img.shape == (1, 64) and int(img.argmax()) == 2 * 8 + 5
    model = crossmodal.RenderedClassifier(torch.nn.Linear(64, 10), 5, crossmodal.SplatRenderer())
    assert model(torch.rand(3, 24, 2) * 7).shape == (3, 5)
