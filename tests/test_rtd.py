"""ELECTRA pairs: sharing modes route gradients as defined, corruption statistics, helper closed forms."""
import math

import pytest
import torch

from ptmlib.objectives import rtd

V, T, FIRST = 60, 16, 22


def pairs(seed=0, gen_width=8):
    torch.manual_seed(seed)
    return rtd.ElectraPairs(["NES", "ES", "GDES"], V, 16, gen_width, 1, 2, first_token=FIRST)


def ids(B=4, seed=0):
    return torch.randint(FIRST, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_disc_tables_follow_the_sharing_modes():
    m = pairs()
    table = m.disc_table()
    assert torch.equal(table[0], m.disc.embed[0])
    assert torch.equal(table[1], m.embed[1])
    assert torch.equal(table[2], m.embed[2])  # E_delta starts at zero
    with torch.no_grad():
        m.disc.embed[2] += 1.0
    assert torch.allclose(m.disc_table()[2], m.embed[2] + 1.0)


def test_discriminator_gradient_reaches_the_generator_table_only_under_es():
    m = pairs()
    out = m.losses(ids(), torch.Generator().manual_seed(1))
    g_table = torch.autograd.grad(out.discriminator.sum(), m.embed, retain_graph=True)[0]
    assert g_table[0].abs().max() == 0 and g_table[2].abs().max() == 0  # NES, GDES: stop-gradient / no link
    assert g_table[1].abs().max() > 0  # ES: the tug of war is possible
    d_table = torch.autograd.grad(out.discriminator.sum(), m.disc.embed)[0]
    assert d_table[0].abs().max() > 0 and d_table[2].abs().max() > 0 and d_table[1].abs().max() == 0


def test_the_generator_is_narrower_and_reads_the_shared_table_through_a_projection():
    m = pairs(gen_width=8)
    assert m.embed.shape == (3, V, 16) and m.gen.read_in.weight.shape[-2:] == (16, 8)
    out = m.losses(ids(), torch.Generator().manual_seed(1))
    g = torch.autograd.grad(out.generator.sum(), m.embed)[0]
    assert (g.flatten(1).abs().max(1).values > 0).all()  # every member's generator trains its table


def test_replacements_only_at_masked_positions_and_never_special_tokens():
    m = pairs()
    for rate in (0.15, 0.3):
        out = m.losses(ids(B=50), torch.Generator().manual_seed(2), mask_rate=rate)
        chosen = round(rate * T) / T
        assert (out.replaced <= chosen + 1e-6).all() and (out.replaced > 0.5 * chosen).all()
        assert (out.generator > 0).all() and (out.discriminator > 0).all()
    with torch.no_grad():  # an untrained generator that loves special tokens
        m.gen.read_out.bias[:, :, :FIRST] = 50.0
    g_loss, corrupted, labels = m.corrupt(ids(B=50), torch.Generator().manual_seed(3), 0.3)
    assert int(corrupted.min()) >= FIRST and labels.any() and torch.isfinite(g_loss).all()


def test_binary_entropy_and_detection_gain_closed_forms():
    p = torch.tensor([0.0, 0.5, 1.0, 0.1], dtype=torch.double)
    h = rtd.binary_entropy(p)
    assert h[0] == 0 and h[2] == 0 and abs(float(h[1]) - math.log(2)) < 1e-12
    assert abs(float(h[3]) - (-0.1 * math.log(0.1) - 0.9 * math.log(0.9))) < 1e-12
    r = torch.tensor([0.1, 0.3])
    losses = rtd.RTDLosses(torch.zeros(2), rtd.binary_entropy(r).float() - torch.tensor([0.0, 0.05]), r)
    assert torch.allclose(rtd.detection_gain(losses), torch.tensor([0.0, 0.05], dtype=torch.double), atol=1e-6)


def test_unigram_corruption_replaces_masked_positions_by_frequency_draws():
    x = ids(B=200, seed=1)
    symbols = torch.arange(FIRST, V)
    probs = torch.zeros(len(symbols))
    probs[0] = 1.0  # always draw the first symbol
    corrupted, replaced = rtd.unigram_corruption(x, 0.25, symbols, probs, torch.Generator().manual_seed(0))
    changed = corrupted != x
    assert torch.equal(changed, replaced)
    assert (corrupted[changed] == FIRST).all()
    expected = round(0.25 * T) / T * (1 - float((x == FIRST).float().mean()))
    assert abs(float(replaced.float().mean()) - expected) < 0.02


def test_detect_scores_given_labels():
    m = pairs()
    x, labels = ids(), torch.zeros(4, T, dtype=torch.bool)
    with torch.no_grad():
        m.disc.read_out.bias.fill_(-30.0)  # every discriminator says "original" with certainty
        assert (m.detect(x, labels) < 1e-6).all()
        labels[:, 0] = True  # one position in T replaced: the certain "original" costs 30 nats there
        assert torch.allclose(m.detect(x, labels), torch.full((3,), 30.0 / T), rtol=1e-2)


def test_gradient_cosine_is_a_cosine_and_zero_without_a_link():
    m = pairs()
    out = m.losses(ids(), torch.Generator().manual_seed(1))
    flat, rows = rtd.gradient_cosine(m, out, 1, 50.0)
    assert -1 <= flat <= 1 and -1 <= rows <= 1
    flat_gdes, rows_gdes = rtd.gradient_cosine(m, out, 2, 50.0)
    assert flat_gdes == 0.0 and math.isnan(rows_gdes)
    again = rtd.gradient_cosine(m, out, 1, 5.0)  # scaling one gradient leaves the angle unchanged
    assert abs(again[0] - flat) < 1e-3 * abs(flat) + 1e-9 and abs(again[1] - rows) < 1e-3 * abs(rows) + 1e-9


def test_mean_pairwise_cosine_closed_forms():
    theta = 0.7
    table = torch.tensor([[1.0, 0.0], [math.cos(theta), math.sin(theta)], [2.0, 0.0]])
    assert abs(rtd.mean_pairwise_cosine(table, torch.tensor([0, 1])) - math.cos(theta)) < 1e-6
    assert abs(rtd.mean_pairwise_cosine(table, torch.tensor([0, 2])) - 1.0) < 1e-6
    assert abs(rtd.mean_pairwise_cosine(torch.eye(5), torch.arange(5))) < 1e-7


def test_experiment_records_the_tug_only_while_training_and_has_an_equal_size_pair():
    torch.manual_seed(0)
    exp = rtd.RTDExperiment(V, 16, 8, 1, 2, tug_every=2, first_token=FIRST)
    assert exp.pairs.gen.read_in.weight.shape[-1] == 8 and len(exp.pairs.gen.blocks) == 1
    assert exp.strong.gen.read_in.weight.shape[-1] == 16 and len(exp.strong.gen.blocks) == 2  # the discriminator's size
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        exp.loss(ids(), g).backward()
    assert [t[0] for t in exp.tug] == [0, 2]
    exp.eval()
    exp.loss(ids(), g)
    assert len(exp.tug) == 2
    assert set(exp.last) == {"generator", "discriminator", "strong_generator", "strong_discriminator"}


def test_same_start_makes_the_sharing_mode_the_only_difference():
    m = pairs()
    for name, p in m.named_parameters():
        if name != "disc.embed":
            assert torch.equal(p[0], p[1]) and torch.equal(p[0], p[2]), name
    assert torch.equal(m.disc.embed[0], m.disc.embed[1]) and m.disc.embed[2].abs().max() == 0  # GDES: E_delta = 0
    assert not torch.equal(rtd.ElectraPairs(["NES", "NES"], V, 16, 8, 1, 2, same_start=False).embed[0],
                           rtd.ElectraPairs(["NES", "NES"], V, 16, 8, 1, 2, same_start=False).embed[1])
    # without the discriminator's loss the three generators train identically, and equal generators corrupt equally
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        out = m.losses(ids(seed=1), g, 0.3)
        opt.zero_grad()
        (out.generator + 0.0 * out.discriminator).sum().backward()
        opt.step()
    g_loss, corrupted, labels = m.corrupt(ids(seed=2), torch.Generator().manual_seed(1), 0.3)
    assert float((g_loss.max() - g_loss.min()).detach()) < 1e-5
    assert torch.equal(corrupted[0], corrupted[1]) and torch.equal(corrupted[0], corrupted[2]) and labels.any()


def test_zero_rtd_weight_leaves_the_discriminators_untrained():
    torch.manual_seed(0)
    exp = rtd.RTDExperiment(V, 16, 8, 1, 2, rtd_weight=0.0, tug_every=0, first_token=FIRST)
    exp.loss(ids(), torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in exp.pairs.disc.parameters())
    assert exp.pairs.embed.grad.abs().max() > 0


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown sharing modes"):
        rtd.ElectraPairs(["NES", "shared"], V, 16, 8, 1, 2)


def test_some_head_prefers_the_neighbours_at_initialisation():
    from ptmlib.ensemble import alibi_mask

    m = pairs()
    T_chapter = 64
    for model in (m.gen, m.disc):
        # at initialisation q.k is ~0, so the attention weights are the softmax of the ALiBi bias alone
        weights = alibi_mask(model.slopes, T_chapter, None, False, torch.device("cpu"))[0].softmax(-1)  # (H, T, T)
        t = T_chapter // 2
        on_neighbours = weights[:, t, t - 1] + weights[:, t, t + 1]  # (H,)
        assert float(on_neighbours.max()) > 0.25  # a quarter of the attention on 2 of 64 tokens (0.07 with slopes 1/16)
