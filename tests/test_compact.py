"""Compact models: function-preserving growth, MiniLM's relations, TinyViT's stored top-k targets."""
import math

import pytest
import torch
import torch.nn.functional as F

from ptmlib.lm import ensemble_lm
from ptmlib.objectives import compact

V, T = 20, 12


def trained_like(E=1, width=8, layers=1, heads=2, seed=0):
    """A small model whose weights are far from their init (LayerNorm gains, biases: all non-trivial)."""
    torch.manual_seed(seed)
    m = ensemble_lm(E, V, width, layers, heads, max_len=T)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def ids(B=3, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("new_blocks", [0, 2])
def test_grow_preserves_the_function_and_doubles_the_shapes(new_blocks):
    small = trained_like(layers=2)
    big = compact.grow(small, new_blocks=new_blocks, gen=torch.Generator().manual_seed(1))
    assert big.embed.shape == (1, V, 16) and len(big.blocks) == 2 + new_blocks and big.blocks[0].H == 4
    x = ids()[None]
    with torch.no_grad():
        a, b = small(x, causal=True), big(x, causal=True)
    assert (a - b).abs().max() < 1e-4 * a.abs().max()


def test_grow_breaks_the_symmetry_of_the_copies_only_with_spread():
    small = trained_like()
    even = compact.grow(small, spread=0.0)
    uneven = compact.grow(small, spread=0.25, gen=torch.Generator().manual_seed(1))
    w_even, w_uneven = even.blocks[0].fc.weight[0], uneven.blocks[0].fc.weight[0]  # (2C, 8C)
    assert torch.equal(w_even[:8], w_even[8:])  # both copies of an input get half of its weight
    assert not torch.allclose(w_uneven[:8], w_uneven[8:])
    assert torch.allclose(w_uneven[:8] + w_uneven[8:], small.blocks[0].fc.weight[0].repeat(1, 2))


def test_new_blocks_start_as_the_identity():
    big = compact.grow(trained_like(), new_blocks=1)
    x = ids()[None]
    states = big.hidden(x, causal=True)
    assert torch.equal(states[-1], states[-2])
    assert big.blocks[1].fc_out.weight.abs().max() == 0 and big.blocks[1].qkv.weight.abs().max() > 0


def test_grow_rejects_alibi():
    m = ensemble_lm(1, V, 8, 1, 2, alibi=True)
    with pytest.raises(ValueError, match="ALiBi"):
        compact.grow(m)


def test_relations_are_the_blocks_attention_maps():
    m = trained_like(layers=2)
    x = ids()[None]
    states = m.hidden(x, causal=True)
    att, val = compact.relations(m, states[-2], heads=2)
    assert att.shape == val.shape == (1, 3, 2, T, T)
    assert torch.allclose(att.sum(-1), torch.ones(1, 3, 2, T)) and att.triu(1).abs().max() == 0
    # the attention maps reproduce the block's own attention output: maps @ v, projected, equals block.attn
    block = m.blocks[-1]
    h = block.ln_1(states[-2].reshape(1, 3 * T, -1))
    v = block.qkv(h).split(8, -1)[2].reshape(1, 3, T, 2, 4).transpose(2, 3)
    y = (att @ v).transpose(2, 3).reshape(1, 3 * T, 8)
    expected = block.attn(h.reshape(1, 3, T, 8), None, True).reshape(1, 3 * T, 8)
    assert torch.allclose(block.proj(y), expected, atol=1e-5)


def test_relation_heads_split_a_wider_model():
    att, val = compact.relations(trained_like(width=16, heads=4), torch.randn(1, 2, T, 16), heads=2)
    assert att.shape == (1, 2, 2, T, T)
    with pytest.raises(ValueError):
        compact.relations(trained_like(width=16, heads=4), torch.randn(1, 2, T, 16), heads=3)


def test_minilm_loss_is_zero_for_equal_relations_and_positive_otherwise():
    m = trained_like()
    x = ids()[None]
    rel = compact.relations(m, m.hidden(x, causal=True)[-2], 2)
    assert compact.minilm_loss(rel, rel).abs().max() < 1e-6
    other = compact.relations(trained_like(seed=1), trained_like(seed=1).hidden(x, causal=True)[-2], 2)
    loss = compact.minilm_loss(rel, other)
    # by hand: KL summed over keys, mean over batch, heads and queries, for both relations
    kl = sum((torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1).mean() for p, q in zip(rel, other))
    assert loss.shape == (1,) and loss[0] > 0 and torch.allclose(loss[0], kl, atol=1e-5)


def test_topk_round_trip_keeps_the_largest_probabilities_and_the_total_mass():
    logits = torch.randn(5, 7, V)
    values, index = compact.topk_targets(logits, 4)
    assert values.dtype == torch.float16 and index.dtype == torch.uint8 and values.shape == (5, 7, 4)
    dense = compact.dense_targets(values, index, V)
    p = logits.softmax(-1)
    assert torch.allclose(dense.sum(-1), torch.ones(5, 7), atol=1e-3)
    assert torch.allclose(dense.gather(-1, index.long()), p.topk(4, -1).values, atol=1e-3)
    rest = (1 - p.topk(4, -1).values.sum(-1)) / (V - 4)
    smallest = dense.sort(-1).values[..., 0]
    assert torch.allclose(smallest, rest, atol=1e-3)
    full = compact.dense_targets(*compact.topk_targets(logits, V), V)
    assert torch.allclose(full, p, atol=1e-3)  # k = V stores everything


def test_soft_cross_entropy_equals_cross_entropy_for_one_hot_targets():
    logits = torch.randn(6, V)
    y = torch.randint(0, V, (6,))
    assert torch.allclose(compact.soft_cross_entropy(logits, F.one_hot(y, V).float()), F.cross_entropy(logits, y))


def test_student_losses_match_their_definitions():
    students, teacher = trained_like(E=3), trained_like(width=16, heads=4, seed=2)
    x = ids(B=2)
    online, rel = compact.teacher_outputs(teacher, x, heads=2)
    stored = compact.dense_targets(*compact.topk_targets(online.log(), 5), V)
    parts = compact.student_losses(students, x, online, stored, rel, heads=2)
    assert all(v.shape == (3,) for v in parts.values())
    logits = students(x.expand(3, *x.shape), causal=True)[:, :, :-1]
    for e in range(3):
        assert torch.allclose(parts["hard"][e], F.cross_entropy(logits[e].reshape(-1, V), x[:, 1:].reshape(-1)), atol=1e-5)
        assert torch.allclose(parts["online"][e], compact.soft_cross_entropy(logits[e], online[:, :-1]), atol=1e-5)
    assert (parts["minilm"] > 0).all()
    # distillation towards the teacher's own distribution: cross-entropy >= the teacher's entropy
    entropy = -(online[:, :-1] * online[:, :-1].log()).sum(-1).mean()
    assert (parts["online"] >= entropy - 1e-5).all()


def test_steps_to_reach():
    assert compact.steps_to_reach([0, 10, 20], [3.0, 2.0, 1.0], 2.0) == 10
    assert compact.steps_to_reach([0, 10], [3.0, 2.5], 2.0) == math.inf


def test_step_saving_conventions():
    steps = [0, 10, 20, 30, 40]
    assert compact.step_saving(steps, [3, 2, 1, 1, 1], [3, 3, 3, 2, 1], 1.0) == pytest.approx(0.5)  # 20 vs 40
    assert compact.step_saving(steps, [3, 3, 3, 3, 3], [3, 3, 3, 3, 3], 1.0) == 0.0  # nobody reaches it
    assert compact.step_saving(steps, [3, 3, 3, 3, 3], [3, 2, 1, 1, 1], 1.0) == -1.0
    assert compact.step_saving(steps, [3, 1, 1, 1, 1], [3, 3, 3, 3, 3], 1.0) == pytest.approx(0.75)  # 10 vs >= 40
    assert compact.step_saving(steps, [1, 1, 1, 1, 1], [3, 3, 3, 2, 1], 1.0) == 1.0  # there at growth
