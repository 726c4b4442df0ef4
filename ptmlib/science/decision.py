"""Pretraining for control: a vectorised two-link reacher, its LQR expert, and the pretraining objectives
of the decision-making chapter (inverse dynamics, behaviour cloning, forward dynamics; action-state tokens).

The world. A planar arm with two links of length 1 is driven in joint velocity: its state is the pair of
joint angles q (B, 2) and an action a (B, 2) moves it as q' = q + dt * gain * a. A *task* is a goal pose g
(the context, never observed by a learner); the expert is the LQR controller of the cost
sum_t |q_t - g|^2 + rho |a_t|^2, a = -K (q - g), whose gain K and value p |q_0 - g|^2 have a closed form.
Learners see the arm through a camera: `render` draws the elbow and the hand (and, optionally, a
distractor ball circling the scene) as Gaussian blobs on a small pixel grid.

Shapes: B episodes, T steps, D = grid * grid pixels, E ensemble members (batched models), k = feature width.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.ensemble import ELinear

LINKS = (1.0, 1.0)  # link lengths
EXTENT = 2.2  # the camera sees [-EXTENT, EXTENT]^2


def lqr_value(dt: float, rho: float, gain: float = 1.0) -> tuple[float, float]:
    """(p, K) of the scalar infinite-horizon LQR for e' = e + dt * gain * a, cost e^2 + rho a^2 per step.

    The Riccati equation p = 1 + p - (p b)^2 / (rho + p b^2), b = dt * gain, reduces to
    p^2 b^2 - p b^2 - rho = 0; the optimal feedback is a = -K e with K = p b / (rho + p b^2)."""
    b2 = (dt * gain) ** 2
    p = (b2 + math.sqrt(b2 * b2 + 4 * b2 * rho)) / (2 * b2)
    return p, p * dt * gain / (rho + p * b2)


def expert_rollout(q0: torch.Tensor, goal: torch.Tensor, steps: int, dt: float, gain: torch.Tensor | float, K: torch.Tensor | float,
                   noise: float = 0.0, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll the LQR expert a = -K (q - g) + noise * N(0, 1) for `steps` steps from q0 (B, 2) towards goal (B, 2).
    `gain` and `K` are floats or per-episode tensors (B,). Returns states (B, steps + 1, 2), actions (B, steps, 2)."""
    gain_b = torch.as_tensor(gain, dtype=q0.dtype).reshape(-1, 1)
    K_b = torch.as_tensor(K, dtype=q0.dtype).reshape(-1, 1)
    q, states, actions = q0, [q0], []
    for _ in range(steps):
        a = -K_b * (q - goal)
        if noise:
            a = a + noise * torch.randn(q.shape, generator=gen, dtype=q.dtype)
        q = q + dt * gain_b * a
        states.append(q)
        actions.append(a)
    return torch.stack(states, 1), torch.stack(actions, 1)


def arm_points(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elbow and hand positions (..., 2) of joint angles q (..., 2)."""
    elbow = LINKS[0] * torch.stack([q[..., 0].cos(), q[..., 0].sin()], -1)
    angle = q[..., 0] + q[..., 1]
    return elbow, elbow + LINKS[1] * torch.stack([angle.cos(), angle.sin()], -1)


def render(q: torch.Tensor, grid: int = 8, ball: torch.Tensor | None = None, width: float = 0.45,
           ball_brightness: float = 1.0) -> torch.Tensor:
    """A grid x grid greyscale image (..., grid * grid) of the arm: Gaussian blobs at the elbow and the hand,
    plus a distractor ball at `ball` (..., 2) if given."""
    ticks = torch.linspace(-EXTENT, EXTENT, grid, dtype=q.dtype, device=q.device)
    pixels = torch.stack(torch.meshgrid(ticks, ticks, indexing="xy"), -1).reshape(-1, 2)  # (D, 2)

    def blob(center: torch.Tensor) -> torch.Tensor:  # (..., 2) -> (..., D)
        return torch.exp(-((center[..., None, :] - pixels) ** 2).sum(-1) / (2 * width**2))

    elbow, hand = arm_points(q)
    image = blob(elbow) + blob(hand)
    if ball is not None:
        image = image + ball_brightness * blob(ball)
    return image


def ball_path(phase0: torch.Tensor, steps: int, omega: float, radius: float = 1.6) -> torch.Tensor:
    """A distractor ball circling the scene at angular speed `omega` per step from phase0 (B,): (B, steps + 1, 2).
    It moves whatever the arm does, so it is predictable from the pixels but carries no information about actions."""
    phase = phase0[:, None] + omega * torch.arange(steps + 1, dtype=phase0.dtype, device=phase0.device)
    return radius * torch.stack([phase.cos(), phase.sin()], -1)


def sample_tasks(n: int, gen: torch.Generator, spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """n tasks: goal poses (n, 2) and start poses (n, 2), each uniform in a box of half-width `spread`
    around the pose (0.3, 1.2) (an arm bent at the elbow, away from the straight-arm singularity)."""
    centre = torch.tensor([0.3, 1.2])
    goal = centre + spread * (2 * torch.rand(n, 2, generator=gen) - 1)
    start = centre + spread * (2 * torch.rand(n, 2, generator=gen) - 1)
    return goal, start


class EMLP(nn.Module):
    """E independent GELU MLPs with `depth` hidden layers (0: a linear map): (E, N, d_in) -> (E, N, d_out)."""

    def __init__(self, E: int, d_in: int, hidden: int, d_out: int, depth: int = 2) -> None:
        super().__init__()
        widths = [d_in] + [hidden] * depth + [d_out]
        self.layers = nn.ModuleList(ELinear(E, i, o, std=i**-0.5) for i, o in zip(widths, widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.gelu(layer(x))
        return self.layers[-1](x)


def demonstrations(goal: torch.Tensor, episodes: int, steps: int, dt: float, rho: float, gains: torch.Tensor,
                   noise: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """`episodes` noisy LQR demonstrations per task (goal (n, 2)), each from its own random start, with a dynamics
    gain drawn from `gains` per episode: states (n, episodes, steps + 1, 2), actions (n, episodes, steps, 2),
    the expert's noise-free actions `clean` (same shape: what imitation is scored against) and `goal`, `gain`."""
    n = len(goal)
    goals = goal.repeat_interleave(episodes, 0)
    start = sample_tasks(n * episodes, gen)[1]
    gain = gains[torch.randint(len(gains), (n * episodes,), generator=gen)]
    K = torch.tensor([lqr_value(dt, rho, float(b))[1] for b in gain])
    q, a = expert_rollout(start, goals, steps, dt, gain, K, noise, gen)
    clean = -K[:, None, None] * (q[:, :-1] - goals[:, None])

    def per_task(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, episodes, *t.shape[1:])

    return {"states": per_task(q), "actions": per_task(a), "clean": per_task(clean), "goal": goal,
            "gain": per_task(gain)}


def knn_policy(train_features: torch.Tensor, train_actions: torch.Tensor, test_features: torch.Tensor,
               k: int) -> torch.Tensor:
    """A nonparametric policy (VINN's): the mean action of the k demonstration states nearest in feature space.
    train_features (..., N, f), train_actions (..., N, d), test_features (..., M, f) -> actions (..., M, d)."""
    idx = torch.cdist(test_features, train_features).topk(k, dim=-1, largest=False).indices  # (..., M, k)
    gathered = torch.gather(train_actions.unsqueeze(-3).expand(*idx.shape[:-1], *train_actions.shape[-2:]), -2,
                            idx[..., None].expand(*idx.shape, train_actions.shape[-1]))  # (..., M, k, d)
    return gathered.mean(-2)


def ridge_policy(train_features: torch.Tensor, train_actions: torch.Tensor, test_features: torch.Tensor,
                 lam: float) -> torch.Tensor:
    """A linear policy head with a bias, fitted by ridge regression on the demonstrations: (..., M, d)."""
    return apply_heads(test_features, ridge_heads(train_features, train_actions, lam))


def imitation_error(predicted: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors over sum of squared expert actions, per task: (..., M, d) -> (...).
    0 is perfect imitation; 1 is as bad as doing nothing."""
    return ((predicted - expert) ** 2).sum((-1, -2)) / (expert**2).sum((-1, -2))


OBJECTIVES = ("inverse dynamics", "behaviour cloning", "forward dynamics")


class PretrainHeads(nn.Module):
    """One encoder per member (E = len(OBJECTIVES) * R, objective-major) and the head each objective needs:
    inverse dynamics predicts a from (z, z'), behaviour cloning a from z, forward dynamics o' from (z, a)."""

    def __init__(self, R: int, d_obs: int, d_act: int, k: int, hidden: int, head_depth: int = 0) -> None:
        super().__init__()
        self.R = R
        self.encoder = EMLP(len(OBJECTIVES) * R, d_obs, hidden, k)
        self.inverse = EMLP(R, 2 * k, hidden, d_act, head_depth)
        self.clone = EMLP(R, k, hidden, d_act, head_depth)
        self.forward_model = EMLP(R, k + d_act, hidden, d_obs, head_depth)
        with torch.no_grad():  # replicate r of every objective starts from the same encoder weights
            for p in self.encoder.parameters():
                p.copy_(p[:R].repeat(len(OBJECTIVES), *[1] * (p.dim() - 1)))

    def losses(self, obs: torch.Tensor, next_obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Per-member losses (E,) on a batch of transitions: obs, next_obs (N, D), act (N, d_act).
        Every encoder sees the same batch; every loss is a mean squared error."""
        R, N = self.R, len(obs)
        both = torch.cat([obs, next_obs])[None].expand(len(OBJECTIVES) * R, 2 * N, obs.shape[-1])
        z_inv, z_bc, z_fd = self.encoder(both).split(R)  # each (R, 2N, k)
        a = act.expand(R, *act.shape)  # (R, N, d_act)
        loss_id = ((self.inverse(torch.cat([z_inv[:, :N], z_inv[:, N:]], -1)) - a) ** 2).mean((1, 2))
        loss_bc = ((self.clone(z_bc[:, :N]) - a) ** 2).mean((1, 2))
        loss_fd = ((self.forward_model(torch.cat([z_fd[:, :N], a], -1)) - next_obs) ** 2).mean((1, 2))
        return torch.cat([loss_id, loss_bc, loss_fd])

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """The encoders' features of observations obs (..., D): (E, ..., k), objective-major."""
        flat = obs.reshape(1, -1, obs.shape[-1]).expand(self.encoder.layers[0].weight.shape[0], -1, -1)
        return self.encoder(flat).reshape(-1, *obs.shape[:-1], self.encoder.layers[-1].weight.shape[-1])


def ridge_heads(features: torch.Tensor, targets: torch.Tensor, lam: float) -> torch.Tensor:
    """Per-task ridge regression with a bias: features (..., N, k), targets (..., N, d) -> weights (..., k + 1, d)."""
    x = torch.cat([features, torch.ones_like(features[..., :1])], -1)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    eye[-1, -1] = 0.0  # the bias is not penalised
    return torch.linalg.solve(x.transpose(-1, -2) @ x + lam * eye, x.transpose(-1, -2) @ targets)


def apply_heads(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """features (..., N, k) times ridge weights (..., k + 1, d) -> predictions (..., N, d)."""
    return features @ weights[..., :-1, :] + weights[..., -1:, :]


def component_tokens(states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PASTA's component-level tokenisation: one token per scalar of every state and action.

    states (B, H, d_s), actions (B, H, d_a) -> tokens (B, H * (d_s + d_a), 2 * (d_s + d_a)) and their values
    (B, H * (d_s + d_a)). Token j of step t carries its value in slot c(j) of the first half and a one-hot of
    its component c(j) in the second, so a linear read-in gives each component its own value weight and
    its own embedding. Order within a step: s_1 .. s_ds, a_1 .. a_da."""
    values = torch.cat([states, actions], -1)  # (B, H, C)
    C = values.shape[-1]
    eye = torch.eye(C, dtype=values.dtype, device=values.device)
    tokens = torch.cat([values[..., None] * eye, eye.expand(*values.shape, C)], -1)  # (B, H, C, 2C)
    return tokens.flatten(1, 2), values.flatten(1, 2)


def vector_tokens(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Modality-level tokenisation: one token per state vector and one per action vector, interleaved
    s_1, a_1, s_2, a_2, ...: (B, H, d_s), (B, H, d_a) -> (B, 2H, d_s + d_a + 2), the last two entries a
    one-hot of the token's type."""
    B, H, ds = states.shape
    da = actions.shape[-1]
    s_tok = torch.cat([states, states.new_zeros(B, H, da), states.new_tensor([1.0, 0.0]).expand(B, H, 2)], -1)
    a_tok = torch.cat([actions.new_zeros(B, H, ds), actions, actions.new_tensor([0.0, 1.0]).expand(B, H, 2)], -1)
    return torch.stack([s_tok, a_tok], 2).flatten(1, 2)


def next_token_loss(out: torch.Tensor, tokens_values: torch.Tensor, tokenisation: str, d_s: int) -> torch.Tensor:
    """Causal next-token regression, per member (E,): the output at position i predicts the value(s) of token i + 1.

    Component tokens: out (E, B, L, 1), values (B, L). Vector tokens: out (E, B, L, d_s + d_a), tokens
    (B, L, d_s + d_a + 2); a state token is scored on its state entries, an action token on its action entries."""
    if tokenisation == "component":
        return ((out[..., :-1, 0] - tokens_values[:, 1:]) ** 2).mean((1, 2))  # mean over predicted scalars
    target = tokens_values[:, 1:, :-2]  # (B, L - 1, d_s + d_a)
    is_state = tokens_values[:, 1:, -2:-1]  # (B, L - 1, 1)
    mask = torch.cat([is_state.expand(-1, -1, d_s), (1 - is_state).expand(-1, -1, target.shape[-1] - d_s)], -1)
    return (((out[..., :-1, :] - target) ** 2) * mask).sum((1, 2, 3)) / mask.sum()


def action_predictions(out: torch.Tensor, tokenisation: str, d_s: int, d_a: int) -> torch.Tensor:
    """The model's action predictions (E, B, H, d_a) read off a causal forward pass: for component tokens
    the output one position before each action component, for vector tokens the output at each state token."""
    E, B, L = out.shape[:3]
    if tokenisation == "component":
        C = d_s + d_a
        steps = out[..., 0].reshape(E, B, L // C, C)  # position j predicts token j + 1
        return steps[..., d_s - 1:C - 1]
    return out.reshape(E, B, L // 2, 2, -1)[:, :, :, 0, d_s:]


def camera(states: torch.Tensor, grid: int, gen: torch.Generator, distractor: bool = True, omega: float = 0.3,
           ball_brightness: float = 1.5) -> torch.Tensor:
    """The learner's view of joint-angle trajectories states (..., T + 1, 2): images (..., T + 1, grid * grid),
    each trajectory with (if `distractor`) a ball circling at `omega` per step from its own random phase.
    Draws one uniform phase per trajectory from `gen` whether or not the ball is drawn."""
    flat = states.reshape(-1, *states.shape[-2:])
    ball = ball_path(2 * torch.pi * torch.rand(len(flat), generator=gen), flat.shape[1] - 1, omega)
    image = render(flat, grid, ball if distractor else None, ball_brightness=ball_brightness)
    return image.reshape(*states.shape[:-1], grid * grid)


def transition_loss(model: PretrainHeads, idx: torch.Tensor, obs: torch.Tensor, next_obs: torch.Tensor,
                    act: torch.Tensor) -> torch.Tensor:
    """The pretraining loss of a batch idx (N,) of transitions obs, next_obs (M, D), act (M, d_act): the sum of
    the members' losses, a scalar (members are independent, so each gets its own gradient)."""
    return model.losses(obs[idx], next_obs[idx], act[idx]).sum()


def few_shot_errors(train_x: torch.Tensor, train_a: torch.Tensor, test_x: torch.Tensor, test_a: torch.Tensor,
                    model: PretrainHeads | None = None, k: int = 3, lam: float = 1e-3) -> dict[str, torch.Tensor]:
    """Few-shot imitation errors of a k-nearest-neighbour policy and a ridge linear head, averaged over tasks.

    train_x (n, N, D) and train_a (n, N, d_act): the demonstrations of n tasks; test_x (n, M, D) and test_a
    (n, M, d_act): test states and the expert's actions there. On the model's frozen features, errors per member
    (E,); without a model, on the raw observations, scalars."""
    with torch.no_grad():
        f_train, f_test = (train_x, test_x) if model is None else (model.features(train_x), model.features(test_x))
        return {"nearest neighbours": imitation_error(knn_policy(f_train, train_a, f_test, k), test_a).mean(-1),
                "linear head": imitation_error(ridge_policy(f_train, train_a, f_test, lam), test_a).mean(-1)}


def arm_trajectories(n: int, horizon: int, gains: torch.Tensor, dt: float, rho: float, noise: float,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy expert demonstrations of `horizon` steps, one per random task, each with a gain drawn from `gains`;
    the state is (joint angles, goal pose): states (n, horizon, 4), actions (n, horizon, 2)."""
    d = demonstrations(sample_tasks(n, gen)[0], 1, horizon, dt, rho, gains, noise, gen)
    q, goal = d["states"][:, 0, :-1], d["goal"][:, None].expand(-1, horizon, 2)
    return torch.cat([q, goal], -1), d["actions"][:, 0]


def action_state_tokens(tokenisation: str, states: torch.Tensor,
                        actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(model inputs, next-token targets) of states (B, H, d_s), actions (B, H, d_a) for one tokenisation:
    "component" gives `component_tokens` (inputs (B, H (d_s + d_a), 2 (d_s + d_a)), values (B, H (d_s + d_a)));
    "vector" gives `vector_tokens` (B, 2H, d_s + d_a + 2) as both."""
    if tokenisation == "component":
        return component_tokens(states, actions)
    t = vector_tokens(states, actions)
    return t, t
