"""Token ensembles: embedding read-in, per-member losses and learning rates, pooled features, FLOPs."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ptmlib import lm
from ptmlib.objectives import denoising as O
from ptmlib.ensemble import member_state
from ptmlib.text import PAD

V, T = 50, 12


def batches(E=3, B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(30, V, (B, T), generator=g)
    makers = [lambda: O.causal_lm(ids), lambda: O.mlm(ids, 0.3, V, g), lambda: O.prefix_lm(ids, 5)]
    return [makers[e % 3]() for e in range(E)]


def model(E=3, seed=0):
    torch.manual_seed(seed)
    return lm.ensemble_lm(E, V, 16, 2, 2, T + 2)


def test_embedding_read_in_and_scored_losses_match_the_full_computation():
    m, bs = model(), batches()
    inputs, targets, mask = lm.stack(bs)
    h0 = m.hidden(inputs, mask)[0]
    assert torch.allclose(h0[1], m.embed[1][inputs[1]] + m.pos[1, :, :inputs.shape[2]])
    logits = m(inputs, mask=mask)  # the full computation: every position through the read-out
    full = torch.stack([F.cross_entropy(logits[e].reshape(-1, V), targets[e].reshape(-1), ignore_index=-100)
                        for e in range(3)])
    assert torch.allclose(lm.scored_losses(m, inputs, targets, mask), full, atol=1e-6)


def test_a_member_sees_only_its_own_batch():
    m, bs = model(), batches()
    alone = model(E=1)
    alone.load_state_dict(member_state(m, 2))
    assert torch.allclose(lm.member_losses(m, bs)[2], lm.member_losses(alone, [bs[2]])[0], atol=1e-6)


def test_stack_pads_unequal_rows_without_changing_losses():
    m = model(E=2)
    b0, b1 = batches(E=2, B=4)
    b1 = O.LMBatch(b1.inputs[:2], b1.targets[:2], b1.prefix[:2])
    inputs, targets, _ = lm.stack([b0, b1])
    assert inputs.shape[:2] == (2, 4) and (targets[1, 2:] == -100).all()
    one = model(E=1)
    one.load_state_dict(member_state(m, 1))
    assert torch.allclose(lm.member_losses(m, [b0, b1])[1], lm.member_losses(one, [b1])[0], atol=1e-6)


def test_member_adamw_step_equals_plain_adamw_at_each_members_rate():
    # Reference: the same ensemble trained by torch's AdamW at lr a (read member 0) and at lr b (read
    # member 1); same batches and weights, so gradients are bitwise equal and only the learning rate
    # differs. One step: later steps would amplify rounding through Adam's normalisation in
    # directions whose gradient is exactly zero in exact arithmetic (the key biases).
    bs = batches(E=2)
    lrs = torch.tensor([3e-3, 1e-2])
    runs = {}
    for name, lr in (("mixed", 1.0), ("a", 3e-3), ("b", 1e-2)):
        m = model(E=2)
        opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.1)
        inputs, targets, mask = lm.stack(bs)
        lm.scored_losses(m, inputs, targets, mask).sum().backward()
        lm.member_adamw_step(opt, lrs) if name == "mixed" else opt.step()
        runs[name] = m.state_dict()
    for k, v in runs["mixed"].items():
        assert torch.allclose(v[0], runs["a"][k][0], atol=1e-7), k
        assert torch.allclose(v[1], runs["b"][k][1], atol=1e-7), k
    assert not torch.allclose(runs["a"]["embed"], runs["b"]["embed"], atol=1e-4)  # the rates matter


def test_member_with_zero_rate_does_not_move():
    m, bs = model(E=2), batches(E=2)
    start = copy.deepcopy(member_state(m, 1))
    opt = torch.optim.AdamW(m.parameters(), lr=1.0, weight_decay=0.1)
    inputs, targets, mask = lm.stack(bs)
    lm.scored_losses(m, inputs, targets, mask).sum().backward()
    lm.member_adamw_step(opt, torch.tensor([1e-3, 0.0]))
    assert all(torch.equal(v[1:2], start[k]) for k, v in m.state_dict().items())


def test_member_evals_report_each_members_loss():
    m, bs = model(), batches()
    hooks = lm.member_evals(m, {"x": bs}, ["a", "b", "c"])
    values = [hooks[f"x/{n}"]() for n in "abc"]
    assert torch.allclose(torch.tensor(values), lm.member_losses(m, bs), atol=1e-6)


def test_pooled_features_ignore_padding_and_respect_causality():
    m = model(E=2)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(30, V, (3, 8), generator=g)
    padded = torch.cat([ids, torch.full((3, 4), PAD)], 1)
    a = lm.pooled_features(m, ids, [True, False])
    b = lm.pooled_features(m, padded, [True, False])
    assert torch.allclose(a, b, atol=1e-5)
    # causal: changing the last token changes only the last position's state
    changed = ids.clone()
    changed[:, -1] = 30 + (changed[:, -1] - 29) % 20
    mask = O.attention_mask(torch.zeros(3, dtype=torch.long), 8)
    h1 = m.hidden(ids.expand(2, 3, 8), torch.cat([mask, mask]))[-1][1]
    h2 = m.hidden(changed.expand(2, 3, 8), torch.cat([mask, mask]))[-1][1]
    assert torch.allclose(h1[:, :-1], h2[:, :-1], atol=1e-6) and not torch.allclose(h1[:, -1], h2[:, -1])


def test_step_flops_match_a_flop_counter():
    m = model(E=1)
    (b,) = batches(E=1, B=8)
    inputs, targets, mask = lm.stack([b])
    with FlopCounterMode(display=False) as counter:
        lm.scored_losses(m, inputs, targets, mask).sum().backward()
    counted = counter.get_total_flops()
    assert abs(lm.step_flops(m, b) - counted) / counted < 0.25  # the rule omits attention scores


def test_race_keeps_twins_equal_freezes_lr_zero_and_records_every_eval():
    from ptmlib import markov
    from ptmlib.continual import learning as CL
    from ptmlib.ensemble import member_state, stack_members
    from ptmlib.profiles import resolve_profile

    P = resolve_profile("smoke", seed=0, cuda_available=False)
    src = markov.MarkovSource(8, 3, 0.5, seed=0)
    g = torch.Generator().manual_seed(0)
    pool, ev = src.sample(64, 9, g), src.sample(16, 8, g)
    torch.manual_seed(0)
    one = lm.ensemble_lm(1, 8, 8, 1, n_head=2, max_len=8)
    twins = lm.ensemble_lm(2, 8, 8, 1, n_head=2, max_len=8)
    twins.load_state_dict(stack_members([member_state(one, 0)] * 2))
    draw = CL.mixed_batches(pool, pool, 4, 0.0)
    curves = lm.race(twins, [draw, draw], [lambda s: 1e-2, lambda s: 0.0], 6, P, {"x": (src, ev)}, eval_every=3)
    assert [s for s, _ in curves["x"]] == [0, 3, 6]
    start, end = curves["x"][0][1], curves["x"][-1][1]
    assert float(start[0]) == pytest.approx(float(start[1]))  # same initialisation
    assert float(end[1]) == pytest.approx(float(start[1]))  # lr 0: the member does not move
    assert float(end[0]) < float(start[0])  # lr 1e-2: it learns


def test_race_with_a_shared_batch_function_trains_every_member_on_the_same_batches():
    from ptmlib import markov
    from ptmlib.ensemble import member_state, stack_members
    from ptmlib.profiles import resolve_profile

    P = resolve_profile("smoke", seed=0, cuda_available=False)
    src = markov.MarkovSource(8, 3, 0.5, seed=0)
    g = torch.Generator().manual_seed(0)
    pool, ev = src.sample(64, 9, g), src.sample(16, 8, g)
    draw = lambda gen: pool[torch.randint(0, len(pool), (4,), generator=gen)]  # noqa: E731
    torch.manual_seed(0)
    one = lm.ensemble_lm(1, 8, 8, 1, n_head=2, max_len=8)
    alone = lm.race(copy.deepcopy(one), [draw], [lambda s: 1e-2], 5, P, {"x": (src, ev)}, eval_every=5)["x"]
    twins = lm.ensemble_lm(2, 8, 8, 1, n_head=2, max_len=8)
    twins.load_state_dict(stack_members([member_state(one, 0)] * 2))
    shared = lm.race(twins, draw, [lambda s: 1e-2] * 2, 5, P, {"x": (src, ev)}, eval_every=5)["x"]
    assert [s for s, _ in shared] == [0, 5]
    assert float(shared[-1][1][0]) == float(shared[-1][1][1])  # one draw per step, shared: twins stay twins
    assert float(shared[-1][1][0]) == pytest.approx(float(alone[-1][1][0]), abs=1e-5)  # the same as training alone
    assert float(shared[-1][1][0]) < float(shared[0][1][0])
    with pytest.raises(ValueError):
        lm.race(twins, [draw], [lambda s: 1e-2] * 2, 1, P, {"x": (src, ev)})
