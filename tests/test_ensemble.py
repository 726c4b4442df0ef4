"""The batched ensemble: each member is an ordinary pre-LN transformer, and members are independent."""
import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.ensemble import EBlock, EnsembleTransformer, member_state


def test_block_equals_pytorch_encoder_layer_for_every_member():
    torch.manual_seed(0)
    E, B, T, C, H = 3, 2, 7, 16, 4
    block = EBlock(E, C, H, n_layer=2)
    for p in block.parameters():  # non-trivial LayerNorm affines and biases too
        nn.init.normal_(p, std=0.3)
    x = torch.randn(E, B, T, C)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(T)
    ours = block(x, None, causal=True)
    for e in range(E):
        ref = nn.TransformerEncoderLayer(C, H, 4 * C, dropout=0.0, activation=lambda t: F.gelu(t, approximate="tanh"),
                                         batch_first=True, norm_first=True)
        with torch.no_grad():
            ref.self_attn.in_proj_weight.copy_(block.qkv.weight[e].T)
            ref.self_attn.in_proj_bias.copy_(block.qkv.bias[e, 0])
            ref.self_attn.out_proj.weight.copy_(block.proj.weight[e].T)
            ref.self_attn.out_proj.bias.copy_(block.proj.bias[e, 0])
            ref.linear1.weight.copy_(block.fc.weight[e].T)
            ref.linear1.bias.copy_(block.fc.bias[e, 0])
            ref.linear2.weight.copy_(block.fc_out.weight[e].T)
            ref.linear2.bias.copy_(block.fc_out.bias[e, 0])
            for ln, mine in ((ref.norm1, block.ln_1), (ref.norm2, block.ln_2)):
                ln.weight.copy_(mine.weight[e, 0])
                ln.bias.copy_(mine.bias[e, 0])
        ref.eval()
        assert torch.allclose(ours[e], ref(x[e], src_mask=causal, is_causal=True), atol=1e-5)


def test_members_are_independent_and_gradients_do_not_leak():
    torch.manual_seed(1)
    model = EnsembleTransformer(4, 3, 2, width=16, n_layer=2, n_head=2, max_len=6)
    z = torch.randn(4, 5, 6, 3)
    out = model(z, causal=True)
    z2 = z.clone()
    z2[2] += 1.0  # change member 2's inputs only
    out2 = model(z2, causal=True)
    assert torch.equal(out[[0, 1, 3]], out2[[0, 1, 3]]) and not torch.allclose(out[2], out2[2])
    out[1].sum().backward()
    for p in model.parameters():
        assert p.grad[[0, 2, 3]].abs().max() == 0 and p.grad[1].abs().max() > 0


def test_member_of_an_ensemble_equals_an_ensemble_of_one():
    torch.manual_seed(2)
    big = EnsembleTransformer(3, 3, 2, width=16, n_layer=2, n_head=2, max_len=6)
    one = EnsembleTransformer(1, 3, 2, width=16, n_layer=2, n_head=2, max_len=6)
    one.load_state_dict(member_state(big, 1))
    z = torch.randn(3, 4, 6, 3)
    assert torch.allclose(big(z, causal=True)[1], one(z[1:2], causal=True)[0], atol=1e-6)


def test_causal_outputs_ignore_the_future_and_set_models_ignore_order():
    torch.manual_seed(3)
    seq = EnsembleTransformer(2, 3, 1, width=16, n_layer=2, n_head=2, max_len=8)
    z = torch.randn(2, 3, 8, 3)
    z2 = z.clone()
    z2[:, :, 5:] = torch.randn(2, 3, 3, 3)
    assert torch.allclose(seq(z, causal=True)[:, :, :5], seq(z2, causal=True)[:, :, :5], atol=1e-6)
    # without positions and with a mask that only looks at the first 4 tokens, permuting them changes nothing
    sets = EnsembleTransformer(2, 3, 1, width=16, n_layer=2, n_head=2, max_len=0)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, :4] = True
    perm = torch.tensor([2, 0, 3, 1, 4, 5, 6, 7])
    assert torch.allclose(sets(z, mask=mask)[:, :, 4:], sets(z[:, :, perm], mask=mask)[:, :, 4:], atol=1e-5)


def test_stack_members_inverts_member_state():
    from ptmlib.ensemble import stack_members

    torch.manual_seed(4)
    a, b = EnsembleTransformer(2, 3, 2, 16, 1, 2, max_len=4), EnsembleTransformer(1, 3, 2, 16, 1, 2, max_len=4)
    three = EnsembleTransformer(3, 3, 2, 16, 1, 2, max_len=4)
    three.load_state_dict(stack_members([member_state(a, 1), member_state(b, 0), member_state(a, 0)]))
    z = torch.randn(3, 2, 4, 3)
    out = three(z, causal=True)
    pair = lambda i: z[i:i + 1].expand(2, -1, -1, -1)
    assert torch.allclose(out[0], a(pair(0), causal=True)[1]) and torch.allclose(out[1], b(z[1:2], causal=True)[0])
    assert torch.allclose(out[2], a(pair(2), causal=True)[0])


def test_tile_members_gives_each_arm_the_same_starts():
    from ptmlib.ensemble import tile_members

    torch.manual_seed(5)
    model = EnsembleTransformer(6, 3, 2, 16, 1, 2, max_len=4)
    before = [member_state(model, e) for e in range(3)]
    tile_members(model, 3)
    z = torch.randn(1, 2, 4, 3).expand(6, -1, -1, -1)
    out = model(z, causal=True)  # (6, 2, 4, 2)
    for e in range(6):
        assert all(torch.equal(member_state(model, e)[k], before[e % 3][k]) for k in before[0])
    assert torch.equal(out[:3], out[3:]) and not torch.allclose(out[0], out[1])


def test_alibi_mask_is_the_distance_penalty_plus_the_visibility_mask():
    from ptmlib.ensemble import alibi_mask

    slopes = torch.tensor([0.5, 0.25])
    m = alibi_mask(slopes, 4, None, causal=True, device=torch.device("cpu"))[0]
    for h in range(2):
        for i in range(4):
            for j in range(4):
                expected = -float(slopes[h]) * abs(i - j) if j <= i else float("-inf")
                assert float(m[h, i, j]) == expected
    per_seq = torch.ones(3, 1, 4, 4, dtype=torch.bool)
    per_seq[1, :, :, 3] = False
    m = alibi_mask(slopes, 4, per_seq, causal=False, device=torch.device("cpu"))
    assert m.shape == (3, 2, 4, 4) and torch.isinf(m[1, :, :, 3]).all() and torch.isfinite(m[0]).all()


def test_alibi_slopes_follow_press_et_al_and_stay_local_for_few_heads():
    from ptmlib.ensemble import alibi_mask, alibi_slopes

    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -k for k in range(1, 9)]))  # the paper's 8-head set
    assert torch.allclose(alibi_slopes(16)[1::2], alibi_slopes(8))  # 16 heads interleave the 8-head slopes
    assert torch.allclose(alibi_slopes(2), torch.tensor([0.5, 0.25]))  # few heads: the most local of the 8
    weights = alibi_mask(alibi_slopes(2), 64, None, False, torch.device("cpu"))[0].softmax(-1)  # (H, T, T), q.k = 0
    on_neighbours = weights[:, 32, 31] + weights[:, 32, 33]  # (H,): e^-s / (1 + 2 e^-s / (1 - e^-s)), twice
    e = torch.exp(-alibi_slopes(2))
    assert torch.allclose(on_neighbours, 2 * e / (1 + 2 * e / (1 - e)), atol=1e-3)  # 32 tokens each side ~ infinite
    assert float(on_neighbours[0]) > 0.25  # vs 0.07 with the slopes 2^(-8h/H) = 1/16, 1/256


def test_alibi_model_is_translation_invariant_and_has_no_positions():
    torch.manual_seed(0)
    m = EnsembleTransformer(1, 0, 7, 16, 2, 2, vocab_size=7, alibi=True)
    assert m.pos is None
    x = torch.randint(0, 7, (1, 2, 6))
    y = m(torch.cat([x, x], 2), causal=True)  # the second copy sees the first: outputs differ
    # bidirectional mask restricted to a window: a window's outputs do not depend on where it sits
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[:6, :6] = mask[6:, 6:] = True
    z = m(torch.cat([x, x], 2), mask=mask)
    assert torch.allclose(z[..., :6, :], z[..., 6:, :], atol=1e-5)
    assert not torch.allclose(y[..., :6, :], y[..., 6:, :], atol=1e-3)
