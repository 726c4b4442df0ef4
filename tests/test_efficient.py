"""Tests of ptmlib.objectives.efficient: each member's method (Adam, GaLore, low-rank, sparse) as a member of
one ensemble, measured optimizer state, counted FLOPs, binarisation and its low-rank residual estimate."""
import math

import pytest
import torch

from ptmlib import lm, schedules
from ptmlib.ensemble import member_state, stack_members
from ptmlib.objectives import efficient
from ptmlib.objectives.denoising import causal_lm

V, T, C = 24, 9, 16


def ensemble(E: int, seed: int = 0) -> lm.EnsembleTransformer:
    """E members with one shared initialisation."""
    torch.manual_seed(seed)
    model = lm.ensemble_lm(E, V, C, 2, 2, max_len=T)
    model.load_state_dict(stack_members([member_state(model, 0)] * E))
    return model


def batches(S: int = 6, B: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (S, B, T), generator=torch.Generator().manual_seed(seed))


def optimizer(model, methods, rank=3, gap=2, density=0.3, lr=1e-2):
    gen = torch.Generator().manual_seed(5)
    masks = {e: efficient.random_masks(model, density, gen) for e, m in enumerate(methods) if m == "sparse"}
    return efficient.MemberOptimizer(model, methods, lr, lr, rank, gap, masks, gen)


def test_full_members_take_exactly_adams_steps():
    a, b = ensemble(2), ensemble(2)
    opt = optimizer(a, ["full", "full"])
    ref = torch.optim.Adam(b.parameters(), lr=1e-2)
    for ids in batches():
        efficient.train_members(a, opt, ids[None], schedules.constant())
        x = causal_lm(ids)
        ref.zero_grad()
        lm.scored_losses(b, x.inputs.expand(2, *x.inputs.shape), x.targets.expand(2, *x.targets.shape), None,
                         causal=True).sum().backward()
        ref.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert (p - q).abs().max() < 1e-4, float((p - q).abs().max())


def test_a_members_trajectory_does_not_depend_on_the_other_members():
    first = ensemble(2)
    efficient.train_members(first, optimizer(first, ["full", "galore"]), batches(), schedules.constant())
    second = ensemble(2)
    efficient.train_members(second, optimizer(second, ["full", "lowrank"]), batches(), schedules.constant())
    for (name, p), q in zip(first.named_parameters(), second.parameters()):
        assert torch.allclose(p[0], q[0], atol=1e-6), name
        if p.dim() == 3 and p.shape[1] > 1 and "weight" in name:  # the second members differ
            assert not torch.allclose(p[1], q[1], atol=1e-4), name


def test_lowrank_member_stays_low_rank_and_its_gradients_are_the_chain_rule():
    model = ensemble(1)
    opt = optimizer(model, ["lowrank"], rank=3)
    efficient.train_members(model, opt, batches(), schedules.constant())
    for w in efficient.block_matrices(model):
        assert int(torch.linalg.matrix_rank(w[0])) <= 3
    U, Vm = torch.randn(5, 3, requires_grad=True), torch.randn(3, 7, requires_grad=True)
    target = torch.randn(5, 7)
    ((U @ Vm) * target).sum().backward()  # dL/dW = target
    opt.trained[0][0] = {"U": U.detach(), "V": Vm.detach()}
    grads = efficient.MemberOptimizer.gradients(opt, 0, 0, target)
    assert torch.allclose(grads["U"], U.grad) and torch.allclose(grads["V"], Vm.grad)


def test_sparse_member_keeps_its_zeros_and_its_density():
    model = ensemble(2)
    opt = optimizer(model, ["full", "sparse"], density=0.3)
    efficient.train_members(model, opt, batches(), schedules.constant())
    for w, mask in zip(efficient.block_matrices(model), opt.masks[1]):
        assert torch.all(w[1][mask == 0] == 0)
        assert torch.all(w[0] != 0)
    dense, sparse = efficient.nonzero_matrix_weights(model, 0), efficient.nonzero_matrix_weights(model, 1)
    assert dense == sum(w[0].numel() for w in efficient.block_matrices(model))
    assert 0.2 < sparse / dense < 0.4


def test_masks_must_match_the_sparse_members():
    model = ensemble(2)
    with pytest.raises(ValueError):
        efficient.MemberOptimizer(model, ["full", "sparse"], 1e-2, 1e-2)
    with pytest.raises(ValueError):
        efficient.MemberOptimizer(model, ["full", "ternary"], 1e-2, 1e-2)
    with pytest.raises(ValueError):
        efficient.MemberOptimizer(model, ["full"], 1e-2, 1e-2)


def test_galore_updates_lie_in_the_projected_subspace():
    model = ensemble(1)
    opt = optimizer(model, ["galore"], rank=2, gap=100)
    before = [w[0].clone() for w in efficient.block_matrices(model)]
    efficient.train_members(model, opt, batches(S=3), schedules.constant())
    for i, (w, w0) in enumerate(zip(efficient.block_matrices(model), before)):
        delta, P = w[0] - w0, opt.moments[0][i]["P"]
        assert P.shape == (min(w0.shape), 2)
        side = delta if w0.shape[0] <= w0.shape[1] else delta.T
        assert torch.allclose(side - P @ (P.T @ side), torch.zeros_like(side), atol=1e-6)  # in span(P)
        assert float(delta.detach().abs().max()) > 0


def test_galore_basis_is_orthonormal_on_the_smaller_side():
    g = torch.randn(6, 10)
    for mat in (g, g.T):
        P = efficient.galore_basis(mat, 3)
        assert P.shape == (6, 3)
        assert torch.allclose(P.T @ P, torch.eye(3), atol=1e-5)
    u, s, vh = torch.linalg.svd(g)
    assert torch.allclose(efficient.galore_basis(g, 1).abs(), u[:, :1].abs(), atol=1e-5)


def test_measured_state_equals_the_formulas():
    model = ensemble(3)
    opt = optimizer(model, ["full", "galore", "lowrank"], rank=3)
    efficient.train_members(model, opt, batches(S=2), schedules.constant())
    assert opt.state_bytes(0) == efficient.adam_state_formula(model)
    assert opt.state_bytes(1) == efficient.galore_state_formula(model, 3)
    assert opt.state_bytes(1) < 0.8 * opt.state_bytes(0) and opt.state_bytes(2) < opt.state_bytes(0)
    n_params = sum(p[0].numel() for p in model.parameters())
    assert efficient.adam_state_formula(model) == 8 * n_params


def test_adam_direction_bias_correction():
    moments = {}
    g = torch.tensor([2.0, -3.0])
    d = efficient.adam_direction(g, moments, "w", 1)  # first step: m_hat = g, v_hat = g^2
    assert torch.allclose(d, torch.sign(g), atol=1e-6)
    assert torch.allclose(moments["w.m"], 0.1 * g) and torch.allclose(moments["w.v"], 0.001 * g * g)


def test_binarize_and_residual_estimate():
    w = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    b = efficient.binarize(w)
    for j in range(5):  # each column is +-alpha with alpha its mean |w|
        assert torch.allclose(b[:, j].abs(), w[:, j].abs().mean().expand(8))
        assert torch.equal(torch.sign(b[:, j]), torch.where(w[:, j] >= 0, 1.0, -1.0))
    errors = [float((w - b - efficient.residual_estimate(w, r)).norm()) for r in range(6)]
    assert all(x > y for x, y in zip(errors, errors[1:]))  # more directions, less error
    assert errors[5] < 1e-5 and abs(errors[0] - float((w - b).norm())) < 1e-6
    assert int(torch.linalg.matrix_rank(efficient.residual_estimate(w, 2))) == 2


def test_packed_bytes_is_one_bit_per_weight_plus_scales():
    assert efficient.packed_bytes(torch.randn(64, 192)) == 64 * 192 // 8 + 4 * 192
    assert efficient.packed_bytes(torch.randn(3, 5)) == math.ceil(15 / 8) + 20


def test_counted_flops_match_the_6n_rule_and_ignore_zeros():
    model = ensemble(2)
    ids = batches(S=1, B=8)[0]
    counted = efficient.measured_step_flops(model, ids)
    rule = lm.step_flops(model, causal_lm(ids))  # 6 x params x tokens, no attention term
    assert 0.85 * rule < counted < 1.5 * rule
    with torch.no_grad():
        for w in efficient.block_matrices(model):
            w.mul_((torch.rand(w.shape) < 0.25).float())
    assert efficient.measured_step_flops(model, ids) == counted  # dense kernels multiply the zeros too
    assert all(p.grad is None for p in model.parameters())


def test_training_lowers_the_loss_and_held_out_losses_match_member_losses():
    model = ensemble(2)
    opt = optimizer(model, ["full", "sparse"], lr=3e-2)
    ids = torch.arange(T).repeat(4, 1) % 5  # a periodic sequence: easy to learn
    losses = efficient.train_members(model, opt, ids.expand(30, 4, T), schedules.cosine(30, 3))
    assert losses.shape == (30, 2)
    assert torch.all(losses[-1] < 0.5 * losses[0])
    held = efficient.held_out_losses(model, ids, chunk=3)
    assert torch.allclose(held, lm.member_losses(model, [causal_lm(ids)] * 2), atol=1e-5)
