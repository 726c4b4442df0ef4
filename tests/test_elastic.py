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


def task(n=256, seed=4):
    """A learnable toy task: x (n, D), y (n,) = arg-max of a fixed linear map of x."""
    xs = torch.randn(n, D, generator=torch.Generator().manual_seed(seed))
    return xs, (xs @ torch.randn(D, K, generator=torch.Generator().manual_seed(seed + 1))).argmax(-1)


def smoke():
    from ptmlib import resolve_profile
    return resolve_profile("smoke", seed=0, cuda_available=False)


def test_classification_loss_is_cross_entropy_on_the_indexed_rows():
    xs, ys = task()
    loss = el.classification_loss(xs, ys)
    i = torch.tensor([3, 0, 7])
    lookup = {tuple(r.tolist()): int(c) for r, c in zip(xs, ys)}

    def oracle(z: torch.Tensor) -> torch.Tensor:  # sure and right on whatever rows it is given
        return 50.0 * F.one_hot(torch.tensor([lookup[tuple(r.tolist())] for r in z]), K).float()

    assert loss(oracle, i) < 1e-6
    assert loss(oracle, i.flip(0)) < 1e-6
    assert torch.allclose(loss(lambda z: torch.zeros(len(z), K), i), torch.log(torch.tensor(float(K))))
    m = model()
    assert torch.allclose(loss(m, i), F.cross_entropy(m(xs[i]), ys[i]))


def test_once_for_all_and_stitch_losses_draw_their_paths_from_the_generator():
    xs, ys = task()
    i = torch.arange(10)
    m = model()
    g, g_ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ofa = el.once_for_all_loss(xs, ys, (2, 4, 8), (1, 2, 3), g, n_random=2)
    for _ in range(3):  # each call draws fresh sizes, exactly as sample_sizes would
        want = el.sub_network_loss(m, xs[i], ys[i], el.sample_sizes((2, 4, 8), (1, 2, 3), g_ref, n_random=2))
        assert torch.allclose(ofa(m, i), want)
    fam = el.StitchedFamily(model(0, width=4), model(1), xs)
    g = torch.Generator().manual_seed(6)
    stitch = el.stitch_path_loss(xs, ys, g)
    per_k = {k: float(F.cross_entropy(fam(xs[i], k), ys[i])) for k in range(L + 1)}
    seen = {round(float(stitch(fam, i)), 5) for _ in range(40)}
    assert seen == {round(v, 5) for v in per_k.values()}  # every path 0..depth, and only those


def test_train_alone_learns_and_is_reproducible():
    xs, ys = task()
    from ptmlib.data import index_batches
    from ptmlib.train import TrainConfig
    cfg = TrainConfig(num_steps=150, lr=3e-3, autocast=False)
    kw = dict(seed=3, examples_per_step=64)
    m = el.train_alone(D, K, 8, 2, el.classification_loss(xs, ys), index_batches(len(ys), 64), cfg, smoke(), **kw)
    again = el.train_alone(D, K, 8, 2, el.classification_loss(xs, ys), index_batches(len(ys), 64), cfg, smoke(), **kw)
    assert (m.width, m.depth) == (8, 2) and torch.equal(m.w1, again.w1)
    assert float((m(xs).argmax(-1) == ys).float().mean()) > 0.8  # chance is 1 / K


def test_train_exits_baseline_leaves_gates_alone_and_a_high_price_exits_first():
    m = model()
    xs, ys = task()
    with torch.no_grad():
        feats = torch.stack(m.states(xs)[1:], 1)  # (N, L, C)
    from ptmlib.data import index_batches
    from ptmlib.train import TrainConfig
    cfg = TrainConfig(num_steps=150, lr=1e-2, autocast=False)
    costs = torch.arange(1, L + 1) / L

    def fit(lam):
        return el.train_exits(feats, ys, costs, lam, K, index_batches(len(ys), 64), cfg, smoke(),
                              seed=2, examples_per_step=64)

    base = fit(None)
    assert not base.gate_w.any() and not base.gate_b.any()  # the uniform loss never touches the gates
    blocks, acc = el.exit_point(base.logits(feats), torch.full((len(ys),), L - 1), ys)
    assert blocks == L and acc > 0.5  # the last head learned the task (chance 1 / K)
    cheap, costly = fit(0.0), fit(5.0)
    depth = {lam: el.gated_exits(h(feats)[1]).float().mean() for lam, h in ((0.0, cheap), (5.0, costly))}
    assert depth[5.0] < 0.2 and depth[5.0] < depth[0.0]  # a high price on depth sends samples out early


def test_exit_point_counts_blocks_and_reads_the_head_of_each_exit():
    logits = torch.zeros(3, L, K)
    logits[0, 0, 1] = logits[1, 2, 2] = logits[2, 1, 0] = 1.0  # each sample's exit predicts 1, 2, 0
    blocks, acc = el.exit_point(logits, torch.tensor([0, 2, 1]), torch.tensor([1, 2, 3]))
    assert blocks == 2.0 and acc == pytest.approx(2 / 3)


def test_deployed_exits_count_what_the_exits_imply():
    m = model()
    heads = el.ExitHeads(L, C, K)
    with torch.no_grad():
        heads.gate_w.normal_(generator=torch.Generator().manual_seed(3))
    xs, ys = task(40)
    acc, flops, err = el.deployed_exits(m, heads, xs, ys)
    pred, exit_at = el.run_with_exits(m, heads, xs)
    assert acc == float((pred == ys).float().mean()) and err < 1e-9
    full = el.network_flops(D, K, C, L) - 2 * C * K + L * (2 * C * K + 2 * K)  # stem, every block + exit head + gate
    assert 0 < (exit_at < L - 1).sum() and flops < full
    _, flops_all, err_all = el.deployed_exits(m, heads, xs, ys, tau=2.0)  # nobody is that sure: all run to the end
    assert err_all < 1e-9 and flops_all == full
