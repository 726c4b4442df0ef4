"""Elastic models: slices equal small models, chains, stitches, exits and FLOP counts behave as defined."""
import pytest
import torch
import torch.nn.functional as F

from ptmlib.objectives import elastic as el

D, K, C, L = 12, 5, 8, 3


def model(seed=0, width=C, depth=L):
    torch.manual_seed(seed)
    m = el.ResidualMLP(D, K, width, depth)
    with torch.no_grad():  # non-trivial norms and biases, so slicing errors would show
        for p in (m.ln_w, m.ln_b, m.b1, m.b2, m.norm.weight, m.norm.bias):
            p.add_(0.3 * torch.randn(p.shape))
    return m


def x(n=7, seed=1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def test_a_slice_is_the_small_model_with_the_sliced_weights():
    big = model()
    w, d = 4, 2
    small = el.ResidualMLP(D, K, w, d)
    e = small.expand * w
    with torch.no_grad():
        small.stem.weight.copy_(big.stem.weight[:w]); small.stem.bias.copy_(big.stem.bias[:w])
        for name, sl in [("ln_w", (slice(0, d), slice(0, w))), ("ln_b", (slice(0, d), slice(0, w))),
                         ("w1", (slice(0, d), slice(0, e), slice(0, w))), ("b1", (slice(0, d), slice(0, e))),
                         ("w2", (slice(0, d), slice(0, w), slice(0, e))), ("b2", (slice(0, d), slice(0, w)))]:
            getattr(small, name).copy_(getattr(big, name)[sl])
        small.norm.weight.copy_(big.norm.weight[:w]); small.norm.bias.copy_(big.norm.bias[:w])
        small.head.weight.copy_(big.head.weight[:, :w]); small.head.bias.copy_(big.head.bias)
    assert torch.allclose(big(x(), w, d), small(x()), atol=1e-6)
    assert not torch.allclose(big(x(), w, d), big(x()), atol=1e-3)  # the slice is a different network


def test_chains_skip_and_repeat_blocks():
    m = model()
    assert torch.allclose(m(x(), chain=[0, 1, 2]), m(x()))
    h = m.embed(x())
    h = m.block(m.block(h, 1), 1)
    assert torch.allclose(m(x(), chain=[1, 1]), m.readout(h))
    assert el.chain_of((1, 0, 2)) == [0, 2, 2]
    counts = el.chain_counts(3, 2)
    assert len(counts) == 27 and (1, 1, 1) in counts and len(set(counts)) == 27


def test_all_chain_predictions_match_running_each_chain():
    m = model()
    preds, lengths = el.all_chain_predictions(m, x(20), max_repeat=2)
    for j, c in enumerate(el.chain_counts(L, 2)):
        assert torch.equal(preds[j], m(x(20), chain=el.chain_of(c)).argmax(-1))
        assert lengths[j] == sum(c)


def test_shortest_correct_picks_the_cheapest_right_chain():
    preds = torch.tensor([[0, 1, 2], [0, 0, 0], [3, 1, 1]])  # 3 chains x 3 samples
    lengths = torch.tensor([4, 1, 2])
    out = el.shortest_correct(preds, lengths, torch.tensor([0, 1, 4]))
    assert out.tolist() == [1.0, 2.0, float("inf")]


def test_sandwich_sizes_and_the_loss():
    g = torch.Generator().manual_seed(0)
    sizes = el.sample_sizes((2, 4, 8), (1, 2, 3), g, n_random=3)
    assert sizes[:2] == [(8, 3), (2, 1)] and len(sizes) == 5
    assert all(w in (2, 4, 8) and d in (1, 2, 3) for w, d in sizes)
    m, xb, y = model(), x(), torch.randint(K, (7,), generator=torch.Generator().manual_seed(2))
    want = torch.stack([F.cross_entropy(m(xb, w, d), y) for w, d in sizes]).mean()
    assert torch.allclose(el.sub_network_loss(m, xb, y, sizes), want)
    assert not torch.allclose(el.sub_network_loss(m, xb, y, sizes, distill=0.5), want)
    grads = torch.autograd.grad(el.sub_network_loss(m, xb, y, [(8, 3), (2, 1)], distill=1.0), m.w1)[0]
    assert grads[2].abs().max() > 0  # the teacher (full depth) trains block 2


def test_counted_flops_match_the_formulas():
    m = model()
    assert el.counted_flops(lambda: m(x(1))) == el.network_flops(D, K, C, L)
    assert el.counted_flops(lambda: m(x(1), 4, 2)) == el.network_flops(D, K, 4, 2)
    assert el.counted_flops(lambda: m(x(3))) == 3 * el.network_flops(D, K, C, L)
    assert el.block_flops(8) == 2 * 2 * 8 * 16


def test_least_squares_stitch_recovers_a_linear_map():
    a = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    true = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    layer = el.fit_stitch(a, a @ true + 0.5, ridge=1e-8)
    assert torch.allclose(layer(a), a @ true + 0.5, atol=1e-3)


def test_stitched_family_endpoints_are_the_anchors_and_flops_count():
    small, large = model(0, width=4), model(1, width=C)
    fam = el.StitchedFamily(small, large, x(50))
    assert torch.allclose(fam(x(), 0), large(x())) and torch.allclose(fam(x(), L), small(x()))
    for k in range(1, L):
        assert el.counted_flops(lambda: fam(x(1), k)) == el.stitched_flops(D, K, 4, C, L, k)
    flops = [el.stitched_flops(D, K, 4, C, L, k) for k in range(1, L)]
    assert flops == sorted(flops, reverse=True)  # more small blocks, fewer FLOPs
    with pytest.raises(ValueError):
        el.StitchedFamily(model(0, width=4, depth=2), large, x(50))


def test_exit_probabilities_are_sequential_and_sum_to_one():
    g = torch.tensor([[0.5, 0.5, 0.9], [1.0, 0.3, 0.2], [0.0, 0.0, 0.0]])
    q = el.exit_probabilities(g)
    assert torch.allclose(q.sum(1), torch.ones(3))
    assert torch.allclose(q[0], torch.tensor([0.5, 0.25, 0.25]))
    assert torch.allclose(q[1], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(q[2], torch.tensor([0.0, 0.0, 1.0]))


def test_exit_loss_weighs_cost_and_threshold_exits():
    logits = torch.zeros(2, 3, K)
    gates = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    costs = torch.tensor([1 / 3, 2 / 3, 1.0])
    y = torch.tensor([0, 1])
    base = el.exit_loss(logits, gates, y, costs, 0.0)
    assert torch.allclose(base, torch.log(torch.tensor(float(K))))
    assert torch.allclose(el.exit_loss(logits, gates, y, costs, 1.0) - base, torch.tensor((1 / 3 + 1.0) / 2))
    probs = torch.tensor([[[0.5, 0.5], [0.95, 0.05], [0.6, 0.4]], [[0.4, 0.6], [0.7, 0.3], [0.5, 0.5]]])
    assert el.threshold_exits(probs, 0.9).tolist() == [1, 2]
    assert el.gated_exits(torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.1, 0.1]])).tolist() == [1, 2]


def test_dynamic_exits_match_the_static_computation_and_save_flops():
    m = model()
    heads = el.ExitHeads(L, C, K)
    with torch.no_grad():
        heads.gate_b.copy_(torch.tensor([0.0, 0.0, 0.0]))
        heads.gate_w.normal_(generator=torch.Generator().manual_seed(3))
    xs = x(40)
    feats = torch.stack(m.states(xs)[1:], 1)
    logits, gates = heads(feats)
    exits = el.gated_exits(gates)
    pred, exit_at = el.run_with_exits(m, heads, xs)
    assert torch.equal(exit_at, exits)
    assert torch.equal(pred, logits[torch.arange(40), exits].argmax(-1))
    assert 0 < (exits < L - 1).sum() < 40  # some exit early, some do not
    assert el.counted_flops(lambda: el.run_with_exits(m, heads, xs)) < 40 * (el.network_flops(D, K, C, L) + L * (2 * C * K + 2 * K))


def test_digit_pairs_label_is_the_sum_mod_10():
    xs = torch.arange(5.0)[:, None].repeat(1, 64)
    ys = torch.tensor([3, 9, 4, 7, 0])
    px, py = el.digit_pairs(xs, ys, 30, torch.Generator().manual_seed(0))
    a, b = px[:, 0].long(), px[:, 64].long()
    assert px.shape == (30, 128) and torch.equal(py, (ys[a] + ys[b]) % 10)


def test_threshold_rule_in_deployed_exits_matches_threshold_exits():
    m = model()
    heads = el.ExitHeads(L, C, K)
    xs = x(40)
    logits, _ = heads(torch.stack(m.states(xs)[1:], 1))
    tau = float(logits.softmax(-1).max(-1).values[:, 0].median())  # about half leave at the first exit
    pred, exit_at = el.run_with_exits(m, heads, xs, tau=tau)
    want = el.threshold_exits(logits.softmax(-1), tau)
    assert torch.equal(exit_at, want) and 0 < (want == 0).sum() < 40
    assert torch.equal(pred, logits[torch.arange(40), want].argmax(-1))
