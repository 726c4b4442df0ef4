"""Tests of ptmlib.science.decision: the reacher, its LQR expert, the pretraining heads and the tokenisers."""
from __future__ import annotations

import math

import pytest
import torch

from ptmlib.science import decision


def test_lqr_value_solves_the_riccati_equation_and_its_gain_is_optimal():
    dt, rho, gain = 0.1, 0.1, 1.5
    p, K = decision.lqr_value(dt, rho, gain)
    b = dt * gain
    assert p == pytest.approx(1 + p - (p * b) ** 2 / (rho + p * b * b), rel=1e-12)
    # the one-step Bellman minimiser over a grid of gains is K
    grid = torch.linspace(0, 2 * K, 20001, dtype=torch.float64)
    bellman = 1 + rho * grid**2 + p * (1 - b * grid) ** 2  # cost of e = 1 under a = -k e, then value p e'^2
    assert float(grid[bellman.argmin()]) == pytest.approx(K, rel=1e-3)


def test_expert_rollout_contracts_geometrically_and_costs_the_riccati_value():
    dt, rho = 0.1, 0.1
    p, K = decision.lqr_value(dt, rho)
    q0 = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    goal = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    states, actions = decision.expert_rollout(q0, goal, 400, dt, 1.0, K)
    assert states.shape == (5, 401, 2) and actions.shape == (5, 400, 2)
    t = 7
    assert torch.allclose(states[:, t] - goal, (1 - dt * K) ** t * (q0 - goal))
    cost = ((states[:, :-1] - goal[:, None]) ** 2).sum((1, 2)) + rho * (actions**2).sum((1, 2))
    assert torch.allclose(cost, p * ((q0 - goal) ** 2).sum(1), rtol=1e-10)


def test_expert_noise_and_per_episode_gains():
    q0, goal = torch.zeros(2, 2), torch.ones(2, 2)
    _, clean = decision.expert_rollout(q0, goal, 3, 0.1, torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))
    states, _ = decision.expert_rollout(q0, goal, 1, 0.1, torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))
    assert torch.allclose(states[1, 1], 2 * states[0, 1])  # twice the gain, twice the step
    _, noisy = decision.expert_rollout(q0, goal, 3, 0.1, 1.0, 1.0, noise=0.5, gen=torch.Generator().manual_seed(0))
    assert not torch.allclose(noisy, clean[:1].expand_as(noisy))


def test_render_draws_the_hand_and_the_ball_where_they_are():
    q = torch.tensor([[0.0, 0.0]])  # a straight arm along x: hand at (2, 0)
    image = decision.render(q, grid=45, width=0.1).reshape(45, 45)
    row, col = divmod(int(image.argmax()), 45)
    ticks = torch.linspace(-decision.EXTENT, decision.EXTENT, 45)
    assert abs(float(ticks[col]) - 1.0) < 0.15 or abs(float(ticks[col]) - 2.0) < 0.15  # elbow (1, 0) or hand (2, 0)
    assert abs(float(ticks[row])) < 0.15
    with_ball = decision.render(q, grid=45, ball=torch.tensor([[-1.5, -1.5]]), width=0.1)
    extra = (with_ball - decision.render(q, grid=45, width=0.1)).reshape(45, 45)
    row, col = divmod(int(extra.argmax()), 45)
    assert abs(float(ticks[col]) + 1.5) < 0.15 and abs(float(ticks[row]) + 1.5) < 0.15


def test_ball_path_keeps_its_radius_and_speed():
    path = decision.ball_path(torch.tensor([0.0, 1.0]), 10, 0.3, radius=1.6)
    assert path.shape == (2, 11, 2)
    assert torch.allclose(path.norm(dim=-1), torch.full((2, 11), 1.6))
    angle = torch.atan2(path[0, :, 1], path[0, :, 0])
    assert torch.allclose(angle[1:4] - angle[:3], torch.full((3,), 0.3), atol=1e-6)


def test_demonstrations_shapes_and_clean_actions():
    goal = decision.sample_tasks(3, torch.Generator().manual_seed(0))[0]
    d = decision.demonstrations(goal, 2, 5, 0.1, 0.1, torch.tensor([1.0]), 0.0, torch.Generator().manual_seed(1))
    assert d["states"].shape == (3, 2, 6, 2) and d["actions"].shape == (3, 2, 5, 2)
    assert torch.allclose(d["clean"], d["actions"])  # without noise the expert's actions are its clean actions
    noisy = decision.demonstrations(goal, 2, 5, 0.1, 0.1, torch.tensor([1.0]), 0.3, torch.Generator().manual_seed(1))
    assert not torch.allclose(noisy["clean"], noisy["actions"])
    assert (goal - torch.tensor([0.3, 1.2])).abs().max() <= 1.0


def test_emlp_members_are_independent():
    mlp = decision.EMLP(3, 4, 8, 2)
    x = torch.randn(3, 5, 4)
    before = mlp(x)
    with torch.no_grad():
        mlp.layers[0].weight[0] += 1.0
    after = mlp(x)
    assert not torch.allclose(before[0], after[0]) and torch.allclose(before[1:], after[1:])
    linear = decision.EMLP(2, 3, 8, 1, depth=0)
    assert len(linear.layers) == 1


def test_pretrain_heads_share_the_start_and_learn_inverse_dynamics():
    torch.manual_seed(0)
    model = decision.PretrainHeads(2, 6, 2, 3, 16)
    w = model.encoder.layers[0].weight
    assert torch.equal(w[0], w[2]) and torch.equal(w[1], w[5]) and not torch.equal(w[0], w[1])
    obs = torch.randn(64, 6)
    act = torch.randn(64, 2)
    next_obs = obs.clone()
    next_obs[:, :2] += act  # the action moves two observation coordinates: inverse dynamics is linear
    losses = model.losses(obs, next_obs, act)
    assert losses.shape == (6,)
    assert model.features(obs).shape == (6, 64, 3)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        loss = model.losses(obs, next_obs, act)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    obs2, act2 = torch.randn(256, 6), torch.randn(256, 2)
    next2 = obs2.clone()
    next2[:, :2] += act2
    final = model.losses(obs2, next2, act2).detach()  # on fresh transitions
    assert final[:2].max() < 0.1 < 0.5 < final[2:4].min()  # actions are random: cloning them from obs cannot generalise


def test_ridge_heads_recover_an_affine_map():
    x = torch.randn(4, 50, 3, dtype=torch.float64)
    true = torch.randn(4, 3, 2, dtype=torch.float64)
    y = x @ true + 0.5
    w = decision.ridge_heads(x, y, 1e-9)
    assert torch.allclose(w[:, :-1], true, atol=1e-6) and torch.allclose(w[:, -1], torch.full((4, 2), 0.5, dtype=torch.float64))
    assert torch.allclose(decision.ridge_policy(x, y, x, 1e-9), y, atol=1e-6)
    shrunk = decision.ridge_heads(x, y, 1e4)
    assert shrunk[:, :-1].abs().max() < 0.1  # a large penalty shrinks the slopes (not the bias)


def test_knn_policy_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    train_f, train_a, test_f = torch.randn(2, 20, 3, generator=gen), torch.randn(2, 20, 2, generator=gen), torch.randn(2, 7, 3, generator=gen)
    got = decision.knn_policy(train_f, train_a, test_f, 3)
    for t in range(2):
        for m in range(7):
            nearest = ((train_f[t] - test_f[t, m]) ** 2).sum(-1).argsort()[:3]
            assert torch.allclose(got[t, m], train_a[t, nearest].mean(0), atol=1e-6)
    assert torch.allclose(decision.knn_policy(train_f, train_a, train_f, 1), train_a)


def test_imitation_error_is_zero_for_the_expert_and_one_for_doing_nothing():
    a = torch.randn(3, 10, 2)
    assert torch.allclose(decision.imitation_error(a, a), torch.zeros(3))
    assert torch.allclose(decision.imitation_error(torch.zeros_like(a), a), torch.ones(3))


def test_component_and_vector_tokens():
    states, actions = torch.arange(12.0).reshape(1, 3, 4), -torch.arange(6.0).reshape(1, 3, 2) - 1
    tokens, values = decision.component_tokens(states, actions)
    assert tokens.shape == (1, 18, 12) and values.shape == (1, 18)
    assert values[0, :6].tolist() == [0, 1, 2, 3, -1, -2]
    assert tokens[0, 5, 5] == -2 and tokens[0, 5, :6].abs().sum() == 2 and tokens[0, 5, 6 + 5] == 1
    vec = decision.vector_tokens(states, actions)
    assert vec.shape == (1, 6, 8)
    assert vec[0, 0].tolist() == [0, 1, 2, 3, 0, 0, 1, 0] and vec[0, 1].tolist() == [0, 0, 0, 0, -1, -2, 0, 1]


@pytest.mark.parametrize("tokenisation", ["component", "vector"])
def test_next_token_loss_and_action_predictions_read_the_right_positions(tokenisation):
    states, actions = torch.randn(2, 3, 4), torch.randn(2, 3, 2)
    if tokenisation == "component":
        tokens, target = decision.component_tokens(states, actions)
        out = torch.cat([target[:, 1:], torch.zeros(2, 1)], 1)[None, ..., None]  # position i holds token i + 1
    else:
        tokens = target = decision.vector_tokens(states, actions)
        out = torch.cat([target[:, 1:, :-2], torch.zeros(2, 1, 6)], 1)[None]
    assert decision.next_token_loss(out, target, tokenisation, 4).item() == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(decision.action_predictions(out, tokenisation, 4, 2)[0], actions)
    assert decision.next_token_loss(out + 1.0, target, tokenisation, 4).item() == pytest.approx(1.0)
    assert not math.isnan(decision.next_token_loss(torch.zeros_like(out), target, tokenisation, 4).item())


def test_camera_renders_each_trajectory_with_its_own_ball_and_draws_one_phase_each():
    states = decision.sample_tasks(6, torch.Generator().manual_seed(0))[0].reshape(3, 1, 2, 2).expand(3, 1, 2, 2)
    images = decision.camera(states, 8, torch.Generator().manual_seed(1))
    assert images.shape == (3, 1, 2, 64)
    phase = 2 * torch.pi * torch.rand(3, generator=torch.Generator().manual_seed(1))
    ball = decision.ball_path(phase, 1, 0.3)
    expected = decision.render(states.reshape(3, 2, 2), 8, ball, ball_brightness=1.5).reshape(3, 1, 2, 64)
    assert torch.allclose(images, expected)
    plain = decision.camera(states, 8, torch.Generator().manual_seed(1), distractor=False)
    assert torch.allclose(plain, decision.render(states, 8)) and not torch.allclose(plain, images)


def test_transition_loss_sums_the_members_losses_on_the_batch():
    torch.manual_seed(0)
    model = decision.PretrainHeads(2, 6, 2, 3, 8)
    obs, next_obs, act = torch.randn(10, 6), torch.randn(10, 6), torch.randn(10, 2)
    idx = torch.tensor([1, 4, 7])
    loss = decision.transition_loss(model, idx, obs, next_obs, act)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(model.losses(obs[idx], next_obs[idx], act[idx]).sum().item())


def test_few_shot_errors_are_zero_when_the_test_set_is_the_training_set():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 12, 6, generator=gen)
    a = x[..., :2] @ torch.randn(2, 2, generator=gen) + 0.3  # an affine policy of the observations
    raw = decision.few_shot_errors(x, a, x, a, k=1, lam=1e-9)
    assert set(raw) == {"nearest neighbours", "linear head"} and raw["linear head"].dim() == 0
    assert raw["nearest neighbours"].item() == pytest.approx(0.0, abs=1e-10) and raw["linear head"].item() < 1e-8
    torch.manual_seed(0)
    model = decision.PretrainHeads(2, 6, 2, 3, 8)
    per_member = decision.few_shot_errors(x, a, torch.randn(5, 4, 6, generator=gen), a[:, :4], model)
    assert per_member["nearest neighbours"].shape == (6,) and per_member["linear head"].shape == (6,)


def test_arm_trajectories_hold_the_goal_in_the_state_and_follow_the_dynamics():
    s, a = decision.arm_trajectories(7, 5, torch.tensor([2.0]), 0.1, 0.1, 0.2, torch.Generator().manual_seed(0))
    assert s.shape == (7, 5, 4) and a.shape == (7, 5, 2)
    assert torch.equal(s[:, :1, 2:].expand(-1, 5, -1), s[:, :, 2:])  # the goal is constant along an episode
    assert torch.allclose(s[:, 1:, :2] - s[:, :-1, :2], 0.1 * 2.0 * a[:, :-1], atol=1e-6)  # q' = q + dt b a
    again = decision.arm_trajectories(7, 5, torch.tensor([2.0]), 0.1, 0.1, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], s) and torch.equal(again[1], a)


def test_action_state_tokens_dispatch_on_the_tokenisation():
    states, actions = torch.randn(2, 3, 4), torch.randn(2, 3, 2)
    x, target = decision.action_state_tokens("component", states, actions)
    ref_x, ref_target = decision.component_tokens(states, actions)
    assert torch.equal(x, ref_x) and torch.equal(target, ref_target) and target.shape == (2, 18)
    x, target = decision.action_state_tokens("vector", states, actions)
    assert x is target and torch.equal(x, decision.vector_tokens(states, actions)) and x.shape == (2, 6, 8)
